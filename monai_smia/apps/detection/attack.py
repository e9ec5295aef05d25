"""FGSM, PGD, DEV, SMIA and DAG on a MONAI RetinaNetDetector.

SMIA (Qi, Gong, Song, Ma, Zheng, "Stabilized Medical Image Attacks", ICLR 2021, arXiv 2103.05232)
attacks detection with the detector's own training loss as the deviation loss. Here:

- :class:`DetectorHeads` exposes the detector's head outputs as one tensor ``(B, C + 2 * dims, A)``
  (classification logits, then box regression, per anchor), so every attack of
  :mod:`monai_smia.attacks` (and its guarantees: budget, bounds, model untouched, determinism) runs
  unchanged on it.
- The deviation loss (:meth:`DetectorHeads.loss`) is the detector's loss against ground-truth boxes,
  computed in eval mode on the head outputs through the detector's own matcher (ATSS), box coder
  and loss functions: classification loss over every anchor that is not ignored (no random
  hard-negative sampling, so the attack is deterministic) plus box regression on matched anchors,
  one value per image.
- SMIA's stabilization compares the classification-head outputs on ``x + d`` and ``x + W * d``
  (sigmoid per anchor and class, the reading SMIA uses for single-logit classifiers).
- Label-free mode (``boxes=None``): the targets are the detector's own clean detections scoring at
  least ``target_score``.
- DAG (Xie et al., "Adversarial Examples for Semantic Segmentation and Object Detection", ICCV
  2017): every (anchor, class) scoring above ``score_thresh`` on the clean image is a target whose
  adversarial label is background; iterate until none is left or ``max_iter``; the result is
  projected onto the budget (the unconstrained one is in ``attack.result``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.apps.detection.utils.detector_utils import preprocess_images
from torch import nn

from monai_smia.apps.detection.data import check_boxes
from monai_smia.attacks import DAG, FGSM, PGD, SMIA, RandomSignNoise, frozen_network

__all__ = [
    "DetectorHeads",
    "DetectionFGSM",
    "DetectionPGD",
    "DetectionSMIA",
    "DetectionDAG",
    "DetectionNoise",
    "DETECTION_ATTACKS",
    "make_detection_attack",
]

_LOSS_PATH = ("network", "anchor_generator", "compute_anchor_matched_idxs", "get_box_train_sample_per_image",
              "cls_loss_func", "box_loss_func", "proposal_matcher", "_reshape_maps")  # fmt: skip


class DetectorHeads(nn.Module):
    """A MONAI RetinaNetDetector's head outputs as one tensor ``(B, C + 2 * dims, A)``, and its loss.

    Args:
        detector: a MONAI ``RetinaNetDetector`` with a matcher set (``set_atss_matcher``).

    Raises:
        ValueError: the detector lacks a part of its loss path (named).
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        missing = [a for a in _LOSS_PATH if not hasattr(detector, a)]
        if missing:
            raise ValueError(
                f"detector: {type(detector).__name__} has no loss path (missing {missing}); pass a MONAI "
                "RetinaNetDetector "
                "with a matcher set (set_atss_matcher)."
            )
        self.detector = detector
        self.num_classes = int(detector.num_classes)
        self.spatial_dims = int(detector.spatial_dims)
        self._anchors: dict[tuple, tuple[torch.Tensor, list[int]]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        det = self.detector
        images, _ = preprocess_images(x, self.spatial_dims, det.size_divisible)
        heads = det.network(images)
        if isinstance(heads, (tuple, list)):
            heads = {det.cls_key: list(heads[: len(heads) // 2]), det.box_reg_key: list(heads[len(heads) // 2 :])}
        cls_maps, box_maps = list(heads[det.cls_key]), list(heads[det.box_reg_key])
        key = (tuple(images.shape[1:]), str(images.device), *(tuple(m.shape[2:]) for m in cls_maps))
        if key not in self._anchors:
            anchors = det.anchor_generator(images[:1], cls_maps)[0].detach()
            self._anchors[key] = (anchors, [m.shape[2:].numel() for m in cls_maps])
        self._last = key
        out = torch.cat([det._reshape_maps(cls_maps), det._reshape_maps(box_maps)], dim=-1)
        return out.transpose(1, 2)

    def classification(self, outputs: torch.Tensor) -> torch.Tensor:
        """The classification logits ``(B, C, A)`` of :meth:`forward`'s output."""
        return outputs[:, : self.num_classes]

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The detector's loss per image ``(B,)`` against packed targets (see :func:`pack_targets`)."""
        det = self.detector
        anchors, locs = self._anchors[self._last]
        losses = []
        for out, tgt in zip(outputs, targets):
            keep = tgt[:, -1] >= 0
            target = {det.target_box_key: tgt[keep, :-1], det.target_label_key: tgt[keep, -1].long()}
            matched = det.compute_anchor_matched_idxs([anchors], [target], locs)[0]
            cls, box = out[: self.num_classes].T, out[self.num_classes :].T
            gt = torch.zeros_like(cls)
            fg = matched >= 0
            gt[fg, target[det.target_label_key][matched[fg]]] = 1.0
            valid = matched != det.proposal_matcher.BETWEEN_THRESHOLDS
            value = det.cls_loss_func(cls[valid], gt[valid])
            pred, ref = det.get_box_train_sample_per_image(box, target, anchors, matched)
            if pred.shape[0]:
                value = value + det.box_loss_func(pred, ref)
            losses.append(value)
        return torch.stack(losses)


def pack_targets(
    boxes: Sequence[Any],
    labels: Sequence[Any] | None,
    spatial_shape: Sequence[int],
    box_mode: str,
    allow_empty: bool,
    num_classes: int | None = None,
) -> torch.Tensor:
    """Per-image boxes and labels as one tensor ``(B, M, 2 * dims + 1)``: ``xyxy`` box then label, rows with
    label -1 padding."""
    if labels is not None and len(labels) != len(boxes):
        raise ValueError(f"labels: {len(labels)} label lists for {len(boxes)} images.")
    rows = []
    for i, b in enumerate(boxes):
        lab = labels[i] if labels is not None else torch.zeros(len(b), dtype=torch.long)
        b, lab = check_boxes(b, lab, spatial_shape, f"image {i}", box_mode, allow_empty, num_classes)
        rows.append(torch.cat([b, lab[:, None].float()], dim=1))
    m = max([r.shape[0] for r in rows] + [1])
    packed = torch.full((len(rows), m, 2 * len(spatial_shape) + 1), -1.0)
    for i, r in enumerate(rows):
        packed[i, : r.shape[0]] = r
    return packed


class _DetectionMixin:
    """The detection interface of an attack: ``attack(images, boxes=None, labels=None, box_mode="xyxy")``."""

    heads: DetectorHeads
    target_score: float
    allow_empty_boxes: bool
    _classification_only = False

    def _init_detection(self, detector: nn.Module, target_score: float, allow_empty_boxes: bool) -> DetectorHeads:
        if not 0.0 < target_score < 1.0:
            raise ValueError(f"target_score must lie in (0, 1), got {target_score!r}.")
        self.heads = DetectorHeads(detector)
        self.target_score, self.allow_empty_boxes = float(target_score), bool(allow_empty_boxes)
        return self.heads

    def clean_detections(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The detector's own boxes and labels on ``images`` scoring at least ``target_score`` (label-free targets)."""
        det = self.heads.detector
        cache = (det.anchors, det.previous_image_shape)
        x = images.as_tensor() if hasattr(images, "as_tensor") else images
        try:
            with frozen_network(det), torch.no_grad():
                out = det(x.detach().float())
        finally:
            det.anchors, det.previous_image_shape = cache
        keep = [d[det.pred_score_key] >= self.target_score for d in out]
        boxes = [d[det.target_box_key][k].detach().cpu() for d, k in zip(out, keep)]
        return boxes, [d[det.target_label_key][k].detach().cpu() for d, k in zip(out, keep)]

    def targets_for(
        self, images: torch.Tensor, boxes: Sequence[Any] | None, labels: Sequence[Any] | None, box_mode: str
    ) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim != 2 + self.heads.spatial_dims:
            raise ValueError(
                f"images must be (B, C, *spatial) with {self.heads.spatial_dims} spatial dims, got "
                f"{getattr(images, 'shape', type(images))}."
            )
        allow = self.allow_empty_boxes or boxes is None  # label-free: an image may have no detection
        if boxes is None:
            boxes, labels, box_mode = *self.clean_detections(images), "xyxy"
        elif isinstance(boxes, torch.Tensor) and boxes.ndim == 2:
            raise ValueError(
                "boxes: pass one (M, 4) box tensor per image (a list of length B), not one tensor for the batch."
            )
        if len(boxes) != images.shape[0]:
            raise ValueError(
                f"boxes: {len(boxes)} box lists for {images.shape[0]} images (an empty list needs one entry per image)."
            )
        return pack_targets(boxes, labels, tuple(images.shape[2:]), box_mode, allow, self.heads.num_classes).to(
            images.device
        )

    def __call__(self, images: torch.Tensor, boxes: Sequence[Any] | None = None, labels: Sequence[Any] | None = None,
                 *, box_mode: str = "xyxy", **kwargs: Any) -> torch.Tensor:  # fmt: skip
        """Adversarial images against the detector: ``boxes`` (per image, ``box_mode``) and ``labels``
        are the ground truth; ``boxes=None`` uses the detector's own clean detections."""
        return super().__call__(images, self.targets_for(images, boxes, labels, box_mode), **kwargs)  # type: ignore[misc]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        out = super().logits(x)  # type: ignore[misc]
        return self.heads.classification(out) if self._classification_only else out

    def stabilization(
        self, x: torch.Tensor, delta: torch.Tensor, logits: torch.Tensor, t: int, previous: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The attack's stabilization term on the classification-head outputs only."""
        self._classification_only = True
        try:
            return super().stabilization(x, delta, self.heads.classification(logits), t, previous)  # type: ignore[misc]
        finally:
            self._classification_only = False


class DetectionFGSM(_DetectionMixin, FGSM):
    """FGSM (Goodfellow et al. 2015) on a detector's training loss. Args: see :class:`DetectionSMIA`."""

    def __init__(
        self, detector: nn.Module, eps: float, target_score: float = 0.5, allow_empty_boxes: bool = False, **kwargs: Any
    ) -> None:
        heads = self._init_detection(detector, target_score, allow_empty_boxes)
        super().__init__(heads, eps, loss=heads.loss, **kwargs)


class DetectionPGD(_DetectionMixin, PGD):
    """PGD (Madry et al. 2018) on a detector's training loss. Args: see :class:`DetectionSMIA`."""

    def __init__(
        self, detector: nn.Module, eps: float, target_score: float = 0.5, allow_empty_boxes: bool = False, **kwargs: Any
    ) -> None:
        heads = self._init_detection(detector, target_score, allow_empty_boxes)
        super().__init__(heads, eps, loss=heads.loss, **kwargs)


class DetectionSMIA(_DetectionMixin, SMIA):
    """SMIA (Qi et al. 2021) on a detector: DEV = the detector's loss, STA on its classification head.

    Args:
        detector: a MONAI ``RetinaNetDetector`` (matcher set).
        eps: L-infinity budget in input units.
        target_score: label-free mode keeps clean detections scoring at least this.
        allow_empty_boxes: accept images without ground-truth boxes (the loss then only pushes
            anchors off the background, i.e. towards false positives); default: refuse them.
        kwargs: every :class:`~monai_smia.attacks.smia.SMIA` argument (``alpha=0``: DEV).
    """

    def __init__(
        self, detector: nn.Module, eps: float, target_score: float = 0.5, allow_empty_boxes: bool = False, **kwargs: Any
    ) -> None:
        heads = self._init_detection(detector, target_score, allow_empty_boxes)
        super().__init__(heads, eps, loss=heads.loss, spatial_dims=heads.spatial_dims, **kwargs)


class DetectionNoise(_DetectionMixin, RandomSignNoise):
    """Uniform random sign noise of size ``eps`` (the floor every attack must beat); boxes are checked, not used."""

    def __init__(
        self, detector: nn.Module, eps: float, target_score: float = 0.5, allow_empty_boxes: bool = True, **kwargs: Any
    ) -> None:
        heads = self._init_detection(detector, target_score, allow_empty_boxes)
        super().__init__(heads, eps, **kwargs)


def _to_background(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """DAG's adversarial label for every (anchor, class) pair of a detector: background (0). The default
    permutation would flip the pairs below the threshold (label 0) to 1 and create detections."""
    return torch.zeros_like(labels)


class DetectionDAG(_DetectionMixin, DAG):
    """DAG (Xie et al., ICCV 2017) on a detector's anchors: each (anchor, class) scoring above
    ``score_thresh`` on the clean image gets background as its adversarial label.

    Args:
        detector: a MONAI ``RetinaNetDetector``.
        eps: L-infinity budget of the projected result.
        score_thresh: a target stays active while its score exceeds this (the detector's box-selection floor by
            default).
        kwargs: :class:`~monai_smia.attacks.dag.DAG` arguments (``gamma``, ``max_iter``, ``bounds``).
    """

    uses_labels = False

    def __init__(self, detector: nn.Module, eps: float, score_thresh: float | None = None, **kwargs: Any) -> None:
        heads = self._init_detection(detector, 0.5, True)
        thr = float(detector.box_selector.score_thresh) if score_thresh is None else float(score_thresh)
        if not 0.0 < thr < 1.0:
            raise ValueError(f"score_thresh must lie in (0, 1), got {thr!r}.")
        self.score_thresh, self._offset = thr, math.log(thr / (1 - thr))
        kwargs.setdefault("target_fn", _to_background)  # every target goes to background, none to "object"
        super().__init__(heads, eps, **kwargs)

    def __call__(self, images: torch.Tensor, boxes: Sequence[Any] | None = None, labels: Sequence[Any] | None = None,
                 *, box_mode: str = "xyxy", **kwargs: Any) -> torch.Tensor:  # fmt: skip
        """DAG needs no boxes (its targets are the detector's own anchors); given ones are checked only."""
        if boxes is not None:
            self.targets_for(images, boxes, labels, box_mode)
        return DAG.__call__(self, images, None, **kwargs)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Per (class, anchor) logit minus ``logit(score_thresh)``, ``(B, 1, C * A)``: positive = above the
        threshold."""
        cls = self.heads.classification(self.logits(x)).float()
        return cls.reshape(cls.shape[0], 1, -1) - self._offset

    def target_labels(self, labels: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor:
        """1 for the (anchor, class) pairs above the threshold on the clean image, else 0 (not attacked)."""
        return (scores[:, 0] > 0).to(scores.dtype).detach()


DETECTION_ATTACKS: dict[str, tuple[type, dict[str, Any]]] = {
    "noise": (DetectionNoise, {}),
    "FGSM": (DetectionFGSM, {}),
    "PGD": (DetectionPGD, {"random_start": True}),
    "DEV": (DetectionSMIA, {"alpha": 0.0}),
    "SMIA": (DetectionSMIA, {}),
    "DAG": (DetectionDAG, {}),
}


def make_detection_attack(name: str, detector: nn.Module, eps: float, num_iter: int = 10, **kwargs: Any) -> Any:
    """Build a detection attack by name (``noise``, ``FGSM``, ``PGD`` with random start, ``DEV`` = SMIA
    with ``alpha=0``, ``SMIA``, ``DAG`` with ``max_iter = 15 * num_iter``, the paper's 150 for 10)."""
    if name not in DETECTION_ATTACKS:
        raise ValueError(f"attack {name!r} is not a detection attack; expected one of {sorted(DETECTION_ATTACKS)}.")
    cls, defaults = DETECTION_ATTACKS[name]
    args = {**defaults, **kwargs}
    if name in ("PGD", "DEV", "SMIA"):
        args["num_iter"] = num_iter
    elif name == "DAG":
        args.setdefault("max_iter", 15 * num_iter)
        args.pop("allow_empty_boxes", None)
    return cls(detector, eps, **args)
