"""Per-case task metrics: top-1, one-vs-rest FPR and ROC AUC, Dice and IoU (thin wrappers on MONAI's).

Top-1 accuracy follows ignite's ``Accuracy`` (argmax equals the label), not
``ConfusionMatrixMetric("accuracy")``, which averages one-vs-rest accuracies and reads higher.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from monai.metrics import (
    DiceMetric,
    MeanIoU,
    compute_confusion_matrix_metric,
    compute_roc_auc,
    get_confusion_matrix,
)


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


