"""The detection rows of monai-smia reproduce (Tables 1 and 6 on lung_tumour_det) on a few real MSD lung
patches: SMIA vs DEV, FGSM, PGD and DAG by AP@0.5, paired over patches; verdicts follow the intervals; resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monai_smia.apps.detection.metrics import DetectionSetMetrics
from monai_smia.apps.reproduce import ReproduceSettings, run_reproduce
from monai_smia.apps.reproduce.detection import DETECTION_BUNDLE, run_detection_bundle
from monai_smia.metrics import HOLDS, bootstrap_indices
from monai_smia.reports.store import CaseStore

N_CASES = 10


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    if not (data_dir / "ct" / "msd_lung_patches" / "test_patches.h5").is_file():
        pytest.skip(f"ct/msd_lung_patches is absent under {data_dir}")
    root = tmp_path_factory.mktemp("reproduce_det")
    settings = ReproduceSettings.quick(
        bundles=(DETECTION_BUNDLE,), max_cases={DETECTION_BUNDLE: N_CASES}, protocols=("projected",), num_resamples=200
    )
    out = root / "out"
    report = run_reproduce(out, data_dir=data_dir, cache=root / "cache", settings=settings, device="cpu")
    return data_dir, root, out, settings, report


def _records(out, attack: str) -> list[dict]:
    rows = [r for r in CaseStore(out / DETECTION_BUNDLE / "projected").records() if r["attack"] == attack]
    return sorted(rows, key=lambda r: r["case_id"])


def test_detection_rows_of_tables_1_and_6(run):
    _, _, out, _, report = run
    rows = report["claims"]
    assert {(r["table"], r["b"]) for r in rows} == {("1", "DEV"), ("6", "FGSM"), ("6", "PGD"), ("6", "DAG")}
    assert all(r["bundle"] == DETECTION_BUNDLE and r["metric"] == "ap_iou_0.5" and r["a"] == "SMIA" for r in rows)
    assert all(r["num_cases"] == N_CASES and r["direction"] == "less" for r in rows)
    assert report["bundles"][DETECTION_BUNDLE]["num_cases"] == N_CASES
    md = (out / "reproduce.md").read_text()
    assert "lung_tumour_det" in md and "SMIA causes a larger AP@0.5 drop than DAG" in md
    json.loads((out / "reproduce.json").read_text())


def test_ap_and_paired_interval_are_recomputed_from_the_records(run):
    """Each row's AP is MONAI's COCOMetric AP@0.5 of the stored records; its interval is the paired
    bootstrap of the AP difference (one resample of patches for both sides); the verdict follows it."""
    _, _, out, settings, report = run
    smia = _records(out, "SMIA")
    for r in report["claims"]:
        other = _records(out, r["b"])
        assert [x["case_id"] for x in other] == [x["case_id"] for x in smia]
        ma, mb = DetectionSetMetrics(), DetectionSetMetrics()
        assert r["mean_a"] == pytest.approx(ma.values(smia)["ap_iou_0.5"])
        assert r["mean_b"] == pytest.approx(mb.values(other)["ap_iou_0.5"])
        idx = bootstrap_indices(N_CASES, settings.num_resamples, settings.seed)
        diff = [ma.values(smia, i)["ap_iou_0.5"] - mb.values(other, i)["ap_iou_0.5"] for i in idx]
        assert (r["lo"], r["hi"]) == pytest.approx(tuple(np.quantile(diff, [0.025, 0.975])))
        assert (r["verdict"] == HOLDS) == (r["hi"] < 0)


def test_rerun_resumes_and_no_data_skips(run):
    data_dir, root, out, settings, report = run

    def stamps() -> dict:  # the attacked and clean records (the centre-box baseline is recomputed: no attack)
        cases = out / DETECTION_BUNDLE / "projected" / "cases"
        return {p: p.stat().st_mtime_ns for p in cases.rglob("*.json") if p.parts[len(cases.parts)] != "centre_box"}

    before = stamps()
    assert len(before) == 6 * N_CASES  # clean + FGSM, PGD, DEV, SMIA, DAG
    again = run_reproduce(out, data_dir=data_dir, cache=root / "cache", settings=settings, device="cpu")
    assert stamps() == before
    assert [r["verdict"] for r in again["claims"]] == [r["verdict"] for r in report["claims"]]
    info = run_detection_bundle(settings, root / "nodata", None, root / "cache", "cpu")
    assert info["skipped"] and info["num_cases"] == 0 and not (root / "nodata").exists()
