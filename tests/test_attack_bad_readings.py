"""Bad input to the attack factory: a reading of SMIA given to an attack it means nothing to names
the argument (DeepFool on segmentation, DAG on a classifier and protocol contradictions are tested in
test_attack_deepfool_dag.py and test_attack_readings.py)."""

from __future__ import annotations

import pytest
import torch

from monai_smia.attacks.registry import make_attack


def _classifier() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()


@pytest.mark.parametrize(
    "option, value", [("stabilization", "hard"), ("stabilization_target", "differentiable"), ("smooth", "step")]
)
def test_dev_refuses_a_stabilization_reading(option, value):
    with pytest.raises(ValueError, match=rf"^{option}: DEV is SMIA without the stabilization term"):
        make_attack("DEV", _classifier(), 0.1, **{option: value})


def test_dev_keeps_the_paper_protocol():
    dev = make_attack("DEV", _classifier(), 0.1, num_iter=4, protocol="paper")
    assert dev.alpha == 0.0 and dev.eps == pytest.approx(0.4) and dev.step_size == pytest.approx(0.1)


@pytest.mark.parametrize(
    "name, task", [("DeepFool", "classification"), ("DAG", "segmentation"), ("PGD", None), ("FGSM", None)]
)
def test_other_attacks_refuse_smia_readings_by_name(name, task):
    with pytest.raises(ValueError, match=rf"^stabilization: a reading of SMIA, not an option of {name}"):
        make_attack(name, _classifier(), 0.1, task=task, stabilization="hard")
