"""SMIA's readings (docs/design.md, section 1, readings table) and the trace's cosines, checked against hand
computations on a linear classifier, where every gradient has a closed form (no autograd in the expected values)."""

from __future__ import annotations

import warnings

import pytest
import torch
from monai.networks.layers import GaussianFilter

from monai_smia import PGD, SMIA
from monai_smia.losses import stabilization_kl

EPS, STEP, ALPHA, SIGMA, K, SIDE = 0.05, 0.02, 0.7, 1.0, 3, 6


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(SIDE * SIDE, K)).double().eval()
    g = torch.Generator().manual_seed(1)
    x = 0.2 + 0.6 * torch.rand(2, 1, SIDE, SIDE, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 2])
    gauss = GaussianFilter(2, SIGMA).double()
    eye = torch.eye(SIDE * SIDE, dtype=torch.float64).reshape(-1, 1, SIDE, SIDE)
    with torch.no_grad():
        w_mat = gauss(eye).reshape(SIDE * SIDE, -1).T  # vec(W * d) = w_mat @ vec(d)
    return net, x, y, w_mat


def linear_parts(net):
    lin = net[1]
    return lin.weight.detach(), lin.bias.detach()


def z_of(net, v):
    a, c = linear_parts(net)
    return v.reshape(v.shape[0], -1) @ a.T + c


def proj(x, d, eps=EPS):
    return (x + d.clamp(-eps, eps)).clamp(0, 1) - x


def img(flat, like):
    return flat.reshape(like.shape)


def smooth(w_mat, d):
    return img(d.reshape(d.shape[0], -1) @ w_mat.T, d)


def first_step(net, x, y, d0, step=STEP, eps=EPS):
    a, _ = linear_parts(net)
    onehot = torch.nn.functional.one_hot(y, K).double()
    g0 = (torch.softmax(z_of(net, x + d0), 1) - onehot) @ a
    return proj(x, d0 + step * img(g0, x).sign(), eps)


def test_differentiable_target_second_iteration(setup):
    """J = CE(f(x+d), y) - alpha * KL(P || Q), P = softmax f(x + W*d), Q = softmax f(x + d), gradient through both."""
    net, x, y, w_mat = setup
    a, _ = linear_parts(net)
    onehot = torch.nn.functional.one_hot(y, K).double()
    d1 = first_step(net, x, y, torch.zeros_like(x))
    q = torch.softmax(z_of(net, x + d1), 1)
    p = torch.softmax(z_of(net, x + smooth(w_mat, d1)), 1)
    r = p.log() - q.log()
    d_kl = (q - p) @ a + ((p * (r - (p * r).sum(1, keepdim=True))) @ a) @ w_mat
    g1 = (q - onehot) @ a - ALPHA * d_kl
    expected = x + proj(x, d1 + STEP * img(g1, x).sign())

    attack = SMIA(
        net, eps=EPS, num_iter=2, step_size=STEP, alpha=ALPHA, sigma=SIGMA, stabilization_target="differentiable"
    )
    assert torch.allclose(attack(x, y), expected, atol=1e-12, rtol=0)
    assert torch.allclose(attack.trace.stabilization_loss[1], (p * r).sum(1), atol=1e-12)
    g1_detached = (q - onehot) @ a - ALPHA * (q - p) @ a  # the default reading's gradient differs
    assert not torch.allclose(g1, g1_detached)


def test_step_smoothing_second_iteration(setup):
    """smooth="step": the target is the prediction at x_{t-1} + W * eta_{t-1} (the released code's anchoring)."""
    net, x, y, w_mat = setup
    a, _ = linear_parts(net)
    onehot = torch.nn.functional.one_hot(y, K).double()
    g = torch.Generator().manual_seed(3)
    d_init = (torch.rand(x.shape, generator=g, dtype=torch.float64) * 2 - 1) * EPS
    d0 = proj(x, d_init)
    d1 = first_step(net, x, y, d0)
    s = torch.softmax(z_of(net, x + d0 + smooth(w_mat, d1 - d0)), 1)
    q = torch.softmax(z_of(net, x + d1), 1)
    g1 = (q - onehot) @ a - ALPHA * (q - s) @ a
    expected = x + proj(x, d1 + STEP * img(g1, x).sign())

    kw = dict(eps=EPS, num_iter=2, step_size=STEP, alpha=ALPHA, sigma=SIGMA, random_start=True)
    got = SMIA(net, smooth="step", **kw)(x, y, delta_init=d_init)
    assert torch.allclose(got, expected, atol=1e-12, rtol=0)
    # the paper's anchoring smooths all of d_1 instead
    s_paper = torch.softmax(z_of(net, x + smooth(w_mat, d1)), 1)
    assert not torch.allclose(s, s_paper)


