"""What ``monai-smia reproduce`` runs (conditions) and which of the paper's claims it tests (one
:class:`~monai_smia.reports.claims.ClaimSpec` per row of the paper's Tables 1-6)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from monai_smia.apps.reproduce.run import Condition
from monai_smia.reports.claims import ClaimSpec

__all__ = ["SCORE_NAMES", "bundle_claims", "bundle_conditions"]

#: the per-case task metric each task is scored with
SCORE_NAMES = {"classification": "accuracy", "segmentation": "Dice"}


def _minimal(task: str) -> str:
    return "DeepFool" if task == "classification" else "DAG"


def _smia(reading: str, num_iter: int, alpha: float, eps_factor: float = 1.0) -> Condition:
    return Condition("SMIA", reading, num_iter, alpha, eps_factor)


def _dev(num_iter: int, eps_factor: float = 1.0) -> Condition:
    return Condition("DEV", "default", num_iter, 0.0, eps_factor)


def bundle_conditions(task: str, s: Any) -> list[Condition]:
    """The conditions of one bundle under one protocol, without duplicates, cheapest first."""
    t, a = s.num_iter, s.alpha
    conds = [Condition("FGSM", num_iter=1), Condition("PGD", num_iter=t), _dev(t)]
    conds += [_smia(r, t, a) for r in s.readings]
    conds.append(Condition(_minimal(task), num_iter=t))
    for n in s.iterations:
        conds += [_dev(n), _smia("default", n, a)]
    for f in s.eps_factors:
        conds += [_dev(t, f), _smia("default", t, a, f), Condition("PGD", num_iter=t, eps_factor=f)]
    conds += [_smia("default", t, al) for al in s.alphas if al != 0]
    conds.append(Condition("worst-case", num_iter=t))  # the strongest attack at the base setting (not the paper's)
    return list(dict.fromkeys(conds))


def _values(records: Iterable[Mapping[str, Any]], key: str, metric: str) -> dict[str, float]:
    return {r["case_id"]: float(r.get(metric, float("nan"))) for r in records if r["attack"] == key}


class _Rows:
    """Collects the claims of one bundle and protocol."""

    def __init__(self, bundle: str, task: str, protocol: str, records: list[Mapping[str, Any]]) -> None:
        self.bundle, self.task, self.protocol, self.records = bundle, task, protocol, records
        self.score = SCORE_NAMES[task]
        self.rows: list[ClaimSpec] = []

    def add(
        self, table: str, claim: str, a: Condition, b: Condition, metric: str, direction: str, reading: str = "default"
    ) -> None:
        self.rows.append(
            ClaimSpec(
                table=table,
                bundle=self.bundle,
                protocol=self.protocol,
                reading=reading,
                claim=claim,
                a=a.key,
                b=b.key,
                metric=metric,
                metric_label=self.score if metric == "score" else metric,
                direction=direction,
                a_values=_values(self.records, a.key, metric),
                b_values=_values(self.records, b.key, metric),
                warning=next(
                    (str(r["warning"]) for r in self.records if r["attack"] == a.key and r.get("warning")), ""
                ),
            )
        )


def _sweep_claims(rows: _Rows, s: Any) -> None:
    """Tables 2-4: SMIA against DEV (and PGD) across the iteration, eps and alpha sweeps."""
    t, a, dev = s.num_iter, s.alpha, _dev(s.num_iter)
    for n in s.iterations:
        rows.add(
            "2", f"SMIA is stronger than DEV at T = {n} iterations", _smia("default", n, a), _dev(n), "score", "less"
        )
    for f in s.eps_factors:
        smia, pgd = _smia("default", t, a, f), Condition("PGD", num_iter=t, eps_factor=f)
        rows.add("3", f"SMIA is stronger than DEV at eps x{f:g}", smia, _dev(t, f), "score", "less")
        rows.add("3", f"SMIA is stronger than PGD at eps x{f:g}", smia, pgd, "score", "less")
    for al in s.alphas:
        if al != 0:
            claim = f"alpha = {al:g} is stronger than alpha = 0 (DEV)"
            rows.add("4", claim, _smia("default", t, al), dev, "score", "less")
        if al not in (0, a):
            claim = f"alpha = {a:g} (the paper's) is stronger than alpha = {al:g}"
            rows.add("4", claim, _smia("default", t, a), _smia("default", t, al), "score", "less")


def bundle_claims(bundle: str, task: str, protocol: str, s: Any, records: list[Mapping[str, Any]]) -> list[ClaimSpec]:
    """The paper's claims for one bundle and protocol, each with the per-case values of its two sides."""
    t, a = s.num_iter, s.alpha
    rows = _Rows(bundle, task, protocol, records)
    dev, pgd, fgsm = _dev(t), Condition("PGD", num_iter=t), Condition("FGSM", num_iter=1)
    minimal = Condition(_minimal(task), num_iter=t)
    for r in s.readings:
        smia = _smia(r, t, a)
        rows.add("1", "DEV+STA is a stronger attack than DEV alone", smia, dev, "score", "less", r)
        claim = "DEV+STA's consecutive updates agree more often (share of positive cosines)"
        rows.add("1", claim, smia, dev, "update_positive_share", "greater", r)
    _sweep_claims(rows, s)
    if bundle == "mnist_cls":
        for other in (fgsm, pgd):
            claim = f"on MNIST, SMIA is stronger than {other.attack}"
            rows.add("5", claim, _smia("default", t, a), other, "score", "less")
    for r in s.readings:
        smia = _smia(r, t, a)
        for other in (fgsm, pgd, minimal):
            claim = f"SMIA causes a larger {rows.score} drop than {other.attack}"
            rows.add("6", claim, smia, other, "drop", "greater", r)
        for other in (pgd, dev):
            rows.add(
                "6", f"SMIA's perturbation varies less (Var) than {other.attack}'s", smia, other, "variance", "less", r
            )
    worst = Condition("worst-case", num_iter=t)
    for name, cond in (("SMIA", _smia("default", t, a)), ("PGD", pgd)):
        rows.add("W", f"the worst case is stronger than {name}", worst, cond, "score", "less")
    return rows.rows
