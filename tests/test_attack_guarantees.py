"""Property tests of the guarantees every attack keeps (docs/design.md, section 2)."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.networks.nets import UNet

from monai_smia import APGD, DAG, FGSM, PGD, SMIA, Attack, CosPGD, DeepFool, RandomSignNoise, SegPGD, Square, WorstCase

#: attacks that fit one task only (DeepFool: classifiers, DAG, SegPGD, CosPGD: segmentation)
TASK_OF = {"deepfool": "cls", "dag": "seg", "segpgd": "seg", "cospgd": "seg"}
#: attacks that may return a case unchanged when no iterate beats it (a case already misclassified, or
#: with APGD's best-iterate rule against random labels): they attack the clean prediction here
LABEL_FREE = {"deepfool", "dag", "worstcase", "apgd", "apgd_t"}


def make_net(spatial_dims: int, in_ch: int, out_ch: int, task: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    if task == "seg":
        net = UNet(
            spatial_dims, in_ch, out_ch, channels=(4, 8), strides=(2,), num_res_units=1, norm="batch", dropout=0.2
        )
    else:
        conv = torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d
        bn = torch.nn.BatchNorm2d if spatial_dims == 2 else torch.nn.BatchNorm3d
        net = torch.nn.Sequential(
            conv(in_ch, 4, 3, padding=1), bn(4), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Flatten(start_dim=2)
        )
        net = torch.nn.Sequential(net, _MeanPool(), torch.nn.Linear(4, out_ch))
    net.train()  # attacks must switch to eval mode and restore train mode afterwards
    return net


class _MeanPool(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=-1)


class Overshoot(Attack):
    """An attack whose perturb ignores the budget, the mask and the bounds (2 * eps, alternating signs):
    the base class must still enforce every guarantee."""

    def perturb(self, x, labels, mask, delta_init, generator):
        signs = torch.ones_like(x).flatten(1)
        signs[:, ::2] = -1
        return 2 * self.eps * signs.reshape(x.shape)


def build_attack(name: str, net: torch.nn.Module, eps: float, spatial_dims: int, bounds, seed_rs: bool):
    if name == "smia":
        return SMIA(net, eps=eps, num_iter=3, spatial_dims=spatial_dims, bounds=bounds, random_start=seed_rs)
    if name == "smia_readings":  # the non-default readings together: differentiable KL, released-code anchoring
        return SMIA(
            net, eps=eps, num_iter=3, spatial_dims=spatial_dims, bounds=bounds, random_start=seed_rs,
            stabilization_target="differentiable", smooth="step",
        )
    if name == "smia_paper":  # eps is the paper's per-iteration step; the ball is 3 * eps
        return SMIA(net, eps=eps / 3, num_iter=3, spatial_dims=spatial_dims, bounds=bounds, protocol="paper")
    if name == "deepfool":
        return DeepFool(net, eps=eps, max_iter=5, bounds=bounds)
    if name == "dag":
        return DAG(net, eps=eps, gamma=0.05, max_iter=5, bounds=bounds)
    if name == "apgd":
        return APGD(net, eps=eps, num_iter=4, bounds=bounds, random_start=seed_rs, restarts=2)
    if name == "apgd_t":  # targeted cross-entropy: the guarantee test's networks have 1 to 3 classes
        return APGD(net, eps=eps, num_iter=3, loss="ce", targeted=True, bounds=bounds, random_start=seed_rs)
    if name == "segpgd":
        return SegPGD(net, eps=eps, num_iter=3, bounds=bounds, random_start=seed_rs)
    if name == "cospgd":
        return CosPGD(net, eps=eps, num_iter=3, bounds=bounds, random_start=seed_rs)
    if name == "square":
        return Square(net, eps=eps, num_queries=6, bounds=bounds)
    if name == "worstcase":
        return WorstCase(net, eps=eps, num_iter=2, num_queries=3, bounds=bounds)
    if name == "overshoot":
        return Overshoot(net, eps=eps, bounds=bounds)
    if name == "pgd":
        return PGD(net, eps=eps, num_iter=3, bounds=bounds, random_start=seed_rs)
    if name == "fgsm":
        return FGSM(net, eps=eps, bounds=bounds)
    return RandomSignNoise(net, eps=eps, bounds=bounds)


def ulp_tolerance(x: torch.Tensor) -> torch.Tensor:
    return 4 * torch.finfo(x.dtype).eps * x.abs().clamp_min(1.0)


ROBUSTNESS_ATTACKS = ["apgd", "apgd_t", "segpgd", "cospgd", "square", "worstcase"]


@settings(deadline=None, max_examples=60)
@given(
    name=st.sampled_from(
        ["smia", "pgd", "fgsm", "noise", "smia_readings", "smia_paper", "deepfool", "dag", "overshoot"]
        + ROBUSTNESS_ATTACKS
    ),
    spatial_dims=st.sampled_from([2, 3]),
    task=st.sampled_from(["seg", "cls"]),
    batch=st.integers(1, 3),
    in_ch=st.integers(1, 2),
    out_ch=st.sampled_from([1, 2, 3]),
    side=st.sampled_from([8, 12]),
    eps=st.floats(1e-3, 0.5),
    bounded=st.booleans(),
    random_start=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_guarantees(name, spatial_dims, task, batch, in_ch, out_ch, side, eps, bounded, random_start, seed):
    task = TASK_OF.get(name, task)
    net = make_net(spatial_dims, in_ch, out_ch, task, seed)
    net.zero_grad()
    for p in net.parameters():  # a non-trivial .grad that must survive the attack
        p.grad = torch.full_like(p, 0.5)
    next(net.parameters()).requires_grad_(False)
    state = copy.deepcopy(net.state_dict())
    flags = [p.requires_grad for p in net.parameters()]
    grads = [p.grad.clone() for p in net.parameters()]
    modes = [m.training for m in net.modules()]

    g = torch.Generator().manual_seed(seed)
    shape = (batch, in_ch) + (side,) * spatial_dims
    x = torch.rand(shape, generator=g) * 2 - 0.5 if not bounded else torch.rand(shape, generator=g)
    lab_shape = (batch, 1) + (side,) * spatial_dims if task == "seg" else (batch,)
    y = torch.randint(0, max(out_ch, 2), lab_shape, generator=g)
    x_before, y_before = x.clone(), y.clone()
    bounds = (0.0, 1.0) if bounded else None

    attack = build_attack(name, net, eps, spatial_dims, bounds, random_start)
    if name == "apgd_t" and out_ch == 1:
        return  # targeted APGD needs 2 classes at least (tested in test_attack_robustness.py)
    # minimal-norm attacks leave a sample that is already misclassified alone: attack the clean prediction
    labels = None if name in LABEL_FREE else y
    torch.manual_seed(seed)
    x_adv = attack(x, labels)

    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert bool(((x_adv - x).abs() <= eps + ulp_tolerance(x)).all()), "L-infinity budget exceeded"
    if bounded:
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert torch.equal(x, x_before) and torch.equal(y, y_before), "inputs modified in place"
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items()), "parameters or buffers changed"
    assert [p.requires_grad for p in net.parameters()] == flags
    assert all(torch.equal(p.grad, g0) for p, g0 in zip(net.parameters(), grads)), ".grad changed"
    assert [m.training for m in net.modules()] == modes, "train/eval mode not restored"
    assert not torch.equal(x_adv, x), "attack changed nothing"

    # determinism: the same seed gives the same result
    torch.manual_seed(seed)
    assert torch.equal(attack(x, labels), x_adv)


def test_overshooting_perturb_is_masked_by_the_base_class():
    net = make_net(2, 1, 2, "seg", 0)
    x = torch.rand(2, 1, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:5, 2:5] = 1
    x_adv = Overshoot(net, eps=0.1)(x, torch.zeros(2, 1, 8, 8, dtype=torch.long), mask=mask)
    assert torch.equal(x_adv[..., mask[0, 0] == 0], x[..., mask[0, 0] == 0])
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6


@pytest.mark.parametrize("name", ["smia", "pgd", "fgsm", "smia_readings", "dag", "deepfool", *ROBUSTNESS_ATTACKS])
def test_batching_does_not_change_result_float64(name):
    task = TASK_OF.get(name, "seg")
    net = make_net(2, 1, 3, task, 3).double()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 16, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (6, 1, 16, 16) if task == "seg" else (6,), generator=g)
    attack = build_attack(name, net, 0.05, 2, (0.0, 1.0), False)
    whole = attack(x, y)
    trace_whole = attack.trace
    result_whole = getattr(attack, "result", None)
    parts, traces, results = [], [], []
    for sl in (slice(0, 1), slice(1, 4), slice(4, 6)):
        parts.append(attack(x[sl], y[sl]))
        traces.append(attack.trace)
        results.append(getattr(attack, "result", None))
    assert torch.equal(torch.cat(parts), whole)
    if result_whole is not None:  # minimal-norm attacks: the unconstrained result too
        assert torch.equal(torch.cat([r.unconstrained for r in results]), result_whole.unconstrained)
        assert torch.equal(torch.cat([r.iterations for r in results]), result_whole.iterations)
        return
    if trace_whole is None:  # gradient-free (Square) or an ensemble (WorstCase): no trace
        return
    merged = type(trace_whole).cat(traces)
    assert torch.allclose(merged.perturbation_variance, trace_whole.perturbation_variance)
    assert torch.allclose(merged.deviation_loss, trace_whole.deviation_loss)


def test_metatensor_metadata_kept():
    from monai.data import MetaTensor

    net = make_net(2, 1, 2, "seg", 0)
    affine = torch.diag(torch.tensor([0.7, 0.7, 5.0, 1.0], dtype=torch.float64))
    x = MetaTensor(torch.rand(1, 1, 16, 16), affine=affine, meta={"filename_or_obj": "case.nii.gz"})
    x_adv = SMIA(net, eps=0.02, num_iter=2)(x, torch.zeros(1, 1, 16, 16, dtype=torch.long))
    assert isinstance(x_adv, MetaTensor)
    assert torch.equal(x_adv.affine, x.affine) and x_adv.meta["filename_or_obj"] == "case.nii.gz"


def test_amp_keeps_perturbation_in_float32():
    net = make_net(2, 1, 3, "seg", 1)
    x = torch.rand(2, 1, 16, 16)
    y = torch.randint(0, 3, (2, 1, 16, 16))
    x_adv = SMIA(net, eps=0.03, num_iter=3, amp=True)(x, y)  # bfloat16 autocast on the CPU
    assert x_adv.dtype == torch.float32
    assert float((x_adv - x).abs().max()) <= 0.03 + 1e-6
    assert not torch.equal(x_adv, x)