def test_paper_protocol_second_iteration(setup):
    """protocol="paper": step = the paper's per-iteration eps, ball = T * eps (never binding)."""
    net, x, y, w_mat = setup
    a, _ = linear_parts(net)
    onehot = torch.nn.functional.one_hot(y, K).double()
    paper_eps = 0.03
    d1 = first_step(net, x, y, torch.zeros_like(x), step=paper_eps, eps=2 * paper_eps)
    s = torch.softmax(z_of(net, x + smooth(w_mat, d1)), 1)
    q = torch.softmax(z_of(net, x + d1), 1)
    g1 = (q - onehot) @ a - 1.0 * (q - s) @ a
    d2 = (x + d1 + paper_eps * img(g1, x).sign()).clamp(0, 1) - x
    attack = SMIA(net, eps=paper_eps, num_iter=2, sigma=SIGMA, protocol="paper")
    assert attack.step_size == paper_eps and attack.eps == pytest.approx(2 * paper_eps)
    assert torch.allclose(attack(x, y), x + d2, atol=1e-12, rtol=0)
    same = SMIA(net, eps=2 * paper_eps, num_iter=2, step_size=paper_eps, sigma=SIGMA)
    assert torch.equal(same(x, y), attack(x, y))


def test_reading_arguments_that_contradict(setup):
    net = setup[0]
    with pytest.raises(ValueError, match="step_size"):
        SMIA(net, eps=0.01, num_iter=10, step_size=0.005, protocol="paper")
    with pytest.raises(ValueError, match="random_start"):
        SMIA(net, eps=0.01, protocol="paper", random_start=True)
    with pytest.raises(ValueError, match="protocol"):
        SMIA(net, eps=0.01, protocol="madry")
    with pytest.raises(ValueError, match="stabilization_target"):
        SMIA(net, eps=0.01, stabilization_target="differentiable", stabilization="hard")
    with pytest.raises(ValueError, match="stabilization_target"):
        SMIA(net, eps=0.01, stabilization_target="both")
    with pytest.raises(ValueError, match="smooth"):
        SMIA(net, eps=0.01, smooth="image")
    assert SMIA(net, eps=0.01, num_iter=4, step_size=0.01, protocol="paper").eps == pytest.approx(0.04)


def test_warnings_for_collapsing_settings(setup):
    net = setup[0]
    with pytest.warns(UserWarning, match="anti-adversarial"):
        SMIA(net, eps=0.01, alpha=2.0)
    with pytest.warns(UserWarning, match="argmax"):
        SMIA(net, eps=0.01, alpha=1.0, stabilization="hard")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SMIA(net, eps=0.01)
        SMIA(net, eps=0.01, alpha=2.0, stabilization_target="differentiable")
        SMIA(net, eps=0.01, alpha=0.5, stabilization="hard")


def test_binary_kl_is_the_two_class_kl():
    g = torch.Generator().manual_seed(0)
    a, b = (
        torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64),
        torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64),
    )
    two = lambda t: torch.cat([torch.zeros_like(t), t], dim=1)  # noqa: E731  sigmoid(z) = softmax([0, z])[1]
    assert torch.allclose(stabilization_kl(a, b), stabilization_kl(two(a), two(b)), atol=1e-12)
    assert torch.allclose(stabilization_kl(a, a), torch.zeros(3, dtype=torch.float64), atol=1e-15)


