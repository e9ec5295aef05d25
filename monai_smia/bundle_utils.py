"""Small helpers that the bundles' JSON configs reference through ``_target_``/``$`` expressions.

Everything else in the bundles is stock MONAI (``SupervisedTrainer``, ``SupervisedEvaluator``, ``LoadImaged``,
handlers) and ignite (``Accuracy``). The helpers here only read the ``data_prep`` layout
(``datalist.json`` at the root of ``--dataset_dir``) with clear errors, and load committed checkpoints
with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_split", "load_weights"]

DATALIST = "datalist.json"
SPLITS = ("training", "validation", "test")


def load_split(
    dataset_dir: str | os.PathLike,
    split: str,
    max_items: int | None = None,
    num_classes: int | None = None,
) -> list[dict[str, Any]]:
    """Return one split of ``dataset_dir/datalist.json`` with ``image``/``label`` file paths made absolute.

    Args:
        dataset_dir: a folder written by ``data_prep`` (``datalist.json`` at its root).
        split: ``"training"``, ``"validation"`` or ``"test"``.
        max_items: keep only the first ``max_items`` items (smoke runs); ``None`` keeps all.
        num_classes: if given, every item's ``label`` must be an integer in ``[0, num_classes)``
            (classification bundles); a wrong dataset then fails here instead of inside the loss.

    Raises:
        FileNotFoundError: if ``datalist.json`` or a referenced image is missing.
        ValueError: on an unknown split, an empty split, or a label outside the class range.
    """
    root = Path(dataset_dir)
    path = root / DATALIST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: --dataset_dir must be a folder written by data_prep, e.g. "
            "`python -m data_prep.medmnist --data-dir ../shared/data --out DIR --dataset retinamnist`"
        )
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    with open(path) as f:
        try:
            obj = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); rerun data_prep to rewrite it") from e
    items = obj.get(split)
    if not items:
        raise ValueError(f"{path} has no items in its {split!r} list")
    if max_items is not None:
        items = items[: int(max_items)]
    out = []
    for n, item in enumerate(items):
        item = dict(item)
        for key in ("image", "label"):
            value = item.get(key)
            if isinstance(value, str):
                full = root / value
                if not full.exists():
                    raise FileNotFoundError(f"{path}: {split}[{n}][{key!r}] refers to missing file {full}")
                item[key] = str(full)
        if num_classes is not None:
            label = item.get("label")
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < num_classes:
                raise ValueError(
                    f"{path}: {split}[{n}] has label {label!r}; this bundle expects an integer class in "
                    f"[0, {num_classes - 1}]"
                )
        out.append(item)
    return out


def load_weights(
    network: torch.nn.Module, path: str | os.PathLike, map_location: str | torch.device = "cpu", key: str = "model"
) -> torch.nn.Module:
    """Load a checkpoint saved by the bundles' ``CheckpointSaver`` into ``network`` (``weights_only=True``).

    Accepts a plain state dict or a dict holding it under ``key``. Returns ``network`` in eval mode.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; train the bundle first (see its docs/README.md)")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if isinstance(state, dict) and key in state and isinstance(state[key], dict):
        state = state[key]
    network.load_state_dict(state)
    return network.eval()
