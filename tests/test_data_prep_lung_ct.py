"""monai_smia.apps.data_prep.lung_ct on the real CT of the shared data folder, lung masks, phantoms, bad input."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")
pytest.importorskip("scipy")

from monai_smia.apps.data_prep import lung_ct, phantom  # noqa: E402
from monai_smia.io.atomic import OWNER_MARKER  # noqa: E402
from monai_smia.apps.data_prep.layout import load_datalist  # noqa: E402
from monai_smia.apps.data_prep.lung_masks import lung_mask_from_hu  # noqa: E402

DATA = Path(os.environ.get("MONAI_SMIA_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
needs_ct = pytest.mark.skipif(
    not (DATA / "ct").is_dir(), reason=f"real CT not found at {DATA}/ct (set MONAI_SMIA_DATA to the shared data folder)"
)


@pytest.fixture(scope="module")
def lung_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (DATA / "ct").is_dir():
        pytest.skip(f"real CT not found at {DATA}/ct")
    out = tmp_path_factory.mktemp("lung") / "lung_ct"
    assert lung_ct.main(["--data-dir", str(DATA), "--out", str(out)]) == 0
    return out


@needs_ct
def test_layout_and_every_case(lung_out: Path) -> None:
    dl = load_datalist(lung_out)
    assert dl["synthetic"] is False and dl["split_by"] == "patient"
    cases = {i["case"]: (s, i) for s in ("training", "validation", "test") for i in dl[s]}
    assert set(cases) == {c.case for c in lung_ct.CASES}
    for split, item in cases.values():
        img = sitk.ReadImage(str(lung_out / item["image"]))
        lab = sitk.ReadImage(str(lung_out / item["label"]))
        assert img.GetSize() == lab.GetSize()
        assert np.allclose(img.GetSpacing()[:2], (1.5, 1.5))
        assert np.allclose(img.GetSpacing(), lab.GetSpacing()) and np.allclose(img.GetOrigin(), lab.GetOrigin())
        assert set(np.unique(sitk.GetArrayViewFromImage(lab))) <= {0, 1}
        assert (lung_out / item["qc"]).stat().st_size > 1000
        assert item["label_source"] in lung_ct.LABEL_SOURCES
    # no temporary folders are left beside the output
    assert [p.name for p in lung_out.parent.iterdir()] == [lung_out.name]


@needs_ct
def test_split_by_patient_and_test_has_both_label_kinds(lung_out: Path) -> None:
    dl = load_datalist(lung_out)
    patients = {s: {i["patient"] for i in dl[s]} for s in ("training", "validation", "test")}
    assert all(patients.values())
    assert not patients["training"] & patients["validation"]
    assert not patients["training"] & patients["test"]
    assert not patients["validation"] & patients["test"]
    by_case = {i["case"]: i for s in ("training", "validation", "test") for i in dl[s]}
    assert by_case["ts_example_ct"]["patient"] == by_case["ts_example_ct_sm"]["patient"]
    assert by_case["ts_pulm_ct_cropped"]["patient"] == by_case["ts_aorta_ct_cropped"]["patient"]
    test_sources = {i["label_source"] for i in dl["test"]}
    assert {"cip_wholelung", "totalsegmentator_lobes", "hu_threshold"} <= test_sources


@needs_ct
def test_lung_masks_plausible(lung_out: Path) -> None:
    dl = load_datalist(lung_out)
    for item in dl["training"] + dl["validation"] + dl["test"]:
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(lung_out / item["label"]))) > 0
        hu = sitk.GetArrayFromImage(sitk.ReadImage(str(lung_out / item["image"])))
        frac = lab.mean()
        if item["case"] == "ts_example_dicom":  # abdomen, no lung: a negative example
            assert frac == 0
            continue
        assert frac > 0, item["case"]
        if item["case"].startswith("ts_example"):  # abdominal scan, lung bases only
            assert frac < 0.05
        else:  # chest CT or chest crop
            assert 0.04 < frac < 0.6, (item["case"], frac)
        # lungs are air-filled: median HU inside the mask is well below soft tissue
        assert np.median(hu[lab]) < -500, item["case"]


@needs_ct
def test_threshold_mask_agrees_with_cip_lung_mask() -> None:
    """The classical mask, run on the CIP CT, must agree with CIP's own whole-lung mask."""
    ct = sitk.DICOMOrient(sitk.ReadImage(str(DATA / "ct/chest/cip_copdgene_64/ct-64.nrrd")), "LPS")
    ref = sitk.GetArrayFromImage(
        sitk.DICOMOrient(sitk.ReadImage(str(DATA / "ct/chest/cip_copdgene_64/wholeLung-64.nrrd")), "LPS")
    ) > 0
    sp = ct.GetSpacing()
    mask = lung_mask_from_hu(sitk.GetArrayFromImage(ct), spacing_zyx=(sp[2], sp[1], sp[0]))
    dice = 2 * (mask & ref).sum() / (mask.sum() + ref.sum())
    assert dice > 0.9, dice


