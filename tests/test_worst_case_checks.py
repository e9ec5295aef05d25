"""WorstCase's winners and AutoAttack's checks (Croce & Hein 2020): each check fires on a network built to trip it
(a quantizing input step, dropout left on, too few classes) and none fires on the committed mnist_cls victim."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import mnist_digits
from monai.networks.nets import UNet

from monai_smia import WorstCase
from monai_smia.attacks.volume import attack_volumes
from monai_smia.reports.checks import format_worst_case_report, worst_case_report


class Quantize(torch.nn.Module):
    """Rounds the input to quarters: a non-differentiable step whose gradient is zero everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 4) / 4


class AlwaysDropout(torch.nn.Module):
    """Dropout that stays on in eval mode (Monte-Carlo dropout): a randomized prediction."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, p=0.5, training=True)


def classifier(k: int, *front: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(*front, torch.nn.Flatten(), torch.nn.Linear(64, k)).eval()


def images(b: int = 8) -> torch.Tensor:
    return torch.rand(b, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def records(attack: WorstCase) -> list[dict]:
    """The worst-case records an evaluation stores: the case notes of each case."""
    return [{"case_id": f"c{j}", "attack": "worst-case", **n} for j, n in enumerate(attack.case_notes())]


def run(attack: WorstCase, x: torch.Tensor, y: torch.Tensor) -> WorstCase:
    with warnings.catch_warnings():  # the members' own zero-gradient warnings
        warnings.simplefilter("ignore", RuntimeWarning)
        attack(x, y)
    return attack


def test_quantized_input_fires_gradient_masking_and_zero_gradient():
    net, x = classifier(10, Quantize()), images()
    y = net(x).argmax(1)
    attack = run(WorstCase(net, eps=0.25, attacks=["APGD-CE", "Square"], num_iter=5, num_queries=100), x, y)
    assert attack.checks["zero_gradient"].all()
    assert attack.checks["gradient_masking"].tolist() == [w == "Square" for w in attack.winners]
    assert attack.checks["gradient_masking"].sum() >= 4  # Square breaks what APGD's zero gradients cannot
    report = worst_case_report(records(attack), "worst-case")
    fired = {w["check"]: w for w in report["warnings"]}
    assert set(fired) == {"gradient_masking", "zero_gradient"}
    assert fired["zero_gradient"]["count"] == 8 and fired["gradient_masking"]["count"] == report["wins"]["Square"]
    text = format_worst_case_report(report, "worst-case")
    assert "WARNING (gradient_masking)" in text and "WARNING (zero_gradient)" in text and "Square" in text


def test_dropout_left_on_fires_nondeterministic():
    net, x = classifier(10, AlwaysDropout()), images(4)
    attack = run(WorstCase(net, eps=0.05, attacks=["APGD-CE"], num_iter=2), x, torch.zeros(4, dtype=torch.long))
    assert attack.checks["nondeterministic"].all()
    assert "gradient_masking" not in attack.checks  # no gradient-free member to compare with
    report = worst_case_report(records(attack), "worst-case")
    assert [w["check"] for w in report["warnings"]] == ["nondeterministic"]
    assert report["not_checked"] == ["gradient_masking"]


@pytest.mark.parametrize("k, used", [(2, ["APGD-CE", "Square"]), (3, ["APGD-CE", "APGD-DLR", "Square"])])
def test_too_few_classes_names_the_fallback(k, used):
    net, x = classifier(k), images(4)
    with pytest.warns(UserWarning, match="APGD-T needs at least 4 classes"):
        attack = run(WorstCase(net, eps=0.05, num_iter=2, num_queries=4), x, torch.zeros(4, dtype=torch.long))
    assert list(attack.scores) == used
    report = worst_case_report(records(attack), "worst-case")
    (fallback,) = [w for w in report["warnings"] if w["check"] == "fallback"]
    assert fallback["count"] == 4
    assert ("APGD-DLR instead" if k == 3 else "drops it") in fallback["message"]
    four = run(WorstCase(classifier(4), eps=0.05, num_iter=2, num_queries=4), x, torch.zeros(4, dtype=torch.long))
    assert not any("fallback" in n for n in four.case_notes())


def test_slice_wise_volume_gets_one_merged_note():
    """A 2D segmenter on two volumes slice by slice: one note per volume, the winner of most of its slices."""
    torch.manual_seed(0)
    net = UNet(2, 1, 3, channels=(4, 8), strides=(2,), num_res_units=1).double().eval()
    vol = torch.rand(2, 1, 8, 8, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        lab = torch.stack([net(vol[b].permute(3, 0, 1, 2)).argmax(1) for b in range(2)]).permute(0, 2, 3, 1)
    attack = WorstCase(net, eps=0.05, attacks=["PGD", "SegPGD"], num_iter=2)
    result = attack_volumes(attack, vol, labels=lab.unsqueeze(1), slice_dim=2, slice_batch_size=2)
    assert len(result.notes) == 2
    for note in result.notes:
        assert note["winner"] in ("PGD", "SegPGD")
        assert note["check_zero_gradient"] is False and note["check_nondeterministic"] is False
    notes = [{"winner": "A", "check_zero_gradient": True, "check_nondeterministic": False}] * 2
    notes += [{"winner": "B", "check_zero_gradient": False, "check_nondeterministic": True}]
    assert WorstCase.merge_notes(notes) == {"winner": "A", "check_zero_gradient": False, "check_nondeterministic": True}


def test_no_check_fires_on_committed_mnist_cls(data_dir):
    """The committed mnist_cls victim is deterministic, has gradients and 10 classes; Square breaks no digit that
    APGD-CE and APGD-T left (32 digits, eps 0.05)."""
    net, x, y = mnist_digits(data_dir, 32)
    attack = run(WorstCase(net, eps=0.05, num_iter=20, num_queries=300), x, y)
    report = worst_case_report(records(attack), "worst-case")
    assert report["warnings"] == [] and report["not_checked"] == []
    assert sum(report["wins"].values()) == 32 and report["wins"].get("APGD-CE", 0) > 0
    assert "No warnings" in format_worst_case_report(report, "worst-case")


# ----------------------------------------------------------------------------- through the CLI
@pytest.fixture(scope="module")
def spleen(data_dir, tmp_path_factory):
    """The zoo-shaped spleen bundle (2 output channels) and its Decathlon folder of real CT crops."""
    from zoo_fixtures import decathlon_spleen, zoo_bundle

    root = tmp_path_factory.mktemp("spleen")
    return zoo_bundle(root / "spleen_ct_segmentation"), decathlon_spleen(data_dir, root / "Task09_Spleen")


def evaluate(spleen, out, *attacks: str) -> int:
    from monai_smia.cli import main

    bundle, task = spleen
    args = ["--eps", "20", "--eps-unit", "HU", "--num-iter", "1", "--device", "cpu", "--attacks", *attacks]
    return main(["evaluate", "--bundle", str(bundle), "--dataset-dir", str(task), "--output", str(out), *args])


def test_cli_refuses_targeted_dlr_on_two_classes(spleen, tmp_path, capsys):
    """APGD-T on a 2-class network: exit 2, one line naming the attack and the class count, before any case runs."""
    out = tmp_path / "out"
    assert evaluate(spleen, out, "PGD", "APGD-T") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "APGD-T needs at least 4 classes" in err and "has 2" in err, err
    assert not out.exists()


@pytest.mark.parametrize("grid", ["network", "source"])
def test_cli_worst_case_on_a_zoo_segmentation_bundle_names_winners(spleen, grid, tmp_path):
    """Whole 3D volumes through the bundle's sliding-window inferer, on the network input or the source voxels:
    each case's winner, the wins per member and the checks in summary.json and summary.md (segmentation's members
    have no gradient-free one to compare)."""
    import csv
    import json

    out = tmp_path / "out"
    assert evaluate(spleen, out, "worst-case", "--grid", grid) == 0
    with open(out / "per_case.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["attack"] == "worst-case"]
    assert rows and all(r["winner"] in ("APGD-CE", "SegPGD", "CosPGD", "PGD", "SMIA") for r in rows)
    summary = json.loads((out / "summary.json").read_text())["worst-case"]
    assert sum(summary["winners"].values()) == len(rows) and summary["not_checked"] == ["gradient_masking"]
    assert summary["warnings"] == []
    md = (out / "summary.md").read_text()
    assert "Cases won per member" in md and "Not checked (no member to compare): gradient_masking" in md
