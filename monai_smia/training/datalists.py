"""Read one split of a data_prep folder for a bundle config."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from monai_smia.io.datalist import load_datalist

__all__ = ["load_split"]


def load_split(
    dataset_dir: str | os.PathLike,
    split: str,
    max_items: int | None = None,
    repeat: int = 1,
    keys: Sequence[str] | None = ("image", "label"),
    skip_empty_labels: bool = False,
) -> list[dict[str, Any]]:
    """Items of ``split`` from ``dataset_dir/datalist.json`` with absolute paths.

    Args:
        dataset_dir: a folder written by a ``data_prep`` command (``datalist.json`` at its root).
        split: ``"training"``, ``"validation"`` or ``"test"``.
        max_items: keep only the first items (smoke runs); ``None`` keeps all.
        repeat: repeat the list this many times (one epoch then sees each volume ``repeat`` times,
            useful when a split holds only a few volumes and random crops are drawn from each).
        keys: keep only these keys of each item (``None`` keeps all). The default drops the
            descriptive keys such as ``label_source``: MONAI's spatial dictionary transforms treat
            every key starting with ``"label_"`` as the metadata dictionary of ``"label"``.
        skip_empty_labels: drop items whose datalist entry says their label is empty
            (``"lung_fraction": 0``, the negative examples).

    Raises:
        FileNotFoundError: no ``datalist.json`` in ``dataset_dir``.
        ValueError: the split is empty or ``repeat`` is not positive.
    """
    items = load_datalist(dataset_dir, split)
    if skip_empty_labels:
        items = [i for i in items if i.get("lung_fraction", 1) != 0]
    if max_items is not None:
        items = items[: int(max_items)]
    if not items:
        raise ValueError(f"split {split!r} of {os.path.join(os.fspath(dataset_dir), 'datalist.json')} is empty")
    if int(repeat) < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    if keys is not None:
        items = [{k: i[k] for k in keys if k in i} for i in items]
    return [dict(i) for _ in range(int(repeat)) for i in items]
