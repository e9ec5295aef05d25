"""Conditions of ``monai-smia reproduce`` and how one condition is run on a bundle's cases.

A *condition* is one attack setting (attack, SMIA reading, iterations, alpha, eps factor) under one
protocol. ``projected``: an L-infinity budget ``eps`` with step ``2.5 * eps / T`` (Madry et al.);
``paper``: the paper's Sec. 4 setting, a per-iteration step ``eps`` and the ball ``T * eps``
(``SMIA(protocol="paper")``; PGD then takes the same step and ball without a random start, so it
coincides with DEV). FGSM takes one step of ``eps`` under both; DeepFool and DAG (minimal-norm)
are projected onto the protocol's ball, and the worst case (:class:`~monai_smia.attacks.WorstCase`, its gradient
members at ``T`` iterations) attacks within it. Every case's result is stored as soon as it is computed.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from monai.inferers import SliceInferer

from monai_smia.apps.reproduce.data import BundleCases
from monai_smia.attacks import PGD
from monai_smia.attacks.base import Attack
from monai_smia.attacks.registry import make_attack
from monai_smia.attacks.trace import COSINE_KINDS
from monai_smia.attacks.volume import VolumeAttackResult, draw_random_start
from monai_smia.bundle.victim import Victim
from monai_smia.handlers.seeding import case_generators
from monai_smia.inferers import AttackInferer
from monai_smia.metrics import segmentation_case_metrics, top1_correct
from monai_smia.reports.store import CaseStore

__all__ = ["PROTOCOLS", "READINGS", "Condition", "attack_network", "build_attack", "run_clean", "run_condition"]

PROTOCOLS = ("projected", "paper")
#: SMIA's readings (docs/design.md, section 1): name -> options of :class:`~monai_smia.SMIA`
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
    cond: Condition,
    protocol: str,
    network: torch.nn.Module,
    eps: float,
    bounds: Any,
    task: str,
    dag_max_iter: int,
    num_queries: int = 5000,
) -> Attack:
    """The attack of ``cond`` under ``protocol`` at the per-step/budget ``eps`` (network units); ``num_queries``:
    Square's inside the worst case."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}.")
    paper = protocol == "paper"
    ball = cond.num_iter * eps if paper else eps
    if cond.attack in ("SMIA", "DEV"):
        options = dict(READINGS[cond.reading]) if cond.attack == "SMIA" else {}
        if paper:
            options["protocol"] = "paper"
        return make_attack(
            cond.attack, network, eps, num_iter=cond.num_iter, alpha=cond.alpha, bounds=bounds, task=task, **options
        )
    if cond.attack == "PGD" and paper:
        return PGD(network, eps=ball, num_iter=cond.num_iter, step_size=eps, bounds=bounds, random_start=False)
    if cond.attack == "DAG":
        return make_attack("DAG", network, ball, bounds=bounds, task=task, max_iter=dag_max_iter)
    if cond.attack == "DeepFool":
        return make_attack("DeepFool", network, ball, bounds=bounds, task=task)
    if cond.attack == "worst-case":  # the protocol's ball; each member takes its own steps within it
        return make_attack(
            "worst-case", network, ball, num_iter=cond.num_iter, bounds=bounds, task=task, num_queries=num_queries
        )
    return make_attack(cond.attack, network, eps, num_iter=cond.num_iter, bounds=bounds, task=task)


def _score(victim: Victim, logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Per case: top-1 correct (classification) or foreground Dice (segmentation)."""
    if victim.task == "classification":
        return [float(v) for v in top1_correct(logits, labels)]
    return [float(v) for v in segmentation_case_metrics(logits, labels)["dice"]]


def _batches(ids: list[str], cases: BundleCases, size: int) -> list[list[str]]:
    """Consecutive ids in batches of at most ``size`` images of one shape."""
    index = {c: i for i, c in enumerate(cases.ids)}
    out: list[list[str]] = []
    for c in ids:
        shape = cases.images[index[c]].shape
        if out and len(out[-1]) < size and cases.images[index[out[-1][0]]].shape == shape:
            out[-1].append(c)
        else:
            out.append([c])
    return out


def attack_network(victim: Victim, x: torch.Tensor) -> torch.nn.Module:
    """The module an attack differentiates for 2D inputs ``x``: the network itself, or for a
    slice-wise bundle the 2D network as its ``SliceInferer`` applies it (a sliding window when the
    ROI does not cover the slice), found by :meth:`AttackInferer.attack_network`."""
    binder = AttackInferer(lambda n: n, victim.inferer)
    if isinstance(victim.inferer, SliceInferer):
        return binder.attack_network(x[..., None], victim.network)[0]
    network, slice_dim = binder.attack_network(x, victim.network)
    if slice_dim is not None:
        raise ValueError(
            f"{victim.name}: the reproduction attacks 2D images or whole inputs, not slice_dim={slice_dim}."
        )
    return network


def run_clean(store: CaseStore, victim: Victim, cases: BundleCases, batch_size: int) -> None:
    """Score the clean cases once (record ``attack="clean"``)."""
    index = {c: i for i, c in enumerate(cases.ids)}
    for chunk in _batches(store.pending("clean", None, cases.ids), cases, batch_size):
        x = torch.stack([cases.images[index[c]] for c in chunk])
        y = torch.stack([cases.labels[index[c]] for c in chunk])
        with torch.no_grad():
            logits = attack_network(victim, x)(x)
        for c, s in zip(chunk, _score(victim, logits, y)):
            store.save({"case_id": c, "attack": "clean", "eps": None, "score": s})


def _per_case_start(
    attack: Attack, key: str, eps: float, chunk: Sequence[str], x: torch.Tensor, seed: int
) -> torch.Tensor | None:
    """Random starts drawn per case from its own seed, so results do not depend on batching."""
    if not attack.draws_random_start:
        return None
    gens = case_generators(seed, key, eps, chunk)
    return torch.cat([draw_random_start(attack, x[i : i + 1].shape, x.dtype, g) for i, g in enumerate(gens)])


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
        options: ``bounds``, ``batch_size`` (images per attack call), ``seed``, ``dag_max_iter``, ``num_queries``
            (Square's, inside the worst case).
    """
    index = {c: i for i, c in enumerate(cases.ids)}
    clean = {r["case_id"]: r["score"] for r in store.records("clean")}
    for chunk in _batches(store.pending(cond.key, eps, cases.ids), cases, options["batch_size"]):
        x = torch.stack([cases.images[index[c]] for c in chunk])
        y = torch.stack([cases.labels[index[c]] for c in chunk])
        network = attack_network(victim, x)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            attack = build_attack(
                cond, protocol, network, eps, options["bounds"], victim.task, options["dag_max_iter"],
                options.get("num_queries", 5000),
            )
            adv = attack(x, y, delta_init=_per_case_start(attack, cond.key, eps, chunk, x, options["seed"]))
        result = VolumeAttackResult(adv, adv - x, attack.trace, minimal=getattr(attack, "result", None))
        with torch.no_grad():
            logits = network(adv)
        note = "; ".join(sorted({str(w.message) for w in caught if issubclass(w.category, UserWarning)}))
        for b, (c, s) in enumerate(zip(chunk, _score(victim, logits, y))):
            record = {"case_id": c, "attack": cond.key, "eps": eps, "protocol": protocol, "score": s}
            record.update(drop=clean[c] - s, warning=note, **_case_numbers(result, b))
            store.save(record)
