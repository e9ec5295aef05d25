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
import csv
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
from monai.utils import optional_import

from monai_smia.apps.data_prep.layout import atomic_output_dir, deterministic_split, write_datalist
from monai_smia.apps.data_prep.medmnist import MEDMNIST, prepare_medmnist
from monai_smia.apps.data_prep.mnist import prepare_mnist
from monai_smia.apps.data_prep.msd_lung_det import BOX_MODE, mask_to_boxes
from monai_smia.apps.data_prep.png_classification import IMAGE_DIR

Image, _has_pil = optional_import("PIL.Image")
nib, _has_nib = optional_import("nibabel")

__all__ = ["DownloadUnavailableError", "DATASETS", "fetch", "prepare_dataset", "main"]

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
    "unzip both into one folder, then run `python -m monai_smia.apps.data_prep.download --dataset covid19_ct --manual-dir FOLDER "
    "--out OUT`",
    "aptos2019": "sign in to Kaggle, accept the rules of https://www.kaggle.com/c/aptos2019-blindness-detection, "
    "download and unzip its data (train.csv, train_images/), then run `python -m monai_smia.apps.data_prep.download --dataset "
    "aptos2019 --manual-dir FOLDER --out OUT`",
    "kaggle_dr": "sign in to Kaggle, accept the rules of https://www.kaggle.com/c/diabetic-retinopathy-detection, "
    "download and unzip trainLabels.csv and train/ (*.jpeg), then run `python -m monai_smia.apps.data_prep.download --dataset "
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


def _default_cache() -> Path:
    return Path(os.environ.get("MONAI_SMIA_CACHE", Path.home() / ".cache" / "monai-smia"))


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


# ----------------------------------------------------------------------------------------------------------------
# COVID-19 CT lung segmentation (Ma et al.)


def _case_key(stem: str) -> str:
    """Pair CT and mask names: ``coronacases_org_001`` ~ ``coronacases_001``,
    ``radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm`` ~ ``radiopaedia_4_85506_1``."""
    source = stem.split("_", 1)[0].lower()
    digits = re.findall(r"\d+", stem.lower().replace("covid-19", ""))
    return source + "_" + "_".join(digits)


def _nii_stem(path: Path) -> str:
    return path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem


def _is_lung_mask_dir(path: Path, root: Path) -> bool:
    """True for files under a ``Lung_Mask`` folder (not ``Infection_Mask`` nor ``Lung_and_Infection_Mask``)."""
    rel = str(path.relative_to(root).parent).lower()
    return "lung" in rel and "infection" not in rel