def test_threshold_mask_on_tight_crop_with_lungs_touching_border() -> None:
    """A crop that cuts through both lungs: the lungs must still be found, the tissue not."""
    hu, lab = phantom.make_phantom((24, 128, 128), (5.0, 2.0, 2.0), seed=3)
    crop = hu[:, 30:100, 20:108]  # cuts the body outline and the lungs
    ref = lab[:, 30:100, 20:108] > 0
    assert ref[:, :, 0].any() or ref[:, :, -1].any()
    mask = lung_mask_from_hu(crop.astype(np.float32), spacing_zyx=(5.0, 2.0, 2.0))
    dice = 2 * (mask & ref).sum() / (mask.sum() + ref.sum())
    assert dice > 0.9, dice


def test_phantom_layout(tmp_path: Path) -> None:
    out = tmp_path / "ph"
    assert phantom.main(["--out", str(out), "--num-cases", "3", "--shape", "16", "64", "64"]) == 0
    dl = load_datalist(out)
    assert dl["synthetic"] is True
    items = dl["training"] + dl["validation"] + dl["test"]
    assert len(items) == 3 and all(dl[s] for s in ("training", "validation", "test"))
    for item in items:
        assert "synthetic" in item["image"] and item["synthetic"] is True
        assert sitk.GetArrayFromImage(sitk.ReadImage(str(out / item["label"]))).any()


def _copy_cip(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    (data / "ct/chest").mkdir(parents=True)
    shutil.copytree(DATA / "ct/chest/cip_copdgene_64", data / "ct/chest/cip_copdgene_64")
    return data


@needs_ct
def test_missing_label_is_clear_and_leaves_nothing(tmp_path: Path) -> None:
    data = _copy_cip(tmp_path)
    (data / "ct/chest/cip_copdgene_64/wholeLung-64.nrrd").unlink()
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="wholeLung-64.nrrd"):
        lung_ct.prepare(data, out)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["data"]


@needs_ct
def test_mismatched_shapes_and_corrupt_file(tmp_path: Path) -> None:
    data = _copy_cip(tmp_path)
    label = data / "ct/chest/cip_copdgene_64/wholeLung-64.nrrd"
    img = sitk.ReadImage(str(label))
    sitk.WriteImage(img[:, :, :40], str(label))
    with pytest.raises(ValueError, match="shape mismatch.*wholeLung-64.nrrd"):
        lung_ct.prepare(data, tmp_path / "out")
    label.write_bytes(b"NRRD0004\nthis is not an image\n")
    with pytest.raises(ValueError, match="cannot read .*wholeLung-64.nrrd"):
        lung_ct.prepare(data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@needs_ct
def test_unknown_label_map_rejected(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ts = data / "ct/totalsegmentator"
    ts.mkdir(parents=True)
    for f in ("example_ct_sm.nii.gz", "example_seg.nii.gz"):
        os.symlink(DATA / "ct/totalsegmentator" / f, ts / f)
    names = json.loads((DATA / "ct/totalsegmentator/labels_v2.json").read_text())
    names["10"] = "liver"
    (ts / "labels_v2.json").write_text(json.dumps(names))
    with pytest.raises(ValueError, match="unknown label map"):
        lung_ct.prepare(data, tmp_path / "out")


def test_missing_data_dir_is_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="monai_smia.apps.data_prep.phantom"):
        lung_ct.prepare(tmp_path, tmp_path / "out")
    assert lung_ct.main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2


@needs_ct
def test_rerun_is_up_to_date_and_atomic_rebuild(lung_out: Path, tmp_path: Path) -> None:
    before = (lung_out / "datalist.json").stat().st_mtime_ns
    lung_ct.prepare(DATA, lung_out)  # same settings: nothing rewritten
    assert (lung_out / "datalist.json").stat().st_mtime_ns == before
    # a failing rebuild into an existing output leaves the old output untouched
    data = _copy_cip(tmp_path)
    (data / "ct/chest/cip_copdgene_64/wholeLung-64.nrrd").write_bytes(b"garbage")
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError, match="not written by monai-smia"):  # a folder data_prep did not write
        lung_ct.prepare(DATA, out, overwrite=True)
    (out / OWNER_MARKER).write_text("")  # an earlier data_prep output
    with pytest.raises(ValueError):
        lung_ct.prepare(data, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [OWNER_MARKER, "keep.txt"]
