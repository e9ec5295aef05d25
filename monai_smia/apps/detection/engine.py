"""MONAI evaluator pieces for a detection bundle, so that its ``evaluate.json`` overrides ``train.json``'s
``validate`` section as the other bundles (and the model zoo's detection bundles) do.

Detection is the third task of SMIA (Qi et al., "Stabilized Medical Image Attacks", ICLR 2021,
arXiv 2103.05232). A ``SupervisedEvaluator`` (``decollate=False``) runs with:

- :func:`detection_items` as the dataset's data (the cases still pending in the run's store) and
  :func:`collate_detection` as the data loader's ``collate_fn`` (images stacked, boxes per image);
- :func:`prepare_detection_batch` as ``prepare_batch`` (the ground truth goes to the inferer);
- :class:`DetectionInferer` (clean) or :class:`DetectionAttackInferer` (attack, then detect);
- :class:`DetectionAPMetric` as a key metric and :class:`DetectionRecordHandler` storing each case.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer
from monai.utils import optional_import

from monai_smia.apps.detection.attack import make_detection_attack
from monai_smia.apps.detection.data import load_detection_split
from monai_smia.apps.detection.metrics import DetectionSetMetrics, detect, matched_ious
from monai_smia.attacks.volume import draw_random_start

Events, _ = optional_import("ignite.engine", name="Events")
Metric, _ = optional_import("ignite.metrics", name="Metric", as_type="base")

__all__ = [
    "DetectionAPMetric",
    "DetectionAttackInferer",
    "DetectionInferer",
    "DetectionRecordHandler",
    "collate_detection",
    "condition_attack",
    "condition_eps",
    "detection_items",
    "detection_record",
    "prepare_detection_batch",
]


def detection_items(
    dataset_dir: str | os.PathLike,
    data_split: str = "test",
    max_cases: int | None = None,
    store: Any = None,
    attack: str = "clean",
    eps: float | None = None,
) -> list[dict[str, Any]]:
    """The cases of ``data_split`` as dataset items (``image``, ``box``, ``label``, ``case_id``), the
    first ``max_cases`` of them; with a ``store``, only those it does not hold for ``(attack, eps)``."""
    data = load_detection_split(dataset_dir, data_split)
    ids = data.case_ids[:max_cases] if max_cases is not None else data.case_ids
    pending = set(store.pending(attack, condition_eps(attack, eps), ids)) if store is not None else set(ids)
    return [
        {"image": data.images[i], "box": data.boxes[i], "label": data.labels[i], "case_id": c}
        for i, c in enumerate(ids)
        if c in pending
    ]


def condition_eps(attack: str, eps: float | None) -> float | None:
    """The budget a condition is stored under: ``None`` for ``clean``."""
    return None if attack == "clean" or eps is None else float(eps)


def collate_detection(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack the images; keep boxes, labels and case ids as one entry per image (their counts differ)."""
    return {
        "image": torch.stack([torch.as_tensor(i["image"]) for i in items]) if items else torch.zeros(0),
        "box": [i["box"] for i in items],
        "label": [i["label"] for i in items],
        "case_id": [str(i["case_id"]) for i in items],
    }


def prepare_detection_batch(
    batchdata: dict[str, Any], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]], tuple, dict[str, Any]]:
    """``(images, targets, (), {"boxes": ..., "labels": ...})``: the evaluator's ``label`` is the ground
    truth per image (``{"boxes", "labels"}``), and the inferer receives the boxes to attack against."""
    images = batchdata["image"].to(device=device, non_blocking=non_blocking, **kwargs)
    targets = [{"boxes": b, "labels": lab} for b, lab in zip(batchdata["box"], batchdata["label"])]
    return images, targets, (), {"boxes": batchdata["box"], "labels": batchdata["label"]}


class DetectionInferer(Inferer):
    """Run a MONAI detector (``RetinaNetDetector``) without gradients: one dict of ``boxes``, ``scores``
    and ``labels`` (numpy) per image. Ground-truth keyword arguments are accepted and ignored."""

    def __init__(self, detector: torch.nn.Module, batch_size: int = 32) -> None:
        self.detector, self.batch_size = detector, int(batch_size)

    def __call__(
        self, inputs: torch.Tensor, network: Any = None, *args: Any, **kwargs: Any
    ) -> list[dict[str, np.ndarray]]:
        return detect(self.detector, inputs, self.batch_size)


