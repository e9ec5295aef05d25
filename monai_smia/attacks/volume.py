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
from monai.utils import convert_to_dst_type

from monai_smia.attacks.base import Attack, frozen_network
from monai_smia.attacks.minimal import MinimalNormAttack, MinimalNormResult
from monai_smia.attacks.progress import slice_bar, slice_progress
from monai_smia.attacks.trace import AttackTrace
from monai_smia.losses import hard_prediction, prepare_labels

__all__ = ["VolumeAttackResult", "attack_volumes", "draw_random_start", "network_device", "slice_progress"]


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
        minimal: for minimal-norm attacks (DeepFool, DAG), their unconstrained result with one sample
            per volume: the slices' results gathered into the volume, the L2 norm over the volume,
            the largest L-infinity norm and iteration count, the volume's pixel error.
        clean_logits: with ``keep_clean``, the clean output behind ``changed`` (slices gathered), else ``None``.
        notes: per volume, what an attack with ``case_notes``/``merge_notes`` (WorstCase) records of it (its slices'
            notes merged), else empty.
    """

    adversarial: torch.Tensor
    perturbation: torch.Tensor
    trace: AttackTrace | None
    error_clean: list[float] = field(default_factory=list)
    error_adversarial: list[float] = field(default_factory=list)
    changed: list[float] = field(default_factory=list)
    minimal: MinimalNormResult | None = None
    clean_logits: torch.Tensor | None = None
    notes: list[dict] = field(default_factory=list)


def network_device(network: torch.nn.Module, default: torch.device | str | None = None) -> torch.device:
    """Device of the network's first parameter or buffer (``default``, else CPU, when it has none)."""
    for t in list(network.parameters()) + list(network.buffers()):
        return t.device
    return torch.device(default) if default is not None else torch.device("cpu")


def draw_random_start(
    attack: Attack,
    shape: Sequence[int],
    dtype: torch.dtype,
    generator: torch.Generator | Sequence[torch.Generator] | None,
) -> torch.Tensor:
    """Uniform noise in ``[-eps, eps]`` of ``shape`` on the CPU: one draw per volume, then sliced.

    ``generator`` may be one generator per volume (``shape[0]`` of them): each volume's start then
    depends only on its own generator (its case's seed), not on the batch it is in.
    """
    dt = torch.promote_types(dtype, torch.float32)
    if isinstance(generator, Sequence):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]} volumes; give one per volume.")
        noise = torch.stack([torch.rand(tuple(shape[1:]), generator=g, dtype=dt) for g in generator])
    else:
        noise = torch.rand(tuple(shape), generator=generator, dtype=dt)
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
        self.err_clean, self.err_adv, self.changed, self.total = ([0.0] * num for _ in range(4))

    def add(self, b: int, ref: torch.Tensor, clean: torch.Tensor, adv: torch.Tensor) -> None:
        self.err_clean[b] += float((clean != ref).sum())
        self.err_adv[b] += float((adv != ref).sum())
        self.changed[b] += float((adv != clean).sum())
        self.total[b] += float(ref.numel())

    def rates(self, values: list[float]) -> list[float]:
        return [v / t if t else math.nan for v, t in zip(values, self.total)]


def _check_geometry(attack: Attack, images: torch.Tensor, slice_dim: int | None, slice_batch_size: int) -> None:
    """Refuse an attack/images/slice_dim combination that does not fit (see :func:`attack_volumes`)."""
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
            msg = f"slice-wise attacks need at least 2 spatial dims, images have shape {tuple(images.shape)}."
            raise ValueError(msg)
    expected = getattr(attack, "spatial_dims", None)
    got = n_spatial - (1 if slice_dim is not None else 0)
    if expected is not None and expected != got:
        hint = "set slice_dim to attack a volume slice by slice"
        hint = hint if slice_dim is None else "use slice_dim=None for a volume network"
        raise ValueError(
            f"the attack expects {expected} spatial dims but gets {got} from images of shape {tuple(images.shape)} "
            f"with slice_dim={slice_dim}; {hint}."
        )


