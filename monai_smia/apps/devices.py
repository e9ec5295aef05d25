"""The device a run uses when none is named: every command and runner takes the same default."""

from __future__ import annotations

import os

import torch

__all__ = ["run_device"]


def run_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a ``torch.device``; ``None``: CUDA when available (``cuda:LOCAL_RANK`` under torchrun),
    else the CPU."""
    if device is not None:
        return torch.device(device)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
