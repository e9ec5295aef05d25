"""Write an adversarial copy of a CT series as one new DICOM series.

:func:`write_adversarial_dicom_series` keeps every source tag, then changes only what a derived
image must change: ``ImageType`` starts with ``DERIVED\\SECONDARY``; pixel data are stored
uncompressed (explicit VR little endian, whatever the source transfer syntax, e.g. JPEG 2000) as
signed 16-bit integers with the source rescale intercept; new Series and SOP Instance UIDs are
derived deterministically (``pydicom.uid.generate_uid(entropy_srcs=...)``) from the source UIDs,
the attack settings and the written pixel data, so a rerun writes byte-identical files and a PACS
sees one new series in the source study and frame of reference. No timestamps are added. Sources
anonymised down to empty UIDs in the dataset fall back to their file meta for the SOP UIDs, and
get a Study Instance UID derived from their SOP Instance UIDs. The series folder is written
atomically and never replaces a folder this package did not write (:mod:`monai_smia.io.atomic`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import optional_import

from monai_smia.io.atomic import atomic_output_dir, check_replaceable_dir
from monai_smia.io.dicom_read import find_dicom_series
from monai_smia.io.source_grid import lattice_steps

pydicom, _has_pydicom = optional_import("pydicom")

__all__ = ["DicomSeriesReport", "dicom_voxel_index", "write_adversarial_dicom_series"]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# pixel value tags whose VR follows PixelRepresentation; they are dropped or rewritten
_PIXEL_VALUE_TAGS = (0x00280106, 0x00280107, 0x00280108, 0x00280109, 0x00281080)
_PADDING_TAGS = (0x00280120, 0x00280121)
_INT16 = np.iinfo(np.int16)


@dataclass
class DicomSeriesReport:
    """What :func:`write_adversarial_dicom_series` wrote.

    Attributes:
        folder: output folder (one file per source slice).
        files: written files, in the source series order.
        series_instance_uid: the new series UID.
        sop_instance_uids: the new SOP Instance UIDs, one per file.
        max_abs_change: largest ``|adversarial - source|`` in rescaled units (HU) over all voxels, as stored.
        eps: the budget the stored perturbation respects.
        rescale_slope: slope of the written files (source slope / ``fractional_steps``).
    """

    folder: Path
    files: list[Path]
    series_instance_uid: str
    sop_instance_uids: list[str]
    max_abs_change: float
    eps: float
    rescale_slope: float


def dicom_voxel_index(ds: Any, affine: np.ndarray, shape: Sequence[int], tol: float = 1e-3) -> tuple[np.ndarray, ...]:
    """Voxel indices, in a volume with RAS ``affine`` and ``shape``, of every pixel of the DICOM slice ``ds``.

    Returns a tuple of three integer arrays of shape ``(Rows, Columns)`` for advanced indexing.

    Raises:
        ValueError: the slice does not lie on the volume's grid.
    """
    ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    to_voxel = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ _LPS_TO_RAS

    def vox(p: np.ndarray) -> np.ndarray:
        return (to_voxel @ np.append(p, 1.0))[:3]

    origin = vox(ipp)
    step_c = vox(ipp + col_spacing * iop[:3]) - origin  # along a row: next column
    step_r = vox(ipp + row_spacing * iop[3:]) - origin  # down a column: next row
    grid = [origin, step_c, step_r]
    if any(np.abs(g - np.round(g)).max() > tol for g in grid) or any(
        np.abs(s).sum() != 1 for s in map(np.round, grid[1:])
    ):
        raise ValueError(
            f"DICOM slice {getattr(ds, 'filename', '?')!r} does not lie on the grid of the volume (affine\n{affine}); "
            "pass the perturbation on the grid MONAI's ITKReader gives for this series."
        )
    origin, step_c, step_r = (np.round(g).astype(np.int64) for g in grid)
    rows, cols = np.meshgrid(np.arange(int(ds.Rows)), np.arange(int(ds.Columns)), indexing="ij")
    idx = [origin[a] + rows * step_r[a] + cols * step_c[a] for a in range(3)]
    for a in range(3):
        if idx[a].min() < 0 or idx[a].max() >= shape[a]:
            raise ValueError(
                f"DICOM slice {getattr(ds, 'filename', '?')!r} falls outside the volume of shape {tuple(shape)}."
            )
    return tuple(idx)


def _as_volume(perturbation: Any) -> tuple[np.ndarray, np.ndarray | None]:
    affine = None
    if hasattr(perturbation, "affine"):
        affine = np.asarray(torch.as_tensor(perturbation.affine).cpu().numpy(), dtype=np.float64)
    arr = perturbation.detach().cpu().numpy() if isinstance(perturbation, torch.Tensor) else np.asarray(perturbation)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"perturbation must be a 3D volume (or (1, H, W, D)), got shape {arr.shape}.")
    return arr.astype(np.float64), affine


def _source_uids(ds: Any) -> tuple[str, str]:
    """SOP Class and Instance UID of a source file (from the file meta when the dataset's are empty)."""
    meta = getattr(ds, "file_meta", None)
    sop_class = str(ds.get("SOPClassUID", "") or getattr(meta, "MediaStorageSOPClassUID", "") or "")
    sop = str(ds.get("SOPInstanceUID", "") or getattr(meta, "MediaStorageSOPInstanceUID", "") or "")
    if not sop_class or not sop:
        raise ValueError(
            f"DICOM file {getattr(ds, 'filename', '?')!r} has no SOP Class/Instance UID (neither in the dataset nor "
            "the file meta)."
        )
    return sop_class, sop


def _derived_dataset(
    ds: Any,
    pixels: np.ndarray,
    slope: float,
    k: int,
    series_uid: str,
    sop_uid: str,
    study_uid: str,
    info: Mapping[str, Any],
) -> Any:
    src_sop_class, src_sop = _source_uids(ds)
    ds.SOPClassUID = src_sop_class
    if not str(ds.get("StudyInstanceUID", "") or ""):
        ds.StudyInstanceUID = study_uid
    image_type = list(ds.get("ImageType", ["ORIGINAL", "PRIMARY"]))
    image_type = ["DERIVED", "SECONDARY", *image_type[2:]]
    ds.ImageType = image_type
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPClassUID = src_sop_class
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]
    suffix = str(info["suffix"])
    desc = str(ds.get("SeriesDescription", ""))
    ds.SeriesDescription = (desc[: max(0, 63 - len(suffix))] + " " + suffix).strip()[:64]
    if "SeriesNumber" in ds and ds.SeriesNumber is not None and str(ds.SeriesNumber) != "":
        ds.SeriesNumber = int(ds.SeriesNumber) + int(info["series_number_offset"])
    ds.DerivationDescription = str(info["derivation"])[:1024]
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = src_sop_class
    item.ReferencedSOPInstanceUID = src_sop
    ds.SourceImageSequence = pydicom.Sequence([item])
    for tag in _PIXEL_VALUE_TAGS:
        if tag in ds:
            del ds[tag]
    for tag in _PADDING_TAGS:
        if tag in ds:
            value = int(ds[tag].value) * k
            del ds[tag]
            ds.add_new(tag, "SS", value)
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.SamplesPerPixel = 1
    if k != 1 or "RescaleSlope" in ds:
        ds.RescaleSlope = f"{slope:.10g}"
    if "PixelData" in ds:
        del ds.PixelData
    ds.add_new(0x7FE00010, "OW", pixels.astype("<i2").tobytes())
    return ds


