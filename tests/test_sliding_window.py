"""Window-wise gradients through MONAI's sliding-window inference equal the full graph's: the output is
MONAI's own, the input gradient matches autograd through ``sliding_window_inference`` (float64 to 1e-10
relative) across blend modes, overlaps, padding modes, window batch sizes, volumes smaller than the roi,
multi-channel and list/dict outputs; attacks through ``AttackInferer`` give the same images."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SimpleInferer, SliceInferer, SlidingWindowInferer
from monai.networks.nets import UNet

from monai_smia import FGSM, PGD, SMIA
from monai_smia.attacks import frozen_network
from monai_smia.inferers import AttackInferer, InfererNetwork
from monai_smia.sliding_window import window_geometry, windowwise_applies, windowwise_sliding_window


def _net(dims: int = 3, cin: int = 1, cout: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(dims, cin, cout, (4, 8), (2,), num_res_units=1).double().eval()


class _Outputs(torch.nn.Module):
    """A network returning a list (deep-supervision style) or a dict of two heads."""

    def __init__(self, net: torch.nn.Module, kind: str) -> None:
        super().__init__()
        self.net, self.kind = net, kind

    def forward(self, x: torch.Tensor) -> object:
        out = self.net(x)
        heads = [out, torch.tanh(out[:, :1]) * 3]
        return heads if self.kind == "list" else {"seg": heads[0], "aux": heads[1]}


def _gradients(net, inferer, x, pick=lambda o: o):
    """(full-graph output, full-graph gradient, window-wise output, window-wise gradient) of a random linear loss."""
    with frozen_network(net):
        xa = x.clone().requires_grad_(True)
        full = inferer(xa, net)
        torch.manual_seed(1)
        weights = [
            torch.randn_like(t)
            for t in (full if isinstance(full, (list, tuple)) else full.values() if isinstance(full, dict) else [full])
        ]

        def loss(out):
            outs = out if isinstance(out, (list, tuple)) else list(out.values()) if isinstance(out, dict) else [out]
            return sum((o * w).sum() for o, w in zip(outs, weights))

        (g_full,) = torch.autograd.grad(loss(full), xa)
        xb = x.clone().requires_grad_(True)
        ww = windowwise_sliding_window(xb, inferer, net)
        (g_ww,) = torch.autograd.grad(loss(ww), xb)
    return full, g_full, ww, g_ww


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("padding_mode", ["constant", "replicate", "reflect"])
def test_gradient_equals_the_full_graph_float64(mode, overlap, padding_mode):
    net = _net()
    x = torch.rand(2, 1, 28, 13, 20, dtype=torch.float64)  # 13 < roi 16 on one axis: padded there
    inferer = SlidingWindowInferer(
        (16, 16, 16),
        sw_batch_size=3,
        overlap=overlap,
        mode=mode,
        padding_mode=padding_mode,
        cval=0.3 if padding_mode == "constant" else 0.0,
    )  # torch takes a value for constant only
    full, g_full, ww, g_ww = _gradients(net, inferer, x)
    assert torch.equal(ww, full.as_tensor() if hasattr(full, "as_tensor") else full)  # MONAI's own forward
    assert g_full.abs().max() > 0 and _rel(g_ww, g_full) < 1e-10


@pytest.mark.parametrize("sw_batch_size", [1, 2, 5, 64])
def test_window_batch_size_does_not_change_the_result(sw_batch_size):
    net = _net()
    x = torch.rand(1, 1, 30, 30, 18, dtype=torch.float64)
    ref = SlidingWindowInferer((16, 16, 16), sw_batch_size=4, overlap=0.5, mode="gaussian")
    inferer = SlidingWindowInferer((16, 16, 16), sw_batch_size=sw_batch_size, overlap=0.5, mode="gaussian")
    _, g_full, _, g_ww = _gradients(net, inferer, x)
    _, _, _, g_ref = _gradients(net, ref, x)
    assert _rel(g_ww, g_full) < 1e-10 and _rel(g_ww, g_ref) < 1e-10
    with frozen_network(net):
        ref = FGSM(InfererNetwork(SlidingWindowInferer((16, 16, 16), 4, overlap=0.5, mode="gaussian"), net), eps=0.05)(
            x
        )
        sw = SlidingWindowInferer((16, 16, 16), sw_batch_size, overlap=0.5, mode="gaussian")
        assert torch.equal(FGSM(InfererNetwork(sw, net), eps=0.05)(x), ref)
        other = 7 - min(sw_batch_size, 6)  # fewer windows recomputed per backward batch than the forward's
        assert torch.equal(FGSM(InfererNetwork(sw, net, grad_batch_size=other), eps=0.05)(x), ref)


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_multi_channel_and_structured_outputs(kind):
    net = _Outputs(_net(3, cin=2, cout=4), kind)
    x = torch.rand(1, 2, 20, 24, 17, dtype=torch.float64)
    inferer = SlidingWindowInferer((16, 16, 16), sw_batch_size=2, overlap=0.25, mode="gaussian")
    full, g_full, ww, g_ww = _gradients(net, inferer, x)
    assert type(ww) is type(full) and _rel(g_ww, g_full) < 1e-10


def test_volume_smaller_than_the_roi_and_2d():
    net = _net(2)
    x = torch.rand(3, 1, 11, 40, dtype=torch.float64)
    inferer = SlidingWindowInferer((16, 16), sw_batch_size=4, overlap=0.5, padding_mode="replicate")
    _, g_full, _, g_ww = _gradients(net, inferer, x)
    assert window_geometry(x, inferer, x.device).pad[2:] == (2, 3) and _rel(g_ww, g_full) < 1e-10


def test_attacks_through_attack_inferer_equal_the_full_graph():
    """FGSM, PGD and SMIA (both stabilization targets) through a SlidingWindowInferer: window-wise (the default)
    and the full graph give the same adversarial volume in float64; FGSM agrees on >= 99.9% of voxels in float32."""
    net = _net(3, cout=2)
    x = torch.rand(1, 1, 32, 24, 20, dtype=torch.float64)
    inferer = SlidingWindowInferer((16, 16, 16), sw_batch_size=2, overlap=0.5, mode="gaussian")
    attacks = [FGSM(net, eps=0.03), PGD(net, eps=0.03, num_iter=3), SMIA(net, eps=0.03, num_iter=3, spatial_dims=3),
               SMIA(net, eps=0.03, num_iter=3, spatial_dims=3, stabilization_target="differentiable")]  # fmt: skip
    for attack in attacks:
        ww = AttackInferer(attack, inferer)(x, net)
        full = AttackInferer(attack, inferer, windowwise=False)(x, net)
        assert torch.equal(ww, full), type(attack).__name__
        assert AttackInferer(attack, inferer).attack_network(x, net)[0].windowwise
    net32, x32 = net.float(), x.float()
    ww = AttackInferer(FGSM(net32, eps=0.03), inferer)
    full = AttackInferer(FGSM(net32, eps=0.03), inferer, windowwise=False)
    ww(x32, net32), full(x32, net32)
    assert float((ww.last_adversarial == full.last_adversarial).double().mean()) >= 0.999


def test_slice_inferer_with_a_roi_smaller_than_the_slice_is_window_wise():
    net = _net(2, cout=2)
    x = torch.rand(1, 1, 40, 36, 5, dtype=torch.float64)
    inferer = SliceInferer(roi_size=(16, 16), spatial_dim=2, sw_batch_size=3, overlap=0.25, mode="gaussian")
    module, dim = AttackInferer(FGSM(net, eps=0.02), inferer).attack_network(x, net)
    assert dim == 2 and isinstance(module, InfererNetwork) and module.windowwise
    ww = AttackInferer(SMIA(net, eps=0.02, num_iter=2), inferer)(x, net)
    assert torch.equal(ww, AttackInferer(SMIA(net, eps=0.02, num_iter=2), inferer, windowwise=False)(x, net))


def test_when_it_applies():
    net = _net()
    sw = SlidingWindowInferer((16, 16, 16))
    x = torch.rand(1, 1, 16, 16, 16, dtype=torch.float64, requires_grad=True)
    assert not windowwise_applies(sw, net, x)  # parameters need gradients (training): the full graph
    with frozen_network(net):
        assert windowwise_applies(sw, net, x) and not windowwise_applies(SimpleInferer(), net, x)
        assert not windowwise_applies(sw, net, x.detach())
        with torch.no_grad():
            assert not windowwise_applies(sw, net, x)
    out = InfererNetwork(sw, net)(x)
    out.sum().backward()  # training through the inferer still reaches the parameters
    assert all(p.grad is not None for p in net.parameters())


def test_outputs_the_inferer_cannot_blend_are_named():
    class Half(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.avg_pool3d(x, 2)

    x = torch.rand(1, 1, 32, 32, 32, requires_grad=True)
    with pytest.raises(
        ValueError, match=r"SlidingWindowInferer\(roi_size=\(16, 16, 16\).* returned an output of spatial size"
    ):
        windowwise_sliding_window(x, SlidingWindowInferer((16, 16, 16)), Half())
    classifier = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten())
    with (
        frozen_network(classifier),
        pytest.raises(ValueError, match=r"SlidingWindowInferer\(.*cannot blend the network's output"),
    ):
        windowwise_sliding_window(x, SlidingWindowInferer((16, 16, 16)), classifier)


def test_source_grid_gradient_through_the_preprocessing_is_window_wise():
    """The source-grid model (the bundle's preprocessing inside the attack, then the inferer's network):
    its gradient on the source voxels is the full graph's, with the sliding-window part window-wise."""
    from monai.data import MetaTensor
    from monai.transforms import Orientationd, ScaleIntensityRanged, Spacingd

    from monai_smia.apps.attack.source import SourceGridNetwork
    from monai_smia.transforms.differentiable import DifferentiablePreprocessing

    affine = torch.tensor(
        [[-0.7, 0, 0, 10.0], [0, -0.7, 0, 20.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1.0]], dtype=torch.float64
    )
    src = MetaTensor(torch.zeros(1, 30, 26, 9), affine=affine)
    chain = [Orientationd("image", axcodes="RAS"), Spacingd("image", pixdim=(1.0, 1.0, 1.5), mode="bilinear"),
             ScaleIntensityRanged("image", a_min=-1000, a_max=500, b_min=0.0, b_max=1.0, clip=True)]  # fmt: skip
    net = _net(3, cout=2).float()
    inferer = SlidingWindowInferer((16, 16, 16), sw_batch_size=2, overlap=0.25, mode="gaussian")
    u = torch.rand(1, 1, 30, 26, 9, generator=torch.Generator().manual_seed(0)) * 1400 - 1000
    grads = []
    for windowwise in (True, False):
        model = SourceGridNetwork(
            DifferentiablePreprocessing(chain, src.meta), InfererNetwork(inferer, net, windowwise)
        )
        with frozen_network(model):
            ug = u.clone().requires_grad_(True)
            out = model(ug)
            assert out.shape[2:] == (21, 18, 14)  # resampled to the network grid: 2 x 2 x 1 windows
            (g,) = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum(), ug)
        grads.append(g)
    assert grads[1].abs().max() > 0 and _rel(grads[0], grads[1]) < 1e-5


