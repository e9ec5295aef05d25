"""The classification bundles ``retina_dr_cls`` and ``mnist_cls`` on real data.

- a one-epoch training smoke run of ``configs/train.json`` on a small subset, through the documented
  ``python -m monai.bundle run`` command, writing its checkpoint to a temporary folder;
- the committed ``models/model.pt`` re-measured on the full test split with ``configs/evaluate.json`` merged onto
  ``configs/train.json`` (the clean condition):
  top-1 accuracy must equal ``metadata.json`` ``eval_metrics`` and meet the issue's target;
- ``configs/inference.json`` writes one row of class probabilities per image.

Skips with a reason when ``../shared/data`` (or ``$MONAI_SMIA_DATA``) is absent.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import subprocess_env

from monai_smia.apps.evaluate.wiring import EVALUATOR_CONFIG
from monai_smia.bundle.loading import load_split, load_weights

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MONAI_SMIA_DATA", ROOT / ".." / "shared" / "data"))
BUNDLES = {
    # bundle: (data_prep module, extra args, source file, top-1 target on the test split)
    "retina_dr_cls": (
        "monai_smia.apps.data_prep.medmnist",
        ["--dataset", "retinamnist"],
        "fundus/retinamnist.npz",
        0.50,
    ),
    "mnist_cls": ("monai_smia.apps.data_prep.mnist", [], "digits/mnist/t10k-images-idx3-ubyte.gz", 0.98),
}
TOLERANCE = 0.003  # one test image of RetinaMNIST is 0.0025; float summation order may flip a borderline argmax


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module", params=sorted(BUNDLES))
def prepared(request, tmp_path_factory):
    bundle = request.param
    module, extra, source, _ = BUNDLES[bundle]
    if not (DATA / source).exists():
        pytest.skip(f"real data {source} not found under {DATA} (set MONAI_SMIA_DATA)")
    out = tmp_path_factory.mktemp(bundle) / "data"
    _run(["-m", module, "--data-dir", str(DATA), "--out", str(out), *extra])
    return bundle, out


def _bundle_cmd(bundle: str, config: str, dataset_dir: Path, **overrides: object) -> list[str]:
    args = ["-m", "monai.bundle", "run", "--config_file", f"bundles/{bundle}/configs/{config}.json",
            "--bundle_root", f"bundles/{bundle}", "--dataset_dir", str(dataset_dir),
            "--logging_file", f"bundles/{bundle}/configs/logging.conf"]  # fmt: skip
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    return args


def _network(bundle: str) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(ROOT / "bundles" / bundle)
    return parser.get_parsed_content("network_def")


def test_one_epoch_training_smoke(prepared, tmp_path):
    bundle, data = prepared
    ckpt = tmp_path / "ckpt"
    proc = _run(
        _bundle_cmd(bundle, "train", data, max_epochs=1, max_train_items=96, max_val_items=48, train_ckpt_dir=ckpt)
    )
    log = proc.stdout + proc.stderr
    assert "val_accuracy" in log and "train_accuracy" in log
    files = sorted(p.name for p in ckpt.iterdir())
    assert files == ["model.pt"], files  # best-validation checkpoint, written to --train_ckpt_dir, not into the bundle
    net = load_weights(_network(bundle), ckpt / "model.pt")
    assert not net.training
    with torch.no_grad():
        out = net(torch.rand(2, net.conv1.in_channels, 28, 28))
    assert out.shape == (2, len(json.loads((data / "datalist.json").read_text())["class_names"]))


def test_committed_checkpoint_matches_eval_metrics(prepared, tmp_path):
    bundle, data = prepared
    meta = json.loads((ROOT / "bundles" / bundle / "configs" / "metadata.json").read_text())
    expected = meta["eval_metrics"]["test_top1_accuracy"]
    # evaluate.json (a train.json override) for the clean condition: its records give the victim's test top-1
    args = _bundle_cmd(bundle, "train", data, output_dir=tmp_path, attack="clean", device="cpu")
    args[args.index("--config_file") + 1] = (
        f"['bundles/{bundle}/configs/train.json','{EVALUATOR_CONFIG}','bundles/{bundle}/configs/evaluate.json']"
    )
    _run(args)
    clean = [json.loads(p.read_text()) for p in (tmp_path / "cases" / "clean").glob("*/*.json")]
    measured = {"accuracy": sum(r["top1"] for r in clean) / len(clean)}
    assert len(clean) == len(load_split(data, "test"))
    assert abs(measured["accuracy"] - expected) <= TOLERANCE, (measured, expected)
    assert measured["accuracy"] >= BUNDLES[bundle][3], f"{bundle} misses its accuracy target: {measured}"

    # the same number without the bundle machinery: argmax of the network on every test image
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, ScaleIntensityRange

    net = load_weights(_network(bundle), ROOT / "bundles" / bundle / "models" / "model.pt")
    load = Compose(
        [LoadImage(reader="PILReader", image_only=True), EnsureChannelFirst(), ScaleIntensityRange(0, 255, 0, 1)]
    )
    items = load_split(data, "test")
    x = torch.stack([torch.as_tensor(load(it["image"])) for it in items]).float()
    y = torch.tensor([it["label"] for it in items])
    with torch.no_grad():
        top1 = (net(x).argmax(1) == y).float().mean().item()
    assert abs(top1 - measured["accuracy"]) <= TOLERANCE


def test_inference_writes_probabilities(prepared, tmp_path):
    bundle, data = prepared
    _run(_bundle_cmd(bundle, "inference", data, output_dir=tmp_path, max_items=8))
    with open(tmp_path / "predictions.csv") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 8
    for row in rows:
        assert row[0].endswith(".png")
        probs = [float(v) for v in row[1:]]
        assert abs(sum(probs) - 1.0) < 1e-4 and min(probs) >= 0.0


def test_load_split_bad_input(prepared, tmp_path):
    bundle, data = prepared
    with pytest.raises(FileNotFoundError, match="datalist.json not found"):
        load_split(tmp_path, "training")
    with pytest.raises(ValueError, match="unknown split"):
        load_split(data, "train")
    obj = json.loads((data / "datalist.json").read_text())
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "images").symlink_to(data / "images")
    obj["training"][3]["label"] = 99
    (broken / "datalist.json").write_text(json.dumps(obj))
    with pytest.raises(ValueError, match=r"training\[3\] has label 99"):
        load_split(broken, "training", num_classes=10)
    obj["training"][3]["image"] = "images/does_not_exist.png"
    (broken / "datalist.json").write_text(json.dumps(obj))
    with pytest.raises(FileNotFoundError, match="does_not_exist.png"):
        load_split(broken, "training")
    with pytest.raises(FileNotFoundError, match="train the bundle first"):
        load_weights(_network(bundle), tmp_path / "missing.pt")
