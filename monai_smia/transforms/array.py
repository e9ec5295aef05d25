"""Array transforms that attack one channel-first item (no batch dim), MONAI style.

:class:`AdversarialAttack` wraps any attack object of :mod:`monai_smia` (SMIA, PGD, FGSM, random
sign noise); :class:`SMIAttack` builds SMIA (Qi et al., "Stabilized Medical Image Attacks", ICLR
2021, arXiv 2103.05232) itself. Both attack a 3D volume slice by slice with a 2D network when
``slice_dim`` is set (see :func:`monai_smia.attacks.volume.attack_volumes`), keep the ``MetaTensor``
metadata of the input, and write the attack's diagnostics into ``meta["adversarial_attack"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import Randomizable, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from monai_smia.attacks import SMIA, Attack
from monai_smia.attacks.volume import VolumeAttackResult, attack_volumes

__all__ = ["ATTACK_META_KEY", "AdversarialAttack", "SMIAttack", "attack_diagnostics"]

ATTACK_META_KEY = "adversarial_attack"


def attack_diagnostics(
    attack: Attack, result: VolumeAttackResult, index: int, label_free: bool, slice_dim: int | None
) -> dict[str, Any]:
    """Plain-Python diagnostics of volume ``index`` of ``result`` (what goes into the item's metadata).

    Keys: ``attack``, ``eps``, ``num_iter``, ``step_size``, ``alpha``, ``sigma``, ``slice_dim``,
    ``label_free``; the per-iteration curves and final numbers of :meth:`AttackTrace.summary`
    (``deviation_loss``, ``stabilization_loss``, ``perturbation_variance``, ``cosine``,
    ``positive_cosine_share``, ``final_variance``, ``zero_gradient_iterations``); and, when
    predictions were computed, ``error_clean``/``error_adversarial`` (share of outputs whose
    prediction differs from the reference: the labels, or the clean prediction when label-free),
    ``changed_fraction`` and ``error_rate_rose`` (the adversarial error rate is above the clean one; attack
    success as the reports count it is :func:`monai_smia.metrics.case_success`); ``notes``: what an ensemble
    records of the volume (:meth:`~monai_smia.attacks.WorstCase.case_notes`: winner, checks, fallback).
    """
    info: dict[str, Any] = {
        "attack": type(attack).__name__,
        "eps": float(attack.eps),
        "num_iter": int(getattr(attack, "num_iter", 1)),
        "step_size": float(getattr(attack, "step_size", attack.eps)),
        "alpha": float(getattr(attack, "alpha", 0.0)),
        "sigma": getattr(attack, "sigma", None),
        "slice_dim": slice_dim,
        "label_free": bool(label_free),
        "max_abs_perturbation": float(result.perturbation[index].abs().max()) if result.perturbation.numel() else 0.0,
    }
    if isinstance(info["sigma"], (tuple, list)):
        info["sigma"] = [float(s) for s in info["sigma"]]
    elif info["sigma"] is not None:
        info["sigma"] = float(info["sigma"])
    else:
        info["sigma"] = float("nan")
    if info["slice_dim"] is None:
        info["slice_dim"] = -1
    if result.trace is not None:
        one = result.trace
        if one.num_samples > 1:
            from monai_smia.attacks import AttackTrace

            one = AttackTrace(**{k: v[:, index : index + 1] for k, v in vars(one).items()})
        info.update(one.summary())
    if result.error_clean:
        info["error_clean"] = result.error_clean[index]
        info["error_adversarial"] = result.error_adversarial[index]
        info["changed_fraction"] = result.changed[index]
        info["error_rate_rose"] = bool(result.error_adversarial[index] > result.error_clean[index])
    if result.notes:  # e.g. WorstCase: the winner and AutoAttack's checks, kept in the case's record
        info["notes"] = result.notes[index]
    return info


def _batched(name: str, value: Any) -> torch.Tensor | None:
    if value is None:
        return None
    t = convert_to_tensor(value, track_meta=False)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be an array or tensor, got {type(value).__name__}.")
    return t.unsqueeze(0)


class AdversarialAttack(Randomizable, Transform):
    """Attack a channel-first item ``(C, *spatial)`` with any :mod:`monai_smia` attack.

    Args:
        attack: e.g. ``SMIA(net, eps=20.0, bounds=None)`` or ``PGD(...)``; ``eps`` is in the units of
            the item (prepend :class:`monai_smia.layers.IntensityWindow` to the network to attack HU).
        slice_dim: spatial dim to attack slice by slice with a 2D network (as ``SliceInferer``;
            2 = axial after RAS orientation); ``None``: the network takes the whole item.
        slice_batch_size: slices per network call; the result does not depend on it.
        device: device of the network calls (default: the network's); the output stays on the
            input's device.
        compute_success: also compute clean/adversarial error rates for the diagnostics
            (one extra forward pass each, without gradient).

    A random start (``attack.random_start``) is drawn once per item from this transform's random
    state (``set_random_state``), so results are reproducible and independent of batching.

    Call with ``label`` (``(C', *spatial)`` label map, or class index for whole-item classifiers;
    ``None`` attacks the network's own clean prediction) and ``mask`` (``(1|C, *spatial)``; no
    perturbation where 0). :attr:`last_perturbation` and :attr:`last_diagnostics` hold the
    perturbation and the diagnostics of the last call.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        attack: Attack,
        slice_dim: int | None = None,
        slice_batch_size: int = 16,
        device: torch.device | str | None = None,
        compute_success: bool = True,
    ) -> None:
        if not isinstance(attack, Attack):
            raise TypeError(f"attack must be a monai_smia Attack (SMIA, PGD, FGSM, ...), got {type(attack).__name__}.")
        if slice_dim is not None and (isinstance(slice_dim, bool) or not isinstance(slice_dim, int) or slice_dim < 0):
            raise ValueError(f"slice_dim must be None or a spatial dim index >= 0, got {slice_dim!r}.")
        if isinstance(slice_batch_size, bool) or not isinstance(slice_batch_size, int) or slice_batch_size < 1:
            raise ValueError(f"slice_batch_size must be an integer >= 1, got {slice_batch_size!r}.")
        self.attack = attack
        self.slice_dim = slice_dim
        self.slice_batch_size = slice_batch_size
        self.device = device
        self.compute_success = compute_success
        self.last_perturbation: NdarrayOrTensor | None = None
        self.last_diagnostics: dict[str, Any] | None = None
        self._generator: torch.Generator | None = None

    def get_attack(self, img: torch.Tensor) -> Attack:
        """The attack used for ``img`` (subclasses may build it from the item's dimensionality)."""
        return self.attack

    def randomize(self, data: Any = None) -> None:
        """Seed the torch generator of the next random start from this transform's random state."""
        self._generator = torch.Generator().manual_seed(int(self.R.randint(0, 2**31 - 1)))

    def attack_item(
        self,
        img: NdarrayOrTensor,
        label: NdarrayOrTensor | None = None,
        mask: NdarrayOrTensor | None = None,
        randomize: bool = True,
    ) -> tuple[NdarrayOrTensor, NdarrayOrTensor, dict[str, Any]]:
        """Return ``(adversarial, perturbation, diagnostics)`` for one item; both arrays like ``img``."""
        x = convert_to_tensor(img, track_meta=False)
        if not isinstance(x, torch.Tensor) or x.ndim < 2:
            raise ValueError(
                "the image must be channel-first (C, *spatial) without a batch dim, got shape "
                f"{getattr(x, 'shape', None)}."
            )
        if not x.is_floating_point():
            x = x.float()
        attack = self.get_attack(x)
        if randomize:
            self.randomize()
        generator = self._generator
        result = attack_volumes(
            attack,
            x.unsqueeze(0),
            labels=_batched("label", label),
            mask=_batched("mask", mask),
            slice_dim=self.slice_dim,
            slice_batch_size=self.slice_batch_size,
            device=self.device,
            generator=generator,
            compute_success=self.compute_success,
        )
        info = attack_diagnostics(attack, result, 0, label is None, self.slice_dim)
        adv = result.adversarial[0].to(x.dtype)
        pert = result.perturbation[0].to(x.dtype)
        adv_out = self._like(adv, img, info)
        pert_out = self._like(pert, img, None)
        self.last_perturbation, self.last_diagnostics = pert_out, info
        return adv_out, pert_out, info

    @staticmethod
    def _like(t: torch.Tensor, img: NdarrayOrTensor, info: dict[str, Any] | None) -> NdarrayOrTensor:
        if isinstance(img, MetaTensor):
            out = MetaTensor(t.to(img.device), meta=dict(img.meta), applied_operations=list(img.applied_operations))
            if info is not None:
                out.meta[ATTACK_META_KEY] = info
            return out
        if isinstance(img, np.ndarray):
            return convert_to_dst_type(
                t, img, dtype=t.dtype if not np.issubdtype(img.dtype, np.floating) else img.dtype
            )[0]
        return t.to(img.device) if isinstance(img, torch.Tensor) else t

    def __call__(
        self,
        img: NdarrayOrTensor,
        label: NdarrayOrTensor | None = None,
        mask: NdarrayOrTensor | None = None,
        randomize: bool = True,
    ) -> NdarrayOrTensor:
        """Return the adversarial item (same type, shape, dtype and device; metadata kept)."""
        return self.attack_item(img, label, mask, randomize)[0]


class SMIAttack(AdversarialAttack):
    """SMIA (Qi et al., ICLR 2021) on one channel-first item; builds the attack from its arguments.

    The Gaussian smoothing acts in-plane for slice-wise attacks (``slice_dim`` set, a 2D network)
    and over all spatial dims of the item otherwise.

    Args:
        network: the victim (``torch.nn.Module`` returning logits); a 2D network with ``slice_dim``.
        eps: L-infinity budget in the item's units (e.g. 20 HU with an :class:`IntensityWindow` network).
        num_iter, step_size, alpha, sigma, loss, stabilization, random_start, output_key, targeted,
        amp: see :class:`monai_smia.SMIA`.
        bounds: valid intensity range of the item, as :class:`monai_smia.SMIA` (default ``(0, 1)``);
            ``None``: no clamp (e.g. an item in HU attacked through a network with its window inside).
        slice_dim, slice_batch_size, device, compute_success: see :class:`AdversarialAttack`.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        eps: float,
        num_iter: int = 10,
        step_size: float | None = None,
        alpha: float = 1.0,
        sigma: float | Sequence[float] = 1.0,
        slice_dim: int | None = None,
        slice_batch_size: int = 16,
        bounds: Sequence[float] | None = (0.0, 1.0),
        device: torch.device | str | None = None,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        random_start: bool = False,
        stabilization: str = "soft",
        compute_success: bool = True,
        **kwargs: Any,
    ) -> None:
        self._smia_kwargs = dict(
            eps=eps,
            num_iter=num_iter,
            step_size=step_size,
            alpha=alpha,
            sigma=sigma,
            loss=loss,
            bounds=bounds,
            random_start=random_start,
            stabilization=stabilization,
            **kwargs,
        )
        self.network = network
        self._attacks: dict[int, SMIA] = {}
        # validate the arguments now (as a 2D attack), so mistakes surface at construction
        probe = SMIA(network, spatial_dims=2 if not isinstance(sigma, Sequence) else len(sigma), **self._smia_kwargs)
        super().__init__(probe, slice_dim, slice_batch_size, device, compute_success)
        self._attacks[probe.spatial_dims] = probe

    def get_attack(self, img: torch.Tensor) -> Attack:
        dims = img.ndim - 1 - (1 if self.slice_dim is not None else 0)
        if dims not in (1, 2, 3):
            raise ValueError(
                f"SMIAttack: the item of shape {tuple(img.shape)} with slice_dim={self.slice_dim} gives {dims} "
                "spatial dims "
                "for the network; expected 1, 2 or 3."
            )
        if dims not in self._attacks:
            self._attacks[dims] = SMIA(self.network, spatial_dims=dims, **self._smia_kwargs)
        self.attack = self._attacks[dims]
        return self.attack
