"""``evaluate.json`` as a MONAI evaluator config: an override of train.json's ``validate`` section, run
for one condition with ``python -m monai.bundle run``; its per-case records resume, refuse other
settings, and equal what ``monai-smia evaluate`` stores for the same condition. Also: the shipped
evaluate.json entries are the ones a model-zoo bundle gets, and attacks that do not fit the task are
refused before anything runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, subprocess_env
from monai.bundle import ConfigParser

from monai_smia.apps.evaluate.wiring import (
    EVALUATOR_CONFIG,
    SETTINGS,
    bundle_configs,
    distributed_overrides,
    evaluation_overrides,
)
from monai_smia.bundle.victim import is_train_override, task_from_metadata
from monai_smia.cli import main

OWN = ("mnist_cls", "retina_dr_cls", "lung_ct_seg", "lung_ct_seg3d")
CONFIGS = f"['configs/train.json','{EVALUATOR_CONFIG}','configs/evaluate.json']"






def _bundle_run(mnist: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    bundle = REPO_ROOT / "bundles" / "mnist_cls"
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", CONFIGS, "--bundle_root", str(bundle),
        "--dataset_dir", str(mnist), "--output_dir", str(out), "--attack", "SMIA", "--eps", "0.1",
        "--max_cases", "6", "--num_iter", "2", "--device", "cpu", *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd=bundle, timeout=600)


def _records(out: Path, attack: str = "SMIA") -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "cases" / attack).glob("*/*.json"))}


def _close(a: object, b: object) -> bool:
    """Equal records up to float32 rounding (1e-5 relative); everything that is not a float exactly equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-5, abs=1e-6, nan_ok=True)
    return a == b


def test_one_condition_through_monai_bundle_run(mnist, tmp_path):
    out = tmp_path / "run"
    proc = _bundle_run(mnist, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = _records(out)
    # the metric handlers' epoch figures (StatsHandler) are the means of the stored per-case values
    logged = re.search(r"Metrics -- linf: (\S+) psnr: (\S+) ssim: (\S+) top1: (\S+)", proc.stdout + proc.stderr)
    assert logged is not None, proc.stdout[-2000:]
    for value, key in zip(logged.groups(), ("linf", "psnr", "ssim", "top1")):
        assert float(value) == pytest.approx(sum(r[key] for r in records.values()) / len(records), abs=1e-4), key
    assert len(records) == 6 and all(k.endswith(tuple("0123456789")) for k in records)
    for rec in records.values():
        assert rec["attack"] == "SMIA" and rec["eps"] == 0.1 and rec["top1"] in (0.0, 1.0)
        assert rec["linf"] == pytest.approx(0.1, abs=1e-6) and 15 < rec["psnr"] < 40 and 0 < rec["ssim"] < 1
        assert len(rec["logits"]) == 10 and len(rec["trace_deviation_loss"]) == 2
    settings = json.loads((out / "settings.json").read_text())
    assert settings["bundle"] == "mnist_cls" and settings["num_iter"] == 2 and settings["eps_scale"] == 1.0
    assert sorted(p.name for p in (out / "examples").iterdir()) == [f"SMIA_eps0.1_{c}.npz" for c in sorted(records)[:2]]

    # a rerun resumes: finished cases are not recomputed, deleted ones are, to the same values
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cases").rglob("*.json")}
    dropped = sorted((out / "cases" / "SMIA").glob("*/*.json"))[-2:]
    for p in dropped:
        p.unlink()
    assert _bundle_run(mnist, out).returncode == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "cases").rglob("*.json") if p not in dropped} == {
        p: t for p, t in stamps.items() if p not in dropped
    }
    # recomputed cases run in a smaller batch: float32 kernels may round differently (DESIGN: float32 batch
    # independence is judged on values, not bits); the finished cases are the same files, untouched
    resumed = _records(out)
    assert resumed.keys() == records.keys() and all(_close(resumed[k], records[k]) for k in records)
    records = resumed
    proc = _bundle_run(mnist, out)  # everything stored: said, not a silent exit 0
    assert proc.returncode == 0 and "all 6 cases already stored in" in proc.stdout + proc.stderr

    # other settings into the same folder: refused, nothing written
    proc = _bundle_run(mnist, out, "--num_iter", "3")
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "holds results of other settings" in log and "num_iter: 2 there, 3 now" in log
    assert _records(out) == records

    # monai-smia evaluate runs the same condition through the same config: equal records
    cli = tmp_path / "cli"
    args = ["evaluate", "--bundle", "mnist_cls", "--dataset-dir", str(mnist), "--output", str(cli), "--attacks", "SMIA"]
    assert main([*args, "--eps", "0.1", "--max-cases", "6", "--num-iter", "2", "--device", "cpu"]) == 0
    cli_records = _records(cli)
    assert cli_records.keys() == records.keys() and all(_close(cli_records[k], records[k]) for k in records)


