"""Does the attack survive the file? Read every written image back through the bundle's
preprocessing and compare its effect with the attack's in memory; and the run's ``summary.json``.

Per case, three views (``in_memory``, ``nifti`` or ``png``, ``dicom``) each report the share of
outputs whose prediction the attack changed (``prediction_changed_fraction``) and the task error
(share of outputs whose prediction differs from the reference: the labels, or the clean prediction
when label-free); ``survival_ratio`` is read back / in memory of the changed fraction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_smia.apps.attack.plan import AttackSettings, CaseAttack
from monai_smia.losses import hard_prediction

__all__ = ["SUMMARY_KEYS", "case_record", "read_back_survival", "summarize_cases"]

#: per-case numbers that go into ``summary.json``
SUMMARY_KEYS = (
    "source_kind",
    "error_clean",
    "error_adversarial",
    "prediction_changed_fraction",
    "success",
    "max_abs_perturbation_source",
    "outputs",
    "survival_ratio",
)


def case_record(
    spec: CaseAttack,
    settings: AttackSettings,
    case: Any,
    logits_clean: torch.Tensor,
    logits_adv: torch.Tensor,
    ref: torch.Tensor,
) -> dict[str, Any]:
    """A case record's settings (the attack ``spec`` of a run with ``settings``) and the attack's results in
    memory."""
    clean, adv = hard_prediction(logits_clean), hard_prediction(logits_adv)
    record: dict[str, Any] = {
        "case_id": case.case_id,
        "attack": spec.attack,
        "grid": settings.grid,
        "eps": spec.eps,
        "eps_unit": settings.eps_unit,
        "eps_network": spec.eps_network,
        "eps_source": spec.eps_source,
        "source": str(case.source.resolve()),
        "source_kind": case.kind,
        "split": case.split,
        "label_free": settings.label_free,
        "error_clean": float((clean != ref).double().mean()),
        "error_adversarial": float((adv != ref).double().mean()),
        "prediction_changed_fraction": float((adv != clean).double().mean()),
    }
    return record


def _view(outputs_key: str, kind: str) -> str:
    return "dicom" if outputs_key == "dicom" else ("png" if kind == "png" else "nifti")


def read_back_survival(
    load: Callable[[str], torch.Tensor],
    predict: Callable[[torch.Tensor], torch.Tensor],
    record: dict[str, Any],
    outputs: Mapping[str, Path],
    x_adv: torch.Tensor,
    logits_clean: torch.Tensor,
    ref: torch.Tensor,
) -> None:
    """Add ``error_written``, ``written_deviation_network``, ``survival``, ``survival_ratio`` and
    ``rounding`` to ``record`` (in place): every written image is loaded with ``load`` (path -> network
    input), predicted with ``predict`` and compared with the in-memory attack."""
    clean = hard_prediction(logits_clean)
    mem = {"prediction_changed_fraction": record["prediction_changed_fraction"], "error": record["error_adversarial"]}
    survival, ratio, errors, deviation = {"in_memory": mem}, {}, {}, {}
    for key in ("adversarial", "dicom"):
        if key not in outputs:
            continue
        x_w = load(str(outputs[key]))
        if x_w.shape != x_adv.shape:
            raise ValueError(
                f"the written {key} {str(outputs[key])!r} preprocesses to shape {tuple(x_w.shape)}, the attacked input "
                f"is {tuple(x_adv.shape)}; its geometry differs from the source."
            )
        pred = hard_prediction(predict(x_w))
        view = _view(key, record["source_kind"])
        errors[key] = float((pred != ref).double().mean())
        survival[view] = {"prediction_changed_fraction": float((pred != clean).double().mean()), "error": errors[key]}
        changed = mem["prediction_changed_fraction"]
        ratio[view] = survival[view]["prediction_changed_fraction"] / changed if changed > 0 else None
        # how far the written file, preprocessed again, is from the attacked input (network units)
        deviation[key] = float((x_w - x_adv.to(x_w.device)).abs().max())
    record.update(error_written=errors, written_deviation_network=deviation, survival=survival, survival_ratio=ratio)
    integer = "dicom" if "dicom" in errors else ("adversarial" if record.get("integer_output") else None)
    if integer is not None:
        float_err = (
            errors["adversarial"]
            if integer == "dicom" and not record.get("integer_output")
            else record["error_adversarial"]
        )
        e_int = errors[integer]
        record["rounding"] = {
            "output": integer,
            "error_float": float_err,
            "error_integer": e_int,
            "survives": bool(e_int > record["error_clean"] and e_int >= 0.9 * float_err),
        }


def _mean(values: list[Any]) -> float | None:
    # success (nan where not counted, metrics.success) is left out where nan
    vals = [float(v) for v in values if isinstance(v, (int, float)) and not np.isnan(float(v))]
    return float(np.mean(vals)) if vals else None


def summarize_cases(records: Mapping[str, dict[str, Any]], head: dict[str, Any]) -> dict[str, Any]:
    """``summary.json``'s content: ``head`` (bundle, attack, eps, grid, ...), per case the key numbers,
    their means over cases, and the mean read-back / in-memory ratio per written view."""
    rows: dict[str, dict[str, Any]] = {}
    for cid, rec in records.items():
        rows[cid] = {k: rec.get(k) for k in SUMMARY_KEYS}
        rows[cid]["positive_cosine_share"] = (rec.get("diagnostics") or {}).get("positive_cosine_share")
        if "rounding" in rec:
            rows[cid]["rounding_survives"] = rec["rounding"]["survives"]
    keys = ("error_clean", "error_adversarial", "prediction_changed_fraction", "success", "positive_cosine_share")
    views = sorted({v for r in rows.values() for v in (r.get("survival_ratio") or {})})
    return {
        **head,
        "num_cases": len(rows),
        "mean": {k: _mean([r.get(k) for r in rows.values()]) for k in keys},
        "survival_ratio": {v: _mean([(r.get("survival_ratio") or {}).get(v) for r in rows.values()]) for v in views},
        "max_abs_perturbation_source": max(
            (r["max_abs_perturbation_source"] or 0.0 for r in rows.values()), default=None
        ),
        "cases": rows,
    }
