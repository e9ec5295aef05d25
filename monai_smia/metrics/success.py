"""Attack success: the one definition that ``evaluate``, ``attack`` and every report use.

Against a *reference* (the label, or without labels the clean prediction):

- classification: the clean prediction matches the reference and the adversarial one does not
  (``nan``, not counted, where the clean prediction is already wrong);
- segmentation: the adversarial Dice against the reference falls below half the clean Dice
  (``nan`` where the clean Dice is 0 or ``nan``: nothing to break). Without labels the clean Dice
  is 1, so success means the adversarial prediction keeps less than half of the clean one (Dice).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from monai_smia.metrics.task import class_indices, predicted_classes, segmentation_case_metrics


def classification_attack_success(clean_pred: Any, adv_pred: Any, labels: Any) -> np.ndarray:
    """Per case: 1.0 if the clean case was classified correctly and the attack flips it, 0.0 if it
    stays correct, ``nan`` if the clean case was already wrong (not counted).

    Args:
        clean_pred, adv_pred, labels: class indices per case (array-likes of equal length).
    """
    c, a, y = (np.asarray(v).reshape(-1) for v in (clean_pred, adv_pred, labels))
    if not (len(c) == len(a) == len(y)):
        raise ValueError(
            f"clean_pred, adv_pred and labels must have one entry per case, got {len(c)}, {len(a)}, {len(y)}."
        )
    out = np.where(a != y, 1.0, 0.0)
    out[c != y] = np.nan
    return out


def segmentation_attack_success(clean_dice: Any, adv_dice: Any) -> np.ndarray:
    """Per case: 1.0 if the adversarial Dice falls below half the clean Dice, else 0.0; ``nan`` (not
    counted) where the clean Dice is ``nan`` or 0 (nothing left to break)."""
    c, a = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (clean_dice, adv_dice))
    if len(c) != len(a):
        raise ValueError(f"clean_dice and adv_dice must have one entry per case, got {len(c)} and {len(a)}.")
    with np.errstate(invalid="ignore"):
        out = np.where(a < 0.5 * c, 1.0, 0.0)
    out[~(c > 0) | np.isnan(a)] = np.nan
    return out


def case_success(task: str, clean_logits: Any, adv_logits: Any, reference: Any) -> np.ndarray:
    """Per-case success (module docstring) from the network's clean and adversarial outputs.

    Args:
        task: ``"classification"`` or ``"segmentation"``.
        clean_logits, adv_logits: ``(B, K)`` or ``(B, K, *spatial)`` outputs.
        reference: labels in any form :func:`~monai_smia.metrics.task.class_indices` accepts, or the
            clean prediction (label-free).
    """
    if task == "classification":
        ref = class_indices(torch.as_tensor(reference), torch.as_tensor(clean_logits).shape[1], spatial=False)
        return classification_attack_success(predicted_classes(clean_logits), predicted_classes(adv_logits), ref)
    clean = segmentation_case_metrics(clean_logits, reference)["dice"]
    return segmentation_attack_success(clean, segmentation_case_metrics(adv_logits, reference)["dice"])


def success_rate(per_case: Any) -> float:
    """Share of counted cases (non-``nan``) where the attack succeeded; ``nan`` if none is counted."""
    v = np.asarray(per_case, dtype=np.float64).reshape(-1)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


