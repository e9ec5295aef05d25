"""Training of the detection victim (a MONAI RetinaNetDetector) for the SMIA detection task
(Qi et al., "Stabilized Medical Image Attacks", ICLR 2021, arXiv 2103.05232).

The datasets are small 2D patches held in memory. Each epoch draws, per image, a random
flip/transpose (boxes follow, :func:`~monai_smia.apps.detection.data.dihedral`), and with ``augment``
a random zoom (MONAI's box-aware ``RandZoomBoxd`` and ``ClipBoxToImaged``) and a random intensity
change (contrast, scale/shift, noise). An exponential moving average of the weights (``ema_decay``) is
what is validated and saved; the learning rate warms up linearly, then decays on a cosine. The checkpoint
with the best validation score (AP at IoU 0.5, ties to COCO mAP) is kept: the network's state dict,
loadable with ``weights_only=True``. :func:`fit_anchor_shapes` fits the anchor shapes to the training boxes.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.apps.detection.transforms.dictionary import ClipBoxToImaged, RandZoomBoxd
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

from monai_smia.apps.detection.data import DetectionSet, dihedral, load_detection_split
from monai_smia.apps.detection.metrics import detect, detection_metrics
from monai_smia.io.atomic import atomic_file

__all__ = ["augmented_batch", "box_augmentation", "fit_anchor_shapes", "train_detector", "warmup_cosine"]

logger = logging.getLogger(__name__)


def fit_anchor_shapes(boxes: np.ndarray, k: int = 3, iters: int = 100, seed: int = 0) -> list[list[float]]:
    """``k`` anchor shapes ``[w, h]`` fitted to ``xyxy`` ``boxes`` by k-means with the distance ``1 - IoU`` of
    the box sizes (centres aligned, YOLOv2's anchor clustering); medians as centres, sorted by area."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    wh = b[:, 2:] - b[:, :2]
    if len(wh) < k:
        raise ValueError(f"fit_anchor_shapes needs at least k={k} boxes, got {len(wh)}.")
    centres = wh[np.random.default_rng(seed).choice(len(wh), k, replace=False)]
    for _ in range(iters):
        inter = np.minimum(wh[:, None, 0], centres[None, :, 0]) * np.minimum(wh[:, None, 1], centres[None, :, 1])
        iou = inter / (wh.prod(1)[:, None] + centres.prod(1)[None] - inter)
        assign = iou.argmax(1)
        new = np.stack([np.median(wh[assign == j], 0) if (assign == j).any() else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return [[float(w), float(h)] for w, h in centres[np.argsort(centres.prod(1), kind="stable")]]


def box_augmentation(zoom: tuple[float, float] = (0.8, 1.25), prob: float = 0.5, seed: int = 0) -> Compose:
    """Per-image random zoom (boxes follow and are clipped; boxes zoomed out of the image are dropped) and
    random intensity changes of a ``{"image", "box", "label"}`` item, seeded by ``seed``."""
    t = Compose(
        [
            RandZoomBoxd("image", "box", "image", prob=prob, min_zoom=zoom[0], max_zoom=zoom[1], keep_size=True),
            ClipBoxToImaged("box", "label", "image", remove_empty=True),
            RandAdjustContrastd("image", prob=prob, gamma=(0.75, 1.33)),
            RandScaleIntensityd("image", factors=0.1, prob=prob),
            RandShiftIntensityd("image", offsets=0.05, prob=prob),
            RandGaussianNoised("image", prob=prob, std=0.02),
        ]
    )
    t.set_random_state(seed)
    return t


def augmented_batch(
    data: DetectionSet, idx: torch.Tensor, generator: torch.Generator, transform: Compose | None = None
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Images and targets of ``idx``, each under a random flip/transpose (one of 8) drawn from ``generator``,
    then ``transform`` (e.g. :func:`box_augmentation`) when given."""
    ks = torch.randint(0, 8, (len(idx),), generator=generator).tolist()
    images, targets = [], []
    for i, k in zip(idx.tolist(), ks):
        img, boxes = dihedral(data.images[i], data.boxes[i], k)
        labels = data.labels[i]
        if transform is not None:
            item = transform({"image": img, "box": boxes, "label": labels})
            img = torch.as_tensor(item["image"]).as_subclass(torch.Tensor).float()
            boxes = torch.as_tensor(item["box"], dtype=torch.float32).reshape(-1, 4)
            labels = torch.as_tensor(item["label"], dtype=torch.long).reshape(-1)
        images.append(img)
        targets.append({"boxes": boxes, "labels": labels})
    return torch.stack(images), targets


def warmup_cosine(warmup_epochs: int, max_epochs: int) -> Any:
    """Learning-rate factor per epoch: linear warm-up over ``warmup_epochs``, then a cosine decay to 0."""

    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return (epoch + 1) / (warmup_epochs + 1)
        span = max(max_epochs - warmup_epochs, 1)
        return 0.5 * (1 + math.cos(math.pi * min(epoch - warmup_epochs, span) / span))

    return factor


def _epoch(
    detector: Any,
    data: DetectionSet,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    gen: torch.Generator,
    transform: Compose | None = None,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
) -> float:
    detector.train()
    order = torch.randperm(data.images.shape[0], generator=gen)
    total = 0.0
    for start in range(0, len(order), batch_size):
        images, targets = augmented_batch(data, order[start : start + batch_size], gen, transform)
        losses = detector(images, targets)
        loss = losses[detector.cls_key] + losses[detector.box_reg_key]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update_parameters(detector.network)
        total += float(loss.detach()) * images.shape[0]
    return total / data.images.shape[0]


def _validate(detector: Any, network: torch.nn.Module, val: DetectionSet) -> dict[str, float]:
    """Validation metrics of ``detector`` with ``network`` (e.g. the EMA weights) in place of its own."""
    own = detector.network
    detector.network = network
    try:
        return detection_metrics(detect(detector, val.images), val.boxes, val.labels)
    finally:
        detector.network = own


def _score(metrics: dict[str, float]) -> tuple[float, float]:
    return metrics["ap_iou_0.5"], metrics["coco_map"]


def train_detector(
    detector: Any,
    dataset_dir: str | os.PathLike,
    model_path: str | os.PathLike,
    max_epochs: int = 300,
    learning_rate: float = 1e-3,
    batch_size: int = 16,
    val_interval: int = 5,
    max_minutes: float | None = 15.0,
    num_threads: int | None = 1,
    seed: int = 0,
    augment: bool = False,
    ema_decay: float | None = None,
    warmup_epochs: int = 0,
    weight_decay: float = 0.0,
) -> dict[str, Any]:
    """Train ``detector`` (a MONAI RetinaNetDetector) on ``training``, select on ``validation`` AP@0.5.

    Args:
        detector: detector whose ``network`` is trained and saved.
        dataset_dir: folder written by :mod:`monai_smia.apps.data_prep.msd_lung_det`.
        model_path: where the best network state dict goes (written atomically).
        max_epochs: epochs (warm-up, then cosine learning-rate decay over the rest).
        learning_rate: AdamW learning rate.
        batch_size: images per step.
        val_interval: epochs between validations.
        max_minutes: stop after this wall time (``None``: no limit); the best checkpoint so far stays.
        num_threads: ``torch.set_num_threads`` (the CPU is shared); ``None`` leaves it.
        seed: seeds the initialisation, the order and the augmentation.
        augment: add :func:`box_augmentation` (zoom and intensity) to the flips.
        ema_decay: validate and save an exponential moving average of the weights with this decay per step.
        warmup_epochs: epochs of linear learning-rate warm-up.
        weight_decay: AdamW weight decay.

    Returns:
        ``{"best_epoch", "best_val_ap_iou_0.5", "val", "epochs_run", "minutes", "model_path"}``.
    """
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train, val = load_detection_split(dataset_dir, "training"), load_detection_split(dataset_dir, "validation")
    optimizer = torch.optim.AdamW(detector.network.parameters(), lr=learning_rate, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_epochs, max_epochs))
    transform = box_augmentation(seed=seed) if augment else None
    ema = None
    if ema_decay is not None:
        avg = torch.optim.swa_utils.get_ema_multi_avg_fn(ema_decay)
        ema = torch.optim.swa_utils.AveragedModel(detector.network, multi_avg_fn=avg, use_buffers=True)
    best: dict[str, Any] = {"best_epoch": -1, "best_val_ap_iou_0.5": -1.0, "score": (-1.0, -1.0)}
    start, epoch = time.time(), 0
    for epoch in range(1, max_epochs + 1):
        loss = _epoch(detector, train, optimizer, batch_size, gen, transform, ema)
        scheduler.step()
        if epoch % val_interval and epoch != max_epochs:
            continue
        network = detector.network if ema is None else ema.module
        metrics = _validate(detector, network, val)
        logger.info("epoch %d loss %.4f val %s", epoch, loss, {k: round(v, 4) for k, v in metrics.items()})
        if _score(metrics) > best["score"]:
            best = {"best_epoch": epoch, "best_val_ap_iou_0.5": metrics["ap_iou_0.5"], "val": metrics,
                    "score": _score(metrics)}  # fmt: skip
            with atomic_file(model_path, suffix=".pt") as tmp:
                torch.save(copy.deepcopy(network.state_dict()), tmp)
        if max_minutes is not None and time.time() - start > 60 * max_minutes:
            logger.info("stopping after %.1f minutes (max_minutes)", (time.time() - start) / 60)
            break
    detector.eval()
    best.pop("score")
    return {**best, "epochs_run": epoch, "minutes": (time.time() - start) / 60, "model_path": str(Path(model_path))}
