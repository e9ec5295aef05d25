"""Paired comparison of two methods scored on the same cases (docs/design.md, section 1, baselines).

Comparing two attacks by whether their separate bootstrap intervals overlap cannot tell whether a
difference is real: both are scored on the same cases, and most of the spread is between cases, not
between methods. A paired comparison works on the per-case differences ``d_i = a_i - b_i``:

- wins / ties / losses of ``a`` over ``b`` in the claimed direction, a tie being ``|d_i| <= tolerance``;
- a paired bootstrap interval of the mean difference (the cases are resampled, each keeping its pair);
- a verdict: a claim "``a`` is ``direction`` than ``b``" *holds* only when the whole interval lies on
  the claimed side of 0 (0 itself excluded); otherwise it *does not hold*.

Example::

    cmp = compare_paired(smia_acc, pgd_acc, direction="less", names=("SMIA", "PGD"), metric="accuracy")
    cmp.verdict        # "holds" when SMIA leaves a lower accuracy than PGD beyond resampling noise
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from monai_smia.metrics.statistics import bootstrap_indices, percentile_interval

__all__ = [
    "DIRECTIONS",
    "DOES_NOT_HOLD",
    "HOLDS",
    "PairedComparison",
    "compare_paired",
    "compare_paired_statistic",
    "paired_differences",
]

#: the claimed sign of ``mean(a - b)``: "greater" (> 0) or "less" (< 0)
DIRECTIONS = ("greater", "less")
HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"


@dataclass
class PairedComparison:
    """The outcome of :func:`compare_paired` (plain Python values; :meth:`as_dict` for JSON).

    Attributes:
        a, b: names of the two methods; metric: the per-case metric compared.
        direction: the claim, ``mean(a - b)`` "greater" or "less" than 0.
        num_cases: cases compared (both values finite); num_dropped: cases left out (a ``nan``).
        mean_a, mean_b, mean_difference: means over the compared cases (``mean_difference = mean_a - mean_b``).
        lo, hi: paired bootstrap interval of the mean difference.
        wins, ties, losses: cases where ``a`` beats ``b`` in the claimed direction by more than
            ``tolerance``, lies within ``tolerance`` of it, or loses to it.
        tolerance, confidence, num_resamples, seed: the settings used.
        verdict: :data:`HOLDS` or :data:`DOES_NOT_HOLD`.
    """

    a: str
    b: str
    metric: str
    direction: str
    num_cases: int
    num_dropped: int
    mean_a: float
    mean_b: float
    mean_difference: float
    lo: float
    hi: float
    wins: int
    ties: int
    losses: int
    tolerance: float
    confidence: float
    num_resamples: int
    seed: int
    verdict: str

    @property
    def holds(self) -> bool:
        return self.verdict == HOLDS

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def interval_text(self, digits: int = 3) -> str:
        """``"-0.120 [-0.180, -0.060]"``: the mean difference and its interval."""
        return f"{self.mean_difference:+.{digits}f} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}]"


def paired_differences(
    a: Mapping[str, float], b: Mapping[str, float], names: tuple[str, str] = ("a", "b")
) -> tuple[list[str], np.ndarray, np.ndarray, int]:
    """Pair two ``{case_id: value}`` mappings.

    Returns:
        ``(case_ids, values_a, values_b, num_dropped)``: the case ids in sorted order with both values
        finite, their values, and how many cases were dropped for a non-finite value.

    Raises:
        ValueError: the two mappings do not hold the same case ids (naming the first few that differ),
            or no case is left.
    """
    for name, m in zip(names, (a, b)):
        if not isinstance(m, Mapping):
            raise TypeError(f"{name}: expected a mapping case_id -> value, got {type(m).__name__}.")
    ka, kb = set(map(str, a)), set(map(str, b))
    if ka != kb:
        only_a, only_b = sorted(ka - kb), sorted(kb - ka)
        raise ValueError(
            f"{names[0]} and {names[1]} were not scored on the same cases: {len(only_a)} case(s) only in "
            f"{names[0]} {only_a[:3]}, {len(only_b)} only in {names[1]} {only_b[:3]}; a paired comparison needs "
            "the same case ids on both sides."
        )
    va_all = {str(k): float(v) for k, v in a.items()}
    vb_all = {str(k): float(v) for k, v in b.items()}
    ids = [k for k in sorted(ka) if math.isfinite(va_all[k]) and math.isfinite(vb_all[k])]
    if not ids:
        raise ValueError(
            f"{names[0]} vs {names[1]}: no case has a finite value on both sides ({len(ka)} case(s) given)."
        )
    va = np.array([va_all[k] for k in ids], dtype=np.float64)
    vb = np.array([vb_all[k] for k in ids], dtype=np.float64)
    return ids, va, vb, len(ka) - len(ids)


def compare_paired(
    a: Mapping[str, float],
    b: Mapping[str, float],
    direction: str = "greater",
    tolerance: float = 0.0,
    names: tuple[str, str] = ("a", "b"),
    metric: str = "",
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Compare ``a`` and ``b`` (``{case_id: value}``, the same case ids) on their per-case differences.

    Args:
        a, b: per-case values of the two methods.
        direction: the claim: ``"greater"`` (``a`` scores higher than ``b``) or ``"less"``.
        tolerance: ``|a_i - b_i| <= tolerance`` counts as a tie (>= 0).
        names: the methods' names (for messages and the result); metric: the metric's name.
        num_resamples, confidence, seed: of the paired bootstrap (resampling cases with
            :func:`~monai_smia.metrics.statistics.bootstrap_indices`).

    Raises:
        ValueError: an unknown direction, a negative tolerance, or case ids that do not match.
    """
    _check_settings(direction, tolerance, num_resamples, confidence)
    _, va, vb, dropped = paired_differences(a, b, names)
    d = va - vb
    interval = percentile_interval(d[bootstrap_indices(d.size, num_resamples, seed)].mean(axis=1), confidence)
    means = (float(va.mean()), float(vb.mean()), float(d.mean()))
    settings = (direction, tolerance, num_resamples, confidence, seed)
    return _comparison(names, metric, d, int(dropped), means, interval, settings)


