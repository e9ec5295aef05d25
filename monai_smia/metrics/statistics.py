"""Bootstrap intervals over cases, plain and for set-level metrics (ROC AUC, one-vs-rest FPR).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from monai_smia.metrics.task import class_indices, predicted_classes


def percentile_interval(stats: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap statistics (``nan`` resamples dropped)."""
    stats = stats[~np.isnan(stats)]
    if stats.size == 0:
        return float("nan"), float("nan")
    q = [(1 - confidence) / 2, 1 - (1 - confidence) / 2]
    with np.errstate(invalid="ignore"):
        lo, hi = np.quantile(stats, q)
    if math.isnan(lo) or math.isnan(hi):  # infinite values make linear interpolation undefined
        lo, hi = np.quantile(stats, q, method="nearest")
    return float(lo), float(hi)


def _check_bootstrap_args(num_resamples: int, confidence: float) -> None:
    if not (isinstance(num_resamples, int) and num_resamples > 0):
        raise ValueError(f"num_resamples must be a positive int, got {num_resamples!r}.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}.")


def bootstrap_indices(num_cases: int, num_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """``(num_resamples, num_cases)`` case indices drawn with replacement by a seeded numpy generator
    (the draw every interval in this module uses, so intervals of one seed resample the same cases)."""
    return np.random.default_rng(seed).integers(0, num_cases, size=(num_resamples, num_cases))


def bootstrap_ci(
    values: Any,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a per-case metric's mean.

    Cases whose value is ``nan`` (metric undefined, e.g. attack success of a misclassified case) are
    dropped first; the remaining ``n`` cases are resampled with replacement ``num_resamples`` times
    with a seeded numpy generator.

    Args:
        values: per-case values (array-like).
        num_resamples: number of bootstrap resamples.
        confidence: interval coverage (0.95 gives the 2.5 and 97.5 percentiles).
        seed: seed of the resampling generator; the same seed gives the same interval.
        statistic: vectorised statistic over the last axis of an ``(R, n)`` array (default: mean).

    Returns:
        ``(lo, hi)``; ``(nan, nan)`` when no case has a value.
    """
    _check_bootstrap_args(num_resamples, confidence)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    samples = v[bootstrap_indices(v.size, num_resamples, seed)]
    with np.errstate(invalid="ignore"):
        stats = samples.mean(axis=1) if statistic is None else np.asarray(statistic(samples), dtype=np.float64)
    return percentile_interval(stats.reshape(-1), confidence)


def bootstrap_statistic_ci(
    statistic: Callable[[np.ndarray], float],
    num_cases: int,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a set-level statistic (ROC AUC, one-vs-rest FPR, ...).

    Args:
        statistic: called with an index array of resampled cases (with replacement); returns a float
            (``nan`` for a resample where it is undefined; such resamples are dropped).
        num_cases: number of cases to resample from.
        num_resamples, confidence, seed: as in :func:`bootstrap_ci`.
    """
    _check_bootstrap_args(num_resamples, confidence)
    if num_cases <= 0:
        return float("nan"), float("nan")
    stats = np.array([float(statistic(i)) for i in bootstrap_indices(num_cases, num_resamples, seed)], dtype=np.float64)
    return percentile_interval(stats, confidence)


def _chunks(idx: np.ndarray, size: int = 128) -> list[np.ndarray]:
    idx = np.atleast_2d(np.asarray(idx))
    return [idx[i : i + size] for i in range(0, len(idx), size)]


def resampled_roc_auc_one_vs_rest(
    y_pred: torch.Tensor, y: torch.Tensor, idx: np.ndarray, logits: bool = True
) -> np.ndarray:
    """Macro one-vs-rest ROC AUC of many resamples at once, equal to :func:`roc_auc_one_vs_rest` on each.

    Vectorised Mann-Whitney form with average ranks for ties (what MONAI's ``compute_roc_auc`` computes
    with its tie handling); a resample where some class has only positives or only negatives gives
    ``nan``, as MONAI's macro average does.

    Args:
        y_pred: ``(N, K)`` outputs of all cases; y: their labels.
        idx: ``(R, n)`` case indices (e.g. :func:`bootstrap_indices`).

    Returns:
        ``(R,)`` float64 array.
    """
    y_pred = torch.as_tensor(y_pred).detach().float().cpu()  # the precision roc_auc_one_vs_rest uses
    k = y_pred.shape[1]
    if logits:
        y_pred = torch.sigmoid(y_pred) if k == 1 else torch.softmax(y_pred, dim=1)
    y_pred = y_pred.double()
    lab = class_indices(y, k, spatial=False).cpu()
    classes = [1] if k == 1 else list(range(k))
    out = []
    for chunk in _chunks(idx):
        ti = torch.as_tensor(chunk, dtype=torch.long)
        aucs = []
        for c in classes:
            scores = y_pred[ti, 0 if k == 1 else c]  # (r, n)
            pos = (lab[ti] == c).double()
            srt = scores.sort(dim=1).values.contiguous()
            lt = torch.searchsorted(srt, scores.contiguous(), right=False).double()
            le = torch.searchsorted(srt, scores.contiguous(), right=True).double()
            ranks = (lt + le + 1) / 2
            npos = pos.sum(dim=1)
            nneg = pos.shape[1] - npos
            u = (ranks * pos).sum(dim=1) - npos * (npos + 1) / 2
            auc = torch.where((npos > 0) & (nneg > 0), u / (npos * nneg).clamp_min(1), torch.full_like(u, float("nan")))
            aucs.append(auc)
        out.append(torch.stack(aucs, dim=1).mean(dim=1).numpy())
    return np.concatenate(out)


def resampled_one_vs_rest_fpr(
    y_pred: torch.Tensor, y: torch.Tensor, idx: np.ndarray, threshold: float = 0.0
) -> np.ndarray:
    """Macro one-vs-rest FPR of many resamples at once, equal to :func:`one_vs_rest_fpr` on each.

    Returns:
        ``(R,)`` float64 array (classes without a negative case are left out of the mean).
    """
    y_pred = torch.as_tensor(y_pred).detach()
    k = y_pred.shape[1]
    pred = predicted_classes(y_pred, threshold).cpu()
    lab = class_indices(y, k, spatial=False).cpu()
    classes = [1] if k == 1 else list(range(k))
    out = []
    for chunk in _chunks(idx):
        ti = torch.as_tensor(chunk, dtype=torch.long)
        p, t = pred[ti], lab[ti]
        fprs = []
        for c in classes:
            neg = t != c
            fp = ((p == c) & neg).double().sum(dim=1)
            n_neg = neg.double().sum(dim=1)
            fprs.append(torch.where(n_neg > 0, fp / n_neg.clamp_min(1), torch.full_like(fp, float("nan"))))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out.append(np.nanmean(torch.stack(fprs, dim=1).numpy(), axis=1))
    return np.concatenate(out)
