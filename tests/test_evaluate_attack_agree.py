"""One seed and one success for a case, whether it is evaluated or attacked.

``evaluate`` batches cases (ids ``0000_<name>``) and ``attack`` takes them one by one (ids ``<name>``);
both seed a case by its image file's name, so PGD's random start, the adversarial prediction and the
success (metrics.case_success) agree on real MNIST test images."""

from __future__ import annotations

import csv

import numpy as np
import torch

from monai_smia.apps.attack.run import run_attack
from monai_smia.attacks import volume
from monai_smia.cli import main


def test_evaluate_and_attack_draw_the_same_start_and_agree_on_success(mnist, tmp_path, monkeypatch):
    data = mnist
    drawn: dict[str, list[torch.Tensor]] = {"evaluate": [], "attack": []}
    run = ["evaluate"]
    original = volume.draw_random_start

    def recording(attack, shape, dtype, generator):
        start = original(attack, shape, dtype, generator)
        drawn[run[0]].extend(start.clone())  # one entry per volume
        return start

    monkeypatch.setattr(volume, "draw_random_start", recording)
    args = ["--bundle", "mnist_cls", "--attacks", "PGD", "--eps", "0.1", "--num-iter", "3", "--max-cases", "4"]
    assert (
        main(["evaluate", *args, "--dataset-dir", str(data), "--output", str(tmp_path / "ev"), "--device", "cpu"]) == 0
    )
    run[0] = "attack"
    summary = run_attack("mnist_cls", data, tmp_path / "at", attack="PGD", eps=0.1, eps_unit="", num_iter=3,
                         grid="network", max_cases=4, device="cpu", progress=False)  # fmt: skip
    assert len(drawn["evaluate"]) == len(drawn["attack"]) == 4  # evaluate: one batch of 4; attack: 4 calls
    for a, b in zip(drawn["evaluate"], drawn["attack"]):
        assert torch.equal(a, b[None] if a.ndim > b.ndim else b)
    assert not torch.equal(drawn["attack"][0], drawn["attack"][1])  # a seed per case, not one for all
    with open(tmp_path / "ev" / "per_case.csv") as f:
        rows = {r["case_id"].split("_", 1)[1]: r for r in csv.DictReader(f) if r["attack"] == "PGD"}
    assert sorted(rows) == sorted(summary["cases"])
    agree = [(name, rows[name]["success"], case["success"]) for name, case in summary["cases"].items()]
    assert all(np.isnan(float(a)) == np.isnan(b) and (np.isnan(b) or float(a) == b) for _, a, b in agree), agree
    assert any(b == 1.0 for _, _, b in agree)  # PGD at 0.1 flips at least one of the four
