"""Shared test fixtures: the real data folder (``../shared/data`` beside the repository, or ``MONAI_SMIA_DATA``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """The raw data folder laid out like ``../shared/data``."""
    env = os.environ.get("MONAI_SMIA_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent (set MONAI_SMIA_DATA to a folder laid out like ../shared/data)")
    return path
