"""Per-iteration diagnostics of an iterative attack (the quantities of SMIA's Fig. 2 and Table 1).

Statistics are kept per sample as raw sums so that traces of the slices of one volume can be merged
exactly into one sample (:meth:`AttackTrace.merge_samples`) before averaging over a batch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

__all__ = ["AttackTrace", "TraceRecorder"]


@dataclass
class AttackTrace:
    """Diagnostics of one attack call; every field has shape ``(T, B)`` (iterations, samples), on CPU.

    Attributes:
        deviation_loss: task loss of ``f(x + d)`` before each update (per-sample mean over pixels).
        stabilization_loss: cross-entropy of ``f(x + d)`` against the prediction on ``x + W * d``;
            ``nan`` where it was not computed (first iteration, or ``alpha = 0``).
        zero_gradient: the input gradient of the objective was exactly zero for that sample.
        numel: number of perturbed elements per sample.
        d_sum, d_sqsum: sum and sum of squares of the accumulated perturbation after each update.
        upd_dot: dot product of the update applied at ``t`` with the one applied at ``t - 1``.
        upd_sq, upd_prev_sq: squared norms of the updates applied at ``t`` and ``t - 1``.
    """

    deviation_loss: torch.Tensor
    stabilization_loss: torch.Tensor
    zero_gradient: torch.Tensor
    numel: torch.Tensor
    d_sum: torch.Tensor
    d_sqsum: torch.Tensor
    upd_dot: torch.Tensor
    upd_sq: torch.Tensor
    upd_prev_sq: torch.Tensor

    @property
    def num_iter(self) -> int:
        return int(self.deviation_loss.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.deviation_loss.shape[1])

    @property
    def perturbation_variance(self) -> torch.Tensor:
        """Variance of the accumulated perturbation ``d`` after each update, ``(T, B)``."""
        mean = self.d_sum / self.numel
        return (self.d_sqsum / self.numel - mean**2).clamp_min(0.0)

    @property
    def cosine(self) -> torch.Tensor:
        """Cosine between consecutive applied updates, ``(T, B)``; ``nan`` at ``t = 0``, 0 for an empty update."""
        denom = (self.upd_sq * self.upd_prev_sq).sqrt()
        cos = torch.where(denom > 0, self.upd_dot / denom.clamp_min(1e-300), torch.zeros_like(denom))
        cos[0] = float("nan")
        return cos

    @property
    def positive_cosine_share(self) -> torch.Tensor:
        """Share of iterations ``t >= 1`` whose update points the same way as the previous one, ``(B,)``."""
        if self.num_iter < 2:
            return torch.full((self.num_samples,), float("nan"), dtype=torch.float64)
        return (self.cosine[1:] > 0).double().mean(dim=0)

    @classmethod
    def cat(cls, traces: list[AttackTrace]) -> AttackTrace:
        """Concatenate traces along the sample axis (they must have the same number of iterations)."""
        if not traces:
            raise ValueError("AttackTrace.cat needs at least one trace.")
        if len({t.num_iter for t in traces}) != 1:
            raise ValueError("AttackTrace.cat: traces have different numbers of iterations.")
        return cls(**{f.name: torch.cat([getattr(t, f.name) for t in traces], dim=1) for f in fields(cls)})

    def merge_samples(self) -> AttackTrace:
        """Reduce all samples into one (e.g. the slices of a volume attacked slice by slice).

        Sums are added; losses are averaged weighted by the number of elements; a zero gradient is
        recorded only when every sample had one.
        """
        w = self.numel / self.numel.sum(dim=1, keepdim=True)
        stab = self.stabilization_loss
        return AttackTrace(
            deviation_loss=(self.deviation_loss * w).sum(dim=1, keepdim=True),
            stabilization_loss=(stab * w).sum(dim=1, keepdim=True),
            zero_gradient=self.zero_gradient.all(dim=1, keepdim=True),
            **{
                name: getattr(self, name).sum(dim=1, keepdim=True)
                for name in ("numel", "d_sum", "d_sqsum", "upd_dot", "upd_sq", "upd_prev_sq")
            },
        )

    def summary(self) -> dict[str, Any]:
        """Batch-averaged per-iteration curves and final numbers, as plain Python values."""

        def curve(t: torch.Tensor) -> list[float]:
            return [float(v) for v in t.double().mean(dim=1)]

        return {
            "deviation_loss": curve(self.deviation_loss),
            "stabilization_loss": curve(self.stabilization_loss),
            "perturbation_variance": curve(self.perturbation_variance),
            "cosine": curve(self.cosine),
            "positive_cosine_share": float(self.positive_cosine_share.mean()),
            "final_variance": float(self.perturbation_variance[-1].mean()),
            "zero_gradient_iterations": int(self.zero_gradient.any(dim=1).sum()),
        }


class TraceRecorder:
    """Collects per-iteration statistics on the attack's device without synchronising with the host;
    :meth:`finish` moves everything to the CPU once, after the last iteration."""

    def __init__(self, num_samples: int, numel: int, device: torch.device) -> None:
        self.rows: dict[str, list[torch.Tensor]] = {f.name: [] for f in fields(AttackTrace) if f.name != "numel"}
        self.numel = numel
        self.num_samples = num_samples
        self.device = device
        self._prev_update: torch.Tensor | None = None
        self._prev_sq: torch.Tensor | None = None
        self._nan = torch.full((num_samples,), float("nan"), device=device)

    def record(
        self,
        grad: torch.Tensor,
        deviation: torch.Tensor,
        stabilization: torch.Tensor | None,
        delta: torch.Tensor,
        update: torch.Tensor,
    ) -> None:
        """Record one iteration: the objective's gradient, the two loss terms, the new ``d`` and the update applied."""
        b = self.num_samples
        f64 = torch.float64  # sums accumulate in float64 without a float64 copy of the tensors
        flat_d = delta.detach().reshape(b, -1)
        flat_u = update.detach().reshape(b, -1)
        prev = self._prev_update
        r = self.rows
        r["deviation_loss"].append(deviation.detach().float().reshape(b))
        r["stabilization_loss"].append(self._nan if stabilization is None else stabilization.detach().float().reshape(b))
        r["zero_gradient"].append(grad.detach().reshape(b, -1).abs().amax(dim=1) == 0)
        r["d_sum"].append(flat_d.sum(dim=1, dtype=f64))
        r["d_sqsum"].append((flat_d * flat_d).sum(dim=1, dtype=f64))
        u_sq = (flat_u * flat_u).sum(dim=1, dtype=f64)
        r["upd_sq"].append(u_sq)
        if prev is None:
            r["upd_dot"].append(torch.zeros_like(u_sq))
            r["upd_prev_sq"].append(torch.zeros_like(u_sq))
        else:
            r["upd_dot"].append((flat_u * prev).sum(dim=1, dtype=f64))
            r["upd_prev_sq"].append(self._prev_sq)
        self._prev_update, self._prev_sq = flat_u, u_sq

    def finish(self) -> AttackTrace:
        """Stack the rows into an :class:`AttackTrace` on the CPU."""
        cols = {k: torch.stack(v).cpu() for k, v in self.rows.items()}
        cols = {k: (v if v.dtype == torch.bool else v.double()) for k, v in cols.items()}
        numel = torch.full_like(cols["d_sum"], float(self.numel))
        return AttackTrace(numel=numel, **cols)
