"""Slice-wise attack transforms and the AttackInferer on a real CT (TotalSegmentator example, 30 slices),
downsampled so that each test runs in seconds on a CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import PrepareBatchExtraInput, SupervisedEvaluator
from monai.handlers import MeanDice, PeakSignalToNoiseRatio, from_engine
from monai.inferers import SimpleInferer, SliceInferer, SlidingWindowInferer
from monai.networks.nets import UNet
from monai.transforms import AsDiscreted, Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd

from monai_smia import FGSM, PGD, SMIA
from monai_smia.inferers import AdversarialImageHandler, AttackInferer
from monai_smia.layers import IntensityWindow, with_intensity_window
from monai_smia.attacks.volume import attack_volumes
from monai_smia.transforms import ATTACK_META_KEY, AdversarialAttackd, SMIAttack, SMIAttackd

EPS = 20.0
CT = "ct/totalsegmentator/example_ct_sm.nii.gz"
SEG = "ct/totalsegmentator/example_seg.nii.gz"


def _unet(dtype: torch.dtype = torch.float32, dims: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    unet = UNet(spatial_dims=dims, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=0)
    return with_intensity_window(unet, a_min=-1000.0, a_max=400.0).to(dtype)


@pytest.fixture(scope="module")
def ct_item(data_dir):
    ct, seg = data_dir / CT, data_dir / SEG
    if not ct.is_file() or not seg.is_file():
        pytest.skip(f"{ct} or {seg} is absent")
    pre = Compose(
        [
            LoadImaged(["image", "label"], image_only=True),
            EnsureChannelFirstd(["image", "label"]),
            Orientationd(["image", "label"], axcodes="RAS", labels=None),
            Spacingd(["image", "label"], pixdim=(6.0, 6.0, 6.0), mode=("bilinear", "nearest")),
        ]
    )
    item = pre({"image": str(ct), "label": str(seg)})
    # even in-plane sizes for the stride-2 UNet (crops keep the affine's origin)
    item = {
        "image": item["image"][:, :60, :50],
        "label": (item["label"][:, :60, :50] > 0).long(),
    }  # any organ vs background
    item["mask"] = (item["image"] > -500).float()
    return item


def test_intensity_window_matches_monai_and_gradients():
    from monai.transforms import ScaleIntensityRange

    x = torch.linspace(-1500, 1500, 301, dtype=torch.float32).reshape(1, 1, 301)
    for clip in (True, False):
        ref = ScaleIntensityRange(-1000, 400, 0.0, 1.0, clip=clip)(x)
        assert torch.equal(IntensityWindow(-1000, 400, clip=clip)(x), ref.as_tensor())
    xr = x.clone().requires_grad_(True)
    IntensityWindow(-1000, 400)(xr).sum().backward()
    inside = (x > -1000) & (x < 400)
    assert torch.allclose(xr.grad[inside], torch.tensor(1 / 1400)) and torch.all(xr.grad[(x < -1000) | (x > 400)] == 0)
    xs = x.clone().requires_grad_(True)
    y = IntensityWindow(-1000, 400, straight_through=True)(xs)
    y.sum().backward()
    assert torch.equal(y.detach(), IntensityWindow(-1000, 400)(x)) and torch.allclose(xs.grad, torch.tensor(1 / 1400))
    with pytest.raises(ValueError, match="a_min < a_max"):
        IntensityWindow(400, -1000)


def test_batch_size_independent_float64_and_equal_to_sliceinferer(ct_item):
    x = ct_item["image"].as_tensor()[None, :, :, :, 4:10].double()
    y = ct_item["label"].as_tensor()[None, :, :, :, 4:10]
    net = _unet(torch.float64)
    attack = SMIA(net, eps=EPS, num_iter=3, bounds=None, spatial_dims=2)
    results = [attack_volumes(attack, x, y, slice_dim=2, slice_batch_size=bs) for bs in (1, 4, 6)]
    for r in results[1:]:
        assert torch.equal(r.adversarial, results[0].adversarial)
        for key in ("deviation_loss", "perturbation_variance", "positive_cosine_share", "final_variance"):
            assert r.trace.summary()[key] == pytest.approx(results[0].trace.summary()[key], rel=1e-6)
    assert float(results[0].perturbation.abs().max()) == EPS

    class ThroughSliceInferer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.inferer = SliceInferer(roi_size=x.shape[2:4], spatial_dim=2, sw_batch_size=3)

        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return self.inferer(v, self.net)

    whole = SMIA(ThroughSliceInferer(), eps=EPS, num_iter=3, bounds=None, spatial_dims=3, sigma=(1.0, 1.0, 0.0))
    assert torch.equal(whole(x, y), results[0].adversarial)


def test_float32_batch_sizes_agree_on_metrics(ct_item):
    item = {"image": ct_item["image"][..., 2:10], "label": ct_item["label"][..., 2:10]}
    t = {
        bs: SMIAttackd("image", "label", _unet(), eps=EPS, bounds=None, num_iter=3, slice_dim=2, slice_batch_size=bs)
        for bs in (3, 8)
    }
    info = {bs: tr(item)["image"].meta[ATTACK_META_KEY] for bs, tr in t.items()}
    for key in ("final_variance", "error_adversarial", "changed_fraction"):
        assert info[3][key] == pytest.approx(info[8][key], rel=0.02, abs=1e-3)


def test_label_free_ground_truth_mask_and_metadata(ct_item):
    net = _unet()
    gt = SMIAttackd(
        "image", "label", net, eps=EPS, bounds=None, num_iter=3, slice_dim=2, mask_key="mask", perturbation_key="delta"
    )
    free = SMIAttackd("image", None, net, eps=EPS, bounds=None, num_iter=3, slice_dim=2)
    out_gt, out_free = gt(ct_item), free(ct_item)
    a, b = out_gt["image"], out_free["image"]
    assert isinstance(a, MetaTensor) and torch.equal(a.affine, ct_item["image"].affine)
    assert a.meta["filename_or_obj"] == ct_item["image"].meta["filename_or_obj"]
    assert not a.meta[ATTACK_META_KEY]["label_free"] and b.meta[ATTACK_META_KEY]["label_free"]
    assert b.meta[ATTACK_META_KEY]["error_clean"] == 0.0 and b.meta[ATTACK_META_KEY]["changed_fraction"] > 0
    # one meaning of "success" (metrics.case_success); the diagnostics say only whether the error rate rose
    for info in (a.meta[ATTACK_META_KEY], b.meta[ATTACK_META_KEY]):
        assert "success" not in info
        assert info["error_rate_rose"] is (info["error_adversarial"] > info["error_clean"])
    assert b.meta[ATTACK_META_KEY]["error_rate_rose"]
    assert not torch.equal(a, b)
    delta = out_gt["delta"]
    assert torch.equal(delta[ct_item["mask"] == 0], torch.zeros_like(delta[ct_item["mask"] == 0]))
    assert ATTACK_META_KEY not in ct_item["image"].meta  # input untouched
    assert torch.equal(ct_item["image"], ct_item["image"].clone())


def test_generic_attackd_random_start_per_volume(ct_item):
    item = {"image": ct_item["image"][..., :6], "label": ct_item["label"][..., :6]}
    pgd = PGD(_unet(), eps=EPS, num_iter=2, bounds=None, random_start=True)
    t = AdversarialAttackd("image", "label", pgd, slice_dim=2, slice_batch_size=4, perturbation_key="d")
    runs = []
    for seed in (0, 0, 1):
        t.set_random_state(seed)
        runs.append(t(item)["image"])
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    t.set_random_state(0)
    t.attacker.slice_batch_size = 1
    assert torch.equal(t(item)["image"], runs[0])  # the random start is drawn per volume, not per slice batch
    fgsm = AdversarialAttackd("image", None, FGSM(_unet(), eps=EPS, bounds=None), slice_dim=2)
    assert fgsm(item)["image"].meta[ATTACK_META_KEY]["attack"] == "FGSM"


def test_defaults_agree_and_old_aliases_warn():
    """SMIA, SMIAttack(d) and AttackInferer share their defaults; the extra Attackd names are deprecated."""
    import inspect

    import monai_smia.transforms as T

    def defaults(obj, names):
        sig = inspect.signature(obj.__init__)
        return {n: sig.parameters[n].default for n in names if n in sig.parameters}

    shared = ("num_iter", "step_size", "alpha", "sigma", "bounds", "random_start", "loss", "stabilization")
    assert (
        defaults(SMIA, shared)
        == defaults(SMIAttack, shared)
        == {**defaults(SMIAttackd, shared), **defaults(SMIAttack, ["loss", "random_start", "stabilization"])}
    )
    assert defaults(SMIA, ["bounds"]) == {"bounds": (0.0, 1.0)}
    assert (
        defaults(SMIAttack, ["compute_success"])
        == defaults(SMIAttackd, ["compute_success"])
        == defaults(AttackInferer, ["compute_success"])
        == {"compute_success": True}
    )
    for name in ("Attackd", "AttackD", "AttackDict"):
        with pytest.warns(FutureWarning, match="use AdversarialAttackd"):
            assert getattr(T, name) is T.AdversarialAttackd
    assert {
        "AdversarialAttackd",
        "AdversarialAttackD",
        "AdversarialAttackDict",
        "SMIAttackd",
        "SMIAttackD",
        "SMIAttackDict",
    } <= set(T.__all__)
    assert not {"Attackd", "AttackD", "AttackDict"} & set(T.__all__)


def test_bad_inputs(ct_item):
    net = _unet()
    with pytest.raises(ValueError, match="slice_dim=3"):
        SMIAttack(net, eps=EPS, bounds=None, slice_dim=3)(ct_item["image"])
    with pytest.raises(ValueError, match="spatial dims"):
        SMIAttack(net, eps=EPS, bounds=None, slice_dim=2)(ct_item["image"][:, :, :, 0])
    with pytest.raises(ValueError, match="label of shape|labels of shape"):
        SMIAttackd("image", "label", net, eps=EPS, bounds=None, slice_dim=2)(
            {"image": ct_item["image"], "label": ct_item["label"][..., :-1]}
        )
    with pytest.raises(ValueError, match="mask of shape"):
        SMIAttackd("image", None, net, eps=EPS, bounds=None, slice_dim=2, mask_key="m")(
            {"image": ct_item["image"], "m": ct_item["mask"][:, :-1]}
        )
    with pytest.raises(KeyError, match="label key 'seg'"):
        SMIAttackd("image", "seg", net, eps=EPS, bounds=None, slice_dim=2)({"image": ct_item["image"]})
    with pytest.raises(KeyError):
        SMIAttackd("ct", None, net, eps=EPS, bounds=None, slice_dim=2)({"image": ct_item["image"]})
    assert "ct" not in SMIAttackd("ct", None, net, eps=EPS, bounds=None, slice_dim=2, allow_missing_keys=True)(
        {"image": 1}
    )
    with pytest.raises(ValueError, match="key 'image'.*network failed"):
        three_channel = UNet(spatial_dims=2, in_channels=3, out_channels=2, channels=(4, 8), strides=(2,))
        SMIAttackd("image", None, three_channel, eps=EPS, bounds=None, slice_dim=2)({"image": ct_item["image"]})
    with pytest.raises(ValueError, match="perturbation_key"):
        SMIAttackd("image", "label", net, eps=EPS, bounds=None, perturbation_key="label")


@pytest.mark.parametrize("use_labels", [True, False])
def test_supervised_evaluator_with_attack_inferer(ct_item, use_labels):
    net = _unet()
    item = {"image": ct_item["image"][..., :8], "label": ct_item["label"][..., :8]}
    loader = DataLoader(Dataset([item, item]), batch_size=2)
    inferer = AttackInferer(
        SMIA(net, eps=EPS, num_iter=2, bounds=None),
        SliceInferer(roi_size=item["image"].shape[1:3], spatial_dim=2, sw_batch_size=4),
        use_labels=use_labels,
        compute_success=True,
    )
    post = Compose([AsDiscreted("pred", argmax=True, to_onehot=2), AsDiscreted("label", to_onehot=2)])
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=net,
        inferer=inferer,
        prepare_batch=PrepareBatchExtraInput({"labels": "label"}),
        postprocessing=post,
        key_val_metric={"dice": MeanDice(include_background=False, output_transform=from_engine(["pred", "label"]))},
        additional_metrics={
            "psnr": PeakSignalToNoiseRatio(max_val=1400.0, output_transform=from_engine(["image_adv", "image"]))
        },
    )
    AdversarialImageHandler(inferer, output_key="image_adv").attach(evaluator)
    evaluator.run()
    psnr = evaluator.state.metrics["psnr"]
    # |d| <= 20 HU: PSNR >= 20 log10(1400 / 20) = 36.9 dB
    assert 20 * np.log10(1400 / EPS) - 1e-6 <= psnr < 200
    assert 0.0 <= evaluator.state.metrics["dice"] <= 1.0
    diag = inferer.last_diagnostics
    assert len(diag) == 2 and diag[0]["label_free"] is (not use_labels) and diag[0]["slice_dim"] == 2
    # the attack agrees with the transform on the same item (same network, same mode)
    t = SMIAttackd("image", "label" if use_labels else None, net, eps=EPS, bounds=None, num_iter=2, slice_dim=2)
    assert torch.equal(inferer.last_adversarial[0], t(item)["image"].as_tensor())
    assert all(p.requires_grad for p in net.parameters()) and net.training  # the state it was created in


def test_attack_inferer_simple_and_sliding_window(ct_item):
    x = ct_item["image"].as_tensor()[None, :, :32, :32, :14]
    net3d = _unet(dims=3)
    attack = PGD(net3d, eps=EPS, num_iter=2, bounds=None)
    simple = AttackInferer(attack, SimpleInferer())
    with torch.no_grad():
        pred = simple(x, net3d)
        pred_sw = AttackInferer(attack, SlidingWindowInferer(roi_size=(32, 32, 14)))(x, net3d)
        clean = net3d(x)
    assert pred.shape == (1, 2, 32, 32, 14) and torch.allclose(pred, pred_sw, atol=1e-5)
    # the prediction is the attacked one: the input moved by up to eps, and so did the output
    d = simple.last_adversarial - x
    assert 0.5 * EPS < float(d.abs().max()) <= EPS + 1e-3
    assert not torch.allclose(pred, clean, atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(pred, net3d(simple.last_adversarial), atol=1e-5)
