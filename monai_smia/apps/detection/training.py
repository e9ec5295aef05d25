"""Training of the detection victim (a MONAI RetinaNetDetector) for the SMIA detection task
(Qi et al., "Stabilized Medical Image Attacks", ICLR 2021, arXiv 2103.05232).

The datasets are small 2D patches held in memory; each epoch draws a random flip/transpose per
image (boxes follow, :func:`~monai_smia.apps.detection.data.dihedral`), and the checkpoint with the best
validation AP at IoU 0.5 is kept (the network's state dict, loadable with ``weights_only=True``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from monai_smia.apps.detection.data import DetectionSet, dihedral, load_detection_split
from monai_smia.apps.detection.metrics import detect, detection_metrics
from monai_smia.io.atomic import atomic_file

__all__ = ["train_detector", "augmented_batch"]

logger = logging.getLogger(__name__)


def augmented_batch(
    data: DetectionSet, idx: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Images and targets of ``idx``, each under a random flip/transpose (one of 8) drawn from ``generator``."""
    ks = torch.randint(0, 8, (len(idx),), generator=generator).tolist()
    images, targets = [], []
    for i, k in zip(idx.tolist(), ks):
        img, boxes = dihedral(data.images[i], data.boxes[i], k)
        images.append(img)
        targets.append({"boxes": boxes, "labels": data.labels[i]})
    return torch.stack(images), targets


def _epoch(
    detector: Any, data: DetectionSet, optimizer: torch.optim.Optimizer, batch_size: int, gen: torch.Generator
) -> float:
    detector.train()
    order = torch.randperm(data.images.shape[0], generator=gen)
    total = 0.0
    for start in range(0, len(order), batch_size):
        images, targets = augmented_batch(data, order[start : start + batch_size], gen)
        losses = detector(images, targets)
        loss = losses[detector.cls_key] + losses[detector.box_reg_key]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss) * images.shape[0]
    return total / data.images.shape[0]


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
) -> dict[str, Any]:
    """Train ``detector`` (a MONAI RetinaNetDetector) on ``training``, select on ``validation`` AP@0.5.

    Args:
        detector: detector whose ``network`` is trained and saved.
        dataset_dir: folder written by :mod:`monai_smia.apps.data_prep.msd_lung_det`.
        model_path: where the best network state dict goes (written atomically).
        max_epochs: epochs (cosine learning-rate decay over them).
        learning_rate: Adam learning rate.
        batch_size: images per step.
        val_interval: epochs between validations.
        max_minutes: stop after this wall time (``None``: no limit); the best checkpoint so far stays.
        num_threads: ``torch.set_num_threads`` (the CPU is shared); ``None`` leaves it.
        seed: seeds the initialisation, the order and the augmentation.

    Returns:
        ``{"best_epoch", "best_val_ap_iou_0.5", "epochs_run", "minutes"}``.
    """
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train, val = load_detection_split(dataset_dir, "training"), load_detection_split(dataset_dir, "validation")
    optimizer = torch.optim.Adam(detector.network.parameters(), lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.5 * (1 + math.cos(math.pi * e / max_epochs)))
    best: dict[str, Any] = {"best_epoch": -1, "best_val_ap_iou_0.5": -1.0}
    start, epoch = time.time(), 0
    for epoch in range(1, max_epochs + 1):
        loss = _epoch(detector, train, optimizer, batch_size, gen)
        scheduler.step()
        if epoch % val_interval and epoch != max_epochs:
            continue
        metrics = detection_metrics(detect(detector, val.images), val.boxes, val.labels)
        logger.info("epoch %d loss %.4f val %s", epoch, loss, {k: round(v, 4) for k, v in metrics.items()})
        if metrics["ap_iou_0.5"] > best["best_val_ap_iou_0.5"]:
            best = {"best_epoch": epoch, "best_val_ap_iou_0.5": metrics["ap_iou_0.5"], "val": metrics}
            with atomic_file(model_path, suffix=".pt") as tmp:
                torch.save(detector.network.state_dict(), tmp)
        if max_minutes is not None and time.time() - start > 60 * max_minutes:
            logger.info("stopping after %.1f minutes (max_minutes)", (time.time() - start) / 60)
            break
    detector.eval()
    return {**best, "epochs_run": epoch, "minutes": (time.time() - start) / 60, "model_path": str(Path(model_path))}
