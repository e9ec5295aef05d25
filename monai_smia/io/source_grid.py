"""Write ``source + perturbation`` as NIfTI on the source grid, and bring a network-grid perturbation back there.

A source-grid attack (:mod:`monai_smia.apps.attack.source`, the default of ``monai-smia attack``)
already holds its perturbation on the source voxels in source units: :func:`save_adversarial_nifti`
writes it as it is (float32, or the source's integer type and scaling, where a perturbation of whole
stored steps is kept exactly: :func:`lattice_steps`). An attack on the network's grid (reoriented,
resampled, cropped) needs its perturbation ``d`` brought back first (docs/design.md, section 4): through the
inverse spatial transforms with bilinear interpolation (:func:`invert_perturbation`, MONAI's
``Invertd``). Either way the written file has the source's shape, affine, orientation and spacing and
differs from it by at most ``eps`` (in the source's own units, e.g. HU) at every voxel.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd, InvertibleTransform

from monai_smia.io.atomic import atomic_file
from monai_smia.io.dicom_read import LoadSeriesImage, find_dicom_series

__all__ = [
    "NiftiReport",
    "invert_perturbation",
    "lattice_steps",
    "load_source_volume",
    "nifti_scaling",
    "rounding_survival",
    "save_adversarial_nifti",
]


def invert_perturbation(
    data: Mapping[str, Any],
    perturbation_key: str,
    transform: InvertibleTransform,
    orig_key: str = "image",
) -> MetaTensor:
    """Map the perturbation stored under ``perturbation_key`` back through ``transform``'s spatial steps.

    Uses MONAI's ``Invertd`` with the interpolation modes of the forward transforms
    (``nearest_interp=False``: bilinear for ``Spacingd(mode="bilinear")``); flips and permutations
    are exact, regions removed by crops come back as zero perturbation. Only spatial transforms may
    sit between loading and the attack: an intensity transform (e.g. ``ScaleIntensityRanged``) would
    put the perturbation in other units; put the window into the network instead
    (:class:`monai_smia.layers.IntensityWindow`).

    Args:
        data: a dictionary item after the attack transform (channel-first, no batch dim).
        perturbation_key: key of the perturbation (``perturbation_key`` of the attack transform).
        transform: the preprocessing ``Compose`` that produced ``data[orig_key]``.
        orig_key: key whose applied operations are inverted.

    Returns:
        the perturbation on the source grid, a ``MetaTensor`` with the source affine.
    """
    for key in (perturbation_key, orig_key):
        if key not in data:
            raise KeyError(f"invert_perturbation: key {key!r} is not in the data (keys: {sorted(map(str, data))}).")
    if not isinstance(transform, InvertibleTransform):
        raise TypeError(
            f"transform must be an invertible MONAI transform (e.g. Compose), got {type(transform).__name__}."
        )
    inv = Invertd(keys=perturbation_key, transform=transform, orig_keys=orig_key, nearest_interp=False, to_tensor=True)
    out = inv({perturbation_key: data[perturbation_key], orig_key: data[orig_key]})[perturbation_key]
    if not isinstance(out, MetaTensor):
        raise ValueError(
            f"inverting {perturbation_key!r} did not give a MetaTensor; was {orig_key!r} produced by transform?"
        )
    return out


def load_source_volume(source: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, Any]:
    """Read a NIfTI file (nibabel) or a DICOM series folder (MONAI ``ITKReader``) at its own grid.

    Returns:
        ``(values, affine, handle)``: float64 values in the source's units (NIfTI scaling applied),
        the RAS affine, and the nibabel image (NIfTI) or the list of series files (DICOM).

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: the file is unreadable or truncated, or not a 3D volume.
    """
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"source {str(path)!r} does not exist.")
    if path.is_dir():
        files = find_dicom_series(path)
        img = LoadSeriesImage(image_only=True)(str(path))
        return np.asarray(img.numpy(), dtype=np.float64), np.asarray(img.affine.numpy(), dtype=np.float64), files
    try:
        nii = nib.load(str(path))
        values = np.asarray(nii.get_fdata(dtype=np.float64))
    except Exception as e:  # nibabel raises several types for damaged files
        raise ValueError(
            f"cannot read NIfTI {str(path)!r} ({type(e).__name__}: {e}); the file may be truncated or not NIfTI."
        ) from e
    if values.ndim == 4 and values.shape[3] == 1:
        values = values[..., 0]
    if values.ndim != 3:
        raise ValueError(f"{str(path)!r} holds an array of shape {values.shape}; a 3D volume is expected.")
    return values, np.asarray(nii.affine, dtype=np.float64), nii


@dataclass
class NiftiReport:
    """What :func:`save_adversarial_nifti` wrote (measured on the file read back).

    Attributes:
        path: the written file.
        dtype: its on-disk data type.
        max_abs_change: largest ``|adversarial - source|`` over all voxels, in source units.
        eps: the budget.
        changed_fraction: share of voxels that differ from the source.
    """

    path: Path
    dtype: str
    max_abs_change: float
    eps: float
    changed_fraction: float


def _perturbation_array(perturbation: Any, shape: Sequence[int], affine: np.ndarray, atol: float) -> np.ndarray:
    arr = perturbation.detach().cpu().numpy() if isinstance(perturbation, torch.Tensor) else np.asarray(perturbation)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(
            f"perturbation has spatial shape {tuple(arr.shape)}, the source {tuple(shape)}; bring it back to the "
            "source "
            "grid first (invert_perturbation)."
        )
    if isinstance(perturbation, MetaTensor):
        p_aff = np.asarray(perturbation.affine.cpu().numpy(), dtype=np.float64)
        if p_aff.shape != (4, 4) or not np.allclose(p_aff, affine, atol=atol):
            raise ValueError(f"perturbation affine\n{p_aff}\ndiffers from the source affine\n{affine}.")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError("perturbation holds NaN/Inf values.")
    return arr


def write_nifti_atomic(img: nib.Nifti1Image, output: Path) -> None:
    """Write ``img`` to ``output`` (.nii or .nii.gz) through a temporary file and a rename."""
    if not output.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"output {str(output)!r} must end with .nii or .nii.gz.")
    with atomic_file(output, suffix=".nii.gz" if output.name.endswith(".nii.gz") else ".nii") as tmp:
        img.to_filename(tmp)


def nifti_scaling(img: nib.Nifti1Image) -> tuple[float, float]:
    """``(slope, intercept)`` a loaded NIfTI's stored values are scaled with (nibabel keeps them on the
    data proxy and resets the loaded header's ``scl_slope``/``scl_inter``)."""
    s, i = getattr(img.dataobj, "slope", 1.0), getattr(img.dataobj, "inter", 0.0)
    slope = 1.0 if s is None or not np.isfinite(s) or s == 0 else float(s)
    inter = 0.0 if i is None or not np.isfinite(i) else float(i)
    return slope, inter


