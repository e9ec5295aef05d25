"""Provenance of a run: versions, platform, checkpoint hashes and settings.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import platform
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from monai_smia.io.atomic import write_json_atomic
from monai_smia.reports.store import to_jsonable


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks; computed once per file version (path, size, modification time)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cannot hash {path}: no such file (check the checkpoint path).")
    st = path.stat()
    return _sha256(str(path.resolve()), st.st_size, st.st_mtime_ns, chunk_size)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int, chunk_size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def collect_provenance(
    seed: int | None = None,
    checkpoint: str | Path | None = None,
    data_source: Any = None,
    attack_settings: Any = None,
    command_line: Sequence[str] | str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What produced a report: package versions (monai_smia, monai, torch, numpy, python), platform,
    device, seed, checkpoint path and sha256, data source, attack settings, command line, UTC time."""
    import monai
    import torch

    import monai_smia

    device: dict[str, Any] = {"cuda_available": bool(torch.cuda.is_available())}
    if torch.cuda.is_available():
        device["cuda_device"] = torch.cuda.get_device_name(0)
        device["cuda_version"] = torch.version.cuda
    prov: dict[str, Any] = {
        "versions": {
            "monai_smia": getattr(monai_smia, "__version__", None) or _version("monai-smia"),
            "monai": monai.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "pytorch-ignite": _version("pytorch-ignite"),
            "python": platform.python_version(),
        },
        "platform": platform.platform(),
        "device": device,
        "seed": seed,
        "checkpoint": None,
        "data_source": data_source,
        "attack_settings": attack_settings,
        "command_line": list(sys.argv) if command_line is None else command_line,
        "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if checkpoint is not None:
        prov["checkpoint"] = {"path": str(checkpoint), "sha256": file_sha256(checkpoint)}
    if extra:
        prov.update(extra)
    return prov


def write_provenance(path: str | Path, **kwargs: Any) -> Path:
    """Write :func:`collect_provenance` (same keyword arguments) to ``path`` as JSON, atomically."""
    return write_json_atomic(path, to_jsonable(collect_provenance(**kwargs)), allow_nan=False, trailing_newline=True)


