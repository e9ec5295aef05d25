"""Fetch one public file into the download cache, or stop with the manual alternative for its dataset."""

from __future__ import annotations

import os
from pathlib import Path

from monai.utils import optional_import

__all__ = ["DownloadUnavailableError", "MANUAL", "fetch"]

Image, _has_pil = optional_import("PIL.Image")
nib, _has_nib = optional_import("nibabel")


MEDMNIST_URL = "https://zenodo.org/records/10519652/files/{name}.npz?download=1"
MEDMNIST_MD5 = {
    "retinamnist": "bd4c0672f1bba3e3a89f0e4e876791e4",
    "pneumoniamnist": "28209eda62fecd6e6a2d98b1501bb15f",
    "breastmnist": "750601b1f35ba3300ea97c75c52ff8f6",
}
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/{name}"
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
COVID_URL = "https://zenodo.org/records/3757476/files/{name}?download=1"
COVID_ZIPS = ("COVID-19-CT-Seg_20cases.zip", "Lung_Mask.zip")
EAD_CLASSES = ("instrument", "specularity", "artefact", "bubbles", "saturation")

MANUAL = {
    "retinamnist": "download https://zenodo.org/records/10519652/files/retinamnist.npz by hand, then run "
    "`python -m monai_smia.apps.data_prep.medmnist --data-dir retinamnist.npz --out OUT --dataset retinamnist`",
    "pneumoniamnist": "download https://zenodo.org/records/10519652/files/pneumoniamnist.npz by hand, then run "
    "`python -m monai_smia.apps.data_prep.medmnist --data-dir pneumoniamnist.npz --out OUT --dataset pneumoniamnist`",
    "breastmnist": "download https://zenodo.org/records/10519652/files/breastmnist.npz by hand, then run "
    "`python -m monai_smia.apps.data_prep.medmnist --data-dir breastmnist.npz --out OUT --dataset breastmnist`",
    "mnist": "download the four *-idx?-ubyte.gz files of MNIST by hand into one folder, then run "
    "`python -m monai_smia.apps.data_prep.mnist --data-dir FOLDER --out OUT --use-train-files`",
    "covid19_ct": "download COVID-19-CT-Seg_20cases.zip and Lung_Mask.zip from https://zenodo.org/records/3757476, "
    "unzip both into one folder, then run `python -m monai_smia.apps.data_prep.download --dataset covid19_ct "
    "--manual-dir FOLDER "
    "--out OUT`",
    "aptos2019": "sign in to Kaggle, accept the rules of https://www.kaggle.com/c/aptos2019-blindness-detection, "
    "download and unzip its data (train.csv, train_images/), then run `python -m monai_smia.apps.data_prep.download "
    "--dataset "
    "aptos2019 --manual-dir FOLDER --out OUT`",
    "kaggle_dr": "sign in to Kaggle, accept the rules of https://www.kaggle.com/c/diabetic-retinopathy-detection, "
    "download and unzip trainLabels.csv and train/ (*.jpeg), then run `python -m monai_smia.apps.data_prep.download "
    "--dataset "
    "kaggle_dr --manual-dir FOLDER --out OUT`",
    "ead2019_det": "as ead2019, with --dataset ead2019_det (boxes from the masks' connected components)",
    "ead2019": "register at https://ead2019.grand-challenge.org, download the semantic segmentation training data, "
    "put the frames in FOLDER/images (*.jpg) and the 5-page masks in FOLDER/masks (*.tif), then run "
    "`python -m monai_smia.apps.data_prep.download --dataset ead2019 --manual-dir FOLDER --out OUT`",
}


class DownloadUnavailableError(RuntimeError):
    """Raised when a file cannot be downloaded (offline, blocked, checksum mismatch) or needs an account."""


def _fetch_url(url: str, filepath: Path, md5: str | None) -> None:
    """Download ``url`` to ``filepath`` (MONAI's ``download_url``: temporary file, checksum, then rename)."""
    from monai.apps.utils import download_url

    download_url(url=url, filepath=str(filepath), hash_val=md5, hash_type="md5", progress=True)


def fetch(url: str, filepath: str | os.PathLike, md5: str | None, dataset: str) -> Path:
    """Download one file into the cache unless a copy is already there; wrap every failure in a clear error.

    Raises:
        DownloadUnavailableError: naming the URL, the cause and the manual alternative for ``dataset``;
            no partial file is left at ``filepath``.
    """
    filepath = Path(filepath)
    filepath.parent.mkdir(parents=True, exist_ok=True)
    if filepath.is_file():
        return filepath
    try:
        _fetch_url(url, filepath, md5)
    except Exception as e:  # urllib/HTTP/socket errors, checksum mismatch: all mean "use the manual route"
        if filepath.exists():
            filepath.unlink()
        raise DownloadUnavailableError(
            f"could not download {url} ({type(e).__name__}: {e}). This machine may be offline. "
            f"Manual alternative: {MANUAL[dataset]}"
        ) from e
    if not filepath.is_file():
        raise DownloadUnavailableError(f"download of {url} produced no file. Manual alternative: {MANUAL[dataset]}")
    return filepath