def compare_paired_statistic(
    statistic_a: Callable[[Sequence[int] | None], float],
    statistic_b: Callable[[Sequence[int] | None], float],
    num_cases: int,
    direction: str = "greater",
    tolerance: float = 0.0,
    names: tuple[str, str] = ("a", "b"),
    metric: str = "",
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Compare a set-level statistic (e.g. a detector's AP) of two methods scored on the same ``num_cases`` cases.

    ``statistic_a(idx)`` / ``statistic_b(idx)`` is the statistic of the cases ``idx`` (indices into one case
    order shared by both sides; ``None``: all cases). The interval is the paired bootstrap of
    ``statistic_a(idx) - statistic_b(idx)``, one resample ``idx`` for both sides; wins / ties / losses compare
    the statistic case by case (undefined on a case: a tie). ``mean_a``/``mean_b`` are the statistic on all cases.

    Raises:
        ValueError: an unknown direction, a negative tolerance, bad bootstrap settings or no case.
    """
    _check_settings(direction, tolerance, num_resamples, confidence)
    if num_cases < 1:
        raise ValueError(f"{names[0]} vs {names[1]}: no case to compare.")
    idx = bootstrap_indices(num_cases, num_resamples, seed)
    boot = np.array([statistic_a(i) - statistic_b(i) for i in idx], dtype=np.float64)
    interval = percentile_interval(boot, confidence)
    per_case = np.array([statistic_a([i]) - statistic_b([i]) for i in range(num_cases)], dtype=np.float64)
    mean_a, mean_b = float(statistic_a(None)), float(statistic_b(None))
    settings = (direction, tolerance, num_resamples, confidence, seed)
    means = (mean_a, mean_b, mean_a - mean_b)
    return _comparison(names, metric, np.nan_to_num(per_case, nan=0.0), 0, means, interval, settings)


def _check_settings(direction: str, tolerance: float, num_resamples: int, confidence: float) -> None:
    """One-line ``ValueError`` for an unknown direction, a negative tolerance or bad bootstrap settings."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}.")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}.")
    if isinstance(num_resamples, bool) or not isinstance(num_resamples, int) or num_resamples < 1:
        raise ValueError(f"num_resamples must be a positive int, got {num_resamples!r}.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}.")


def _comparison(
    names: tuple[str, str],
    metric: str,
    per_case: np.ndarray,
    num_dropped: int,
    means: tuple[float, float, float],
    interval: tuple[float, float],
    settings: tuple[str, float, int, float, int],
) -> PairedComparison:
    """The :class:`PairedComparison` of per-case differences ``per_case`` (wins / ties / losses beyond the
    tolerance), ``means`` (a, b, difference) and the bootstrap ``interval``; ``settings`` are (direction,
    tolerance, num_resamples, confidence, seed)."""
    direction, tolerance, num_resamples, confidence, seed = settings
    sign = 1.0 if direction == "greater" else -1.0
    wins, losses = int((sign * per_case > tolerance).sum()), int((sign * per_case < -tolerance).sum())
    lo, hi = interval
    holds = lo > 0 if direction == "greater" else hi < 0
    return PairedComparison(
        a=names[0], b=names[1], metric=metric, direction=direction, num_cases=int(per_case.size),
        num_dropped=num_dropped, mean_a=means[0], mean_b=means[1], mean_difference=means[2], lo=lo, hi=hi,
        wins=wins, ties=int(per_case.size) - wins - losses, losses=losses, tolerance=float(tolerance),
        confidence=float(confidence), num_resamples=num_resamples, seed=seed,
        verdict=HOLDS if holds else DOES_NOT_HOLD,
    )  # fmt: skip
