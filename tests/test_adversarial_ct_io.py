"""Real CT end to end: load (Orientationd + Spacingd), attack slice-wise in HU, write NIfTI and DICOM
on the source grid, read back with nibabel / pydicom / ITK and check geometry, budget, UIDs, masks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.networks.nets import UNet
from monai.transforms import Compose, EnsureChannelFirstd, Invertd, Orientationd, Spacingd

from monai_smia.io import (
    LoadSeriesImage,
    LoadSeriesImaged,
    find_dicom_series,
    invert_perturbation,
    load_source_volume,
    rounding_survival,
    save_adversarial_nifti,
    write_adversarial_dicom_series,
)
from monai_smia.layers import with_intensity_window
from monai_smia.transforms import SMIAttackd

EPS = 20.0
CHEST = "ct/chest/lung_pet_ct_dx_A0002"
TS_DICOM = "ct/totalsegmentator/example_ct_dicom"
TS_NIFTI = "ct/totalsegmentator/example_ct.nii.gz"


def _hashes(path: Path) -> dict[str, str]:
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    unet = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=0)
    return with_intensity_window(unet, a_min=-1000.0, a_max=400.0)


def _within_budget(adv: np.ndarray, src: np.ndarray, eps: float) -> bool:
    tol = 4 * np.spacing(np.abs(src).astype(np.float32) + np.float32(eps)).astype(np.float64)
    return bool((np.abs(adv - src) <= eps + tol).all())


def _pipeline(source: str, pixdim: tuple[float, float, float]):
    pre = Compose(
        [
            LoadSeriesImaged("image", image_only=True),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS", labels=None),
            Spacingd("image", pixdim=pixdim, mode="bilinear"),
        ]
    )
    item = pre({"image": source})
    img = item["image"]
    item["mask"] = (img > -500).float()  # the body; no perturbation in the air around it
    item["label"] = ((img < -400) & (img > -1100)).long()  # a crude lung/air label for ground-truth mode
    return pre, item


@pytest.fixture(scope="module")
def chest_case(data_dir):
    src = data_dir / CHEST
    if not src.is_dir():
        pytest.skip(f"{src} is absent")
    before = _hashes(src)
    pre, item = _pipeline(str(src), (4.0, 4.0, 8.0))
    attack = SMIAttackd(
        "image",
        "label",
        _net(),
        eps=EPS,
        num_iter=3,
        slice_dim=2,
        slice_batch_size=8,
        mask_key="mask",
        perturbation_key="perturbation",
        bounds=None,
    )
    attack.set_random_state(0)
    out = attack(item)
    return src, before, pre, item, out


def test_attack_item_keeps_metadata_and_budget(chest_case):
    _, _, _, item, out = chest_case
    adv, clean = out["image"], item["image"]
    assert adv.shape == clean.shape and adv.dtype == clean.dtype
    assert torch.equal(adv.affine, clean.affine)
    assert len(adv.applied_operations) == len(clean.applied_operations)
    info = adv.meta["adversarial_attack"]
    assert info["attack"] == "SMIA" and info["eps"] == EPS and info["slice_dim"] == 2 and not info["label_free"]
    assert len(info["deviation_loss"]) == 3 and 0.0 <= info["positive_cosine_share"] <= 1.0
    assert info["final_variance"] > 0
    d = out["perturbation"]
    ulp = float(np.spacing(np.float32(clean.abs().max() + EPS)))
    assert float(d.abs().max()) <= EPS + 4 * ulp  # d = x_adv - x as stored in float32
    assert float(d[item["mask"].expand_as(d) == 0].abs().max()) == 0.0
    assert float(d[item["mask"].expand_as(d) == 1].abs().max()) > EPS / 2


def test_chest_dicom_to_nifti_and_dicom(chest_case, tmp_path):
    src, before, pre, _, out = chest_case
    d_src = invert_perturbation(out, "perturbation", pre)
    values, affine, files = load_source_volume(src)
    assert tuple(d_src.shape[1:]) == values.shape

    # NIfTI, float32: same grid as the series, within eps (4 ulp)
    rep = save_adversarial_nifti(src, d_src, tmp_path / "adv.nii.gz", eps=EPS)
    nii = nib.load(rep.path)
    assert nii.shape == values.shape and np.allclose(nii.affine, affine) and nii.get_data_dtype() == np.float32
    adv = nii.get_fdata(dtype=np.float64)
    assert _within_budget(adv, values, EPS) and rep.max_abs_change > EPS / 2

    # nothing changes where the body mask, brought back to the source grid, is zero
    inv_mask = Invertd("mask", pre, orig_keys="image", nearest_interp=False)(
        {"mask": out["mask"], "image": out["image"]}
    )["mask"]
    outside = inv_mask[0].numpy() == 0
    assert outside.any() and np.array_equal(adv[outside], values[outside])

    # DICOM series: one new DERIVED, uncompressed series with unique UIDs, same geometry per slice
    settings = {"attack": "SMIA", "eps": EPS, "num_iter": 3}
    report = write_adversarial_dicom_series(src, d_src, tmp_path / "dcm", eps=EPS, settings=settings)
    out_ds = [pydicom.dcmread(f) for f in report.files]
    src_ds = [pydicom.dcmread(f) for f in files]
    assert len(out_ds) == len(src_ds)
    assert {str(ds.SeriesInstanceUID) for ds in out_ds} == {report.series_instance_uid}
    assert report.series_instance_uid != str(src_ds[0].SeriesInstanceUID)
    sops = [str(ds.SOPInstanceUID) for ds in out_ds]
    assert len(set(sops)) == len(sops) and not set(sops) & {str(ds.SOPInstanceUID) for ds in src_ds}
    hu_max = 0.0
    for a, s in zip(out_ds, src_ds):
        assert a.ImageType[0] == "DERIVED"
        assert a.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID
        assert a.StudyInstanceUID == s.StudyInstanceUID and a.FrameOfReferenceUID == s.FrameOfReferenceUID
        assert a.PatientID == s.PatientID
        for tag in (
            "ImagePositionPatient",
            "ImageOrientationPatient",
            "PixelSpacing",
            "Rows",
            "Columns",
            "SliceThickness",
        ):
            assert a.get(tag) == s.get(tag), tag
        assert a.SourceImageSequence[0].ReferencedSOPInstanceUID == s.SOPInstanceUID
        hu_a = a.pixel_array * float(a.RescaleSlope) + float(a.RescaleIntercept)
        hu_s = s.pixel_array * float(s.RescaleSlope) + float(s.RescaleIntercept)
        hu_max = max(hu_max, float(np.abs(hu_a - hu_s).max()))
    assert EPS / 2 < hu_max <= EPS

    # ITK reads the new series on exactly the source grid, and it equals the integer NIfTI
    back = LoadSeriesImage(image_only=True)(str(report.folder))
    assert tuple(back.shape) == values.shape and np.allclose(back.affine.numpy(), affine)
    assert np.abs(back.numpy() - values).max() <= EPS
    rep_int = save_adversarial_nifti(src, d_src, tmp_path / "adv_int.nii.gz", eps=EPS, dtype="source")
    assert rep_int.dtype == "int16"
    assert np.array_equal(nib.load(rep_int.path).get_fdata(), back.numpy())

    # a rerun gives identical UIDs and byte-identical files; the sources were never written to
    first = _hashes(report.folder)
    again = write_adversarial_dicom_series(src, d_src, tmp_path / "dcm", eps=EPS, settings=settings, overwrite=True)
    assert (
        again.series_instance_uid == report.series_instance_uid and again.sop_instance_uids == report.sop_instance_uids
    )
    assert _hashes(report.folder) == first
    other = write_adversarial_dicom_series(src, d_src, tmp_path / "dcm2", eps=EPS, settings={**settings, "eps": 10})
    assert other.series_instance_uid != report.series_instance_uid
    assert _hashes(src) == before


def test_jpeg2000_series_written_uncompressed(data_dir, tmp_path):
    src = data_dir / TS_DICOM
    if not src.is_dir():
        pytest.skip(f"{src} is absent")
    before = _hashes(src)
    assert pydicom.dcmread(find_dicom_series(src)[0]).file_meta.TransferSyntaxUID.is_compressed
    values, affine, _ = load_source_volume(src)
    rng = np.random.default_rng(0)
    d = rng.uniform(-EPS, EPS, size=values.shape)
    report = write_adversarial_dicom_series(src, d, tmp_path / "dcm", eps=EPS, affine=affine, fractional_steps=4)
    ds = pydicom.dcmread(report.files[0])
    assert not ds.file_meta.TransferSyntaxUID.is_compressed and float(ds.RescaleSlope) == 0.25
    back = LoadSeriesImage(image_only=True)(str(report.folder))
    assert np.allclose(back.affine.numpy(), affine)
    diff = np.abs(back.numpy().astype(np.float64) - values)
    assert diff.max() <= EPS and np.abs(back.numpy() - (values + np.trunc(d * 4) / 4)).max() == 0
    assert _hashes(src) == before


def test_nifti_source_roundtrip_and_rounding(data_dir, tmp_path):
    src = data_dir / TS_NIFTI
    if not src.is_file():
        pytest.skip(f"{src} is absent")
    before = _hashes(src)
    pre, item = _pipeline(str(src), (6.0, 6.0, 6.0))
    net = _net()
    attack = SMIAttackd(
        "image", None, net, eps=EPS, bounds=None, num_iter=3, slice_dim=2, perturbation_key="perturbation"
    )
    out = attack(item)
    assert out["image"].meta["adversarial_attack"]["label_free"]
    d_src = invert_perturbation(out, "perturbation", pre)
    src_nii = nib.load(src)
    rep = save_adversarial_nifti(src, d_src, tmp_path / "adv.nii.gz", eps=EPS)
    rep_int = save_adversarial_nifti(src, d_src, tmp_path / "adv_int.nii.gz", eps=EPS, dtype="source")
    for r, dtype in ((rep, np.float32), (rep_int, np.int32)):
        nii = nib.load(r.path)
        assert nii.shape == src_nii.shape and np.array_equal(nii.affine, src_nii.affine)
        assert nib.aff2axcodes(nii.affine) == nib.aff2axcodes(src_nii.affine)
        assert np.allclose(nii.header.get_zooms(), src_nii.header.get_zooms())
        assert nii.get_data_dtype() == dtype
        assert _within_budget(nii.get_fdata(dtype=np.float64), src_nii.get_fdata(dtype=np.float64), EPS)
    diff_int = nib.load(rep_int.path).get_fdata() - src_nii.get_fdata()
    assert np.array_equal(diff_int, np.trunc(diff_int)) and 0 < rep_int.max_abs_change <= EPS

    def load(path):
        return pre({"image": str(path)})["image"].unsqueeze(0)

    report = rounding_survival(lambda x: _predict(net, x), load, src, rep.path, rep_int.path)
    assert set(report) == {"error_clean", "error_float", "error_integer", "survives"}
    assert report["error_clean"] == 0.0 and report["error_float"] > 0.0
    assert report["survives"] == (
        report["error_integer"] > 0 and report["error_integer"] >= 0.9 * report["error_float"]
    )
    assert _hashes(src) == before


def _predict(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    from monai.inferers import SliceInferer

    with torch.no_grad():
        return SliceInferer(roi_size=x.shape[2:4], spatial_dim=2, sw_batch_size=16)(x.float(), net).argmax(1)


def test_bad_inputs(data_dir, tmp_path):
    src = data_dir / CHEST
    if not src.is_dir():
        pytest.skip(f"{src} is absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no DICOM series"):
        find_dicom_series(empty)
    with pytest.raises(FileNotFoundError, match="no DICOM series found in"):
        LoadSeriesImage()(str(empty))
    with pytest.raises(FileNotFoundError, match="no DICOM series found in"):
        load_source_volume(empty)
    # two series in one folder: the chest series and the TotalSegmentator series, linked side by side
    both = tmp_path / "both"
    both.mkdir()
    for f in list(src.glob("*.dcm"))[:3] + list((data_dir / TS_DICOM).glob("*.dcm"))[:3]:
        (both / f.name).symlink_to(f)
    with pytest.raises(ValueError, match="holds 2 DICOM series"):
        LoadSeriesImaged("image")({"image": str(both)})
    with pytest.raises(ValueError, match="holds 2 DICOM series"):
        write_adversarial_dicom_series(both, np.zeros((512, 512, 3)), tmp_path / "o", eps=EPS, affine=np.eye(4))
    # a truncated NIfTI names the file
    good = data_dir / TS_NIFTI
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(ValueError, match="truncated.nii.gz"):
        save_adversarial_nifti(bad, np.zeros((122, 101, 112)), tmp_path / "x.nii.gz", eps=EPS)
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        save_adversarial_nifti(tmp_path / "missing.nii.gz", np.zeros((2, 2, 2)), tmp_path / "x.nii.gz", eps=EPS)
    # a perturbation not on the source grid
    with pytest.raises(ValueError, match="source grid"):
        save_adversarial_nifti(good, np.zeros((10, 10, 10)), tmp_path / "x.nii.gz", eps=EPS)
    with pytest.raises(ValueError, match="differ"):
        save_adversarial_nifti(good, np.zeros((122, 101, 112)), good, eps=EPS)
    assert not (tmp_path / "x.nii.gz").exists()
