"""Bad inputs found before anything is written (no settings.json left behind to block the corrected
rerun): an attack that does not fit the bundle's task, through ``monai-smia attack`` on real data."""

from __future__ import annotations

from pathlib import Path

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


def _datalist(folder, item, fill):
    import json
    import shutil

    folder.mkdir()
    entry = {}
    for key, value in item.items():
        if isinstance(value, str):  # the datalist's files live inside the dataset folder: copy them there
            value = shutil.copy(value.format(**fill), folder / f"{key}_{Path(value.format(**fill)).name}")
            value = Path(value).name
        entry[key] = value
    (folder / "datalist.json").write_text(json.dumps({"test": [entry]}))
    return folder


@pytest.mark.parametrize(
    ("bundle", "item", "said"),
    [
        ("mnist_cls", {"image": "{mnist_png}", "label": 12}, "its label 12 is outside the bundle's classes 0..9"),
        ("mnist_cls", {"image": "{mnist_png}", "label": 7.5}, "its label 7.5 is not a class index"),
        (
            "lung_ct_seg",
            {"image": "{ts}/example_ct_sm.nii.gz", "label": "{ts}/example_seg.nii.gz"},
            "outside the bundle's classes 0..1",
        ),
        (
            "lung_ct_seg",
            {"image": "{ts}/example_ct_sm.nii.gz", "label": "{ts}/example_seg_v1.nii.gz"},
            "has shape (122, 101, 112), its image",
        ),
        (
            "lung_ct_seg",
            {"image": "{cxr}", "label": "{ts}/example_seg.nii.gz"},
            "is a 2D image of size (512, 512); the bundle takes 3D volumes",
        ),
    ],
)
def test_labels_and_images_that_do_not_fit_the_bundle_are_refused(
    bundle, item, said, mnist, data_dir, tmp_path, capsys
):
    fill = {"mnist_png": str(next(mnist.rglob("*.png"))), "ts": str(data_dir / "ct" / "totalsegmentator"),
            "cxr": str(data_dir / "xray" / "nih_cxr" / "00000001_000.png")}  # fmt: skip
    data = _datalist(tmp_path / "data", item, fill)
    out = tmp_path / "out"
    argv = ["evaluate", "--bundle", bundle, "--dataset-dir", str(data), "--output", str(out), "--attacks", "FGSM"]
    assert main([*argv, "--eps", "0.1", "--device", "cpu"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("monai-smia evaluate: error:")]
    assert len(errors) == 1 and said in errors[0], errors
    assert not out.exists()


def test_a_run_that_fails_before_any_case_leaves_no_settings(mnist, tmp_path, monkeypatch, capsys):
    """A failure that can only show at run time (here: the first attack call fails): exit 2, no folder left that
    would refuse the corrected rerun with other settings as 'results of other settings'."""
    from monai_smia.attacks import FGSM

    def broken(self, *args, **kwargs):
        raise RuntimeError("a failure only the run can show")

    png = next(mnist.rglob("*.png"))
    out = tmp_path / "out"
    argv = ["attack", "--bundle", "mnist_cls", "--input", str(png), "--output", str(out), "--device", "cpu"]
    with monkeypatch.context() as m:
        m.setattr(FGSM, "perturb", broken)
        assert main([*argv, "--attack", "FGSM"]) == 2
    assert "a failure only the run can show" in capsys.readouterr().err and not out.exists()
    assert main([*argv, "--attack", "PGD", "--num-iter", "2"]) == 0
    assert (out / "settings.json").is_file() and any((out / "cases").rglob("*.json"))


@pytest.mark.parametrize(
    ("command", "grid"), [("attack", "source"), ("attack", "network"), ("evaluate", "network"), ("evaluate", "source")]
)
def test_a_cut_short_dicom_slice_is_named_on_every_path(command, grid, data_dir, tmp_path, capsys):
    """A real chest CT series with one slice cut short: every path names the slice, before any bundle
    preprocessing runs and before anything is written (it used to say 'applying transform LoadImaged')."""
    import json
    import shutil

    src = data_dir / "ct" / "chest" / "lung_pet_ct_dx_A0002"
    if not src.is_dir():
        pytest.skip(f"{src} is absent")
    data = tmp_path / "data"
    series = data / "series"
    series.mkdir(parents=True)
    for f in sorted(src.glob("*.dcm"))[10:16]:
        shutil.copy(f, series / f.name)
    broken = sorted(series.glob("*.dcm"))[3]
    broken.write_bytes(broken.read_bytes()[:-4000])
    label = shutil.copy(data_dir / "ct" / "totalsegmentator" / "example_seg.nii.gz", data / "label.nii.gz")
    (data / "datalist.json").write_text(json.dumps({"test": [{"image": "series", "label": Path(label).name}]}))
    out = tmp_path / "out"
    source = ["--input", str(series)] if command == "attack" else ["--dataset-dir", str(data), "--attacks", "FGSM"]
    argv = [command, "--bundle", "lung_ct_seg", *source, "--output", str(out), "--grid", grid, "--device", "cpu"]
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"monai-smia {command}: error:")]
    assert len(errors) == 1 and broken.name in errors[0] and "cut short" in errors[0], errors
    assert not out.exists()
