"""What ``monai-smia attack`` writes for one case, from a perturbation on the source grid.

NIfTI and DICOM sources: ``<case>_adv.nii.gz`` and ``<case>_perturbation.nii.gz`` with the source's
shape and affine, and for DICOM sources ``<case>_adv_dicom/``, one new DERIVED series
(:func:`monai_smia.io.write_adversarial_dicom_series`). PNG sources: ``<case>_adv.png`` in the
source's integer type and ``<case>_perturbation.npy``. :func:`source_lattice` says on which
stored-value lattice a source lives, so that a source-grid attack can step on it.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import EnsureChannelFirstd, LoadImaged
from monai.transforms.utils import allow_missing_keys_mode
from monai.utils import optional_import

from monai_smia.apps.attack.cases import SourceCase
from monai_smia.apps.attack.source import SourceLattice
from monai_smia.io import (
    load_source_volume,
    save_adversarial_nifti,
    write_adversarial_dicom_series,
)
from monai_smia.io.dicom_read import find_dicom_series
from monai_smia.io.source_grid import nifti_scaling, write_nifti_atomic
from monai_smia.io.units import flat_transforms
from monai_smia.reports import atomic_write_bytes

Image, _has_pil = optional_import("PIL.Image")
pydicom, _has_pydicom = optional_import("pydicom")

__all__ = ["loaded_png", "source_lattice", "write_png", "write_volume"]

logger = logging.getLogger(__name__)


def _dicom_lattice(folder: Path) -> SourceLattice:
    slopes, intercepts = set(), set()
    for f in find_dicom_series(folder):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        slopes.add(float(ds.get("RescaleSlope", 1.0) or 1.0))
        intercepts.add(float(ds.get("RescaleIntercept", 0.0) or 0.0))
    if len(slopes) != 1 or len(intercepts) != 1:
        logger.warning(
            "%s: rescale slope/intercept vary between slices; attacking without a stored-value lattice.", folder
        )
        return SourceLattice()
    return SourceLattice(slopes.pop(), intercepts.pop(), "int16")  # the DERIVED series is written as int16


def source_lattice(case: SourceCase) -> SourceLattice:
    """The stored-value lattice of ``case``'s source: integer NIfTI (with its scaling), DICOM (rescale
    slope and intercept; written as int16) and PNG; a float NIfTI has none."""
    if case.kind == "dicom":
        return _dicom_lattice(case.source)
    if case.kind == "png":
        with Image.open(case.source) as im:
            dtype = np.asarray(im).dtype
        return SourceLattice(1.0, 0.0, str(dtype)) if np.issubdtype(dtype, np.integer) else SourceLattice()
    img = nib.load(str(case.source))
    dtype = img.header.get_data_dtype()
    if not np.issubdtype(dtype, np.integer):
        return SourceLattice()
    return SourceLattice(*nifti_scaling(img), str(dtype))


def loaded_png(preprocessing: Any, path: str) -> tuple[np.ndarray, bool]:
    """The PNG as the bundle's loading transforms read it (channel-first, before any intensity transform),
    and whether its ``PILReader`` indexes ``(W, H)`` (MONAI's default ``reverse_indexing``)."""
    item: dict[str, Any] = {"image": path}
    reverse = True
    for t in flat_transforms(preprocessing):
        if not isinstance(t, (LoadImaged, EnsureChannelFirstd)):
            break
        for r in getattr(getattr(t, "_loader", None), "readers", []):
            if type(r).__name__ == "PILReader":
                reverse = bool(getattr(r, "reverse_indexing", True))
        with allow_missing_keys_mode(t):
            item = t(item)
    img = item["image"]
    return np.asarray(img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else img), reverse


def _atomic_png(arr: np.ndarray, path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _atomic_npy(arr: np.ndarray, path: Path) -> None:
    buf = io.BytesIO()
    np.save(buf, arr)
    atomic_write_bytes(path, buf.getvalue())


def write_volume(
    case: SourceCase,
    d_src: Any,
    out: Path,
    eps_source: float,
    save_dtype: str,
    dicom: bool,
    settings: Mapping[str, Any],
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Write the NIfTI outputs (and for a DICOM source the DERIVED series) of ``source + d_src``."""
    adv_path = out / f"{case.case_id}_adv.nii.gz"
    rep = save_adversarial_nifti(case.source, d_src, adv_path, eps=eps_source, dtype=save_dtype)
    values, affine, handle = load_source_volume(case.source)
    back = np.asarray(nib.load(str(adv_path)).get_fdata(dtype=np.float64))
    if back.ndim == 4:
        back = back[..., 0]
    applied = (back - values).astype(np.float32)
    header = handle.header.copy() if isinstance(handle, nib.Nifti1Image) else None
    pert_img = nib.Nifti1Image(applied, affine, header)
    pert_img.header.set_data_dtype(np.float32)
    pert_img.header.set_slope_inter(1.0, 0.0)
    pert_path = out / f"{case.case_id}_perturbation.nii.gz"
    write_nifti_atomic(pert_img, pert_path)
    outputs = {"adversarial": adv_path, "perturbation": pert_path}
    written: dict[str, Any] = {
        "max_abs_perturbation_source": rep.max_abs_change,
        "perturbed_fraction": rep.changed_fraction,
        "nifti_dtype": rep.dtype,
        "integer_output": save_dtype == "source",
    }
    if case.kind == "dicom" and dicom:
        dcm = write_adversarial_dicom_series(
            case.source,
            d_src,
            out / f"{case.case_id}_adv_dicom",
            eps=eps_source,
            settings=dict(settings),
            overwrite=True,
        )
        outputs["dicom"] = dcm.folder
        written["dicom"] = {
            "series_instance_uid": dcm.series_instance_uid,
            "num_files": len(dcm.files),
            "max_abs_change": dcm.max_abs_change,
            "rescale_slope": dcm.rescale_slope,
        }
    return outputs, written


def _png_perturbation(
    case: SourceCase, d_src: Any, raw: np.ndarray, src: np.ndarray, reverse_indexing: bool
) -> np.ndarray:
    """``d_src`` (on the loader's grid) in the PNG's ``(H, W[, C])`` layout."""
    gray = src.ndim == 2
    cf = src[None] if gray else np.moveaxis(src, -1, 0)  # (C, H, W)
    d = np.asarray(d_src.detach().cpu().numpy() if isinstance(d_src, torch.Tensor) else d_src, dtype=np.float64)
    if d.shape != raw.shape:
        raise ValueError(
            f"the perturbation of {str(case.source)!r} has shape {d.shape} but the bundle loads the image as "
            f"{raw.shape}; "
            "only spatially invertible preprocessing is supported."
        )
    same = raw.shape == cf.shape and np.array_equal(raw, cf)
    swapped = raw.shape == cf.transpose(0, 2, 1).shape and np.array_equal(raw, cf.transpose(0, 2, 1))
    if not (same or swapped):
        raise ValueError(
            f"the bundle's loader reads {str(case.source)!r} with values or channels other than the PNG's "
            f"(loader {raw.shape}, PNG {cf.shape}); cannot map the perturbation back to the file."
        )
    if swapped and not (same and not reverse_indexing):
        d = d.transpose(0, 2, 1)  # MONAI's PILReader indexes (W, H) by default
    return d[0] if gray else np.moveaxis(d, 0, -1)


def write_png(
    case: SourceCase, d_src: Any, raw: np.ndarray, reverse_indexing: bool, out: Path, eps_source: float
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Write ``<case>_adv.png`` (source integer type: rounded to nearest, then clamped so that
    ``|adv - source| <= floor(eps)``) and ``<case>_perturbation.npy`` (the stored ``adv - source``)."""
    if not _has_pil:
        raise ImportError("writing PNG needs Pillow: pip install pillow")
    with Image.open(case.source) as im:
        src = np.asarray(im)
    if not np.issubdtype(src.dtype, np.integer):
        raise ValueError(
            f"{str(case.source)!r} holds {src.dtype} pixels; only integer PNGs (8 or 16 bit) are supported."
        )
    d = _png_perturbation(case, d_src, raw, src, reverse_indexing)
    info = np.iinfo(src.dtype)
    eps_int = math.floor(eps_source + 1e-9)
    values = src.astype(np.float64)
    d = np.clip(d, -eps_source, eps_source)
    adv = np.clip(np.round(values + d), values - eps_int, values + eps_int)
    adv = np.clip(adv, info.min, info.max).astype(src.dtype)
    adv_path = out / f"{case.case_id}_adv.png"
    _atomic_png(adv, adv_path)
    with Image.open(adv_path) as im:
        back = np.asarray(im).astype(np.float64)
    applied = (back - values).astype(np.float32)
    pert_path = out / f"{case.case_id}_perturbation.npy"
    _atomic_npy(applied, pert_path)
    written = {
        "max_abs_perturbation_source": float(np.abs(applied).max()),
        "max_abs_perturbation_float": float(np.abs(d).max()),
        "perturbed_fraction": float((applied != 0).mean()),
        "integer_output": True,
        "png_dtype": str(src.dtype),
    }
    if eps_int < 1:
        logger.warning(
            "%s: eps = %g in the PNG's units is below one integer step; the stored image equals the source.",
            case.case_id,
            eps_source,
        )
    return {"adversarial": adv_path, "perturbation": pert_path}, written
