"""Classical lung masks for CT without lung labels: HU threshold, body mask, components, morphology.

The mask is meant as a training label for CT that has no hand or model label. It follows the
usual recipe (e.g. Hu, Hoffman and Reinhardt, "Automatic lung segmentation for accurate
quantitation of volumetric X-ray CT images", IEEE TMI 2001): air-density voxels inside the body,
the largest connected air regions, holes (vessels) filled slice by slice, then a small closing.

Tight crops, where the field of view cuts through the chest wall and the lungs touch the image
border, break the usual "air connected to the border is outside the body" rule. Each axial slice
is therefore classified by its border: when much of the border is tissue the slice is a crop, and
the region beyond the border is treated as body (a tissue frame) before holes are filled.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["body_mask", "lung_mask_from_hu", "keep_large_components", "remove_airways"]


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2


def keep_large_components(mask: np.ndarray, min_fraction: float = 0.1, min_voxels: int = 1) -> np.ndarray:
    """Keep 3D connected components of ``mask`` whose size is at least ``min_fraction`` of the largest.

    Args:
        mask: boolean array.
        min_fraction: components smaller than this fraction of the largest component are dropped.
        min_voxels: components smaller than this are dropped regardless.

    Returns:
        A boolean array of the same shape.
    """
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    keep = (sizes >= max(min_voxels, min_fraction * sizes.max())).nonzero()[0] + 1
    return np.isin(labels, keep)


def body_mask(hu: np.ndarray, tissue_hu: float = -400.0, crop_border_fraction: float = 0.3) -> np.ndarray:
    """Body mask of a CT volume in (z, y, x) order: the largest tissue component with holes filled.

    Args:
        hu: CT volume in Hounsfield units, axial slices along axis 0.
        tissue_hu: voxels above this value count as tissue.
        crop_border_fraction: an axial slice whose border is tissue for at least this fraction of
            its pixels is treated as a tight crop: the body is assumed to continue past the border.

    Returns:
        Boolean body mask (lungs, airways and vessels inside the body are part of it).
    """
    if hu.ndim != 3:
        raise ValueError(f"body_mask expects a 3D (z, y, x) volume, got shape {hu.shape}")
    tissue = hu > tissue_hu
    opened = np.stack([ndimage.binary_opening(s, structure=_disk(1)) for s in tissue])
    # the largest 3D tissue component is the patient; the table and clothing are detached by the opening
    body_tissue = keep_large_components(opened, min_fraction=1.0) if opened.any() else opened
    body = np.zeros_like(body_tissue)
    for z, sl in enumerate(body_tissue):
        border = np.concatenate([tissue[z, 0, :], tissue[z, -1, :], tissue[z, :, 0], tissue[z, :, -1]])
        frame = bool(border.mean() >= crop_border_fraction)
        padded = np.pad(sl, 1, constant_values=frame)
        filled = ndimage.binary_fill_holes(padded)[1:-1, 1:-1]
        body[z] = filled
    return body


def lung_mask_from_hu(
    hu: np.ndarray,
    spacing_zyx: tuple[float, float, float] = (1.0, 1.0, 1.0),
    lung_hu: float = -400.0,
    min_volume_ml: float = 20.0,
    min_fraction: float = 0.1,
    crop_border_fraction: float = 0.3,
) -> np.ndarray:
    """Binary lung mask of a CT volume by HU threshold inside the body.

    Steps: body mask (tissue frame on cropped slices); air voxels (HU < ``lung_hu``) inside the
    body; an in-plane opening to detach thin connections; 3D components at least ``min_volume_ml``
    and ``min_fraction`` of the largest (drops bowel gas, the gastric bubble and noise); the
    trachea removed slice by slice (:func:`remove_airways`); holes
    filled slice by slice (vessels belong to the lung); a small in-plane closing.

    Args:
        hu: CT volume in Hounsfield units, (z, y, x), axial slices along axis 0.
        spacing_zyx: voxel spacing in mm in the same order, for the volume threshold.
        lung_hu: upper HU bound of lung parenchyma.
        min_volume_ml: smallest lung component kept, in millilitres.
        min_fraction: smallest lung component kept, relative to the largest.
        crop_border_fraction: see :func:`body_mask`.

    Returns:
        Boolean lung mask, same shape as ``hu``; empty when no lung-like region exists.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"lung_mask_from_hu expects a 3D (z, y, x) volume, got shape {hu.shape}")
    if hu.size == 0 or not np.isfinite(hu).all():
        raise ValueError("lung_mask_from_hu: the CT volume is empty or contains NaN/inf")
    body = body_mask(hu, tissue_hu=lung_hu, crop_border_fraction=crop_border_fraction)
    air = (hu < lung_hu) & body
    air = np.stack([ndimage.binary_opening(s, structure=_disk(1)) for s in air])
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    lungs = keep_large_components(air, min_fraction=min_fraction, min_voxels=int(np.ceil(min_volume_ml / voxel_ml)))
    lungs = remove_airways(lungs, hu, spacing_zyx[1] * spacing_zyx[2])
    lungs = np.stack([ndimage.binary_fill_holes(s) for s in lungs])
    lungs = np.stack([ndimage.binary_closing(s, structure=_disk(2)) for s in lungs]) & body
    return lungs


def remove_airways(
    lungs: np.ndarray, hu: np.ndarray, pixel_mm2: float, air_hu: float = -900.0, max_area_cm2: float = 8.0
) -> np.ndarray:
    """Drop the trachea (and other small pure-air regions) slice by slice from a lung mask.

    In an axial slice the trachea is a small region of air (about -1000 HU) while lung parenchyma
    averages -700 to -900 HU, so 2D components with mean HU below ``air_hu`` and area below
    ``max_area_cm2`` are removed. This matches lung masks that exclude the airways (the Chest
    Imaging Platform whole-lung mask, the TotalSegmentator lobes).
    """
    out = lungs.copy()
    max_px = max_area_cm2 * 100.0 / pixel_mm2
    for z in range(lungs.shape[0]):
        labels, n = ndimage.label(lungs[z])
        if n == 0:
            continue
        idx = np.arange(1, n + 1)
        areas = ndimage.sum_labels(np.ones_like(labels), labels, idx)
        means = ndimage.mean(hu[z], labels, idx)
        drop = idx[(areas < max_px) & (means < air_hu)]
        if drop.size:
            out[z] &= ~np.isin(labels, drop)
    return out
