"""Summaries of per-case records: means with bootstrap intervals, and set-level metrics.

:func:`summarize_records` turns records into
``{"clean": {metric: value, metric + "_ci95": [lo, hi], "num_cases": n}, "<attack>": {...}}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from monai_smia.metrics import (
    bootstrap_ci,
    bootstrap_indices,
    bootstrap_statistic_ci,
    one_vs_rest_fpr,
    percentile_interval,
    resampled_one_vs_rest_fpr,
    resampled_roc_auc_one_vs_rest,
    roc_auc_one_vs_rest,
)
from monai_smia.reports.store import RESERVED_KEYS


def _as_float(v: Any) -> float:
    if v is None:
        return float("nan")
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _is_metric_value(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool))


#: metrics that are not defined (rather than best) where infinite: the PSNR of a case the attack left unchanged
#: (e.g. DeepFool on an already misclassified case); the mean leaves them out and counts them in
#: ``<metric>_unperturbed_cases``
UNDEFINED_WHEN_INFINITE = ("psnr",)


def ci_key(metric: str, confidence: float) -> str:
    return f"{metric}_ci{round(confidence * 100):d}"


def _group_records(records: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        if "attack" not in r:
            raise ValueError(f"record {dict(r)!r} has no 'attack' key (use 'clean' for unattacked cases).")
        groups.setdefault(str(r["attack"]), []).append(r)
    order = (["clean"] if "clean" in groups else []) + [k for k in groups if k != "clean"]
    return {k: groups[k] for k in order}


def summarize_records(
    records: Iterable[Mapping[str, Any]],
    metrics: Sequence[str] | None = None,
    set_metrics: Mapping[str, Callable[[Sequence[Mapping[str, Any]]], float]] | None = None,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Mean of every per-case metric per condition, with percentile bootstrap intervals over cases.

    Args:
        records: per-case records (see module docstring); one condition per distinct ``"attack"``.
        metrics: per-case metric keys to summarise (default: every numeric key not in
            :data:`RESERVED_KEYS`, in order of first appearance). ``None``/``nan`` values mean "not
            defined for this case" and are left out of the mean and its interval.
        set_metrics: metrics of the whole set (e.g. :func:`classification_set_metrics`): each is called
            with a list of records and returns a float; its interval resamples the records (vectorised
            when it is a :class:`SetMetric`, else one call per resample).
        num_resamples, confidence, seed: bootstrap settings (:func:`monai_smia.metrics.bootstrap_ci`).

    Returns:
        ``{condition: {metric: mean, metric + "_ci95": [lo, hi], "num_cases": n}}``, ``"clean"`` first.
    """
    groups = _group_records(records)
    if metrics is None:
        seen: dict[str, None] = {}
        for rows in groups.values():
            for r in rows:
                for k, v in r.items():
                    if k not in RESERVED_KEYS and _is_metric_value(v):
                        seen.setdefault(k, None)
        metrics = list(seen)
    summary: dict[str, dict[str, Any]] = {}
    for name, rows in groups.items():
        out: dict[str, Any] = {"num_cases": len({str(r.get("case_id", i)) for i, r in enumerate(rows)})}
        for m in metrics:
            if not any(m in r for r in rows):
                continue
            v = np.array([_as_float(r.get(m)) for r in rows], dtype=np.float64)
            if m in UNDEFINED_WHEN_INFINITE and np.isinf(v).any():  # PSNR of an unperturbed case: no noise to measure
                out[f"{m}_unperturbed_cases"] = int(np.isinf(v).sum())
                v = np.where(np.isinf(v), np.nan, v)
            finite_or_inf = v[~np.isnan(v)]
            out[m] = float(finite_or_inf.mean()) if finite_or_inf.size else float("nan")
            out[ci_key(m, confidence)] = list(bootstrap_ci(v, num_resamples, confidence, seed))
        for m, fn in (set_metrics or {}).items():
            out[m] = float(fn(rows))
            if hasattr(fn, "bootstrap"):  # vectorised over resamples (SetMetric)
                stats = fn.bootstrap(rows, bootstrap_indices(len(rows), num_resamples, seed))
                ci = (
                    percentile_interval(np.asarray(stats, dtype=np.float64), confidence)
                    if rows
                    else (math.nan, math.nan)
                )
            else:
                ci = bootstrap_statistic_ci(
                    lambda idx, fn=fn, rows=rows: fn([rows[i] for i in idx]), len(rows), num_resamples, confidence, seed
                )
            out[ci_key(m, confidence)] = list(ci)
        summary[name] = out
    return summary


class SetMetric:
    """A metric of a whole set of records (not a mean over cases), with a vectorised bootstrap.

    Args:
        value: ``(outputs (N, K) tensor, labels (N,) tensor) -> float``, the point value (MONAI).
        resampled: ``(outputs, labels, idx (R, n)) -> (R,)`` values of resamples, equal to ``value`` on each.
        output_key: record key holding each case's output vector (logits or probabilities).
    """

    def __init__(
        self,
        value: Callable[[Any, Any], float],
        resampled: Callable[[Any, Any, np.ndarray], np.ndarray],
        output_key: str = "logits",
    ) -> None:
        self.value, self.resampled, self.output_key = value, resampled, output_key

    def arrays(self, rows: Sequence[Mapping[str, Any]]) -> tuple[Any, Any]:
        import torch

        try:
            out = torch.tensor(np.array([np.ravel(np.asarray(r[self.output_key], dtype=np.float64)) for r in rows]))
            lab = torch.tensor([int(r["label"]) for r in rows], dtype=torch.long)
        except KeyError as err:
            raise ValueError(
                f"set metrics need records with {self.output_key!r} and 'label' keys; missing {err}."
            ) from err
        return out, lab

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> float:
        if not rows:
            return math.nan
        return float(self.value(*self.arrays(rows)))

    def bootstrap(self, rows: Sequence[Mapping[str, Any]], idx: np.ndarray) -> np.ndarray:
        if not rows:
            return np.full(len(idx), np.nan)
        return np.asarray(self.resampled(*self.arrays(rows), idx), dtype=np.float64)


def classification_set_metrics(output_key: str = "logits", logits: bool = True) -> dict[str, SetMetric]:
    """Set-level classification metrics read from records holding ``output_key`` (each case's output
    vector) and ``"label"``: ``fpr_one_vs_rest`` (macro, as MONAI ``ConfusionMatrixMetric("fpr")``) and
    ``roc_auc_one_vs_rest`` (macro, MONAI ``compute_roc_auc``), for ``set_metrics`` of
    :func:`summarize_records`."""
    thr = 0.0 if logits else 0.5
    return {
        "fpr_one_vs_rest": SetMetric(
            lambda o, y: one_vs_rest_fpr(o, y, threshold=thr)[0],
            lambda o, y, idx: resampled_one_vs_rest_fpr(o, y, idx, threshold=thr),
            output_key,
        ),
        "roc_auc_one_vs_rest": SetMetric(
            lambda o, y: roc_auc_one_vs_rest(o, y, logits=logits),
            lambda o, y, idx: resampled_roc_auc_one_vs_rest(o, y, idx, logits=logits),
            output_key,
        ),
    }


