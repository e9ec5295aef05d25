"""``monai-smia evaluate --grid source``: the slice-wise lung bundle attacked on the source
voxels of TotalSegmentator's small example CT (int16 HU, 3 mm), through the bundle's preprocessing."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_smia.cli import main

CT = Path("ct") / "totalsegmentator" / "example_ct_sm.nii.gz"
SEG = Path("ct") / "totalsegmentator" / "example_seg.nii.gz"
EPS = 20.0


@pytest.fixture
def ct_data(data_dir: Path, tmp_path: Path) -> Path:
    """A one-case datalist: the example CT and a binary label (its segmentation > 0)."""
    if not (data_dir / CT).is_file() or not (data_dir / SEG).is_file():
        pytest.skip(f"{CT} or {SEG} is absent from the data folder")
    data = tmp_path / "data"
    data.mkdir()
    (data / "ct.nii.gz").write_bytes((data_dir / CT).read_bytes())
    img = nib.load(str(data / "ct.nii.gz"))
    label = np.asarray(nib.load(str(data_dir / SEG)).dataobj) > 0
    nib.save(nib.Nifti1Image(label.astype(np.uint8), img.affine), str(data / "label.nii.gz"))
    items = [{"image": "ct.nii.gz", "label": "label.nii.gz"}]
    (data / "datalist.json").write_text(json.dumps({"name": "ts", "training": [], "validation": [], "test": items}))
    return data


def _evaluate(data: Path, out: Path, grid: str) -> int:
    args = ["evaluate", "--bundle", "lung_ct_seg", "--dataset-dir", str(data), "--output", str(out)]
    return main(
        [*args, "--attacks", "FGSM", "SMIA", "--eps", str(EPS), "--num-iter", "2", "--device", "cpu", "--grid", grid]
    )


def test_evaluate_on_the_source_grid(ct_data, tmp_path, capsys, monkeypatch):
    """Records and reports say grid source; the source-grid perturbation stays within eps HU on the int16
    lattice; the network input is the bundle's preprocessing of the attacked source; a rerun with
    --grid network into the same folder is refused naming grid."""
    from monai_smia.apps.evaluate import source as evaluation_source

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = evaluation_source.source_grid_case

    def spy(w, victim, case, x, lab, src=None):
        res = original(w, victim, case, x, lab, src=src)
        seen.append((res.d_src.as_tensor().clone(), res.x_adv.detach().clone()))
        return res

    monkeypatch.setattr(evaluation_source, "source_grid_case", spy)
    out = tmp_path / "out"
    assert _evaluate(ct_data, out, "source") == 0
    assert len(seen) == 2  # FGSM and SMIA, one case each
    for d, x_adv in seen:
        assert d.shape == (1, 122, 101, 30)  # the source grid, channel-first
        assert float(d.abs().max()) <= EPS and float(d.abs().max()) > 0
        assert torch.equal(d, torch.round(d))  # whole HU: the int16 lattice
        assert x_adv.shape[:2] == (1, 1) and x_adv.ndim == 5
    for name in ("FGSM", "SMIA"):
        rec = json.loads((out / "cases" / name / "eps_20.0" / "0000_ct.json").read_text())
        assert rec["grid"] == "source" and rec["perturbation_grid"] == "source"
        assert 0 < rec["linf"] <= EPS + 1e-9 and rec["l2"] > 0
        assert 0 < rec["psnr"] < float("inf") and 0 < rec["ssim"] < 1  # network inputs, clean vs attacked
        assert np.isfinite(rec["dice"])
    assert json.loads((out / "settings.json").read_text())["grid"] == "source"
    assert json.loads((out / "provenance.json").read_text())["attack_settings"]["grid"] == "source"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["SMIA"]["grid"] == "source" and "grid" not in summary["clean"]
    assert "source grid" in (out / "summary.md").read_text().splitlines()[0]
    # the same attack as ``monai-smia attack --grid source``: the same prediction error on the case
    att = tmp_path / "attack"
    assert main(["attack", "--bundle", "lung_ct_seg", "--input", str(ct_data), "--output", str(att), "--attack", "FGSM",
                 "--eps", str(EPS), "--device", "cpu", "--grid", "source"]) == 0  # fmt: skip
    written = json.loads((att / "cases" / "FGSM" / "eps_20.0" / "ct.json").read_text())
    rec = json.loads((out / "cases" / "FGSM" / "eps_20.0" / "0000_ct.json").read_text())
    assert written["error_adversarial"] == pytest.approx(1.0 - rec["pixel_accuracy"], abs=1e-12)
    capsys.readouterr()
    assert _evaluate(ct_data, out, "network") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("monai-smia evaluate: error:")]
    assert len(errors) == 1 and "grid: 'source' there, 'network' now" in errors[0], errors
