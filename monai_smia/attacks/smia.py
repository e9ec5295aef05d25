"""SMIA, the Stabilized Medical Image Attack (Qi, Gong, Song, Ma, Zheng, "Stabilized Medical Image
Attacks", ICLR 2021, arXiv 2103.05232).

Each iteration ascends ``DEV - alpha * STA``: the deviation loss of ``f(x + d)`` minus the
cross-entropy between ``f(x + d)`` and the (gradient-stopped) prediction on ``x + W * d``, where
``W`` is a Gaussian kernel smoothing the accumulated perturbation. The first iteration (``d = 0``)
uses the deviation alone. ``alpha = 0`` is exactly PGD without random start (the paper's DEV
ablation). The default follows the paper's Eq. 3-4 (docs/design.md, section 1), not the released code.

The paper is ambiguous, so each defensible reading is an option of :class:`SMIA`, documented with
the sentence of the paper or the line of the authors' released code (github imogenqi/SMA,
``SMIA.py``) that it follows.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Callable

import torch
from monai.networks.layers import GaussianFilter, separable_filtering

from monai_smia.attacks.base import IterativeAttack, check_positive
from monai_smia.losses import soft_prediction, stabilization_kl, stabilization_loss

__all__ = ["SMIA", "PerturbationSmoother"]


class PerturbationSmoother:
    """The Gaussian ``W`` of SMIA, channel by channel, built on MONAI's :class:`GaussianFilter`.

    The 1-D kernels of a :class:`GaussianFilter` are computed once and cached per device and
    dtype, so smoothing inside the attack loop neither rebuilds them nor synchronises with the
    host (``GaussianFilter.forward`` rebuilds them from its sigma on every call).

    Args:
        sigma: standard deviation in voxels, one value or one per spatial dim; 0 on a dim leaves
            it unsmoothed (e.g. ``(1, 1, 0)`` smooths a volume in-plane only, like 2D filtering per slice).
        spatial_dims: number of spatial dims of the perturbation.
        truncated: kernel half-width in standard deviations (as GaussianFilter).
    """

    def __init__(self, sigma: float | Sequence[float], spatial_dims: int, truncated: float = 4.0) -> None:
        self.filter = GaussianFilter(spatial_dims, sigma, truncated=truncated)
        self.spatial_dims = spatial_dims
        self._kernels: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}

    def kernels(self, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
        key = (device, dtype)
        if key not in self._kernels:
            from monai.networks.layers.convutils import gaussian_1d

            f = self.filter
            self._kernels[key] = [
                gaussian_1d(s.detach(), truncated=f.truncated, approx=f.approx).to(device=device, dtype=dtype)
                for s in f.sigma
            ]
        return self._kernels[key]

    def __call__(self, delta: torch.Tensor) -> torch.Tensor:
        if delta.ndim - 2 != self.spatial_dims:
            dims, shape = self.spatial_dims, tuple(delta.shape)
            raise ValueError(f"the smoother works on {dims} spatial dims, the perturbation has shape {shape}.")
        return separable_filtering(delta, self.kernels(delta.device, delta.dtype))


class SMIA(IterativeAttack):
    """Stabilized Medical Image Attack (Qi et al., ICLR 2021).

    Args:
        network: MONAI/torch network returning logits (classification or segmentation).
        eps: L-infinity budget in the units of the network input (with ``protocol="paper"``: the
            paper's per-iteration epsilon).
        num_iter: iterations ``T``.
        step_size: step ``a``; ``None`` means ``2.5 * eps / T``.
        alpha: weight of the stabilization term (paper: 1); 0 gives PGD without random start.
        sigma: Gaussian standard deviation in voxels (one value, or one per spatial dim).
        spatial_dims: spatial dims of the images the network takes (2 for slices, 3 for volumes).
        loss: deviation loss ``loss(logits, labels)``; default cross-entropy / BCE with logits.
        bounds: valid intensity range, ``None`` for no clamp.
        random_start: start from uniform noise in ``[-eps, eps]`` (paper: no).
        stabilization: ``"soft"`` (default): cross-entropy against the smoothed prediction's
            probabilities, whose gradient is that of KL(s || f(x + d)), the quantity of the paper's
            analysis ("We further analyze the KL-divergence of the proposed loss function").
            ``"hard"``: against its argmax, as the released code does
            (``_, output_perturbed_last = torch.max(output_perturbed1, dim=1)``).
        stabilization_target: ``"detached"`` (default): the prediction on the smoothed input is a
            target without gradient, Eq. 3-4 ("the loss stabilization term ensures similar CNN
            predictions of this example and its smoothed input"). ``"differentiable"``:
            KL(f(x + W*d) || f(x + d)) with the gradient through both branches, the objective of the
            paper's KL/Fisher analysis (which minimises ``||W*d - d||``); one more backward pass
            through the smoothed branch per iteration. Needs ``stabilization="soft"``.
        smooth: ``"perturbation"`` (default): the target is the prediction on ``x + W * d_t``, W
            smoothing the accumulated perturbation (the paper). ``"step"``: the prediction on
            ``x_{t-1} + W * eta_{t-1}``, eta being the last applied update, as the released code
            anchors it (``gt1=blur(gt1, ...)``; ``X_pert + gt1``; ``output_perturbed_last = model(gt1)``).
        protocol: ``None`` (default): a projected budget ``eps`` with step ``2.5 * eps / T`` (Madry
            et al.). ``"paper"``: the paper's Sec. 4 setting, a per-iteration step ``eps`` and no
            separate budget: ``step_size = eps`` and the ball becomes ``T * eps`` (``attack.eps``). An
            explicit ``step_size`` other than ``eps``, or ``random_start=True``, contradicts it.
        kwargs: ``output_key``, ``targeted``, ``amp`` (see :class:`~monai_smia.attacks.base.Attack`).

    Warns:
        UserWarning: for the two settings measured to collapse: detached soft STA with
            ``alpha > 1`` (the logit gradient ``(1 - alpha) p + alpha s - e_y`` turns the step
            anti-adversarial), and hard STA with ``alpha == 1`` (zero gradient wherever
            ``argmax(s)`` equals the label).

    Example::

        attack = SMIA(unet, eps=0.03, num_iter=10, spatial_dims=2)
        x_adv = attack(images, labels)
        attack.trace.summary()["positive_cosine_share"]
    """

    def __init__(
        self,
        network: torch.nn.Module,
        eps: float,
        num_iter: int = 10,
        step_size: float | None = None,
        alpha: float = 1.0,
        sigma: float | Sequence[float] = 1.0,
        spatial_dims: int = 2,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        bounds: Sequence[float] | None = (0.0, 1.0),
        random_start: bool = False,
        stabilization: str = "soft",
        stabilization_target: str = "detached",
        smooth: str = "perturbation",
        protocol: str | None = None,
        **kwargs: Any,
    ) -> None:
        paper = self._check_protocol(protocol, eps, step_size, random_start)
        super().__init__(
            network,
            eps,
            num_iter=num_iter,
            step_size=step_size,
            random_start=random_start,
            loss=loss,
            bounds=bounds,
            **kwargs,
        )
        if paper:
            self.step_size, self.eps = self.eps, self.eps * self.num_iter
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0:
            raise ValueError(f"alpha must be a number >= 0, got {alpha!r}.")
        if isinstance(spatial_dims, bool) or spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}.")
        sig = list(sigma) if isinstance(sigma, Sequence) else [sigma] * spatial_dims
        if len(sig) != spatial_dims:
            raise ValueError(f"sigma has {len(sig)} values but spatial_dims={spatial_dims}.")
        if not all(isinstance(s, (int, float)) and s >= 0 for s in sig) or not any(s > 0 for s in sig):
            raise ValueError(f"sigma must be > 0 (per-dim values >= 0 with at least one > 0), got {sigma!r}.")
        self.alpha = float(alpha)
        self.sigma = sigma
        self.spatial_dims = spatial_dims
        self.stabilization_mode = stabilization
        self.stabilization_target = stabilization_target
        self.smooth = smooth
        self.protocol = protocol
        self._check_readings()
        self.smoother = PerturbationSmoother([float(s) for s in sig], spatial_dims)

    @staticmethod
    def _check_protocol(protocol: str | None, eps: Any, step_size: float | None, random_start: bool) -> bool:
        """Whether ``protocol`` is the paper's; raise when another argument contradicts it."""
        if protocol not in (None, "paper"):
            raise ValueError(f"protocol must be None or 'paper', got {protocol!r}.")
        if protocol is None:
            return False
        if step_size is not None and step_size != check_positive("eps", eps):
            raise ValueError(
                f"step_size={step_size!r} contradicts protocol='paper', whose step is the paper's per-iteration "
                f"eps ({eps!r}); leave step_size=None or drop protocol."
            )
        if random_start:
            raise ValueError(
                "random_start=True contradicts protocol='paper' (the paper starts from x); drop one of them."
            )
        return True

    def _check_readings(self) -> None:
        """Validate the reading options and warn about the settings measured to collapse."""
        if self.stabilization_mode not in ("soft", "hard"):
            raise ValueError(f"stabilization must be 'soft' or 'hard', got {self.stabilization_mode!r}.")
        if self.stabilization_target not in ("detached", "differentiable"):
            raise ValueError(
                f"stabilization_target must be 'detached' or 'differentiable', got {self.stabilization_target!r}."
            )
        if self.smooth not in ("perturbation", "step"):
            raise ValueError(f"smooth must be 'perturbation' or 'step', got {self.smooth!r}.")
        if self.stabilization_target == "differentiable" and self.stabilization_mode == "hard":
            raise ValueError(
                "stabilization_target='differentiable' needs stabilization='soft' (an argmax target has no gradient)."
            )
        if self.stabilization_target == "detached" and self.stabilization_mode == "soft" and self.alpha > 1:
            warnings.warn(
                f"SMIA alpha={self.alpha:g} > 1 with a detached soft stabilization target: the logit gradient "
                "(1 - alpha) p + alpha s - e_y points away from the attack, so the step turns anti-adversarial.",
                UserWarning,
                stacklevel=3,
            )
        if self.stabilization_mode == "hard" and self.alpha == 1:
            warnings.warn(
                "SMIA stabilization='hard' with alpha=1: the objective's gradient is zero wherever argmax of the "
                "smoothed prediction equals the label, so those pixels or samples are not attacked.",
                UserWarning,
                stacklevel=3,
            )

    def stabilization_weight(self) -> float:
        return self.alpha

    def perturb(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if x.ndim - 2 != self.spatial_dims:
            raise ValueError(
                f"SMIA was built with spatial_dims={self.spatial_dims} but images have shape {tuple(x.shape)} "
                f"({x.ndim - 2} spatial dims); pass spatial_dims={x.ndim - 2} (and sigma per dim if needed), "
                "or attack a volume slice by slice with monai_smia.transforms."
            )
        return super().perturb(x, *args, **kwargs)

    def smoothed(self, delta: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        """The perturbation of the stabilization anchor: ``W * d_t``, or ``d_{t-1} + W * (d_t - d_{t-1})``
        (``smooth="step"``)."""
        if self.smooth == "perturbation" or previous is None:
            return self.smoother(delta)
        return previous + self.smoother(delta - previous)

    def stabilization(
        self, x: torch.Tensor, delta: torch.Tensor, logits: torch.Tensor, t: int, previous: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The STA term of ``f(x + d)`` against the prediction at the smoothed anchor (``None`` at ``t = 0``)."""
        if t == 0 or self.alpha == 0:
            return None
        if self.stabilization_target == "differentiable":
            return stabilization_kl(self.logits(x + self.smoothed(delta, previous)), logits)
        with torch.no_grad():
            smoothed = soft_prediction(self.logits(x + self.smoothed(delta.detach(), previous)))
        return stabilization_loss(logits, smoothed, self.stabilization_mode)
