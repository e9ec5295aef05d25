"""DeepFool and DAG: hand computations on linear networks, the comparison with torchattacks' DeepFool,
bad input, slice-wise runs through volumes (transform, AttackInferer) and the registry."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SliceInferer
from monai.networks.nets import DenseNet121, UNet

from monai_smia import DAG, SMIA, DeepFool
from monai_smia.attacks.registry import ATTACKS, DEFAULT_ATTACKS, check_attacks, make_attack
from monai_smia.inferers import AttackInferer
from monai_smia.attacks.volume import attack_volumes
from monai_smia.transforms import AdversarialAttackd


def linear_classifier(k: int, side: int = 6, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(side * side, k)).double().eval()


def interior(b: int = 3, side: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.4 + 0.2 * torch.rand(b, 1, side, side, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------- DeepFool
@pytest.mark.parametrize("k", [1, 2])
def test_deepfool_one_step_on_a_linear_binary_classifier(k):
    """A linear two-class boundary is reached in one step: x + (1 + eta) * |f| w / ||w||^2 (Algorithm 1)."""
    net = linear_classifier(k)
    x = interior()
    w, c = net[1].weight.detach(), net[1].bias.detach()
    z = x.flatten(1) @ w.T + c
    if k == 1:
        y = (z[:, 0] > 0).double()
        f, wd = ((1 - 2 * y) * z[:, 0]), (1 - 2 * y)[:, None] * w[0]
    else:
        y = z.argmax(1)
        other = 1 - y
        f = z.gather(1, other[:, None])[:, 0] - z.gather(1, y[:, None])[:, 0]
        wd = w[other] - w[y]
    r = (f.abs() / (wd * wd).sum(1))[:, None] * wd
    expected = x + 1.02 * r.reshape(x.shape)
    attack = DeepFool(net, eps=10.0, bounds=None)
    out = attack(x)
    assert torch.allclose(out, expected, atol=1e-12) and torch.allclose(attack.unconstrained, expected, atol=1e-12)
    assert attack.iterations.tolist() == [1, 1, 1]
    assert torch.allclose(attack.norms, 1.02 * f.abs() / (wd * wd).sum(1).sqrt(), atol=1e-12)
    assert attack.result.error.tolist() == [1.0, 1.0, 1.0]


def test_deepfool_projects_budget_keeps_unconstrained_and_mask():
    net = linear_classifier(3)
    x = interior()
    attack = DeepFool(net, eps=1e-3)
    x_adv = attack(x)
    unc = attack.unconstrained
    assert float((unc - x).abs().max()) > 1e-3  # the minimal perturbation exceeds this budget
    assert torch.allclose(x_adv, torch.minimum(torch.maximum(unc, x - 1e-3), x + 1e-3), atol=1e-15)
    summary = attack.result.summary(eps=1e-3)
    assert summary["within_budget_share"] == 0.0 and summary["unconstrained_error"] == 1.0 and summary["median_l2"] > 0
    mask = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    mask[..., :3, :] = 1
    attack(x, mask=mask)
    assert torch.equal(attack.unconstrained[..., 3:, :], x[..., 3:, :])
    assert attack.result.error.tolist() == [1.0, 1.0, 1.0]  # still crosses the boundary within the mask


def test_deepfool_leaves_misclassified_samples_alone():
    net = linear_classifier(3)
    x = interior()
    with torch.no_grad():
        wrong = (net(x).argmax(1) + 1) % 3
    attack = DeepFool(net, eps=0.1)
    assert torch.equal(attack(x, wrong), x)
    assert attack.iterations.tolist() == [0, 0, 0] and attack.norms.tolist() == [0.0, 0.0, 0.0]


def test_deepfool_bad_input():
    seg = UNet(2, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0)
    with pytest.raises(ValueError, match="network: DeepFool attacks classifiers"):
        DeepFool(seg, eps=0.1)(torch.rand(1, 1, 8, 8))
    net = linear_classifier(3)
    for kwargs, arg in (
        ({"overshoot": -1}, "overshoot"),
        ({"max_iter": 0}, "max_iter"),
        ({"loss": torch.nn.functional.cross_entropy}, "loss"),
        ({"targeted": True}, "targeted"),
    ):
        with pytest.raises(ValueError, match=arg):
            DeepFool(net, eps=0.1, **kwargs)


@pytest.fixture(scope="module")
def densenet():
    torch.manual_seed(0)
    return (
        DenseNet121(spatial_dims=2, in_channels=3, out_channels=5, init_features=8, growth_rate=8, block_config=(2, 2))
        .double()
        .eval()
    )


def test_deepfool_against_torchattacks(densenet):
    """torchattacks' DeepFool(model, steps=50, overshoot=0.02) on the same images and labels.

    Measured: on images whose iterates never leave [0, 1] both give the same images (max difference
    3e-16, float rounding: torchattacks adds (1 + eta) * r_i per step, we scale the sum). On images that
    span [0, 1], the results differ (max |difference| 0.005-0.033, L2 norms within 0.3 %): torchattacks
    clamps the iterate to [0, 1] after every step and so drops the clipped part of each step, overshoot
    included, from the sum; we keep the unclipped sum and clip only the image we evaluate. Its iterate
    can then stop exactly on a decision boundary (two tied logits), which counts as misclassified or not
    depending on float rounding; ours keeps its overshoot and is misclassified in every evaluation.
    """
    torchattacks = pytest.importorskip("torchattacks", reason="install with `pip install --no-deps torchattacks`")
    g = torch.Generator().manual_seed(2)
    x_in = 0.3 + 0.4 * torch.rand(3, 3, 32, 32, generator=g, dtype=torch.float64)
    x_full = torch.rand(3, 3, 32, 32, generator=g, dtype=torch.float64)
    for x, same in ((x_in, True), (x_full, False)):
        with torch.no_grad():
            y = densenet(x).argmax(1)
        ours = DeepFool(densenet, eps=1.0)
        ours_adv = ours(x, y)
        theirs = torchattacks.DeepFool(densenet, steps=50, overshoot=0.02)(x, y)
        diff = float((ours_adv - theirs).abs().max())
        norms_theirs = (theirs - x).flatten(1).norm(dim=1)
        assert torch.allclose(ours.norms, norms_theirs, rtol=0.01)
        with torch.no_grad():
            assert bool((densenet(ours_adv).argmax(1) != y).all())
        if same:
            assert diff < 1e-12
        else:
            assert diff > 1e-3  # the per-step clamp: see the docstring
            unclamped = DeepFool(densenet, eps=1e9, bounds=None)(x, y)
            assert bool(((unclamped < 0) | (unclamped > 1)).flatten(1).any(1).all())  # every sample reaches a bound


# ----------------------------------------------------------------------------- DAG
def linear_segmenter(k: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Conv2d(1, k, 1).double().eval()


@pytest.mark.parametrize("k", [1, 3])
def test_dag_first_step_by_hand(k):
    """r_0 = grad sum_active (z_{l'} - z_l); for a 1x1 convolution it is (w_{l'} - w_l) at each active pixel."""
    net = linear_segmenter(k)
    x = interior(2, 8)
    w = net.weight.detach()[:, 0, 0, 0]
    with torch.no_grad():
        z = net(x)
    lab = (z[:, 0] > 0).double() if k == 1 else z.argmax(1)
    if k == 1:
        grad = (1 - 2 * lab) * w[0]
    else:
        grad = w[(lab + 1) % k] - w[lab]
    grad = grad[:, None]
    step = 0.01 * grad / grad.flatten(1).abs().amax(1).reshape(-1, 1, 1, 1)
    attack = DAG(net, eps=1.0, gamma=0.01, max_iter=1)
    assert torch.allclose(attack(x), x + step, atol=1e-12)
    assert attack.iterations.tolist() == [1, 1]


def test_dag_runs_until_every_pixel_is_fooled_and_respects_target_fn():
    net = linear_segmenter(3)
    x = interior(2, 8)
    attack = DAG(net, eps=1.0, gamma=0.05, bounds=None)
    attack(x)
    assert attack.result.error.tolist() == [1.0, 1.0]
    assert int(attack.iterations.max()) < attack.max_iter
    same = DAG(net, eps=1.0, target_fn=lambda lab, k: lab)  # no pixel has a different adversarial label
    assert torch.equal(same(x), x) and same.iterations.tolist() == [0, 0]
    # z = (0, x - 1, -x - 1): class 2 below -1, class 0 in (-1, 1), class 1 above 1. From x = -1.5 (class 2)
    # towards class 1, the paper's rule stops in class 0; until="target" goes on to class 1
    envelope = torch.nn.Conv2d(1, 3, 1).double().eval()
    with torch.no_grad():
        envelope.weight.copy_(torch.tensor([0.0, 1.0, -1.0]).reshape(3, 1, 1, 1))
        envelope.bias.copy_(torch.tensor([0.0, -1.0, -1.0]))
    x = torch.full((1, 1, 2, 2), -1.5, dtype=torch.float64)
    preds = []
    for until in ("misclassified", "target"):
        a = DAG(envelope, eps=5.0, gamma=0.1, bounds=None, target_fn=lambda lab, k: torch.ones_like(lab), until=until)
        a(x)
        with torch.no_grad():
            preds.append(envelope(a.unconstrained).argmax(1).unique().tolist())
    assert preds == [[0], [1]]


def test_dag_bad_input():
    cls = linear_classifier(3)
    with pytest.raises(ValueError, match="network: DAG attacks dense predictions"):
        DAG(cls, eps=0.1)(interior())
    net = linear_segmenter(3)
    with pytest.raises(ValueError, match="target_fn"):
        DAG(net, eps=0.1, target_fn=lambda lab, k: lab[:, :1])(interior(1, 8))
    for kwargs, arg in (({"gamma": 0}, "gamma"), ({"until": "never"}, "until"), ({"target_fn": 3}, "target_fn")):
        with pytest.raises((ValueError, TypeError), match=arg):
            DAG(net, eps=0.1, **kwargs)


def test_dag_slice_wise_through_a_volume_as_transform_and_inferer():
    """A 2D network on a 3D volume: the transform, the AttackInferer and attacking the slices directly agree."""
    torch.manual_seed(0)
    net = UNet(2, 1, 3, channels=(4, 8), strides=(2,), num_res_units=0).double().eval()
    g = torch.Generator().manual_seed(0)
    vol = torch.rand(1, 8, 8, 5, generator=g, dtype=torch.float64)  # (C, H, W, D)
    label = torch.randint(0, 3, (1, 8, 8, 5), generator=g)
    attack = DAG(net, eps=0.05, gamma=0.01, max_iter=10)
    item = AdversarialAttackd("image", "label", attack, slice_dim=2, slice_batch_size=2)({"image": vol, "label": label})
    inferer = AttackInferer(attack, SliceInferer(roi_size=(8, 8), spatial_dim=2, sw_batch_size=3))
    with torch.no_grad():
        pred = inferer(vol[None], net, labels=label[None])
    assert pred.shape == (1, 3, 8, 8, 5)
    slices = vol.permute(3, 0, 1, 2)  # (D, C, H, W)
    direct = attack(slices, label.permute(3, 0, 1, 2)).permute(1, 2, 3, 0)
    assert torch.equal(torch.as_tensor(item["image"]), direct)
    assert torch.equal(inferer.last_adversarial[0], direct)
    assert float((direct - vol).abs().max()) <= 0.05 + 1e-12 and not torch.equal(direct, vol)
    result = attack_volumes(attack, vol[None], label[None], slice_dim=2, slice_batch_size=5)
    assert result.trace is None and torch.equal(result.adversarial[0], direct)


# ----------------------------------------------------------------------------- registry
def test_registry_names_tasks_and_options():
    net = linear_classifier(3)
    assert "DeepFool" in ATTACKS and "DAG" in ATTACKS
    assert "DeepFool" not in DEFAULT_ATTACKS and "DAG" not in DEFAULT_ATTACKS
    with pytest.raises(ValueError, match="DeepFool needs classification"):
        check_attacks(["PGD", "DeepFool"], task="segmentation")
    with pytest.raises(ValueError, match="DAG needs segmentation"):
        make_attack("DAG", net, 0.1, task="classification")
    assert check_attacks(["SMIA", "DAG", "SMIA"], task="segmentation") == ["SMIA", "DAG"]
    with pytest.raises(ValueError, match="unknown attack"):
        check_attacks(["CW"])
    dag = make_attack("DAG", linear_segmenter(2), 0.1, bounds=(0.0, 1.0))
    assert isinstance(dag, DAG) and dag.gamma == pytest.approx(0.5 / 255)
    df = make_attack("DeepFool", net, 0.1, task="classification", max_iter=7)
    assert isinstance(df, DeepFool) and df.max_iter == 7
    smia = make_attack("SMIA", net, 0.1, smooth="step", stabilization_target="differentiable", protocol="paper")
    assert isinstance(smia, SMIA) and smia.smooth == "step" and smia.eps == pytest.approx(1.0)
    assert make_attack("DEV", net, 0.1).alpha == 0.0
    with pytest.raises(ValueError, match="overshoot"):
        make_attack("SMIA", net, 0.1, overshoot=0.1)
    with pytest.raises(ValueError, match="smooth"):
        make_attack("PGD", net, 0.1, smooth="step")
    from monai_smia.apps.evaluate import evaluation

    assert evaluation.make_attack is make_attack and evaluation.ATTACKS is ATTACKS
