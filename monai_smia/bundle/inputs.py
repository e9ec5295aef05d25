"""Check every input file against what a bundle takes, from headers only, before anything is written.

A run must refuse a bad file with one line that names it, not saturate it silently or fail half way
through. What a bundle takes comes from its own files: ``num_channels`` and ``spatial_shape`` of
``network_data_format.inputs.image`` in ``metadata.json``, slice-wise when its inferer is MONAI's
``SliceInferer``, and 8-bit when its preprocessing windows a PNG to ``a_max <= 255``
(``ScaleIntensityRange(d)``). The checks read headers (nibabel, PIL) and, for gzipped NIfTI, the
gzip trailer (the uncompressed size), so a file cut short is named without decompressing it.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monai_smia.bundle.data import CaseError

__all__ = ["InputSpec", "check_case_files", "check_image_file", "check_label", "input_spec"]

PNG_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: PIL modes by the number of channels they carry; others (palette, alpha) are refused.
PIL_CHANNELS = {"L": 1, "I;16": 1, "I;16B": 1, "I": 1, "F": 1, "RGB": 3}


@dataclass(frozen=True)
class InputSpec:
    """What a bundle takes: channels, spatial dims of a source file, and the largest stored value.

    Attributes:
        num_channels: channels of the network input (``None``: not declared, not checked).
        spatial_ndim: spatial dims of a source volume/image (3 for slice-wise and 3D networks).
        max_value: the largest stored value the preprocessing expects (255 for 8-bit PNG bundles).
        spatial_shape: the one image size the bundle takes (``None``: any): its metadata's numeric
            ``spatial_shape`` where it is not patch data and its preprocessing neither resamples nor crops.
        task, num_classes: the bundle's task and output channels (labels are checked against them).
    """

    num_channels: int | None = None
    spatial_ndim: int | None = None
    max_value: float | None = None
    spatial_shape: tuple[int, ...] | None = None
    task: str | None = None
    num_classes: int | None = None


def _png_window_max(preprocessing: Any) -> float | None:
    """255 when the bundle windows its images to ``a_max <= 255`` (an 8-bit image bundle), else ``None``."""
    from monai_smia.io.units import intensity_window

    window = intensity_window(preprocessing)
    return 255.0 if window is not None and window["a_max"] <= 255 else None


def _fixed_shape(image: Mapping[str, Any], preprocessing: Any) -> tuple[int, ...] | None:
    """The metadata's ``spatial_shape`` when the bundle takes exactly that size (see :class:`InputSpec`)."""
    from monai_smia.io.units import flat_transforms

    shape = image.get("spatial_shape")
    if image.get("is_patch_data", True) or not isinstance(shape, list) or not all(isinstance(s, int) for s in shape):
        return None
    resizing = ("monai.transforms.spatial", "monai.transforms.croppad")
    if preprocessing is None or any(type(t).__module__.startswith(resizing) for t in flat_transforms(preprocessing)):
        return None
    return tuple(int(s) for s in shape)


def input_spec(metadata: Mapping[str, Any], preprocessing: Any, inferer: Any = None) -> InputSpec:
    """The :class:`InputSpec` of a bundle from its ``metadata.json``, preprocessing and inferer."""
    from monai.inferers import SliceInferer

    image = (metadata.get("network_data_format", {}).get("inputs", {}) or {}).get("image", {})
    channels = image.get("num_channels")
    shape = image.get("spatial_shape")
    ndim = 3 if isinstance(inferer, SliceInferer) else (len(shape) if isinstance(shape, list) else None)
    from monai_smia.bundle.victim import task_from_metadata

    fixed = None if isinstance(inferer, SliceInferer) else _fixed_shape(image, preprocessing)
    task, classes = task_from_metadata(dict(metadata))
    return InputSpec(
        int(channels) if channels else None, ndim, _png_window_max(preprocessing), fixed, task, classes or None
    )


def _check_size(path: Path, size: tuple[int, ...], spec: InputSpec) -> None:
    if spec.spatial_shape is not None and tuple(size) != spec.spatial_shape:
        want, got = "x".join(map(str, spec.spatial_shape)), "x".join(map(str, size))
        raise CaseError(
            f"{str(path)!r} is {got}; the bundle takes {want} images (its metadata's spatial_shape, and its "
            "preprocessing does not resize): resize it, or use a bundle made for this size."
        )


