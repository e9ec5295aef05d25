"""The lung CT victim bundles: metadata, network I/O, a training smoke run, committed metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("SimpleITK")
pytest.importorskip("ignite")

from monai.bundle import ConfigParser  # noqa: E402

from monai_smia.apps.data_prep import lung_ct  # noqa: E402
from monai_smia.bundle.evaluate import evaluate_segmentation_bundle  # noqa: E402
from monai_smia.bundle.evaluate import load_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MONAI_SMIA_DATA", ROOT / ".." / "shared" / "data"))
SCHEMA = ROOT / ".." / "shared" / "monai" / "meta_schema_20240725.json"
BUNDLES = ["lung_ct_seg", "lung_ct_seg3d"]
TOLERANCE = 0.01
#: the issue's Dice targets, met on chest CT (threshold and Chest Imaging Platform masks); the
#: TotalSegmentator lung bases of an abdominal scan miss them (see the bundle READMEs)
CHEST_CT_TARGETS = {"lung_ct_seg": 0.90, "lung_ct_seg3d": 0.85}


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def lung_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (DATA / "ct").is_dir():
        pytest.skip(f"real CT not found at {DATA}/ct (set MONAI_SMIA_DATA to the shared data folder)")
    out = tmp_path_factory.mktemp("lung_bundles") / "lung_ct"
    lung_ct.prepare(DATA, out, qc=False)
    return out


@pytest.mark.parametrize("name", BUNDLES)
def test_verify_metadata(name: str) -> None:
    pytest.importorskip("jsonschema")
    if not SCHEMA.is_file():
        pytest.skip(f"metadata schema not found at {SCHEMA}")
    meta = f"bundles/{name}/configs/metadata.json"
    r = _run(["-m", "monai.bundle", "verify_metadata", "--meta_file", meta, "--filepath", str(SCHEMA)])
    assert r.returncode == 0 and "verified with no error" in r.stdout + r.stderr, r.stdout + r.stderr
    with open(ROOT / meta) as f:
        metadata = json.load(f)
    assert metadata["eval_metrics"], "eval_metrics must hold the measured test Dice"
    # the attack converts eps in HU through this window: both configs must name the same one
    for config in ("inference.json", "train.json"):
        with open(ROOT / f"bundles/{name}/configs/{config}") as f:
            assert json.load(f)["hu_window"] == [-1000, 500]


@pytest.mark.parametrize("name", BUNDLES)
def test_verify_net_in_out(name: str) -> None:
    r = _run(
        [
            "-m", "monai.bundle", "verify_net_in_out", "network_def",
            "--meta_file", f"bundles/{name}/configs/metadata.json",
            "--config_file", f"bundles/{name}/configs/inference.json",
            "--bundle_root", f"bundles/{name}", "--device", "cpu", "--n", "2",
        ]
    )
    assert r.returncode == 0 and "data shape of network is verified with no error" in r.stdout + r.stderr, r.stderr[
        -3000:
    ]


@pytest.mark.parametrize("name", BUNDLES)
def test_checkpoint_loads_weights_only(name: str) -> None:
    ckpt = ROOT / "bundles" / name / "models" / "model.pt"
    assert ckpt.stat().st_size <= 10 * 2**20
    parser = ConfigParser()
    parser.read_config(ROOT / "bundles" / name / "configs" / "inference.json")
    parser["bundle_root"] = str(ROOT / "bundles" / name)
    net = load_checkpoint(parser.get_parsed_content("network_def"), ckpt)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    # MONAI's own CheckpointLoader (weights_only=True) reads the same file
    from ignite.engine import Engine
    from monai.handlers import CheckpointLoader

    net2 = parser.get_parsed_content("network_def", lazy=False)
    engine = Engine(lambda e, b: None)
    CheckpointLoader(load_path=str(ckpt), load_dict={"model": net2}).attach(engine)
    engine.run([0], max_epochs=1)
    assert all(torch.equal(before[k], v) for k, v in net2.state_dict().items())


@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLES)
def test_one_epoch_training_smoke(name: str, lung_data: Path, tmp_path: Path) -> None:
    r = _run(
        [
            "-m", "monai.bundle", "run",
            "--config_file", f"bundles/{name}/configs/train.json",
            "--bundle_root", f"bundles/{name}",
            "--dataset_dir", str(lung_data),
            "--train_ckpt_dir", str(tmp_path),
            "--max_epochs", "1", "--val_interval", "1", "--train_repeat", "1",
            "--max_train_items", "1", "--max_val_items", "1", "--num_samples", "2",
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "val_mean_dice" in r.stdout + r.stderr
    ckpt = tmp_path / "model.pt"
    assert ckpt.is_file()
    torch.load(ckpt, weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLES)
def test_committed_eval_metrics_reproduce(name: str, lung_data: Path) -> None:
    with open(ROOT / "bundles" / name / "configs" / "metadata.json") as f:
        claimed = json.load(f)["eval_metrics"]
    measured = evaluate_segmentation_bundle(ROOT / "bundles" / name, lung_data, split="test")
    assert measured["mean_dice"] == pytest.approx(claimed["test_mean_dice"], abs=TOLERANCE)
    for source, value in measured["by_source"].items():
        assert value == pytest.approx(claimed[f"test_dice_{source}"], abs=TOLERANCE), source
    for source in ("hu_threshold", "cip_wholelung"):
        assert measured["by_source"][source] >= CHEST_CT_TARGETS[name], source
