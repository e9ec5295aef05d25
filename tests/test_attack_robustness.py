"""APGD, SegPGD, CosPGD, Square and WorstCase: hand computations, seeding and batching, bad
input, the registry. Comparisons with torchattacks and effectiveness on the committed victims are in
``test_attack_robustness_real.py``; the guarantees in ``test_attack_guarantees.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet

from monai_smia import APGD, Attack, CosPGD, SegPGD, Square, WorstCase
from monai_smia.attacks.apgd import apgd_checkpoints
from monai_smia.attacks.cospgd import cospgd_loss
from monai_smia.attacks.registry import ATTACKS, check_attacks, make_attack
from monai_smia.attacks.seeding import per_sample_uniform, sample_generators
from monai_smia.attacks.segpgd import segpgd_loss
from monai_smia.attacks.square import square_fraction
from monai_smia.losses import dlr_loss


def linear(k: int, side: int = 6, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(side * side, k)).double().eval()


def segmenter(k: int, dims: int = 2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return UNet(dims, 1, k, channels=(4, 8), strides=(2,), num_res_units=1).double().eval()


def interior(b: int = 4, side: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand(b, 1, side, side, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------- APGD
def test_apgd_checkpoints_are_the_papers():
    """w_j = ceil(p_j * T): for T = 100 the iterations AutoAttack halves at (22, then -3 each time, at least 6)."""
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]
    assert apgd_checkpoints(1) == [1]


def test_dlr_by_hand():
    z = torch.tensor([[3.0, 1.0, 0.5, -1.0], [0.0, 2.0, 4.0, 1.0]])
    y = torch.tensor([0, 1])
    # untargeted: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)
    assert torch.allclose(dlr_loss(z, y), torch.tensor([-(3 - 1) / (3 - 0.5), -(2 - 4) / (4 - 1)]))
    t = torch.tensor([2, 3])  # targeted: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    assert torch.allclose(dlr_loss(z, y, t), torch.tensor([-(3 - 0.5) / (3 + 0.25), -(2 - 1) / (4 - 0.5)]))
    seg = z[:, :, None, None].expand(2, 4, 3, 2)  # per voxel, then the mean over voxels
    assert torch.allclose(dlr_loss(seg, y[:, None, None].expand(2, 3, 2)), dlr_loss(z, y))
    with pytest.raises(ValueError, match="at least 3 classes"):
        dlr_loss(z[:, :2], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="at least 4 classes"):
        dlr_loss(z[:, :3], y, t.clamp_max(2))


def test_apgd_on_a_linear_classifier_reaches_the_corner():
    """For a linear two-class network the L-inf optimum of CE is x + eps * sign(w_other - w_y) (clipped),
    the first APGD step (2 eps, projected) lands on it and the best iterate keeps it."""
    net = linear(2)
    x = interior()
    with torch.no_grad():
        y = net(x).argmax(1)
    w = net[1].weight.detach()
    direction = (w[1 - y] - w[y]).sign().reshape(x.shape)
    adv = APGD(net, eps=0.05, num_iter=5, random_start=False)(x, y)
    assert torch.equal(adv, x + 0.05 * direction)


def test_apgd_is_seeded_per_sample_and_restarts_help():
    net = linear(5, seed=3)
    x = interior(6)
    y = torch.arange(6) % 5
    attack = APGD(net, eps=0.02, num_iter=6, restarts=3)
    torch.manual_seed(4)
    a = attack(x, y)
    torch.manual_seed(4)
    assert torch.equal(attack(x, y), a)
    torch.manual_seed(4)
    parts = torch.cat([attack(x[:2], y[:2]), attack(x[2:], y[2:])])
    assert torch.equal(parts, a), "a case's result depends on the batch it is in"
    gens = sample_generators(x, None, None)  # the starts: per case, seeded from the run's seed and the case
    torch.manual_seed(5)
    other = per_sample_uniform(sample_generators(x, None, None), x, 0.02)
    assert not torch.equal(per_sample_uniform(gens, x, 0.02), other)
    torch.manual_seed(5)
    assert torch.equal(per_sample_uniform(sample_generators(x[3:], None, None), x[3:], 0.02), other[3:])
    d0 = (torch.rand(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype) * 2 - 1) * 0.02
    assert torch.equal(attack(x, y, delta_init=d0), attack(x, y, delta_init=d0))
    assert attack.trace is not None and attack.trace.num_iter == 6 and attack.trace.num_samples == 6


def test_apgd_targets_the_most_likely_other_classes():
    net = linear(6, seed=1)
    x = interior(3)
    with torch.no_grad():
        clean = net(x)
    y = clean.argmax(1)
    attack = APGD(net, eps=0.01, num_iter=2, loss="dlr", targeted=True, num_targets=3)
    targets = attack.run_targets(clean, y)
    expected = clean.scatter(1, y[:, None], float("-inf")).topk(3, dim=1).indices
    assert torch.equal(torch.stack(targets, 1), expected)
    assert bool((torch.stack(targets, 1) != y[:, None]).all())
    assert torch.equal(attack(x), attack(x, y))  # label-free: the clean prediction


def test_apgd_bad_input():
    net = linear(3)
    with pytest.raises(ValueError, match="'ce' or 'dlr'"):
        APGD(net, eps=0.1, loss="cw")
    with pytest.raises(ValueError, match="num_iter"):
        APGD(net, eps=0.1, num_iter=0)
    with pytest.raises(ValueError, match="restarts"):
        APGD(net, eps=0.1, restarts=0)
    x, y = interior(2), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="at least 4 classes"):
        APGD(net, eps=0.1, loss="dlr", targeted=True)(x, y)
    with pytest.raises(ValueError, match="num_targets=3"):
        APGD(net, eps=0.1, targeted=True, num_targets=3)(x, y)
    with pytest.raises(ValueError, match="at least 3 classes"):
        APGD(linear(2), eps=0.1, loss="dlr")(x, y)


def test_apgd_segmentation_3d_and_binary():
    for k in (1, 3):
        net = segmenter(k, dims=3)
        x = torch.rand(2, 1, 8, 8, 8, dtype=torch.float64)
        y = torch.randint(0, max(k, 2), (2, 1, 8, 8, 8))
        adv = APGD(net, eps=0.03, num_iter=4)(x, y)
        assert float((adv - x).abs().max()) <= 0.03 + 1e-12 and not torch.equal(adv, x)


# ----------------------------------------------------------------------------- SegPGD and CosPGD
def test_segpgd_loss_weights_correct_and_wrong_pixels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 4, 4), generator=g)
    ce = F.cross_entropy(logits, y, reduction="none")
    correct = (logits.argmax(1) == y).double()
    for lam in (0.0, 0.2, 0.45):
        expected = (((1 - lam) * correct + lam * (1 - correct)) * ce).mean(dim=(1, 2))
        assert torch.allclose(segpgd_loss(logits, y, lam), expected)


def test_segpgd_schedule_is_t_over_2T():
    net = segmenter(3)
    attack = SegPGD(net, eps=0.02, num_iter=4)
    seen = []
    original = attack.deviation
    attack.deviation = lambda z, t: seen.append(attack._t) or original(z, t)
    attack(torch.rand(1, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (1, 1, 8, 8)))
    assert seen == [0, 1, 2, 3]  # lambda_t = t / (2T): 0, 1/8, 2/8, 3/8


def test_cospgd_scales_each_pixel_by_its_own_cosine():
    """The reference code's per-pixel cosine between softmax(logits) and one-hot(label), not one mean cosine."""
    logits = torch.tensor([[[[4.0, 0.0]], [[0.0, 0.0]], [[0.0, 3.0]]]], dtype=torch.float64)  # (1, 3, 1, 2)
    y = torch.tensor([[[0, 0]]])
    p = torch.softmax(logits, 1)[0, :, 0]  # (3, 2): the two pixels' probabilities
    cos = p[0] / p.norm(dim=0)
    ce = F.cross_entropy(logits, y, reduction="none")[0, 0]
    assert torch.allclose(cospgd_loss(logits, y), (cos * ce).mean().reshape(1))
    assert not torch.allclose(cospgd_loss(logits, y), (cos.mean() * ce).mean().reshape(1))
    one = logits[:, :1] - logits[:, 2:]  # binary one-channel output: the two-class vectors (1 - p, p)
    q = torch.sigmoid(one)[0, 0, 0]
    target = torch.tensor([[[[1.0, 0.0]]]], dtype=torch.float64)
    cos_b = torch.where(target[0, 0, 0] > 0, q, 1 - q) / torch.stack([1 - q, q]).norm(dim=0)
    bce = F.binary_cross_entropy_with_logits(one, target, reduction="none")[0, 0, 0]
    assert torch.allclose(cospgd_loss(one, target), (cos_b * bce).mean().reshape(1))