def _uncompressed_size(path: Path, expected: int) -> int:
    """Bytes of the file once decompressed: the gzip trailer's size when it agrees with ``expected``
    (modulo 2**32), else the counted bytes of a full decompression (-1 if the stream is cut or broken)."""
    import gzip
    import zlib

    if not str(path).endswith(".gz"):
        return path.stat().st_size
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        if struct.unpack("<I", f.read(4))[0] == expected % (1 << 32):
            return expected
    count = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                count += len(chunk)
    except (EOFError, OSError, zlib.error):
        return -1  # the compressed stream ends (or breaks) before its end
    return count


def _check_nifti(path: Path, spec: InputSpec) -> None:
    import nibabel as nib

    if path.stat().st_size == 0:
        raise CaseError(f"{str(path)!r} is empty (0 bytes); replace this file.")
    try:
        img = nib.load(str(path))
    except Exception as e:
        raise CaseError(f"{str(path)!r} is not a readable NIfTI ({e}); replace this file.") from e
    shape = tuple(int(s) for s in img.shape)
    expected = int(img.header.get_data_offset()) + int(np.prod(shape)) * img.get_data_dtype().itemsize
    found = _uncompressed_size(path, expected)
    if found < 0:
        raise CaseError(
            f"{str(path)!r} is cut short (its gzip stream ends before the {expected} bytes its header needs); replace "
            "this file."
        )
    if found < expected:
        raise CaseError(f"{str(path)!r} is cut short ({found} of {expected} bytes); replace this file.")
    dims = len(shape)
    while (
        dims > (spec.spatial_ndim or 3) and shape[dims - 1] == 1
    ):  # trailing singleton dims (a 2D image saved as X, Y, 1)
        dims -= 1
    if spec.spatial_ndim is not None and dims != spec.spatial_ndim:
        kind = "slice-wise (3D volumes)" if spec.spatial_ndim == 3 else f"{spec.spatial_ndim}D"
        raise CaseError(f"{str(path)!r} is {dims}D (shape {shape}); the bundle takes {kind} images, one channel each.")
    _check_size(path, shape[:dims], spec)
    if np.issubdtype(img.get_data_dtype(), np.floating) and not np.isfinite(np.asarray(img.dataobj)).all():
        raise CaseError(f"{str(path)!r} holds NaN or Inf voxels; clean or mask them before attacking.")


def _check_png(path: Path, spec: InputSpec) -> None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            mode, size = img.mode, img.size
            img.verify()
    except Exception as e:
        raise CaseError(f"{str(path)!r} is not a readable image ({e}); replace this file.") from e
    if mode not in PIL_CHANNELS:
        raise CaseError(
            f"{str(path)!r} is a {mode!r} image; convert it to grey ('L') or 'RGB' without alpha or palette."
        )
    if spec.num_channels is not None and PIL_CHANNELS[mode] != spec.num_channels:
        want = "RGB (3 channels)" if spec.num_channels == 3 else f"{spec.num_channels} channel(s)"
        raise CaseError(
            f"{str(path)!r} is a {PIL_CHANNELS[mode]}-channel {mode!r} image of size {size}; the bundle takes {want}."
        )
    if spec.spatial_ndim == 3:
        raise CaseError(
            f"{str(path)!r} is a 2D image of size {size}; the bundle takes 3D volumes (NIfTI or a DICOM series)."
        )
    _check_size(path, tuple(size), spec)
    if spec.max_value is not None and mode not in ("L", "RGB"):
        raise CaseError(
            f"{str(path)!r} is a {mode!r} (more than 8-bit) image; the bundle takes 8-bit images (0-255): convert it."
        )


def check_image_file(path: str | os.PathLike, spec: InputSpec) -> None:
    """Raise :class:`CaseError` naming ``path`` if it cannot be what ``spec`` takes (headers only).

    A folder is a DICOM series: every file is decoded and the slice spacing checked
    (:func:`monai_smia.io.dicom_read.find_dicom_series`: a cut-short slice or a gap is named) before any
    bundle preprocessing runs; other suffixes are left to the bundle's reader. A file that passed is not read again
    while its size and modification time stay the same.
    """
    p = Path(path)
    if not p.exists():
        raise CaseError(f"{str(p)!r} does not exist; fix the datalist or the --input path.")
    if p.is_dir():  # a folder's own mtime misses a slice rewritten in place: the series check keeps its own cache
        _check_series(p, spec)
        return
    st = p.stat()
    _check_cached(str(p.resolve()), st.st_size, st.st_mtime_ns, spec)


