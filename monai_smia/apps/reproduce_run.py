"""Conditions of ``monai-smia reproduce`` and how one condition is run on a bundle's cases.

A *condition* is one attack setting (attack, SMIA reading, iterations, alpha, eps factor) under one
protocol. ``projected``: an L-infinity budget ``eps`` with step ``2.5 * eps / T`` (Madry et al.);
``paper``: the paper's Sec. 4 setting, a per-iteration step ``eps`` and the ball ``T * eps``
(``SMIA(protocol="paper")``; PGD then takes the same step and ball without a random start, so it
coincides with DEV). FGSM takes one step of ``eps`` under both; DeepFool and DAG (minimal-norm)
are projected onto the protocol's ball. Every case's result is stored as soon as it is computed.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from monai_smia.apps.reproduce_data import BundleCases
from monai_smia.attacks import PGD
from monai_smia.attacks.base import Attack
from monai_smia.attacks.registry import make_attack
from monai_smia.attacks.trace import COSINE_KINDS
from monai_smia.attacks.volume import VolumeAttackResult, attack_volumes, draw_random_start
from monai_smia.bundle.victim import Victim
from monai_smia.handlers.seeding import case_seed
from monai_smia.inferers import AttackInferer
from monai_smia.metrics import segmentation_case_metrics, top1_correct
from monai_smia.reports.store import CaseStore

__all__ = ["PROTOCOLS", "READINGS", "Condition", "build_attack", "run_clean", "run_condition"]

PROTOCOLS = ("projected", "paper")
#: SMIA's readings (DESIGN.md section 1): name -> options of :class:`~monai_smia.SMIA`
READINGS: dict[str, dict[str, str]] = {
    "default": {},
    "differentiable": {"stabilization_target": "differentiable"},
    "step": {"smooth": "step"},
    "hard": {"stabilization": "hard"},
}


@dataclass(frozen=True)
class Condition:
    """One attack setting; ``key`` names it in the case store and the claims."""

    attack: str
    reading: str = "default"
    num_iter: int = 10
    alpha: float = 1.0
    eps_factor: float = 1.0

    @property
    def key(self) -> str:
        name = self.attack if self.attack != "SMIA" or self.reading == "default" else f"SMIA[{self.reading}]"
        alpha = f"_a{self.alpha:g}" if self.attack == "SMIA" else ""
        return f"{name}_T{self.num_iter}{alpha}_e{self.eps_factor:g}"


def build_attack(
    cond: Condition, protocol: str, network: torch.nn.Module, eps: float, bounds: Any, task: str, dag_max_iter: int
) -> Attack:
    """The attack of ``cond`` under ``protocol`` at the per-step/budget ``eps`` (network units)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}.")
    paper = protocol == "paper"
    ball = cond.num_iter * eps if paper else eps
    if cond.attack in ("SMIA", "DEV"):
        options = dict(READINGS[cond.reading]) if cond.attack == "SMIA" else {}
        if paper:
            options["protocol"] = "paper"
        return make_attack(cond.attack, network, eps, num_iter=cond.num_iter, alpha=cond.alpha, bounds=bounds, task=task, **options)
    if cond.attack == "PGD" and paper:
        return PGD(network, eps=ball, num_iter=cond.num_iter, step_size=eps, bounds=bounds, random_start=False)
    if cond.attack == "DAG":
        return make_attack("DAG", network, ball, bounds=bounds, task=task, max_iter=dag_max_iter)
    if cond.attack == "DeepFool":
        return make_attack("DeepFool", network, ball, bounds=bounds, task=task)
    return make_attack(cond.attack, network, eps, num_iter=cond.num_iter, bounds=bounds, task=task)