def lattice_steps(q: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Whole steps of ``q`` (a perturbation in stored steps): values within ``tol`` of an integer are
    rounded to it (a perturbation optimised on the lattice keeps every step), others truncated toward
    zero (the budget holds exactly)."""
    near = np.round(q)
    return np.where(np.abs(q - near) <= tol, near, np.trunc(q))


def _float_image(
    values: np.ndarray, d: np.ndarray, affine: np.ndarray, handle: Any, eps: float, bounds: Any
) -> nib.Nifti1Image:
    adv = values + d
    if bounds is not None:
        adv = np.clip(adv, bounds[0], bounds[1])
    adv = np.clip(adv, values - eps, values + eps).astype(np.float32)
    header = handle.header.copy() if isinstance(handle, nib.Nifti1Image) else None
    img = nib.Nifti1Image(adv, affine, header)
    img.header.set_data_dtype(np.float32)
    if header is not None:
        img.header.set_slope_inter(1.0, 0.0)
    return img


def _stored_type(src_path: Path, handle: Any) -> tuple[np.dtype, float, float]:
    """The integer type and scaling ``value = slope * stored + inter`` of an integer source."""
    slope, inter = 1.0, 0.0
    if isinstance(handle, nib.Nifti1Image):
        out_dtype = handle.header.get_data_dtype()
        slope, inter = nifti_scaling(handle)
    else:
        out_dtype = np.dtype(np.int16)
    if not np.issubdtype(out_dtype, np.integer):
        raise ValueError(f"{str(src_path)!r} is stored as {out_dtype}, not an integer type: use dtype='float32'.")
    return out_dtype, slope, inter


def _integer_image(
    src_path: Path, values: np.ndarray, d: np.ndarray, affine: np.ndarray, handle: Any, eps: float, bounds: Any
) -> nib.Nifti1Image:
    out_dtype, slope, inter = _stored_type(src_path, handle)
    stored = (values - inter) / slope
    if not np.allclose(stored, np.round(stored), atol=1e-2, rtol=0):  # scaling applied in float32 by the reader
        raise ValueError(f"{str(src_path)!r} holds values off its stored-value lattice; use dtype='float32'.")
    stored = np.round(stored)
    k = math.floor(eps / slope + 1e-9)
    new = stored + np.clip(lattice_steps(d / slope), -k, k)
    if bounds is not None:
        new = np.clip(new, np.ceil((bounds[0] - inter) / slope - 1e-9), np.floor((bounds[1] - inter) / slope + 1e-9))
    info = np.iinfo(out_dtype)
    new = np.clip(new, info.min, info.max).astype(out_dtype)
    header = handle.header.copy() if isinstance(handle, nib.Nifti1Image) else None
    img = nib.Nifti1Image(new, affine, header)
    img.header.set_data_dtype(out_dtype)
    if header is not None:
        img.header.set_slope_inter(slope, inter)
    return img


def save_adversarial_nifti(
    source: str | os.PathLike,
    perturbation: Any,
    output: str | os.PathLike,
    eps: float,
    dtype: str = "float32",
    bounds: Sequence[float] | None = None,
    affine_atol: float = 1e-3,
) -> NiftiReport:
    """Write ``clamp(source + perturbation)`` as NIfTI with the source's shape, affine and orientation.

    ``perturbation`` is clamped to ``[-eps, eps]``, added to the source values (float64), clamped to
    ``bounds`` (if given) and then once more to ``[source - eps, source + eps]``.

    ``dtype="float32"`` (default) stores the result as float32 (within 4 ulp of the budget).
    ``dtype="source"`` stores the source's integer type (DICOM: int16) with the source's scaling
    (slope, intercept): the perturbation becomes whole stored steps (:func:`lattice_steps`: a
    perturbation already on the lattice, as a source-grid attack makes it, is kept exactly; any
    other is rounded toward zero), so the budget holds exactly; check whether an attack made
    elsewhere survives that rounding with :func:`monai_smia.io.rounding_survival`.

    Args:
        source: the source NIfTI file or DICOM series folder (read, never written).
        perturbation: ``(H, W, D)`` or ``(1, H, W, D)`` perturbation on the source grid; a
            ``MetaTensor``'s affine is checked against the source.
        output: ``.nii`` or ``.nii.gz`` path, written atomically.
        eps: budget in source units (HU for CT).
        dtype: ``"float32"`` or ``"source"``.
        bounds: optional ``(lo, hi)`` valid range of the adversarial values.
        affine_atol: tolerance of the affine check.

    Raises:
        ValueError: shapes/affines differ, bad ``dtype``, or an integer save of a source off its lattice.
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a number > 0, got {eps!r}.")
    if dtype not in ("float32", "source"):
        raise ValueError(f"dtype must be 'float32' or 'source', got {dtype!r}.")
    output, src_path = Path(output), Path(source)
    if output.resolve() == src_path.resolve():
        raise ValueError("output must differ from source (sources are never written to).")
    values, affine, handle = load_source_volume(source)
    d = np.clip(_perturbation_array(perturbation, values.shape, affine, affine_atol), -eps, eps)
    if dtype == "float32":
        img = _float_image(values, d, affine, handle, eps, bounds)
    else:
        img = _integer_image(src_path, values, d, affine, handle, eps, bounds)
    write_nifti_atomic(img, output)
    back = np.asarray(nib.load(str(output)).get_fdata(dtype=np.float64))
    if back.ndim == 4:
        back = back[..., 0]
    diff = np.abs(back - values)
    return NiftiReport(
        path=output,
        dtype=str(img.header.get_data_dtype()),
        max_abs_change=float(diff.max()),
        eps=float(eps),
        changed_fraction=float((diff > 0).mean()),
    )


def rounding_survival(
    predict: Callable[[torch.Tensor], torch.Tensor],
    load: Callable[[str | os.PathLike], torch.Tensor],
    source: str | os.PathLike,
    float_file: str | os.PathLike,
    integer_file: str | os.PathLike,
    reference: torch.Tensor | None = None,
    min_ratio: float = 0.9,
) -> dict[str, Any]:
    """Measure whether an attack survives being stored in an integer type, on the files read back.

    Each file is loaded with ``load`` (the preprocessing chain: path -> network input, channel-first)
    and predicted with ``predict`` (input -> hard labels). The error rate is the share of voxels (or
    samples) whose prediction differs from ``reference`` (default: the prediction on ``source``, the
    label-free view). The attack survives if the integer file's error rate exceeds the clean one and
    reaches at least ``min_ratio`` of the float file's.

    Returns:
        ``{"error_clean", "error_float", "error_integer", "survives"}``.
    """
    preds = {
        name: predict(load(path))
        for name, path in (("clean", source), ("float", float_file), ("integer", integer_file))
    }
    ref = preds["clean"] if reference is None else torch.as_tensor(reference).to(preds["clean"].device)
    if ref.shape != preds["clean"].shape:
        raise ValueError(f"reference has shape {tuple(ref.shape)}, predictions have {tuple(preds['clean'].shape)}.")
    err = {name: float((p != ref).double().mean()) for name, p in preds.items()}
    survives = err["integer"] > err["clean"] and err["integer"] >= min_ratio * err["float"]
    return {
        "error_clean": err["clean"],
        "error_float": err["float"],
        "error_integer": err["integer"],
        "survives": bool(survives),
    }