def test_segpgd_cospgd_refuse_a_loss():
    net = segmenter(2)
    for cls in (SegPGD, CosPGD):
        with pytest.raises(ValueError, match="own loss"):
            cls(net, eps=0.1, loss=lambda z, y: z.sum())


# ----------------------------------------------------------------------------- Square
def test_square_schedule():
    assert square_fraction(0.8, 0, 10000) == 0.8
    assert square_fraction(0.8, 11, 10000) == 0.4
    assert square_fraction(0.8, 5000, 10000) == 0.8 / 128
    assert square_fraction(0.8, 50, 100) == square_fraction(0.8, 5000, 10000)  # rescaled to the budget


def test_square_is_seeded_per_sample_and_lowers_the_margin():
    net = linear(4, side=8, seed=2)
    x = interior(6, side=8)
    with torch.no_grad():
        y = net(x).argmax(1)
    attack = Square(net, eps=0.05, num_queries=40)
    torch.manual_seed(1)
    a = attack(x, y)
    torch.manual_seed(1)
    assert torch.equal(torch.cat([attack(x[:1], y[:1]), attack(x[1:], y[1:])]), a)
    torch.manual_seed(2)
    assert not torch.equal(attack(x, y), a)
    assert set(((a - x).abs() - 0.05).abs().flatten().gt(1e-12).tolist()) == {False}  # every pixel at +-eps
    with torch.no_grad():
        z, z0 = net(a), net(x)

    def margin(v):
        return v.gather(1, y[:, None])[:, 0] - v.scatter(1, y[:, None], float("-inf")).amax(1)

    assert bool((margin(z) < margin(z0)).all())


