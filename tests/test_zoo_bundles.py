"""Unmodified bundles in the model zoo's shapes (tests/zoo_fixtures.py) through the CLI, on a Decathlon
task folder made from real CT: evaluate.json as a train.json override, a budget in HU derived from the
bundle's own ScaleIntensityRanged window, bounds from its clipping, cases from its own data keys or
dataset.json, an inference.json-only bundle attacked label-free, and the errors a bundle without a
budget or a window gets."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from zoo_fixtures import WINDOW, decathlon_spleen, without_data_keys, zoo_bundle

from monai_smia.cli import main

HU_SCALE = (WINDOW["b_max"] - WINDOW["b_min"]) / (WINDOW["a_max"] - WINDOW["a_min"])


@pytest.fixture(scope="module")
def task(data_dir, tmp_path_factory) -> Path:
    return decathlon_spleen(data_dir, tmp_path_factory.mktemp("decathlon") / "Task09_Spleen")


@pytest.fixture(scope="module")
def spleen(tmp_path_factory) -> Path:
    return zoo_bundle(tmp_path_factory.mktemp("zoo") / "spleen_ct_segmentation")


def _args(bundle: Path, task: Path, out: Path, *extra: str) -> list[str]:
    base = ["evaluate", "--bundle", str(bundle), "--dataset-dir", str(task), "--output", str(out)]
    return [*base, "--attacks", "FGSM", "SMIA", "--num-iter", "2", "--device", "cpu", *extra]


def test_train_override_bundle_evaluates_with_a_hu_budget(spleen, task, tmp_path):
    out = tmp_path / "out"
    assert main(_args(spleen, task, out, "--eps", "20", "--eps-unit", "HU")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["clean", "FGSM", "SMIA"]
    assert summary["clean"]["num_cases"] == 1  # the bundle's own validate data: the last labelled case
    assert 0 < summary["clean"]["dice"] <= 1
    for name in ("FGSM", "SMIA"):
        assert summary[name]["linf"] == pytest.approx(20.0, rel=1e-4)  # reported back in HU
        assert 0 <= summary[name]["dice"] < summary["clean"]["dice"]  # the attack moved the prediction away
    prov = json.loads((out / "provenance.json").read_text())
    settings = prov["attack_settings"]
    assert settings["eps_scale"] == pytest.approx(HU_SCALE)
    assert settings["eps_scale_from"]["window"]["a_min"] == WINDOW["a_min"]
    assert settings["bounds"] == [0.0, 1.0] and "clip" in settings["bounds_from"]
    assert "validate#dataset#data" in prov["data_source"]["cases_from"]


def test_bundle_without_a_budget_needs_eps(spleen, task, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args(spleen, task, out)) == 2
    err = capsys.readouterr().err
    assert "no default eps: pass --eps" in err and "spleen_ct_segmentation" in err
    assert not out.exists()


def test_hu_unit_needs_a_window(spleen, task, tmp_path, capsys):
    cfg = spleen.parent / "nowindow"
    zoo_bundle(cfg)
    train = json.loads((cfg / "configs" / "train.json").read_text())
    train["train"]["deterministic_transforms"] = [
        t for t in train["train"]["deterministic_transforms"] if t["_target_"] != "ScaleIntensityRanged"
    ]
    (cfg / "configs" / "train.json").write_text(json.dumps(train))
    assert main(_args(cfg, task, tmp_path / "o", "--eps", "20", "--eps-unit", "HU")) == 2
    err = capsys.readouterr().err
    assert "--eps-unit 'HU'" in err and "ScaleIntensityRange" in err


def test_decathlon_folder_feeds_a_bundle_without_data_keys(spleen, task, tmp_path, capsys):
    """A bundle whose train.json has no validate data reads the Decathlon dataset.json instead."""
    bundle = spleen.parent / "nodata"
    zoo_bundle(bundle)
    train = json.loads((bundle / "configs" / "train.json").read_text())
    del train["validate"]["dataset"]
    (bundle / "configs" / "train.json").write_text(json.dumps(train))
    out = tmp_path / "out"
    assert main(_args(bundle, task, out, "--eps", "0.05")) == 2  # its evaluate.json overrides validate#dataset
    err = capsys.readouterr().err
    assert "evaluate.json overrides" in err and "train.json" in err and not out.exists()
    override = json.loads((bundle / "configs" / "evaluate.json").read_text())
    del override["validate#dataset#cache_rate"]
    (bundle / "configs" / "evaluate.json").write_text(json.dumps(override))
    assert main(_args(bundle, task, out, "--eps", "0.05", "--split", "training", "--max-cases", "2")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clean"]["num_cases"] == 2 and summary["SMIA"]["linf"] == pytest.approx(0.05, rel=1e-4)
    assert "dataset.json" in json.loads((out / "provenance.json").read_text())["data_source"]["cases_from"]


def test_inference_only_bundle_is_attacked_label_free(task, tmp_path):
    bundle = zoo_bundle(tmp_path / "infer_only", shape="inference_only")
    out = tmp_path / "adv"
    src = task / "imagesTs" / "spleen_3.nii.gz"
    before = src.read_bytes()
    rc = main(
        [
            "attack",
            "--bundle",
            str(bundle),
            "--input",
            str(src),
            "--output",
            str(out),
            "--eps",
            "20",
            "--eps-unit",
            "HU",
            "--num-iter",
            "2",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    adv = np.asarray(nib.load(str(out / "spleen_3_adv.nii.gz")).dataobj, dtype=np.float64)
    ref = np.asarray(nib.load(str(src)).dataobj, dtype=np.float64)
    assert np.abs(adv - ref).max() <= 20.0 + 1e-3 and np.abs(adv - ref).max() > 1.0
    assert src.read_bytes() == before
    record = json.loads(next((out / "cases").rglob("*.json")).read_text())
    assert record["settings"]["label_free"] is True


def _hostile_pickle(path: Path) -> None:
    import os
    import pickle

    class Hostile:
        def __reduce__(self):
            return (os.system, (f"touch {path.parent / 'PWNED'}",))

    path.write_bytes(pickle.dumps(Hostile()))


@pytest.mark.parametrize("case", ["shapes", "hostile", "device", "cuda", "readonly", "traversal", "no_image"])
def test_bad_input_matrix(case, task, tmp_path, capsys):
    """Each bad input: exit 2, one line naming the file/key/argument, nothing written, inputs unchanged."""
    import os
    import shutil

    bundle = zoo_bundle(tmp_path / "b")
    data = tmp_path / "Task09_Spleen"
    shutil.copytree(task, data)
    extra: list[str] = []
    out = tmp_path / "out"
    named = {"device": "--device 'foo'", "cuda": "--device 'cuda'"}.get(case, "")
    if case == "shapes":
        torch_save = __import__("torch").save
        torch_save({"conv.weight": __import__("torch").zeros(3)}, bundle / "models" / "model.pt")
        named = "does not fit the bundle's network_def"
    elif case == "hostile":
        _hostile_pickle(bundle / "models" / "model.pt")
        named = "not a plain state dict"
    elif case == "device":
        extra = ["--device", "foo"]
    elif case == "cuda":
        if __import__("torch").cuda.is_available():
            pytest.skip("this machine has CUDA")
        extra = ["--device", "cuda"]
    elif case == "readonly":
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write into read-only folders (root)")
        out, named = ro / "out", "cannot write"
    elif case in ("traversal", "no_image"):
        without_data_keys(bundle)
        meta = json.loads((data / "dataset.json").read_text())
        meta["training"][0] = (
            {"image": "../../../etc/passwd"} if case == "traversal" else {"label": "./labelsTr/spleen_1.nii.gz"}
        )
        (data / "dataset.json").write_text(json.dumps(meta))
        extra, named = ["--split", "training"], "leaves the dataset folder" if case == "traversal" else "has no 'image'"
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    args = [
        "evaluate",
        "--bundle",
        str(bundle),
        "--dataset-dir",
        str(data),
        "--output",
        str(out),
        "--eps",
        "20",
        "--eps-unit",
        "HU",
    ]
    assert main([*args, "--num-iter", "2", *(extra or ["--device", "cpu"])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("monai-smia evaluate: error:") and len(err.splitlines()) == 1 and named in err, err
    assert not out.exists() and not (bundle / "models" / "PWNED").exists()
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before


def test_a_case_that_fails_to_load_is_named(spleen, task, tmp_path, capsys):
    """An empty NIfTI as the second case: the error names that file (not the previous batch's), exit 2."""
    import shutil

    bundle = without_data_keys(zoo_bundle(tmp_path / "b"))
    data = tmp_path / "Task09_Spleen"
    shutil.copytree(task, data)
    (data / "imagesTr" / "spleen_2.nii.gz").write_bytes(b"")
    args = ["evaluate", "--bundle", str(bundle), "--dataset-dir", str(data), "--output", str(tmp_path / "out")]
    assert (
        main(
            [
                *args,
                "--eps",
                "20",
                "--eps-unit",
                "HU",
                "--split",
                "training",
                "--attacks",
                "FGSM",
                "--num-iter",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err  # the clean pass's progress bar precedes the error on stderr
    message = err.split("monai-smia evaluate: error:")[-1].strip()
    assert "error:" in err and "\n" not in message and "spleen_2.nii.gz" in message and "spleen_1" not in message, err