class DetectionAttackInferer(Inferer):
    """Attack the images against their ground-truth boxes, then detect on the result with ``inferer``.

    Args:
        attack: a detection attack (:func:`~monai_smia.apps.detection.attack.make_detection_attack`).
        inferer: the bundle's clean detection inferer.
        use_boxes: attack against the ground truth (``False``: the detector's own clean detections).
        generator: one CPU generator per image for random starts and noise
            (:class:`~monai_smia.handlers.CaseSeedHandler` sets it per batch); ``None``: torch's global one.
    """

    def __init__(self, attack: Any, inferer: Any, use_boxes: bool = True, generator: Any = None) -> None:
        self.attack, self.inferer, self.use_boxes, self.generator = attack, inferer, bool(use_boxes), generator
        self.last_adversarial: torch.Tensor | None = None

    def __call__(self, inputs: torch.Tensor, network: Any = None, *args: Any, boxes: Any = None, labels: Any = None,
                 **kwargs: Any) -> list[dict[str, np.ndarray]]:  # fmt: skip
        extra: dict[str, Any] = {}
        if self.attack.draws_random_start and self.generator is not None:
            start = draw_random_start(self.attack, inputs.shape, inputs.dtype, self.generator)
            extra["delta_init"] = start.to(inputs.device)
        if not self.use_boxes:
            boxes = labels = None
        x_adv = self.attack(inputs, boxes, labels, **extra)
        self.last_adversarial = x_adv.detach()
        return self.inferer(x_adv, network)


def condition_attack(attack: str, detector: torch.nn.Module, eps: float, num_iter: int) -> Any:
    """The detection attack of a condition (``None`` for ``clean``); every attack but DAG accepts images
    without ground-truth boxes (a negative case), as the evaluation needs."""
    if attack == "clean":
        return None
    extra = {} if attack == "DAG" else {"allow_empty_boxes": True}
    return make_detection_attack(attack, detector, eps, num_iter, **extra)


def detection_record(case: str, attack: str, eps: float | None, pred: dict[str, np.ndarray], gt: torch.Tensor,
                     lab: torch.Tensor) -> dict[str, Any]:  # fmt: skip
    """One case's record: detections, ground truth, mean IoU of matched boxes, confident detections."""
    ious = matched_ious(pred["boxes"], pred["scores"], gt.numpy())
    return {
        "case_id": case, "attack": attack, "eps": eps,
        "iou": float(np.nan_to_num(ious, nan=0.0).mean()) if ious.size else float("nan"),
        "num_detections_0.5": int((pred["scores"] >= 0.5).sum()),
        "pred_boxes": pred["boxes"].tolist(), "pred_scores": pred["scores"].tolist(),
        "pred_labels": pred["labels"].tolist(), "gt_boxes": gt.tolist(), "gt_labels": lab.tolist(),
    }  # fmt: skip


class DetectionRecordHandler:
    """At ``ITERATION_COMPLETED``, store one :func:`detection_record` per image with ``store.save``
    (a :class:`~monai_smia.reports.CaseStore`: an interrupted run resumes)."""

    def __init__(self, store: Any, attack: str, eps: float | None) -> None:
        if not callable(getattr(store, "save", None)):
            raise TypeError(f"store must have a save(record) method, got {type(store).__name__}.")
        self.store, self.attack, self.eps = store, str(attack), condition_eps(str(attack), eps)

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        out = engine.state.output
        for case, pred, target in zip(engine.state.batch["case_id"], out["pred"], out["label"]):
            self.store.save(detection_record(case, self.attack, self.eps, pred, target["boxes"], target["labels"]))


class DetectionAPMetric(Metric):  # type: ignore[misc, valid-type]
    """One COCO-style metric (:data:`~monai_smia.apps.detection.metrics.METRIC_NAMES`, default AP at IoU 0.1)
    over the epoch's images, for ``key_val_metric``. ``output_transform`` gives ``(preds, targets)``."""

    def __init__(
        self, name: str = "ap_iou_0.1", classes: Sequence[str] = ("tumour",), output_transform: Any = lambda x: x
    ) -> None:
        self.name, self.classes = name, tuple(classes)
        self.rows: list[dict[str, Any]] = []
        super().__init__(output_transform=output_transform)

    def reset(self) -> None:
        self.rows = []

    def update(self, output: Sequence[Any]) -> None:
        for pred, target in zip(*output):
            self.rows.append({
                "pred_boxes": pred["boxes"], "pred_scores": pred["scores"], "pred_labels": pred["labels"],
                "gt_boxes": target["boxes"].numpy(), "gt_labels": target["labels"].numpy(),
            })  # fmt: skip

    def compute(self) -> float:
        return DetectionSetMetrics(self.classes).values(self.rows)[self.name] if self.rows else float("nan")
