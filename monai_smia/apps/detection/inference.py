"""Plain inference and adversarial export of the detection victim (the bundles' ``inference.json`` and
``attack.json``), for the SMIA detection task (Qi et al., ICLR 2021, arXiv 2103.05232)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import optional_import

from monai_smia.apps.detection.attack import make_detection_attack
from monai_smia.apps.detection.data import load_detection_split
from monai_smia.apps.detection.metrics import detect
from monai_smia.io.atomic import atomic_output_dir, write_json_atomic

nib, _has_nib = optional_import("nibabel")

__all__ = ["write_detections", "write_adversarial"]


def write_detections(
    detector: Any, dataset_dir: str | os.PathLike, data_split: str, output_dir: str | os.PathLike
) -> Path:
    """Detect on every image of ``data_split``; write ``detections.json``
    (``{case_id: {"box": [[x1, y1, x2, y2], ...], "score": [...], "label": [...]}}``, box mode ``xyxy``)."""
    data = load_detection_split(dataset_dir, data_split)
    preds = detect(detector, data.images.to(next(detector.parameters()).device))
    out = {
        c: {"box": p["boxes"].tolist(), "score": p["scores"].tolist(), "label": p["labels"].tolist()}
        for c, p in zip(data.case_ids, preds)
    }
    path = Path(output_dir) / "detections.json"
    write_json_atomic(path, {"box_mode": "xyxy", "detections": out})
    return path


def write_adversarial(
    detector: Any,
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    attack: str = "SMIA",
    eps: float = 4.0 / 255,
    num_iter: int = 10,
    data_split: str = "test",
    seed: int = 0,
) -> Path:
    """Attack every image of ``data_split`` against its ground-truth boxes and write the adversarial
    images (float32 NIfTI) with a detection datalist (same boxes) into ``output_dir`` (atomically)."""
    data = load_detection_split(dataset_dir, data_split)
    kwargs = {} if attack == "DAG" else {"allow_empty_boxes": True}
    atk = make_detection_attack(attack, detector, eps, num_iter, **kwargs)
    extra = {"generator": torch.Generator().manual_seed(seed)} if attack in ("noise", "PGD") else {}
    x_adv = atk(data.images, data.boxes, data.labels, **extra)
    items = []
    with atomic_output_dir(output_dir, overwrite=True, protected=[dataset_dir]) as tmp:
        (tmp / "images").mkdir()
        for case, img, boxes, labels in zip(data.case_ids, x_adv, data.boxes, data.labels):
            name = f"images/{case}.nii.gz"
            nib.save(nib.Nifti1Image(img[0].numpy().astype(np.float32), np.eye(4)), str(tmp / name))
            items.append({"image": name, "box": boxes.tolist(), "label": labels.tolist()})
        write_json_atomic(tmp / "datalist.json", {
            "name": f"adversarial_{attack}", "box_mode": "xyxy", "attack": attack, "eps": eps, "num_iter": num_iter,
            "source": str(Path(dataset_dir).name), "training": [], "validation": [], "test": items,
        })  # fmt: skip
    return Path(output_dir) / "datalist.json"
