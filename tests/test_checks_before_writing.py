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


@pytest.mark.parametrize("command", ["attack", "evaluate"])
def test_an_image_of_another_size_is_refused_by_a_fixed_size_bundle(command, data_dir, tmp_path, capsys):
    """A 512x512 chest X-ray PNG given to the 28x28 MNIST bundle (whose preprocessing does not resize)."""
    import json
    import shutil

    data = tmp_path / "data"
    data.mkdir()
    png = shutil.copy(data_dir / "xray" / "nih_cxr" / "00000001_000.png", data / "xray.png")
    (data / "datalist.json").write_text(json.dumps({"test": [{"image": "xray.png", "label": 3}]}))
    out = tmp_path / "out"
    source = ["--input", str(png)] if command == "attack" else ["--dataset-dir", str(data)]
    assert (
        main([command, "--bundle", "mnist_cls", *source, "--output", str(out), "--eps", "0.1", "--device", "cpu"]) == 2
    )
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"monai-smia {command}: error:")]
    assert len(errors) == 1 and "xray.png' is 512x512; the bundle takes 28x28 images" in errors[0], errors
    assert not out.exists()


@pytest.mark.parametrize("name", ["metadata.json", "train.json", "inference.json", "evaluate.json"])
@pytest.mark.parametrize("command", ["evaluate", "attack"])
def test_a_broken_json_file_of_the_bundle_is_named(name, command, mnist, tmp_path, capsys):
    import shutil

    from conftest import REPO_ROOT

    bundle = tmp_path / "mnist_copy"
    shutil.copytree(REPO_ROOT / "bundles" / "mnist_cls", bundle)
    path = bundle / "configs" / name
    path.write_text(path.read_text()[:-40] + "\n,,\n")
    out = tmp_path / "out"
    source = ["--input", str(mnist)] if command == "attack" else ["--dataset-dir", str(mnist)]
    assert (
        main([command, "--bundle", str(bundle), *source, "--output", str(out), "--eps", "0.1", "--device", "cpu"]) == 2
    )
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"monai-smia {command}: error:")]
    assert len(errors) == 1 and f"{path.resolve()} is not valid JSON" in errors[0] and "line " in errors[0], errors
    assert not out.exists()


def test_a_box_that_is_not_a_number_is_named():
    from monai_smia.apps.detection.data import check_boxes

    with pytest.raises(ValueError, match=r"case_7: field 'box' must hold numbers .* got \[\['a', 1, 2, 3\]\]"):
        check_boxes([["a", 1, 2, 3]], [0], (48, 48), case="case_7")
    with pytest.raises(ValueError, match=r"case_7: field 'label' must hold one integer class per box"):
        check_boxes([[1, 1, 2, 3]], ["x", {}], (48, 48), case="case_7")
