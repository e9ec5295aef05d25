"""The one definition of a case's random seed, shared by ``evaluate`` and ``attack``, and the evaluator
handler that reseeds an :class:`~monai_smia.inferers.AttackInferer` with it before each batch."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from monai.utils import optional_import

Events, _ = optional_import("ignite.engine", name="Events")

__all__ = ["case_seed", "CaseSeedHandler"]


def case_seed(seed: int, attack_name: str, eps: float | None, case_ids: Sequence[str]) -> int:
    """A 63-bit seed from the run seed, the condition and the cases of a batch (SHA-256: stable across
    runs, machines, ranks and batching)."""
    text = f"{seed}|{attack_name}|{eps!r}|{'|'.join(map(str, case_ids))}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


class CaseSeedHandler:
    """At ``ITERATION_STARTED``, give ``inferer.generator`` the :func:`case_seed` of the batch's cases, so
    random starts depend on the cases and the condition, not on batch order or ranks.

    Args:
        inferer: an inferer with a ``generator`` attribute (``AttackInferer``); anything else is left alone.
        seed, attack, eps: the run seed and the condition (``eps`` in the user's unit, ``None`` for clean).
        case_key: batch key of the case ids.
    """

    def __init__(self, inferer: Any, seed: int, attack: str, eps: float | None, case_key: str = "case_id") -> None:
        self.inferer, self.seed, self.attack = inferer, int(seed), str(attack)
        self.eps = None if eps is None else float(eps)
        self.case_key = case_key

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Any) -> None:
        if hasattr(self.inferer, "generator"):
            ids = engine.state.batch[self.case_key]
            self.inferer.generator = torch.Generator().manual_seed(case_seed(self.seed, self.attack, self.eps, ids))
