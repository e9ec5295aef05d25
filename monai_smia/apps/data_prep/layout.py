"""Helpers the data_prep converters share: the datalist layout (:mod:`monai_smia.io.datalist`) written
atomically (:func:`monai_smia.io.atomic.atomic_output_dir`: an interrupted run never leaves a
half-written dataset, and only folders that data_prep wrote are ever replaced), and a stable split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from monai_smia.io.atomic import atomic_file, atomic_output_dir, write_json_atomic
from monai_smia.io.datalist import DATALIST, SPLITS, load_datalist, write_datalist

__all__ = [
    "DATALIST",
    "SPLITS",
    "atomic_file",
    "atomic_output_dir",
    "deterministic_split",
    "load_datalist",
    "write_datalist",
    "write_json_atomic",
]


def deterministic_split(
    ids: Sequence[str], fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), salt: str = "monai-smia"
) -> dict[str, list[str]]:
    """Split group ids (patients, not slices) by a hash of the id: stable across runs and machines."""
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions}")
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{salt}:{i}".encode()).hexdigest())
    n = len(ranked)
    n_tr = int(round(fractions[0] * n))
    n_va = int(round(fractions[1] * n))
    return {"training": ranked[:n_tr], "validation": ranked[n_tr : n_tr + n_va], "test": ranked[n_tr + n_va :]}
