"""Attack batches of volumes, whole or slice by slice, in bounded memory.

A 2D network on a 3D CT volume sees one slice at a time (MONAI's ``SliceInferer``). Attacking
the volume then means attacking its slices: :func:`attack_volumes` moves ``slice_batch_size``
slices at a time to the network's device, attacks them and brings the adversarial slices back,
so activation memory grows with ``slice_batch_size``, not with the number of slices. Because the
engine's losses are per-sample means and its update is a sign, the result does not depend on
``slice_batch_size`` (bit-exact in float64); random starts are drawn once per volume. The
per-slice diagnostics are merged into one sample per volume (:meth:`AttackTrace.merge_samples`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from monai_smia.attacks.base import Attack, frozen_network
from monai_smia.attacks.noise import RandomSignNoise
from monai_smia.attacks.trace import AttackTrace
from monai_smia.losses import hard_prediction, prepare_labels

__all__ = ["VolumeAttackResult", "attack_volumes", "draw_random_start", "network_device"]


@dataclass
class VolumeAttackResult:
    """Output of :func:`attack_volumes`.

    Attributes:
        adversarial: ``(B, C, *spatial)`` adversarial images (dtype and device of the input).
        perturbation: ``adversarial - images``.
        trace: per-iteration diagnostics, one sample per volume (``None`` for attacks without a trace).
        error_clean: per volume, share of outputs whose clean prediction differs from the reference
            (the labels, or the clean prediction itself when attacking label-free: then 0).
        error_adversarial: the same for the adversarial prediction.
        changed: per volume, share of outputs whose prediction the attack changed.
    """

    adversarial: torch.Tensor
    perturbation: torch.Tensor
    trace: AttackTrace | None
    error_clean: list[float] = field(default_factory=list)
    error_adversarial: list[float] = field(default_factory=list)
    changed: list[float] = field(default_factory=list)


def network_device(network: torch.nn.Module, default: torch.device | str | None = None) -> torch.device:
    """Device of the network's first parameter or buffer (``default``, else CPU, when it has none)."""
    for t in list(network.parameters()) + list(network.buffers()):
        return t.device
    return torch.device(default) if default is not None else torch.device("cpu")


def draw_random_start(
    attack: Attack, shape: Sequence[int], dtype: torch.dtype, generator: torch.Generator | None
) -> torch.Tensor:
    """Uniform noise in ``[-eps, eps]`` of ``shape`` on the CPU: one draw per volume, then sliced."""
    noise = torch.rand(tuple(shape), generator=generator, dtype=torch.promote_types(dtype, torch.float32))
    return (noise * 2 - 1) * attack.eps


def _spatial_batched(name: str, t: torch.Tensor, images: torch.Tensor, allow_no_channel: bool) -> torch.Tensor:
    """Check ``t`` against ``images`` (B, C, *sp) and return it as (B|1, Ct, *sp)."""
    spatial = tuple(images.shape[2:])
    shape = tuple(t.shape)
    if shape[2:] == spatial and len(shape) == images.ndim and shape[0] in (1, images.shape[0]):
        return t
    if allow_no_channel and shape[1:] == spatial and shape[0] == images.shape[0]:
        return t.unsqueeze(1)
    raise ValueError(
        f"{name} of shape {shape} does not match images of shape {tuple(images.shape)}: expected (B, C', "
        f"{', '.join(map(str, spatial))}) with the images' spatial shape."
    )


class _Counter:
    def __init__(self, num: int) -> None:
        self.err_clean = [0.0] * num
        self.err_adv = [0.0] * num
        self.changed = [0.0] * num
        self.total = [0.0] * num

    def add(self, b: int, ref: torch.Tensor, clean: torch.Tensor, adv: torch.Tensor) -> None:
        self.err_clean[b] += float((clean != ref).sum())
        self.err_adv[b] += float((adv != ref).sum())
        self.changed[b] += float((adv != clean).sum())
        self.total[b] += float(ref.numel())

    def rates(self, values: list[float]) -> list[float]:
        return [v / t if t else math.nan for v, t in zip(values, self.total)]


