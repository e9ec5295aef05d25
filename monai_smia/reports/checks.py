"""The worst case's report: which member won how many cases, and AutoAttack's checks as warnings.

Reads the notes :meth:`monai_smia.attacks.WorstCase.case_notes` leaves in each record (``winner``, ``check_<name>``
for the checks of :data:`monai_smia.attacks.worstcase.CHECKS`, ``fallback``); the checks follow Croce & Hein,
"Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks", ICML 2020, and
their code's ``checks.py``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from monai_smia.attacks.worstcase import CHECKS

__all__ = ["format_worst_case_report", "worst_case_report"]


def worst_case_report(records: Iterable[Mapping[str, Any]], attack: str) -> dict[str, Any] | None:
    """Wins per member and the warnings of ``attack``'s records, or ``None`` when none holds a ``winner``.

    Returns:
        ``{"wins": {member: cases}, "warnings": [{"check", "message", "count", "checked", "cases"}],
        "not_checked": [check, ...]}``: ``wins`` counts ``"clean"`` (a classifier case already wrong) and
        ``"none"`` (no member broke it) too; a warning lists the case ids where its check fired (``checked``: of
        how many cases it was checked on); ``fallback`` warnings name the member change for too few classes.
    """
    rows = [r for r in records if r.get("attack") == attack and "winner" in r]
    if not rows:
        return None
    wins = Counter(str(r["winner"]) for r in rows)
    report: dict[str, Any] = {"wins": dict(wins.most_common()), "warnings": [], "not_checked": []}
    for check, message in CHECKS.items():
        key = f"check_{check}"
        checked = [r for r in rows if r.get(key) is not None]
        if not checked:
            report["not_checked"].append(check)
            continue
        cases = [str(r["case_id"]) for r in checked if r[key]]
        if cases:
            report["warnings"].append(
                {"check": check, "message": message, "count": len(cases), "checked": len(checked), "cases": cases}
            )
    for fallback in dict.fromkeys(str(r["fallback"]) for r in rows if r.get("fallback")):
        cases = [str(r["case_id"]) for r in rows if r.get("fallback") == fallback]
        report["warnings"].append(
            {"check": "fallback", "message": fallback, "count": len(cases), "checked": len(rows), "cases": cases}
        )
    return report


def format_worst_case_report(report: Mapping[str, Any], attack: str, max_cases: int = 10) -> str:
    """summary.md's section for :func:`worst_case_report`: the wins per member, then one line per warning."""
    wins = ", ".join(f"{member} {n}" for member, n in report["wins"].items())
    lines = [f"## {attack}: winners and AutoAttack's checks", "", f"Cases won per member: {wins}.", ""]
    for w in report["warnings"]:
        shown = ", ".join(w["cases"][:max_cases]) + (", ..." if w["count"] > max_cases else "")
        lines.append(f"- WARNING ({w['check']}): {w['message']}: {w['count']} of {w['checked']} cases ({shown}).")
    if not report["warnings"]:
        lines.append("- No warnings: none of AutoAttack's checks fired.")
    if report["not_checked"]:
        lines.append(f"- Not checked (no member to compare): {', '.join(report['not_checked'])}.")
    return "\n".join(lines) + "\n"
