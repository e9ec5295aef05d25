"""Robustness evaluation of a detection bundle (``lung_tumour_det``): clean and attacked AP@0.1,
AP@0.5, COCO mAP and mean IoU of matched boxes, with bootstrap intervals, per-case records (resumable)
and a figure of clean and attacked boxes over the images.

Detection is the third task of SMIA (Qi et al., "Stabilized Medical Image Attacks", ICLR 2021,
arXiv 2103.05232). Attacks: ``noise`` (random sign noise, the floor), ``FGSM``, ``PGD`` (random
start), ``DEV`` (SMIA with ``alpha = 0``), ``SMIA`` and ``DAG`` (:mod:`monai_smia.apps.detection.attack`);
the deviation loss is the detector's own loss against the ground-truth boxes. A ``centre_box``
row gives the trivial baseline (one box of the mean training size at the image centre).

Usage::

    python -m monai_smia.apps.detection.evaluate --bundle bundles/lung_tumour_det --dataset-dir DATA --output OUT
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from monai_smia.apps.detection import DETECTION_ATTACKS, centre_box_baseline, load_detection_split
from monai_smia.apps.detection.data import DetectionSet
from monai_smia.apps.detection.engine import detection_record
from monai_smia.apps.detection.metrics import METRIC_NAMES, DetectionSetMetrics
from monai_smia.apps.devices import run_device
from monai_smia.apps.evaluate.wiring import bundle_configs
from monai_smia.bundle.files import load_config_files, read_config_file
from monai_smia.bundle.loading import load_weights
from monai_smia.io.paths import check_output_outside
from monai_smia.reports import CaseStore, write_provenance, write_reports
from monai_smia.reports.figures import pyplot, save_figure

__all__ = [
    "DEFAULT_ATTACKS",
    "detection_defaults",
    "load_detection_bundle",
    "main",
    "run_detection_condition",
    "run_detection_evaluation",
]

DEFAULT_ATTACKS = ("noise", "FGSM", "PGD", "DEV", "SMIA", "DAG")


def load_detection_bundle(bundle: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Any, dict[str, Any]]:
    """The bundle's ``detector`` (``configs/inference.json``) with ``models/model.pt`` loaded, in eval
    mode, and its default budget (``configs/evaluate.json``: ``eps``, ``num_iter``)."""
    from monai.bundle import ConfigParser

    root = Path(bundle)
    parser = ConfigParser()
    parser.read_config(read_config_file(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    parser["device"] = str(device)
    detector = parser.get_parsed_content("detector")
    load_weights(detector.network, parser.get_parsed_content("ckpt_path"), map_location=device)
    return detector.to(device).eval(), detection_defaults(root)


def detection_defaults(bundle: str | os.PathLike) -> dict[str, Any]:
    """The bundle's default budget: ``eps`` and ``num_iter`` of its ``configs/evaluate.json``."""

    evaluate = read_config_file(Path(bundle) / "configs" / "evaluate.json")
    return {"eps": float(evaluate["eps"]), "num_iter": int(evaluate["num_iter"])}


def run_detection_condition(bundle: str | os.PathLike, settings: dict[str, Any]) -> None:
    """Run one condition through the bundle's evaluator config: ``train.json`` with its ``evaluate.json``
    override of the ``validate`` section, top-level ``settings`` (``attack``, ``eps``, ...) set."""
    from monai.bundle import ConfigParser

    files, _ = bundle_configs(Path(bundle))
    parser = ConfigParser()
    parser.read_config(load_config_files(files))
    for key, value in settings.items():
        parser[key] = value
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("run")


def detection_figure(
    path: str | Path, data: DetectionSet, records: Sequence[dict[str, Any]], cases: Sequence[str], score: float = 0.5
) -> Path:
    """Each case (row) under each condition (column): ground truth in green, detections scoring at least
    ``score`` in red."""
    plt = pyplot()
    from matplotlib.patches import Rectangle

    conds = list(dict.fromkeys(r["attack"] for r in records))
    by = {(r["attack"], r["case_id"]): r for r in records}
    fig, axes = plt.subplots(len(cases), len(conds), figsize=(2.2 * len(conds), 2.3 * len(cases)), squeeze=False)
    for row, case in enumerate(cases):
        img = data.images[data.case_ids.index(case), 0].numpy()
        for col, cond in enumerate(conds):
            ax, rec = axes[row][col], by.get((cond, case))
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)  # rows = first axis = box x
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(cond, fontsize=9)
            if rec is None:
                continue
            for (x1, y1, x2, y2), color, ls in [(b, "lime", "-") for b in rec["gt_boxes"]] + [
                (b, "red", "--") for b, s in zip(rec["pred_boxes"], rec["pred_scores"]) if s >= score
            ]:
                ax.add_patch(Rectangle((y1 - 0.5, x1 - 0.5), y2 - y1, x2 - x1, fill=False, color=color, ls=ls, lw=1.2))
    fig.suptitle(f"green: ground truth, red dashed: detections with score >= {score}", fontsize=9)
    return save_figure(fig, path)