def test_square_bad_input():
    net = linear(3)
    with pytest.raises(ValueError, match="num_queries"):
        Square(net, eps=0.1, num_queries=0)
    with pytest.raises(ValueError, match="p_init"):
        Square(net, eps=0.1, p_init=1.5)
    with pytest.raises(ValueError, match="untargeted"):
        Square(net, eps=0.1, targeted=True)


# ----------------------------------------------------------------------------- WorstCase
class Counting(Attack):
    """A member that records the cases it is called on and returns a fixed perturbation."""

    def __init__(self, network, eps, sign: float, log: list) -> None:
        super().__init__(network, eps, bounds=None)
        self.sign, self.log = sign, log

    def perturb(self, x, labels, mask, delta_init, generator):
        self.log.append(x.shape[0])
        return self.sign * self.eps * torch.ones_like(x)


def test_worstcase_cascade_attacks_only_unbroken_cases_and_names_winners():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2, bias=False)).double().eval()
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, 1, 1, 1], [0, 0, 0, 0]]))  # class 0 iff sum(x) > 0
    x = torch.tensor([0.05, -0.05, 0.15, 1.0], dtype=torch.float64).reshape(4, 1, 1, 1).expand(4, 1, 2, 2).contiguous()
    y = torch.tensor([0, 0, 0, 0])  # case 1 already wrong; case 0 falls to -0.05 at -0.1, case 2 to -0.05 at -0.2
    log: list = []
    members = [Counting(net, 0.1, -1.0, log), Counting(net, 0.2, -1.0, log), Counting(net, 0.2, 1.0, log)]
    attack = WorstCase(net, eps=0.2, attacks=members, bounds=None)
    attack(x, y)
    assert log == [3, 2, 1]  # 3 correct cases, then those left unbroken
    assert attack.winners == ["Counting", "clean", "Counting#1", None]  # None: no member broke it
    assert sorted(attack.seconds) == ["Counting", "Counting#1", "Counting#2"]
    assert np.array_equal(attack.scores["Counting"], np.array([1.0, np.nan, 0.0, 0.0]), equal_nan=True)
    assert np.array_equal(attack.scores["Counting#2"], np.array([np.nan, np.nan, np.nan, 0.0]), equal_nan=True)


