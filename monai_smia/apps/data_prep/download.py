"""Download (where a network is available) or convert manually downloaded public datasets to the data_prep layout.

Every dataset ends up as a folder with image/label files and ``datalist.json`` at its root (see
:mod:`monai_smia.apps.data_prep.layout`), written atomically: an interrupted download or conversion leaves no output
folder behind, and offline runs stop with :class:`DownloadUnavailableError` naming the manual alternative.

Datasets:

- ``retinamnist``, ``pneumoniamnist``, ``breastmnist``: the official MedMNIST v2 ``.npz`` files from
  Zenodo (record 10519652), checked by MD5, then :func:`monai_smia.apps.data_prep.medmnist.prepare_medmnist`.
  Manual: download ``https://zenodo.org/records/10519652/files/<name>.npz`` and run
  ``python -m monai_smia.apps.data_prep.medmnist --data-dir <file.npz> --out OUT --dataset <name>``.
- ``mnist``: the four idx.gz files (mirror ``https://ossci-datasets.s3.amazonaws.com/mnist/``), checked
  by MD5, then :func:`monai_smia.apps.data_prep.mnist.prepare_mnist` with the official 60k training set.
- ``covid19_ct``: COVID-19 CT lung and infection segmentation dataset (Ma et al., Zenodo record 3757476,
  CC BY-NC-SA): ``COVID-19-CT-Seg_20cases.zip`` (20 CT volumes, NIfTI) and ``Lung_Mask.zip`` (left and right
  lung labels). Converted to ``images/<case>.nii.gz`` and binary ``labels/<case>.nii.gz`` (1 = lung), split by
  patient. Manual: download both zips from https://zenodo.org/records/3757476, unzip them into one folder
  and pass it as ``--manual-dir``.
- ``aptos2019`` (APTOS 2019 Blindness Detection, Kaggle; needs a Kaggle account and acceptance of the
  competition rules): download ``aptos2019-blindness-detection.zip`` from
  https://www.kaggle.com/c/aptos2019-blindness-detection/data, unzip it, pass the folder holding
  ``train.csv`` and ``train_images/`` as ``--manual-dir``. Only the labelled training set is used; it is
  split 70/15/15, stratified by grade.
- ``kaggle_dr`` (Kaggle Diabetic Retinopathy Detection 2015; needs a Kaggle account): download and unzip
  ``trainLabels.csv`` and ``train/`` (``*.jpeg``) from https://www.kaggle.com/c/diabetic-retinopathy-detection/data
  and pass the folder as ``--manual-dir``. The left and right eye of one patient stay in the same split.
- ``ead2019`` (Endoscopic Artefact Detection challenge 2019; needs registration at
  https://ead2019.grand-challenge.org): download the semantic-segmentation training data and pass a folder
  holding ``images/`` (``*.jpg``) and ``masks/`` (``*.tif``, one page per class: instrument, specularity,
  artefact, bubbles, saturation) as ``--manual-dir``. Labels are written as ``(5, H, W)`` ``uint8`` ``.npy``.
  ``ead2019_det``: the same frames as a detection dataset (one ``xyxy`` box per connected component of each
  class mask, class index as label; the layout of :mod:`monai_smia.apps.data_prep.msd_lung_det`).

Usage::

    python -m monai_smia.apps.data_prep.download --dataset retinamnist --out data/retinamnist
    python -m monai_smia.apps.data_prep.download --dataset aptos2019 --manual-dir ~/Downloads/aptos --out data/aptos2019
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from monai_smia.apps.data_prep.fetch import (
    MEDMNIST_MD5,
    MEDMNIST_URL,
    MNIST_MD5,
    MNIST_URL,
    DownloadUnavailableError,
    fetch,
)
from monai_smia.apps.data_prep.medmnist import MEDMNIST, prepare_medmnist
from monai_smia.apps.data_prep.mnist import prepare_mnist
from monai_smia.apps.data_prep.paper_datasets import prepare_aptos, prepare_covid, prepare_ead, prepare_kaggle_dr
from monai_smia.io.cache import default_cache

__all__ = ["DownloadUnavailableError", "DATASETS", "fetch", "prepare_dataset", "main"]


# ----------------------------------------------------------------------------------------------------------------
# MedMNIST and MNIST: download, then the offline converters


def _prepare_medmnist(out: Path, dataset: str, cache: Path, manual_dir: Path | None, **_: Any) -> Path:
    if manual_dir is not None:
        return prepare_medmnist(manual_dir, out, dataset)
    npz = fetch(MEDMNIST_URL.format(name=dataset), cache / f"{dataset}.npz", MEDMNIST_MD5[dataset], dataset)
    return prepare_medmnist(npz, out, dataset)


def _prepare_mnist(out: Path, dataset: str, cache: Path, manual_dir: Path | None, **_: Any) -> Path:
    if manual_dir is not None:
        return prepare_mnist(manual_dir, out, use_train_files=True)
    folder = cache / "mnist"
    for name, md5 in MNIST_MD5.items():
        fetch(MNIST_URL.format(name=name), folder / name, md5, dataset)
    return prepare_mnist(folder, out, use_train_files=True)


DATASETS: dict[str, Callable[..., Path]] = {
    **{name: _prepare_medmnist for name in MEDMNIST},
    "mnist": _prepare_mnist,
    "covid19_ct": prepare_covid,
    "aptos2019": prepare_aptos,
    "kaggle_dr": prepare_kaggle_dr,
    "ead2019": prepare_ead,
    "ead2019_det": prepare_ead,
}


def prepare_dataset(
    dataset: str,
    out: str | os.PathLike,
    cache: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
    size: int = 224,
) -> Path:
    """Download (or take from ``manual_dir``) and convert ``dataset`` into ``out``; return the datalist path.

    Raises:
        DownloadUnavailableError: offline, on a failed download, or for a dataset that needs an account and
            no ``manual_dir``; the message names the manual alternative. ``out`` is not created.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown --dataset {dataset!r}; expected one of {sorted(DATASETS)}")
    cache_dir = Path(cache) if cache is not None else default_cache()
    manual = Path(manual_dir) if manual_dir is not None else None
    return DATASETS[dataset](Path(out), dataset, cache=cache_dir, manual_dir=manual, size=size)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--out", required=True, help="output dataset folder (written atomically)")
    parser.add_argument("--manual-dir", default=None, help="folder with a manual download (skips the network)")
    parser.add_argument(
        "--cache", default=None, help="download cache (default ~/.cache/monai_smia or $MONAI_SMIA_CACHE)"
    )
    parser.add_argument("--size", type=int, default=224, help="fundus image size for aptos2019/kaggle_dr")
    args = parser.parse_args(argv)
    try:
        prepare_dataset(args.dataset, args.out, args.cache, args.manual_dir, args.size)
    except DownloadUnavailableError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
