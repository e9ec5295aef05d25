"""Reports of a robustness evaluation from its stored per-case records: summary tables per budget, the
eps sweep, provenance and figures (example cases, the paper's Fig. 2-style DEV vs SMIA curves).

Success is the one definition of :mod:`monai_smia.metrics.success`, computed against each case's
clean record: a classifier's prediction flips from right to wrong, a segmentation's Dice drops; a
label-free case counts as a success when its prediction changed (``changed``).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_smia.handlers.records import TRACE_CURVES
from monai_smia.io.datalist import load_datalist
from monai_smia.metrics import classification_attack_success, segmentation_attack_success
from monai_smia.reports import (
    atomic_write_text,
    classification_set_metrics,
    write_eps_sweep,
    write_provenance,
    write_reports,
    write_summary_json,
)
from monai_smia.reports.checks import format_worst_case_report, worst_case_report
from monai_smia.reports.figures import case_figure, trace_curves_figure

__all__ = ["GRID_NOTES", "condition_records", "write_evaluation_reports", "write_figures"]

#: what the reports say about each grid (summary.md's title, provenance.json)
GRID_NOTES = {
    "network": "attacks on the network grid (L-inf/L2/var of the network input, in the eps unit)",
    "source": "attacks on the source grid (the source voxels, clamped to their stored type's range; L-inf/L2/var "
    "there, in the eps unit; PSNR/SSIM of the preprocessed network inputs)",
}


def _success(task: str, clean: dict[str, Any], rec: dict[str, Any]) -> float | None:
    if task == "classification" and "label" in rec and "pred" in clean:
        return float(classification_attack_success([clean["pred"]], [rec["pred"]], [rec["label"]])[0])
    if task != "classification" and "dice" in rec and "dice" in clean:
        return float(segmentation_attack_success([clean["dice"]], [rec["dice"]])[0])
    return rec.get("success")  # label-free: against the clean prediction (metrics.case_success)


def condition_records(
    store: Any, items: list[dict[str, Any]], attacks: list[str], eps: float, task: str
) -> list[dict[str, Any]]:
    """The clean records of ``items`` and each attack's at ``eps``, each attacked one with its ``success``."""
    ids = {it["case_id"] for it in items}
    clean = {r["case_id"]: r for r in store.records("clean") if r["case_id"] in ids}
    records = list(clean.values())
    for name in attacks:
        rows = [r for r in store.records(name, eps) if r["case_id"] in ids]
        for r in rows:
            c = clean.get(r["case_id"])
            if c is None:
                continue
            success = _success(task, c, r)
            if success is not None:
                r["success"] = success
        records.extend(rows)
    return records


def stored_attacks(store: Any, attacks: Sequence[str], eps: float) -> list[str]:
    """The attacks of this run, then every other attack the folder holds records of at ``eps`` (an earlier run
    with other ``--attacks`` into the same folder, under the same settings), in the registry's order."""
    from monai_smia.attacks.registry import ATTACKS

    return [*attacks, *(a for a in ATTACKS if a not in attacks and store.has_records(a, eps))]


def _metrics(task: str, labels: bool) -> tuple[list[str], list[str]]:
    if not labels:
        return ["changed"], ["changed"]
    cls = task == "classification"
    task_metrics = ["top1"] if cls else ["dice", "iou", "pixel_accuracy"]
    return task_metrics, [task_metrics[0]]


def write_evaluation_reports(evaluation: Any, condition: Any) -> dict[str, Any]:
    """Summaries per budget (the first in ``output_dir``, others in ``eps_<e>/``), the eps sweep,
    provenance and figures; returns the summary of the first budget.

    Args:
        evaluation: the :class:`~monai_smia.apps.evaluate.evaluation.RobustnessEvaluation` (attacks, eps, settings).
        condition: one :class:`~monai_smia.apps.evaluate.config.EvaluationCondition` of the run (cases,
            store, resolved budget scale and bounds).
    """
    out, task, unit = Path(evaluation.output_dir), condition.task, evaluation.eps_unit
    task_metrics, headline = _metrics(task, condition.use_labels)
    metrics = [*task_metrics, "success", "linf", "l2", "var", "psnr", "ssim", "positive_cosine_share"]
    set_metrics = (
        classification_set_metrics(output_key="logits") if task == "classification" and condition.use_labels else None
    )
    by_eps = {}
    grid = getattr(evaluation, "grid", "network")
    for i, eps in enumerate(evaluation.eps):
        attacks = stored_attacks(condition.store, evaluation.attacks, eps)
        records = condition_records(condition.store, condition.items, attacks, eps, task)
        res = write_reports(
            out if i == 0 else out / f"eps_{eps:g}",
            records,
            metrics=metrics,
            headline=headline,
            set_metrics=set_metrics,
            title=f"{condition.root.name}: {evaluation.data_split} split, eps = {eps:g}{unit}, "
            f"T = {evaluation.num_iter}, {GRID_NOTES[grid]}",
            seed=evaluation.seed,
        )
        for name, entry in res["summary"].items():  # summary.json states the grid of every attack
            if name != "clean":
                entry["grid"] = grid
        add_ensemble_reports(res, records, attacks)
        write_summary_json(res["summary"], res["json"])
        by_eps[eps] = res["summary"]
    write_eps_sweep(out, by_eps, headline[0], eps_unit=unit)
    write_provenance(
        out / "provenance.json",
        seed=evaluation.seed,
        checkpoint=condition.checkpoint,
        data_source=_data_source(Path(evaluation.dataset_dir), condition.case_source),
        attack_settings=_attack_settings(evaluation, condition),
        command_line=sys.argv,
    )
    write_figures(condition, evaluation.attacks, evaluation.eps[0], unit)
    for i, eps in enumerate(evaluation.eps):  # every budget's table, not only the first
        print((out if i == 0 else out / f"eps_{eps:g}").joinpath("summary.md").read_text())
    return by_eps[evaluation.eps[0]]


