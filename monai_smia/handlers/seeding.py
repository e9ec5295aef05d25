"""The one definition of a case's random seed, shared by ``evaluate`` and ``attack``."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = ["case_seed"]


def case_seed(seed: int, attack_name: str, eps: float | None, case_ids: Sequence[str]) -> int:
    """A 63-bit seed from the run seed, the condition and the cases of a batch (SHA-256: stable across
    runs, machines, ranks and batching)."""
    text = f"{seed}|{attack_name}|{eps!r}|{'|'.join(map(str, case_ids))}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF
