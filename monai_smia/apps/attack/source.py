"""Attack on the source grid: the perturbation lives on the source voxels, in the source's units.

The "network" the attack sees is the bundle's deterministic preprocessing
(:class:`monai_smia.transforms.differentiable.DifferentiablePreprocessing`) followed by the network,
slice by slice for a ``SliceInferer`` (:class:`SliceWiseNetwork`), so gradients reach the source
voxels, and the attack is one of the project's (:func:`monai_smia.attacks.registry.make_attack`),
whose base class enforces the budget and the bounds, in source units.

Integer sources (int16 HU, 8-bit PNG) are attacked on their stored-value lattice
(:class:`SourceLattice`): the attack's variable is the stored value, the budget is a whole number of
stored steps, the step size is rounded to a whole step (at least one) and a random start is
rounded, so ``source + perturbation`` is exactly representable in the source's integer type and the
file written carries exactly the perturbation that was optimised. Memory stays bounded by one
slice batch of the network (its activations are recomputed per batch in the backward pass,
``torch.utils.checkpoint``; through sliding windows, window batch by window batch:
:mod:`monai_smia.sliding_window`) plus the resampling of one volume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from monai_smia.attacks.base import Attack
from monai_smia.attacks.noise import RandomSignNoise
from monai_smia.attacks.volume import draw_random_start
from monai_smia.inferers import InfererNetwork
from monai_smia.transforms.differentiable import DifferentiablePreprocessing

__all__ = ["SliceWiseNetwork", "SourceGridNetwork", "SourceLattice", "attack_source", "source_sigma"]


class SliceWiseNetwork(torch.nn.Module):
    """A 2D network applied to every slice of ``(B, C, H, W, D)`` along ``slice_dim``, ``slice_batch_size``
    slices at a time; with gradients on, each batch is checkpointed, so only one batch's activations
    are held at a time.

    Args:
        network: the module a slice ``(S, C, *slice)`` goes through (the bare network, or the
            sliding windows of a ``SliceInferer`` as :class:`monai_smia.inferers.InfererNetwork`).
        slice_dim: spatial dim of the slices (``SliceInferer.spatial_dim``).
        slice_batch_size: slices per call.
    """

    def __init__(self, network: torch.nn.Module, slice_dim: int, slice_batch_size: int = 16) -> None:
        super().__init__()
        self.network = network
        self.slice_dim = int(slice_dim)
        self.slice_batch_size = int(slice_batch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = self.slice_dim + 2
        outputs = []
        for b in range(x.shape[0]):
            vol = x[b : b + 1].movedim(axis, 0)[:, 0]  # (S, C, *slice)
            parts = []
            for start in range(0, vol.shape[0], self.slice_batch_size):
                chunk = vol[start : start + self.slice_batch_size]
                if torch.is_grad_enabled() and chunk.requires_grad and not _windowwise(self.network):
                    parts.append(checkpoint(self.network, chunk, use_reentrant=False))
                else:
                    parts.append(self.network(chunk))
            outputs.append(torch.cat(parts).unsqueeze(0).movedim(1, axis))
        return torch.cat(outputs)


def _windowwise(network: torch.nn.Module) -> bool:
    """Whether ``network`` takes its gradient window batch by window batch already (then checkpointing it
    again would only repeat its no-grad pass)."""
    return isinstance(network, InfererNetwork) and network.windowwise


class SourceGridNetwork(torch.nn.Module):
    """``network(preprocessing(scale * u + offset))``: from the attack's variable ``u`` (stored values,
    or the source intensities themselves) to the network's logits on the network grid."""

    def __init__(
        self,
        preprocessing: DifferentiablePreprocessing,
        network: torch.nn.Module,
        scale: float = 1.0,
        offset: float = 0.0,
    ) -> None:
        super().__init__()
        self.preprocessing = preprocessing
        self.network = network
        self.scale, self.offset = float(scale), float(offset)

    def to_source(self, u: torch.Tensor) -> torch.Tensor:
        """The source intensities (e.g. HU) of the attack variable ``u``."""
        if self.scale == 1.0 and self.offset == 0.0:
            return u
        return u * self.scale + self.offset

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.network(self.preprocessing(self.to_source(u)))