def add_ensemble_reports(res: dict[str, Any], records: list[dict[str, Any]], attacks: Sequence[str]) -> None:
    """An ensemble's winners and AutoAttack's checks (:func:`~monai_smia.reports.checks.worst_case_report`) into its
    summary entry (``winners``, ``warnings``, ``not_checked``) and as a section of summary.md."""
    sections = []
    for name in attacks:
        report = worst_case_report(records, name) if name in res["summary"] else None
        if report is None:
            continue
        entry = res["summary"][name]
        entry["winners"], entry["warnings"], entry["not_checked"] = (
            report["wins"],
            report["warnings"],
            report["not_checked"],
        )
        sections.append(format_worst_case_report(report, name))
    if sections:
        text = Path(res["markdown"]).read_text(encoding="utf-8")
        atomic_write_text(res["markdown"], text + "\n" + "\n".join(sections))


def _attack_settings(evaluation: Any, condition: Any) -> dict[str, Any]:
    return {
        "attacks": evaluation.attacks,
        "eps": evaluation.eps,
        "eps_unit": evaluation.eps_unit,
        "eps_scale": condition.scale,
        "eps_scale_from": condition.scale_note,
        "num_iter": evaluation.num_iter,
        "step_size": "2.5 * eps / T",
        "alpha": evaluation.alpha,
        "sigma": evaluation.sigma,
        "bounds": condition.bounds,
        "bounds_from": condition.bounds_note,
        "bundle": condition.root.name,
        "data_split": evaluation.data_split,
        "cases": len(condition.items),
        "label_free": not condition.use_labels,
        "evaluator_config": getattr(evaluation, "config_files", []),
        "grid": getattr(evaluation, "grid", "network"),
        "grid_note": GRID_NOTES[getattr(evaluation, "grid", "network")],
    }


def _data_source(dataset_dir: Path, case_source: str) -> dict[str, Any]:
    try:
        meta = load_datalist(dataset_dir)
    except (FileNotFoundError, ValueError):
        return {"dataset_dir": dataset_dir.name, "cases_from": case_source}
    return {k: meta.get(k) for k in ("name", "source", "synthetic")} | {
        "dataset_dir": dataset_dir.name,
        "cases_from": case_source,
    }


def _example_cases(condition: Any, name: str, eps: float) -> list[dict[str, Any]]:
    store, cases = condition.store, []
    for cid in condition.figure_cases:
        clean_p, adv_p = store.example_path("clean", None, cid), store.example_path(name, eps, cid)
        if not (clean_p.is_file() and adv_p.is_file()):
            continue
        with np.load(clean_p) as c, np.load(adv_p) as a:
            case = {
                "case_id": cid,
                "image": c["image"],
                "adv_image": a["adv_image"],
                "clean_pred": c["pred"],
                "adv_pred": a["pred"],
            }
            if condition.task == "classification":  # PNGs load width-first (PILReader): show them upright
                case["image"], case["adv_image"] = (np.swapaxes(case[k], -1, -2) for k in ("image", "adv_image"))
            if "label" in c.files:
                case["label"] = c["label"]
        cases.append(case)
    return cases


def write_figures(condition: Any, attacks: list[str], eps: float, unit: str = "") -> list[Path]:
    """Example cases for each attack, and Fig. 2-style DEV vs SMIA iteration curves."""
    out, task, paths = condition.store.root, condition.task, []
    for name in attacks:
        cases = _example_cases(condition, name, eps)
        if cases:
            title = f"{name} ({eps:g}{unit})"
            paths.append(
                case_figure(
                    out / f"examples_{name}.png", cases, task=task, attack_name=title, transpose=task == "segmentation"
                )
            )
    curves = {}
    for name in ("DEV", "SMIA"):
        rows = [r for r in condition.store.records(name, eps) if "trace_deviation_loss" in r]
        if rows:
            with warnings.catch_warnings():  # DEV has no stabilization term: an all-nan curve is expected
                warnings.simplefilter("ignore", RuntimeWarning)
                curves[name] = {
                    k: np.nanmean(np.array([r[f"trace_{k}"] for r in rows], dtype=np.float64), axis=0).tolist()
                    for k in TRACE_CURVES
                }
    if curves:
        paths.append(
            trace_curves_figure(
                out / "iterations_dev_vs_smia.png", curves, title=f"{condition.root.name}, eps = {eps:g}{unit}"
            )
        )
    return paths
