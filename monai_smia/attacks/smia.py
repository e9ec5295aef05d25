"""SMIA, the Stabilized Medical Image Attack (Qi, Gong, Song, Ma, Zheng, "Stabilized Medical Image
Attacks", ICLR 2021, arXiv 2103.05232).

Each iteration ascends ``DEV - alpha * STA``: the deviation loss of ``f(x + d)`` minus the
cross-entropy between ``f(x + d)`` and the (gradient-stopped) prediction on ``x + W * d``, where
``W`` is a Gaussian kernel smoothing the accumulated perturbation. The first iteration (``d = 0``)
uses the deviation alone. ``alpha = 0`` is exactly PGD without random start (the paper's DEV
ablation). The algorithm follows ``../shared/DESIGN.md`` section 1, not the released code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import torch
from monai.networks.layers import GaussianFilter, separable_filtering

from monai_smia.attacks.base import IterativeAttack
from monai_smia.losses import soft_prediction, stabilization_loss

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
            raise ValueError(
                f"the smoother works on {self.spatial_dims} spatial dims, the perturbation has shape {tuple(delta.shape)}."
            )
        return separable_filtering(delta, self.kernels(delta.device, delta.dtype))


class SMIA(IterativeAttack):
    """Stabilized Medical Image Attack (Qi et al., ICLR 2021).

    Args:
        network: MONAI/torch network returning logits (classification or segmentation).
        eps: L-infinity budget in the units of the network input.
        num_iter: iterations ``T``.
        step_size: step ``a``; ``None`` means ``2.5 * eps / T``.
        alpha: weight of the stabilization term (paper: 1); 0 gives PGD without random start.
        sigma: Gaussian standard deviation in voxels (one value, or one per spatial dim).
        spatial_dims: spatial dims of the images the network takes (2 for slices, 3 for volumes).
        loss: deviation loss ``loss(logits, labels)``; default cross-entropy / BCE with logits.
        bounds: valid intensity range, ``None`` for no clamp.
        random_start: start from uniform noise in ``[-eps, eps]`` (paper: no).
        stabilization: ``"soft"`` (cross-entropy against the smoothed prediction's probabilities,
            the gradient of the paper's KL term) or ``"hard"`` (against its argmax, as the released code).
        kwargs: ``output_key``, ``targeted``, ``amp`` (see :class:`~monai_smia.attacks.base.Attack`).

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
        **kwargs: Any,
    ) -> None:
        super().__init__(
            network, eps, num_iter=num_iter, step_size=step_size, random_start=random_start, loss=loss, bounds=bounds, **kwargs
        )
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0:
            raise ValueError(f"alpha must be a number >= 0, got {alpha!r}.")
        if isinstance(spatial_dims, bool) or spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}.")
        sig = list(sigma) if isinstance(sigma, Sequence) else [sigma] * spatial_dims
        if len(sig) != spatial_dims:
            raise ValueError(f"sigma has {len(sig)} values but spatial_dims={spatial_dims}.")
        if not all(isinstance(s, (int, float)) and s >= 0 for s in sig) or not any(s > 0 for s in sig):
            raise ValueError(f"sigma must be > 0 (per-dim values >= 0 with at least one > 0), got {sigma!r}.")
        if stabilization not in ("soft", "hard"):
            raise ValueError(f"stabilization must be 'soft' or 'hard', got {stabilization!r}.")
        self.alpha = float(alpha)
        self.sigma = sigma
        self.spatial_dims = spatial_dims
        self.stabilization_mode = stabilization
        self.smoother = PerturbationSmoother([float(s) for s in sig], spatial_dims)

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

    def stabilization(self, x: torch.Tensor, delta: torch.Tensor, logits: torch.Tensor, t: int) -> torch.Tensor | None:
        """Cross-entropy of ``f(x + d)`` against the stopped prediction on ``x + W * d`` (``None`` at ``t = 0``)."""
        if t == 0 or self.alpha == 0:
            return None
        with torch.no_grad():
            smoothed = soft_prediction(self.logits(x + self.smoother(delta)))
        return stabilization_loss(logits, smoothed, self.stabilization_mode)