def _score(victim: Victim, logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Per case: top-1 correct (classification) or foreground Dice (segmentation)."""
    if victim.task == "classification":
        return [float(v) for v in top1_correct(logits, labels)]
    return [float(v) for v in segmentation_case_metrics(logits, labels)["dice"]]


def _batches(ids: list[str], size: int) -> list[list[str]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def run_clean(store: CaseStore, victim: Victim, cases: BundleCases, batch_size: int) -> None:
    """Score the clean cases once (record ``attack="clean"``)."""
    index = {c: i for i, c in enumerate(cases.ids)}
    size = batch_size if victim.task == "classification" else 1
    for chunk in _batches(store.pending("clean", None, cases.ids), size):
        x = torch.stack([cases.images[index[c]] for c in chunk])
        y = torch.stack([cases.labels[index[c]] for c in chunk])
        with torch.no_grad():
            logits = victim.inferer(x, victim.network)
        for c, s in zip(chunk, _score(victim, logits, y)):
            store.save({"case_id": c, "attack": "clean", "eps": None, "score": s})


def _per_case_start(attack: Attack, key: str, eps: float, chunk: Sequence[str], x: torch.Tensor, seed: int) -> torch.Tensor | None:
    """Random starts drawn per case from its own seed, so results do not depend on batching."""
    if not getattr(attack, "random_start", False):
        return None
    parts = []
    for i, c in enumerate(chunk):
        g = torch.Generator().manual_seed(case_seed(seed, key, eps, [c]))
        parts.append(draw_random_start(attack, x[i : i + 1].shape, x.dtype, g))
    return torch.cat(parts)


def _case_numbers(result: Any, b: int) -> dict[str, float]:
    """Var, norms, cosine shares and the minimal-norm numbers of case ``b`` of a volume result."""
    d = result.perturbation[b].double()
    out = {
        "variance": float(d.var(unbiased=False)),
        "l2": float(d.norm()),
        "linf": float(d.abs().max()) if d.numel() else 0.0,
    }
    if result.trace is not None:
        for kind in COSINE_KINDS:
            out[f"{kind}_positive_share"] = float(result.trace.positive_share(kind)[b])
            out[f"{kind}_cosine_mean"] = float(result.trace.cosine_mean(kind)[b])
    if result.minimal is not None:
        out["minimal_l2"] = float(result.minimal.norms[b])
        out["minimal_error"] = float(result.minimal.error[b])
    return out


def _attack(
    attack: Attack, x: torch.Tensor, y: torch.Tensor, slice_dim: int | None, slice_batch_size: int, start: torch.Tensor | None
) -> Any:
    """A volume result; whole 2D images go through the attack in one batch (the result does not depend
    on batching), volumes slice-wise through :func:`attack_volumes`."""
    if slice_dim is not None:
        return attack_volumes(
            attack, x, y, slice_dim=slice_dim, slice_batch_size=slice_batch_size, delta_init=start, compute_success=False
        )
    adv = attack(x, y, delta_init=start)
    return VolumeAttackResult(adversarial=adv, perturbation=adv - x, trace=attack.trace, minimal=getattr(attack, "result", None))


def run_condition(
    store: CaseStore,
    victim: Victim,
    cases: BundleCases,
    cond: Condition,
    protocol: str,
    eps: float,
    options: dict[str, Any],
) -> None:
    """Attack every case not yet stored under ``cond`` and store one record per case.

    Args:
        eps: the per-step (paper) or budget (projected) epsilon in network units.
        options: ``bounds``, ``batch_size``, ``slice_batch_size``, ``seed``, ``dag_max_iter``.
    """
    index = {c: i for i, c in enumerate(cases.ids)}
    clean = {r["case_id"]: r["score"] for r in store.records("clean")}
    size = options["batch_size"] if victim.task == "classification" else 1
    for chunk in _batches(store.pending(cond.key, eps, cases.ids), size):
        x = torch.stack([cases.images[index[c]] for c in chunk])
        y = torch.stack([cases.labels[index[c]] for c in chunk])
        binder = AttackInferer(lambda n: n, victim.inferer)  # only to find the network the attack differentiates
        network, slice_dim = binder.attack_network(x, victim.network)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            attack = build_attack(cond, protocol, network, eps, options["bounds"], victim.task, options["dag_max_iter"])
            start = _per_case_start(attack, cond.key, eps, chunk, x, options["seed"])
            result = _attack(attack, x, y, slice_dim, options["slice_batch_size"], start)
        with torch.no_grad():
            logits = victim.inferer(result.adversarial, victim.network)
        note = "; ".join(sorted({str(w.message) for w in caught if issubclass(w.category, UserWarning)}))
        for b, (c, s) in enumerate(zip(chunk, _score(victim, logits, y))):
            record = {"case_id": c, "attack": cond.key, "eps": eps, "protocol": protocol, "score": s}
            record.update(drop=clean[c] - s, warning=note, **_case_numbers(result, b))
            store.save(record)
