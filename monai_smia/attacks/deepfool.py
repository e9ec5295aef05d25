"""DeepFool (Moosavi-Dezfooli, Fawzi, Frossard, "DeepFool: a simple and accurate method to fool deep
neural networks", CVPR 2016, arXiv 1511.04599), multi-class, L2.

At each iteration the classifier is linearised at the current point ``x_i``; for every class
``k`` other than the label ``y``, ``f'_k = z_k - z_y`` and ``w'_k = grad(z_k - z_y)``; the closest
linearised boundary ``l = argmin_k |f'_k| / ||w'_k||_2`` gives the minimal L2 step
``r_i = |f'_l| / ||w'_l||_2^2 * w'_l`` (Algorithm 2). Steps accumulate in ``r``; the point checked
and linearised is ``x + (1 + overshoot) * r`` (the authors' reference implementation applies the
overshoot to the accumulated perturbation at every iteration; the paper multiplies the final one
by ``1 + eta``, ``eta = 0.02``). Each sample stops as soon as its prediction leaves the label.

Differences from torchattacks' ``DeepFool(model, steps=50, overshoot=0.02)``, measured in
``tests/test_attack_deepfool_dag.py``:

- torchattacks steps ``x_{i+1} = clamp(x_i + (1 + overshoot) * r_i, 0, 1)``: the clamp at every
  step drops the clipped part of each step from the accumulated perturbation, so the next
  linearisation point and the sum of steps differ from ours, which keeps the unclipped sum ``r``
  and clips only the image it evaluates, ``clamp(x + (1 + overshoot) * r)``, into ``bounds``
  (which need not be ``[0, 1]``). Where no pixel reaches a bound, both iterate through the same
  points and agree to float rounding.
- torchattacks divides by ``||w'_k||`` without a guard (a zero gradient gives NaN); here a class
  with a zero gradient difference is never the closest, and a sample without any stays put.
- Both use the given labels as ``y`` and leave an already misclassified sample unchanged; with
  ``labels=None`` this attack uses the clean prediction, as the paper does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from monai_smia.attacks.minimal import MinimalNormAttack, broadcast_samples
from monai_smia.losses import hard_prediction, prepare_labels

__all__ = ["DeepFool"]


class DeepFool(MinimalNormAttack):
    """DeepFool for classifiers ``(B, C, *spatial) -> (B, K)`` logits; ``K == 1`` is binary with logits.

    ``__call__`` returns the result projected onto the L-infinity ball of ``eps`` (and the bounds);
    the unconstrained result, per-sample L2 norms and iteration counts of the last call are in
    ``attack.result`` (:class:`~monai_smia.attacks.minimal.MinimalNormResult`), also as
    ``attack.unconstrained``, ``attack.norms`` and ``attack.iterations``.

    Args:
        network: a classifier returning ``(B, K)`` logits (segmentation networks are refused: use DAG).
        eps: L-infinity budget of the projected result.
        overshoot: ``eta`` of the paper (0.02): the perturbation is scaled by ``1 + eta`` to cross the boundary.
        max_iter: iteration cap per sample (paper and torchattacks: 50).
        bounds: valid intensity range (``None``: no clamp).
        kwargs: ``output_key``, ``amp`` (see :class:`~monai_smia.attacks.base.Attack`).

    Example::

        attack = DeepFool(densenet, eps=1 / 255)
        x_adv = attack(images, labels)             # within the budget
        attack.result.summary(eps=1 / 255)         # median L2 norm, unconstrained error, ...
    """

    def __init__(
        self,
        network: torch.nn.Module,
        eps: float,
        overshoot: float = 0.02,
        max_iter: int = 50,
        bounds: Sequence[float] | None = (0.0, 1.0),
        **kwargs: Any,
    ) -> None:
        super().__init__(network, eps, max_iter=max_iter, bounds=bounds, **kwargs)
        if isinstance(overshoot, bool) or not isinstance(overshoot, (int, float)) or not overshoot >= 0:
            raise ValueError(f"overshoot must be a number >= 0, got {overshoot!r}.")
        self.overshoot = float(overshoot)

    def perturb(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None,
        delta_init: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        self.trace = None
        r_tot = torch.zeros_like(x)
        iterations = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        y = labels
        for i in range(self.max_iter + 1):
            delta = self.valid(x, (1 + self.overshoot) * r_tot, mask)
            xi = (x + delta).requires_grad_(True)
            logits = self.logits(xi)
            if i == 0:
                y = self._class_labels(labels, logits)
            active = (hard_prediction(logits.detach()) == y).reshape(x.shape[0])
            if i == self.max_iter or not bool(active.any()):  # one host sync per iteration: the early stop
                break
            step = self.minimal_step(xi, logits, y, mask)
            r_tot = r_tot + step * broadcast_samples(active, step)
            iterations += active.long()
        return self.finish(x, delta, iterations, ~active)

    def _class_labels(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 2:
            raise ValueError(
                f"network: DeepFool attacks classifiers with (B, K) logits, this network returns shape "
                f"{tuple(logits.shape)} with spatial dims (segmentation); use DAG for dense predictions."
            )
        if not logits.requires_grad:
            raise ValueError("the network output has no gradient path to its input: DeepFool needs gradients.")
        return prepare_labels(labels, logits)

    def minimal_step(
        self, xi: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """The minimal L2 step ``r_i`` to the closest linearised boundary, per sample (Algorithm 2).

        The classes are visited one at a time (one backward pass each), keeping only the closest
        boundary so far, so memory does not grow with the number of classes.
        """
        b, k = logits.shape
        z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        if k == 1:  # binary with logits: the wrong-class margin is (1 - 2y) z, one candidate
            margins = ((1 - 2 * y) * z).reshape(b, 1)
        else:
            margins = z - z.gather(1, y.reshape(b, 1))
        best = torch.full((b,), float("inf"), dtype=z.dtype, device=z.device)
        best_f = torch.zeros_like(best)
        best_w = torch.zeros_like(xi)
        for c in range(margins.shape[1]):
            (w,) = torch.autograd.grad(margins[:, c].sum(), xi, retain_graph=c + 1 < margins.shape[1])
            if mask is not None:
                w = w * mask
            w_norm = torch.linalg.vector_norm(w.reshape(b, -1), dim=1).to(z.dtype)
            f = margins[:, c].detach().abs()
            dist = torch.where(
                w_norm > 0, f / w_norm.clamp_min(torch.finfo(z.dtype).tiny), torch.full_like(f, float("inf"))
            )
            if k > 1:
                dist = torch.where(y == c, torch.full_like(dist, float("inf")), dist)
            closer = dist < best
            best = torch.where(closer, dist, best)
            best_f = torch.where(closer, f, best_f)
            best_w = torch.where(broadcast_samples(closer, w).bool(), w, best_w)
        w_sq = best_w.reshape(b, -1).pow(2).sum(dim=1)
        scale = torch.where(
            w_sq > 0, best_f.to(w_sq.dtype) / w_sq.clamp_min(torch.finfo(w_sq.dtype).tiny), torch.zeros_like(w_sq)
        )
        return best_w * broadcast_samples(scale, best_w)
