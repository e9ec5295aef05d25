"""DAG, Dense Adversary Generation (Xie, Wang, Zhang, Zhou, Xie, Yuille, "Adversarial Examples for
Semantic Segmentation and Object Detection", ICCV 2017, arXiv 1703.08603), Algorithm 1.

Every target ``t_n`` (a pixel of a segmentation; a proposal of a detector) has its label ``l_n``
and an adversarial label ``l'_n``. While targets remain active, with ``X_m = X + r``:

    r_m  = grad_X sum_{n active} (f_{l'_n}(X_m, t_n) - f_{l_n}(X_m, t_n))
    r   += gamma / ||r_m||_inf * r_m

and a target stays active while it is still predicted as ``l_n`` ("T_{m+1} = {t_n in T_m :
argmax_c f_c(X_m + r_m, t_n) = l_n}"), up to ``max_iter`` iterations (the paper: 200 for
segmentation, 150 for detection, ``gamma = 0.5``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import torch

from monai_smia.attacks.minimal import MinimalNormAttack, broadcast_samples
from monai_smia.losses import prepare_labels

__all__ = ["DAG", "shift_labels"]

TargetFn = Callable[[torch.Tensor, int], torch.Tensor]


def shift_labels(labels: torch.Tensor, num_classes: int, shift: int = 1) -> torch.Tensor:
    """The default adversarial labels of DAG: the fixed permutation ``l' = (l + shift) mod K``; for a
    single-logit (binary) output, the flipped label ``1 - l``.

    Args:
        labels: ``(B, N)`` labels per target (integer classes; 0/1 floats for one channel).
        num_classes: ``K``, the number of output channels.
        shift: offset of the permutation (not a multiple of ``K``).
    """
    if num_classes == 1:
        return 1 - labels
    return (labels + shift) % num_classes


class DAG(MinimalNormAttack):
    """Dense Adversary Generation for segmentation networks ``(B, C, *spatial) -> (B, K, *spatial)``.

    ``__call__`` returns the result projected onto the L-infinity ball of ``eps`` (and the bounds);
    the unconstrained result, L2 norms, iterations and pixel error of the last call are in
    ``attack.result`` (:class:`~monai_smia.attacks.minimal.MinimalNormResult`). Volumes go through
    slice by slice like every attack (``attack_volumes``, the transforms, ``AttackInferer``).

    Args:
        network: a dense predictor returning ``(B, K, *spatial)`` logits (classifiers are refused:
            use DeepFool); ``K == 1`` is binary with logits.
        eps: L-infinity budget of the projected result.
        gamma: L-infinity size of each step, in network-input units. The paper's 0.5 is on a
            0-255 intensity scale: for inputs in ``[0, 1]`` its step is ``0.5 / 255`` (what
            :func:`monai_smia.attacks.registry.make_attack` uses when the bounds are known).
        max_iter: iteration cap (the paper: 200 for segmentation).
        bounds: valid intensity range (``None``: no clamp).
        target_fn: ``(labels (B, N), K) -> adversarial labels (B, N)``; default :func:`shift_labels`.
            A target whose adversarial label equals its label is not attacked.
        until: ``"misclassified"`` (the paper): a target stays active while it is still predicted as
            its label; ``"target"``: while it is not yet predicted as its adversarial label.
        kwargs: ``output_key``, ``amp`` (see :class:`~monai_smia.attacks.base.Attack`).

    Extension point: a detector subclass overrides :meth:`scores` (per-proposal class scores
    ``(B, K, N)``, e.g. a RetinaNet classification head) and :meth:`target_labels` (the labels of
    the matched proposals); the iteration itself needs nothing else.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        eps: float,
        gamma: float = 0.5,
        max_iter: int = 200,
        bounds: Sequence[float] | None = (0.0, 1.0),
        target_fn: TargetFn | None = None,
        until: str = "misclassified",
        **kwargs: Any,
    ) -> None:
        super().__init__(network, eps, max_iter=max_iter, bounds=bounds, **kwargs)
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0:
            raise ValueError(f"gamma must be a number > 0, got {gamma!r}.")
        if target_fn is not None and not callable(target_fn):
            raise TypeError(f"target_fn must be callable(labels, num_classes) or None, got {type(target_fn).__name__}.")
        if until not in ("misclassified", "target"):
            raise ValueError(f"until must be 'misclassified' or 'target', got {until!r}.")
        self.gamma = float(gamma)
        self.target_fn = target_fn if target_fn is not None else shift_labels
        self.until = until

    # ----------------------------------------------------------------- hooks (detection overrides these)
    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores per target, ``(B, K, *targets)``: a segmentation network's logits (targets = pixels)."""
        logits = self.logits(x)
        if logits.ndim < 3:
            raise ValueError(
                f"network: DAG attacks dense predictions (B, K, *spatial), this network returns {tuple(logits.shape)} "
                "class logits (a classifier); use DeepFool for classifiers."
            )
        return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits

    def target_labels(self, labels: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Labels per target in any form :func:`~monai_smia.losses.prepare_labels` takes, as ``(B, N)``:
        class indices, or 0/1 floats for a single-logit output."""
        try:
            lab = prepare_labels(labels, scores)
        except ValueError as e:
            raise ValueError(f"labels: {e}") from e
        return lab.reshape(scores.shape[0], -1)

    # ----------------------------------------------------------------- the iteration
    @staticmethod
    def predict(scores: torch.Tensor) -> torch.Tensor:
        """Predicted label per target, in the form of :meth:`target_labels`."""
        return (scores[:, 0] > 0).to(scores.dtype) if scores.shape[1] == 1 else scores.argmax(dim=1)

    @staticmethod
    def gain(scores: torch.Tensor, labels: torch.Tensor, adversarial: torch.Tensor) -> torch.Tensor:
        """``f_{l'}(t) - f_l(t)`` per target, ``(B, N)``; for one channel the logits are ``[0, z]``."""
        if scores.shape[1] == 1:
            return (adversarial - labels) * scores[:, 0]
        return (scores.gather(1, adversarial.unsqueeze(1)) - scores.gather(1, labels.unsqueeze(1)))[:, 0]

    def perturb(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None,
        delta_init: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        self.trace = None
        r = torch.zeros_like(x)
        iterations = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        lab = adv = labels
        for m in range(self.max_iter + 1):
            delta = self.valid(x, r, mask)
            xm = (x + delta).requires_grad_(True)
            dense = self.scores(xm)
            if m == 0:
                lab, adv = self._labels(labels, dense)
            scores = dense.reshape(dense.shape[0], dense.shape[1], -1)
            pred = self.predict(scores.detach())
            active = (pred == lab if self.until == "misclassified" else pred != adv) & (adv != lab)
            if m == self.max_iter or not bool(active.any()):  # one host sync per iteration: the early stop
                break
            (grad,) = torch.autograd.grad((self.gain(scores, lab, adv) * active).sum(), xm)
            if mask is not None:
                grad = grad * mask
            norm = grad.reshape(grad.shape[0], -1).abs().amax(dim=1)
            scale = torch.where(
                norm > 0, self.gamma / norm.clamp_min(torch.finfo(norm.dtype).tiny), torch.zeros_like(norm)
            )
            r = r + grad * broadcast_samples(scale, grad)
            iterations += active.any(dim=1).long()
        return self.finish(x, delta, iterations, (pred != lab).double().mean(dim=1))

    def _labels(self, labels: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not scores.requires_grad:
            raise ValueError("the network output has no gradient path to its input: DAG needs gradients.")
        lab = self.target_labels(labels, scores)
        adv = self.target_fn(lab, scores.shape[1])
        if not isinstance(adv, torch.Tensor) or adv.shape != lab.shape:
            raise ValueError(
                f"target_fn must return a tensor of shape {tuple(lab.shape)}, got {getattr(adv, 'shape', type(adv))}."
            )
        adv = adv.to(device=lab.device, dtype=lab.dtype)
        if scores.shape[1] > 1 and (int(adv.min()) < 0 or int(adv.max()) >= scores.shape[1]):
            raise ValueError(f"target_fn returned labels outside [0, {scores.shape[1] - 1}].")
        return lab, adv
