"""Write labelled 2D image arrays as PNG files with classification items for ``datalist.json``.

Shared by the MedMNIST, MNIST and fundus (APTOS-2019, Kaggle DR) converters. Each item is
``{"image": "images/<name>.png", "label": <int>}`` with the path relative to the dataset root.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.utils import optional_import

Image, _has_pil = optional_import("PIL.Image")

IMAGE_DIR = "images"


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a file (recorded in ``datalist.json`` so reruns can detect a changed source)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def check_images_labels(
    images: np.ndarray, labels: np.ndarray, num_classes: int, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a stack of 2D images and their class labels; return images and labels as ``(N,)`` int64.

    Args:
        images: ``(N, H, W)`` grey or ``(N, H, W, 3)`` RGB, ``uint8``.
        labels: ``(N,)`` or ``(N, 1)`` integer class indices in ``[0, num_classes)``.
        num_classes: number of classes of the task.
        where: name of the source (file and key) used in error messages.

    Raises:
        ValueError: on a wrong shape, dtype, length mismatch or a label out of range.
    """
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise ValueError(f"{where}: images must have shape (N, H, W) or (N, H, W, 3), got {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"{where}: images must be uint8 (0..255), got {images.dtype}")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"{where}: labels must have shape (N,) or (N, 1) (one class per image), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: labels must be integers, got {labels.dtype}")
    if len(labels) != len(images):
        raise ValueError(f"{where}: {len(images)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{where}: labels must lie in [0, {num_classes - 1}], found {int(labels.min())}..{int(labels.max())}"
        )
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    return images, labels.astype(np.int64)


def write_png_items(
    root: str | os.PathLike, names: Sequence[str], images: np.ndarray, labels: np.ndarray, **extra: Sequence[Any]
) -> list[dict[str, Any]]:
    """Save ``images[i]`` as ``root/images/names[i].png`` and return the datalist items.

    Args:
        root: dataset root (usually the temporary folder of :func:`monai_smia.apps.data_prep.layout.atomic_output_dir`).
        names: file stems, one per image.
        images: ``(N, H, W)`` or ``(N, H, W, 3)`` ``uint8``.
        labels: ``(N,)`` integer labels.
        extra: further per-item fields (same length as ``names``), e.g. ``index`` in the source file.
    """
    if not _has_pil:
        raise ImportError("writing PNG files needs Pillow: pip install pillow")
    folder = Path(root) / IMAGE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i, name in enumerate(names):
        rel = f"{IMAGE_DIR}/{name}.png"
        Image.fromarray(np.ascontiguousarray(images[i])).save(Path(root) / rel)
        item: dict[str, Any] = {"image": rel, "label": int(labels[i])}
        for key, values in extra.items():
            item[key] = values[i]
        items.append(item)
    return items
