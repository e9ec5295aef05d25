"""The cases a bundle is evaluated on, from wherever the user's data says they are.

In this order (the first that applies):

1. ``DATASET_DIR/datalist.json`` (this package's data_prep layout): its ``split``.
2. The bundle's own data keys: ``validate#dataset#data`` of ``configs/train.json``, evaluated with
   ``dataset_dir`` set to ``DATASET_DIR`` (a model-zoo bundle's held-out cases, e.g. spleen's last 9).
3. A Medical Segmentation Decathlon ``DATASET_DIR/dataset.json``: ``test`` (images only) for the
   ``test`` split, ``training`` otherwise.
4. ``dataset#data`` of ``configs/inference.json`` (images only: label-free).

Every path must stay inside ``DATASET_DIR`` unless ``allow_outside`` is set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

from monai_smia.bundle.files import read_config_file
from monai_smia.errors import out_of_memory, root_cause
from monai_smia.io.datalist import DATALIST, load_datalist
from monai_smia.io.paths import check_folder

__all__ = [
    "CaseError",
    "CaseErrors",
    "bundle_cases",
    "find_case_error",
    "out_of_memory",
    "out_of_memory_message",
    "root_cause",
]

DECATHLON = "dataset.json"


def _bundle_data(config_file: Path, key: str, root: Path, dataset_dir: Path) -> list[Any] | None:
    if not config_file.is_file():
        return None
    parser = ConfigParser()
    parser.read_config(read_config_file(config_file))
    parser["bundle_root"] = str(root)
    parser["dataset_dir"] = str(dataset_dir)
    try:
        parser[key]
    except KeyError:
        return None
    try:
        data = parser.get_parsed_content(key, instantiate=True)
    except Exception as e:
        cause = root_cause(e)
        if isinstance(cause, (FileNotFoundError, ValueError, KeyError)) and cause is not e:
            raise type(cause)(*cause.args) from e  # the bundle's own data loader said what is wrong
        raise ValueError(f"{config_file}: cannot evaluate {key!r} with dataset_dir={str(dataset_dir)!r} ({e}).") from e
    return list(data)


def out_of_memory_message(case: str, shape: Any, device: Any) -> str:
    """One line for a case that ran out of memory: the case, its shape and what to lower."""
    dims = "x".join(str(int(s)) for s in shape) if shape is not None else "unknown"
    return (
        f"{case}: out of memory on {device} for a volume of shape {dims}: lower the sw_batch_size of the bundle's "
        "inferer (fewer windows per batch; the attack's result does not change) or run on a device with more memory "
        "(--device); finished cases are kept, rerun the same command to resume."
    )


def _decathlon(dataset_dir: Path, split: str) -> list[Any] | None:
    path = dataset_dir / DECATHLON
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}).") from e
    key = "test" if split == "test" else "training"
    if not isinstance(meta.get(key), list):
        raise ValueError(f"{path} has no {key!r} list (a Decathlon dataset.json lists 'training' and 'test').")
    return meta[key]


def _item(entry: Any, where: str, n: int) -> dict[str, Any]:
    if isinstance(entry, (str, os.PathLike)):
        return {"image": str(entry)}
    if isinstance(entry, dict) and "image" in entry:
        return {k: v for k, v in entry.items() if k in ("image", "label")}
    raise ValueError(f"{where}[{n}] has no 'image' (got {entry!r}); each case needs an image path.")


def _resolve(items: list[dict[str, Any]], dataset_dir: Path, where: str, allow_outside: bool) -> list[dict[str, Any]]:
    root = dataset_dir.resolve()
    out = []
    for n, item in enumerate(items):
        item = dict(item)
        for key in ("image", "label"):
            value = item.get(key)
            if not isinstance(value, (str, os.PathLike)):
                continue
            path = Path(value) if Path(value).is_absolute() else dataset_dir / value
            full = path.resolve()
            if not allow_outside and root not in full.parents:
                raise ValueError(
                    f"{where}[{n}][{key!r}] = {str(value)!r} leaves the dataset folder {str(dataset_dir)!r}; move the "
                    "file inside it, or allow paths outside (--allow-outside-paths)."
                )
            if not full.exists():
                raise FileNotFoundError(f"{where}[{n}][{key!r}] refers to missing file {str(path)!r}.")
            item[key] = str(path)
        out.append(item)
    return out


def bundle_cases(
    bundle_root: str | os.PathLike, dataset_dir: str | os.PathLike, split: str = "test", allow_outside: bool = False
) -> tuple[list[dict[str, Any]], str]:
    """The ``{"image", ["label"]}`` items to evaluate and a sentence naming where they came from.

    Raises:
        FileNotFoundError: none of the sources applies (names the folder and the keys looked for).
        ValueError: a listed case has no image, or a path leaves ``dataset_dir``.
    """
    root, data = Path(bundle_root), Path(dataset_dir).absolute()
    check_folder(
        data,
        "dataset folder",
        "pass the folder that holds the cases (datalist.json, dataset.json or the bundle's data)",
    )
    if (data / DATALIST).is_file():
        raw, where = load_datalist(data, split), f"{data / DATALIST} {split!r}"
    else:
        raw, where = _bundle_data(root / "configs" / "train.json", "validate#dataset#data", root, data), (
            f"{root / 'configs' / 'train.json'} validate#dataset#data"
        )
        if raw is None:
            raw, where = _decathlon(data, split), f"{data / DECATHLON} {'test' if split == 'test' else 'training'!r}"
        if raw is None:
            raw, where = _bundle_data(root / "configs" / "inference.json", "dataset#data", root, data), (
                f"{root / 'configs' / 'inference.json'} dataset#data"
            )
    if raw is None:
        raise FileNotFoundError(
            f"no cases for {root.name} in {str(data)!r}: expected {DATALIST} (data_prep), {DECATHLON} (Decathlon), "
            "or the bundle's own validate#dataset#data (train.json) / dataset#data (inference.json)."
        )
    items = _resolve([_item(e, where, n) for n, e in enumerate(raw)], data, where, allow_outside)
    if not items:
        raise ValueError(f"{where} lists no cases.")
    return items, where


class CaseError(ValueError):
    """A case's input could not be prepared; the message names its file and the root cause."""


def find_case_error(err: BaseException) -> CaseError | None:
    """The :class:`CaseError` in ``err``'s chain (a batch's file name is known only there), or ``None``."""
    while err is not None:
        if isinstance(err, CaseError):
            return err
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)  # type: ignore[assignment]
    return None


class CaseErrors:
    """Wrap a bundle's preprocessing so that any error names the case's image file and its root cause,
    instead of MONAI's "applying transform <LoadImaged object at 0x...>"."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, item: dict[str, Any]) -> Any:
        try:
            return self.transform(item)
        except Exception as e:
            cause = root_cause(e)
            raise CaseError(
                f"{item.get('image')!r}: {type(cause).__name__}: {cause}; check or replace this file."
            ) from e
