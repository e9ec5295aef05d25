"""The one definition of a case's random seed, shared by ``evaluate`` and ``attack``, and the evaluator
handler that reseeds an :class:`~monai_smia.inferers.AttackInferer` with it before each batch."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.utils import optional_import

Events, _ = optional_import("ignite.engine", name="Events")

__all__ = ["case_generators", "case_seed", "seed_key", "CaseSeedHandler"]


def case_seed(seed: int, attack_name: str, eps: float | None, case_ids: Sequence[str]) -> int:
    """A 63-bit seed from the run seed, the condition and the cases of a batch (SHA-256: stable across
    runs, machines, ranks and batching)."""
    text = f"{seed}|{attack_name}|{eps!r}|{'|'.join(map(str, case_ids))}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def seed_key(source: Any) -> str:
    """The key a case is seeded by: its image file's (or DICOM folder's) name without extensions, so
    ``evaluate`` (case ids ``0000_<name>``) and ``attack`` (``<name>``) draw the same random start."""
    return Path(str(source)).name.split(".")[0]


def case_generators(seed: int, attack_name: str, eps: float | None, keys: Sequence[str]) -> list[torch.Generator]:
    """One CPU generator per case (:func:`case_seed` of its :func:`seed_key`): a case's random start
    then depends on the case and the condition only, not on the batch it is in."""
    return [torch.Generator().manual_seed(case_seed(seed, attack_name, eps, [k])) for k in keys]


class CaseSeedHandler:
    """At ``ITERATION_STARTED``, give ``inferer.generator`` one generator per case of the batch
    (:func:`case_generators` of the image files' :func:`seed_key`), so random starts depend on the case
    and the condition, not on batching, batch order or ranks.

    Args:
        inferer: an inferer with a ``generator`` attribute (``AttackInferer``); anything else is left alone.
        seed, attack, eps: the run seed and the condition (``eps`` in the user's unit, ``None`` for clean).
        case_key: batch key of the case ids, used when the batch has no ``seed_key`` entry (the
            cases' image names, which :class:`~monai_smia.apps.evaluate.config.EvaluationCondition` adds).
    """

    def __init__(self, inferer: Any, seed: int, attack: str, eps: float | None, case_key: str = "case_id") -> None:
        self.inferer, self.seed, self.attack = inferer, int(seed), str(attack)
        self.eps = None if eps is None else float(eps)
        self.case_key = case_key

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Any) -> None:
        if hasattr(self.inferer, "generator"):
            batch = engine.state.batch
            names = batch.get("seed_key", batch[self.case_key])
            keys = [seed_key(n) for n in ([names] if isinstance(names, str) else names)]
            self.inferer.generator = case_generators(self.seed, self.attack, self.eps, keys)
