"""Adversarial attacks on MONAI networks, all on one base class that owns the guarantees."""

from __future__ import annotations

from monai_smia.attacks.apgd import APGD
from monai_smia.attacks.base import Attack, IterativeAttack, frozen_network
from monai_smia.attacks.cospgd import CosPGD
from monai_smia.attacks.dag import DAG, shift_labels
from monai_smia.attacks.deepfool import DeepFool
from monai_smia.attacks.fgsm import FGSM
from monai_smia.attacks.minimal import MinimalNormAttack, MinimalNormResult
from monai_smia.attacks.noise import RandomSignNoise
from monai_smia.attacks.pgd import PGD
from monai_smia.attacks.segpgd import SegPGD
from monai_smia.attacks.smia import SMIA, PerturbationSmoother
from monai_smia.attacks.square import Square
from monai_smia.attacks.trace import COSINE_KINDS, AttackTrace
from monai_smia.attacks.worstcase import WorstCase

__all__ = [
    "Attack",
    "IterativeAttack",
    "MinimalNormAttack",
    "MinimalNormResult",
    "frozen_network",
    "FGSM",
    "PGD",
    "SMIA",
    "DeepFool",
    "DAG",
    "APGD",
    "SegPGD",
    "CosPGD",
    "Square",
    "WorstCase",
    "shift_labels",
    "RandomSignNoise",
    "PerturbationSmoother",
    "AttackTrace",
    "COSINE_KINDS",
]