def _perturbed_slice(
    f: str, pert: np.ndarray, pert_affine: np.ndarray, eps: float, k: int
) -> tuple[Any, np.ndarray, float, float]:
    """One source file's dataset, its adversarial stored values (int16), the largest stored change and its slope."""
    try:
        ds = pydicom.dcmread(f)
        stored = ds.pixel_array
    except Exception as e:
        raise ValueError(f"cannot read DICOM file {f!r}: {e}") from e
    if int(ds.get("SamplesPerPixel", 1)) != 1 or stored.ndim != 2:
        raise ValueError(f"{f!r}: only single-frame grayscale slices are supported, got pixel array {stored.shape}.")
    new_slope = float(ds.get("RescaleSlope", 1.0) or 1.0) / k
    d = pert[dicom_voxel_index(ds, pert_affine, pert.shape)]
    if not np.isfinite(d).all():
        raise ValueError(f"perturbation holds NaN/Inf values (slice {f!r}).")
    d = np.clip(d, -eps, eps)
    if _PADDING_TAGS[0] in ds:
        d = np.where(stored == int(ds[_PADDING_TAGS[0]].value), 0.0, d)
    step = lattice_steps(d / new_slope)  # a perturbation on the stored lattice is kept exactly
    over = np.abs(step * new_slope) > eps * (1 + 1e-9)
    step[over] -= np.sign(step[over])
    new = stored.astype(np.int64) * k + step.astype(np.int64)
    if new.min() < _INT16.min or new.max() > _INT16.max:
        raise ValueError(
            f"{f!r}: adversarial stored values span [{new.min()}, {new.max()}], outside int16; "
            "use fractional_steps=1 or save as NIfTI."
        )
    return ds, new.astype(np.int16), float(np.abs(step * new_slope).max()), new_slope


