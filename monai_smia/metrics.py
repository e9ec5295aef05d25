"""Metrics for robustness reports: perturbation statistics, attack success and per-case task metrics.

Everything here works per case (one image, or one volume attacked slice by slice) so that clean and
attacked runs are scored by the same code and every headline number can carry a bootstrap interval
over cases. Task metrics are thin wrappers around MONAI's own (``DiceMetric``, ``MeanIoU``,
``ConfusionMatrixMetric``, ``ROCAUCMetric``, ``PSNRMetric``, ``SSIMMetric``); top-1 accuracy follows
ignite's ``Accuracy`` (argmax equals the label), not ``ConfusionMatrixMetric("accuracy")``, which
averages one-vs-rest accuracies and reads higher.

The perturbation variance (``"var"``) is the statistic of the SMIA paper (Qi et al., "Stabilized
Medical Image Attacks", ICLR 2021, arXiv 2103.05232, Table 1): the population variance of the
perturbation ``d = x_adv - x`` over its elements, as in :class:`monai_smia.attacks.trace.AttackTrace`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from monai.metrics import (
    CumulativeIterationMetric,
    DiceMetric,
    MeanIoU,
    PSNRMetric,
    SSIMMetric,
    compute_confusion_matrix_metric,
    compute_roc_auc,
    get_confusion_matrix,
)
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

__all__ = [
    "PERTURBATION_STATISTICS",
    "PerturbationMetric",
    "bootstrap_ci",
    "bootstrap_indices",
    "bootstrap_statistic_ci",
    "class_indices",
    "classification_attack_success",
    "classification_case_metrics",
    "one_vs_rest_fpr",
    "percentile_interval",
    "perturbation_case_metrics",
    "perturbation_statistics",
    "predicted_classes",
    "psnr_per_case",
    "resampled_one_vs_rest_fpr",
    "resampled_roc_auc_one_vs_rest",
    "roc_auc_one_vs_rest",
    "segmentation_attack_success",
    "segmentation_case_metrics",
    "ssim_per_case",
    "success_rate",
    "top1_accuracy",
    "top1_correct",
]

PERTURBATION_STATISTICS = ("linf", "l2", "var")


def _check_pair(x: torch.Tensor, x_adv: torch.Tensor, name: str = "x_adv") -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(x_adv, torch.Tensor):
        raise TypeError(f"x and {name} must be torch.Tensor, got {type(x).__name__} and {type(x_adv).__name__}.")
    if x.shape != x_adv.shape:
        raise ValueError(
            f"x {tuple(x.shape)} and {name} {tuple(x_adv.shape)} must have the same shape (B, C, *spatial)."
        )
    if x.ndim < 3:
        raise ValueError(f"x must be batch-first and channel-first (B, C, *spatial), got shape {tuple(x.shape)}.")


def perturbation_statistics(
    x: torch.Tensor, x_adv: torch.Tensor, mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """L-infinity norm, L2 norm and variance of ``d = x_adv - x`` per case.

    Args:
        x: clean images ``(B, C, *spatial)``.
        x_adv: adversarial images, same shape.
        mask: optional, broadcastable to ``x``; only elements where ``mask != 0`` are counted
            (the variance is then taken over the masked elements only).

    Returns:
        ``{"linf": (B,), "l2": (B,), "var": (B,)}`` float64 tensors on ``x``'s device. The variance is
        the population variance over elements (the paper's "Var"); a case with no element counted
        gives ``nan``.
    """
    _check_pair(x, x_adv)
    d = (x_adv.detach().double() - x.detach().double()).reshape(x.shape[0], -1)
    if mask is None:
        w = torch.ones_like(d)
    else:
        try:
            w = (
                (torch.broadcast_to(torch.as_tensor(mask, device=x.device), x.shape) != 0)
                .reshape(x.shape[0], -1)
                .double()
            )
        except RuntimeError as err:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to images {tuple(x.shape)}."
            ) from err
    n = w.sum(dim=1)
    dw = d * w
    mean = dw.sum(dim=1) / n
    var = ((d - mean[:, None]) ** 2 * w).sum(dim=1) / n
    return {"linf": dw.abs().amax(dim=1), "l2": dw.pow(2).sum(dim=1).sqrt(), "var": var}


class PerturbationMetric(CumulativeIterationMetric):
    """Cumulative perturbation statistic for MONAI evaluators: ``y_pred`` is ``x_adv``, ``y`` the clean ``x``.

    Args:
        statistic: ``"linf"``, ``"l2"`` or ``"var"`` (the SMIA paper's perturbation variance).
        reduction: MONAI metric reduction applied by :meth:`aggregate` (``"none"`` keeps per-case values).
        get_not_nans: also return the number of non-nan values, as MONAI metrics do.

    Example::

        metric = PerturbationMetric("linf")
        metric(x_adv, x)            # per batch; (B, 1)
        metric.aggregate()          # mean over all cases seen
    """

    def __init__(
        self,
        statistic: str = "linf",
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        if statistic not in PERTURBATION_STATISTICS:
            raise ValueError(f"statistic must be one of {PERTURBATION_STATISTICS}, got {statistic!r}.")
        self.statistic = statistic
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        if y is None:
            raise ValueError("PerturbationMetric needs y (the clean images) beside y_pred (the adversarial images).")
        return perturbation_statistics(y, y_pred, kwargs.get("mask"))[self.statistic][:, None]

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise RuntimeError(
                "PerturbationMetric.aggregate: nothing accumulated yet (call the metric on a batch first)."
            )
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f


def _data_range(x: torch.Tensor, bounds: tuple[float, float] | None, data_range: float | None) -> list[float]:
    """Per-case data range: ``data_range`` if given, else ``hi - lo`` of ``bounds``, else the clean image's range."""
    if data_range is not None:
        if not data_range > 0:
            raise ValueError(f"data_range must be positive, got {data_range}.")
        return [float(data_range)] * x.shape[0]
    if bounds is not None:
        lo, hi = bounds
        if not hi > lo:
            raise ValueError(f"bounds must be (lo, hi) with hi > lo, got {bounds}.")
        return [float(hi - lo)] * x.shape[0]
    flat = x.detach().reshape(x.shape[0], -1).double()
    rng = (flat.amax(dim=1) - flat.amin(dim=1)).tolist()
    return [r if r > 0 else 1.0 for r in rng]


def _grouped(x: torch.Tensor, ranges: list[float]) -> list[tuple[float, list[int]]]:
    groups: dict[float, list[int]] = {}
    for i, r in enumerate(ranges):
        groups.setdefault(r, []).append(i)
    return list(groups.items())


def psnr_per_case(
    x: torch.Tensor, x_adv: torch.Tensor, bounds: tuple[float, float] | None = None, data_range: float | None = None
) -> torch.Tensor:
    """PSNR (dB) of ``x_adv`` against the clean ``x`` per case, through MONAI's :class:`PSNRMetric`.

    The data range is ``data_range``, else ``hi - lo`` of ``bounds``, else each clean image's
    ``max - min``. Identical images give ``inf``.

    Returns:
        ``(B,)`` float64 tensor on the CPU.
    """
    _check_pair(x, x_adv)
    out = torch.empty(x.shape[0], dtype=torch.float64)
    xd, ad = x.detach().double(), x_adv.detach().double()
    for r, idx in _grouped(x, _data_range(x, bounds, data_range)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            vals = PSNRMetric(max_val=r, reduction="none")(ad[idx], xd[idx])
        out[idx] = vals.reshape(-1).cpu().double()
    return out


def ssim_per_case(
    x: torch.Tensor, x_adv: torch.Tensor, bounds: tuple[float, float] | None = None, data_range: float | None = None
) -> torch.Tensor:
    """SSIM of ``x_adv`` against the clean ``x`` per case, through MONAI's :class:`SSIMMetric`.

    2D for ``(B, C, H, W)`` and 3D for ``(B, C, H, W, D)``; the Gaussian window (11, sigma 1.5) is
    shrunk to the largest odd size that fits a small dimension (e.g. a thin slab of slices). Cases
    with a spatial dimension under 3 give ``nan``. Channels are averaged.

    Returns:
        ``(B,)`` float64 tensor on the CPU.
    """
    _check_pair(x, x_adv)
    spatial = tuple(x.shape[2:])
    if len(spatial) not in (2, 3):
        raise ValueError(f"SSIM needs 2D or 3D images (B, C, *spatial), got shape {tuple(x.shape)}.")
    if min(spatial) < 3:
        return torch.full((x.shape[0],), float("nan"), dtype=torch.float64)
    win = [min(11, s) if min(11, s) % 2 == 1 else min(11, s) - 1 for s in spatial]
    out = torch.empty(x.shape[0], dtype=torch.float64)
    xd, ad = x.detach().double(), x_adv.detach().double()
    for r, idx in _grouped(x, _data_range(x, bounds, data_range)):
        metric = SSIMMetric(spatial_dims=len(spatial), data_range=r, win_size=win, reduction="none")
        out[idx] = metric(ad[idx], xd[idx]).reshape(-1).cpu().double()
    return out


def perturbation_case_metrics(
    x: torch.Tensor,
    x_adv: torch.Tensor,
    mask: torch.Tensor | None = None,
    bounds: tuple[float, float] | None = None,
    data_range: float | None = None,
) -> dict[str, np.ndarray]:
    """All perturbation figures per case: ``linf``, ``l2``, ``var`` (see :func:`perturbation_statistics`),
    ``psnr`` and ``ssim`` (whole image against the clean one; see :func:`psnr_per_case`).

    Returns:
        ``{name: (B,) float64 numpy array}``.
    """
    stats = {k: v.cpu().numpy() for k, v in perturbation_statistics(x, x_adv, mask).items()}
    stats["psnr"] = psnr_per_case(x, x_adv, bounds, data_range).numpy()
    stats["ssim"] = ssim_per_case(x, x_adv, bounds, data_range).numpy()
    return stats


# ---------------------------------------------------------------------------------------------
# task metrics


def class_indices(y: torch.Tensor, num_channels: int, spatial: bool) -> torch.Tensor:
    """Labels as class indices: ``(B,)`` for classification, ``(B, *spatial)`` for segmentation.

    Accepts indices ``(B,)`` / ``(B, 1)`` (classification), label maps ``(B, 1, *sp)`` / ``(B, *sp)``
    or one-hot ``(B, K, *sp)`` / ``(B, K)`` with ``K == num_channels > 1``.
    """
    y = torch.as_tensor(y).detach()
    if not spatial:
        if y.ndim == 2 and y.shape[1] == num_channels and num_channels > 1:
            return y.argmax(dim=1).long()
        if y.ndim == 2 and y.shape[1] == 1:
            return y[:, 0].long()
        if y.ndim == 1:
            return y.long()
        raise ValueError(
            f"classification labels must be (B,), (B, 1) or one-hot (B, K={num_channels}); got {tuple(y.shape)}."
        )
    if y.ndim >= 3 and y.shape[1] == num_channels and num_channels > 1:
        return y.argmax(dim=1).long()
    if y.ndim >= 3 and y.shape[1] == 1:
        return y[:, 0].long()
    return y.long()


def predicted_classes(y_pred: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Argmax over channels; for one-channel outputs ``y_pred > threshold`` (0 for logits, 0.5 for probabilities)."""
    y_pred = torch.as_tensor(y_pred).detach()
    if y_pred.ndim < 2:
        raise ValueError(f"y_pred must be (B, K, *spatial) logits or probabilities, got shape {tuple(y_pred.shape)}.")
    if y_pred.shape[1] == 1:
        return (y_pred[:, 0] > threshold).long()
    return y_pred.argmax(dim=1)


def top1_correct(y_pred: torch.Tensor, y: torch.Tensor, threshold: float = 0.0) -> np.ndarray:
    """Per case 1.0 when the predicted class (argmax; one channel: ``> threshold``) equals the label, else 0.0.

    Same semantics as ignite's ``Accuracy`` on multiclass output.
    """
    pred = predicted_classes(y_pred, threshold)
    if pred.ndim != 1:
        raise ValueError(f"top-1 accuracy is for classification outputs (B, K); got {tuple(y_pred.shape)}.")
    lab = class_indices(y, y_pred.shape[1], spatial=False).to(pred.device)
    if lab.shape != pred.shape:
        raise ValueError(f"labels {tuple(lab.shape)} do not match predictions for {pred.shape[0]} cases.")
    return (pred == lab).cpu().double().numpy()


def top1_accuracy(y_pred: torch.Tensor, y: torch.Tensor, threshold: float = 0.0) -> float:
    """Top-1 accuracy (share of cases whose argmax equals the label; ignite ``Accuracy`` semantics)."""
    return float(top1_correct(y_pred, y, threshold).mean())


def _classification_one_hot(
    y_pred: torch.Tensor, y: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    k = y_pred.shape[1]
    pred = predicted_classes(y_pred, threshold)
    lab = class_indices(y, k, spatial=False).to(pred.device)
    if k == 1:
        return pred[:, None].float(), lab[:, None].float()
    eye = torch.eye(k, device=pred.device)
    return eye[pred], eye[lab]


def one_vs_rest_fpr(y_pred: torch.Tensor, y: torch.Tensor, threshold: float = 0.0) -> tuple[float, np.ndarray]:
    """One-vs-rest false positive rate of a classifier, computed as MONAI's ``ConfusionMatrixMetric("fpr")``
    (``get_confusion_matrix`` summed over cases, then ``compute_confusion_matrix_metric``).

    Each class in turn is "positive" and all others "negative"; confusion matrices are summed over
    cases, then ``FP / (FP + TN)`` per class. A one-channel (binary) output gives the ordinary FPR.

    Returns:
        ``(macro mean over classes, per-class FPR array)``; a class with no negative case gives ``nan``.
    """
    p, t = _classification_one_hot(torch.as_tensor(y_pred).detach(), y, threshold)
    # the computation of ConfusionMatrixMetric("fpr", reduction="sum_batch"), through its functions
    confusion = get_confusion_matrix(p, t, include_background=True).sum(dim=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per_class = compute_confusion_matrix_metric("fpr", confusion).reshape(-1).cpu().double().numpy()
    return (float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan")), per_class


def roc_auc_one_vs_rest(y_pred: torch.Tensor, y: torch.Tensor, logits: bool = True) -> float:
    """Macro one-vs-rest ROC AUC through MONAI's ``compute_roc_auc`` (what :class:`ROCAUCMetric` computes).

    Args:
        y_pred: ``(B, K)`` logits (softmax is applied; sigmoid for one channel) or probabilities.
        y: labels as for :func:`top1_correct`.
        logits: whether ``y_pred`` holds logits.

    Returns:
        The AUC; ``nan`` when no class has both positive and negative cases.
    """
    y_pred = torch.as_tensor(y_pred).detach().float()
    k = y_pred.shape[1]
    if logits:
        y_pred = torch.sigmoid(y_pred) if k == 1 else torch.softmax(y_pred, dim=1)
    lab = class_indices(y, k, spatial=False).to(y_pred.device)
    target = lab[:, None].float() if k == 1 else torch.eye(k, device=y_pred.device)[lab]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns (and skips the class) when a class has one label value only
        value = compute_roc_auc(y_pred, target, average="macro")  # the function behind ROCAUCMetric
    return float(value)


def classification_case_metrics(y_pred: torch.Tensor, y: torch.Tensor, threshold: float = 0.0) -> dict[str, np.ndarray]:
    """Per-case classification results: ``top1`` (0/1), ``pred`` and ``label`` (class indices).

    Set-level figures (one-vs-rest FPR, ROC AUC) are computed from the cases' outputs with
    :func:`one_vs_rest_fpr` and :func:`roc_auc_one_vs_rest`.
    """
    pred = predicted_classes(y_pred, threshold)
    return {
        "top1": top1_correct(y_pred, y, threshold),
        "pred": pred.cpu().numpy(),
        "label": class_indices(y, y_pred.shape[1], spatial=False).cpu().numpy(),
    }


def segmentation_case_metrics(
    y_pred: torch.Tensor, y: torch.Tensor, include_background: bool = False, threshold: float = 0.0
) -> dict[str, np.ndarray]:
    """Per-case Dice, mean IoU (Jaccard) and pixel accuracy of a segmentation output.

    Dice and IoU come from MONAI's :class:`DiceMetric` and :class:`MeanIoU` on one-hot maps (classes
    with an empty ground truth are ignored, MONAI's ``ignore_empty``), averaged over classes per
    case; pixel accuracy is the share of voxels whose predicted class equals the label.

    Args:
        y_pred: ``(B, K, *spatial)`` logits or probabilities; ``K == 1`` means binary (``> threshold``).
        y: label map ``(B, 1, *spatial)``, ``(B, *spatial)`` or one-hot ``(B, K, *spatial)``.
        include_background: count class 0 in Dice and IoU (MONAI's argument).
        threshold: for one-channel outputs, 0 for logits, 0.5 for probabilities.

    Returns:
        ``{"dice": (B,), "iou": (B,), "pixel_accuracy": (B,)}`` float64 arrays (``nan`` where no class counts).
    """
    y_pred = torch.as_tensor(y_pred).detach()
    if y_pred.ndim < 4:
        raise ValueError(f"segmentation output must be (B, K, H, W[, D]), got {tuple(y_pred.shape)}.")
    k = max(2, y_pred.shape[1])
    pred = predicted_classes(y_pred, threshold)
    lab = class_indices(y, y_pred.shape[1], spatial=True).to(pred.device)
    if lab.shape != pred.shape:
        raise ValueError(f"label map {tuple(lab.shape)} does not match prediction {tuple(pred.shape)} (B, *spatial).")
    if int(lab.max()) >= k or int(lab.min()) < 0:
        raise ValueError(f"labels must be class indices in [0, {k - 1}], found {int(lab.min())}..{int(lab.max())}.")
    p_oh = torch.nn.functional.one_hot(pred, k).movedim(-1, 1).float()
    t_oh = torch.nn.functional.one_hot(lab, k).movedim(-1, 1).float()
    out: dict[str, np.ndarray] = {}
    for name, metric in (
        ("dice", DiceMetric(include_background=include_background, reduction="none")),
        ("iou", MeanIoU(include_background=include_background, reduction="none")),
    ):
        per_class = metric(p_oh, t_oh).cpu().double()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[name] = np.nanmean(per_class.numpy(), axis=1) if per_class.numel() else np.full(len(pred), np.nan)
    out["pixel_accuracy"] = (pred == lab).reshape(pred.shape[0], -1).double().mean(dim=1).cpu().numpy()
    return out


# ---------------------------------------------------------------------------------------------
# attack success


def classification_attack_success(clean_pred: Any, adv_pred: Any, labels: Any) -> np.ndarray:
    """Per case: 1.0 if the clean case was classified correctly and the attack flips it, 0.0 if it
    stays correct, ``nan`` if the clean case was already wrong (not counted).

    Args:
        clean_pred, adv_pred, labels: class indices per case (array-likes of equal length).
    """
    c, a, y = (np.asarray(v).reshape(-1) for v in (clean_pred, adv_pred, labels))
    if not (len(c) == len(a) == len(y)):
        raise ValueError(
            f"clean_pred, adv_pred and labels must have one entry per case, got {len(c)}, {len(a)}, {len(y)}."
        )
    out = np.where(a != y, 1.0, 0.0)
    out[c != y] = np.nan
    return out


def segmentation_attack_success(clean_dice: Any, adv_dice: Any) -> np.ndarray:
    """Per case: 1.0 if the adversarial Dice falls below half the clean Dice, else 0.0; ``nan`` (not
    counted) where the clean Dice is ``nan`` or 0 (nothing left to break)."""
    c, a = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (clean_dice, adv_dice))
    if len(c) != len(a):
        raise ValueError(f"clean_dice and adv_dice must have one entry per case, got {len(c)} and {len(a)}.")
    with np.errstate(invalid="ignore"):
        out = np.where(a < 0.5 * c, 1.0, 0.0)
    out[~(c > 0) | np.isnan(a)] = np.nan
    return out


def success_rate(per_case: Any) -> float:
    """Share of counted cases (non-``nan``) where the attack succeeded; ``nan`` if none is counted."""
    v = np.asarray(per_case, dtype=np.float64).reshape(-1)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


# ---------------------------------------------------------------------------------------------
# bootstrap intervals


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
