"""Ignite/MONAI engine handlers of the attack workflows: case seeding, per-case records, image-quality metrics,
a progress bar."""

from __future__ import annotations

from monai_smia.handlers.metrics import ImageQualityMetric
from monai_smia.handlers.progress import TqdmProgressBar
from monai_smia.handlers.records import TRACE_CURVES, CaseRecordHandler, case_records
from monai_smia.handlers.seeding import CaseSeedHandler, case_seed

__all__ = [
    "case_seed",
    "CaseSeedHandler",
    "CaseRecordHandler",
    "case_records",
    "ImageQualityMetric",
    "TRACE_CURVES",
    "TqdmProgressBar",
]
