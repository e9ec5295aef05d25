"""Bad inputs found before anything is written (no settings.json left behind to block the corrected
rerun): an attack that does not fit the bundle's task, through ``monai-smia attack`` on real data."""

from __future__ import annotations

import pytest
from conftest import shared_data_dir

from monai_smia.cli import main

CT = shared_data_dir() / "ct" / "totalsegmentator" / "example_ct_sm.nii.gz"


@pytest.mark.parametrize(
    ("bundle", "attack", "said"),
    [("lung_ct_seg", "DeepFool", "DeepFool needs classification"), ("mnist_cls", "DAG", "DAG needs segmentation")],
)
def test_attack_that_does_not_fit_the_task_is_refused_before_writing(
    bundle, attack, said, mnist, data_dir, tmp_path, capsys
):
    source = CT if bundle == "lung_ct_seg" else mnist
    out = tmp_path / "out"
    argv = [
        "attack",
        "--bundle",
        bundle,
        "--input",
        str(source),
        "--output",
        str(out),
        "--attack",
        attack,
        "--device",
        "cpu",
    ]
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("monai-smia attack: error:")]
    assert len(errors) == 1 and f"--attack {attack}" in errors[0] and said in errors[0], errors
    assert not out.exists()
