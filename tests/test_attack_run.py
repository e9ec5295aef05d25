"""``monai_smia.apps.attack.run`` and the bundles' ``configs/attack.json`` on real data: CT (NIfTI and a DICOM
series) through the 2D lung bundle, fundus PNGs through retina_dr_cls, digits through mnist_cls.
Checks geometry, budget, DICOM validity, resume, bad inputs and that sources stay byte-identical."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from monai_smia.apps.attack.run import AdversarialWriter, discover_cases, run_attack
from monai_smia.apps.data_prep.layout import write_datalist
from monai_smia.io import load_source_volume

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
EPS_HU = 20.0
CT_NIFTI = "ct/totalsegmentator/example_ct_sm.nii.gz"
CT_DICOM = "ct/chest/lung_pet_ct_dx_A0002"


def _hashes(path: Path) -> dict[str, str]:
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


def _mtimes(path: Path) -> dict[str, int]:
    return {str(f): f.stat().st_mtime_ns for f in sorted(path.rglob("*")) if f.is_file()}


def _within(adv: np.ndarray, src: np.ndarray, eps: float) -> bool:
    tol = 4 * np.spacing(np.abs(src).astype(np.float32) + np.float32(eps)).astype(np.float64)
    return bool((np.abs(adv - src) <= eps + tol).all())


def _records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "cases").rglob("*.json"))]


@pytest.fixture(scope="module")
def lung_bundle(tmp_path_factory) -> Path:
    """A copy of bundles/lung_ct_seg with its trained weights, or seeded untrained ones when it has none yet."""
    root = tmp_path_factory.mktemp("bundle") / "lung_ct_seg"
    shutil.copytree(BUNDLES / "lung_ct_seg" / "configs", root / "configs")
    (root / "models").mkdir()
    trained = BUNDLES / "lung_ct_seg" / "models" / "model.pt"
    if trained.is_file():
        shutil.copy(trained, root / "models" / "model.pt")
    else:
        parser = ConfigParser()
        parser.read_config(str(root / "configs" / "inference.json"))
        torch.manual_seed(0)
        net = parser.get_parsed_content("network_def", instantiate=True)
        torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


@pytest.fixture(scope="module")
def ct_inputs(data_dir, tmp_path_factory) -> Path:
    """A folder with a 6-slice crop of the TotalSegmentator CT (NIfTI) and 4 slices of a chest DICOM series."""
    nifti, dicom = data_dir / CT_NIFTI, data_dir / CT_DICOM
    if not nifti.is_file() or not dicom.is_dir():
        pytest.skip(f"{nifti} or {dicom} is absent")
    folder = tmp_path_factory.mktemp("ct_in")
    img = nib.load(str(nifti))
    nib.save(img.slicer[:, :, 12:18], str(folder / "ts_ct.nii.gz"))  # nibabel keeps the affine of the crop
    series = folder / "chest_a0002"
    series.mkdir()
    for f in sorted(dicom.glob("*.dcm"))[12:16]:
        shutil.copy(f, series / f.name)
    return folder


@pytest.fixture(scope="module")
def ct_run(lung_bundle, ct_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("ct_out") / "adv"
    before = _hashes(ct_inputs)
    summary = run_attack(lung_bundle, ct_inputs, out, num_iter=2, device="cpu", progress=False)
    return out, summary, before


def test_ct_outputs_keep_source_geometry_and_budget(ct_run, ct_inputs):
    out, summary, before = ct_run
    assert summary["num_cases"] == 2 and set(summary["cases"]) == {"ts_ct", "chest_a0002"}
    for case, source in (("ts_ct", ct_inputs / "ts_ct.nii.gz"), ("chest_a0002", ct_inputs / "chest_a0002")):
        values, affine, _ = load_source_volume(source)
        adv_img = nib.load(str(out / f"{case}_adv.nii.gz"))
        pert_img = nib.load(str(out / f"{case}_perturbation.nii.gz"))
        for img in (adv_img, pert_img):
            assert img.shape == values.shape
            assert np.allclose(img.affine, affine, atol=1e-4)
            assert nib.aff2axcodes(img.affine) == nib.aff2axcodes(affine)
            assert np.allclose(img.header.get_zooms()[:3], np.sqrt((affine[:3, :3] ** 2).sum(0)), atol=1e-4)
        if source.is_file():
            src_img = nib.load(str(source))
            assert np.array_equal(adv_img.affine, src_img.affine) and adv_img.shape == src_img.shape
        adv = adv_img.get_fdata(dtype=np.float64)
        assert _within(adv, values, EPS_HU)
        pert = pert_img.get_fdata(dtype=np.float64)
        assert np.allclose(pert, adv - values, atol=1e-3)
        assert np.abs(pert).max() > EPS_HU / 2 and (pert != 0).mean() > 0.1
    assert _hashes(ct_inputs) == before  # inputs byte-identical, nothing added


def test_ct_records_hold_settings_diagnostics_and_errors(ct_run):
    out, summary, _ = ct_run
    records = {r["case_id"]: r for r in _records(out)}
    assert set(records) == {"ts_ct", "chest_a0002"}
    for rec in records.values():
        assert rec["attack"] == "SMIA" and rec["eps"] == EPS_HU and rec["eps_unit"] == "HU"
        assert rec["eps_network"] == pytest.approx(EPS_HU / 1500) and rec["eps_source"] == pytest.approx(EPS_HU)
        assert rec["label_free"] is True and rec["settings"]["num_iter"] == 2
        assert len(rec["diagnostics"]["deviation_loss"]) == 2 and 0 <= rec["diagnostics"]["positive_cosine_share"] <= 1
        assert rec["max_abs_perturbation_source"] <= EPS_HU + 1e-3
        assert rec["max_abs_perturbation_network"] <= EPS_HU / 1500 * (1 + 1e-5)
        assert rec["error_clean"] == 0.0  # label-free: the reference is the clean prediction itself
        assert 0.0 <= rec["error_adversarial"] <= 1.0 and "adversarial" in rec["error_written"]
    dicom = records["chest_a0002"]
    assert set(dicom["outputs"]) == {"adversarial", "perturbation", "dicom"}
    assert dicom["rounding"]["output"] == "dicom" and isinstance(dicom["rounding"]["survives"], bool)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["checkpoint"]["sha256"] and prov["attack_settings"]["attack"] == "SMIA"
    assert summary["max_abs_perturbation_source"] <= EPS_HU + 1e-3


def test_dicom_output_is_one_new_series(ct_run, ct_inputs):
    out, _, _ = ct_run
    src_files = sorted((ct_inputs / "chest_a0002").glob("*.dcm"))
    written = sorted((out / "chest_a0002_adv_dicom").glob("*.dcm"))
    assert len(written) == len(src_files)
    src = {pydicom.dcmread(f).ImagePositionPatient[2]: pydicom.dcmread(f) for f in src_files}
    series = set()
    for f in written:
        ds = pydicom.dcmread(f)
        series.add(ds.SeriesInstanceUID)
        ref = src[ds.ImagePositionPatient[2]]
        assert ds.SeriesInstanceUID != ref.SeriesInstanceUID and ds.SOPInstanceUID != ref.SOPInstanceUID
        assert ds.StudyInstanceUID == ref.StudyInstanceUID and ds.ImageType[0] == "DERIVED"
        assert (ds.Rows, ds.Columns) == (ref.Rows, ref.Columns)
        assert list(map(float, ds.ImageOrientationPatient)) == list(map(float, ref.ImageOrientationPatient))
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        hu_ref = ref.pixel_array * float(ref.RescaleSlope) + float(ref.RescaleIntercept)
        assert np.abs(hu - hu_ref).max() <= EPS_HU and np.abs(hu - hu_ref).max() > 0
    assert len(series) == 1


def test_rerun_skips_finished_cases(ct_run, lung_bundle, ct_inputs):
    out, summary, _ = ct_run
    before = _mtimes(out)
    outputs = {k: v for k, v in before.items() if "/cases/" in k or k.endswith((".nii.gz", ".dcm"))}
    again = run_attack(lung_bundle, ct_inputs, out, num_iter=2, device="cpu", progress=False)
    after = _mtimes(out)
    assert {k: after[k] for k in outputs} == outputs  # no case recomputed or rewritten
    assert len(_records(out)) == 2 and again["cases"] == summary["cases"]


def test_partial_output_folder_resumes(ct_run, lung_bundle, ct_inputs, tmp_path):
    out, _, _ = ct_run
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    # interrupted while writing the DICOM case: no record, a truncated NIfTI and a stray temporary file
    for rec in (partial / "cases").rglob("chest_a0002.json"):
        rec.unlink()
    (partial / "chest_a0002_adv.nii.gz").write_bytes(b"truncated")
    shutil.rmtree(partial / "chest_a0002_adv_dicom")
    (partial / ".chest_a0002_perturbation.nii.gz.tmp").write_bytes(b"x")
    kept = {k: v for k, v in _mtimes(partial).items() if "ts_ct" in k}
    run_attack(lung_bundle, ct_inputs, partial, num_iter=2, device="cpu", progress=False)
    after = _mtimes(partial)
    assert {k: after[k] for k in kept} == kept
    assert len(_records(partial)) == 2
    values, _, _ = load_source_volume(ct_inputs / "chest_a0002")
    adv = nib.load(str(partial / "chest_a0002_adv.nii.gz")).get_fdata(dtype=np.float64)
    assert _within(adv, values, EPS_HU) and np.abs(adv - values).max() > EPS_HU / 2
    assert len(list((partial / "chest_a0002_adv_dicom").glob("*.dcm"))) == 4
    # the same folder with other settings is refused rather than mixed
    with pytest.raises(ValueError, match="eps"):
        run_attack(lung_bundle, ct_inputs, partial, eps=10.0, num_iter=2, device="cpu", progress=False)


@pytest.fixture(scope="module")
def retina_dataset(data_dir, tmp_path_factory) -> Path:
    npz = data_dir / "fundus" / "retinamnist.npz"
    if not npz.is_file():
        pytest.skip(f"{npz} is absent")
    if not (BUNDLES / "retina_dr_cls" / "models" / "model.pt").is_file():
        pytest.skip("bundles/retina_dr_cls/models/model.pt is absent (train the bundle first)")
    data = np.load(npz)
    root = tmp_path_factory.mktemp("retina") / "retinamnist"
    (root / "images").mkdir(parents=True)
    items = []
    for i in range(4):
        name = f"images/test_{i:03d}.png"
        Image.fromarray(data["test_images"][i]).save(root / name)
        items.append({"image": name, "label": int(data["test_labels"][i][0])})
    write_datalist(root, {"test": items}, name="retinamnist-subset", source="MedMNIST v2 RetinaMNIST test[:4]")
    return root


def test_retina_bundle_attack_config_writes_pngs(retina_dataset, tmp_path):
    out = tmp_path / "adv"
    before = _hashes(retina_dataset)
    cmd = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", "bundles/retina_dr_cls/configs/attack.json",
        "--bundle_root", "bundles/retina_dr_cls",
        "--input", str(retina_dataset),
        "--output_dir", str(out),
        "--device", "cpu",
        "--num_iter", "3",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _hashes(retina_dataset) == before
    records = _records(out)
    assert len(records) == 4
    for rec in records:
        assert rec["label_free"] is False and rec["eps"] == 1.0 and rec["eps_unit"] == "/255"
        src = np.asarray(Image.open(retina_dataset / "images" / f"{rec['case_id']}.png"))
        adv = np.asarray(Image.open(out / f"{rec['case_id']}_adv.png"))
        assert adv.dtype == np.uint8 and adv.shape == src.shape == (28, 28, 3)
        diff = adv.astype(int) - src.astype(int)
        assert np.abs(diff).max() == 1 and (diff != 0).mean() > 0.3
        assert np.array_equal(np.load(out / f"{rec['case_id']}_perturbation.npy"), diff.astype(np.float32))
        # the PNG, read back by the bundle, is the attacked input bit for bit (the source-grid attack steps
        # in whole grey levels): fails if the perturbation were written transposed or in the wrong channel
        assert rec["grid"] == "source" and rec["written_deviation_network"]["adversarial"] == 0.0
        assert set(rec["rounding"]) == {"output", "error_float", "error_integer", "survives"}
        assert rec["error_clean"] in (0.0, 1.0) and rec["pred_clean"] and rec["pred_adversarial"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_cases"] == 4 and summary["eps_unit"] == "/255"


def test_inference_only_bundle_attacks_label_free(retina_dataset, tmp_path):
    """A bundle with inference.json but no train.json (as many model-zoo bundles) still works, label-free."""
    root = tmp_path / "zoo_like"
    (root / "models").mkdir(parents=True)
    (root / "configs").mkdir()
    for name in ("inference.json", "metadata.json", "attack.json"):
        shutil.copy(BUNDLES / "retina_dr_cls" / "configs" / name, root / "configs" / name)
    shutil.copy(BUNDLES / "retina_dr_cls" / "models" / "model.pt", root / "models" / "model.pt")
    summary = run_attack(root, retina_dataset, tmp_path / "adv", num_iter=2, device="cpu", progress=False)
    assert summary["num_cases"] == 4
    records = _records(tmp_path / "adv")
    assert all(r["label_free"] and r["error_clean"] == 0.0 for r in records)
    assert all((tmp_path / "adv" / r["outputs"]["adversarial"]).is_file() for r in records)


def _mnist_pngs(data_dir: Path, folder: Path, n: int) -> Path:
    idx = data_dir / "digits" / "mnist" / "t10k-images-idx3-ubyte.gz"
    if not idx.is_file():
        pytest.skip(f"{idx} is absent")
    with gzip.open(idx) as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    folder.mkdir()
    for i in range(n):
        Image.fromarray(raw[i]).save(folder / f"digit_{i}.png")
    return folder


def test_mnist_pngs_label_free_budget_in_grey_levels(data_dir, tmp_path):
    if not (BUNDLES / "mnist_cls" / "models" / "model.pt").is_file():
        pytest.skip("bundles/mnist_cls/models/model.pt is absent (train the bundle first)")
    folder = _mnist_pngs(data_dir, tmp_path / "digits", 3)
    summary = run_attack("mnist_cls", folder, tmp_path / "adv", num_iter=3, device="cpu", progress=False)
    assert summary["num_cases"] == 3 and summary["eps"] == pytest.approx(0.1)
    for i in range(3):
        src = np.asarray(Image.open(folder / f"digit_{i}.png")).astype(int)
        adv = np.asarray(Image.open(tmp_path / "adv" / f"digit_{i}_adv.png")).astype(int)
        assert adv.shape == src.shape == (28, 28)
        assert np.abs(adv - src).max() == 25  # eps 0.1 of [0, 1] = 25.5 grey levels, kept within by flooring
        assert adv.min() >= 0 and adv.max() <= 255


def test_discovery_of_files_series_and_folders(ct_inputs, tmp_path):
    cases, _ = discover_cases(ct_inputs)
    assert [(c.case_id, c.kind) for c in cases] == [("ts_ct", "nifti"), ("chest_a0002", "dicom")]
    one, _ = discover_cases(ct_inputs / "chest_a0002")
    assert [(c.case_id, c.kind) for c in one] == [("chest_a0002", "dicom")]
    one, _ = discover_cases(ct_inputs / "ts_ct.nii.gz")
    assert [(c.case_id, c.kind, c.label) for c in one] == [("ts_ct", "nifti", None)]
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no NIfTI"):
        discover_cases(tmp_path)
    with pytest.raises(ValueError, match="not a NIfTI"):
        discover_cases(tmp_path / "notes.txt")


def test_bad_arguments_name_the_problem(lung_bundle, ct_inputs, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="input"):
        run_attack(lung_bundle, tmp_path / "missing", out)
    with pytest.raises(ValueError, match="unknown attack 'CW'"):
        run_attack(lung_bundle, ct_inputs, out, attack="CW")
    for eps in (0, -20.0):
        with pytest.raises(ValueError, match="eps must be"):
            run_attack(lung_bundle, ct_inputs, out, eps=eps)
    (tmp_path / "not_a_bundle").mkdir()
    with pytest.raises(FileNotFoundError, match="not a MONAI bundle"):
        run_attack(tmp_path / "not_a_bundle", ct_inputs, out)
    with pytest.raises(FileNotFoundError, match="bundle 'no_such_bundle' not found"):
        run_attack("no_such_bundle", ct_inputs, out)
    with pytest.raises(ValueError, match="inside the input"):
        run_attack(lung_bundle, ct_inputs, ct_inputs / "adv")
    empty = tmp_path / "untrained"
    shutil.copytree(lung_bundle / "configs", empty / "configs")
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        run_attack(empty, ct_inputs, out)
    with pytest.raises(ValueError, match="save_dtype"):
        AdversarialWriter(lung_bundle, ct_inputs, out, save_dtype="int8")
    with pytest.raises(ValueError, match="grid must be one of"):
        AdversarialWriter(lung_bundle, ct_inputs, out, grid="voxel")
    assert not out.exists() and not (ct_inputs / "adv").exists()


def test_source_grid_file_carries_exactly_the_attack(ct_run):
    """Read back through the bundle's preprocessing, every written file (float NIfTI, DICOM)
    is the attacked network input bit for bit, so the attack's effect survives in full."""
    out, summary, _ = ct_run
    assert summary["grid"] == "source" and set(summary["survival_ratio"]) == {"nifti", "dicom"}
    for rec in _records(out):
        assert rec["grid"] == rec["settings"]["grid"] == "source" and rec["rounded_after_attack"] is False
        assert rec["lattice"]["scale"] == 1.0 and rec["lattice"]["eps_steps"] == EPS_HU
        assert rec["source_sigma"] == [1.0, 1.0, 0.0]  # in-plane smoothing for the slice-wise network
        assert all(v == 0.0 for v in rec["written_deviation_network"].values())
        views = {v: s["prediction_changed_fraction"] for v, s in rec["survival"].items()}
        assert views["in_memory"] > 0 and set(views.values()) == {views["in_memory"]}
        assert all(r == 1.0 for r in rec["survival_ratio"].values())
        pert = nib.load(str(out / rec["outputs"]["perturbation"])).get_fdata(dtype=np.float64)
        assert np.array_equal(pert, np.round(pert)) and np.abs(pert).max() == EPS_HU  # whole HU steps


