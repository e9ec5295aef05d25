"""A bundle's files, read once per process: its JSON configs, its metadata and its checkpoint.

Every read is keyed by the file's resolved path, size and modification time, so a file that changes is
read again. Callers get their own deep copy of a config (MONAI's parser changes what it is given); a
checkpoint's state dict is kept on the CPU and copied into each network by ``load_state_dict``.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.bundle.utils import merge_kv

__all__ = [
    "check_config_file",
    "clear",
    "file_version",
    "load_config_files",
    "load_state",
    "read_config_file",
    "read_metadata",
]

_CONFIGS: dict[tuple[str, int, int], Any] = {}
_STATES: OrderedDict[tuple[str, int, int], Any] = OrderedDict()
#: checkpoints kept in memory at once (a run uses one; a second covers a comparison of two)
MAX_STATES = 2


def file_version(path: str | os.PathLike) -> tuple[str, int, int]:
    """``(resolved path, size, modification time in ns)``: what a cached read of ``path`` is keyed by."""
    p = Path(path).resolve()
    st = p.stat()
    return str(p), st.st_size, st.st_mtime_ns


def _parsed(path: str | os.PathLike, load: Any) -> Any:
    """``load(path)`` once per file version; a file that is not UTF-8 or not valid JSON is named in one line."""
    key = file_version(path)
    if key not in _CONFIGS:
        try:
            _CONFIGS[key] = load(path)
        except UnicodeDecodeError as e:
            raise ValueError(f"{key[0]} is not UTF-8 text ({e.reason}); fix this file of the bundle.") from None
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{key[0]} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                "fix this file of the bundle."
            ) from None
    return _CONFIGS[key]


def check_config_file(path: str | os.PathLike) -> None:
    """Parse ``path`` into the cache (a later :func:`read_config_file` reuses it), naming it if it does not parse."""
    _parsed(path, lambda p: ConfigParser.load_config_file(str(p)))


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """``ConfigParser.load_config_file(path)`` (JSON or YAML, duplicate keys refused), read once per file version."""
    return copy.deepcopy(_parsed(path, lambda p: ConfigParser.load_config_file(str(p))))


def load_config_files(files: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """``ConfigParser.load_config_files(files)``: later files override or add keys (``a#b`` reaches into
    ``a``), each file read through :func:`read_config_file`. Pass the result to ``ConfigParser.read_config``."""
    parser = ConfigParser(config={})
    for f in files:
        for k, v in read_config_file(f).items():
            merge_kv(parser, k, v)
    return parser.get()  # type: ignore[no-any-return]


def read_metadata(root: str | os.PathLike) -> dict[str, Any]:
    """The bundle's ``configs/metadata.json`` (plain JSON), read once per file version."""
    path = Path(root) / "configs" / "metadata.json"
    return copy.deepcopy(_parsed(path, lambda p: json.loads(Path(p).read_text(encoding="utf-8"))))


def load_state(path: str | os.PathLike) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, loaded once per file version (the last
    :data:`MAX_STATES` checkpoints are kept). Errors are raised as ``torch.load`` raises them."""
    key = file_version(path)
    if key in _STATES:
        _STATES.move_to_end(key)
        return _STATES[key]
    with warnings.catch_warnings():  # a foreign pickle also draws torch's protocol notice; the caller reports
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        state = torch.load(path, map_location="cpu", weights_only=True)
    _STATES[key] = state
    while len(_STATES) > MAX_STATES:
        _STATES.popitem(last=False)
    return state


def clear() -> None:
    """Forget every cached read (tests that count reads start from here)."""
    _CONFIGS.clear()
    _STATES.clear()