def test_worstcase_segmentation_keeps_the_lowest_dice_per_case():
    net = segmenter(3)
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        y = net(x).argmax(1, keepdim=True)
    attack = WorstCase(
        net, eps=0.05, attacks=["PGD", "SegPGD", "CosPGD", "APGD-CE", "Square"], num_iter=3, num_queries=5
    )
    adv = attack(x, y)
    from monai_smia.metrics import segmentation_case_metrics

    with torch.no_grad():
        dice = segmentation_case_metrics(net(adv), y)["dice"]
    scores = np.stack([attack.scores[m] for m in ("PGD", "SegPGD", "CosPGD", "APGD-CE", "Square")])
    assert np.allclose(dice, scores.min(0))
    assert attack.winners == [["PGD", "SegPGD", "CosPGD", "APGD-CE", "Square"][i] for i in scores.argmin(0)]


def test_worstcase_defaults_and_bad_input():
    x = interior(2)
    with pytest.warns(UserWarning, match="APGD-T needs at least 4 classes, the network has 3; WorstCase uses APGD-DLR"):
        attack = WorstCase(linear(3), eps=0.02, num_iter=2, num_queries=2)
        attack(x, torch.tensor([0, 1]))
    assert set(attack.scores) == {"APGD-CE", "APGD-DLR", "Square"}
    with pytest.warns(UserWarning, match="WorstCase drops it"):
        WorstCase(linear(2), eps=0.02, num_iter=2, num_queries=2)(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unknown WorstCase member"):
        WorstCase(linear(3), eps=0.02, attacks=["APGD-CE", "FAB"])
    with pytest.raises(ValueError, match="non-empty list"):
        WorstCase(linear(3), eps=0.02, attacks="APGD-CE")
    with pytest.raises(ValueError, match="at least 3 classes"):
        WorstCase(linear(2), eps=0.02, attacks=["APGD-DLR"], num_iter=2)(x, torch.tensor([0, 1]))


# ----------------------------------------------------------------------------- registry
def test_registry_builds_the_new_attacks_by_name():
    net = linear(5)
    for name in ("APGD", "APGD-T", "SegPGD", "CosPGD", "Square", "worst-case"):
        assert name in ATTACKS
    assert (
        isinstance(make_attack("APGD", net, 0.1, num_iter=7), APGD) and make_attack("APGD", net, 0.1, 7).num_iter == 7
    )
    t = make_attack("APGD-T", net, 0.1, num_targets=3)
    assert t.targeted and t.loss_name == "dlr" and t.num_targets == 3
    assert make_attack("Square", net, 0.1, num_queries=9).num_queries == 9
    assert make_attack("worst-case", net, 0.1, attacks=["APGD-CE"]).attacks == ["APGD-CE"]
    assert make_attack("SegPGD", segmenter(2), 0.1, task="segmentation").random_start
    with pytest.raises(ValueError, match="SegPGD needs segmentation"):
        check_attacks(["SegPGD"], "classification")
    with pytest.raises(ValueError, match="not an option of Square"):
        make_attack("Square", net, 0.1, restarts=2)
    assert check_attacks(["APGD", "worst-case", "Square"], "segmentation") == ["APGD", "worst-case", "Square"]
    with pytest.raises(ValueError, match="APGD-T needs at least 4 classes for its targeted DLR loss, but .* has 3"):
        check_attacks(["APGD", "APGD-T"], "classification", num_classes=3)
    assert check_attacks(["APGD-T"], "classification", num_classes=4) == ["APGD-T"]
    assert check_attacks(["APGD-T"], "classification", num_classes=0) == ["APGD-T"]  # not declared: checked at run time
    assert check_attacks(["worst-case"], "classification", num_classes=2) == ["worst-case"]  # falls back, warned
