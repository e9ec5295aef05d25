"""Measure a segmentation bundle's checkpoint on one split, Dice per case and per label source.

Usage (from the repository root)::

    python -m monai_smia.bundle.evaluate --bundle_root bundles/lung_ct_seg --dataset_dir DIR [--split test]

The bundle's ``configs/train.json`` supplies the validation preprocessing (image and label on the
network's grid), the network and the validation inferer, so the test split is measured exactly as
the validation split was during model selection. Dice is computed per volume on the foreground
class on that grid, then averaged per ``label_source`` of the datalist items and over all cases.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.data import Dataset, decollate_batch
from monai.data.utils import list_data_collate
from monai.metrics import DiceMetric
from monai.transforms import AsDiscrete

from monai_smia.bundle.loading import load_split, load_weights
from monai_smia.io.atomic import write_json_atomic

INDEPENDENT_SOURCES = ("cip_wholelung", "totalsegmentator_lobes")

__all__ = ["evaluate_segmentation_bundle", "load_checkpoint", "metrics_for_metadata"]

logger = logging.getLogger(__name__)


#: kept for the bundle tests and configs; one loader for every checkpoint of the project
load_checkpoint = load_weights


def evaluate_segmentation_bundle(
    bundle_root: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    split: str = "test",
    checkpoint: str | os.PathLike | None = None,
    max_items: int | None = None,
) -> dict[str, Any]:
    """Dice of a bundle's checkpoint on ``split`` of ``dataset_dir``.

    Args:
        bundle_root: the bundle folder (holding ``configs/train.json``).
        dataset_dir: a data_prep folder.
        split: which split to measure.
        checkpoint: defaults to ``bundle_root/models/model.pt``.
        max_items: measure only the first items.

    Returns:
        ``{"split", "mean_dice", "by_source": {source: mean}, "cases": [{case, label_source, dice}]}``.
    """
    bundle_root = Path(bundle_root)
    parser = ConfigParser()
    parser.read_config(bundle_root / "configs" / "train.json")
    parser["bundle_root"] = str(bundle_root)
    parser["dataset_dir"] = str(dataset_dir)
    parser["device"] = "$torch.device('cpu')"
    network = parser.get_parsed_content("network_def")
    load_checkpoint(network, checkpoint or bundle_root / "models" / "model.pt").eval()
    transform = parser.get_parsed_content("validate#preprocessing")
    inferer = parser.get_parsed_content("validate#inferer")
    num_classes = int(parser.get_parsed_content("num_classes"))
    items = load_split(dataset_dir, split, max_items=max_items, keys=None)
    to_pred = AsDiscrete(argmax=True, to_onehot=num_classes)
    to_label = AsDiscrete(to_onehot=num_classes)
    metric = DiceMetric(include_background=False, reduction="none")
    cases = []
    with torch.no_grad():
        for item in items:
            data = list_data_collate(
                [Dataset([{"image": item["image"], "label": item["label"]}], transform=transform)[0]]
            )
            logits = inferer(data["image"], network)
            pred = to_pred(decollate_batch(logits)[0])
            label = to_label(decollate_batch(data["label"])[0])
            dice = float(metric(y_pred=pred[None], y=label[None]).mean())
            cases.append(
                {
                    "case": item.get("case", item["image"]),
                    "label_source": item.get("label_source", "unknown"),
                    "dice": dice,
                }
            )
    by_source: dict[str, list[float]] = defaultdict(list)
    for c in cases:
        by_source[c["label_source"]].append(c["dice"])
    mean = lambda v: float(sum(v) / len(v)) if v else float("nan")
    valid = [c for c in cases if c["dice"] == c["dice"]]  # NaN: no lung in the label
    return {
        "split": split,
        "mean_dice": mean([c["dice"] for c in valid]),
        "independent_labels_dice": mean([c["dice"] for c in valid if c["label_source"] in INDEPENDENT_SOURCES]),
        "by_source": {k: mean([d for d in v if not math.isnan(d)]) for k, v in sorted(by_source.items())},
        "cases": cases,
    }


def metrics_for_metadata(result: dict[str, Any]) -> dict[str, float]:
    """Flatten an :func:`evaluate_segmentation_bundle` result into ``eval_metrics`` entries."""
    split = result["split"]
    out = {f"{split}_mean_dice": round(result["mean_dice"], 4)}
    out[f"{split}_dice_independent_labels"] = round(result["independent_labels_dice"], 4)
    out.update({f"{split}_dice_{k}": round(v, 4) for k, v in result["by_source"].items()})
    out.update(
        {f"{split}_dice_case_{c['case']}": round(c["dice"], 4) for c in result["cases"] if c["dice"] == c["dice"]}
    )
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: log the measured result as JSON; with ``--write_metadata`` merge it into the bundle's metadata."""
    p = argparse.ArgumentParser(prog="python -m monai_smia.bundle.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle_root", required=True)
    p.add_argument("--dataset_dir", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--checkpoint", default=None)
    p.add_argument(
        "--write_metadata", action="store_true", help="merge the results into configs/metadata.json eval_metrics"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # no-op when logging is already configured
    result = evaluate_segmentation_bundle(args.bundle_root, args.dataset_dir, args.split, args.checkpoint)
    logger.info(json.dumps(result, indent=2))
    if args.write_metadata:
        meta_path = Path(args.bundle_root) / "configs" / "metadata.json"
        with open(meta_path) as f:
            meta = json.load(f)
        meta.setdefault("eval_metrics", {}).update(metrics_for_metadata(result))
        write_json_atomic(meta_path, meta)
        logger.info("updated eval_metrics in %s", meta_path)


if __name__ == "__main__":
    main()
