"""Window-wise input gradients through MONAI's sliding-window inference.

Differentiating ``sliding_window_inference`` with autograd keeps every window's activations until the
backward pass, so an attack's memory grows with the number of windows: a whole CT volume cannot be
attacked. :func:`windowwise_sliding_window` gives the same output and the same input gradient in the
memory of one window batch:

- pass 1 is MONAI's own sliding-window forward without gradient (exactly what inference computes);
- pass 2, in the backward pass, recomputes the windows ``sw_batch_size`` at a time (or ``grad_batch_size``)
  with gradient and pushes each window's share of the output gradient back through the network. With
  ``m`` the blending (importance) map, ``c = sum_w place_w(m)`` the overlap normalisation and ``g`` the
  output gradient on the padded grid: ``dL/dx_w = J_f(x_w)^T (m * crop_w(g) / crop_w(c))``, accumulated
  into the padded input and brought back through the padding.

Peak memory: one window batch's graph, the aggregated outputs and their gradient, the overlap count and
the volume. The
network's parameters get no gradient (this serves attacks, which freeze them). Outputs must keep the
input's spatial size (MONAI's zoomed multi-resolution outputs are refused with a clear error).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map, dense_patch_slices, get_valid_patch_size
from monai.inferers import SliceInferer, SlidingWindowInferer
from monai.utils import PytorchPadMode, ensure_tuple, ensure_tuple_rep, fall_back_tuple, look_up_option

from monai_smia.attacks.progress import window_bar
from monai_smia.errors import out_of_memory

__all__ = [
    "WindowGeometry",
    "describe_inferer",
    "window_geometry",
    "windowwise_applies",
    "windowwise_input_gradient",
    "windowwise_sliding_window",
]


@dataclass(frozen=True)
class WindowGeometry:
    """Where ``SlidingWindowInferer`` puts its windows on an input (MONAI's own rules).

    Attributes:
        image_size: the spatial size after padding up to the roi.
        pad: the ``F.pad`` widths (last spatial dim first), all 0 when the input covers the roi.
        crop: per spatial dim, the slice of the padded grid that is the input.
        slices: per window, its spatial slices on the padded grid.
        weight: the importance map ``(1, 1, *roi)`` (constant or gaussian blending).
    """

    image_size: tuple[int, ...]
    pad: tuple[int, ...]
    crop: tuple[slice, ...]
    slices: tuple[tuple[slice, ...], ...]
    weight: torch.Tensor


def _scan_interval(image_size: Sequence[int], roi: Sequence[int], overlap: Sequence[float]) -> tuple[int, ...]:
    """MONAI's window stride: ``int(roi * (1 - overlap))`` (at least 1), the roi itself where it equals the image."""
    return tuple(r if r == s else max(int(r * (1 - o)), 1) for s, r, o in zip(image_size, roi, overlap))


def window_geometry(inputs: torch.Tensor, inferer: SlidingWindowInferer, sw_device: torch.device) -> WindowGeometry:
    """The windows, padding and blending map of ``inferer`` on ``inputs`` ``(B, C, *spatial)``."""
    dims = inputs.ndim - 2
    size = tuple(int(s) for s in inputs.shape[2:])
    roi = tuple(int(r) for r in fall_back_tuple(inferer.roi_size, size))
    image_size = tuple(max(s, r) for s, r in zip(size, roi))
    pad: list[int] = []
    for k in range(dims - 1, -1, -1):
        diff = image_size[k] - size[k]
        pad.extend([diff // 2, diff - diff // 2])
    crop = tuple(slice(pad[2 * (dims - 1 - k)], pad[2 * (dims - 1 - k)] + size[k]) for k in range(dims))
    interval = _scan_interval(image_size, roi, ensure_tuple_rep(inferer.overlap, dims))
    slices = tuple(tuple(s) for s in dense_patch_slices(image_size, roi, interval))
    valid = get_valid_patch_size(image_size, roi)
    if tuple(valid) == roi and inferer.roi_weight_map is not None:
        weight = inferer.roi_weight_map
    else:
        weight = compute_importance_map(
            ensure_tuple(valid),
            mode=inferer.mode,
            sigma_scale=inferer.sigma_scale,
            device=sw_device,
            dtype=inputs.dtype,
        )
    weight = weight.to(device=sw_device, dtype=inputs.dtype)
    weight = weight.reshape((1, 1, *weight.shape[-dims:]))
    return WindowGeometry(image_size, tuple(pad), crop, slices, weight)


def _flatten(out: Any) -> tuple[tuple[Any, ...] | None, list[torch.Tensor]]:
    """``(dict keys or None, tensors)`` of a tensor, a tuple/list or a dict output, as MONAI's inferers see it."""
    if isinstance(out, torch.Tensor):
        return None, [out]
    if isinstance(out, dict):
        keys = tuple(sorted(out))
        return keys, [out[k] for k in keys]
    if isinstance(out, (tuple, list)):
        return (), list(out)
    raise TypeError(f"the network returned {type(out).__name__}; sliding-window inference blends tensors only.")


def _pack(keys: tuple[Any, ...] | None, tensors: Sequence[torch.Tensor]) -> Any:
    if keys is None:
        return tensors[0]
    return dict(zip(keys, tensors)) if keys else tuple(tensors)


def _devices(inputs: torch.Tensor, inferer: SlidingWindowInferer) -> tuple[torch.device, torch.device]:
    sw_device = torch.device(inferer.sw_device) if inferer.sw_device is not None else inputs.device
    device = torch.device(inferer.device) if inferer.device is not None else inputs.device
    return sw_device, device


def _window_batch(
    x_pad: torch.Tensor, geo: WindowGeometry, batch: Sequence[tuple[int, int]], device: torch.device
) -> tuple[torch.Tensor, list[list[slice]]]:
    """The windows ``(image index, window index)`` of one batch, stacked, and MONAI's coordinates for them."""
    coords = [[slice(b, b + 1), slice(None), *geo.slices[w]] for b, w in batch]
    return torch.cat([x_pad[tuple(c)] for c in coords]).to(device), coords


def windowwise_input_gradient(
    inputs: torch.Tensor,
    grads: Sequence[torch.Tensor | None],
    inferer: SlidingWindowInferer,
    network: torch.nn.Module,
    grad_batch_size: int | None = None,
    autocast: tuple[bool, torch.dtype] = (False, torch.float32),
) -> torch.Tensor:
    """``d(sum_k <grads[k], out_k>)/d inputs`` for ``out = inferer(inputs, network)``, window batch by window batch.

    Args:
        inputs: ``(B, C, *spatial)`` the input of the forward pass.
        grads: the gradient of each (flattened) output, ``None`` for outputs that got none.
        inferer: the ``SlidingWindowInferer`` of the forward pass.
        network: its network (any module; called as MONAI calls it, with window coordinates under ``with_coord``).
        grad_batch_size: windows recomputed per batch; ``None``: the inferer's ``sw_batch_size``.
        autocast: ``(enabled, dtype)`` of ``torch.autocast`` on the window device during the forward pass: the
            windows are recomputed under the same autocast (an ``amp`` attack), so the gradient is the forward's.
    """
    sw_device, _ = _devices(inputs, inferer)
    geo = window_geometry(inputs, inferer, sw_device)
    on_grid, count = _padded_gradients(grads, geo, inputs.shape[0])
    padding = look_up_option(inferer.padding_mode, PytorchPadMode)
    x_pad = F.pad(inputs, list(geo.pad), mode=padding, value=inferer.cval) if any(geo.pad) else inputs
    grad_pad = torch.zeros_like(x_pad)
    windows = [(b, w) for b in range(inputs.shape[0]) for w in range(len(geo.slices))]
    step = int(grad_batch_size or inferer.sw_batch_size)
    with window_bar(len(windows)) as bar:
        for start in range(0, len(windows), step):
            win, coords = _window_batch(x_pad, geo, windows[start : start + step], sw_device)
            win.requires_grad_(True)
            with torch.enable_grad(), torch.autocast(sw_device.type, dtype=autocast[1], enabled=autocast[0]):
                out = network(win, coords) if inferer.with_coord else network(win)
                share = _window_share(count, coords, geo)
                pairs = [
                    (o, _window_gradient(h, share, coords, o))
                    for o, h in zip(_flatten(out)[1], on_grid)
                    if h is not None
                ]
                (g_win,) = torch.autograd.grad([o for o, _ in pairs], win, [g for _, g in pairs])
            g_win = g_win.to(device=grad_pad.device, dtype=grad_pad.dtype)
            for i, c in enumerate(coords):
                grad_pad[tuple(c)] += g_win[i : i + 1]
            if bar is not None:
                bar.update(len(coords))
    if not any(geo.pad):
        return grad_pad
    with torch.enable_grad():
        leaf = inputs.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.pad(leaf, list(geo.pad), mode=padding, value=inferer.cval), leaf, grad_pad)
    return grad


def _padded_gradients(
    grads: Sequence[torch.Tensor | None], geo: WindowGeometry, batch: int
) -> tuple[list[torch.Tensor | None], torch.Tensor | None]:
    """Each output gradient on the padded grid (the gradient itself where nothing is padded: no copy), and the
    overlap count ``sum_w place_w(m)`` that each window's share is divided by."""
    out: list[torch.Tensor | None] = []
    count: torch.Tensor | None = None
    for g in grads:
        if g is None:
            out.append(None)
            continue
        if count is None:
            count = torch.zeros((1, 1, *geo.image_size), dtype=g.dtype, device=g.device)
            weight = geo.weight.to(device=g.device, dtype=g.dtype)
            for s in geo.slices:
                count[(slice(None), slice(None), *s)] += weight
        if not any(geo.pad):
            out.append(g)
            continue
        h = torch.zeros((batch, g.shape[1], *geo.image_size), dtype=g.dtype, device=g.device)
        h[(slice(None), slice(None), *geo.crop)] = g
        out.append(h)
    return out, count


def _window_share(
    count: torch.Tensor | None, coords: Sequence[Sequence[slice]], geo: WindowGeometry
) -> torch.Tensor | None:
    """``m / crop_w(c)`` for each window of a batch, ``(n, 1, *roi)``: the blending map over the overlap count."""
    if count is None:
        return None
    c = torch.cat([count[(slice(None), slice(None), *s[2:])] for s in coords])
    return geo.weight.to(device=c.device, dtype=c.dtype) / c


def _window_gradient(
    h: torch.Tensor, share: torch.Tensor, coords: Sequence[Sequence[slice]], out: torch.Tensor
) -> torch.Tensor:
    """The share of the output gradient ``h`` that falls on each window of a batch: ``m * crop_w(h / c)``."""
    g = torch.cat([h[tuple(c)] for c in coords])
    if g.shape != out.shape:
        raise ValueError(
            f"window-wise gradient: the network's output windows have shape {tuple(out.shape)}, the inferer blends "
            f"{tuple(g.shape)}; outputs must keep the input's spatial size (pass windowwise=False to differentiate "
            "the whole sliding-window call)."
        )
    return (g * share).to(device=out.device, dtype=out.dtype)


def describe_inferer(inferer: SlidingWindowInferer) -> str:
    """``SlidingWindowInferer(roi_size=..., sw_batch_size=..., overlap=..., mode=...)`` for error messages."""
    mode = getattr(inferer.mode, "value", inferer.mode)
    return (
        f"{type(inferer).__name__}(roi_size={tuple(ensure_tuple(inferer.roi_size))}, "
        f"sw_batch_size={inferer.sw_batch_size}, "
        f"overlap={inferer.overlap}, mode={mode!r})"
    )


class _WindowwiseSlidingWindow(torch.autograd.Function):
    """MONAI's no-grad sliding-window forward; the backward recomputes one window batch at a time."""

    @staticmethod
    def forward(
        ctx: Any, inputs: torch.Tensor, inferer: SlidingWindowInferer, network: torch.nn.Module, keys: list, batch: Any
    ) -> Any:
        with torch.no_grad():
            try:
                out = inferer(inputs, network)
            except (ValueError, RuntimeError, IndexError, TypeError) as err:
                if out_of_memory(err):  # CUDA or host: the caller names the case and what to lower
                    raise
                raise ValueError(
                    f"{describe_inferer(inferer)} cannot blend the network's output "
                    f"({' '.join(str(err).split())[:200]}); "
                    "a sliding-window inferer needs dense outputs (B, K, *spatial)."
                ) from err
        found, tensors = _flatten(out)
        keys.append(found)
        tensors = [t.as_tensor() if hasattr(t, "as_tensor") else t for t in tensors]
        for t in tensors:
            if tuple(t.shape[2:]) != tuple(inputs.shape[2:]):
                raise ValueError(
                    f"{describe_inferer(inferer)} returned an output of spatial size {tuple(t.shape[2:])} for an input "
                    f"of {tuple(inputs.shape[2:])}; the window-wise gradient needs outputs at the input's size "
                    "(pass windowwise=False to differentiate the whole sliding-window call)."
                )
        ctx.save_for_backward(inputs)
        ctx.inferer, ctx.network, ctx.batch = inferer, network, batch
        dev = _devices(inputs, inferer)[0].type
        ctx.autocast = (torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        return tuple(tensors)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> Any:
        (inputs,) = ctx.saved_tensors
        grad = windowwise_input_gradient(inputs.detach(), grads, ctx.inferer, ctx.network, ctx.batch, ctx.autocast)
        return grad, None, None, None, None


def windowwise_applies(inferer: Any, network: torch.nn.Module, inputs: torch.Tensor) -> bool:
    """Whether :func:`windowwise_sliding_window` computes ``inferer(inputs, network)``'s input gradient: a
    ``SlidingWindowInferer`` (not a ``SliceInferer``), an input that needs a gradient, and a network whose
    parameters need none (an attack freezes them; training needs the full graph)."""
    if not isinstance(inferer, SlidingWindowInferer) or isinstance(inferer, SliceInferer):
        return False
    if not (torch.is_grad_enabled() and inputs.requires_grad):
        return False
    return not any(p.requires_grad for p in network.parameters())


def windowwise_sliding_window(
    inputs: torch.Tensor, inferer: SlidingWindowInferer, network: torch.nn.Module, grad_batch_size: int | None = None
) -> Any:
    """``inferer(inputs, network)`` with the input gradient taken window batch by window batch (module docstring).

    The output (tensor, tuple or dict, as the network returns) equals MONAI's sliding-window inference
    exactly; its gradient with respect to ``inputs`` equals that of the full graph. ``grad_batch_size``
    windows are recomputed at a time in the backward pass (default: the inferer's ``sw_batch_size``); fewer
    lower the peak memory (one batch's graph), and the result does not depend on it.
    """
    x = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
    keys: list = []
    tensors = _WindowwiseSlidingWindow.apply(x, inferer, network, keys, grad_batch_size)
    return _pack(keys[0], tensors)
