"""Progress inside one case: bars over a volume's slices (slice-wise attacks) and over the windows of
each window-wise backward pass (whole-volume attacks through a sliding window), shown only within
:func:`slice_progress` (a long CT case then shows progress, not 0% for minutes); no-ops without tqdm."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from monai.utils import optional_import

tqdm, _has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["slice_bar", "slice_progress", "window_bar"]

_CASE_PROGRESS: ContextVar[str | None] = ContextVar("monai_smia_case_progress", default=None)


@contextlib.contextmanager
def slice_progress(description: str = "slices") -> Iterator[None]:
    """Within this context, attacks show tqdm bars over each volume's slices and each pass's windows."""
    token = _CASE_PROGRESS.set(description)
    try:
        yield
    finally:
        _CASE_PROGRESS.reset(token)


def _bar(total: int, unit: str, suffix: str = "") -> Any:
    desc = _CASE_PROGRESS.get()
    if desc is None or not _has_tqdm:
        return contextlib.nullcontext(None)
    return tqdm(total=total, desc=desc + suffix, unit=unit, leave=False, dynamic_ncols=True)


def slice_bar(n_slices: int) -> Any:
    """A bar over ``n_slices`` slices of one volume (a null context outside :func:`slice_progress`)."""
    return _bar(n_slices, "slice")


def window_bar(n_windows: int) -> Any:
    """A bar over the ``n_windows`` windows of one window-wise backward pass."""
    return _bar(n_windows, "window", " windows")