def _check_inputs(
    attack: Attack,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    mask: torch.Tensor | None,
    slice_dim: int | None,
    delta_init: torch.Tensor | None,
    generator: torch.Generator | Sequence[torch.Generator] | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Labels and mask in ``(B, C', *spatial)`` form, and the random start (drawn here when needed)."""
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
    if delta_init is None and attack.draws_random_start:
        delta_init = draw_random_start(attack, images.shape, images.dtype, generator)
    return labels, mask, delta_init


class _Runner:
    """Runs the attack on one batch of inputs (a volume, or a slice batch of one) and collects what each
    call leaves behind: adversarial images, traces, minimal-norm results, error counts, clean logits (``keep``)."""

    def __init__(
        self, attack: Attack, x_all: torch.Tensor, dev: torch.device, slice_dim: int | None, success: bool, keep: bool
    ) -> None:
        self.attack, self.dev, self.slice_dim, self.compute_success = attack, dev, slice_dim, success
        self.keep_clean, self.clean_part, self.clean = keep and success, None, None
        self.out = torch.empty_like(x_all)
        # minimal-norm attacks (DeepFool, DAG): their unconstrained result, gathered like ``out``
        self.unconstrained = torch.empty_like(x_all) if isinstance(attack, MinimalNormAttack) else None
        self.counter = _Counter(x_all.shape[0])
        self.traces: list[AttackTrace] = []
        self.minimal: list[MinimalNormResult] = []
        self.notes: dict[int, list[dict]] = {}  # per volume, the notes of its calls (attacks with case_notes)

    def __call__(
        self, b: int, x: torch.Tensor, lab: torch.Tensor | None, m: torch.Tensor | None, d0: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Adversarial ``x`` (and the unconstrained result of a minimal-norm attack) on the output device."""
        attack = self.attack
        x = x.to(self.dev)
        lab = None if lab is None else lab.to(self.dev)
        m = None if m is None else m.to(self.dev)
        d0 = None if d0 is None else d0.to(self.dev)
        try:
            adv = attack(x, lab, mask=m, delta_init=d0)
        except RuntimeError as e:
            raise ValueError(
                f"the network failed on attack input of shape {tuple(x.shape)} (slice_dim={self.slice_dim}): {e}"
            ) from e
        if callable(getattr(attack, "case_notes", None)):
            self.notes.setdefault(b, []).extend(attack.case_notes())
        if self.compute_success:
            with frozen_network(attack.network), torch.no_grad():
                logits_clean = attack.logits(x)
                self.clean_part = logits_clean if self.keep_clean else None
                clean = hard_prediction(logits_clean)
                ref = clean if lab is None else prepare_labels(lab, logits_clean)
                self.counter.add(b, ref, clean, hard_prediction(attack.logits(adv)))
        result = getattr(attack, "result", None) if self.unconstrained is not None else None
        if result is not None:
            self.minimal.append(result)
        unc = None if result is None else result.unconstrained.to(self.out.device)
        return adv.to(self.out.device), unc

    def keep(self, b: int, start: int | None = None) -> None:
        """Put the last call's clean logits into ``clean``: volume ``b`` (its slices from ``start``)."""
        part, self.clean_part, ax = self.clean_part, None, 1 + (self.slice_dim or 0)
        if part is not None:
            part = part[0] if start is None else part.movedim(0, ax)  # (K, *spatial of the part)
            if self.clean is None:
                size = [*part.shape]
                if start is not None:  # the whole volume's slices
                    size[ax] = self.out.shape[ax + 1]
                self.clean = part.new_empty((self.out.shape[0], *size), device=self.out.device)
            (self.clean[b] if start is None else self.clean[b].narrow(ax, start, part.shape[ax])).copy_(part)


def _merge_slice_results(parts: list[MinimalNormResult]) -> MinimalNormResult:
    """One volume's minimal-norm result from those of its slice batches (``(S_i,)`` each): the L2 norm
    over the whole volume, the largest L-infinity norm and iteration count, the mean pixel error (every
    slice has as many targets)."""
    norms = torch.cat([p.norms for p in parts])
    return MinimalNormResult(
        unconstrained=torch.empty(0),  # filled by the caller from the gathered volume
        norms=torch.linalg.vector_norm(norms.double(), dim=0).to(norms.dtype).reshape(1),
        linf=torch.cat([p.linf for p in parts]).amax().reshape(1),
        iterations=torch.cat([p.iterations for p in parts]).amax().reshape(1),
        error=torch.cat([p.error for p in parts]).mean().reshape(1),
    )


def _attack_slices(
    run: _Runner,
    b: int,
    tensors: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None],
    slice_dim: int,
    slice_batch_size: int,
) -> None:
    """Attack volume ``b`` (``tensors``: its image, labels, mask, start, each ``(1, C', *spatial)``)
    slice batch by slice batch; store its adversarial slices, merged trace and minimal-norm result."""
    axis = slice_dim + 2
    n_slices = tensors[0].shape[axis]
    per_volume: list[AttackTrace] = []
    first = len(run.minimal)

    def slices(t: torch.Tensor | None, start: int, stop: int) -> torch.Tensor | None:
        # (1, C, *sp) -> (S, C, *sp without slice_dim)
        return None if t is None else t.narrow(axis, start, stop - start).movedim(axis, 0)[:, 0]

    with slice_bar(n_slices) as bar:
        for start in range(0, n_slices, slice_batch_size):
            stop = min(start + slice_batch_size, n_slices)
            adv, unc = run(b, *(slices(t, start, stop) for t in tensors))
            run.keep(b, start)
            run.out[b].narrow(axis - 1, start, stop - start).copy_(adv.movedim(0, axis - 1))
            if unc is not None:
                run.unconstrained[b].narrow(axis - 1, start, stop - start).copy_(unc.movedim(0, axis - 1))
            if run.attack.trace is not None:
                per_volume.append(run.attack.trace)
            if bar is not None:
                bar.update(stop - start)
    if per_volume:
        run.traces.append(AttackTrace.cat(per_volume).merge_samples())
    if len(run.minimal) > first:
        run.minimal[first:] = [_merge_slice_results(run.minimal[first:])]


def _minimal_result(run: _Runner, num_volumes: int) -> MinimalNormResult | None:
    """The minimal-norm result of the whole call, one sample per volume (``None`` for other attacks)."""
    if run.unconstrained is None or len(run.minimal) != num_volumes:
        return None
    return MinimalNormResult(
        unconstrained=run.unconstrained,
        norms=torch.cat([p.norms.to(run.out.device) for p in run.minimal]),
        linf=torch.cat([p.linf.to(run.out.device) for p in run.minimal]),
        iterations=torch.cat([p.iterations.to(run.out.device) for p in run.minimal]),
        error=torch.cat([p.error.to(run.out.device) for p in run.minimal]),
    )


def attack_volumes(
    attack: Attack,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    slice_dim: int | None = None,
    slice_batch_size: int = 16,
    device: torch.device | str | None = None,
    delta_init: torch.Tensor | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    compute_success: bool = True,
    keep_clean: bool = False,
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
        generator: CPU random generator for the random start, or one per volume.
        compute_success: also predict the clean and adversarial inputs (one extra forward each per
            slice batch, no gradient) to report error rates.
        keep_clean: with ``compute_success``, keep that clean output in ``VolumeAttackResult.clean_logits``.

    A minimal-norm attack (DeepFool, DAG) leaves its unconstrained result of the WHOLE call, one
    sample per volume, in ``VolumeAttackResult.minimal`` and in ``attack.result`` (not just the last
    slice batch's).

    Raises:
        ValueError: shapes do not fit (``slice_dim`` out of range, labels/mask of another spatial
            shape, a network of other dimensionality).
    """
    _check_geometry(attack, images, slice_dim, slice_batch_size)
    labels, mask, delta_init = _check_inputs(attack, images, labels, mask, slice_dim, delta_init, generator)
    dev = torch.device(device) if device is not None else network_device(attack.network, images.device)
    x_all = images.as_tensor() if hasattr(images, "as_tensor") else images
    x_all = x_all.detach()
    run = _Runner(attack, x_all, dev, slice_dim, compute_success, keep_clean)
    for b in range(images.shape[0]):
        one = tuple(None if t is None else t[b : b + 1] for t in (x_all, labels, mask, delta_init))
        if slice_dim is not None:
            _attack_slices(run, b, one, slice_dim, slice_batch_size)  # type: ignore[arg-type]
            continue
        run.out[b : b + 1], unc = run(b, *one)  # type: ignore[misc]
        run.keep(b)
        if unc is not None:
            run.unconstrained[b : b + 1] = unc
        if attack.trace is not None:
            run.traces.append(attack.trace)
    minimal = _minimal_result(run, images.shape[0])
    if minimal is not None:
        attack.result = minimal  # type: ignore[attr-defined]
    return _volume_result(run, images, x_all, minimal)


def _volume_result(
    run: _Runner, images: torch.Tensor, x_all: torch.Tensor, minimal: MinimalNormResult | None
) -> VolumeAttackResult:
    traces, out, counter = run.traces, run.out, run.counter
    trace = AttackTrace.cat(traces) if traces and len(traces) == images.shape[0] else None
    adversarial = convert_to_dst_type(out, images)[0] if hasattr(images, "as_tensor") else out
    return VolumeAttackResult(
        adversarial=adversarial,
        perturbation=out - x_all,
        trace=trace,
        error_clean=counter.rates(counter.err_clean) if run.compute_success else [],
        error_adversarial=counter.rates(counter.err_adv) if run.compute_success else [],
        changed=counter.rates(counter.changed) if run.compute_success else [],
        minimal=minimal,
        clean_logits=run.clean,
        notes=[run.attack.merge_notes(run.notes[b]) for b in sorted(run.notes)] if run.notes else [],
    )
