"""Converters for the SMIA paper's own datasets (manual downloads): COVID-19 CT lung segmentation,
APTOS-2019 and Kaggle DR fundus grading, EAD-2019 endoscopy artefacts (segmentation and boxes).

Each writes the data_prep layout atomically; see :mod:`monai_smia.apps.data_prep.download` for the sources.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
from monai.utils import optional_import

from monai_smia.apps.data_prep.fetch import COVID_URL, COVID_ZIPS, EAD_CLASSES, MANUAL, DownloadUnavailableError, fetch
from monai_smia.apps.data_prep.layout import atomic_output_dir, deterministic_split, write_datalist
from monai_smia.apps.data_prep.msd_lung_det import BOX_MODE, mask_to_boxes
from monai_smia.apps.data_prep.png_classification import IMAGE_DIR

Image, _has_pil = optional_import("PIL.Image")
nib, _has_nib = optional_import("nibabel")

__all__ = [
    "convert_graded_fundus",
    "find_covid_pairs",
    "prepare_aptos",
    "prepare_covid",
    "prepare_ead",
    "prepare_kaggle_dr",
]

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


def prepare_covid(out: Path, dataset: str, cache: Path, manual_dir: Path | None, **_: Any) -> Path:
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


def prepare_aptos(out: Path, dataset: str, cache: Path, manual_dir: Path | None, size: int = 224, **_: Any) -> Path:
    folder = _require_manual(dataset, manual_dir)
    return convert_graded_fundus(
        folder, out, "train.csv", "train_images", "id_code", "diagnosis", ".png", dataset,
        "APTOS 2019 Blindness Detection (Kaggle), labelled training set", size,
    )  # fmt: skip


def prepare_kaggle_dr(
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


def prepare_ead(out: Path, dataset: str, cache: Path, manual_dir: Path | None, **_: Any) -> Path:
    """EAD-2019 as segmentation (``ead2019``: 5-page masks as ``.npy``) or detection (``ead2019_det``: one box
    per connected component of each class, MONAI's detection datalist as
    :mod:`~monai_smia.apps.data_prep.msd_lung_det`)."""
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


