"""MedMNIST v2 ``.npz`` files (RetinaMNIST, PneumoniaMNIST, BreastMNIST) to PNG files plus ``datalist.json``.

MedMNIST v2: Yang et al., "MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical
image classification", Scientific Data 2023 (CC BY 4.0). The official ``.npz`` holds ``train_images``,
``train_labels``, ``val_images``, ``val_labels``, ``test_images``, ``test_labels``; the official splits
are kept (train -> ``training``, val -> ``validation``, test -> ``test``).

Usage::

    python -m monai_smia.apps.data_prep.medmnist --data-dir ../shared/data --out data/retinamnist --dataset retinamnist

``--data-dir`` is either a folder (looked up as ``DIR/fundus/retinamnist.npz``, ``DIR/xray/pneumoniamnist.npz``,
``DIR/ultrasound/breastmnist.npz`` or ``DIR/<name>.npz``) or the ``.npz`` file itself. Items are
``{"image": "images/train_00000.png", "label": 3, "index": 0}`` where ``index`` is the row in the source split.
"""

from __future__ import annotations

import argparse
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monai_smia.apps.data_prep.layout import DATALIST, atomic_output_dir, write_datalist
from monai_smia.apps.data_prep.png_classification import check_images_labels, sha256_of, write_png_items

__all__ = ["MEDMNIST", "MedMNISTInfo", "find_npz", "load_npz", "prepare_medmnist", "main"]

SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}


@dataclass(frozen=True)
class MedMNISTInfo:
    """What the converter needs to know about one MedMNIST 2D dataset."""

    name: str
    subdir: str
    num_classes: int
    channels: int
    class_names: dict[str, str]
    task: str


MEDMNIST: dict[str, MedMNISTInfo] = {
    "retinamnist": MedMNISTInfo(
        "retinamnist",
        "fundus",
        5,
        3,
        {"0": "DR grade 0", "1": "DR grade 1", "2": "DR grade 2", "3": "DR grade 3", "4": "DR grade 4"},
        "fundus diabetic-retinopathy grading (ordinal regression treated as 5-class classification)",
    ),
    "pneumoniamnist": MedMNISTInfo(
        "pneumoniamnist", "xray", 2, 1, {"0": "normal", "1": "pneumonia"}, "chest X-ray binary classification"
    ),
    "breastmnist": MedMNISTInfo(
        "breastmnist",
        "ultrasound",
        2,
        1,
        {"0": "malignant", "1": "normal, benign"},
        "breast ultrasound binary classification",
    ),
}


def _info(dataset: str) -> MedMNISTInfo:
    if dataset not in MEDMNIST:
        raise ValueError(f"unknown --dataset {dataset!r}; expected one of {sorted(MEDMNIST)}")
    return MEDMNIST[dataset]


def find_npz(data_dir: str | os.PathLike, dataset: str) -> Path:
    """Locate ``<dataset>.npz`` under ``data_dir`` (or accept ``data_dir`` as the file itself).

    Raises:
        FileNotFoundError: naming every place looked at and how to obtain the file.
    """
    info = _info(dataset)
    path = Path(data_dir)
    if path.suffix == ".npz":
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        return path
    candidates = [path / info.subdir / f"{info.name}.npz", path / f"{info.name}.npz"]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"no {info.name}.npz found; looked at {', '.join(str(c) for c in candidates)}. "
        f"Download it with `python -m monai_smia.apps.data_prep.download --dataset {info.name} --out DIR` on a "
        "machine with a "
        "network, or fetch the official MedMNIST v2 file by hand (see data_prep/download.py) and pass its path."
    )


def load_npz(path: str | os.PathLike, dataset: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read and validate an official-format MedMNIST ``.npz``; return ``{split: (images, labels)}``.

    Raises:
        ValueError: if the file is not a readable ``.npz``, lacks a required key, or holds arrays of the
            wrong shape, dtype or label range for ``dataset``.
    """
    info = _info(dataset)
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [f"{s}_{k}" for s in SPLIT_NAMES for k in ("images", "labels") if f"{s}_{k}" not in npz.files]
            if missing:
                raise ValueError(
                    f"{path} lacks the MedMNIST key(s) {missing}; found {sorted(npz.files)}. "
                    "Expected the official MedMNIST v2 file with train/val/test images and labels."
                )
            arrays = {s: (npz[f"{s}_images"], npz[f"{s}_labels"]) for s in SPLIT_NAMES}
    except (zipfile.BadZipFile, EOFError, OSError, UnicodeError) as e:
        raise ValueError(f"{path} is not a readable .npz file ({type(e).__name__}: {e}); re-download it") from e
    except ValueError as e:
        if str(path) in str(e):
            raise
        raise ValueError(f"{path} is not a readable .npz file ({e}); re-download it") from e
    out = {}
    for split, (images, labels) in arrays.items():
        images, labels = check_images_labels(images, labels, info.num_classes, f"{path}[{split}_images/labels]")
        channels = 1 if images.ndim == 3 else images.shape[-1]
        if channels != info.channels:
            raise ValueError(
                f"{path}[{split}_images]: {info.name} images have {info.channels} channel(s), got {channels}"
            )
        out[split] = (images, labels)
    return out


def prepare_medmnist(data_dir: str | os.PathLike, out: str | os.PathLike, dataset: str, force: bool = False) -> Path:
    """Convert one MedMNIST dataset to ``out`` (PNG files and ``datalist.json``); return the datalist path.

    A rerun with the same source file is a no-op unless ``force``; otherwise ``out`` is replaced atomically.
    """
    info = _info(dataset)
    npz_path = find_npz(data_dir, dataset)
    digest = sha256_of(npz_path)
    existing = Path(out) / DATALIST
    if existing.is_file() and not force:
        import json

        with open(existing) as f:
            if json.load(f).get("source_sha256") == digest:
                print(f"{existing} is up to date with {npz_path.name}; nothing to do (use --force to rebuild)")
                return existing
    arrays = load_npz(npz_path, dataset)
    with atomic_output_dir(out, overwrite=True, protected=[data_dir]) as tmp:
        splits = {}
        for split, (images, labels) in arrays.items():
            names = [f"{split}_{i:05d}" for i in range(len(labels))]
            splits[SPLIT_NAMES[split]] = write_png_items(tmp, names, images, labels, index=list(range(len(labels))))
        write_datalist(
            tmp,
            splits,
            name=info.name,
            source=f"MedMNIST v2 ({npz_path.name}, official train/val/test splits)",
            synthetic=False,
            task=info.task,
            num_classes=info.num_classes,
            class_names=info.class_names,
            license="CC BY 4.0",
            source_sha256=digest,
        )
    counts = ", ".join(f"{SPLIT_NAMES[s]} {len(a[1])}" for s, a in arrays.items())
    print(f"wrote {info.name} to {out}: {counts}")
    return Path(out) / DATALIST


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="folder holding the .npz (or the .npz file itself)")
    parser.add_argument("--out", required=True, help="output dataset folder (replaced atomically)")
    parser.add_argument("--dataset", required=True, choices=sorted(MEDMNIST))
    parser.add_argument("--force", action="store_true", help="rebuild even if --out is up to date")
    args = parser.parse_args(argv)
    prepare_medmnist(args.data_dir, args.out, args.dataset, force=args.force)


if __name__ == "__main__":
    main()
