"""Per-iteration diagnostics of an iterative attack (the quantities of SMIA's Fig. 2 and Table 1).

Statistics are kept per sample as raw sums so that traces of the slices of one volume can be merged
exactly into one sample (:meth:`AttackTrace.merge_samples`) before averaging over a batch.

The paper's "cosine between consecutive perturbations" fits more than one vector, so four are
recorded (``COSINE_KINDS``), each compared with its value at the previous iteration:

- ``step``: the raw step ``a * sign(grad)`` before projection;
- ``gradient``: the input gradient of the objective;
- ``update``: the update applied after projection, ``d_t - d_{t-1}`` (the historical ``cosine``);
- ``perturbation``: the accumulated perturbation ``d_t``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from monai.data import MetaTensor

__all__ = ["COSINE_KINDS", "AttackTrace", "TraceRecorder"]

#: the vectors whose consecutive cosines are recorded (see the module docstring)
COSINE_KINDS = ("step", "gradient", "update", "perturbation")
#: fields that add up when samples are merged (all but the losses and the zero-gradient flags)
_SUM_FIELDS = (
    "numel",
    "d_sum",
    "d_sqsum",
    "upd_dot",
    "upd_sq",
    "upd_prev_sq",
    "step_dot",
    "step_sq",
    "grad_dot",
    "grad_sq",
    "d_dot",
)


@dataclass
class AttackTrace:
    """Diagnostics of one attack call; every field has shape ``(T, B)`` (iterations, samples), on CPU.

    Attributes:
        deviation_loss: task loss of ``f(x + d)`` before each update (per-sample mean over pixels).
        stabilization_loss: the STA term as optimised: cross-entropy of ``f(x + d)`` against the
            prediction on the smoothed anchor (KL divergence for SMIA's ``stabilization_target=
            "differentiable"``); ``nan`` where it was not computed (first iteration, or ``alpha = 0``).
        zero_gradient: the input gradient of the objective was exactly zero for that sample.
        numel: number of perturbed elements per sample.
        d_sum, d_sqsum: sum and sum of squares of the accumulated perturbation after each update.
        upd_dot: dot product of the update applied at ``t`` with the one applied at ``t - 1``.
        upd_sq, upd_prev_sq: squared norms of the updates applied at ``t`` and ``t - 1``.
        step_dot, step_sq: dot product of the raw step ``a * sign(grad)`` with the previous one, and
            its squared norm.
        grad_dot, grad_sq: the same for the input gradient of the objective.
        d_dot: dot product of the accumulated perturbation after the update at ``t`` with the one
            after ``t - 1`` (its squared norm is ``d_sqsum``).
        Every ``*_dot`` is 0 at ``t = 0``.
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
    step_dot: torch.Tensor
    step_sq: torch.Tensor
    grad_dot: torch.Tensor
    grad_sq: torch.Tensor
    d_dot: torch.Tensor

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

    @staticmethod
    def _cosine(dot: torch.Tensor, sq: torch.Tensor, prev_sq: torch.Tensor | None = None) -> torch.Tensor:
        """Cosine from a dot product and squared norms; ``nan`` at ``t = 0``, 0 where a vector is zero."""
        if prev_sq is None:
            prev_sq = torch.cat([torch.zeros_like(sq[:1]), sq[:-1]])
        denom = (sq * prev_sq).sqrt()
        cos = torch.where(denom > 0, dot / denom.clamp_min(1e-300), torch.zeros_like(denom))
        cos[0] = float("nan")
        return cos

    @property
    def cosine(self) -> torch.Tensor:
        """Cosine between consecutive applied updates, ``(T, B)``; ``nan`` at ``t = 0``, 0 for an empty update."""
        return self._cosine(self.upd_dot, self.upd_sq, self.upd_prev_sq)

    def cosines(self, kind: str) -> torch.Tensor:
        """Cosine between consecutive vectors of ``kind`` (one of :data:`COSINE_KINDS`), ``(T, B)``."""
        if kind == "update":
            return self.cosine
        if kind == "step":
            return self._cosine(self.step_dot, self.step_sq)
        if kind == "gradient":
            return self._cosine(self.grad_dot, self.grad_sq)
        if kind == "perturbation":
            return self._cosine(self.d_dot, self.d_sqsum)
        raise ValueError(f"kind must be one of {COSINE_KINDS}, got {kind!r}.")

    def cosine_mean(self, kind: str = "update") -> torch.Tensor:
        """Per sample, the mean cosine over iterations ``t >= 1``, ``(B,)``; ``nan`` for one iteration."""
        if self.num_iter < 2:
            return torch.full((self.num_samples,), float("nan"), dtype=torch.float64)
        return self.cosines(kind)[1:].double().mean(dim=0)

    def positive_share(self, kind: str = "update") -> torch.Tensor:
        """Per sample, the share of iterations ``t >= 1`` with a positive cosine, ``(B,)``."""
        if self.num_iter < 2:
            return torch.full((self.num_samples,), float("nan"), dtype=torch.float64)
        return (self.cosines(kind)[1:] > 0).double().mean(dim=0)

    @property
    def positive_cosine_share(self) -> torch.Tensor:
        """Share of iterations ``t >= 1`` whose update points the same way as the previous one, ``(B,)``."""
        return self.positive_share("update")

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
            **{name: getattr(self, name).sum(dim=1, keepdim=True) for name in _SUM_FIELDS},
        )

    def summary(self) -> dict[str, Any]:
        """Batch-averaged per-iteration curves and final numbers, as plain Python values.

        ``cosine``/``positive_cosine_share`` are those of the applied updates; for each kind of
        :data:`COSINE_KINDS` there are ``{kind}_cosine`` (curve), ``{kind}_cosine_mean`` and
        ``{kind}_positive_cosine_share`` (per sample over ``t >= 1``, then averaged over samples).
        """

        def curve(t: torch.Tensor) -> list[float]:
            return [float(v) for v in t.double().mean(dim=1)]

        out: dict[str, Any] = {
            "deviation_loss": curve(self.deviation_loss),
            "stabilization_loss": curve(self.stabilization_loss),
            "perturbation_variance": curve(self.perturbation_variance),
            "cosine": curve(self.cosine),
            "positive_cosine_share": float(self.positive_cosine_share.mean()),
            "final_variance": float(self.perturbation_variance[-1].mean()),
            "zero_gradient_iterations": int(self.zero_gradient.any(dim=1).sum()),
        }
        for kind in COSINE_KINDS:
            out[f"{kind}_cosine"] = curve(self.cosines(kind))
            out[f"{kind}_cosine_mean"] = float(self.cosine_mean(kind).mean())
            out[f"{kind}_positive_cosine_share"] = float(self.positive_share(kind).mean())
        return out

    def table(self) -> str:
        """A short per-iteration table, averaged over the batch: the losses, ``Var(d)`` and the cosine of each
        kind between consecutive vectors (``-`` at the first iteration, which has no predecessor), then the
        share of iterations with a positive cosine of consecutive applied updates."""

        def cell(v: float) -> str:
            return "-" if v != v else f"{v:.4g}"

        kinds = [(k, self.cosines(k).double().mean(dim=1)) for k in COSINE_KINDS]
        head = ["iter", "DEV loss", "STA loss", "Var(d)", *(f"cos {k}" for k, _ in kinds)]
        rows = [head, ["---"] * len(head)]
        dev, sta = self.deviation_loss.double().mean(1), self.stabilization_loss.double().mean(1)
        var = self.perturbation_variance.double().mean(1)
        for t in range(self.num_iter):
            values = [dev[t], sta[t], var[t], *(c[t] for _, c in kinds)]
            rows.append([str(t + 1), *(cell(float(v)) for v in values)])
        share = float(self.positive_cosine_share.mean())
        lines = ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(
            [*lines, f"share of iterations whose applied update has cos > 0 with the previous one: {cell(share)}"]
        )

    def __str__(self) -> str:
        return self.table()


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products ``(B, N) x (B, N) -> (B,)`` as float64. torch sums on the CPU pairwise
    (cascade), so accumulating in the inputs' precision keeps about 1e-7 relative error at half the
    memory traffic of a float64 accumulator."""
    return (a * b).sum(dim=1).double()


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.as_tensor() if isinstance(t, MetaTensor) else t


class TraceRecorder:
    """Collects per-iteration statistics on the attack's device without synchronising with the host;
    :meth:`finish` moves everything to the CPU once, after the last iteration.

    It keeps references to the previous iteration's gradient, raw step, update and perturbation
    (no copies) to form the consecutive dot products; it runs no extra forward or backward pass.
    """

    def __init__(self, num_samples: int, numel: int, device: torch.device) -> None:
        self.rows: dict[str, list[torch.Tensor]] = {f.name: [] for f in fields(AttackTrace) if f.name != "numel"}
        self.numel = numel
        self.num_samples = num_samples
        self.device = device
        self._prev: dict[str, torch.Tensor] = {}
        self._prev_sq: torch.Tensor | None = None
        self._nan = torch.full((num_samples,), float("nan"), device=device)

    def _pair(self, name: str, flat: torch.Tensor, dot_row: str, sq_row: str | None) -> torch.Tensor:
        """Append ``flat``'s squared norm (when ``sq_row``) and its dot product with the previous ``name``."""
        sq = _dot(flat, flat)
        if sq_row is not None:
            self.rows[sq_row].append(sq)
        prev = self._prev.get(name)
        self.rows[dot_row].append(torch.zeros_like(sq) if prev is None else _dot(flat, prev))
        self._prev[name] = flat
        return sq

    def record(
        self,
        grad: torch.Tensor,
        deviation: torch.Tensor,
        stabilization: torch.Tensor | None,
        delta: torch.Tensor,
        update: torch.Tensor,
        step: torch.Tensor | None = None,
    ) -> None:
        """Record one iteration: the objective's gradient, the two loss terms, the new ``d``, the update
        applied and the raw step ``a * sign(grad)`` (taken as ``sign(grad)`` when not given)."""
        b = self.num_samples
        # plain tensors: MetaTensor metadata would be sliced and re-collated by every reduction below
        grad, delta, update, deviation = (_plain(t) for t in (grad, delta, update, deviation))
        stabilization = None if stabilization is None else _plain(stabilization)
        step = None if step is None else _plain(step)
        flat_g = grad.detach().reshape(b, -1)
        flat_d = delta.detach().reshape(b, -1)
        r = self.rows
        r["deviation_loss"].append(deviation.detach().float().reshape(b))
        r["stabilization_loss"].append(
            self._nan if stabilization is None else stabilization.detach().float().reshape(b)
        )
        r["zero_gradient"].append(flat_g.abs().amax(dim=1) == 0)
        r["d_sum"].append(flat_d.sum(dim=1).double())
        self._pair("d", flat_d, "d_dot", "d_sqsum")
        self._pair("grad", flat_g, "grad_dot", "grad_sq")
        raw = flat_g.sign() if step is None else step.detach().reshape(b, -1)
        self._pair("step", raw, "step_dot", "step_sq")
        u_sq = self._pair("update", update.detach().reshape(b, -1), "upd_dot", "upd_sq")
        r["upd_prev_sq"].append(torch.zeros_like(u_sq) if self._prev_sq is None else self._prev_sq)
        self._prev_sq = u_sq

    def finish(self) -> AttackTrace:
        """Stack the rows into an :class:`AttackTrace` on the CPU."""
        self._prev.clear()
        cols = {k: torch.stack(v).cpu() for k, v in self.rows.items()}
        cols = {k: (v if v.dtype == torch.bool else v.double()) for k, v in cols.items()}
        numel = torch.full_like(cols["d_sum"], float(self.numel))
        return AttackTrace(numel=numel, **cols)
