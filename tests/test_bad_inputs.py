"""Bad image files through the CLI: exit 2, one line naming the file and the reason, nothing
written, the input unchanged. Files are broken copies of real data: TotalSegmentator's small example CT
(int16 HU, 3 mm) and RetinaMNIST fundus images."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from monai_smia.bundle.data import CaseError
from monai_smia.bundle.inputs import InputSpec, check_image_file
from monai_smia.cli import main

CT = Path("ct") / "totalsegmentator" / "example_ct_sm.nii.gz"
SEG = Path("ct") / "totalsegmentator" / "example_seg.nii.gz"
BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


def _ct(data_dir: Path) -> nib.Nifti1Image:
    if not (data_dir / CT).is_file():
        pytest.skip(f"{CT} is absent from the data folder")
    return nib.load(str(data_dir / CT))


def _broken_nifti(kind: str, src: Path, img: nib.Nifti1Image, out: Path) -> str:
    """Write the ``kind`` of broken copy of ``src`` to ``out``; return what the error must say."""
    arr = np.asarray(img.dataobj)
    if kind == "zero_byte":
        out.write_bytes(b"")
        return "is empty"
    if kind == "truncated":
        data = src.read_bytes()
        out.write_bytes(data[: len(data) // 2])
        return "cut short"
    if kind == "4d":
        nib.save(nib.Nifti1Image(np.stack([arr, arr], axis=-1), img.affine), str(out))
        return "is 4D"
    if kind == "2d":
        nib.save(nib.Nifti1Image(arr[:, :, 15], img.affine), str(out))
        return "is 2D"
    vol = arr.astype(np.float32)
    vol[60, 50, 15] = np.nan
    nib.save(nib.Nifti1Image(vol, img.affine), str(out))
    return "NaN or Inf"


@pytest.mark.parametrize("kind", ["zero_byte", "truncated", "4d", "2d", "nan"])
def test_bad_nifti_in_a_datalist(kind, data_dir, tmp_path, capsys):
    """evaluate on the slice-wise lung bundle: the bad case is named before any output exists."""
    img = _ct(data_dir)
    data = tmp_path / "data"
    data.mkdir()
    good = data / "good.nii.gz"
    good.write_bytes((data_dir / CT).read_bytes())
    label = np.asarray(nib.load(str(data_dir / SEG)).dataobj) > 0
    nib.save(nib.Nifti1Image(label.astype(np.uint8), img.affine), str(data / "label.nii.gz"))
    said = _broken_nifti(kind, data_dir / CT, img, data / "bad.nii.gz")
    items = [{"image": n, "label": "label.nii.gz"} for n in ("good.nii.gz", "bad.nii.gz")]
    (data / "datalist.json").write_text(json.dumps({"name": "bad", "training": [], "validation": [], "test": items}))
    before = {p: p.read_bytes() for p in data.iterdir()}
    out = tmp_path / "out"
    args = ["evaluate", "--bundle", "lung_ct_seg", "--dataset-dir", str(data), "--output", str(out)]
    assert main([*args, "--attacks", "FGSM", "--num-iter", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.nii.gz" in err and said in err, err
    assert not out.exists()
    assert {p: p.read_bytes() for p in data.iterdir()} == before


def _fundus(data_dir: Path) -> np.ndarray:
    npz = data_dir / "fundus" / "retinamnist.npz"
    if not npz.is_file():
        pytest.skip(f"{npz} is absent")
    return np.load(npz)["test_images"][0]


@pytest.mark.parametrize(
    "kind, bundle, said",
    [
        ("rgba", "retina_dr_cls", "'RGBA' image"),
        ("grey_to_rgb", "retina_dr_cls", "takes RGB (3 channels)"),
        ("16bit", "mnist_cls", "takes 8-bit images"),
        ("palette", "mnist_cls", "'P' image"),
    ],
)
def test_bad_png_to_attack(kind, bundle, said, data_dir, tmp_path, capsys):
    """attack on the PNG bundles: an image of the wrong kind is refused, never saturated or converted."""
    rgb = _fundus(data_dir)
    grey = Image.fromarray(rgb).convert("L")
    src = tmp_path / f"{kind}.png"
    if kind == "rgba":
        Image.fromarray(rgb).convert("RGBA").save(src)
    elif kind == "grey_to_rgb":
        grey.save(src)
    elif kind == "16bit":
        Image.fromarray(np.asarray(grey).astype(np.uint16) * 257).save(src)
    else:
        Image.fromarray(rgb).convert("P").save(src)
    before = src.read_bytes()
    out = tmp_path / "adv"
    assert (
        main(
            [
                "attack",
                "--bundle",
                bundle,
                "--input",
                str(src),
                "--output",
                str(out),
                "--num-iter",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and src.name in err and said in err, err
    assert not out.exists() and src.read_bytes() == before


def test_checks_accept_what_the_bundles_take(data_dir, tmp_path):
    """The real files pass: the int16 CT for a slice-wise bundle, an RGB fundus PNG and its grey copy."""
    _ct(data_dir)
    check_image_file(data_dir / CT, InputSpec(num_channels=1, spatial_ndim=3))
    rgb, grey = tmp_path / "rgb.png", tmp_path / "grey.png"
    Image.fromarray(_fundus(data_dir)).save(rgb)
    Image.fromarray(_fundus(data_dir)).convert("L").save(grey)
    check_image_file(rgb, InputSpec(num_channels=3, spatial_ndim=2, max_value=255.0))
    check_image_file(grey, InputSpec(num_channels=1, spatial_ndim=2, max_value=255.0))
    with pytest.raises(CaseError, match="takes 2D images"):
        check_image_file(data_dir / CT, InputSpec(num_channels=1, spatial_ndim=2))
    one_slice = tmp_path / "slice.nii.gz"  # a 2D image saved as (X, Y, 1) is 2D
    img = nib.load(str(data_dir / CT))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, 15:16], img.affine), str(one_slice))
    check_image_file(one_slice, InputSpec(num_channels=1, spatial_ndim=2))


def test_datalist_item_without_label(data_dir, tmp_path, capsys):
    """A labelled evaluation whose second case has no label stops before anything is written, naming it."""
    img = _ct(data_dir)
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        (data / name).write_bytes((data_dir / CT).read_bytes())
    label = np.asarray(nib.load(str(data_dir / SEG)).dataobj) > 0
    nib.save(nib.Nifti1Image(label.astype(np.uint8), img.affine), str(data / "label.nii.gz"))
    items = [{"image": "a.nii.gz", "label": "label.nii.gz"}, {"image": "b.nii.gz"}]
    (data / "datalist.json").write_text(json.dumps({"name": "bad", "training": [], "validation": [], "test": items}))
    out = tmp_path / "out"
    args = ["evaluate", "--bundle", "lung_ct_seg", "--dataset-dir", str(data), "--output", str(out)]
    assert main([*args, "--attacks", "FGSM", "--num-iter", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "b.nii.gz" in err and "no 'label'" in err, err
    assert not out.exists()
