"""Minimal-norm attacks (DeepFool, DAG): they search for the smallest perturbation that changes the
prediction, with no budget of their own.

Such an attack is reported twice (docs/design.md, section 1, baselines): unconstrained (how large a
perturbation it needed: the median L2 norm) and projected onto the L-infinity ball of ``eps``
(success within the budget, comparable with FGSM, PGD and SMIA). :meth:`Attack.__call__` returns the
projected result, so every guarantee of an attack holds; the unconstrained one stays on the attack
(``attack.result``, ``attack.unconstrained``, ``attack.norms``, ``attack.iterations``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from monai_smia.attacks.base import Attack

__all__ = ["MinimalNormAttack", "MinimalNormResult", "broadcast_samples"]


@dataclass
class MinimalNormResult:
    """The unconstrained outcome of a minimal-norm attack on one batch.

    Attributes:
        unconstrained: ``(B, C, *spatial)`` adversarial images before the budget's projection (kept
            within the bounds and the mask).
        norms: ``(B,)`` L2 norm of the unconstrained perturbation.
        linf: ``(B,)`` its L-infinity norm.
        iterations: ``(B,)`` iterations each sample took before it stopped.
        error: ``(B,)`` the unconstrained result's error: 1/0 for a classifier (the prediction left
            the label), the share of targets (pixels) predicted otherwise than their label for DAG.
    """

    unconstrained: torch.Tensor
    norms: torch.Tensor
    linf: torch.Tensor
    iterations: torch.Tensor
    error: torch.Tensor

    def within_budget(self, eps: float) -> torch.Tensor:
        """``(B,)`` whether the unconstrained perturbation already fits the L-infinity budget ``eps``."""
        return self.linf <= eps

    def summary(self, eps: float | None = None) -> dict[str, Any]:
        """Median L2 norm, mean error and iterations as plain Python values (and, with ``eps``, the
        share of samples whose unconstrained perturbation fits the budget)."""
        out: dict[str, Any] = {
            "median_l2": float(self.norms.double().median()),
            "median_linf": float(self.linf.double().median()),
            "unconstrained_error": float(self.error.double().mean()),
            "mean_iterations": float(self.iterations.double().mean()),
        }
        if eps is not None:
            out["within_budget_share"] = float(self.within_budget(eps).double().mean())
        return out


class MinimalNormAttack(Attack):
    """Base of the minimal-norm attacks: iteration cap, unconstrained result, bounds-only clipping.

    Args:
        network: the victim.
        eps: L-infinity budget that :meth:`__call__`'s result is projected onto.
        max_iter: iteration cap (>= 1).
        bounds: valid intensity range; the unconstrained result stays inside it too.
        kwargs: ``output_key``, ``amp`` (see :class:`~monai_smia.attacks.base.Attack`). These attacks
            use the network's logits, not a loss, and are untargeted: ``loss`` and ``targeted=True``
            are refused.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        eps: float,
        max_iter: int,
        bounds: Sequence[float] | None = (0.0, 1.0),
        **kwargs: Any,
    ) -> None:
        name = type(self).__name__
        if kwargs.get("loss") is not None:
            raise ValueError(f"loss: {name} works on the network's logits and takes no loss; drop the argument.")
        if kwargs.get("targeted"):
            raise ValueError(f"targeted: {name} is untargeted here; drop targeted=True.")
        super().__init__(network, eps, bounds=bounds, **kwargs)
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}.")
        self.max_iter = max_iter
        self.result: MinimalNormResult | None = None

    @property
    def unconstrained(self) -> torch.Tensor | None:
        """The last call's adversarial images before the eps projection (``None`` before a call)."""
        return None if self.result is None else self.result.unconstrained

    @property
    def norms(self) -> torch.Tensor | None:
        """The last call's per-sample L2 norms of the unconstrained perturbation."""
        return None if self.result is None else self.result.norms

    @property
    def iterations(self) -> torch.Tensor | None:
        """The last call's per-sample iteration counts."""
        return None if self.result is None else self.result.iterations

    def valid(self, x: torch.Tensor, delta: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``delta`` zeroed outside ``mask`` and clipped so that ``x + delta`` stays in the bounds (no budget)."""
        if mask is not None:
            delta = delta * mask
        if self.bounds is not None:
            delta = (x + delta).clamp(*self.bounds) - x
        return delta

    def finish(
        self, x: torch.Tensor, delta: torch.Tensor, iterations: torch.Tensor, error: torch.Tensor
    ) -> torch.Tensor:
        """Store the unconstrained result of perturbation ``delta`` and return ``delta`` for the projection."""
        flat = delta.detach().reshape(delta.shape[0], -1)
        self.result = MinimalNormResult(
            unconstrained=(x + delta).detach(),
            norms=torch.linalg.vector_norm(flat, dim=1),
            linf=flat.abs().amax(dim=1) if flat.shape[1] else torch.zeros(flat.shape[0], device=flat.device),
            iterations=iterations.detach(),
            error=error.detach().float(),
        )
        return delta.detach()

    def __repr__(self) -> str:
        skip = {"network", "loss", "trace", "result", "target_fn"}
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k not in skip and not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def broadcast_samples(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A ``(B,)`` tensor viewed as ``(B, 1, ..., 1)`` to broadcast against ``like`` ``(B, ...)``."""
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1))).to(like.dtype)