@pytest.mark.parametrize("name", OWN)
def test_shipped_evaluate_json_is_the_train_override_zoo_bundles_get(name):
    configs = REPO_ROOT / "bundles" / name / "configs"
    assert is_train_override(configs / "evaluate.json")
    own = json.loads((configs / "evaluate.json").read_text())
    train = json.loads((configs / "train.json").read_text())
    assert {"preprocessing", "dataset", "dataloader", "inferer", "evaluator"} <= set(train["validate"])
    assert len((configs / "evaluate.json").read_text().splitlines()) <= 60  # settings and overrides only
    assert bundle_configs(configs.parent)[0] == [configs / "train.json", EVALUATOR_CONFIG, configs / "evaluate.json"]
    task, k = task_from_metadata(json.loads((configs / "metadata.json").read_text()))
    files = [configs / "train.json", EVALUATOR_CONFIG, configs / "evaluate.json"]
    merged = ConfigParser(ConfigParser.load_config_files(files))
    generic = evaluation_overrides(task, k, True, "validate", own["validate#dataloader#batch_size"])
    assert {key: merged[key] for key in generic} == generic  # the wiring a model-zoo bundle gets, plus settings
    assert set(SETTINGS) <= set(own) and own["eps"] > 0
    assert merged["validate#attack_inferer"]["_target_"] == "monai_smia.inferers.AttackInferer"
    assert merged["validate#attack_inferer"]["inferer"] == "@validate#inferer"
    assert merged["validate#prepare_batch"]["extra_keys"] == {"labels": "label"}
    assert set(own["validate#key_metric"]) == ({"top1"} if task == "classification" else {"dice"})
    multi = json.loads((configs / "multi_gpu_evaluate.json").read_text())
    assert {key: multi[key] for key in distributed_overrides("validate")} == distributed_overrides("validate")
    assert multi["validate#sampler"]["even_divisible"] is False
    assert any("init_process_group" in line for line in multi["initialize"])


@pytest.mark.parametrize(("bundle", "attack"), [("mnist_cls", "DAG"), ("lung_ct_seg", "DeepFool")])
def test_attack_that_does_not_fit_the_task_is_refused(bundle, attack, tmp_path, capsys):
    out = tmp_path / "out"
    (tmp_path / "data").mkdir()  # an existing (empty) dataset folder: the attack/task check comes first
    args = ["evaluate", "--bundle", bundle, "--dataset-dir", str(tmp_path / "data"), "--output", str(out)]
    args += ["--attacks", "FGSM", attack]
    assert main([*args, "--device", "cpu"]) == 2
    err = capsys.readouterr().err  # a first import in this process may add MONAI's own notices before it
    errors = [line for line in err.splitlines() if line.startswith("monai-smia evaluate: error:")]
    assert len(errors) == 1 and "--attacks" in errors[0] and attack in errors[0], err
    assert not out.exists()


def test_inference_only_bundle_is_evaluated_label_free(data_dir, tmp_path):
    """No train.json, no labels: the evaluator config is built on inference.json's top-level keys, and an
    attack is scored by the share of the output whose prediction left the clean prediction."""
    from zoo_fixtures import decathlon_spleen, zoo_bundle

    task = decathlon_spleen(data_dir, tmp_path / "Task09_Spleen")
    bundle = zoo_bundle(tmp_path / "infer_only", shape="inference_only")
    out = tmp_path / "out"
    args = [
        "evaluate",
        "--bundle",
        str(bundle),
        "--dataset-dir",
        str(task),
        "--output",
        str(out),
        "--attacks",
        "FGSM",
        "SMIA",
    ]
    before = {p: p.read_bytes() for p in task.rglob("*") if p.is_file()}
    assert main([*args, "--eps", "20", "--eps-unit", "HU", "--num-iter", "2", "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["clean", "FGSM", "SMIA"] and summary["clean"]["num_cases"] == 1  # dataset.json's test case
    for name in ("FGSM", "SMIA"):
        row = summary[name]
        assert 0 < row["changed"] <= 1 and row["success"] in (0.0, 1.0) and "dice" not in row
        assert row["linf"] == pytest.approx(20.0, rel=1e-4) and row["psnr"] > 20
    record = json.loads(next((out / "cases" / "SMIA").rglob("*.json")).read_text())
    assert record["changed"] == summary["SMIA"]["changed"] and "label" not in record
    settings = json.loads((out / "provenance.json").read_text())["attack_settings"]
    assert settings["label_free"] is True and settings["evaluator_config"] == ["inference.json"]
    assert {p: p.read_bytes() for p in task.rglob("*") if p.is_file()} == before
