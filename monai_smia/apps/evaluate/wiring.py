"""The evaluator config of one condition (attack x eps) of a robustness evaluation.

The evaluator wiring is shipped once, as :data:`EVALUATOR_CONFIG` (``configs/evaluator.json`` beside this
module), merged after a bundle's ``train.json`` and overriding its ``validate`` section as model-zoo bundles
do: the evaluator's inferer becomes an :class:`~monai_smia.inferers.AttackInferer` around
``@validate#inferer``, ``PrepareBatchExtraInput({"labels": "label"})`` hands the labels over, metric
handlers report the task metric and PSNR/SSIM/L-inf of the adversarial images, and a
:class:`~monai_smia.handlers.CaseRecordHandler` stores every case as it completes. A bundle's own
``evaluate.json`` comes last: the budget, the task metric (``validate#key_metric``) and the batch size.
One condition runs with::

    B=bundles/NAME/configs; E=monai_smia/apps/evaluate/configs/evaluator.json
    python -m monai.bundle run --config_file "['$B/train.json','$E','$B/evaluate.json']" \\
        --bundle_root bundles/NAME --dataset_dir DATA --output_dir OUT --attack SMIA --eps 0.1

The config's ``condition`` is an :class:`~monai_smia.apps.evaluate.config.EvaluationCondition`. A bundle
whose ``evaluate.json`` is not written on top of :data:`EVALUATOR_CONFIG` (a model-zoo bundle) gets the same
entries from :func:`evaluation_overrides`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from monai_smia.apps.evaluate.source import source_grid_overrides
from monai_smia.bundle.bundle import Bundle, is_train_override, open_bundle
from monai_smia.bundle.files import read_config_file

__all__ = [
    "EVALUATOR_CONFIG",
    "EVALUATOR_KEY",
    "SETTINGS",
    "bundle_configs",
    "condition_parser",
    "distributed_overrides",
    "evaluation_overrides",
]

#: the evaluation settings a bundle's evaluate.json declares (top-level keys), with the package defaults
SETTINGS: dict[str, Any] = {
    "attack": "SMIA",
    "attacks": ["noise", "FGSM", "PGD", "DEV", "SMIA"],
    "eps": None,
    "eps_unit": "",
    "eps_scale": None,
    "num_iter": 10,
    "alpha": 1.0,
    "sigma": 1.0,
    "bounds": "auto",
    "data_split": "test",
    "max_cases": None,
    "seed": 0,
    "num_figure_cases": 2,
}


def _metric(target: dict[str, Any], keys: list[str], disabled: str | None = None) -> dict[str, Any]:
    out = {
        "_target_": "IgniteMetricHandler",
        "metric_fn": target,
        "output_transform": f"$monai.handlers.from_engine({keys!r})",
    }
    return {**out, "_disabled_": disabled} if disabled else out


def _key_metric(task: str, num_classes: int, labels: bool) -> dict[str, Any] | None:
    if not labels:
        return None
    if task == "classification":
        return {
            "top1": {
                "_target_": "ignite.metrics.Accuracy",
                "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
            }
        }
    pred = "o['pred'].argmax(1, keepdim=True)" if num_classes != 1 else "(o['pred'] > 0).long()"
    return {
        "dice": {
            "_target_": "MeanDice",
            "include_background": False,
            "num_classes": max(2, num_classes),
            "output_transform": f"$lambda o: ({pred}, o['label'])",
        }
    }


#: monai-smia's evaluator wiring, shipped once: merged after a bundle's train.json and before its evaluate.json
EVALUATOR_CONFIG = Path(__file__).resolve().parent / "configs" / "evaluator.json"
#: the key that marks a bundle's evaluate.json as written on top of :data:`EVALUATOR_CONFIG`
EVALUATOR_KEY = "evaluator_config"


def _in_section(value: Any, section: str) -> Any:
    """``value`` of :data:`EVALUATOR_CONFIG` (written for ``validate``) with its references moved to ``section``."""
    if isinstance(value, dict):
        return {k: _in_section(v, section) for k, v in value.items()}
    if isinstance(value, list):
        return [_in_section(v, section) for v in value]
    return value.replace("@validate#", f"@{section}#" if section else "@") if isinstance(value, str) else value


def evaluation_overrides(
    task: str, num_classes: int, labels: bool = True, section: str = "validate", batch_size: int = 1
) -> dict[str, Any]:
    """The evaluator entries a bundle's evaluate.json and :data:`EVALUATOR_CONFIG` give together (``section``:
    ``"validate"`` for a train.json override, ``""`` for an inference.json's top-level evaluator): the shipped
    wiring, the task metric, the batch size and, without ``labels``, the label-free attack."""
    wiring = {k: v for k, v in read_config_file(EVALUATOR_CONFIG).items() if not k.startswith("_")}
    p = f"{section}#" if section else ""
    out: dict[str, Any] = {}
    for key, value in wiring.items():
        out[p + key[len("validate#") :] if key.startswith("validate#") else key] = _in_section(value, section)
        if key == "validate#prepare_batch":
            out[f"{p}key_metric"] = _key_metric(task, num_classes, labels)
    out[f"{p}dataloader"]["batch_size"] = batch_size
    if not labels:
        out["condition"]["use_labels"] = out[f"{p}attack_inferer"]["use_labels"] = False
        out[f"{p}attack_inferer"]["compute_success"] = True
        out[f"{p}prepare_batch"]["_disabled_"] = True
    return out


def distributed_overrides(section: str = "validate") -> dict[str, Any]:
    """The sampler entries of a ``multi_gpu_evaluate.json``: every case exactly once across ranks."""
    p = f"{section}#" if section else ""
    sampler = {"_target_": "DistributedSampler", "dataset": f"@{p}dataset", "even_divisible": False, "shuffle": False}
    return {f"{p}sampler": sampler, f"{p}dataloader#sampler": f"@{p}sampler"}


def bundle_configs(bundle: Path | Bundle) -> tuple[list[Path], str]:
    """The config files one condition merges (``train.json`` + an ``evaluate.json`` override, with
    :data:`EVALUATOR_CONFIG` between them when the override is written on top of it; else ``inference.json``)
    and the section holding the evaluator (``"validate"`` or ``""``)."""
    b = open_bundle(bundle)
    if b.has_config("train") and isinstance(b.read("train").get("validate"), dict):
        files = [b.config_path("train")]
        evaluate = b.config_path("evaluate")
        if is_train_override(evaluate):
            own = EVALUATOR_KEY in read_config_file(evaluate)
            files.extend([EVALUATOR_CONFIG, evaluate] if own else [evaluate])
        return files, "validate"
    return [b.config_path("inference")], ""


def condition_parser(
    bundle: Path | Bundle,
    settings: dict[str, Any],
    labels: bool = True,
    distributed: bool = False,
    batch_size: int | None = None,
    network: torch.nn.Module | None = None,
) -> ConfigParser:
    """A parser of the bundle's evaluator config for one condition: its config files merged (the entries
    of :func:`evaluation_overrides` added when its evaluate.json is not a monai-smia one, e.g. a
    model-zoo bundle's), then ``settings`` (top-level keys), the sampler and the batch size set.
    ``network``: the victim's network, already loaded (each condition of a run then reuses it)."""
    b = open_bundle(bundle)
    files, section = bundle_configs(b)
    parser = b.parser(files)
    if EVALUATOR_CONFIG not in files:  # not a monai-smia evaluate.json (e.g. a model-zoo bundle): the shipped entries
        defaults = {k: v for k, v in SETTINGS.items() if k not in parser.config}
        for key, value in {**defaults, **evaluation_overrides(b.task, b.num_classes, labels, section)}.items():
            parser[key] = value
    for key, value in {**settings, **(distributed_overrides(section) if distributed else {})}.items():
        parser[key] = value
    if "grid" in settings:  # monai-smia evaluate's setting; a bundle's own config attacks the network input
        parser["condition#grid"] = "@grid"
        if settings["grid"] == "source":
            for key, value in source_grid_overrides(section, labels).items():
                parser[key] = value
    if batch_size is not None:
        parser[f"{section}#dataloader#batch_size" if section else "dataloader#batch_size"] = int(batch_size)
    if network is not None:
        parser["network"] = network
    return parser
