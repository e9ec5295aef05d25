"""Detection datasets in memory, box checks and box-aware flips for the detection victim of SMIA
(Qi et al., "Stabilized Medical Image Attacks", ICLR 2021, arXiv 2103.05232).

The datalist is the one :mod:`monai_smia.apps.data_prep.msd_lung_det` writes (MONAI's detection
convention: ``box`` and ``label`` per image, ``box_mode`` at the top). Boxes are converted to
``xyxy`` (MONAI :func:`~monai.data.box_utils.convert_box_mode`) and checked on load.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data.box_utils import convert_box_mode
from monai.transforms import LoadImage

from monai_smia.io.datalist import load_datalist

__all__ = ["DetectionSet", "BOX_MODES", "check_boxes", "load_detection_split", "dihedral"]

#: box modes accepted in a datalist or an attack call (2D); everything is converted to ``xyxy``
BOX_MODES = ("xyxy", "xywh", "ccwh")


@dataclass
class DetectionSet:
    """One split in memory: images ``(N, C, *spatial)``, per-image boxes ``(M_i, 2 * dims)`` (xyxy) and labels."""

    images: torch.Tensor
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    case_ids: list[str]

    def targets(self, idx: Sequence[int] | None = None) -> list[dict[str, torch.Tensor]]:
        """MONAI detector targets ``[{"boxes": ..., "labels": ...}]`` for ``idx`` (default: all)."""
        idx = range(len(self.boxes)) if idx is None else idx
        return [{"boxes": self.boxes[i], "labels": self.labels[i]} for i in idx]


def check_boxes(
    boxes: Any,
    labels: Any,
    spatial_shape: Sequence[int],
    case: str,
    box_mode: str = "xyxy",
    allow_empty: bool = True,
    num_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate one image's boxes and labels and return them as ``xyxy`` float32 / int64 tensors.

    Raises:
        ValueError: naming ``case`` and the field: an unknown ``box_mode``; ``box`` not of shape
            ``(M, 2 * dims)``; non-finite or inverted boxes; a box outside the image; ``label`` not
            one integer per box, or a class outside ``0..num_classes-1``; an empty ``box`` list where
            ``allow_empty`` is False.
    """
    dims = len(spatial_shape)
    if box_mode not in BOX_MODES:
        raise ValueError(f"{case}: box_mode {box_mode!r} is not supported; expected one of {BOX_MODES}.")
    try:
        b = torch.as_tensor(np.asarray(boxes, dtype=np.float32) if not isinstance(boxes, torch.Tensor) else boxes)
    except (TypeError, ValueError):
        raise ValueError(
            f"{case}: field 'box' must hold numbers (M boxes of {2 * dims} coordinates), got {boxes!r}."
        ) from None
    b = b.detach().float().reshape(-1, 2 * dims) if b.numel() == 0 else b.detach().float()
    if b.ndim != 2 or b.shape[1] != 2 * dims:
        raise ValueError(
            f"{case}: field 'box' must have shape (M, {2 * dims}) for {dims}D images, got {tuple(b.shape)}."
        )
    if b.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{case}: field 'box' is empty; this attack needs at least one ground-truth box per image.")
    try:
        lab = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"{case}: field 'label' must hold one integer class per box, got {labels!r}.") from None
    if lab.shape[0] != b.shape[0] or (lab.numel() and lab.is_floating_point() and not torch.equal(lab, lab.round())):
        raise ValueError(
            f"{case}: field 'label' must hold one integer class per box ({b.shape[0]}), got {lab.tolist()}."
        )
    if num_classes is not None and lab.numel() and bool(((lab < 0) | (lab >= num_classes)).any()):
        raise ValueError(
            f"{case}: field 'label' holds classes {lab.tolist()} outside the detector's 0..{num_classes - 1}."
        )
    if b.shape[0] and box_mode != "xyxy":
        b = convert_box_mode(b, src_mode=box_mode, dst_mode="xyxy")
    if not bool(torch.isfinite(b).all()):
        raise ValueError(f"{case}: field 'box' holds NaN or Inf coordinates.")
    size = torch.tensor([float(s) for s in spatial_shape])
    lo, hi = b[:, :dims], b[:, dims:]
    if bool((hi <= lo).any()):
        raise ValueError(f"{case}: field 'box' has a box with max <= min (mode {box_mode!r}?): {b.tolist()}.")
    if bool((lo < 0).any()) or bool((hi > size).any()):
        raise ValueError(
            f"{case}: field 'box' has a box outside the image of size {list(spatial_shape)}: {b.tolist()} "
            "(xyxy, pixel edges, x along the first spatial axis)."
        )
    return b, lab.long()


def load_detection_split(dataset_dir: str | os.PathLike, split: str, num_classes: int | None = None) -> DetectionSet:
    """Load one split of a detection dataset (see :mod:`monai_smia.apps.data_prep.msd_lung_det`) into memory;
    with ``num_classes``, every label is checked to be one of the detector's classes."""
    meta = load_datalist(dataset_dir)
    mode = meta.get("box_mode")
    if mode is None:
        raise ValueError(
            f"{Path(dataset_dir) / 'datalist.json'}: field 'box_mode' is missing (detection datalists state it)."
        )
    items = load_datalist(dataset_dir, split)
    if not items:
        raise ValueError(f"{Path(dataset_dir) / 'datalist.json'}: split {split!r} is empty.")
    loader = LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)
    images, boxes, labels, ids = [], [], [], []
    for n, item in enumerate(items):
        for key in ("image", "box", "label"):
            if key not in item:
                raise ValueError(f"{split}[{n}]: field {key!r} is missing.")
        img = torch.as_tensor(np.asarray(loader(item["image"])), dtype=torch.float32)
        case = Path(item["image"]).name.split(".")[0]
        b, lab = check_boxes(
            item["box"], item["label"], img.shape[1:], f"{split}[{n}] ({case})", mode, True, num_classes
        )
        images.append(img)
        boxes.append(b)
        labels.append(lab)
        ids.append(case)
    return DetectionSet(torch.stack(images), boxes, labels, ids)


def dihedral(image: torch.Tensor, boxes: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One of the 8 flips/transposes (``k`` in 0..7) of a 2D ``(C, H, W)`` image and its ``xyxy`` boxes."""
    h, w = image.shape[-2:]
    b = boxes.clone()
    if k & 1:  # flip the first spatial axis
        image, b = image.flip(-2), torch.stack([h - b[:, 2], b[:, 1], h - b[:, 0], b[:, 3]], dim=1)
    if k & 2:  # flip the second spatial axis
        image, b = image.flip(-1), torch.stack([b[:, 0], w - b[:, 3], b[:, 2], w - b[:, 1]], dim=1)
    if k & 4 and h == w:  # transpose
        image, b = image.transpose(-2, -1), b[:, [1, 0, 3, 2]]
    return image.contiguous(), b.reshape(-1, 4)