def cos(u, v):
    u, v = u.reshape(u.shape[0], -1), v.reshape(v.shape[0], -1)
    return (u * v).sum(1) / (u.norm(dim=1) * v.norm(dim=1))


def test_trace_cosines_by_hand(setup):
    """Three PGD iterations: the gradients, raw steps a*sign(g), applied updates and perturbations by hand."""
    net, x, y, _ = setup
    a, _ = linear_parts(net)
    onehot = torch.nn.functional.one_hot(y, K).double()
    eps, step = 0.05, 0.02  # the projection cuts the third step short
    d, grads, steps, deltas = torch.zeros_like(x), [], [], [torch.zeros_like(x)]
    for _ in range(3):
        g = img((torch.softmax(z_of(net, x + d), 1) - onehot) @ a, x)
        grads.append(g)
        steps.append(step * g.sign())
        d = proj(x, d + steps[-1], eps)
        deltas.append(d)
    attack = PGD(net, eps=eps, num_iter=3, step_size=step)
    attack(x, y)
    tr = attack.trace
    for t in (1, 2):
        assert torch.allclose(tr.cosines("gradient")[t], cos(grads[t], grads[t - 1]), atol=1e-12)
        assert torch.allclose(tr.cosines("step")[t], cos(steps[t], steps[t - 1]), atol=1e-12)
        upd = cos(deltas[t + 1] - deltas[t], deltas[t] - deltas[t - 1])
        assert torch.allclose(tr.cosines("update")[t], upd, atol=1e-12)
        assert torch.allclose(tr.cosine[t], upd, atol=1e-12)
        assert torch.allclose(tr.cosines("perturbation")[t], cos(deltas[t + 1], deltas[t]), atol=1e-12)
    for kind in ("step", "gradient", "update", "perturbation"):
        assert torch.isnan(tr.cosines(kind)[0]).all()
        assert torch.allclose(tr.cosine_mean(kind), tr.cosines(kind)[1:].mean(0))
        assert torch.equal(tr.positive_share(kind), (tr.cosines(kind)[1:] > 0).double().mean(0))
    summary = tr.summary()
    for key in (
        "cosine",
        "positive_cosine_share",
        "final_variance",
        "perturbation_variance",
        "gradient_cosine_mean",
        "step_positive_cosine_share",
        "update_positive_cosine_share",
        "perturbation_cosine",
    ):
        assert key in summary
    assert summary["update_positive_cosine_share"] == summary["positive_cosine_share"]
    final = deltas[-1].reshape(2, -1)
    assert torch.allclose(tr.perturbation_variance[-1], final.var(dim=1, unbiased=False), atol=1e-12)


def test_merged_trace_cosines_are_those_of_the_whole_volume(setup):
    """Two samples merged into one (a volume's slices) give the cosines of the concatenated vectors."""
    net, x, y, _ = setup
    attack = PGD(net, eps=0.03, num_iter=3, step_size=0.02)
    attack(x, y)
    tr, merged = attack.trace, attack.trace.merge_samples()
    for kind, (dot, sq) in {"gradient": ("grad_dot", "grad_sq"), "step": ("step_dot", "step_sq")}.items():
        d, s = getattr(tr, dot).sum(1), getattr(tr, sq).sum(1)
        expected = d[1:] / (s[1:] * s[:-1]).sqrt()
        assert torch.allclose(merged.cosines(kind)[1:, 0], expected, atol=1e-12)


def test_trace_prints_a_table_with_named_columns():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 3, 3, padding=1)
    attack = SMIA(net, eps=0.1, num_iter=3)
    attack(torch.rand(2, 1, 8, 8))
    lines = str(attack.trace).splitlines()
    assert (
        lines[0] == "| iter | DEV loss | STA loss | Var(d) | cos step | cos gradient | cos update | cos perturbation |"
    )
    assert len(lines) == 2 + 3 + 1 and lines[2].startswith("| 1 |") and lines[2].endswith("| - | - | - | - |")
    assert "nan" not in str(attack.trace) and "applied update has cos > 0" in lines[-1]
    dev = attack.trace.summary()["deviation_loss"]
    assert lines[3].split(" | ")[1] == f"{dev[1]:.4g}"