def find_covid_pairs(folder: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """Find (case, CT, lung mask) triples in an unzipped copy of Zenodo record 3757476.

    CT volumes are the NIfTI files whose name contains ``_org_``; lung masks are the others, found under a
    folder named like ``Lung_Mask`` (infection masks are ignored).
    Raises FileNotFoundError if a CT has no mask (or none are found).
    """
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*.nii*") if p.is_file())
    cts = [p for p in files if "_org_" in p.name]
    masks = {_case_key(_nii_stem(p)): p for p in files if "_org_" not in p.name and _is_lung_mask_dir(p, folder)}
    if not cts:
        raise FileNotFoundError(f"no CT volumes (*_org_*.nii.gz) under {folder}. Manual steps: {MANUAL['covid19_ct']}")
    triples = []
    for ct in cts:
        key = _case_key(_nii_stem(ct))
        if key not in masks:
            raise FileNotFoundError(f"no lung mask for {ct.name} (expected e.g. {key}.nii.gz in a Lung_Mask folder)")
        triples.append((key, ct, masks[key]))
    return triples


def _prepare_covid(out: Path, dataset: str, cache: Path, manual_dir: Path | None, **_: Any) -> Path:
    if not _has_nib:
        raise ImportError("converting the COVID-19 CT dataset needs nibabel: pip install nibabel")
    tmp_extract = None
    if manual_dir is None:
        zips = [fetch(COVID_URL.format(name=n), cache / "covid19_ct" / n, None, dataset) for n in COVID_ZIPS]
        tmp_extract = Path(tempfile.mkdtemp(prefix="covid19_ct-", dir=cache))
        for z in zips:
            try:
                with zipfile.ZipFile(z) as zf:
                    zf.extractall(tmp_extract / z.stem)
            except zipfile.BadZipFile as e:
                shutil.rmtree(tmp_extract, ignore_errors=True)
                raise ValueError(f"{z} is not a valid zip file ({e}); delete it and download again") from e
        manual_dir = tmp_extract
    try:
        triples = find_covid_pairs(manual_dir)
        split = deterministic_split([k for k, _, _ in triples], (0.6, 0.2, 0.2), salt="monai-smia-covid19")
        where = {k: s for s, keys in split.items() for k in keys}
        with atomic_output_dir(out, overwrite=True, protected=[manual_dir]) as tmp:
            (tmp / "images").mkdir()
            (tmp / "labels").mkdir()
            splits: dict[str, list] = {"training": [], "validation": [], "test": []}
            for key, ct_path, mask_path in triples:
                try:
                    ct, mask = nib.load(str(ct_path)), nib.load(str(mask_path))
                    mask_data = np.asarray(mask.dataobj)
                except Exception as e:
                    raise ValueError(f"cannot read {ct_path.name} or {mask_path.name} ({e}); re-download them") from e
                if tuple(ct.shape) != tuple(mask_data.shape):
                    raise ValueError(
                        f"{ct_path.name} has shape {ct.shape} but its mask {mask_path.name} {mask_data.shape}"
                    )
                nib.save(ct, str(tmp / "images" / f"{key}.nii.gz"))
                label = nib.Nifti1Image((mask_data > 0).astype(np.uint8), ct.affine, ct.header)
                label.set_data_dtype(np.uint8)
                nib.save(label, str(tmp / "labels" / f"{key}.nii.gz"))
                splits[where[key]].append(
                    {"image": f"images/{key}.nii.gz", "label": f"labels/{key}.nii.gz", "patient": key}
                )
            write_datalist(
                tmp,
                splits,
                name="covid19_ct_lung",
                source="COVID-19 CT Lung and Infection Segmentation Dataset, Ma et al., Zenodo 3757476",
                synthetic=False,
                labels={"0": "background", "1": "lung"},
                license="CC BY-NC-SA 4.0",
                note="coronacases volumes are in HU; radiopaedia volumes are 0-255 grey values, not HU",
            )
    finally:
        if tmp_extract is not None:
            shutil.rmtree(tmp_extract, ignore_errors=True)
    return out / "datalist.json"


# ----------------------------------------------------------------------------------------------------------------
# Fundus photographs with a CSV of grades (APTOS-2019, Kaggle DR): manual download only


def _square_resize(img: Any, size: int) -> np.ndarray:
    """Centre-crop the largest square and resize it to ``size`` x ``size`` RGB (bicubic)."""
    img = img.convert("RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return np.asarray(img.resize((size, size), Image.BICUBIC))


def convert_graded_fundus(
    manual_dir: str | os.PathLike,
    out: str | os.PathLike,
    csv_name: str,
    image_dir: str,
    id_column: str,
    label_column: str,
    suffix: str,
    name: str,
    source: str,
    size: int = 224,
    group: Callable[[str], str] = lambda i: i,
) -> Path:
    """Convert a folder of fundus photographs graded 0-4 in a CSV into PNG files plus ``datalist.json``.

    Images are centre-cropped to a square and resized to ``size``; the split (70/15/15) is stratified by grade
    and decided by a hash of ``group(id)`` (the patient, so both eyes stay together).
    """
    if not _has_pil:
        raise ImportError("converting fundus photographs needs Pillow: pip install pillow")
    manual_dir = Path(manual_dir)
    table = manual_dir / csv_name
    if not table.is_file():
        raise FileNotFoundError(f"{table} not found. Manual steps: {MANUAL[name]}")
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or id_column not in rows[0] or label_column not in rows[0]:
        raise ValueError(f"{table} must have columns {id_column!r} and {label_column!r}")
    items = []
    for n, row in enumerate(rows):
        try:
            grade = int(row[label_column])
        except ValueError as e:
            raise ValueError(f"{table} row {n + 2}: grade {row[label_column]!r} is not an integer") from e
        if not 0 <= grade <= 4:
            raise ValueError(f"{table} row {n + 2}: grade {grade} outside 0..4")
        path = manual_dir / image_dir / f"{row[id_column]}{suffix}"
        if not path.is_file():
            raise FileNotFoundError(f"{path} listed in {table.name} is missing")
        items.append((row[id_column], grade, path))
    where: dict[str, str] = {}
    for grade in range(5):
        groups = sorted({group(i) for i, g, _ in items if g == grade} - set(where))
        for split, chosen in deterministic_split(groups, (0.7, 0.15, 0.15), salt=f"monai-smia-{name}").items():
            where.update({c: split for c in chosen})
    with atomic_output_dir(out, overwrite=True, protected=[manual_dir]) as tmp:
        (tmp / IMAGE_DIR).mkdir()
        splits: dict[str, list] = {"training": [], "validation": [], "test": []}
        for image_id, grade, path in items:
            try:
                with Image.open(path) as img:
                    arr = _square_resize(img, size)
            except Exception as e:
                raise ValueError(f"cannot read image {path} ({e}); re-download it") from e
            rel = f"{IMAGE_DIR}/{image_id}.png"
            Image.fromarray(arr).save(tmp / rel)
            splits[where[group(image_id)]].append({"image": rel, "label": grade, "patient": group(image_id)})
        write_datalist(tmp, splits, name=name, source=source, synthetic=False, num_classes=5, image_size=size)
    return Path(out) / "datalist.json"


def _require_manual(dataset: str, manual_dir: Path | None) -> Path:
    if manual_dir is None:
        raise DownloadUnavailableError(
            f"{dataset} cannot be downloaded automatically (it needs an account and accepted terms). {MANUAL[dataset]}"
        )
    if not manual_dir.is_dir():
        raise FileNotFoundError(f"--manual-dir {manual_dir} is not a folder. {MANUAL[dataset]}")
    return manual_dir


def _prepare_aptos(out: Path, dataset: str, cache: Path, manual_dir: Path | None, size: int = 224, **_: Any) -> Path:
    folder = _require_manual(dataset, manual_dir)
    return convert_graded_fundus(
        folder, out, "train.csv", "train_images", "id_code", "diagnosis", ".png", dataset,
        "APTOS 2019 Blindness Detection (Kaggle), labelled training set", size,
    )  # fmt: skip


def _prepare_kaggle_dr(
    out: Path, dataset: str, cache: Path, manual_dir: Path | None, size: int = 224, **_: Any
) -> Path:
    folder = _require_manual(dataset, manual_dir)
    return convert_graded_fundus(
        folder, out, "trainLabels.csv", "train", "image", "level", ".jpeg", dataset,
        "Kaggle Diabetic Retinopathy Detection 2015, labelled training set", size,
        group=lambda i: i.rsplit("_", 1)[0],
    )  # fmt: skip


def _read_ead_mask(path: Path) -> np.ndarray:
    """Read an EAD-2019 semantic mask (multi-page TIFF, one page per class) into ``(5, H, W)`` ``uint8``."""
    with Image.open(path) as img:
        pages = []
        for k in range(getattr(img, "n_frames", 1)):
            img.seek(k)
            pages.append(np.asarray(img.convert("L")))
    arr = np.stack(pages) if len(pages) > 1 else pages[0]
    if arr.ndim == 3 and arr.shape[0] != len(EAD_CLASSES) and arr.shape[-1] == len(EAD_CLASSES):
        arr = np.moveaxis(arr, -1, 0)
    if arr.ndim != 3 or arr.shape[0] != len(EAD_CLASSES):
        raise ValueError(
            f"{path}: expected {len(EAD_CLASSES)} mask pages {EAD_CLASSES}, got array of shape {arr.shape}"
        )
    return (arr > 127).astype(np.uint8)


def _ead_pairs(folder: Path, dataset: str) -> list[tuple[str, Path, Path]]:
    if not _has_pil:
        raise ImportError("converting EAD-2019 needs Pillow: pip install pillow")
    frames = sorted((folder / "images").glob("*.jpg"))
    if not frames:
        raise FileNotFoundError(f"no frames in {folder / 'images'} (*.jpg). {MANUAL[dataset]}")
    pairs = []
    for frame in frames:
        mask = folder / "masks" / f"{frame.stem}.tif"
        if not mask.is_file():
            raise FileNotFoundError(f"no mask {mask} for frame {frame.name}")
        pairs.append((frame.stem, frame, mask))
    return pairs


def _ead_boxes(label: np.ndarray) -> tuple[list[list[float]], list[int]]:
    """One ``xyxy`` box (pixel edges, x along rows) per connected component of each class page of an EAD mask."""
    boxes, classes = [], []
    for k, page in enumerate(label):
        found = mask_to_boxes(page).tolist()
        boxes += found
        classes += [k] * len(found)
    return boxes, classes


def _prepare_ead(out: Path, dataset: str, cache: Path, manual_dir: Path | None, **_: Any) -> Path:
    """EAD-2019 as segmentation (``ead2019``: 5-page masks as ``.npy``) or detection (``ead2019_det``: one box
    per connected component of each class, MONAI's detection datalist as :mod:`~monai_smia.apps.data_prep.msd_lung_det`)."""
    folder = _require_manual(dataset, manual_dir)
    detection = dataset.endswith("_det")
    pairs = _ead_pairs(folder, dataset)
    split = deterministic_split([k for k, _, _ in pairs], (0.7, 0.15, 0.15), salt="monai-smia-ead2019")
    where = {k: s for s, keys in split.items() for k in keys}
    with atomic_output_dir(out, overwrite=True, protected=[folder]) as tmp:
        (tmp / IMAGE_DIR).mkdir()
        if not detection:
            (tmp / "labels").mkdir()
        splits: dict[str, list] = {"training": [], "validation": [], "test": []}
        for key, frame, mask in pairs:
            with Image.open(frame) as img:
                arr = np.asarray(img.convert("RGB"))
            label = _read_ead_mask(mask)
            if label.shape[1:] != arr.shape[:2]:
                raise ValueError(f"{mask.name} has size {label.shape[1:]} but {frame.name} {arr.shape[:2]}")
            Image.fromarray(arr).save(tmp / IMAGE_DIR / f"{key}.png")
            if detection:
                boxes, classes = _ead_boxes(label)
                splits[where[key]].append({"image": f"{IMAGE_DIR}/{key}.png", "box": boxes, "label": classes})
                continue
            np.save(tmp / "labels" / f"{key}.npy", label)
            splits[where[key]].append({"image": f"{IMAGE_DIR}/{key}.png", "label": f"labels/{key}.npy"})
        extra = {"box_mode": BOX_MODE, "spatial_dims": 2, "label_names": list(EAD_CLASSES)} if detection else {
            "label_channels": list(EAD_CLASSES)}  # fmt: skip
        write_datalist(
            tmp, splits, name=dataset, source="EAD 2019 challenge, semantic segmentation training data",
            synthetic=False, **extra,
        )  # fmt: skip
    return out / "datalist.json"


DATASETS: dict[str, Callable[..., Path]] = {
    **{name: _prepare_medmnist for name in MEDMNIST},
    "mnist": _prepare_mnist,
    "covid19_ct": _prepare_covid,
    "aptos2019": _prepare_aptos,
    "kaggle_dr": _prepare_kaggle_dr,
    "ead2019": _prepare_ead,
    "ead2019_det": _prepare_ead,
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
    cache_dir = Path(cache) if cache is not None else _default_cache()
    manual = Path(manual_dir) if manual_dir is not None else None
    return DATASETS[dataset](Path(out), dataset, cache=cache_dir, manual_dir=manual, size=size)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--out", required=True, help="output dataset folder (written atomically)")
    parser.add_argument("--manual-dir", default=None, help="folder with a manual download (skips the network)")
    parser.add_argument(
        "--cache", default=None, help="download cache (default ~/.cache/monai-smia or $MONAI_SMIA_CACHE)"
    )
    parser.add_argument("--size", type=int, default=224, help="fundus image size for aptos2019/kaggle_dr")
    args = parser.parse_args(argv)
    try:
        prepare_dataset(args.dataset, args.out, args.cache, args.manual_dir, args.size)
    except DownloadUnavailableError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
