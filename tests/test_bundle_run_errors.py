"""``python -m monai.bundle run`` on the package's configs answers like ``monai-smia``: a settings clash or bad
input is one line on stderr with exit code 2 (no traceback), and a rerun that finds everything stored says so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT, subprocess_env

from monai_smia.apps.data_prep.layout import write_datalist
from monai_smia.bundle import run as bundle_run

BUNDLE = "bundles/retina_dr_cls"
EVALUATE = (
    f"['{BUNDLE}/configs/train.json','monai_smia/apps/evaluate/configs/evaluator.json',"
    f"'{BUNDLE}/configs/evaluate.json']"
)
PREFIX = "python -m monai.bundle run: error: "


@pytest.fixture(scope="module")
def fundus(tmp_path_factory) -> Path:
    """Two 28 x 28 RGB images with grades, in the data_prep layout the retina bundle reads."""
    root = tmp_path_factory.mktemp("fundus")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    items = []
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(root / f"images/test_{i}.png")
        items.append({"image": f"images/test_{i}.png", "label": i})
    write_datalist(root, {"test": items}, name="fundus-fixture", source="random pixels")
    return root


def bundle_run_cmd(config: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run --config_file CONFIG --bundle_root BUNDLE ARGS --device cpu`` in the repository."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, "--bundle_root", BUNDLE, *args]
    return subprocess.run(
        [*cmd, "--device", "cpu"], cwd=REPO_ROOT, capture_output=True, text=True, env=subprocess_env(), timeout=300
    )


def last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = last_line(proc.stderr)
    assert line.startswith(PREFIX), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Failed to" not in line
    for needle in needles:
        assert needle in line, line


def test_attack_config_rerun_and_settings_clash(fundus, tmp_path):
    out = tmp_path / "adv"
    attack = f"{BUNDLE}/configs/attack.json"
    first = bundle_run_cmd(attack, "--input", str(fundus), "--output_dir", str(out), "--num_iter", "1")
    assert first.returncode == 0, first.stderr[-2000:]
    assert last_line(first.stdout).startswith(f"wrote 2 adversarial case(s) to {out}; SMIA eps=1/255")
    assert sorted(p.name for p in out.glob("*_adv.png")) == ["test_0_adv.png", "test_1_adv.png"]
    again = bundle_run_cmd(attack, "--input", str(fundus), "--output_dir", str(out), "--num_iter", "1")
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"retina_dr_cls SMIA: all 2 cases already stored in {out}; nothing to do." in again.stdout
    clash = bundle_run_cmd(attack, "--input", str(fundus), "--output_dir", str(out), "--num_iter", "2")
    assert_one_line_error(clash, f"output folder '{out}' holds results of other settings", "num_iter: 1 there, 2 now")


def test_evaluate_config_rerun_and_settings_clash(fundus, tmp_path):
    out = tmp_path / "eval"
    args = ("--dataset_dir", str(fundus), "--output_dir", str(out), "--attack", "FGSM")
    first = bundle_run_cmd(EVALUATE, *args, "--num_iter", "1")
    assert first.returncode == 0, first.stderr[-2000:]
    assert len(list((out / "cases").rglob("*.json"))) == 2
    again = bundle_run_cmd(EVALUATE, *args, "--num_iter", "1")
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"retina_dr_cls FGSM eps=1/255: all 2 cases already stored in {out}; nothing to do." in again.stdout
    clash = bundle_run_cmd(EVALUATE, *args, "--num_iter", "2")
    assert_one_line_error(clash, "num_iter: 1 there, 2 now")


def test_evaluate_config_bad_input(fundus, tmp_path):
    missing = tmp_path / "no_such_folder"
    proc = bundle_run_cmd(EVALUATE, "--dataset_dir", str(missing), "--output_dir", str(tmp_path / "o"))
    assert_one_line_error(proc, f"dataset folder '{missing}' does not exist")
    proc = bundle_run_cmd(EVALUATE, "--dataset_dir", str(fundus), "--output_dir", str(tmp_path / "o"), "--attack", "X")
    assert_one_line_error(proc, "unknown attack(s) 'X'; choose from noise, FGSM")
    assert not (tmp_path / "o").exists()


def test_hook_only_in_the_bundle_command(monkeypatch, capsys):
    """Elsewhere (here: pytest) the hook is not installed; installed, it answers in one line, or with the
    traceback under MONAI_SMIA_DEBUG=1."""
    before = sys.excepthook
    bundle_run.exit_on_error()
    assert sys.excepthook is before and not bundle_run.is_bundle_command()
    err = RuntimeError("Failed to instantiate")
    err.__cause__ = ValueError("eps: must be > 0")
    with pytest.raises(SystemExit) as stop:
        bundle_run._answer(RuntimeError, err, None)
    assert stop.value.code == 2 and capsys.readouterr().err == PREFIX + "eps: must be > 0\n"
    with pytest.raises(SystemExit) as stop:
        bundle_run._answer(KeyboardInterrupt, KeyboardInterrupt(), None)
    assert stop.value.code == 130 and "interrupted; rerun the same command" in capsys.readouterr().err
    monkeypatch.setenv(bundle_run.DEBUG_ENV, "1")
    bundle_run._answer(ValueError, ValueError("shown in full"), None)
    assert "ValueError: shown in full" in capsys.readouterr().err