def test_integer_output_is_the_optimised_perturbation(ct_run, lung_bundle, ct_inputs, tmp_path):
    """The int16 NIfTI written by a second run carries exactly the perturbation of the float32 run."""
    out, _, _ = ct_run
    src = ct_inputs / "ts_ct.nii.gz"
    run_attack(lung_bundle, src, tmp_path / "int", num_iter=2, save_dtype="source", device="cpu", progress=False)
    adv = nib.load(str(tmp_path / "int" / "ts_ct_adv.nii.gz"))
    assert adv.get_data_dtype() == np.int16
    d_int = np.asarray(adv.dataobj).astype(np.int64) - np.asarray(nib.load(str(src)).dataobj).astype(np.int64)
    d_float = nib.load(str(out / "ts_ct_perturbation.nii.gz")).get_fdata(dtype=np.float64)
    assert np.array_equal(d_int, d_float) and np.abs(d_int).max() == EPS_HU
    rec = _records(tmp_path / "int")[0]
    assert rec["survival_ratio"]["nifti"] == 1.0 and rec["rounding"]["survives"]


def test_network_grid_mode_and_a_rerun_with_another_grid(ct_run, lung_bundle, ct_inputs, tmp_path):
    out, _, _ = ct_run
    with pytest.raises(ValueError, match="grid: 'source' there, 'network' now"):
        run_attack(lung_bundle, ct_inputs, out, num_iter=2, grid="network", device="cpu", progress=False)
    src = ct_inputs / "ts_ct.nii.gz"
    summary = run_attack(lung_bundle, src, tmp_path / "net", num_iter=1, grid="network", device="cpu", progress=False)
    rec = _records(tmp_path / "net")[0]
    assert summary["grid"] == rec["grid"] == "network" and "lattice" not in rec
    values, _, _ = load_source_volume(src)
    adv = nib.load(str(tmp_path / "net" / "ts_ct_adv.nii.gz")).get_fdata(dtype=np.float64)
    assert _within(adv, values, EPS_HU)
    # resampling to the source grid and back does not give the attacked input again
    assert rec["written_deviation_network"]["adversarial"] > 1e-4 and "nifti" in rec["survival"]
