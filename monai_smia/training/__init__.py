"""Glue that the victim bundles' configs call: datalists, a progress bar, evaluation by label source."""

from __future__ import annotations

from monai_smia.training.datalists import load_split
from monai_smia.training.evaluate import evaluate_segmentation_bundle
from monai_smia.training.handlers import TqdmProgressBar

__all__ = ["load_split", "evaluate_segmentation_bundle", "TqdmProgressBar"]