@functools.lru_cache(maxsize=4096)
def _check_cached(path: str, size: int, mtime_ns: int, spec: InputSpec) -> None:
    p = Path(path)
    name = p.name.lower()
    if p.is_file() and name.endswith(NIFTI_SUFFIXES):
        _check_nifti(p, spec)
    elif p.is_file() and name.endswith(PNG_SUFFIXES):
        _check_png(p, spec)


def _check_series(path: Path, spec: InputSpec) -> None:
    from monai_smia.io.dicom_read import find_dicom_series

    try:
        find_dicom_series(path)
    except (ValueError, FileNotFoundError) as e:
        raise CaseError(str(e)) from e
    if spec.spatial_ndim is not None and spec.spatial_ndim != 3:
        raise CaseError(f"{str(path)!r} is a DICOM series (a 3D volume); the bundle takes {spec.spatial_ndim}D images.")


def check_case_files(
    items: Iterable[Mapping[str, Any] | str | os.PathLike],
    spec: InputSpec,
    key: str = "image",
    require: Sequence[str] = (),
) -> None:
    """Check every case's image file (``items``: datalist dicts or paths) before a run writes anything;
    each dict item must also hold every key of ``require`` (e.g. ``"label"`` unless the run is label-free)."""
    for item in items:
        missing = [k for k in require if isinstance(item, Mapping) and item.get(k) is None]
        if missing:
            raise CaseError(
                f"{str(item.get(key))!r}: its datalist entry has no {missing[0]!r}; give every case one "
                "(a bundle without labels is evaluated label-free)."
            )
        path = item.get(key) if isinstance(item, Mapping) else item
        if isinstance(path, (str, os.PathLike)):
            check_image_file(path, spec)
            if isinstance(item, Mapping) and item.get("label") is not None:
                check_label(path, item["label"], spec)


def _classes(spec: InputSpec) -> int | None:
    """Label values the bundle's outputs can express: K channels give 0..K-1; one channel (a logit) gives 0..1."""
    return None if spec.num_classes is None else max(spec.num_classes, 2)


def check_label(image: str | os.PathLike, label: Any, spec: InputSpec) -> None:
    """Raise :class:`CaseError` naming the case when its label cannot be what the bundle predicts: a class
    index outside its classes (classification), or a label map whose size or values do not fit (segmentation)."""
    k = _classes(spec)
    if spec.task == "classification":
        values = list(label) if isinstance(label, (list, tuple)) else [label]
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            raise CaseError(f"{str(image)!r}: its label {label!r} is not a class index (an integer).")
        if k is not None and any(not 0 <= int(v) < k for v in values):
            raise CaseError(f"{str(image)!r}: its label {label!r} is outside the bundle's classes 0..{k - 1}.")
    elif spec.task == "segmentation" and isinstance(label, (str, os.PathLike)):
        p = Path(label)
        if not p.is_file():
            raise CaseError(f"{str(image)!r}: its label {str(p)!r} does not exist; fix the datalist.")
        st = p.stat()
        _check_label_map(str(Path(image).resolve()), str(p.resolve()), st.st_size, st.st_mtime_ns, k)


@functools.lru_cache(maxsize=4096)
def _check_label_map(image: str, label: str, size: int, mtime_ns: int, classes: int | None) -> None:
    import nibabel as nib

    if not (label.lower().endswith(NIFTI_SUFFIXES) and image.lower().endswith(NIFTI_SUFFIXES)):
        return
    try:
        lab = nib.load(label)
        values = np.unique(np.asarray(lab.dataobj))
    except Exception as e:
        raise CaseError(f"{label!r} is not a readable NIfTI label map ({e}); replace this file.") from e
    shape = tuple(int(s) for s in nib.load(image).shape)
    if tuple(int(s) for s in lab.shape) != shape:
        raise CaseError(
            f"{label!r} has shape {tuple(lab.shape)}, its image {image!r} has {shape}; pair them correctly."
        )
    bad = [v for v in values.tolist() if v != int(v) or (classes is not None and not 0 <= v < classes)]
    if bad:
        raise CaseError(f"{label!r} holds label values {bad[:5]} outside the bundle's classes 0..{(classes or 1) - 1}.")
