"""Reading any MONAI bundle: its cases (and, in later moves, its network, weights and budget)."""

from __future__ import annotations

from monai_smia.bundle.data import bundle_cases

__all__ = ["bundle_cases"]
