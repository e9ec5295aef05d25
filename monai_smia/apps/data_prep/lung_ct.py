"""CT lung segmentation data from every real CT in ``DATA_DIR/ct``, in the data_prep layout.

Usage (from the repository root)::

    python -m monai_smia.apps.data_prep.lung_ct --data-dir ../shared/data --out data/lung_ct [--spacing 1.5 1.5]

Every case becomes ``images/<case>.nii.gz`` (HU, int16) and ``labels/<case>.nii.gz`` (binary lung,
uint8), resampled to one in-plane spacing (slice spacing kept, so a slice stays a slice), oriented
so that array axis 0 of SimpleITK (NIfTI axis 2) is axial, plus ``qc/<case>.png`` (a visual check
of the mask) and ``datalist.json``. Each datalist item records the patient and where its label
came from (``label_source``):

- ``cip_wholelung``: the Chest Imaging Platform whole-lung mask of COPDGene case 10002K;
- ``totalsegmentator_lobes``: union of TotalSegmentator's five lung lobes (v1 labels 13-17 for
  ``example_ct``, v2 labels 10-14 for ``example_ct_sm``; checked against labels_v*.json);
- ``hu_threshold``: a classical mask (:func:`monai_smia.apps.data_prep.lung_masks.lung_mask_from_hu`) for CT
  without lung labels (the Lung-PET-CT-Dx chest series, the TotalSegmentator chest crops).

The TotalSegmentator DICOM example (an abdomen, no lung in its label; its label array is flipped
along y, so both are brought to LPS orientation and paired by world coordinates) is kept as a
negative example: it teaches that bowel gas is not lung.

Split by patient, never by slice (``example_ct`` and ``example_ct_sm`` are the same series, and
``pulm_ct_cropped`` lies inside ``aorta_ct_cropped``: one patient each). The independently
labelled patients are all kept for the test split: agreement with a threshold mask only measures
agreement with the thresholding recipe, while the CIP and TotalSegmentator masks measure lung
segmentation itself. The threshold-labelled patients are assigned so that training sees a
full-field chest CT (and the abdominal negative example), validation the tight crops and test
the other full-field chest CT; the test
split therefore holds both kinds of label and Dice is reported for each kind separately.
Patients not in that table are split by :func:`monai_smia.apps.data_prep.layout.deterministic_split`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_smia.apps.data_prep.layout import (
    DATALIST,
    atomic_output_dir,
    deterministic_split,
    write_datalist,
)
from monai_smia.apps.data_prep.lung_ct_cases import (
    AIR_HU,
    CASES,
    INDEPENDENT_SOURCES,
    LABEL_SOURCES,
    PATIENT_SPLIT,
    CTCase,
)
from monai_smia.apps.data_prep.lung_masks import lung_mask_from_hu

logger = logging.getLogger("monai_smia.apps.data_prep.lung_ct")



def _sitk() -> Any:
    import SimpleITK as sitk

    return sitk


def read_ct(path: Path) -> Any:
    """Read a CT volume (NIfTI, NRRD, or a folder holding one DICOM series) with SimpleITK.

    Raises:
        FileNotFoundError: the path does not exist or the folder holds no DICOM series.
        ValueError: the file cannot be decoded, or the folder holds several series.
    """
    sitk = _sitk()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CT not found: {path}")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise FileNotFoundError(f"no DICOM series in folder {path}")
            if len(series) > 1:
                raise ValueError(f"{path} holds {len(series)} DICOM series; expected one")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            image = reader.Execute()
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise ValueError(f"cannot read {path}: corrupt or unsupported file ({str(e).strip().splitlines()[-1]})") from e
    if image.GetDimension() != 3:
        raise ValueError(f"{path}: expected a 3D CT volume, got {image.GetDimension()}D")
    return image


def resample_in_plane(image: Any, spacing_xy: Sequence[float], label: bool = False) -> Any:
    """Resample to ``spacing_xy`` in-plane (mm), keeping slice spacing, extent and orientation."""
    sitk = _sitk()
    sp = image.GetSpacing()
    new_sp = (float(spacing_xy[0]), float(spacing_xy[1]), sp[2])
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(image.GetSize(), sp, new_sp)]
    interp = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    default = 0 if label else AIR_HU
    out = sitk.Resample(
        image, size, sitk.Transform(), interp, image.GetOrigin(), new_sp, image.GetDirection(), default,
        sitk.sitkUInt8 if label else sitk.sitkFloat32,
    )
    if not label:
        out = sitk.Cast(sitk.Round(out), sitk.sitkInt16)
    return out


def _check_same_grid(image: Any, label: Any, image_path: Path, label_path: Path) -> None:
    if image.GetSize() != label.GetSize():
        raise ValueError(
            f"image/label shape mismatch: {image_path} has size {image.GetSize()} but {label_path} has "
            f"{label.GetSize()}"
        )
    for what, a, b in (
        ("spacing", image.GetSpacing(), label.GetSpacing()),
        ("origin", image.GetOrigin(), label.GetOrigin()),
        ("direction", image.GetDirection(), label.GetDirection()),
    ):
        if not np.allclose(a, b, atol=1e-3):
            raise ValueError(f"image/label {what} mismatch: {image_path} {tuple(a)} vs {label_path} {tuple(b)}")


def _lung_values_checked(case: CTCase, data_dir: Path) -> tuple[int, ...]:
    if case.label_names is None:
        return case.lung_values
    names_path = data_dir / case.label_names
    if not names_path.is_file():
        raise FileNotFoundError(f"label map {names_path} (names of {case.label}) not found")
    try:
        names = json.loads(names_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"label map {names_path} is not valid JSON: {e}") from e
    for v in case.lung_values:
        name = str(names.get(str(v), ""))
        if "lung" not in name:
            raise ValueError(f"unknown label map {names_path}: value {v} is {name!r}, expected a lung lobe")
    return case.lung_values


def load_case(case: CTCase, data_dir: Path, spacing_xy: Sequence[float]) -> tuple[Any, Any]:
    """Read one case, build its binary lung label and resample both to ``spacing_xy`` in-plane.

    Returns:
        ``(image, label)`` SimpleITK images on the same grid, axial slices along array axis 0.
    """
    sitk = _sitk()
    image_path = data_dir / case.image
    image = sitk.DICOMOrient(read_ct(image_path), "LPS")
    if case.label is None:
        image = resample_in_plane(image, spacing_xy)
        hu = sitk.GetArrayFromImage(image)
        sp = image.GetSpacing()
        mask = lung_mask_from_hu(hu, spacing_zyx=(sp[2], sp[1], sp[0]))
        label = sitk.GetImageFromArray(mask.astype(np.uint8))
        label.CopyInformation(image)
        return image, label
    label_path = data_dir / case.label
    if not label_path.exists():
        raise FileNotFoundError(f"lung label {label_path} for CT {image_path} not found")
    values = _lung_values_checked(case, data_dir)
    raw = sitk.DICOMOrient(read_ct(label_path), "LPS")
    _check_same_grid(image, raw, image_path, label_path)
    arr = sitk.GetArrayFromImage(raw)
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"label {label_path} holds negative or non-finite values; expected a label map")
    lab = np.isin(np.rint(arr).astype(np.int64), values) if values else arr > 0
    label = sitk.GetImageFromArray(lab.astype(np.uint8))
    label.CopyInformation(raw)
    return resample_in_plane(image, spacing_xy), resample_in_plane(label, spacing_xy, label=True)


def write_qc_png(image: Any, label: Any, path: Path, title: str) -> None:
    """Save axial slices at 25/50/75% of the lung extent and a coronal view with the mask outline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sitk = _sitk()
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    lab = sitk.GetArrayFromImage(label) > 0
    sp = image.GetSpacing()
    zs = np.nonzero(lab.any(axis=(1, 2)))[0]
    z_lo, z_hi = (zs[0], zs[-1]) if zs.size else (0, hu.shape[0] - 1)
    picks = [int(z_lo + f * (z_hi - z_lo)) for f in (0.25, 0.5, 0.75)]
    y_mid = int(np.nonzero(lab.any(axis=(0, 2)))[0].mean()) if lab.any() else hu.shape[1] // 2
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    views = [(hu[z], lab[z], f"axial z={z}", sp[1] / sp[0]) for z in picks]
    views.append((hu[::-1, y_mid, :], lab[::-1, y_mid, :], f"coronal y={y_mid}", sp[2] / sp[0]))
    for ax, (img, msk, name, aspect) in zip(axes, views):
        ax.imshow(np.clip(img, -1000, 500), cmap="gray", vmin=-1000, vmax=500, aspect=aspect)
        if msk.any():
            ax.contour(msk.astype(float), levels=[0.5], colors="r", linewidths=0.8)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


