"""Robustness evaluation end to end on real data: the evaluate bundle, resume, torchrun equivalence, CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, subprocess_env

from monai_smia.apps.evaluate.evaluation import evaluation_from_bundle
from monai_smia.apps.evaluate.wiring import EVALUATOR_CONFIG
from monai_smia.cli import main


@pytest.fixture(scope="module")
def retina_report(retina, tmp_path_factory):
    out = tmp_path_factory.mktemp("retina_eval")
    evaluation_from_bundle(
        "retina_dr_cls", dataset_dir=str(retina), output_dir=str(out), max_cases=120, device="cpu"
    ).run()
    return out


def test_evaluate_bundle_end_to_end(retina_report):
    summary = json.loads((retina_report / "summary.json").read_text())
    assert list(summary) == ["clean", "noise", "FGSM", "PGD", "DEV", "SMIA"]
    clean = summary["clean"]["top1"]
    print("\nRetinaMNIST (120 test cases) top-1:", {k: round(v["top1"], 3) for k, v in summary.items()})
    for key in ("top1", "top1_ci95", "fpr_one_vs_rest", "roc_auc_one_vs_rest", "num_cases"):
        assert key in summary["clean"], key
    assert summary["clean"]["num_cases"] == 120
    noise = summary["noise"]["top1"]
    for name in ("FGSM", "PGD", "DEV", "SMIA"):
        row = summary[name]
        assert row["top1"] < clean - 0.1, f"{name} barely hurts: {row['top1']:.3f} vs clean {clean:.3f}"
        assert row["top1"] < noise - 0.05, f"{name} not below random noise ({row['top1']:.3f} vs {noise:.3f})"
        assert row["linf"] == pytest.approx(1.0, abs=1e-3)  # eps = 1/255, reported in /255 units
        assert 0 < row["success"] <= 1 and row["psnr"] > 40 and 0.9 < row["ssim"] <= 1
    for name in ("PGD", "DEV", "SMIA"):
        assert 0 <= summary[name]["positive_cosine_share"] <= 1
    table = (retina_report / "summary.md").read_text()
    assert "| SMIA |" in table and "[" in table
    csv_lines = (retina_report / "per_case.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 6 * 120
    prov = json.loads((retina_report / "provenance.json").read_text())
    assert len(prov["checkpoint"]["sha256"]) == 64 and prov["seed"] == 0 and prov["attack_settings"]["eps"] == [1.0]
    for png in ("examples_SMIA.png", "iterations_dev_vs_smia.png", "robustness_top1.png"):
        data = (retina_report / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png


def test_resume_from_partial_output(retina, retina_report, tmp_path):
    """Copy a finished run, drop some cases and corrupt one: the rerun recomputes exactly those."""
    import shutil

    out = tmp_path / "partial"
    shutil.copytree(retina_report / "cases", out / "cases")
    shutil.copy(retina_report / "settings.json", out / "settings.json")
    smia_cases = sorted((out / "cases" / "SMIA").glob("*/*.json"))
    for p in smia_cases[:5]:
        p.unlink()
    smia_cases[5].write_text('{"case_id": "trunc')
    kept = {p: p.stat().st_mtime_ns for p in sorted((out / "cases" / "FGSM").glob("*/*.json"))}
    evaluation_from_bundle(
        "retina_dr_cls",
        dataset_dir=str(retina),
        output_dir=str(out),
        max_cases=120,
        device="cpu",
        attacks=["FGSM", "SMIA"],
    ).run()
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items()), "finished cases were recomputed"
    assert len(list((out / "cases" / "SMIA").glob("*/*.json"))) == 120
    before = json.loads((retina_report / "summary.json").read_text())
    after = json.loads((out / "summary.json").read_text())
    for name in ("clean", "FGSM", "SMIA"):
        assert after[name]["top1"] == pytest.approx(before[name]["top1"], abs=1e-12)


def test_rerun_with_other_settings_is_refused(mnist, tmp_path, capsys):
    """A rerun into a finished folder resumes only with the same settings; any other value exits 2 and writes
    nothing."""
    out = tmp_path / "run"
    base = ["evaluate", "--dataset-dir", str(mnist), "--output", str(out), "--max-cases", "2", "--device", "cpu"]
    assert main([*base, "--bundle", "mnist_cls", "--attacks", "SMIA", "--num-iter", "2"]) == 0
    cases = {p: p.stat().st_mtime_ns for p in (out / "cases").rglob("*.json")}
    assert main([*base, "--bundle", "mnist_cls", "--attacks", "SMIA", "--num-iter", "2"]) == 0  # same: resumes
    assert {p: p.stat().st_mtime_ns for p in (out / "cases").rglob("*.json")} == cases
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main([*base, "--bundle", "mnist_cls", "--attacks", "SMIA", "--num-iter", "7"]) == 2
    err = capsys.readouterr().err
    assert "holds results of other settings" in err and "num_iter: 2 there, 7 now" in err and str(out) in err
    other = tmp_path / "mnist_cls_v2"  # another bundle taking the same images, with other weights
    shutil.copytree(REPO_ROOT / "bundles" / "mnist_cls", other)
    weights = torch.load(other / "models" / "model.pt", weights_only=True)
    torch.save({k: v + 1e-3 if v.is_floating_point() else v for k, v in weights.items()}, other / "models" / "model.pt")
    assert main([*base, "--bundle", str(other), "--attacks", "SMIA", "--num-iter", "2"]) == 2
    err = capsys.readouterr().err
    assert "bundle: 'mnist_cls' there, 'mnist_cls_v2' now" in err and "checkpoint_sha256" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # refused runs write nothing
    (out / "settings.json").unlink()  # case results without their settings: refused too
    assert main([*base, "--bundle", "mnist_cls", "--attacks", "SMIA", "--num-iter", "2"]) == 2
    assert "without settings.json" in capsys.readouterr().err


def _run_condition(mnist, out, nproc: int) -> dict:
    """One condition (PGD: random starts) through ``python -m monai.bundle run``, under torchrun with
    ``multi_gpu_evaluate.json`` (gloo on CPUs) when ``nproc > 1``; returns the stored records."""
    bundle = REPO_ROOT / "bundles/mnist_cls"
    files = ["train.json", EVALUATOR_CONFIG, "evaluate.json", *(["multi_gpu_evaluate.json"] if nproc > 1 else [])]
    configs = "[" + ",".join(f"'{bundle / 'configs' / f}'" for f in files) + "]"  # an absolute f is kept as is
    args = [
        "-m", "monai.bundle", "run", "--config_file", configs, "--bundle_root", str(bundle),
        "--dataset_dir", str(mnist), "--output_dir", str(out), "--max_cases", "7",
        "--validate#dataloader#batch_size", "1",
        "--attack", "PGD", "--eps", "0.1", "--num_iter", "3", "--num_figure_cases", "0",
    ]  # fmt: skip
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            "29533",
            *args,
        ]
    else:
        cmd = [sys.executable, *args, "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd=REPO_ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {p.name: json.loads(p.read_text()) for p in sorted((out / "cases" / "PGD").glob("*/*.json"))}


@pytest.mark.slow
def test_two_processes_match_one(mnist, tmp_path):
    one = _run_condition(mnist, tmp_path / "one", 1)
    two = _run_condition(mnist, tmp_path / "two", 2)
    assert len(one) == 7 and list(one) == list(
        two
    )  # every case exactly once (DistributedSampler(even_divisible=False))
    for name, rec in one.items():
        for metric in ("top1", "linf", "l2", "psnr", "ssim"):
            assert two[name][metric] == pytest.approx(rec[metric], abs=1e-9), (name, metric)
        assert two[name]["logits"] == pytest.approx(rec["logits"], abs=1e-6)


def test_cli_help_and_errors(capsys, tmp_path):
    for cmd in ("demo", "evaluate", "attack"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
    assert "--dataset-dir" in capsys.readouterr().out
    (tmp_path / "data").mkdir()
    assert (
        main(
            [
                "evaluate",
                "--bundle",
                "no_such_bundle",
                "--dataset-dir",
                str(tmp_path / "data"),
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "bundle 'no_such_bundle' not found" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                "--bundle",
                str(tmp_path),
                "--dataset-dir",
                str(tmp_path / "data"),
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "is not a MONAI bundle" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                "--bundle",
                "mnist_cls",
                "--dataset-dir",
                str(tmp_path / "data"),
                "--output",
                str(tmp_path / "o"),
                "--attacks",
                "CW",
            ]
        )
        == 2
    )
    assert "unknown attack(s) 'CW'" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                "--bundle",
                "mnist_cls",
                "--dataset-dir",
                str(tmp_path / "data"),
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "datalist.json not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(
            [
                "evaluate",
                "--bundle",
                "mnist_cls",
                "--dataset-dir",
                str(tmp_path / "data"),
                "--output",
                str(tmp_path),
                "--eps",
                "-0.1",
            ]
        )
    assert e.value.code == 2
    assert "budgets must be > 0" in capsys.readouterr().err