def run_detection_evaluation(
    bundle: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    attacks: Sequence[str] = DEFAULT_ATTACKS,
    eps: float | None = None,
    num_iter: int | None = None,
    data_split: str = "test",
    max_cases: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    device: str | torch.device | None = None,
    num_figure_cases: int = 3,
    num_resamples: int = 200,
) -> dict[str, Any]:
    """Evaluate a detection bundle clean, as the centre-box baseline, and under ``attacks`` at ``eps``.

    Args:
        bundle: bundle folder (``configs/inference.json`` defines ``detector``; ``models/model.pt``).
        dataset_dir: folder written by :mod:`monai_smia.apps.data_prep.msd_lung_det`.
        output_dir: reports: ``summary.json``, ``summary.md``, ``per_case.csv``, ``provenance.json``,
            ``detection_examples.png``; per-case records under ``cases/`` (a rerun resumes).
        attacks: names of :data:`monai_smia.apps.detection.attack.DETECTION_ATTACKS`.
        eps, num_iter: budget (input units) and iterations; ``None``: the bundle's ``evaluate.json``.
        data_split, max_cases: which cases.
        batch_size, seed, device: how to run (``device``: default CUDA when available, as every command;
            ``seed`` with each case's id seeds its noise and PGD random start:
            :func:`monai_smia.handlers.seeding.case_generators`).
        num_figure_cases: cases in the figure (those with the most ground-truth boxes first).
        num_resamples: bootstrap resamples of the intervals (over images).

    Returns:
        the summary ``{condition: {metric: value, metric + "_ci95": [lo, hi], "num_cases": n}}``.
    """
    unknown = [a for a in attacks if a not in DETECTION_ATTACKS]
    if unknown:
        raise ValueError(f"attacks: {unknown} are not detection attacks; choose from {sorted(DETECTION_ATTACKS)}.")
    check_output_outside(output_dir, dataset_dir, "output_dir", "dataset_dir")
    device = run_device(device)
    detector, defaults = load_detection_bundle(
        bundle, device
    )  # a checkpoint that does not load fails here, before any output
    eps = defaults["eps"] if eps is None else float(eps)
    num_iter = defaults["num_iter"] if num_iter is None else int(num_iter)
    data = load_detection_split(dataset_dir, data_split, int(detector.num_classes))
    if max_cases is not None:
        data = DetectionSet(
            data.images[:max_cases], data.boxes[:max_cases], data.labels[:max_cases], data.case_ids[:max_cases]
        )
    store, out = CaseStore(output_dir), Path(output_dir)
    settings = {"bundle_root": str(bundle), "dataset_dir": str(dataset_dir), "output_dir": str(output_dir), "eps": eps,
                "num_iter": num_iter, "data_split": data_split, "max_cases": max_cases, "batch_size": batch_size,
                "seed": seed, "device": f"$torch.device('{device}')"}  # fmt: skip
    run_detection_condition(bundle, {**settings, "attack": "clean"})
    train = load_detection_split(dataset_dir, "training")
    base = centre_box_baseline(train.boxes, tuple(data.images.shape[2:]), len(data.case_ids))
    for i, pred in enumerate(base):
        store.save(detection_record(data.case_ids[i], "centre_box", None, pred, data.boxes[i], data.labels[i]))
    for name in attacks:
        run_detection_condition(bundle, {**settings, "attack": name})
    wanted = {("clean", None), ("centre_box", None), *((a, eps) for a in attacks)}
    ids = set(data.case_ids)
    records = [r for r in store.records() if (r["attack"], r.get("eps")) in wanted and r["case_id"] in ids]
    reports = write_reports(
        out, records, metrics=["iou", "num_detections_0.5"], set_metrics=DetectionSetMetrics().set_metrics(),
        headline=list(METRIC_NAMES), title=f"{Path(bundle).name}: detection under attack, eps={eps:g}, T={num_iter}",
        num_resamples=num_resamples, seed=seed,
    )  # fmt: skip
    write_provenance(out / "provenance.json", seed=seed, checkpoint=Path(bundle) / "models" / "model.pt",
                     data_source=str(dataset_dir),
                     attack_settings={"attacks": list(attacks), "eps": eps, "num_iter": num_iter})  # fmt: skip
    if num_figure_cases > 0:
        order = sorted(range(len(data.case_ids)), key=lambda i: (-len(data.boxes[i]), i))[:num_figure_cases]
        detection_figure(out / "detection_examples.png", data, records, [data.case_ids[i] for i in order])
    print((out / "summary.md").read_text())
    return reports["summary"]


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/lung_tumour_det")
    parser.add_argument("--dataset-dir", required=True)
    parser.add_argument("--output", "--output-dir", dest="output_dir", required=True, help="output folder")
    parser.add_argument("--attacks", nargs="*", default=list(DEFAULT_ATTACKS))
    parser.add_argument("--eps", type=float, default=None, help="budget in input units (default: the bundle's)")
    parser.add_argument("--num-iter", type=int, default=None)
    parser.add_argument("--max-cases", type=int, default=None)
    args = parser.parse_args(argv)
    run_detection_evaluation(
        args.bundle, args.dataset_dir, args.output_dir, args.attacks, args.eps, args.num_iter, max_cases=args.max_cases
    )


if __name__ == "__main__":
    main()
