"""Attacks on a MONAI RetinaNetDetector (monai_smia.apps.detection.attack): the guarantees every attack keeps
(budget, bounds, detector untouched, determinism, batching), property-tested with hypothesis, and the
bad-input errors. A tiny random detector keeps this fast on a CPU."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from monai_smia.apps.detection import DetectorHeads, make_detection_attack, retinanet_detector, retinanet_network

NAMES = ["noise", "FGSM", "PGD", "DEV", "SMIA", "DAG"]


def _detector(seed: int = 0):
    torch.manual_seed(seed)
    net = retinanet_network(num_anchors=1, block_inplanes=(4, 8, 8, 8), fpn_channels=16)
    det = retinanet_detector(net, base_anchor_shapes=((6, 6),), score_thresh=0.3)
    return det


DET = _detector()
BOXES = [torch.tensor([[8.0, 8.0, 20.0, 18.0]]), torch.tensor([[2.0, 3.0, 9.0, 9.0], [20.0, 20.0, 30.0, 31.0]])]


def _images(seed: int, n: int = 2) -> torch.Tensor:
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed))


def _run(name: str, x: torch.Tensor, boxes, eps: float = 0.03, **kw):
    attack = make_detection_attack(name, DET, eps, num_iter=2, **({"max_iter": 3} if name == "DAG" else {}), **kw)
    extra = {"generator": torch.Generator().manual_seed(1)} if name in ("noise", "PGD") else {}
    return attack(x, boxes, **extra), attack


@settings(deadline=None, max_examples=6)
@given(name=st.sampled_from(NAMES), seed=st.integers(0, 1000), eps=st.sampled_from([0.01, 0.05]))
def test_budget_bounds_and_detector_untouched(name, seed, eps):
    DET.network.train()
    state = copy.deepcopy(DET.network.state_dict())
    flags = [p.requires_grad for p in DET.network.parameters()]
    x = _images(seed)
    x0 = x.clone()
    x_adv, _ = _run(name, x, BOXES, eps)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert torch.equal(x, x0)
    assert float((x_adv - x).abs().max()) <= eps * (1 + 1e-6)
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert DET.network.training and all(m.training for m in DET.network.modules())
    assert [p.requires_grad for p in DET.network.parameters()] == flags
    assert all(p.grad is None for p in DET.network.parameters())
    assert all(torch.equal(v, state[k]) for k, v in DET.network.state_dict().items())
    DET.network.eval()


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_batch_independent(name):
    x = _images(3).double()
    DET.double()
    try:
        a, _ = _run(name, x, BOXES)
        b, _ = _run(name, x, BOXES)
        assert torch.equal(a, b)
        if name not in ("noise", "PGD"):  # their random draws are per batch, by design
            one, _ = _run(name, x[1:], BOXES[1:])
            assert torch.equal(one[0], a[1])
    finally:
        DET.float()


def test_gradient_attacks_raise_the_detector_loss():
    x = _images(5)
    heads = DetectorHeads(DET)
    from monai_smia.apps.detection.attack import pack_targets

    tgt = pack_targets(BOXES, None, (32, 32), "xyxy", False)
    with torch.no_grad():
        clean = heads.loss(heads(x), tgt)
        for name in ("FGSM", "PGD", "DEV", "SMIA"):
            x_adv, _ = _run(name, x, BOXES, 0.05)
            assert bool((heads.loss(heads(x_adv), tgt) > clean).all()), name


def test_label_free_and_smia_stabilization_on_classification_head():
    x = _images(7)
    x_adv, attack = _run("SMIA", x, None)
    assert attack.trace is not None and attack.trace.num_iter == 2
    assert float((x_adv - x).abs().max()) <= 0.03 * (1 + 1e-6)


@pytest.mark.parametrize(
    "boxes, kwargs, match",
    [
        ([torch.tensor([[8.0, 8.0, 40.0, 18.0]])] * 2, {}, "image 0: field 'box' has a box outside the image"),
        ([torch.zeros(0, 4), BOXES[0]], {}, "image 0: field 'box' is empty"),
        ([torch.tensor([[8.0, 8.0, 20.0, 18.0]])], {}, "boxes: 1 box lists for 2 images"),
        ([torch.tensor([[20.0, 8.0, 10.0, 18.0]])] * 2, {}, "max <= min"),
        (BOXES, {"box_mode": "cccwhd"}, "box_mode 'cccwhd' is not supported"),
    ],
)
def test_bad_boxes(boxes, kwargs, match):
    attack = make_detection_attack("PGD", DET, 0.03, num_iter=1)
    with pytest.raises(ValueError, match=match):
        attack(_images(0), boxes, **kwargs)


def test_empty_boxes_allowed_on_request_and_detector_without_loss_path():
    attack = make_detection_attack("FGSM", DET, 0.03, allow_empty_boxes=True)
    attack(_images(0), [torch.zeros(0, 4), BOXES[0]])
    with pytest.raises(ValueError, match="detector: Linear has no loss path"):
        make_detection_attack("FGSM", torch.nn.Linear(2, 2), 0.03)
    with pytest.raises(ValueError, match="not a detection attack"):
        make_detection_attack("DeepFool", DET, 0.03)


def test_xywh_boxes_are_converted():
    attack = make_detection_attack("FGSM", DET, 0.03)
    xywh = [torch.tensor([[8.0, 8.0, 12.0, 10.0]]), torch.tensor([[2.0, 3.0, 7.0, 6.0], [20.0, 20.0, 10.0, 11.0]])]
    assert torch.equal(attack(_images(2), xywh, box_mode="xywh"), attack(_images(2), BOXES))
