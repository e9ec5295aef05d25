"""Detection metrics of the SMIA detection task (Qi et al., "Stabilized Medical Image Attacks", ICLR 2021,
arXiv 2103.05232): AP at IoU 0.1 and 0.5 and COCO mAP (MONAI :class:`COCOMetric` on
:func:`matching_batch`), and the IoU of matched boxes, the paper's IoU for detection.

Matching for the IoU: detections in decreasing score, each to the unmatched ground-truth box it
overlaps most, when that IoU reaches :data:`MATCH_IOU` (one-to-one, as COCO matches).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.apps.detection.metrics.coco import COCOMetric
from monai.apps.detection.metrics.matching import matching_batch
from monai.data.box_utils import box_iou

__all__ = [
    "MATCH_IOU",
    "METRIC_NAMES",
    "detect",
    "matched_ious",
    "coco_metrics",
    "detection_metrics",
    "centre_box_baseline",
]

MATCH_IOU = 0.1
METRIC_NAMES = ("ap_iou_0.1", "ap_iou_0.5", "coco_map", "mean_iou_matched")
_COCO_KEYS = {"ap_iou_0.1": "AP_IoU_0.10", "ap_iou_0.5": "AP_IoU_0.50", "coco_map": "mAP_IoU_0.50_0.95_0.05"}


def detect(detector: Any, images: torch.Tensor, batch_size: int = 32) -> list[dict[str, np.ndarray]]:
    """Run a MONAI detector in eval mode (restored afterwards) without gradients; ``boxes``/``scores``/``labels`` per image."""
    was_training = detector.training
    detector.eval()
    out: list[dict[str, np.ndarray]] = []
    try:
        with torch.no_grad():
            for i in range(0, images.shape[0], batch_size):
                for d in detector(images[i : i + batch_size]):
                    out.append({
                        "boxes": d[detector.target_box_key].detach().cpu().float().numpy(),
                        "scores": d[detector.pred_score_key].detach().cpu().float().numpy(),
                        "labels": d[detector.target_label_key].detach().cpu().numpy().astype(np.int64),
                    })  # fmt: skip
    finally:
        detector.train(was_training)
    return out


def matched_ious(pred_boxes: np.ndarray, pred_scores: np.ndarray, gt_boxes: np.ndarray, min_iou: float = MATCH_IOU) -> np.ndarray:
    """Per ground-truth box, the IoU of its one-to-one score-greedy match (``nan`` when unmatched)."""
    gt = np.asarray(gt_boxes, dtype=np.float32).reshape(-1, 4)
    out = np.full(gt.shape[0], np.nan)
    pred = np.asarray(pred_boxes, dtype=np.float32).reshape(-1, 4)
    if not gt.shape[0] or not pred.shape[0]:
        return out
    iou = box_iou(pred, gt)
    for p in np.argsort(-np.asarray(pred_scores), kind="stable"):
        cand = np.where(np.isnan(out), iou[p], -1.0)
        g = int(np.argmax(cand))
        if cand[g] >= min_iou:
            out[g] = iou[p, g]
    return out


def coco_metrics(
    preds: Sequence[dict[str, np.ndarray]],
    gt_boxes: Sequence[np.ndarray],
    gt_labels: Sequence[np.ndarray],
    classes: Sequence[str] = ("tumour",),
    max_detections: int = 100,
) -> dict[str, float]:
    """AP at IoU 0.1 and 0.5 and COCO mAP (IoU 0.5:0.95) with MONAI's COCOMetric over a set of images."""
    metric = COCOMetric(classes=list(classes), iou_list=[0.1, 0.5], iou_range=[0.5, 0.95, 0.05], max_detection=[max_detections])
    results = matching_batch(
        iou_fn=box_iou,
        iou_thresholds=metric.iou_thresholds,
        pred_boxes=[np.asarray(p["boxes"], dtype=np.float32).reshape(-1, 4) for p in preds],
        pred_classes=[np.asarray(p["labels"], dtype=np.int64).reshape(-1) for p in preds],
        pred_scores=[np.asarray(p["scores"], dtype=np.float32).reshape(-1) for p in preds],
        gt_boxes=[np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in gt_boxes],
        gt_classes=[np.asarray(lab, dtype=np.int64).reshape(-1) for lab in gt_labels],
        max_detections=max_detections,
    )
    values = metric(results)[0]
    return {name: float(values[f"{key}_MaxDet_{max_detections}"]) for name, key in _COCO_KEYS.items()}


def detection_metrics(
    preds: Sequence[dict[str, np.ndarray]], gt_boxes: Sequence[Any], gt_labels: Sequence[Any]
) -> dict[str, float]:
    """:func:`coco_metrics` plus ``mean_iou_matched`` (mean IoU over all matched ground-truth boxes)."""
    gtb = [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in gt_boxes]
    out = coco_metrics(preds, gtb, [np.asarray(lab) for lab in gt_labels])
    ious = np.concatenate([matched_ious(p["boxes"], p["scores"], g) for p, g in zip(preds, gtb)] or [np.zeros(0)])
    ious = ious[~np.isnan(ious)]
    out["mean_iou_matched"] = float(ious.mean()) if ious.size else float("nan")
    return out


def centre_box_baseline(train_boxes: Sequence[Any], spatial_shape: Sequence[int], num_images: int) -> list[dict[str, np.ndarray]]:
    """The trivial detector: one box of the mean training box size at the image centre, score 1, every image."""
    sizes = np.concatenate([np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in train_boxes])
    size = (sizes[:, 2:] - sizes[:, :2]).mean(axis=0)
    centre = np.asarray(spatial_shape, dtype=np.float32) / 2
    box = np.concatenate([centre - size / 2, centre + size / 2])[None]
    return [{"boxes": box.copy(), "scores": np.ones(1, np.float32), "labels": np.zeros(1, np.int64)} for _ in range(num_images)]
