"""MONAI transforms that attack images: array classes and their dictionary versions."""

from __future__ import annotations

from monai_smia.transforms.array import ATTACK_META_KEY, AdversarialAttack, SMIAttack, attack_diagnostics
from monai_smia.transforms.dictionary import (
    AdversarialAttackD,
    AdversarialAttackd,
    AdversarialAttackDict,
    SMIAttackD,
    SMIAttackd,
    SMIAttackDict,
)

__all__ = [
    "ATTACK_META_KEY",
    "AdversarialAttack",
    "AdversarialAttackD",
    "AdversarialAttackDict",
    "AdversarialAttackd",
    "SMIAttack",
    "SMIAttackD",
    "SMIAttackDict",
    "SMIAttackd",
    "attack_diagnostics",
]


def __getattr__(name: str) -> object:
    from monai_smia.transforms import dictionary

    return getattr(dictionary, name)  # the deprecated Attackd aliases warn there
