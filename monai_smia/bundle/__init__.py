"""Reading any MONAI bundle: its splits, weights and cases."""

from __future__ import annotations

from monai_smia.bundle.data import bundle_cases
from monai_smia.bundle.loading import load_split, load_weights

__all__ = ["bundle_cases", "load_split", "load_weights"]
