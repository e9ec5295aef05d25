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

__all__ = ["file_version", "read_config_file", "load_config_files", "read_metadata", "load_state", "clear"]

_CONFIGS: dict[tuple[str, int, int], Any] = {}
_STATES: OrderedDict[tuple[str, int, int], Any] = OrderedDict()
#: checkpoints kept in memory at once (a run uses one; a second covers a comparison of two)
MAX_STATES = 2


def file_version(path: str | os.PathLike) -> tuple[str, int, int]:
    """``(resolved path, size, modification time in ns)``: what a cached read of ``path`` is keyed by."""
    p = Path(path).resolve()
    st = p.stat()
    return str(p), st.st_size, st.st_mtime_ns


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """``ConfigParser.load_config_file(path)`` (JSON or YAML, duplicate keys refused), read once per file version."""
    key = file_version(path)
    if key not in _CONFIGS:
        _CONFIGS[key] = ConfigParser.load_config_file(str(path))
    return copy.deepcopy(_CONFIGS[key])


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
    key = file_version(path)
    if key not in _CONFIGS:
        _CONFIGS[key] = json.loads(path.read_text(encoding="utf-8"))
    return copy.deepcopy(_CONFIGS[key])


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
