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
    "DetectionSetMetrics",
]

MATCH_IOU = 0.1
METRIC_NAMES = ("ap_iou_0.1", "ap_iou_0.5", "coco_map", "mean_iou_matched")
_COCO_KEYS = {"ap_iou_0.1": "AP_IoU_0.10", "ap_iou_0.5": "AP_IoU_0.50", "coco_map": "mAP_IoU_0.50_0.95_0.05"}


def detect(detector: Any, images: torch.Tensor, batch_size: int = 32) -> list[dict[str, np.ndarray]]:
    """Run a MONAI detector in eval mode (restored afterwards) without gradients; ``boxes``/``scores``/``labels``
    per image."""
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


def matched_ious(
    pred_boxes: np.ndarray, pred_scores: np.ndarray, gt_boxes: np.ndarray, min_iou: float = MATCH_IOU
) -> np.ndarray:
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


def _coco(classes: Sequence[str], max_detections: int) -> COCOMetric:
    return COCOMetric(
        classes=list(classes),
        iou_list=[0.1, 0.5],
        iou_range=[0.5, 0.95, 0.05],
        max_detection=[max_detections],
        verbose=False,
    )


def _match(
    metric: COCOMetric, preds: Sequence[dict[str, Any]], gt_boxes: Sequence[Any], gt_labels: Sequence[Any], max_det: int
) -> list:
    """MONAI :func:`matching_batch` of predictions against ground truth, one result per image."""
    return matching_batch(
        iou_fn=box_iou,
        iou_thresholds=metric.iou_thresholds,
        pred_boxes=[np.asarray(p["boxes"], dtype=np.float32).reshape(-1, 4) for p in preds],
        pred_classes=[np.asarray(p["labels"], dtype=np.int64).reshape(-1) for p in preds],
        pred_scores=[np.asarray(p["scores"], dtype=np.float32).reshape(-1) for p in preds],
        gt_boxes=[np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in gt_boxes],
        gt_classes=[np.asarray(lab, dtype=np.int64).reshape(-1) for lab in gt_labels],
        max_detections=max_det,
    )


def _coco_values(metric: COCOMetric, results: list, max_det: int) -> dict[str, float]:
    values = metric(results)[0]
    return {name: float(values[f"{key}_MaxDet_{max_det}"]) for name, key in _COCO_KEYS.items()}


def coco_metrics(
    preds: Sequence[dict[str, np.ndarray]],
    gt_boxes: Sequence[np.ndarray],
    gt_labels: Sequence[np.ndarray],
    classes: Sequence[str] = ("tumour",),
    max_detections: int = 100,
) -> dict[str, float]:
    """AP at IoU 0.1 and 0.5 and COCO mAP (IoU 0.5:0.95) with MONAI's COCOMetric over a set of images."""
    metric = _coco(classes, max_detections)
    return _coco_values(metric, _match(metric, preds, gt_boxes, gt_labels, max_detections), max_detections)


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


def centre_box_baseline(
    train_boxes: Sequence[Any], spatial_shape: Sequence[int], num_images: int
) -> list[dict[str, np.ndarray]]:
    """The trivial detector: one box of the mean training box size at the image centre, score 1, every image."""
    sizes = np.concatenate([np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in train_boxes])
    size = (sizes[:, 2:] - sizes[:, :2]).mean(axis=0)
    centre = np.asarray(spatial_shape, dtype=np.float32) / 2
    box = np.concatenate([centre - size / 2, centre + size / 2])[None]
    return [
        {"boxes": box.copy(), "scores": np.ones(1, np.float32), "labels": np.zeros(1, np.int64)}
        for _ in range(num_images)
    ]


class DetectionSetMetrics:
    """:data:`METRIC_NAMES` of a set of detection records, as ``set_metrics`` of
    :func:`monai_smia.reports.summarize_records` (each with a ``bootstrap(rows, idx)`` over resampled images).

    Records hold ``pred_boxes``, ``pred_scores``, ``pred_labels``, ``gt_boxes`` and ``gt_labels``.
    Matching runs once per record set; a resample reuses it.
    """

    def __init__(self, classes: Sequence[str] = ("tumour",), max_detections: int = 100) -> None:
        self.metric, self.max_det = _coco(classes, max_detections), max_detections
        self._cache: tuple[Any, list, list] | None = None
        self._boot: dict[str, np.ndarray] = {}

    def _prepared(self, rows: Sequence[dict[str, Any]]) -> tuple[list, list]:
        if self._cache is None or self._cache[0] is not rows:
            preds = [{"boxes": r["pred_boxes"], "scores": r["pred_scores"], "labels": r["pred_labels"]} for r in rows]
            results = _match(
                self.metric, preds, [r["gt_boxes"] for r in rows], [r["gt_labels"] for r in rows], self.max_det
            )
            ious = [matched_ious(p["boxes"], p["scores"], r["gt_boxes"]) for p, r in zip(preds, rows)]
            self._cache = (rows, results, ious)
        return self._cache[1], self._cache[2]

    def values(self, rows: Sequence[dict[str, Any]], idx: Sequence[int] | None = None) -> dict[str, float]:
        """All :data:`METRIC_NAMES` of ``rows`` (or of the resample ``idx`` of them)."""
        results, ious = self._prepared(rows)
        idx = range(len(rows)) if idx is None else idx
        out = _coco_values(self.metric, [results[i] for i in idx], self.max_det)
        matched = np.concatenate([ious[i] for i in idx] or [np.zeros(0)])
        matched = matched[~np.isnan(matched)]
        out["mean_iou_matched"] = float(matched.mean()) if matched.size else float("nan")
        return out

    def resampled(self, rows: Sequence[dict[str, Any]], idx: np.ndarray) -> dict[str, np.ndarray]:
        """Every metric on each resample ``idx[r]`` (``(R, n)``), computed once for all metric names."""
        key = (id(rows), idx.shape, hash(np.ascontiguousarray(idx).tobytes()))
        if getattr(self, "_boot_key", None) != key:
            vals = [self.values(rows, i) for i in idx]
            self._boot = {m: np.array([v[m] for v in vals], dtype=np.float64) for m in METRIC_NAMES}
            self._boot_key = key
        return self._boot

    def set_metrics(self) -> dict[str, Any]:
        """``{name: callable(rows)}`` with ``.bootstrap(rows, idx)``, for :func:`summarize_records`."""
        return {name: _OneMetric(self, name) for name in METRIC_NAMES}


class _OneMetric:
    def __init__(self, owner: DetectionSetMetrics, name: str) -> None:
        self.owner, self.name = owner, name

    def __call__(self, rows: Sequence[dict[str, Any]]) -> float:
        return self.owner.values(rows)[self.name] if rows else float("nan")

    def bootstrap(self, rows: Sequence[dict[str, Any]], idx: np.ndarray) -> np.ndarray:
        if not rows:
            return np.full(len(idx), np.nan)
        return self.owner.resampled(rows, idx)[self.name]
