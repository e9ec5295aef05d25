"""MONAI transforms that attack images: array classes and their dictionary versions."""

from __future__ import annotations

from monai_smia.transforms.array import ATTACK_META_KEY, AdversarialAttack, SMIAttack, attack_diagnostics
from monai_smia.transforms.dictionary import (
    AdversarialAttackd,
    AdversarialAttackD,
    AdversarialAttackDict,
    AttackD,
    Attackd,
    AttackDict,
    SMIAttackd,
    SMIAttackD,
    SMIAttackDict,
)

__all__ = [
    "ATTACK_META_KEY",
    "AdversarialAttack",
    "AdversarialAttackd",
    "AdversarialAttackD",
    "AdversarialAttackDict",
    "Attackd",
    "AttackD",
    "AttackDict",
    "SMIAttack",
    "SMIAttackd",
    "SMIAttackD",
    "SMIAttackDict",
    "attack_diagnostics",
]
