"""Bad input gets a clear error naming the argument; gradient masking gets a warning."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNet

from monai_smia import FGSM, PGD, SMIA


@pytest.fixture
def net():
    torch.manual_seed(0)
    return UNet(2, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0)


X = torch.rand(2, 1, 8, 8)
Y = torch.zeros(2, 1, 8, 8, dtype=torch.long)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eps": 0}, "eps must be"),
        ({"eps": -0.1}, "eps must be"),
        ({"eps": float("nan")}, "eps must be"),
        ({"eps": 0.1, "step_size": 0}, "step_size must be"),
        ({"eps": 0.1, "sigma": 0}, "sigma must be"),
        ({"eps": 0.1, "sigma": -1.0}, "sigma must be"),
        ({"eps": 0.1, "sigma": (1.0, 1.0, 1.0)}, "sigma has 3 values"),
        ({"eps": 0.1, "num_iter": 0}, "num_iter must be"),
        ({"eps": 0.1, "num_iter": 2.5}, "num_iter must be"),
        ({"eps": 0.1, "bounds": (1.0, 0.0)}, "lo < hi"),
        ({"eps": 0.1, "bounds": (0.0,)}, "bounds must be"),
        ({"eps": 0.1, "alpha": -1}, "alpha must be"),
        ({"eps": 0.1, "stabilization": "kl"}, "stabilization must be"),
    ],
)
def test_bad_arguments(net, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SMIA(net, **kwargs)


def test_bad_network_and_loss_types(net):
    with pytest.raises(TypeError, match="network must be"):
        PGD(lambda x: x, eps=0.1)
    with pytest.raises(TypeError, match="loss must be"):
        FGSM(net, eps=0.1, loss="ce")


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.full((2, 1, 8, 8), float("nan")), "NaN or Inf"),
        (torch.full((2, 1, 8, 8), float("inf")), "NaN or Inf"),
        (torch.full((2, 1, 8, 8), 2.0), r"outside bounds"),
        (torch.full((2, 1, 8, 8), -0.5), r"outside bounds"),
        (torch.zeros(8, 8), r"\(B, C, \*spatial\)"),
    ],
)
def test_bad_images(net, images, match):
    with pytest.raises(ValueError, match=match):
        SMIA(net, eps=0.1, num_iter=2)(images, Y)


def test_integer_images_rejected(net):
    with pytest.raises(TypeError, match="floating point"):
        SMIA(net, eps=0.1)(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), Y)


@pytest.mark.parametrize(
    "labels, match",
    [
        (torch.zeros(3, 1, 8, 8, dtype=torch.long), "batch size"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.long), "does not fit"),
        (torch.full((2, 1, 8, 8), 5, dtype=torch.long), r"values must lie in \[0, 1\]"),
        (torch.full((2, 1, 8, 8), 0.5), "integer class indices"),
    ],
)
def test_bad_labels(net, labels, match):
    with pytest.raises(ValueError, match=match):
        SMIA(net, eps=0.1, num_iter=2)(X, labels)


def test_bad_mask(net):
    with pytest.raises(ValueError, match="mask of shape"):
        SMIA(net, eps=0.1, num_iter=2)(X, Y, mask=torch.ones(2, 1, 4, 4))


def test_wrong_spatial_dims(net):
    with pytest.raises(ValueError, match="spatial_dims=3"):
        SMIA(net, eps=0.1, spatial_dims=2)(torch.rand(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 8, dtype=torch.long))


def test_no_gradient_path(net):
    class Detached(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x).detach()

    with pytest.raises(ValueError, match="no gradient path"):
        PGD(Detached(), eps=0.1, num_iter=2)(X, Y)


def test_zero_gradient_warns_and_is_traced():
    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):  # saturated: gradient exactly zero everywhere
            return torch.cat([x.clamp(5, 6) * self.w, -x.clamp(5, 6)], dim=1)

    attack = PGD(Flat(), eps=0.1, num_iter=3)
    with pytest.warns(RuntimeWarning, match="gradient was exactly zero"):
        x_adv = attack(X, Y)
    assert bool(attack.trace.zero_gradient.all())
    assert torch.equal(x_adv, X)


def test_targeted_needs_labels(net):
    with pytest.raises(ValueError, match="targeted=True needs labels"):
        SMIA(net, eps=0.1, targeted=True)(X)


def test_mask_limits_perturbation(net):
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    x_adv = SMIA(net, eps=0.1, num_iter=3)(X, Y, mask=mask)
    assert torch.equal(x_adv[mask.expand_as(X) == 0], X[mask.expand_as(X) == 0])
    assert not torch.equal(x_adv, X)
