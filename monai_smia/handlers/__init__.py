"""Ignite/MONAI engine helpers of the attack workflows (seeding; more handlers move here with the redesign)."""

from __future__ import annotations

from monai_smia.handlers.seeding import case_seed

__all__ = ["case_seed"]
