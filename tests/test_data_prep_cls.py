"""data_prep for the classification victims: MedMNIST npz, MNIST idx, and the download/manual converters.

Runs on the real files in ``../shared/data`` (or ``$MONAI_SMIA_DATA``) and skips with a reason when they are
absent. The converters for datasets that need an account (APTOS-2019, Kaggle DR, EAD-2019) and the COVID-19 CT
record are exercised on tiny files written in a temporary folder with the same names and formats, since those
datasets cannot be stored here.
"""

from __future__ import annotations

import gzip
import json
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from monai_smia.apps.data_prep import download as dl
from monai_smia.apps.data_prep import fetch as fetch_module
from monai_smia.apps.data_prep import medmnist as mm
from monai_smia.apps.data_prep import mnist as mn
from monai_smia.apps.data_prep import paper_datasets
from monai_smia.apps.data_prep.layout import (
    atomic_file,
    load_datalist,
    write_json_atomic,
)

Image = pytest.importorskip("PIL.Image")

DATA = Path(os.environ.get("MONAI_SMIA_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
NPZ = {
    "retinamnist": "fundus/retinamnist.npz",
    "pneumoniamnist": "xray/pneumoniamnist.npz",
    "breastmnist": "ultrasound/breastmnist.npz",
}
NUM_CLASSES = {"retinamnist": 5, "pneumoniamnist": 2, "breastmnist": 2}
SPLIT_OF = {"training": "train", "validation": "val", "test": "test"}


def _need(rel: str) -> Path:
    path = DATA / rel
    if not path.exists():
        pytest.skip(f"real data {rel} not found under {DATA} (set MONAI_SMIA_DATA to the shared data folder)")
    return path


def _no_leftovers(parent: Path, name: str) -> None:
    stray = [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]
    assert not stray, f"temporary folders left behind: {stray}"


@pytest.fixture(scope="module", params=sorted(NPZ))
def medmnist_out(request, tmp_path_factory):
    dataset = request.param
    npz = _need(NPZ[dataset])
    out = tmp_path_factory.mktemp(dataset) / "prepared"
    mm.prepare_medmnist(DATA, out, dataset)
    return dataset, npz, out


def test_medmnist_layout_matches_npz(medmnist_out):
    dataset, npz, out = medmnist_out
    obj = load_datalist(out)
    assert obj["name"] == dataset and obj["synthetic"] is False and obj["num_classes"] == NUM_CLASSES[dataset]
    with np.load(npz) as src:
        for split, key in SPLIT_OF.items():
            images, labels = src[f"{key}_images"], src[f"{key}_labels"].reshape(-1)
            items = obj[split]
            assert len(items) == len(labels), split
            got = np.array([it["label"] for it in items])
            assert all(isinstance(it["label"], int) for it in items)
            assert got.min() >= 0 and got.max() < NUM_CLASSES[dataset]
            np.testing.assert_array_equal(got, labels)  # official order and labels kept
            for n in (0, len(items) // 2, len(items) - 1):  # pixels survive the PNG round trip
                png = np.asarray(Image.open(out / items[n]["image"]))
                np.testing.assert_array_equal(png, images[n].reshape(png.shape))
    assert (out / "images" / "train_00000.png").is_file()


def test_medmnist_accepts_npz_path_and_is_deterministic(medmnist_out, tmp_path):
    dataset, npz, out = medmnist_out
    again = tmp_path / "again"
    mm.prepare_medmnist(npz, again, dataset)  # direct path to the .npz
    assert json.loads((again / "datalist.json").read_text()) == json.loads((out / "datalist.json").read_text())
    for name in ("train_00000.png", "test_00003.png"):
        assert (again / "images" / name).read_bytes() == (out / "images" / name).read_bytes()


def test_medmnist_rerun_is_a_noop_and_force_rebuilds(tmp_path, capsys):
    _need(NPZ["breastmnist"])
    out = tmp_path / "b"
    mm.prepare_medmnist(DATA, out, "breastmnist")
    stamp = (out / "datalist.json").stat().st_mtime_ns
    mm.prepare_medmnist(DATA, out, "breastmnist")
    assert "up to date" in capsys.readouterr().out
    assert (out / "datalist.json").stat().st_mtime_ns == stamp
    (out / "images" / "train_00000.png").unlink()
    mm.prepare_medmnist(DATA, out, "breastmnist", force=True)
    assert (out / "images" / "train_00000.png").is_file()
    _no_leftovers(tmp_path, "b")


def test_medmnist_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="retinamnist.npz"):
        mm.find_npz(tmp_path, "retinamnist")
    with pytest.raises(ValueError, match="unknown --dataset"):
        mm.find_npz(tmp_path, "octmnist")
    corrupt = tmp_path / "retinamnist.npz"
    corrupt.write_bytes(b"PK\x03\x04 this is not really a zip archive")
    with pytest.raises(ValueError, match="not a readable .npz"):
        mm.load_npz(corrupt, "retinamnist")
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (4, 28, 28, 3), dtype=np.uint8)
    good = {f"{s}_images": imgs for s in ("train", "val", "test")} | {
        f"{s}_labels": np.zeros((4, 1), np.uint8) for s in ("train", "val", "test")
    }
    missing = {k: v for k, v in good.items() if k != "val_labels"}
    np.savez(tmp_path / "missing.npz", **missing)
    with pytest.raises(ValueError, match="val_labels"):
        mm.load_npz(tmp_path / "missing.npz", "retinamnist")
    np.savez(tmp_path / "range.npz", **(good | {"test_labels": np.full((4, 1), 7, np.uint8)}))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\]"):
        mm.load_npz(tmp_path / "range.npz", "retinamnist")
    np.savez(tmp_path / "grey.npz", **(good | {"train_images": imgs[..., 0]}))
    with pytest.raises(ValueError, match="3 channel"):
        mm.load_npz(tmp_path / "grey.npz", "retinamnist")
    np.savez(tmp_path / "len.npz", **(good | {"train_labels": np.zeros((3, 1), np.uint8)}))
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        mm.load_npz(tmp_path / "len.npz", "retinamnist")
    # a failed conversion leaves an existing output folder untouched and no temporary folder behind
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous")
    with pytest.raises(ValueError):
        mm.prepare_medmnist(tmp_path / "range.npz", out, "retinamnist")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    _no_leftovers(tmp_path, "out")


