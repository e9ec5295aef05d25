"""Read one CT series from a DICOM folder and write an adversarial copy as one new DICOM series.

Reading goes through MONAI's ``ITKReader``: :class:`LoadSeriesImage` / :class:`LoadSeriesImaged` are
MONAI's ``LoadImage`` / ``LoadImaged`` that read a folder with :class:`SingleSeriesITKReader`, for
which a folder holding several series (or none) is an error instead of a warning, so an attack
never runs on whichever series ITK happens to list first. (Plain ``LoadImage(reader=...)`` would
fall back to its other readers when the given one refuses a folder, e.g. to ``PydicomReader``,
which stacks every file of the folder.) Files are read as ``LoadImage`` reads them.

Writing (:func:`write_adversarial_dicom_series`) keeps every source tag, then changes only what a
derived image must change: ``ImageType`` starts with ``DERIVED\\SECONDARY``; pixel data are stored
uncompressed (explicit VR little endian, whatever the source transfer syntax, e.g. JPEG 2000) as
signed 16-bit integers with the source rescale intercept; new Series and SOP Instance UIDs are
derived deterministically (``pydicom.uid.generate_uid(entropy_srcs=...)``) from the source UIDs,
the attack settings and the written pixel data, so a rerun writes byte-identical files and a PACS
sees one new series in the source study and frame of reference. No timestamps are added. Sources
anonymised down to empty UIDs in the dataset fall back to their file meta for the SOP UIDs, and
get a Study Instance UID derived from their SOP Instance UIDs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import ITKReader
from monai.transforms import LoadImage, LoadImaged
from monai.utils import ensure_tuple, optional_import

pydicom, _has_pydicom = optional_import("pydicom")
itk, _has_itk = optional_import("itk")

__all__ = [
    "DicomSeriesReport",
    "LoadSeriesImage",
    "LoadSeriesImaged",
    "SingleSeriesITKReader",
    "dicom_voxel_index",
    "find_dicom_series",
    "write_adversarial_dicom_series",
]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# pixel value tags whose VR follows PixelRepresentation; they are dropped or rewritten
_PIXEL_VALUE_TAGS = (0x00280106, 0x00280107, 0x00280108, 0x00280109, 0x00281080)
_PADDING_TAGS = (0x00280120, 0x00280121)
_INT16 = np.iinfo(np.int16)


def find_dicom_series(folder: str | os.PathLike, series_uid: str | None = None) -> list[str]:
    """Return the files of the one DICOM series in ``folder``, sorted by ITK/GDCM along the slice axis.

    Series are told apart as MONAI's ``ITKReader`` does (GDCM series details plus the series date).

    Args:
        folder: a folder holding one DICOM series (other files are ignored).
        series_uid: pick this GDCM series identifier when the folder holds several.

    Raises:
        FileNotFoundError: ``folder`` is not a folder, or holds no DICOM series.
        ValueError: ``folder`` holds several series and ``series_uid`` does not pick one.
    """
    if not _has_itk:
        raise ImportError("reading DICOM series needs ITK: pip install itk-io")
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"DICOM series folder {str(path)!r} does not exist or is not a folder.")
    names = itk.GDCMSeriesFileNames.New()
    names.SetUseSeriesDetails(True)
    names.AddSeriesRestriction("0008|0021")
    names.SetDirectory(str(path))
    uids = [str(u) for u in names.GetSeriesUIDs()]
    if not uids:
        raise FileNotFoundError(
            f"no DICOM series found in {str(path)!r}; point to a folder with the .dcm files of one series."
        )
    if series_uid is None:
        if len(uids) > 1:
            raise ValueError(
                f"{str(path)!r} holds {len(uids)} DICOM series ({', '.join(uids)}); move each series into its own "
                "folder, or pick one with series_uid=..."
            )
        series_uid = uids[0]
    elif series_uid not in uids:
        raise ValueError(f"series {series_uid!r} is not in {str(path)!r}; found: {', '.join(uids)}.")
    return [str(f) for f in names.GetFileNames(series_uid)]


class SingleSeriesITKReader(ITKReader):
    """MONAI's ``ITKReader`` that refuses a DICOM folder holding several series (or none).

    Use it as ``LoadImage(reader=SingleSeriesITKReader())`` or ``LoadImaged(keys, reader=...)``;
    everything else (affine in RAS, channel handling, metadata) is MONAI's reader unchanged.
    """

    def read(self, data: Sequence[os.PathLike | str] | os.PathLike | str, **kwargs: Any) -> Any:
        for name in [data] if isinstance(data, (str, os.PathLike)) else data:
            if Path(name).is_dir():
                find_dicom_series(name, self.series_name or None)
            elif not Path(name).exists():
                raise FileNotFoundError(f"image file {str(name)!r} does not exist.")
        return super().read(data, **kwargs)


class LoadSeriesImage(LoadImage):
    """MONAI's ``LoadImage``; a folder is read as one DICOM series by :class:`SingleSeriesITKReader`
    with no fallback to other readers (errors name the folder). Arguments as ``LoadImage``."""

    series_reader: SingleSeriesITKReader | None = None

    def __call__(self, filename: Any, reader: Any = None) -> Any:
        if reader is None and any(
            isinstance(f, (str, os.PathLike)) and Path(f).is_dir() for f in ensure_tuple(filename)
        ):
            if self.series_reader is None:
                self.series_reader = SingleSeriesITKReader()
            reader = self.series_reader
        return super().__call__(filename, reader)


class LoadSeriesImaged(LoadImaged):
    """MONAI's ``LoadImaged`` reading DICOM folders as :class:`LoadSeriesImage` does. Arguments as ``LoadImaged``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loader.__class__ = LoadSeriesImage  # same state as LoadImage; only __call__ differs


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
            f"DICOM file {getattr(ds, 'filename', '?')!r} has no SOP Class/Instance UID (neither in the dataset nor the file meta)."
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
    overwrite: bool = True,
) -> DicomSeriesReport:
    """Write ``source + perturbation`` as one new, uncompressed, DERIVED DICOM series.

    Each output file is its source file with new pixel data and the tags a derived image must
    change (module docstring). Stored values are integers: the perturbation (in rescaled units,
    e.g. HU) is divided by the written rescale slope and rounded toward zero, so
    ``|adversarial - source| <= eps`` holds exactly for the stored HU. ``fractional_steps = k`` writes
    with rescale slope ``source slope / k`` (k = 1, 2, 4, 8 or 16) to keep finer perturbation steps.
    Pixels equal to a source ``PixelPaddingValue`` are left unperturbed.

    Args:
        source_folder: folder holding the source series (exactly one series).
        perturbation: ``(H, W, D)`` or ``(1, H, W, D)`` perturbation in rescaled units on the grid
            ``LoadImage(reader=SingleSeriesITKReader())`` gives for ``source_folder`` (e.g. a
            perturbation brought back there with :func:`monai_smia.io.invert_perturbation`). A
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
        overwrite: replace an existing ``output_folder``; otherwise raise ``FileExistsError``.

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
    src_dir = Path(source_folder).resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"output folder {str(out)!r} exists; pass overwrite=True or choose another folder.")
    if out.resolve() == src_dir:
        raise ValueError("output_folder must differ from source_folder (sources are never written to).")
    files = find_dicom_series(source_folder, series_uid)
    pert, pert_affine = _as_volume(perturbation)
    if affine is not None:
        pert_affine = np.asarray(affine, dtype=np.float64)
    if pert_affine is None:
        raise ValueError("perturbation carries no affine: pass a MetaTensor or affine=...")
    k = int(fractional_steps)

    datasets, pixel_arrays, max_change, slope_out = [], [], 0.0, None
    for f in files:
        try:
            ds = pydicom.dcmread(f)
            stored = ds.pixel_array
        except Exception as e:
            raise ValueError(f"cannot read DICOM file {f!r}: {e}") from e
        if int(ds.get("SamplesPerPixel", 1)) != 1 or stored.ndim != 2:
            raise ValueError(
                f"{f!r}: only single-frame grayscale slices are supported, got pixel array {stored.shape}."
            )
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        new_slope = slope / k
        if slope_out is None:
            slope_out = new_slope
        d = pert[dicom_voxel_index(ds, pert_affine, pert.shape)]
        if not np.isfinite(d).all():
            raise ValueError(f"perturbation holds NaN/Inf values (slice {f!r}).")
        d = np.clip(d, -eps, eps)
        for tag in _PADDING_TAGS[:1]:
            if tag in ds:
                d = np.where(stored == int(ds[tag].value), 0.0, d)
        step = np.trunc(d / new_slope)
        over = np.abs(step * new_slope) > eps
        step[over] -= np.sign(step[over])
        new = stored.astype(np.int64) * k + step.astype(np.int64)
        if new.min() < _INT16.min or new.max() > _INT16.max:
            raise ValueError(
                f"{f!r}: adversarial stored values span [{new.min()}, {new.max()}], outside int16; "
                "use fractional_steps=1 or save as NIfTI."
            )
        max_change = max(max_change, float(np.abs(step * new_slope).max()))
        datasets.append(ds)
        pixel_arrays.append(new.astype(np.int16))

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

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    written, sop_uids = [], []
    try:
        for i, (ds, arr) in enumerate(zip(datasets, pixel_arrays)):
            sop = pydicom.uid.generate_uid(entropy_srcs=[new_series, src_sops[i]])
            ds = _derived_dataset(ds, arr, slope_out, k, new_series, sop, study_uid, info)
            name = f"{i:04d}.dcm"
            ds.save_as(tmp / name, enforce_file_format=True, implicit_vr=False, little_endian=True)
            written.append(out / name)
            sop_uids.append(sop)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(Exception):
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return DicomSeriesReport(
        folder=out,
        files=written,
        series_instance_uid=new_series,
        sop_instance_uids=sop_uids,
        max_abs_change=max_change,
        eps=float(eps),
        rescale_slope=float(slope_out),
    )
