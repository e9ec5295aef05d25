"""The one output layout every bundle reads, written atomically.

An output folder holds image/label files and ``datalist.json`` at its root::

    {"name": ..., "source": ..., "synthetic": false,
     "training": [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}, ...],
     "validation": [...], "test": [...]}

Paths are relative to the folder. Outputs are first written to a temporary sibling folder and
renamed into place only when complete, so an interrupted run never leaves a half-written dataset.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

DATALIST = "datalist.json"
SPLITS = ("training", "validation", "test")


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out`` in one rename.

    On error the temporary folder is removed and ``out`` (if it existed) is left untouched.
    """
    out = Path(out).resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"output folder {out} exists; pass overwrite=True or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary file name beside ``path``; on success it replaces ``path`` in one rename.

    The writer writes to the yielded name (``suffix`` keeps the extension some writers need). On
    error the temporary file is removed and ``path`` (if it existed) is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and a rename."""
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2)


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
            "(run e.g. `python -m data_prep.lung_ct --data-dir ../shared/data --out DIR`)"
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


def deterministic_split(
    ids: Sequence[str], fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), salt: str = "monai-smia"
) -> dict[str, list[str]]:
    """Split group ids (patients, not slices) by a hash of the id: stable across runs and machines."""
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions}")
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{salt}:{i}".encode()).hexdigest())
    n = len(ranked)
    n_tr = int(round(fractions[0] * n))
    n_va = int(round(fractions[1] * n))
    return {"training": ranked[:n_tr], "validation": ranked[n_tr : n_tr + n_va], "test": ranked[n_tr + n_va :]}
