"""The one folder where prepared data and downloads are kept between runs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["CACHE_ENV", "default_cache", "source_key"]

#: environment variable that moves the cache
CACHE_ENV = "MONAI_SMIA_CACHE"


def default_cache() -> Path:
    """``$MONAI_SMIA_CACHE`` or ``~/.cache/monai_smia`` (demo, reproduce and the downloaders share it)."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "monai_smia"))


def source_key(path: str | os.PathLike) -> str:
    """A short stable name for a raw data folder inside the cache (a hash of its resolved path)."""
    return hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:10]
