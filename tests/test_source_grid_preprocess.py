"""Source-grid attacks: the bundle's preprocessing as a differentiable function of the source
voxels, the slice-wise network with bounded memory, and the stored-value lattice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.networks.nets import UNet
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    Lambdad,
    LoadImaged,
    Orientationd,
    RandGaussianNoised,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)

from monai_smia.apps.attack.source import (
    SliceWiseNetwork,
    SourceGridNetwork,
    SourceLattice,
    attack_source,
    source_sigma,
)
from monai_smia.attacks.registry import make_attack
from monai_smia.bundle.victim import load_victim
from monai_smia.transforms.differentiable import DifferentiablePreprocessing, split_preprocessing

LPS_AFFINE = torch.tensor(
    [[-0.7, 0, 0, 10.0], [0, -0.7, 0, 20.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1.0]], dtype=torch.float64
)
CT_NIFTI = "ct/totalsegmentator/example_ct_sm.nii.gz"


def _chain(dtype: torch.dtype = torch.float32, clip: bool = True) -> list:
    return [
        Orientationd("image", axcodes="RAS"),
        Spacingd("image", pixdim=(1.6, 1.3, -1), mode="bilinear", dtype=dtype),
        ScaleIntensityRanged("image", a_min=-1000, a_max=500, b_min=0.0, b_max=1.0, clip=clip),
        SpatialPadd("image", spatial_size=(8, 8, 4)),
    ]


def test_monai_preprocessing_passes_gradcheck():
    torch.manual_seed(0)
    src = MetaTensor(torch.zeros(1, 9, 7, 3, dtype=torch.float64), affine=LPS_AFFINE)
    pre = DifferentiablePreprocessing(_chain(torch.float64, clip=False), src.meta)
    x = (torch.rand(1, 1, 9, 7, 3, dtype=torch.float64) * 1000 - 800).requires_grad_(True)
    # Spacing returns float32 whatever its input: difference quotients over 1 HU of a map that is linear
    # between the window's edges, against entries of about 1/1500, leave float32 rounding (1e-7) well below atol
    assert pre(x).dtype == torch.float32
    assert torch.autograd.gradcheck(pre, (x,), eps=1.0, atol=1e-6, rtol=1e-3)


def test_forward_equals_the_bundle_compose_and_gradient_reaches_the_source(data_dir):
    pre = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"), *_chain(), EnsureTyped("image")])
    loading, rest = split_preprocessing(pre)
    assert [type(t).__name__ for t in loading] == ["LoadImaged", "EnsureChannelFirstd"]
    item = {"image": str(data_dir / CT_NIFTI)}
    for t in loading:
        item = t(item)
    src = item["image"]
    ref = pre({"image": str(data_dir / CT_NIFTI)})["image"]
    diff = DifferentiablePreprocessing(rest, src.meta)
    x = src.as_tensor()[None].clone().requires_grad_(True)
    y = diff(x)
    assert torch.equal(y[0], ref.as_tensor())  # MONAI's own transforms: bit-identical forward
    (g,) = torch.autograd.grad((y * torch.linspace(0.5, 1.5, y.numel()).reshape(y.shape)).sum(), x)
    inside = (src.as_tensor()[None] > -1000) & (src.as_tensor()[None] < 500)
    assert float((g[inside] != 0).double().mean()) > 0.9  # not silently zero inside the window
    deep_air = src.as_tensor()[None] < -1500  # outside the window after any interpolation: the clip's zero gradient
    assert not bool(deep_air.any()) or float(g[deep_air].abs().max()) == 0.0


def test_random_or_graph_leaving_transform_is_named():
    load = [LoadImaged("image"), EnsureChannelFirstd("image")]
    with pytest.raises(ValueError, match="RandGaussianNoised.*--grid network"):
        split_preprocessing(Compose([*load, RandGaussianNoised("image", prob=1.0)]))
    to_numpy = Lambdad("image", func=lambda t: MetaTensor(torch.as_tensor(np.asarray(t.detach())), meta=t.meta))
    _, rest = split_preprocessing(Compose([*load, Orientationd("image", axcodes="RAS"), to_numpy]))
    pre = DifferentiablePreprocessing(rest, MetaTensor(torch.zeros(1, 4, 4, 2), affine=LPS_AFFINE).meta)
    with pytest.raises(ValueError, match="Lambdad has no gradient path.*--grid network"):
        pre(torch.zeros(1, 1, 4, 4, 2, requires_grad=True))


def test_slice_wise_network_equals_per_slice_calls_with_checkpointed_gradient():
    torch.manual_seed(0)
    net = UNet(2, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0).double().eval()
    x = torch.rand(1, 1, 8, 8, 5, dtype=torch.float64, requires_grad=True)
    sw = SliceWiseNetwork(net, slice_dim=2, slice_batch_size=2)
    out = sw(x)
    ref = torch.stack([net(x[..., k]) for k in range(5)], dim=-1)
    assert torch.allclose(out, ref, atol=1e-12)
    (g1,) = torch.autograd.grad(out.square().sum(), x)
    (g2,) = torch.autograd.grad(ref.square().sum(), x)
    assert torch.allclose(g1, g2, atol=1e-10) and bool((g1 != 0).any())


def test_lattice_budget_bounds_and_variable():
    lat = SourceLattice(0.5, -1000.0, "int16")
    values = torch.tensor([-1000.0, -999.5, 0.0])
    u, scale, offset = lat.variable(values)
    assert torch.equal(u, torch.tensor([0.0, 1.0, 2000.0])) and (scale, offset) == (0.5, -1000.0)
    assert lat.budget(20.0) == 40.0 and lat.budget(20.3) == 40.0
    assert lat.bounds(scale, offset) == (-32768.0, 32767.0)
    hu = SourceLattice(1.0, -1024.0, "int16")
    assert hu.variable(values[:1])[1:] == (1.0, 0.0) and hu.bounds(1.0, 0.0) == (-32768.0 - 1024, 32767.0 - 1024)
    assert SourceLattice().budget(7.3) == 7.3 and SourceLattice().bounds(1.0, 0.0) is None
    assert source_sigma(1.0, LPS_AFFINE.numpy(), 3, 2) == [1.0, 1.0, 0.0]
    assert source_sigma(1.0, LPS_AFFINE.numpy()[:, [2, 0, 1, 3]], 3, 2) == [0.0, 1.0, 1.0]


def test_source_attack_keeps_the_lattice_and_the_budget():
    torch.manual_seed(0)
    net = UNet(2, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    src = MetaTensor(torch.zeros(1, 12, 10, 3), affine=LPS_AFFINE)
    pre = DifferentiablePreprocessing(_chain(), src.meta)
    lattice = SourceLattice(1.0, 0.0, "int16")
    model = SourceGridNetwork(pre, SliceWiseNetwork(net, 2, 2))
    u = torch.randint(-900, 400, (1, 1, 12, 10, 3)).float()
    for name in ("PGD", "SMIA", "noise"):
        attack = make_attack(name, model, 20.0, 3, 1.0, [1.0, 1.0, 0.0], 3, lattice.bounds(1.0, 0.0))
        u_adv, rounded = attack_source(attack, u, None, lattice, torch.Generator().manual_seed(0))
        d = u_adv - u
        assert not rounded and torch.equal(d, torch.round(d)) and float(d.abs().max()) == 20.0, name
    assert attack_source.__doc__ and make_attack("PGD", model, 20.0, 3).step_size == pytest.approx(50 / 3)


def test_bundle_preprocessing_runs_inside_the_attack():
    victim = load_victim("lung_ct_seg", device="cpu", labels=False)
    _, rest = split_preprocessing(victim.preprocessing)
    assert [type(t).__name__ for t in rest] == ["Orientationd", "Spacingd", "ScaleIntensityRanged", "EnsureTyped"]


def test_scaled_integer_nifti_keeps_a_lattice_perturbation_exactly(tmp_path):
    """A source stored with slope 0.1 and intercept -1024: a perturbation of whole stored steps (as the
    source-grid attack makes it) is written in the source's type and scaling without losing a step."""
    import nibabel as nib

    from monai_smia.apps.attack.cases import SourceCase
    from monai_smia.apps.attack.outputs import source_lattice
    from monai_smia.io import save_adversarial_nifti

    rng = np.random.default_rng(0)
    stored = rng.integers(-200, 3000, size=(6, 5, 4)).astype(np.int16)
    img = nib.Nifti1Image(stored, np.diag([0.8, 0.8, 2.0, 1.0]))
    img.header.set_slope_inter(0.1, -1024.0)  # kept on save: the array holds the stored values
    src = tmp_path / "scaled.nii.gz"
    nib.save(img, str(src))
    steps = rng.integers(-199, 200, size=stored.shape)  # 200 steps of the float32 slope 0.1 exceed 20 HU
    slope = nib.load(str(src)).dataobj.slope  # 0.1 as the header's float32 holds it
    rep = save_adversarial_nifti(src, steps * slope, tmp_path / "adv.nii.gz", eps=20.0, dtype="source")
    adv = nib.load(str(tmp_path / "adv.nii.gz"))
    assert adv.get_data_dtype() == np.int16 and (adv.dataobj.slope, adv.dataobj.inter) == pytest.approx((0.1, -1024.0))
    assert np.array_equal(np.asarray(adv.dataobj.get_unscaled()).astype(np.int64) - stored, steps)
    lattice = source_lattice(SourceCase("scaled", src, "nifti"))
    assert (lattice.scale, lattice.offset, lattice.dtype) == (slope, -1024.0, "int16")
    assert rep.max_abs_change <= 20.0 and rep.max_abs_change == pytest.approx(np.abs(steps).max() * slope)
