"""Small helpers that the bundles' JSON configs reference through ``_target_``/``$`` expressions.

Everything else in the bundles is stock MONAI (``SupervisedTrainer``, ``SupervisedEvaluator``, ``LoadImaged``,
handlers) and ignite (``Accuracy``). The helpers here only read the ``data_prep`` layout
(``datalist.json`` at the root of ``--dataset_dir``) with clear errors, and load committed checkpoints
with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from monai_smia.bundle.files import load_state
from monai_smia.io.datalist import DATALIST, load_datalist

__all__ = ["load_split", "load_weights"]


def load_split(
    dataset_dir: str | os.PathLike,
    split: str,
    max_items: int | None = None,
    num_classes: int | None = None,
    *,
    repeat: int = 1,
    keys: Sequence[str] | None = None,
    skip_empty_labels: bool = False,
) -> list[dict[str, Any]]:
    """Return one split of ``dataset_dir/datalist.json`` with ``image``/``label`` file paths made absolute.

    Args:
        dataset_dir: a folder written by ``data_prep`` (``datalist.json`` at its root).
        split: ``"training"``, ``"validation"`` or ``"test"``.
        max_items: keep only the first ``max_items`` items (smoke runs); ``None`` keeps all.
        num_classes: if given, every item's ``label`` must be an integer in ``[0, num_classes)``
            (classification bundles); a wrong dataset then fails here instead of inside the loss.
        repeat: repeat the list this many times (one epoch then sees each volume ``repeat`` times,
            useful when a split holds only a few volumes and random crops are drawn from each).
        keys: keep only these keys of each item (``None`` keeps all). Segmentation configs keep
            ``["image", "label"]``: MONAI's spatial dictionary transforms treat every key starting with
            ``"label_"`` (such as ``label_source``) as the metadata dictionary of ``"label"``.
        skip_empty_labels: drop items whose datalist entry says their label is empty
            (``"lung_fraction": 0``, the negative examples).

    Raises:
        FileNotFoundError: if ``datalist.json`` or a referenced image is missing.
        ValueError: on an unknown split, an empty split, a label outside the class range or a
            ``repeat`` below 1.
    """
    items = load_datalist(dataset_dir, split)
    if skip_empty_labels:
        items = [i for i in items if i.get("lung_fraction", 1) != 0]
    if max_items is not None:
        items = items[: int(max_items)]
    if not items:
        raise ValueError(f"{Path(dataset_dir) / DATALIST} has no items in its {split!r} list")
    if int(repeat) < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    if num_classes is not None:
        for n, item in enumerate(items):
            label = item.get("label")
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < num_classes:
                raise ValueError(
                    f"{Path(dataset_dir) / DATALIST}: {split}[{n}] has label {label!r}; this bundle expects an "
                    f"integer class in [0, {num_classes - 1}]"
                )
    if keys is not None:
        items = [{k: i[k] for k in keys if k in i} for i in items]
    return [dict(i) for _ in range(int(repeat)) for i in items]


def load_weights(
    network: torch.nn.Module, path: str | os.PathLike, map_location: str | torch.device = "cpu", key: str = "model"
) -> torch.nn.Module:
    """Load a checkpoint saved by the bundles' ``CheckpointSaver`` into ``network`` (``weights_only=True``).

    Accepts a plain state dict or a dict holding it under ``key``. Returns ``network`` in eval mode. The
    checkpoint is read once per process (:func:`monai_smia.bundle.files.load_state`, on the CPU) and copied
    into the network's parameters, wherever they are; ``map_location`` is accepted for compatibility.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; train the bundle first (see its docs/README.md)")
    try:
        state = load_state(path)
    except Exception as e:  # a hostile or foreign pickle: refused by weights_only, reported with the path
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"checkpoint {str(path)!r} is not a plain state dict loadable with weights_only=True ({first})."
        ) from e
    if isinstance(state, dict) and key in state and isinstance(state[key], dict):
        state = state[key]
    try:
        network.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:3]) if len(lines) > 1 else (lines[0] if lines else type(e).__name__)
        raise ValueError(f"checkpoint {str(path)!r} does not fit the bundle's network_def: {detail[:300]}") from e
    return network.eval()