@dataclass
class SourceLattice:
    """The stored-value lattice of an integer source: ``value = scale * stored + offset``.

    Attributes:
        scale: source units per stored step (rescale slope); ``None``: a float source, no lattice.
        offset: rescale intercept (0 when the source values are themselves on the lattice).
        dtype: the stored integer type (bounds of the attack in stored units), e.g. ``"int16"``.
    """

    scale: float | None = None
    offset: float = 0.0
    dtype: str | None = None

    @property
    def exact(self) -> bool:
        return self.scale is not None

    def variable(self, values: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        """The attack's variable for source ``values``, and ``(scale, offset)`` back to the source units."""
        if self.scale is None:
            return values, 1.0, 0.0
        if self.scale == 1.0 and float(self.offset).is_integer():
            return values, 1.0, 0.0  # the source values are integers already
        return torch.round((values.double() - self.offset) / self.scale).to(values.dtype), self.scale, self.offset

    def budget(self, eps_source: float) -> float:
        """The budget in the attack variable's units (whole stored steps on a lattice)."""
        if self.scale is None:
            return float(eps_source)
        return float(math.floor(eps_source / self.scale + 1e-9))

    def bounds(self, scale: float, offset: float) -> tuple[float, float] | None:
        """The stored type's range in the attack variable's units (``None`` for a float source)."""
        if self.dtype is None:
            return None
        info = np.iinfo(np.dtype(self.dtype))
        lo, hi = (
            (info.min * (self.scale or 1.0) + self.offset - offset) / scale,
            (info.max * (self.scale or 1.0) + self.offset - offset) / scale,
        )
        return (float(math.ceil(lo - 1e-9)), float(math.floor(hi + 1e-9)))


def source_sigma(sigma: float, affine: np.ndarray | None, spatial_dims: int, slice_dim: int | None) -> list[float]:
    """SMIA's Gaussian ``sigma`` per source axis: in-plane only (0 along the source axis that becomes the
    network's slice axis after reorientation) for a slice-wise network, on every axis otherwise."""
    sig = [float(sigma)] * spatial_dims
    if slice_dim is not None and affine is not None and spatial_dims == 3:
        world = nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64))[:, 0]
        for axis, w in enumerate(world):
            if int(w) == int(slice_dim):
                sig[axis] = 0.0
    return sig


def _lattice_start(
    attack: Attack, u: torch.Tensor, lattice: SourceLattice, generator: torch.Generator | None
) -> torch.Tensor | None:
    """The random start of ``attack`` (one draw per volume), rounded to whole stored steps on a lattice."""
    if not attack.draws_random_start:
        return None
    d0 = draw_random_start(attack, u.shape, u.dtype, generator)
    if lattice.exact and not isinstance(attack, RandomSignNoise):
        d0 = torch.round(d0)
    return d0


def attack_source(
    attack: Attack,
    u: torch.Tensor,
    labels: torch.Tensor | None,
    lattice: SourceLattice,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, bool]:
    """Attack the source-grid variable ``u`` ``(1, C, *spatial)``; returns ``(u_adv, rounded)``.

    On a lattice the step size is rounded to whole stored steps (at least one) and the random start
    is rounded, so PGD, FGSM, SMIA and noise stay on the lattice; an attack that does not (DeepFool,
    DAG) has its result rounded toward the source afterwards (``rounded`` is then ``True``).
    """
    if lattice.exact and hasattr(attack, "step_size"):
        attack.step_size = float(max(1.0, round(attack.step_size)))
    d0 = _lattice_start(attack, u, lattice, generator)
    u_adv = attack(u, labels, delta_init=None if d0 is None else d0.to(u.device))
    rounded = False
    if lattice.exact:
        d = u_adv - u
        if not bool((d == torch.round(d)).all()):
            u_adv, rounded = u + torch.trunc(d), True
    return u_adv.detach(), rounded
