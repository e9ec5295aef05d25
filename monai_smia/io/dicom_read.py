"""Read one CT series from a DICOM folder, checked file by file before anything is attacked.

Reading goes through MONAI's ``ITKReader``: :class:`LoadSeriesImage` / :class:`LoadSeriesImaged` are
MONAI's ``LoadImage`` / ``LoadImaged`` that read a folder with :class:`SingleSeriesITKReader`, for
which a folder holding several series (or none) is an error instead of a warning, so an attack
never runs on whichever series ITK happens to list first. (Plain ``LoadImage(reader=...)`` would
fall back to its other readers when the given one refuses a folder, e.g. to ``PydicomReader``,
which stacks every file of the folder.) Files are read as ``LoadImage`` reads them.

ITK/GDCM silently leaves out a file it cannot parse (a slice cut short is dropped and the volume
gets the wrong slice spacing), so :func:`find_dicom_series` first reads every DICOM file of the
folder with pydicom, decodes its pixel data, and checks that the series' slice positions are evenly
spaced; a bad file is named before anything is read into a volume.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ITKReader
from monai.transforms import LoadImage, LoadImaged
from monai.utils import ensure_tuple, optional_import

pydicom, _has_pydicom = optional_import("pydicom")
itk, _has_itk = optional_import("itk")

__all__ = [
    "LoadSeriesImage",
    "LoadSeriesImaged",
    "SeriesFolderReader",
    "SingleSeriesITKReader",
    "check_dicom_series",
    "find_dicom_series",
]


#: folders already checked, by name, size and modification time of every file (a changed file is checked again)
_CHECKED: set[tuple] = set()


def _folder_signature(folder: str | os.PathLike) -> tuple:
    entries = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(folder).iterdir() if p.is_file())
    return (str(Path(folder).resolve()), tuple(entries))


def _is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _check_file(path: Path) -> Any:
    """The dataset of one DICOM file whose pixel data decode completely (``ValueError`` naming the file otherwise)."""
    try:
        ds = pydicom.dcmread(str(path))
        if "PixelData" in ds:
            ds.pixel_array  # noqa: B018 - decodes (and length-checks) the pixel data
    except Exception as e:
        raise ValueError(
            f"DICOM file {str(path)!r} is corrupt or cut short ({e}); replace it or remove it from the series."
        ) from e
    return ds


def _slice_positions(datasets: Sequence[Any]) -> np.ndarray:
    iop = np.asarray([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    return np.asarray([float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])) for ds in datasets])


def check_dicom_series(folder: str | os.PathLike, files: Sequence[str]) -> None:
    """Check every DICOM file of ``folder`` and the slice spacing of the series ``files``.

    Raises:
        ValueError: a file of the folder is corrupt or cut short (named), a DICOM file of the series
            was left out by ITK, or the slice positions are not evenly spaced (the gap is named).
    """
    if not _has_pydicom:
        raise ImportError("reading DICOM series needs pydicom: pip install pydicom")
    signature = _folder_signature(folder)
    if signature in _CHECKED:
        return
    in_series = {Path(f).resolve() for f in files}
    datasets = [_check_file(Path(f)) for f in files]
    series_uid = str(datasets[0].get("SeriesInstanceUID", "")) if datasets else None
    for p in sorted(Path(folder).iterdir()):
        if p.name.startswith(".") or not p.is_file() or not _is_dicom_file(p) or p.resolve() in in_series:
            continue
        ds = _check_file(p)
        if str(ds.get("SeriesInstanceUID", "")) == series_uid and "PixelData" in ds:
            raise ValueError(f"DICOM file {str(p)!r} belongs to the series but ITK did not read it; check the file.")
    if len(datasets) >= 3 and all("ImagePositionPatient" in ds for ds in datasets):
        _check_spacing(folder, files, datasets)
    _CHECKED.add(signature)


def _check_spacing(folder: str | os.PathLike, files: Sequence[str], datasets: Sequence[Any]) -> None:
    z = _slice_positions(datasets)
    gaps = np.diff(z)
    median = float(np.median(np.abs(gaps)))
    bad = np.flatnonzero(np.abs(np.abs(gaps) - median) > max(0.01 * median, 1e-3))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"DICOM series in {str(folder)!r} is not evenly spaced: {abs(gaps[i]):.3f} mm between {str(files[i])!r} "
            "and "
            f"{str(files[i + 1])!r}, {median:.3f} mm elsewhere; a slice is missing or unreadable."
        )


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
    files = [str(f) for f in names.GetFileNames(series_uid)]
    check_dicom_series(path, files)
    return files


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


class SeriesFolderReader(SingleSeriesITKReader):
    """:class:`SingleSeriesITKReader` that claims folders only.

    Registered on a ``LoadImage``/``LoadImaged`` through MONAI's public ``register``, it reads every folder
    as one DICOM series ahead of the other readers (no fallback: its errors name the folder); files go to
    the readers the loader had before.
    """

    def verify_suffix(self, filename: Sequence[os.PathLike | str] | os.PathLike | str) -> bool:
        names = ensure_tuple(filename)
        return bool(names) and all(isinstance(f, (str, os.PathLike)) and Path(f).is_dir() for f in names)


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
        self.register(SeriesFolderReader())