def test_interrupted_conversion_leaves_nothing(tmp_path, monkeypatch):
    _need(NPZ["breastmnist"])
    calls = {"n": 0}
    real = mm.write_png_items

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real(*args, **kwargs)

    monkeypatch.setattr(mm, "write_png_items", failing)
    with pytest.raises(KeyboardInterrupt):
        mm.prepare_medmnist(DATA, tmp_path / "half", "breastmnist")
    assert not (tmp_path / "half").exists()
    _no_leftovers(tmp_path, "half")


# ---------------------------------------------------------------------------------------------------------- MNIST


@pytest.fixture(scope="module")
def mnist_out(tmp_path_factory):
    _need("digits/mnist/t10k-images-idx3-ubyte.gz")
    out = tmp_path_factory.mktemp("mnist") / "prepared"
    mn.prepare_mnist(DATA, out)
    return out


def test_mnist_split_sizes_stratified_disjoint(mnist_out):
    obj = load_datalist(mnist_out)
    sizes = {s: len(obj[s]) for s in ("training", "validation", "test")}
    assert sum(sizes.values()) == 10000
    for split, expected in {"training": 7000, "validation": 1000, "test": 2000}.items():
        assert abs(sizes[split] - expected) <= 10, sizes
    indices = [it["index"] for s in ("training", "validation", "test") for it in obj[s]]
    assert sorted(indices) == list(range(10000))  # disjoint and complete
    labels = mn.read_idx(DATA / "digits/mnist/t10k-labels-idx1-ubyte.gz", mn.LABELS_MAGIC)
    overall = np.bincount(labels, minlength=10) / len(labels)
    for split in ("training", "validation", "test"):
        got = np.array([it["label"] for it in obj[split]])
        assert got.min() >= 0 and got.max() <= 9
        np.testing.assert_array_equal(got, labels[[it["index"] for it in obj[split]]])
        np.testing.assert_allclose(np.bincount(got, minlength=10) / len(got), overall, atol=0.005)