def attack_volumes(
    attack: Attack,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    slice_dim: int | None = None,
    slice_batch_size: int = 16,
    device: torch.device | str | None = None,
    delta_init: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    compute_success: bool = True,
) -> VolumeAttackResult:
    """Attack ``images`` ``(B, C, *spatial)`` whole (``slice_dim=None``) or slice by slice.

    Args:
        attack: an attack from :mod:`monai_smia` (its network takes slices when ``slice_dim`` is set).
        images: ``(B, C, *spatial)`` floating-point images, on any device.
        labels: ``None`` (attack the clean prediction), class indices ``(B,)`` (whole inputs only),
            or label maps ``(B, 1|K, *spatial)`` / ``(B, *spatial)`` matching the images' spatial shape.
        mask: optional ``(B|1, 1|C, *spatial)``; the perturbation is zero where it is 0.
        slice_dim: spatial dim to slide over (as ``SliceInferer.spatial_dim``; 2 = axial after RAS
            orientation), or ``None`` to attack the whole input at once.
        slice_batch_size: slices per network call (>= 1).
        device: where the network runs; default: the network's device. Results come back to the
            images' device.
        delta_init: starting perturbation ``(B, C, *spatial)`` for random starts (the signs, for
            ``RandomSignNoise``); drawn here per volume with ``generator`` when ``None`` and the
            attack has ``random_start`` or is ``RandomSignNoise``.
        generator: CPU random generator for the random start.
        compute_success: also predict the clean and adversarial inputs (one extra forward each per
            slice batch, no gradient) to report error rates.

    Raises:
        ValueError: shapes do not fit (``slice_dim`` out of range, labels/mask of another spatial
            shape, a network of other dimensionality).
    """
    if not isinstance(attack, Attack):
        raise TypeError(f"attack must be a monai_smia Attack (SMIA, PGD, FGSM, ...), got {type(attack).__name__}.")
    if not isinstance(images, torch.Tensor) or images.ndim < 3:
        raise ValueError(f"images must be a tensor (B, C, *spatial), got {getattr(images, 'shape', type(images))}.")
    if isinstance(slice_batch_size, bool) or not isinstance(slice_batch_size, int) or slice_batch_size < 1:
        raise ValueError(f"slice_batch_size must be an integer >= 1, got {slice_batch_size!r}.")
    n_spatial = images.ndim - 2
    if slice_dim is not None:
        if isinstance(slice_dim, bool) or not isinstance(slice_dim, int) or not 0 <= slice_dim < n_spatial:
            raise ValueError(
                f"slice_dim={slice_dim!r} does not fit images of shape {tuple(images.shape)} with {n_spatial} spatial "
                f"dims; use 0..{n_spatial - 1} (2 = axial after RAS orientation) or None for a whole-volume attack."
            )
        if n_spatial < 2:
            raise ValueError(
                f"slice-wise attacks need at least 2 spatial dims, images have shape {tuple(images.shape)}."
            )
    expected = getattr(attack, "spatial_dims", None)
    got = n_spatial - (1 if slice_dim is not None else 0)
    if expected is not None and expected != got:
        hint = (
            "set slice_dim to attack a volume slice by slice"
            if slice_dim is None
            else "use slice_dim=None for a volume network"
        )
        raise ValueError(
            f"the attack expects {expected} spatial dims but gets {got} from images of shape {tuple(images.shape)} "
            f"with slice_dim={slice_dim}; {hint}."
        )
    if labels is not None:
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be a torch.Tensor or None, got {type(labels).__name__}.")
        if slice_dim is not None or labels.ndim > 2:
            labels = _spatial_batched("labels", labels, images, allow_no_channel=True)
            if labels.shape[0] != images.shape[0]:
                raise ValueError(f"labels have batch size {labels.shape[0]}, images {images.shape[0]}.")
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}.")
        mask = _spatial_batched("mask", mask, images, allow_no_channel=True)
        if mask.shape[1] not in (1, images.shape[1]):
            raise ValueError(f"mask has {mask.shape[1]} channels; expected 1 or {images.shape[1]} (the images').")
        mask = mask.expand(images.shape[0], *mask.shape[1:])
    if delta_init is not None and tuple(delta_init.shape) != tuple(images.shape):
        raise ValueError(f"delta_init has shape {tuple(delta_init.shape)}, images {tuple(images.shape)}.")
    if delta_init is None and (getattr(attack, "random_start", False) or isinstance(attack, RandomSignNoise)):
        delta_init = draw_random_start(attack, images.shape, images.dtype, generator)

    dev = torch.device(device) if device is not None else network_device(attack.network, images.device)
    x_all = images.as_tensor() if hasattr(images, "as_tensor") else images
    x_all = x_all.detach()
    out = torch.empty_like(x_all)
    traces: list[AttackTrace] = []
    counter = _Counter(images.shape[0])

    def run(
        b: int, x: torch.Tensor, lab: torch.Tensor | None, m: torch.Tensor | None, d0: torch.Tensor | None
    ) -> torch.Tensor:
        x = x.to(dev)
        lab = None if lab is None else lab.to(dev)
        m = None if m is None else m.to(dev)
        d0 = None if d0 is None else d0.to(dev)
        try:
            adv = attack(x, lab, mask=m, delta_init=d0)
        except RuntimeError as e:
            raise ValueError(
                f"the network failed on attack input of shape {tuple(x.shape)} (slice_dim={slice_dim}): {e}"
            ) from e
        if compute_success:
            with frozen_network(attack.network), torch.no_grad():
                logits_clean = attack.logits(x)
                clean = hard_prediction(logits_clean)
                ref = clean if lab is None else prepare_labels(lab, logits_clean)
                counter.add(b, ref, clean, hard_prediction(attack.logits(adv)))
        return adv.to(out.device)

    for b in range(images.shape[0]):
        lab_b = None if labels is None else labels[b : b + 1]
        m_b = None if mask is None else mask[b : b + 1]
        d_b = None if delta_init is None else delta_init[b : b + 1]
        if slice_dim is None:
            out[b : b + 1] = run(b, x_all[b : b + 1], lab_b, m_b, d_b)
            if attack.trace is not None:
                traces.append(attack.trace)
            continue
        axis = slice_dim + 2
        n_slices = x_all.shape[axis]
        per_volume: list[AttackTrace] = []

        def slices(t: torch.Tensor | None, start: int, stop: int, axis: int = axis) -> torch.Tensor | None:
            # (1, C, *sp) -> (S, C, *sp without slice_dim)
            return None if t is None else t.narrow(axis, start, stop - start).movedim(axis, 0)[:, 0]

        for start in range(0, n_slices, slice_batch_size):
            stop = min(start + slice_batch_size, n_slices)
            adv = run(
                b,
                slices(x_all[b : b + 1], start, stop),
                slices(lab_b, start, stop),
                slices(m_b, start, stop),
                slices(d_b, start, stop),
            )
            out[b].narrow(axis - 1, start, stop - start).copy_(adv.movedim(0, axis - 1))
            if attack.trace is not None:
                per_volume.append(attack.trace)
        if per_volume:
            traces.append(AttackTrace.cat(per_volume).merge_samples())

    trace = AttackTrace.cat(traces) if traces and len(traces) == images.shape[0] else None
    adversarial = out
    if hasattr(images, "as_tensor"):
        from monai.utils import convert_to_dst_type

        adversarial = convert_to_dst_type(out, images)[0]
    return VolumeAttackResult(
        adversarial=adversarial,
        perturbation=out - x_all,
        trace=trace,
        error_clean=counter.rates(counter.err_clean) if compute_success else [],
        error_adversarial=counter.rates(counter.err_adv) if compute_success else [],
        changed=counter.rates(counter.changed) if compute_success else [],
    )