def split_patients(patients: Sequence[str], table: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Assign each patient to one split: by ``table`` (default :data:`PATIENT_SPLIT`), else by hash."""
    table = PATIENT_SPLIT if table is None else table
    out: dict[str, list[str]] = {"training": [], "validation": [], "test": []}
    rest = [p for p in patients if p not in table]
    for p in patients:
        if p in table:
            out[table[p]].append(p)
    for k, v in deterministic_split(rest).items():
        out[k].extend(v)
    return out


def _checked_inputs(
    data_dir: Path, spacing: Sequence[float], cases: Sequence[CTCase]
) -> tuple[list[float], list[CTCase]]:
    """The in-plane spacing as two values and the cases whose image is present (others skipped, logged)."""
    spacing = [float(s) for s in spacing]
    if len(spacing) == 1:
        spacing = spacing * 2
    if len(spacing) != 2 or min(spacing) <= 0:
        raise ValueError(f"--spacing must be one or two positive in-plane values in mm, got {spacing}")
    if not (data_dir / "ct").is_dir():
        raise FileNotFoundError(
            f"{data_dir / 'ct'} not found: --data-dir must hold the ct/ folder of the shared data "
            "(see MANIFEST.md); without real CT, use `python -m monai_smia.apps.data_prep.phantom --out DIR`"
        )
    present = [c for c in cases if (data_dir / c.image).exists()]
    for c in cases:
        if c not in present:
            logger.warning("skipping %s: %s not found", c.case, data_dir / c.image)
    if not present:
        raise FileNotFoundError(f"none of the expected CT files were found under {data_dir / 'ct'}")
    return spacing, present


def _convert_case(
    sitk: Any, c: CTCase, data_dir: Path, spacing: Sequence[float], tmp: Path, qc: bool
) -> dict[str, Any]:
    """Write one case's image, label (and QC picture) into ``tmp``; return its datalist item."""
    logger.info("converting %s (%s)", c.case, c.label_source)
    image, label = load_case(c, data_dir, spacing)
    frac = float(sitk.GetArrayViewFromImage(label).mean())
    if frac == 0 and not c.allow_empty:
        raise ValueError(f"{c.case}: the lung label from {c.label or c.image} is empty")
    sitk.WriteImage(image, str(tmp / "images" / f"{c.case}.nii.gz"), useCompression=True)
    sitk.WriteImage(label, str(tmp / "labels" / f"{c.case}.nii.gz"), useCompression=True)
    item = {
        "image": f"images/{c.case}.nii.gz",
        "label": f"labels/{c.case}.nii.gz",
        "case": c.case,
        "patient": c.patient,
        "label_source": c.label_source,
        "independent_label": c.label_source in INDEPENDENT_SOURCES,
        "source_file": c.image,
        "spacing_mm": [round(s, 4) for s in image.GetSpacing()],
        "shape_xyz": list(image.GetSize()),
        "lung_fraction": round(frac, 5),
    }
    if qc:
        write_qc_png(image, label, tmp / "qc" / f"{c.case}.png", f"{c.case} [{c.label_source}] lung {frac:.1%}")
        item["qc"] = f"qc/{c.case}.png"
    return item


def prepare(
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    spacing: Sequence[float] = (1.5, 1.5),
    cases: Sequence[CTCase] = CASES,
    overwrite: bool = False,
    qc: bool = True,
) -> Path:
    """Convert the CT cases found under ``data_dir`` into the data_prep layout at ``out``.

    Cases whose image is absent are skipped with a warning; a present image whose label is
    missing, mismatched or unreadable is an error, and nothing is written to ``out``.

    Args:
        data_dir: the shared data folder (holding ``ct/``).
        out: output folder; replaced as a whole only when complete.
        spacing: in-plane spacing in mm (one value for both axes, or two).
        cases: the cases to convert.
        overwrite: rebuild even when ``out`` already holds a dataset made with the same settings.
        qc: write ``qc/<case>.png``.

    Returns:
        The path of the written ``datalist.json``.
    """
    sitk = _sitk()
    data_dir = Path(data_dir)
    spacing, present = _checked_inputs(data_dir, spacing, cases)
    params = {"spacing_mm": spacing, "cases": [c.case for c in present], "qc": qc}
    out = Path(out)
    dl = out / DATALIST
    if dl.is_file() and not overwrite:
        with open(dl) as f:
            old = json.load(f)
        if old.get("params") == params:
            logger.info("%s is up to date; pass --overwrite to rebuild", dl)
            return dl
    splits_by_patient = split_patients(sorted({c.patient for c in present}))
    where = {p: s for s, ps in splits_by_patient.items() for p in ps}
    items: dict[str, list[dict[str, Any]]] = {"training": [], "validation": [], "test": []}
    with atomic_output_dir(out, overwrite=True, protected=[data_dir]) as tmp:
        for sub in ("images", "labels") + (("qc",) if qc else ()):
            (tmp / sub).mkdir()
        for c in present:
            items[where[c.patient]].append(_convert_case(sitk, c, data_dir, spacing, tmp, qc))
        write_datalist(
            tmp,
            items,
            name="lung_ct",
            source="real CT from the shared data folder "
            "(TCIA Lung-PET-CT-Dx, Chest Imaging Platform, TotalSegmentator)",
            synthetic=False,
            labels={"0": "background", "1": "lung"},
            label_sources=list(LABEL_SOURCES),
            split_by="patient",
            params=params,
        )
    return out / DATALIST


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m monai_smia.apps.data_prep.lung_ct", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--data-dir", required=True, help="shared data folder holding ct/ (e.g. ../shared/data)")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument(
        "--spacing", type=float, nargs="+", default=[1.5, 1.5], help="in-plane spacing in mm (default 1.5 1.5)"
    )
    p.add_argument("--overwrite", action="store_true", help="rebuild even if --out is up to date")
    p.add_argument("--no-qc", action="store_true", help="skip the PNG visual checks")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = prepare(args.data_dir, args.out, args.spacing, overwrite=args.overwrite, qc=not args.no_qc)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