@pytest.mark.parametrize("command", ["evaluate", "attack"])
def test_a_case_that_runs_out_of_memory_is_named(command, data_dir, tmp_path, monkeypatch, capsys):
    """Out of memory inside the window-wise backward pass of a zoo-shaped bundle's SlidingWindowInferer: one
    line naming the case, its shape and what to lower, exit 2, and no record of the case."""
    import json

    from zoo_fixtures import decathlon_spleen, zoo_bundle

    from monai_smia import sliding_window
    from monai_smia.cli import main

    def no_memory(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(sliding_window, "windowwise_input_gradient", no_memory)
    task = decathlon_spleen(data_dir, tmp_path / "Task09_Spleen")
    bundle, out = zoo_bundle(tmp_path / "spleen_ct_segmentation"), tmp_path / "out"
    data = (
        ["--dataset-dir", str(task)]
        if command == "evaluate"
        else ["--input", str(task / "imagesTs" / "spleen_3.nii.gz")]
    )
    extra = ["--attacks", "FGSM"] if command == "evaluate" else ["--attack", "FGSM"]
    argv = [command, "--bundle", str(bundle), *data, "--output", str(out), "--eps", "20", "--eps-unit", "HU", *extra]
    assert main([*argv, "--device", "cpu"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"monai-smia {command}: error:")]
    assert len(errors) == 1 and "out of memory on cpu for a volume of shape" in errors[0], errors
    assert "spleen_" in errors[0] and "sw_batch_size" in errors[0]
    stored = [json.loads(p.read_text()) for p in (out / "cases").rglob("*.json")] if (out / "cases").is_dir() else []
    assert not any(r.get("attack") == "FGSM" for r in stored)


def test_amp_attacks_recompute_the_windows_under_the_forward_autocast():
    """With ``amp`` the windows run under autocast in the forward pass; the backward recomputes them under the
    same autocast (bfloat16 on the CPU), so the result matches the full graph's amp attack."""
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if torch.is_grad_enabled() and x.requires_grad:  # a window recomputed for the input gradient
                seen.append(torch.is_autocast_enabled("cpu"))
            return self.net(x)

    net = Recorder(_net(3, cout=2).float())
    x = torch.rand(1, 1, 32, 24, 20)
    inferer = SlidingWindowInferer((16, 16, 16), sw_batch_size=2, overlap=0.5)
    ww = AttackInferer(FGSM(net, eps=0.03, amp=True), inferer)
    full = AttackInferer(FGSM(net, eps=0.03, amp=True), inferer, windowwise=False)
    ww(x, net)
    assert seen and all(seen)  # every window recomputed with gradient ran under autocast
    full(x, net)
    assert float((ww.last_adversarial == full.last_adversarial).double().mean()) >= 0.99


def test_host_out_of_memory_in_the_forward_pass_is_not_called_a_blending_error():
    """A CPU allocator failure inside MONAI's pass stays an out-of-memory error (the run names the case and what to
    lower), not "cannot blend the network's output"."""

    class Starved(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 68719476736 bytes.")

    x = torch.rand(1, 1, 32, 32, 32, requires_grad=True)
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        windowwise_sliding_window(x, SlidingWindowInferer((16, 16, 16)), Starved())


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "4"])
def test_grad_batch_size_is_refused_unless_a_positive_integer(bad):
    """Both places that take ``grad_batch_size`` refuse the same values with the same one-line message."""
    net = torch.nn.Conv3d(1, 2, 1)
    inferer = SlidingWindowInferer(roi_size=(4, 4, 4), sw_batch_size=2)
    with pytest.raises(ValueError, match="grad_batch_size must be an integer >= 1 or None"):
        AttackInferer(PGD(net, eps=0.1), inferer, grad_batch_size=bad)
    with pytest.raises(ValueError, match="grad_batch_size must be an integer >= 1 or None"):
        InfererNetwork(inferer, net, grad_batch_size=bad)
    assert AttackInferer(PGD(net, eps=0.1), inferer, grad_batch_size=3).grad_batch_size == 3
