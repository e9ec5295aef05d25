"""Dictionary transforms that attack items of a MONAI data dictionary (channel-first, no batch dim).

Example (a 2D UNet attacked slice by slice through a CT volume in Hounsfield units)::

    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd
    from monai_smia.layers import with_intensity_window
    from monai_smia.transforms import SMIAttackd

    net_hu = with_intensity_window(unet2d, a_min=-1000, a_max=400)   # the window the UNet was trained with
    chain = Compose([
        LoadImaged(["image", "label"]), EnsureChannelFirstd(["image", "label"]),
        Orientationd(["image", "label"], axcodes="RAS"),
        Spacingd(["image", "label"], pixdim=(1.5, 1.5, 3.0), mode=("bilinear", "nearest")),
        SMIAttackd("image", label_key="label", network=net_hu, eps=20.0, slice_dim=2, bounds=None,
                   perturbation_key="perturbation"),
    ])
    item = chain({"image": "ct.nii.gz", "label": "lungs.nii.gz"})
    item["image"].meta["adversarial_attack"]["positive_cosine_share"]
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable
from monai.utils import ensure_tuple, ensure_tuple_rep

from monai_smia.attacks import Attack
from monai_smia.transforms.array import AdversarialAttack, SMIAttack

__all__ = [
    "AdversarialAttackD",
    "AdversarialAttackDict",
    "AdversarialAttackd",
    "SMIAttackD",
    "SMIAttackDict",
    "SMIAttackd",
]


class AdversarialAttackd(Randomizable, MapTransform):
    """Dictionary version of :class:`~monai_smia.transforms.AdversarialAttack`: any attack as a transform.

    Args:
        keys: keys of the images to attack (each one separately, against the same label and mask).
        label_key: key of the label map (or class index); ``None`` attacks the network's own clean
            prediction (the label-free setting of a deployed system).
        attack: a :mod:`monai_smia` attack (``SMIA``, ``PGD``, ``FGSM``, ``RandomSignNoise``).
        slice_dim: spatial dim for a slice-wise attack with a 2D network (2 = axial after RAS).
        slice_batch_size: slices per network call (the result does not depend on it).
        mask_key: key of a mask ``(1, *spatial)``; the perturbation is zero where it is 0 (e.g.
            the body, so that nothing lands in the air around the patient).
        device: device of the network calls (default: the network's).
        perturbation_key: key(s), one per image key, under which to store the perturbation
            (a ``MetaTensor`` with the image's metadata, ready for
            :func:`monai_smia.io.invert_perturbation`); ``None``: not stored.
        compute_success: compute clean/adversarial error rates for the diagnostics.
        allow_missing_keys: skip missing image keys instead of raising ``KeyError``.

    The diagnostics go into ``d[key].meta["adversarial_attack"]`` (see
    :func:`~monai_smia.transforms.array.attack_diagnostics`).
    """

    backend = AdversarialAttack.backend

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str | None,
        attack: Attack,
        slice_dim: int | None = None,
        slice_batch_size: int = 16,
        mask_key: str | None = None,
        device: torch.device | str | None = None,
        perturbation_key: str | Sequence[str] | None = None,
        compute_success: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.attacker = self._make_attacker(attack, slice_dim, slice_batch_size, device, compute_success)
        self._init_keys(label_key, mask_key, perturbation_key)

    def _make_attacker(
        self, attack: Any, slice_dim: Any, slice_batch_size: Any, device: Any, compute_success: bool
    ) -> AdversarialAttack:
        return AdversarialAttack(attack, slice_dim, slice_batch_size, device, compute_success)

    def _init_keys(
        self, label_key: str | None, mask_key: str | None, perturbation_key: str | Sequence[str] | None
    ) -> None:
        self.label_key = label_key
        self.mask_key = mask_key
        if perturbation_key is None:
            self.perturbation_keys: tuple[Hashable | None, ...] = ensure_tuple_rep(None, len(self.keys))
        else:
            keys = ensure_tuple(perturbation_key)
            if len(keys) != len(self.keys):
                raise ValueError(
                    f"perturbation_key must give one key per image key: {len(self.keys)} keys {self.keys}, got {keys}."
                )
            clash = set(keys) & ({*self.keys, label_key, mask_key} - {None})
            if clash:
                raise ValueError(f"perturbation_key {sorted(map(str, clash))} would overwrite an input key.")
            self.perturbation_keys = keys

    def set_random_state(self, seed: int | None = None, state: Any = None) -> AdversarialAttackd:
        super().set_random_state(seed, state)
        self.attacker.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        self.attacker.randomize(data)

    def _get(self, d: Mapping[Hashable, Any], key: str | None, role: str) -> Any:
        if key is None:
            return None
        if key not in d:
            raise KeyError(
                f"{type(self).__name__}: {role} key {key!r} is not in the data (keys: {sorted(map(str, d))})."
            )
        return d[key]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        label = self._get(d, self.label_key, "label")
        mask = self._get(d, self.mask_key, "mask")
        for key, pkey in self.key_iterator(d, self.perturbation_keys):
            try:
                adv, pert, _ = self.attacker.attack_item(d[key], label, mask)
            except ValueError as e:
                raise ValueError(f"{type(self).__name__}, key {key!r}: {e}") from e
            d[key] = adv
            if pkey is not None:
                d[pkey] = pert
        return d


class SMIAttackd(AdversarialAttackd):
    """Dictionary version of :class:`~monai_smia.transforms.SMIAttack` (Qi et al., ICLR 2021).

    Args:
        keys: image keys to attack.
        label_key: label key, or ``None`` for the label-free attack of the clean prediction.
        network: the victim; a 2D network with ``slice_dim``.
        eps: budget in the item's units (HU for CT with an ``IntensityWindow`` network).
        num_iter, step_size, alpha, sigma: SMIA's iterations, step (``None``: ``2.5 * eps / T``),
            stabilization weight and Gaussian sigma in voxels (in-plane for slice-wise attacks).
        slice_dim, slice_batch_size, mask_key, device, perturbation_key, compute_success,
        allow_missing_keys: see :class:`AdversarialAttackd`.
        bounds: valid intensity range, as :class:`monai_smia.SMIA` (default ``(0, 1)``); ``None``: no
            clamp (e.g. items in HU attacked through a network with its window inside).
        kwargs: further :class:`monai_smia.SMIA` arguments (``loss``, ``random_start``,
            ``stabilization``, ``output_key``, ``targeted``, ``amp``).
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str | None,
        network: torch.nn.Module,
        eps: float,
        num_iter: int = 10,
        step_size: float | None = None,
        alpha: float = 1.0,
        sigma: float | Sequence[float] = 1.0,
        slice_dim: int | None = None,
        slice_batch_size: int = 16,
        bounds: Sequence[float] | None = (0.0, 1.0),
        mask_key: str | None = None,
        device: torch.device | str | None = None,
        perturbation_key: str | Sequence[str] | None = None,
        compute_success: bool = True,
        allow_missing_keys: bool = False,
        **kwargs: Any,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.attacker = SMIAttack(
            network,
            eps,
            num_iter=num_iter,
            step_size=step_size,
            alpha=alpha,
            sigma=sigma,
            slice_dim=slice_dim,
            slice_batch_size=slice_batch_size,
            bounds=bounds,
            device=device,
            compute_success=compute_success,
            **kwargs,
        )
        self._init_keys(label_key, mask_key, perturbation_key)


AdversarialAttackD = AdversarialAttackDict = AdversarialAttackd
SMIAttackD = SMIAttackDict = SMIAttackd

#: names kept for old configs; they warn and will be removed: use ``AdversarialAttackd``.
DEPRECATED_ALIASES = ("Attackd", "AttackD", "AttackDict")


def __getattr__(name: str) -> Any:
    if name in DEPRECATED_ALIASES:
        warnings.warn(
            f"monai_smia.transforms.{name} is deprecated and will be removed after version 0.1; use "
            "AdversarialAttackd.",
            FutureWarning,  # shown by default (a DeprecationWarning is hidden outside __main__ and tests)
            stacklevel=2,
        )
        return AdversarialAttackd
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
