"""The algorithm of docs/design.md, section 1, checked against independent computations and torchattacks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.networks.layers import GaussianFilter
from monai.networks.nets import DenseNet121, UNet

from monai_smia import FGSM, PGD, SMIA


def seg_net(out_ch: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return UNet(2, 1, out_ch, channels=(8, 16), strides=(2,), num_res_units=1).double().eval()


def data(out_ch: int = 3, b: int = 3, side: int = 16):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(b, 1, side, side, generator=g, dtype=torch.float64)
    y = torch.randint(0, max(out_ch, 2), (b, 1, side, side), generator=g)
    return x, y


def test_alpha_zero_is_pgd_without_random_start():
    net = seg_net()
    x, y = data()
    a = SMIA(net, eps=0.05, num_iter=5, alpha=0.0)(x, y)
    b = PGD(net, eps=0.05, num_iter=5, random_start=False)(x, y)
    assert torch.equal(a, b)


def test_one_step_of_size_eps_is_fgsm():
    net = seg_net()
    x, y = data()
    a = SMIA(net, eps=0.05, num_iter=1, step_size=0.05)(x, y)
    b = FGSM(net, eps=0.05)(x, y)
    assert torch.equal(a, b)
    # and FGSM is x + eps * sign(grad CE), clipped to [0, 1], computed by hand
    xr = x.clone().requires_grad_(True)
    F.cross_entropy(net(xr), y[:, 0]).backward()
    assert torch.equal(b, (x + 0.05 * xr.grad.sign()).clamp(0, 1))


def test_second_iteration_matches_hand_computation():
    """Iteration 2 is the first with the stabilization term:
    J = CE(f(x+d), y) - alpha * CE(f(x+d), softmax f(x + W*d))."""
    net = seg_net()
    x, y = data()
    eps, step, alpha, sigma = 0.05, 0.02, 0.7, 1.3
    gauss = GaussianFilter(2, sigma).double()

    def proj(d):
        d = d.clamp(-eps, eps)
        return (x + d).clamp(0, 1) - x

    d = torch.zeros_like(x, requires_grad=True)
    F.cross_entropy(net(x + d), y[:, 0]).backward()
    d1 = proj(step * d.grad.sign())
    d = d1.clone().requires_grad_(True)
    with torch.no_grad():
        s = torch.softmax(net(x + gauss(d1)), dim=1)
    logits = net(x + d)
    j = F.cross_entropy(logits, y[:, 0]) - alpha * (-(s * F.log_softmax(logits, dim=1)).sum(1)).mean()
    j.backward()
    expected = x + proj(d1 + step * d.grad.sign())

    attack = SMIA(net, eps=eps, num_iter=2, step_size=step, alpha=alpha, sigma=sigma)
    got = attack(x, y)
    assert torch.allclose(got, expected, atol=1e-12, rtol=0)
    assert torch.isnan(attack.trace.stabilization_loss[0]).all()
    assert torch.isfinite(attack.trace.stabilization_loss[1]).all()


def test_stabilization_changes_the_result():
    net = seg_net()
    x, y = data()
    a = SMIA(net, eps=0.05, num_iter=5, alpha=1.0)(x, y)
    b = SMIA(net, eps=0.05, num_iter=5, alpha=0.0)(x, y)
    assert not torch.equal(a, b)
    hard = SMIA(net, eps=0.05, num_iter=5, alpha=1.0, stabilization="hard")(x, y)
    assert not torch.equal(hard, b)


def test_binary_single_channel_stabilization_has_gradient():
    """With one output channel, softmax is constant; SMIA must use sigmoid/BCE so the term matters."""
    from monai_smia.losses import soft_prediction, stabilization_loss

    net = seg_net(out_ch=1)
    x, y = data(out_ch=1)
    with torch.no_grad():
        s = soft_prediction(net(x + 0.01))
    xr = x.clone().requires_grad_(True)
    stabilization_loss(net(xr), s).sum().backward()
    assert float(xr.grad.abs().max()) > 0
    a = SMIA(net, eps=0.05, num_iter=4, alpha=1.0)(x, y)
    b = SMIA(net, eps=0.05, num_iter=4, alpha=0.0)(x, y)
    assert not torch.equal(a, b)


def test_targeted_moves_towards_target():
    net = seg_net()
    x, _ = data()
    target = torch.full((3, 1, 16, 16), 2, dtype=torch.long)
    with torch.no_grad():
        before = F.cross_entropy(net(x), target[:, 0])
        x_adv = SMIA(net, eps=0.1, num_iter=10, targeted=True)(x, target)
        after = F.cross_entropy(net(x_adv), target[:, 0])
        x_away = SMIA(net, eps=0.1, num_iter=10, targeted=False)(x, target)
        away = F.cross_entropy(net(x_away), target[:, 0])
    assert after < before < away


def test_dict_and_tuple_outputs():
    base = seg_net()
    x, y = data()

    class DictNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = base

        def forward(self, x):
            return {"aux": x, "logits": self.net(x)}

    class TupleNet(DictNet):
        def forward(self, x):
            return self.net(x), x

    ref = SMIA(base, eps=0.05, num_iter=3)(x, y)
    assert torch.equal(SMIA(DictNet(), eps=0.05, num_iter=3, output_key="logits")(x, y), ref)
    assert torch.equal(SMIA(TupleNet(), eps=0.05, num_iter=3)(x, y), ref)
    with pytest.raises(KeyError, match="output_key"):
        SMIA(DictNet(), eps=0.05, num_iter=3)(x, y)


def test_label_forms_are_equivalent():
    net = seg_net()
    x, y = data()
    ref = PGD(net, eps=0.05, num_iter=3)(x, y)
    assert torch.equal(PGD(net, eps=0.05, num_iter=3)(x, y[:, 0]), ref)
    onehot = F.one_hot(y[:, 0], 3).permute(0, 3, 1, 2).double()
    assert torch.equal(PGD(net, eps=0.05, num_iter=3)(x, onehot), ref)


def test_label_free_attacks_clean_prediction():
    net = seg_net()
    x, _ = data()
    with torch.no_grad():
        pred = net(x).argmax(1, keepdim=True)
    assert torch.equal(SMIA(net, eps=0.05, num_iter=3)(x), SMIA(net, eps=0.05, num_iter=3)(x, pred))


def test_custom_loss_replaces_default():
    from monai.losses import DiceLoss

    net = seg_net()
    x, y = data()
    a = PGD(net, eps=0.05, num_iter=3, loss=DiceLoss(softmax=True, to_onehot_y=True))(x, y)
    b = PGD(net, eps=0.05, num_iter=3)(x, y)
    assert not torch.equal(a, b)
    assert float((a - x).abs().max()) <= 0.05 + 1e-12


def test_3d_segresnet_and_classifiers():
    from monai.networks.nets import ResNet, SegResNet

    torch.manual_seed(0)
    seg = SegResNet(spatial_dims=3, in_channels=1, out_channels=2, init_filters=8, blocks_down=(1, 1), blocks_up=(1,))
    x = torch.rand(1, 1, 16, 16, 16)
    y = torch.randint(0, 2, (1, 16, 16, 16))
    attack = SMIA(seg, eps=0.03, num_iter=2, spatial_dims=3)
    assert float((attack(x, y) - x).abs().max()) <= 0.03 + 1e-6
    res = ResNet("basic", [1, 1, 1, 1], [1, 1, 1, 1], spatial_dims=2, n_input_channels=3, num_classes=5)
    xc = torch.rand(2, 3, 32, 32)
    assert SMIA(res, eps=0.01, num_iter=2)(xc, torch.tensor([1, 4])).shape == xc.shape


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return (
        DenseNet121(spatial_dims=2, in_channels=3, out_channels=5, init_features=8, growth_rate=8, block_config=(2, 2))
        .double()
        .eval()
    )


def test_fgsm_and_pgd_match_torchattacks(classifier):
    torchattacks = pytest.importorskip("torchattacks", reason="install with `pip install --no-deps torchattacks`")
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 3, 32, 32, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (4,), generator=g)
    ours = FGSM(classifier, eps=4 / 255)(x, y)
    theirs = torchattacks.FGSM(classifier, eps=4 / 255)(x, y)
    assert torch.allclose(ours, theirs, atol=1e-12, rtol=0)
    ours = PGD(classifier, eps=4 / 255, num_iter=7, step_size=1 / 255)(x, y)
    theirs = torchattacks.PGD(classifier, eps=4 / 255, alpha=1 / 255, steps=7, random_start=False)(x, y)
    assert torch.allclose(ours, theirs, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ["PGD", "SMIA"])
def test_trace_off_gives_the_same_attack_without_a_trace(name):
    """``trace=False`` skips only the diagnostics: the adversarial images are bit for bit those of a traced run."""
    net = seg_net()
    x, y = data()
    cls = {"PGD": PGD, "SMIA": SMIA}[name]
    traced = cls(net, eps=0.05, num_iter=4)
    untraced = cls(net, eps=0.05, num_iter=4, trace=False)
    a = traced(x, y, generator=torch.Generator().manual_seed(3))
    b = untraced(x, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert traced.trace is not None and traced.trace.num_iter == 4 and untraced.trace is None