def _perturbed_slices(
    files: Sequence[str], pert: np.ndarray, pert_affine: np.ndarray, eps: float, k: int
) -> tuple[list[Any], list[np.ndarray], float, float]:
    datasets, arrays, max_change, slope_out = [], [], 0.0, None
    for f in files:
        ds, arr, change, slope = _perturbed_slice(f, pert, pert_affine, eps, k)
        slope_out = slope if slope_out is None else slope_out
        datasets.append(ds)
        arrays.append(arr)
        max_change = max(max_change, change)
    return datasets, arrays, max_change, float(slope_out)


def write_adversarial_dicom_series(
    source_folder: str | os.PathLike,
    perturbation: Any,
    output_folder: str | os.PathLike,
    eps: float,
    settings: Mapping[str, Any] | None = None,
    affine: np.ndarray | None = None,
    fractional_steps: int = 1,
    series_description_suffix: str = "ADVERSARIAL",
    series_number_offset: int = 1000,
    series_uid: str | None = None,
    overwrite: bool = False,
) -> DicomSeriesReport:
    """Write ``source + perturbation`` as one new, uncompressed, DERIVED DICOM series.

    Each output file is its source file with new pixel data and the tags a derived image must
    change (module docstring). Stored values are integers: the perturbation (in rescaled units,
    e.g. HU) is divided by the written rescale slope and rounded toward zero (a perturbation on the
    stored lattice, as a source-grid attack makes it, is kept exactly), so
    ``|adversarial - source| <= eps`` holds exactly for the stored HU. ``fractional_steps = k`` writes
    with rescale slope ``source slope / k`` (k = 1, 2, 4, 8 or 16) to keep finer perturbation steps.
    Pixels equal to a source ``PixelPaddingValue`` are left unperturbed.

    Args:
        source_folder: folder holding the source series (exactly one series).
        perturbation: ``(H, W, D)`` or ``(1, H, W, D)`` perturbation in rescaled units on the grid
            ``LoadImage(reader=SingleSeriesITKReader())`` gives for ``source_folder`` (a source-grid
            attack's perturbation, or one brought back with :func:`monai_smia.io.invert_perturbation`). A
            ``MetaTensor`` carries its affine; otherwise pass ``affine``.
        output_folder: folder to create (written atomically: temporary folder, then a rename).
        eps: the L-infinity budget in rescaled units; the stored perturbation never exceeds it.
        settings: attack settings (JSON-serialisable) that enter the new UIDs and the
            ``DerivationDescription``, e.g. ``{"attack": "SMIA", "eps": 20, "num_iter": 10}``.
        affine: RAS affine of ``perturbation``'s grid when it is not a ``MetaTensor``.
        fractional_steps: stored values per source rescale step (see above).
        series_description_suffix: appended to ``SeriesDescription``.
        series_number_offset: added to ``SeriesNumber``.
        series_uid: GDCM series identifier, when ``source_folder`` holds several series.
        overwrite: replace an existing ``output_folder`` that this package wrote (never a folder it did
            not write, and never one that is, holds or lies inside the source; see
            :func:`monai_smia.io.atomic.check_replaceable_dir`); otherwise raise ``FileExistsError``.

    Raises:
        ValueError: shapes or geometry do not match, or the stored values leave the int16 range.
    """
    if not _has_pydicom:
        raise ImportError("writing DICOM needs pydicom: pip install pydicom")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a number > 0, got {eps!r}.")
    if fractional_steps not in (1, 2, 4, 8, 16):
        raise ValueError(f"fractional_steps must be 1, 2, 4, 8 or 16, got {fractional_steps!r}.")
    settings = dict(settings or {})
    try:
        settings_json = json.dumps(settings, sort_keys=True, default=str)
    except TypeError as e:  # pragma: no cover - default=str makes this rare
        raise TypeError(f"settings must be JSON-serialisable: {e}") from e
    out = Path(output_folder)
    check_replaceable_dir(
        out, [source_folder], overwrite
    )  # refuse before reading the series (atomic_output_dir checks again)
    files = find_dicom_series(source_folder, series_uid)
    pert, pert_affine = _as_volume(perturbation)
    if affine is not None:
        pert_affine = np.asarray(affine, dtype=np.float64)
    if pert_affine is None:
        raise ValueError("perturbation carries no affine: pass a MetaTensor or affine=...")
    k = int(fractional_steps)

    datasets, pixel_arrays, max_change, slope_out = _perturbed_slices(files, pert, pert_affine, eps, k)

    digest = hashlib.sha256()
    for arr in pixel_arrays:
        digest.update(arr.tobytes())
    src_series = str(datasets[0].get("SeriesInstanceUID", ""))
    src_sops = [_source_uids(ds)[1] for ds in datasets]
    new_series = pydicom.uid.generate_uid(
        entropy_srcs=[src_series, *src_sops, settings_json, digest.hexdigest(), str(k)]
    )
    # sources without a StudyInstanceUID (anonymised) get one derived from their SOP Instance UIDs
    study_uid = pydicom.uid.generate_uid(entropy_srcs=["study", *src_sops])
    derivation = f"source + adversarial perturbation, |d| <= {eps:g} (rescaled units); settings {settings_json}"
    info = {"suffix": series_description_suffix, "series_number_offset": series_number_offset, "derivation": derivation}

    written, sop_uids = [], []
    with atomic_output_dir(out, overwrite=overwrite, protected=[source_folder]) as tmp:
        for i, (ds, arr) in enumerate(zip(datasets, pixel_arrays)):
            sop = pydicom.uid.generate_uid(entropy_srcs=[new_series, src_sops[i]])
            ds = _derived_dataset(ds, arr, slope_out, k, new_series, sop, study_uid, info)
            name = f"{i:04d}.dcm"
            ds.save_as(tmp / name, enforce_file_format=True, implicit_vr=False, little_endian=True)
            written.append(out / name)
            sop_uids.append(sop)
    return DicomSeriesReport(
        folder=out,
        files=written,
        series_instance_uid=new_series,
        sop_instance_uids=sop_uids,
        max_abs_change=max_change,
        eps=float(eps),
        rescale_slope=float(slope_out),
    )
