"""The datalist layout every bundle of this package reads: ``datalist.json`` at a dataset folder's root.

::

    {"name": ..., "source": ..., "synthetic": false,
     "training": [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}, ...],
     "validation": [...], "test": [...]}

Paths are relative to the folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_smia.io.atomic import write_json_atomic

__all__ = ["DATALIST", "SPLITS", "load_datalist", "write_datalist"]

DATALIST = "datalist.json"
SPLITS = ("training", "validation", "test")


def write_datalist(
    root: str | os.PathLike,
    splits: dict[str, Sequence[dict[str, Any]]],
    name: str,
    source: str,
    synthetic: bool = False,
    **extra: Any,
) -> Path:
    """Write ``datalist.json`` at ``root`` after checking that every referenced file exists."""
    root = Path(root)
    for split, items in splits.items():
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        for item in items:
            for key in ("image", "label"):
                if key in item and isinstance(item[key], str) and not (root / item[key]).exists():
                    raise FileNotFoundError(f"datalist {split} entry refers to missing file {item[key]!r}")
    obj = {"name": name, "source": source, "synthetic": synthetic, **extra}
    obj.update({s: list(splits.get(s, [])) for s in SPLITS})
    path = root / DATALIST
    write_json_atomic(path, obj)
    return path


def load_datalist(root: str | os.PathLike, split: str | None = None) -> Any:
    """Read ``datalist.json`` from ``root``; with ``split``, return that list with absolute paths."""
    root = Path(root)
    path = root / DATALIST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: --dataset_dir must be a folder written by data_prep "
            "(run e.g. `python -m monai_smia.apps.data_prep.lung_ct --data-dir ../shared/data --out DIR`)"
        )
    with open(path) as f:
        try:
            obj = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); rerun data_prep to rewrite it") from e
    if split is None:
        return obj
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if split not in obj:
        raise KeyError(f"{path} has no {split!r} list; expected keys {SPLITS}")
    out = []
    for n, item in enumerate(obj[split]):
        item = dict(item)
        for key in ("image", "label"):
            if isinstance(item.get(key), str):
                full = root / item[key]
                if not full.exists():
                    raise FileNotFoundError(f"{path}: {split}[{n}][{key!r}] refers to missing file {full}")
                item[key] = str(full)
        out.append(item)
    return out