def test_mnist_pixels_and_determinism(mnist_out, tmp_path):
    images = mn.read_idx(DATA / "digits/mnist/t10k-images-idx3-ubyte.gz", mn.IMAGES_MAGIC)
    assert images.shape == (10000, 28, 28)
    obj = load_datalist(mnist_out)
    item = obj["test"][5]
    np.testing.assert_array_equal(np.asarray(Image.open(mnist_out / item["image"])), images[item["index"]])
    again = tmp_path / "again"
    mn.prepare_mnist(DATA / "digits" / "mnist", again)
    assert json.loads((again / "datalist.json").read_text()) == obj


def test_mnist_bad_input(tmp_path):
    src = _need("digits/mnist/t10k-images-idx3-ubyte.gz").parent
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.gz"):
        mn.find_mnist_files(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    (bad / "t10k-labels-idx1-ubyte.gz").write_bytes((src / "t10k-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(ValueError, match="not a readable gzip"):
        mn.prepare_mnist(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    (swapped / "t10k-images-idx3-ubyte.gz").write_bytes((src / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (swapped / "t10k-labels-idx1-ubyte.gz").write_bytes((src / "t10k-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(ValueError, match="magic number 2049, expected 2051"):
        mn.prepare_mnist(swapped, tmp_path / "out")
    truncated = tmp_path / "trunc.gz"
    with gzip.open(truncated, "wb") as f:
        f.write(gzip.decompress((src / "t10k-labels-idx1-ubyte.gz").read_bytes())[:500])
    with pytest.raises(ValueError, match="header says"):
        mn.read_idx(truncated, mn.LABELS_MAGIC)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------------- download


def _offline(*args, **kwargs):
    raise urllib.error.URLError("simulated: no network")


@pytest.mark.parametrize("dataset", ["retinamnist", "pneumoniamnist", "breastmnist", "mnist", "covid19_ct"])
def test_download_offline_stops_with_manual_alternative(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_module, "_fetch_url", _offline)
    out, cache = tmp_path / "out", tmp_path / "cache"
    with pytest.raises(dl.DownloadUnavailableError, match="Manual alternative") as err:
        dl.prepare_dataset(dataset, out, cache=cache)
    assert "no network" in str(err.value) and "python -m monai_smia.apps.data_prep" in str(err.value)
    assert not out.exists()
    assert not [p for p in cache.rglob("*") if p.is_file()], "partial downloads left in the cache"


def test_download_cli_offline_message(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_module, "_fetch_url", _offline)
    with pytest.raises(SystemExit, match="zenodo.org/records/10519652"):
        dl.main(["--dataset", "retinamnist", "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c")])
    for dataset in ("aptos2019", "kaggle_dr", "ead2019"):
        with pytest.raises(SystemExit, match="needs an account"):
            dl.main(["--dataset", dataset, "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_download_uses_cache_and_manual_file(tmp_path, monkeypatch):
    npz = _need(NPZ["retinamnist"])
    monkeypatch.setattr(fetch_module, "_fetch_url", _offline)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "retinamnist.npz").symlink_to(npz.resolve())  # a cached copy: no network needed
    dl.prepare_dataset("retinamnist", tmp_path / "a", cache=cache)
    dl.prepare_dataset("retinamnist", tmp_path / "b", cache=tmp_path / "empty", manual_dir=npz)
    assert len(load_datalist(tmp_path / "a", "test")) == len(load_datalist(tmp_path / "b", "test")) == 400


def _nifti(path: Path, data: np.ndarray) -> None:
    nib = pytest.importorskip("nibabel")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 5.0, 1.0])), str(path))


def test_covid19_ct_converter_pairs_and_binarises(tmp_path):
    """Files named like Zenodo record 3757476 (tiny volumes written here; the real record is not stored)."""
    src = tmp_path / "zenodo"
    cases = [
        "coronacases_org_001",
        "coronacases_org_002",
        "coronacases_org_003",
        "radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm",
        "radiopaedia_org_covid-19-pneumonia-7_85703_0-dcm",
    ]
    masks = ["coronacases_001", "coronacases_002", "coronacases_003", "radiopaedia_4_85506_1", "radiopaedia_7_85703_0"]
    rng = np.random.default_rng(0)
    for c, m in zip(cases, masks):
        _nifti(src / "COVID-19-CT-Seg_20cases" / f"{c}.nii.gz", rng.integers(-1000, 400, (8, 8, 3)).astype(np.int16))
        _nifti(src / "Lung_Mask" / f"{m}.nii.gz", rng.integers(0, 3, (8, 8, 3)).astype(np.uint8))
        # infection masks share the lung masks' names; they must not be taken for lung masks
        _nifti(src / "Lung_and_Infection_Mask" / f"{m}.nii.gz", np.full((8, 8, 3), 3, np.uint8))
        _nifti(src / "Infection_Mask" / f"{m}.nii.gz", np.zeros((8, 8, 3), np.uint8))
    out = tmp_path / "covid"
    dl.prepare_dataset("covid19_ct", out, manual_dir=src)
    obj = load_datalist(out)
    items = obj["training"] + obj["validation"] + obj["test"]
    assert sorted(it["patient"] for it in items) == sorted(paper_datasets._case_key(m) for m in masks)
    assert all(obj[s] for s in ("training", "validation", "test"))
    nib = pytest.importorskip("nibabel")
    for it in items:  # binarised copy of the Lung_Mask volume (labels 1 and 2 -> 1)
        lab = np.asarray(nib.load(str(out / it["label"])).dataobj)
        mask_name = masks[[paper_datasets._case_key(m) for m in masks].index(it["patient"])]
        src_mask = np.asarray(nib.load(str(src / "Lung_Mask" / f"{mask_name}.nii.gz")).dataobj)
        np.testing.assert_array_equal(lab, (src_mask > 0).astype(np.uint8))
    (src / "Lung_Mask" / "radiopaedia_7_85703_0.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="no lung mask for radiopaedia_org_covid-19-pneumonia-7"):
        dl.prepare_dataset("covid19_ct", tmp_path / "covid2", manual_dir=src)
    _nifti(src / "Lung_Mask" / "radiopaedia_7_85703_0.nii.gz", np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        dl.prepare_dataset("covid19_ct", tmp_path / "covid2", manual_dir=src)
    assert not (tmp_path / "covid2").exists()


def test_kaggle_dr_converter_keeps_eyes_together(tmp_path):
    """A folder laid out like the Kaggle DR download (tiny JPEGs written here)."""
    src = tmp_path / "kaggle"
    (src / "train").mkdir(parents=True)
    rows = ["image,level"]
    rng = np.random.default_rng(1)
    for patient in range(30):
        for eye in ("left", "right"):
            name = f"{patient}_{eye}"
            Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(src / "train" / f"{name}.jpeg")
            rows.append(f"{name},{(patient + (eye == 'right')) % 5}")
    (src / "trainLabels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "dr"
    dl.prepare_dataset("kaggle_dr", out, manual_dir=src, size=32)
    obj = load_datalist(out)
    split_of = {}
    for split in ("training", "validation", "test"):
        for it in obj[split]:
            assert split_of.setdefault(it["patient"], split) == split, "the two eyes of a patient were split apart"
            assert np.asarray(Image.open(out / it["image"])).shape == (32, 32, 3)
            assert 0 <= it["label"] <= 4
    assert len(split_of) == 30
    (src / "train" / "3_left.jpeg").unlink()
    with pytest.raises(FileNotFoundError, match="3_left.jpeg"):
        dl.prepare_dataset("kaggle_dr", tmp_path / "dr2", manual_dir=src, size=32)
    assert not (tmp_path / "dr2").exists()


def test_atomic_file_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "sub" / "summary.json"
    write_json_atomic(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_file(target, suffix=".json") as tmp:
            tmp.write_text('{"a": 2, "half')
            raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["summary.json"]
