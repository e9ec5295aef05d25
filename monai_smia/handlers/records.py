"""Per-case records of a robustness evaluation, stored as each evaluator iteration completes.

:class:`CaseRecordHandler` turns one iteration of a MONAI ``SupervisedEvaluator`` (``decollate=False``)
into one record per case: task metrics against the label (top-1, or Dice/IoU/pixel accuracy),
perturbation statistics of the adversarial batch against the clean one (L-inf, L2, variance, PSNR,
SSIM; in the user's ``eps`` unit), the attack's per-iteration diagnostics, the logits of a
classifier, and, without labels, ``changed``: the share of the output whose prediction differs from
the clean prediction (an ``AttackInferer`` with ``compute_success=True``). Each record goes to
``store.save(record)`` at once, so an interrupted run resumes (:class:`monai_smia.reports.CaseStore` is such a
store).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.utils import optional_import

from monai_smia.inferers import AttackOutput
from monai_smia.metrics import (
    case_success,
    classification_case_metrics,
    perturbation_case_metrics,
    predicted_classes,
    segmentation_case_metrics,
)

Events, _ = optional_import("ignite.engine", name="Events")

__all__ = ["TRACE_CURVES", "CaseRecordHandler", "case_records"]

#: per-iteration diagnostics of iterative attacks kept in each record (``trace_<name>``)
TRACE_CURVES = ("deviation_loss", "stabilization_loss", "perturbation_variance", "cosine")
_NO_TRACE = ("noise", "FGSM")


def _as_tensor(x: Any) -> torch.Tensor:
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def _task_metrics(task: str, logits: torch.Tensor, label: torch.Tensor | None) -> dict[str, np.ndarray]:
    if label is None:
        return {}
    return (
        classification_case_metrics(logits, label)
        if task == "classification"
        else segmentation_case_metrics(logits, label)
    )


def _perturbation(
    x: torch.Tensor, x_adv: torch.Tensor, bounds: Sequence[float] | None, scale: float
) -> dict[str, np.ndarray]:
    stats = perturbation_case_metrics(x.cpu(), x_adv.cpu(), bounds=None if bounds is None else tuple(bounds))
    for k in ("linf", "l2"):
        stats[k] = stats[k] / scale
    stats["var"] = stats["var"] / scale**2
    return stats


def case_records(
    task: str,
    attack: str,
    eps: float | None,
    case_ids: Sequence[str],
    x: torch.Tensor,
    x_adv: torch.Tensor | None,
    logits: torch.Tensor,
    label: torch.Tensor | None,
    diagnostics: Sequence[dict[str, Any]] = (),
    bounds: Sequence[float] | None = None,
    scale: float = 1.0,
    clean_logits: torch.Tensor | None = None,
) -> list[dict[str, Any]]:
    """One record per case of a batch (see the module docstring); ``eps`` and the L-inf/L2/variance
    figures are in the user's unit (``scale`` network-input units per unit). Without labels, the
    clean output ``clean_logits`` is the reference of the attack's ``success``
    (:func:`monai_smia.metrics.case_success`)."""
    logits = logits.float().cpu()
    per_case = _task_metrics(task, logits, label)
    if clean_logits is not None and label is None:
        clean_logits = clean_logits.float().cpu()
        per_case["success"] = case_success(task, clean_logits, logits, predicted_classes(clean_logits))
    if x_adv is not None:
        per_case.update(_perturbation(x, x_adv, bounds, scale))
    records = []
    for b, cid in enumerate(case_ids):
        rec: dict[str, Any] = {"case_id": str(cid), "attack": attack, "eps": eps}
        for k, v in per_case.items():
            rec[k] = v[b].item() if hasattr(v[b], "item") else v[b]
        if task == "classification":
            rec["logits"] = logits[b].tolist()
        info = diagnostics[b] if x_adv is not None and b < len(diagnostics) else {}
        if (
            label is None and "changed_fraction" in info
        ):  # label-free: share of the output whose prediction left the clean one
            rec["changed"] = float(info["changed_fraction"])
        rec.update(info.get("notes", {}))  # an ensemble's winner and checks (WorstCase.case_notes)
        if "positive_cosine_share" in info and attack not in _NO_TRACE:
            rec["positive_cosine_share"] = info["positive_cosine_share"]
            for k in TRACE_CURVES:
                rec[f"trace_{k}"] = info[k]
        records.append(rec)
    return records


class CaseRecordHandler:
    """Store one record per case at ``ITERATION_COMPLETED`` (and example arrays of the figure cases).

    Args:
        store: receives ``store.save(record)``; with ``save_example``, also
            ``store.save_example(attack, eps, case_id, arrays)`` for ``figure_cases``.
        task: ``"classification"`` or ``"segmentation"``.
        attack: the condition's attack name (``"clean"``: no adversarial batch).
        eps: its budget in the user's unit (``None`` for clean).
        inferer: the evaluator's inferer: when the iteration's output has no ``attack_key`` entry, its
            ``last_output`` (:class:`~monai_smia.inferers.AttackOutput`) gives the adversarial batch, the
            diagnostics, the clean output (the label-free success reference; without it, one more forward through
            its ``inferer``) and the entries each record gets (e.g. a source-grid attack's).
        bounds: valid input range (PSNR/SSIM data range); ``None``: each clean image's range.
        eps_scale: network-input units per ``eps`` unit.
        figure_cases: case ids whose arrays are kept for the example figures.
        case_key: batch key of the case ids.
        attack_key: the output key holding the iteration's ``AttackOutput``
            (:class:`~monai_smia.inferers.AdversarialImageHandler` with ``attack_key``).
    """

    def __init__(
        self,
        store: Any,
        task: str,
        attack: str,
        eps: float | None,
        inferer: Any = None,
        bounds: Sequence[float] | None = None,
        eps_scale: float = 1.0,
        figure_cases: Sequence[str] = (),
        case_key: str = "case_id",
        attack_key: str | None = "attack",
    ) -> None:
        if not callable(getattr(store, "save", None)):
            raise TypeError(f"store must have a save(record) method, got {type(store).__name__}.")
        self.store, self.task, self.attack = store, task, str(attack)
        self.eps = None if eps is None else float(eps)
        self.inferer, self.bounds, self.eps_scale = inferer, bounds, float(eps_scale)
        self.figure_cases, self.case_key, self.attack_key = {str(c) for c in figure_cases}, case_key, attack_key

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        out, batch = engine.state.output, engine.state.batch
        if not isinstance(out, dict):
            raise TypeError(
                "CaseRecordHandler needs a batch-level output dict (SupervisedEvaluator with decollate=False)."
            )
        x = _as_tensor(out["image"])
        attacked = self._attack_output(out)
        x_adv = None if attacked is None else attacked.adversarial
        label = out.get("label")
        label = None if label is None else _as_tensor(label).cpu()
        logits = _as_tensor(out["pred"])
        diagnostics = attacked.diagnostics if attacked is not None else []
        ids = [str(c) for c in batch[self.case_key]]
        clean = self._clean_logits(engine, x, attacked.clean) if label is None and attacked is not None else None
        records = case_records(
            self.task,
            self.attack,
            self.eps,
            ids,
            x,
            x_adv,
            logits,
            label,
            diagnostics,
            self.bounds,
            self.eps_scale,
            clean,
        )
        extras = attacked.record_extras if attacked is not None else None
        for b, rec in enumerate(records):
            if extras and b < len(extras):  # e.g. a source-grid attack: its grid and source-grid perturbation figures
                rec.update(extras[b])
            self.store.save(rec)
            if rec["case_id"] in self.figure_cases and callable(getattr(self.store, "save_example", None)):
                self.store.save_example(
                    self.attack, self.eps, rec["case_id"], self._example(b, x, x_adv, logits, label)
                )

    def _attack_output(self, out: dict[str, Any]) -> AttackOutput | None:
        """The iteration's :class:`~monai_smia.inferers.AttackOutput`: ``out[attack_key]`` (put there by an
        ``AdversarialImageHandler`` with ``attack_key``), else the inferer's ``last_output``; ``None`` for clean."""
        if self.attack == "clean":
            return None
        attacked = out.get(self.attack_key) if self.attack_key is not None else None
        return attacked if attacked is not None else getattr(self.inferer, "last_output", None)

    def _clean_logits(self, engine: Any, x: torch.Tensor, kept: torch.Tensor | None) -> torch.Tensor | None:
        """The clean output through the attack inferer's own inferer (label-free: the success reference): the
        one the attack inferer already predicted (``kept``), else one more forward."""
        if kept is not None:
            return _as_tensor(kept)
        inner = getattr(self.inferer, "inferer", None)
        if inner is None:
            return None
        with torch.no_grad():
            return _as_tensor(inner(x, engine.network))

    @staticmethod
    def _example(
        b: int, x: torch.Tensor, x_adv: torch.Tensor | None, logits: torch.Tensor, label: torch.Tensor | None
    ) -> dict[str, Any]:
        logits = logits.float().cpu()
        example = {
            "image": x[b].cpu().numpy(),
            "pred": logits[b].argmax(0).numpy() if logits.ndim > 2 else int(logits[b].argmax()),
        }
        if x_adv is not None:
            example["adv_image"] = x_adv[b].cpu().numpy()
        if label is not None:
            example["label"] = label[b].numpy()
        return example
