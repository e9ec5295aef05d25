"""MSD lung-tumour patches to a 2D detection dataset: one box per connected tumour component.

The detection victim of monai-smia (the third task of SMIA, Qi et al., "Stabilized Medical Image
Attacks", ICLR 2021, arXiv 2103.05232) is trained on 2D CT patches of the Medical Segmentation
Decathlon Task06 (lung tumours), ``ct/msd_lung_patches/{val,test}_patches.h5`` (keys ``images`` and
``labels``, ``(N, 1, 48, 48)`` float32 in ``[0, 1]``, binary tumour masks; CC BY-SA 4.0).

- Each 8-connected component of a mask (:func:`scipy.ndimage.label`) becomes one box, label 0 ("tumour").
- Source ``val`` -> ``training`` / ``validation`` (80/20, by a hash of the patch id: deterministic);
  source ``test`` -> ``test``. Patches without a tumour are kept, with an empty box list.
- Images are written as 2D float32 NIfTI (``images/<source>_<index>.nii.gz``, identity affine), so
  the intensities are kept bit for bit.

Datalist (MONAI's detection convention, as in the model zoo's ``retinanet`` bundles)::

    {"box_mode": "xyxy", "spatial_dims": 2, "label_names": ["tumour"], ...,
     "training": [{"image": "images/val_000.nii.gz", "box": [[x1, y1, x2, y2], ...], "label": [0, ...]}, ...]}

Box coordinates are in voxels of the array as loaded (``x`` along the first spatial axis, ``y`` along
the second, MONAI's convention), pixel edges: a component covering rows ``r0..r1`` and columns
``c0..c1`` gets ``[r0, c0, r1 + 1, c1 + 1]``.

Usage::

    python -m monai_smia.apps.data_prep.msd_lung_det --data-dir ../shared/data --out data/lung_tumour_det

``--data-dir`` is the data root (holding ``ct/msd_lung_patches``) or the folder with the two ``.h5`` files.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.utils import optional_import

from monai_smia.apps.data_prep.layout import atomic_output_dir, deterministic_split, write_datalist

h5py, _has_h5py = optional_import("h5py")
nib, _has_nib = optional_import("nibabel")
ndimage, _has_scipy = optional_import("scipy.ndimage")

__all__ = ["BOX_MODE", "LABEL_NAMES", "find_patch_dir", "mask_to_boxes", "prepare_msd_lung_det", "main"]

BOX_MODE = "xyxy"
LABEL_NAMES = ("tumour",)
SOURCES = ("val", "test")
PATCH_SUBDIR = Path("ct") / "msd_lung_patches"


def mask_to_boxes(mask: np.ndarray) -> np.ndarray:
    """Boxes ``(M, 2 * ndim)`` (``xyxy`` in 2D, ``xyzxyz`` in 3D, pixel edges) of the connected
    components of a binary ``mask`` (full connectivity), in the order :func:`scipy.ndimage.label` numbers them."""
    if not _has_scipy:
        raise ImportError("mask_to_boxes needs scipy: pip install scipy")
    mask = np.asarray(mask) > 0
    structure = np.ones((3,) * mask.ndim, dtype=bool)
    labelled, num = ndimage.label(mask, structure=structure)
    boxes = np.zeros((num, 2 * mask.ndim), dtype=np.float32)
    for i, sl in enumerate(ndimage.find_objects(labelled)):
        boxes[i, : mask.ndim] = [s.start for s in sl]
        boxes[i, mask.ndim :] = [s.stop for s in sl]
    return boxes


def find_patch_dir(data_dir: str | os.PathLike) -> Path:
    """The folder holding ``val_patches.h5`` and ``test_patches.h5``: ``data_dir`` itself or
    ``data_dir/ct/msd_lung_patches``."""
    root = Path(data_dir)
    for cand in (root, root / PATCH_SUBDIR):
        if all((cand / f"{s}_patches.h5").is_file() for s in SOURCES):
            return cand
    raise FileNotFoundError(
        f"--data-dir {str(data_dir)!r} holds neither val_patches.h5/test_patches.h5 nor {PATCH_SUBDIR}/ with them; "
        "pass the data root (e.g. ../shared/data) or the msd_lung_patches folder."
    )


def _read_source(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        missing = [k for k in ("images", "labels") if k not in f]
        if missing:
            raise ValueError(f"{path}: missing keys {missing}; expected 'images' and 'labels' of shape (N, 1, H, W)")
        images, labels = np.asarray(f["images"], dtype=np.float32), np.asarray(f["labels"])
    if images.ndim != 4 or images.shape[1] != 1 or labels.shape != images.shape:
        raise ValueError(
            f"{path}: expected images and labels of one shape (N, 1, H, W), got {images.shape} and {labels.shape}"
        )
    if not np.isfinite(images).all():
        raise ValueError(f"{path}: images contain NaN or Inf")
    return images, labels


def _item(name: str, boxes: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {"image": name, "box": boxes.tolist(), "label": [0] * len(boxes), **extra}


def prepare_msd_lung_det(
    data_dir: str | os.PathLike, out: str | os.PathLike, val_fraction: float = 0.2, overwrite: bool = True
) -> Path:
    """Convert the MSD lung patches into a detection dataset at ``out``; return the datalist path.

    Args:
        data_dir: data root or the folder holding ``val_patches.h5`` and ``test_patches.h5``.
        out: output folder (written atomically; only a folder data_prep wrote is replaced).
        val_fraction: share of the source ``val`` patches that go to ``validation`` (the rest: ``training``).
        overwrite: replace an ``out`` written by an earlier run.
    """
    if not (_has_h5py and _has_nib):
        raise ImportError("msd_lung_det needs h5py and nibabel: pip install h5py nibabel")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction!r}")
    src = find_patch_dir(data_dir)
    data = {s: _read_source(src / f"{s}_patches.h5") for s in SOURCES}
    ids = [f"val_{i:03d}" for i in range(len(data["val"][0]))]
    split = deterministic_split(ids, (1.0 - val_fraction, val_fraction, 0.0), salt="monai-smia-msd-lung-det")
    where = {k: s for s, keys in split.items() for k in keys}
    where.update({f"test_{i:03d}": "test" for i in range(len(data["test"][0]))})
    splits: dict[str, list[dict[str, Any]]] = {"training": [], "validation": [], "test": []}
    with atomic_output_dir(out, overwrite=overwrite, protected=[src]) as tmp:
        (tmp / "images").mkdir()
        for source, (images, labels) in data.items():
            for i, (img, lab) in enumerate(zip(images, labels)):
                key = f"{source}_{i:03d}"
                name = f"images/{key}.nii.gz"
                nib.save(nib.Nifti1Image(img[0], np.eye(4)), str(tmp / name))
                splits[where[key]].append(_item(name, mask_to_boxes(lab[0]), source=source, index=i))
        write_datalist(
            tmp, splits, name="msd_lung_tumour_det",
            source="Medical Segmentation Decathlon Task06 lung-tumour 2D patches (CC BY-SA 4.0), "
            "one box per tumour component",
            box_mode=BOX_MODE, spatial_dims=2, label_names=list(LABEL_NAMES),
            image_shape=list(data["test"][0].shape[2:]), intensity_range=[0.0, 1.0],
        )  # fmt: skip
    return Path(out) / "datalist.json"


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="data root (holding ct/msd_lung_patches) or the .h5 folder")
    parser.add_argument("--out", required=True, help="output dataset folder (written atomically)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of source 'val' patches for validation")
    args = parser.parse_args(argv)
    try:
        path = prepare_msd_lung_det(args.data_dir, args.out, args.val_fraction)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
