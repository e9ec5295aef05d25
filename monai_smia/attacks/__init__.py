"""Adversarial attacks on MONAI networks, all on one base class that owns the guarantees."""

from __future__ import annotations

from monai_smia.attacks.base import Attack, IterativeAttack, frozen_network
from monai_smia.attacks.fgsm import FGSM
from monai_smia.attacks.noise import RandomSignNoise
from monai_smia.attacks.pgd import PGD
from monai_smia.attacks.smia import SMIA, PerturbationSmoother
from monai_smia.attacks.trace import AttackTrace

__all__ = ["Attack", "IterativeAttack", "frozen_network", "FGSM", "PGD", "SMIA", "RandomSignNoise", "PerturbationSmoother", "AttackTrace"]
