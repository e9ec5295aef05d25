"""monai-smia: SMIA (Stabilized Medical Image Attack, Qi et al., ICLR 2021) and baselines for MONAI."""

from __future__ import annotations

from monai_smia.attacks import (
    APGD,
    DAG,
    FGSM,
    PGD,
    SMIA,
    Attack,
    AttackTrace,
    CosPGD,
    DeepFool,
    IterativeAttack,
    RandomSignNoise,
    SegPGD,
    Square,
    WorstCase,
)

__version__ = "0.1.0"
__all__ = [
    "SMIA",
    "PGD",
    "FGSM",
    "DeepFool",
    "DAG",
    "APGD",
    "SegPGD",
    "CosPGD",
    "Square",
    "WorstCase",
    "RandomSignNoise",
    "Attack",
    "IterativeAttack",
    "AttackTrace",
    "__version__",
]
