"""monai-smia reproduce on a tiny subset of real MNIST: rows for every table, verdicts that follow
their paired intervals, resume, and refusal of other settings."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from monai_smia.apps.reproduce import ReproduceSettings, run_reproduce
from monai_smia.cli import main

N_RAW = 150  # images of the real MNIST test set kept in the tiny raw folder (20 % become test cases)


def _tiny_mnist(data_dir: Path, out: Path) -> Path:
    """A raw folder laid out like the shared data, holding the first N_RAW real MNIST test images."""
    src = data_dir / "digits" / "mnist"
    names = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    if not all((src / n).is_file() for n in names):
        pytest.skip(f"MNIST idx files are absent from {src}")
    dst = out / "digits" / "mnist"
    dst.mkdir(parents=True)
    for name, header, item in ((names[0], 16, 28 * 28), (names[1], 8, 1)):
        with gzip.open(src / name) as f:
            raw = f.read()
        head = bytearray(raw[:header])
        head[4:8] = N_RAW.to_bytes(4, "big")
        with gzip.open(dst / name, "wb") as f:
            f.write(bytes(head) + raw[header : header + N_RAW * item])
    return out


def _settings(**overrides) -> ReproduceSettings:
    base = {
        "bundles": ("mnist_cls",),
        "max_cases": {"mnist_cls": 10},
        "num_iter": 2,
        "iterations": (1, 2),
        "eps_factors": (0.5, 1.0),
        "protocols": ("projected",),
    }
    base.update(overrides)
    return ReproduceSettings.quick(**base)


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    raw = _tiny_mnist(data_dir, root / "raw")
    out = root / "out"
    report = run_reproduce(out, data_dir=raw, cache=root / "cache", settings=_settings(), device="cpu")
    return raw, root / "cache", out, report


def test_rows_for_every_table_and_reading(run):
    _, _, out, report = run
    rows = report["claims"]
    assert {r["table"] for r in rows} == {"1", "2", "3", "4", "5", "6", "W"}
    worst = [r for r in rows if r["table"] == "W"]  # SMIA and PGD vs the worst case: measured, not the paper's claims
    assert [r["claim"] for r in worst] == [
        "the worst case is stronger than SMIA",
        "the worst case is stronger than PGD",
    ]
    assert all(r["a"] == "worst-case_T2_e1" and r["lo"] <= r["mean_difference"] <= r["hi"] for r in worst)
    paper = [r for r in rows if r["table"] != "W"]
    assert report["holds"] == sum(r["verdict"] == "holds" for r in paper)
    assert {r["protocol"] for r in rows} == {"projected"}
    assert {r["reading"] for r in rows if r["table"] == "1"} == {"default", "differentiable", "step", "hard"}
    assert all(r["num_cases"] == 10 and r["wins"] + r["ties"] + r["losses"] == 10 for r in rows)
    table6 = {r["claim"] for r in rows if r["table"] == "6"}
    assert any("DeepFool" in c for c in table6) and any("Var" in c for c in table6)
    saved = json.loads((out / "reproduce.json").read_text())
    assert len(saved["claims"]) == len(rows)
    md = (out / "reproduce.md").read_text()
    assert "Table 5" in md and "holds" in md and "### Overview" in md and "SMIA vs the worst case" in md
    assert f"{report['holds']} of {len(paper)} claims hold" in md
    assert saved["grid"] == "network" and "Grid: network" in md  # the report states where the attacks perturb
    overview = md.split("### Overview")[1].split("### Every claim")[0]
    assert sum(line.startswith("| 1 |") for line in overview.splitlines()) == 2  # Table 1's two claims, default reading
    assert report["figures"] and all((out / f).is_file() for f in report["figures"])


def test_verdicts_follow_the_paired_interval(run):
    rows = run[3]["claims"]
    for r in rows:
        excludes = r["lo"] > 0 if r["direction"] == "greater" else r["hi"] < 0
        assert (r["verdict"] == "holds") == excludes, r
        assert r["lo"] <= r["mean_difference"] + 1e-12 and r["mean_difference"] <= r["hi"] + 1e-12
    # SMIA's first iteration is DEV alone (Eq. 3-4): at T = 1 the two attacks are the same, every case a tie
    t1 = [r for r in rows if r["table"] == "2" and "T = 1 " in r["claim"]]
    assert t1 and all(r["ties"] == 10 and r["verdict"] == "does not hold" for r in t1)


def test_rerun_resumes_and_other_settings_are_refused(run):
    raw, cache, out, report = run
    cases = sorted((out / "mnist_cls").rglob("*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in cases}
    victim = cases[len(cases) // 2]
    victim.unlink()
    again = run_reproduce(out, data_dir=raw, cache=cache, settings=_settings(), device="cpu")
    assert victim.is_file()  # the one missing case was recomputed ...
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p != victim)  # ... and nothing else
    assert [r["verdict"] for r in again["claims"]] == [r["verdict"] for r in report["claims"]]
    with pytest.raises(ValueError, match="other settings.*num_iter"):
        run_reproduce(out, data_dir=raw, cache=cache, settings=_settings(num_iter=1, iterations=(1,)), device="cpu")


def test_cli_bad_input_is_one_line_naming_the_argument(tmp_path, capsys):
    assert main(["reproduce", "--output", str(tmp_path / "o"), "--bundles", "lung_ct_seg3d"]) == 2
    err = capsys.readouterr().err
    assert "bundles" in err and "lung_ct_seg3d" in err and len(err.strip().splitlines()) == 1
    assert main(["reproduce", "--output", str(tmp_path / "o2"), "--protocols", "madry"]) == 2
    assert "protocols" in capsys.readouterr().err


def test_settings_need_the_base_setting():
    with pytest.raises(ValueError, match="iterations"):
        ReproduceSettings(iterations=(1, 2)).check()
    np.testing.assert_equal(ReproduceSettings.quick().quick_mode, True)
    assert ReproduceSettings.quick().worst_case_queries == 500 and ReproduceSettings().worst_case_queries == 5000
