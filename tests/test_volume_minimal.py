"""attack_volumes keeps the minimal-norm result (DAG, DeepFool) of every slice batch and volume,
not only the last call's."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNet

from monai_smia import DAG, DeepFool
from monai_smia.attacks.volume import attack_volumes


def _segmenter() -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(2, 1, 3, channels=(4, 8), strides=(2,), num_res_units=0).double().eval()


def _volumes(b: int = 2, depth: int = 5):
    g = torch.Generator().manual_seed(0)
    vol = torch.rand(b, 1, 8, 8, depth, generator=g, dtype=torch.float64)
    label = torch.randint(0, 3, (b, 1, 8, 8, depth), generator=g)
    return vol, label


def test_dag_through_volumes_keeps_every_slice_batch():
    vol, label = _volumes()
    attack = DAG(_segmenter(), eps=0.05, gamma=0.01, max_iter=10)
    # the reference: every slice of both volumes attacked in one call (a slice's result does not
    # depend on the others: per-sample steps, per-sample early stop)
    slices = vol.permute(0, 4, 1, 2, 3).reshape(-1, 1, 8, 8)
    attack(slices, label.permute(0, 4, 1, 2, 3).reshape(-1, 1, 8, 8))
    ref = attack.result
    ref_unc = ref.unconstrained.reshape(2, 5, 1, 8, 8).permute(0, 2, 3, 4, 1)
    ref_norms = ref.norms.reshape(2, 5).pow(2).sum(1).sqrt()
    assert bool((ref.norms.reshape(2, 5) > 0).all())  # every slice moved: a lost batch would show
    for bs in (1, 2, 5):
        result = attack_volumes(attack, vol, label, slice_dim=2, slice_batch_size=bs)
        m = result.minimal
        assert m is not None and attack.result is m
        assert torch.equal(m.unconstrained, ref_unc)  # all slices of both volumes, not the last batch's
        assert torch.allclose(m.norms, ref_norms, rtol=1e-12)
        assert torch.equal(m.linf, ref.linf.reshape(2, 5).amax(1))
        assert torch.equal(m.iterations, ref.iterations.reshape(2, 5).amax(1))
        assert torch.allclose(m.error, ref.error.reshape(2, 5).mean(1).float())
        # the projected result is unchanged by the fix
        assert float((result.adversarial - vol).abs().max()) <= 0.05 + 1e-12


def test_deepfool_through_a_batch_keeps_every_image():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3)).double().eval()
    x = 0.4 + 0.2 * torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    attack = DeepFool(net, eps=0.01)
    attack(x)
    ref = attack.result
    result = attack_volumes(attack, x)  # one image per call inside
    assert result.minimal is not None and result.minimal.norms.shape == (4,)
    assert torch.allclose(result.minimal.unconstrained, ref.unconstrained, rtol=0, atol=1e-12)
    assert torch.allclose(result.minimal.norms, ref.norms, rtol=1e-12)
    assert torch.equal(result.minimal.iterations, ref.iterations)


def test_other_attacks_have_no_minimal_result():
    from monai_smia import PGD

    vol, label = _volumes(1, 3)
    result = attack_volumes(PGD(_segmenter(), eps=0.02, num_iter=2), vol, label, slice_dim=2, slice_batch_size=2)
    assert result.minimal is None


@pytest.mark.parametrize("bs", [2])
def test_dag_whole_volume_network_result_per_volume(bs):
    """slice_dim=None with a 3D network: one minimal-norm sample per volume as well."""
    torch.manual_seed(0)
    net = UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0).double().eval()
    vol, _ = _volumes(2, 4)
    label = torch.randint(0, 2, (2, 1, 8, 8, 4), generator=torch.Generator().manual_seed(2))
    attack = DAG(net, eps=0.05, gamma=0.01, max_iter=5)
    result = attack_volumes(attack, vol, label, slice_batch_size=bs)
    attack(vol, label)
    assert torch.equal(result.minimal.unconstrained, attack.result.unconstrained)
    assert torch.allclose(result.minimal.norms, attack.result.norms, rtol=1e-12)
