"""The claims report of ``monai-smia reproduce``: each row a claim of the SMIA paper (Qi et al.,
"Stabilized Medical Image Attacks", ICLR 2021), what was measured on how many cases, the paired
bootstrap interval of the mean per-case difference, and whether the claim holds.

A claim holds only when the paired interval excludes 0 in its favour
(:func:`monai_smia.metrics.paired.compare_paired`). Written atomically: ``reproduce.md``,
``reproduce.json`` and one forest plot per table and bundle (``claims_table<N>_<bundle>.png``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monai_smia.io.atomic import write_json_atomic
from monai_smia.metrics.paired import HOLDS, PairedComparison, compare_paired
from monai_smia.reports.figures import pyplot, save_figure
from monai_smia.reports.store import atomic_write_text, to_jsonable

__all__ = [
    "PAPER_TABLES",
    "TABLE_TITLES",
    "TOLERANCES",
    "ClaimSpec",
    "evaluate_claims",
    "format_claims_markdown",
    "format_claims_overview",
    "paper_claims",
    "write_claims",
]

TABLE_TITLES = {
    "1": "Table 1: DEV vs DEV+STA (attack strength, share of positive cosines between consecutive updates)",
    "2": "Table 2: iterations",
    "3": "Table 3: eps sweep",
    "4": "Table 4: alpha",
    "5": "Table 5: MNIST, FGSM / PGD / SMIA",
    "6": "Table 6: FGSM, PGD, DeepFool (classification) / DAG (segmentation, detection) and SMIA: metric drop and Var",
    "W": "SMIA vs the worst case (AutoAttack-style WorstCase, Croce & Hein 2020): how far the paper's attack is from "
    "the strongest; a measurement, not a claim of the paper, so not counted among the claims",
}
#: the tables of the paper's claims (the rows counted as claims); other tables are measurements beside them
PAPER_TABLES = ("1", "2", "3", "4", "5", "6")
#: per metric, the |difference| that counts as a tie
TOLERANCES = {"score": 1e-4, "drop": 1e-4, "variance": 1e-12, "update_positive_share": 1e-6}


@dataclass
class ClaimSpec:
    """One claim to test: ``a`` is ``direction`` than ``b`` in ``metric``, per case."""

    table: str
    bundle: str
    protocol: str
    reading: str
    claim: str
    a: str
    b: str
    metric: str
    metric_label: str
    direction: str
    a_values: dict[str, float] = field(default_factory=dict)
    b_values: dict[str, float] = field(default_factory=dict)
    warning: str = ""
    #: a set-level comparison ``compare(num_resamples, seed)`` (e.g. a detector's AP, paired over images) in
    #: place of the mean per-case difference of ``a_values`` and ``b_values``
    compare: Callable[[int, int], PairedComparison] | None = None


def evaluate_claims(specs: Sequence[ClaimSpec], num_resamples: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """One row per claim: the claim, its settings, the paired comparison and the verdict."""
    rows = []
    for s in specs:
        cmp = (
            s.compare(num_resamples, seed)
            if s.compare is not None
            else compare_paired(
                s.a_values,
                s.b_values,
                direction=s.direction,
                tolerance=TOLERANCES.get(s.metric, 0.0),
                names=(s.a, s.b),
                metric=s.metric,
                num_resamples=num_resamples,
                seed=seed,
            )
        )
        measured = (
            f"{s.metric_label}: {s.a} {cmp.mean_a:.4g} vs {s.b} {cmp.mean_b:.4g}, {cmp.num_cases} cases, "
            f"W/T/L {cmp.wins}/{cmp.ties}/{cmp.losses}"
        )
        rows.append(
            {
                "table": s.table,
                "bundle": s.bundle,
                "protocol": s.protocol,
                "reading": s.reading,
                "claim": s.claim,
                "measured": measured,
                "interval": cmp.interval_text(4),
                "warning": s.warning,
                **cmp.as_dict(),
            }
        )
    return rows


def _md_row(r: Mapping[str, Any]) -> str:
    reading = r["reading"] + (" (warned)" if r.get("warning") else "")
    cells = (r["bundle"], r["protocol"], reading, r["claim"], r["measured"], r["interval"], f"**{r['verdict']}**")
    return "| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |"


def format_claims_markdown(rows: Sequence[Mapping[str, Any]], readings: Sequence[str] | None = None) -> str:
    """The claims as markdown tables, one per paper table (only ``readings`` when given)."""
    keep = [r for r in rows if readings is None or r["reading"] in readings]
    lines = []
    for table, title in TABLE_TITLES.items():
        rows_t = [r for r in keep if r["table"] == table]
        if not rows_t:
            continue
        held = sum(r["verdict"] == HOLDS for r in rows_t)
        lines += [f"#### {title} ({held} of {len(rows_t)} hold)", ""]
        lines += [
            "| bundle | protocol | reading | claim | measured | mean difference (a - b) [95% paired CI] | verdict |"
        ]
        lines += ["|---|---|---|---|---|---|---|"] + [_md_row(r) for r in rows_t] + [""]
    return "\n".join(lines)


def _verdict_cell(r: Mapping[str, Any] | None) -> str:
    if r is None:
        return ""
    opposite = r["hi"] < 0 if r["direction"] == "greater" else r["lo"] > 0
    word = "**holds**" if r["verdict"] == HOLDS else "no (the opposite holds)" if opposite else "no"

    def num(v: float) -> str:
        return "0" if v == 0 else f"{v:+.3g}"

    return f"{num(r['mean_difference'])} [{num(r['lo'])}, {num(r['hi'])}] {word}"


def format_claims_overview(rows: Sequence[Mapping[str, Any]], reading: str = "default") -> str:
    """A compact view: the claims of one reading, one line per claim and bundle with both protocols side
    by side (mean difference a - b [paired 95% interval], holds / no / no with the interval excluding 0
    on the other side), then every reading's count of
    claims that hold per table."""
    protocols = list(dict.fromkeys(r["protocol"] for r in rows))
    lines = ["| table | claim | bundle | " + " | ".join(protocols) + " |", "|---|---|---|" + "---|" * len(protocols)]
    keyed = {(r["table"], r["claim"], r["bundle"], r["protocol"], r["reading"]): r for r in rows}
    seen = dict.fromkeys((r["table"], r["claim"], r["bundle"]) for r in rows if r["reading"] == reading)
    for table, claim, bundle in seen:
        cells = [_verdict_cell(keyed.get((table, claim, bundle, p, reading))) for p in protocols]
        lines.append(f"| {table} | {claim} | {bundle} | " + " | ".join(cells) + " |")
    readings = list(dict.fromkeys(r["reading"] for r in rows))
    tables = sorted(dict.fromkeys(r["table"] for r in rows), key=lambda t: (len(t), t))
    lines += ["", "| reading | " + " | ".join(f"Table {t}" for t in tables) + " |", "|---|" + "---|" * len(tables)]
    for rd in readings:
        counts = []
        for t in tables:
            sel = [r for r in rows if r["table"] == t and r["reading"] == rd]
            counts.append(f"{sum(r['verdict'] == HOLDS for r in sel)} / {len(sel)}" if sel else "")
        lines.append(f"| {rd} | " + " | ".join(counts) + " |")
    return "\n".join(lines) + "\n"


def paper_claims(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows that are claims of the paper (:data:`PAPER_TABLES`), the ones counted in "N of M claims hold"."""
    return [r for r in rows if r["table"] in PAPER_TABLES]


def _header(meta: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = paper_claims(rows)
    held = sum(r["verdict"] == HOLDS for r in rows)
    settings = meta.get("settings", {})
    lines = [
        "# SMIA reproduction: the paper's claims, settled with paired statistics",
        "",
        (
            f"{held} of {len(rows)} claims hold. A claim holds only when the paired bootstrap 95% interval of the "
            "mean per-case difference (a - b) excludes 0 in its favour; ties are differences within "
            f"{TOLERANCES} per metric. Wall time of this invocation (a resumed run counts what it computed): "
            f"{meta.get('wall_time_s', float('nan')):.0f} s on {meta.get('device', '?')}"
            f"{' (--quick)' if settings.get('quick_mode') else ''}."
        ),
        "",
        "Cases per bundle:",
        "",
    ]
    for bundle, info in meta.get("bundles", {}).items():
        lines.append(
            f"- {bundle} ({info.get('task')}): {info.get('source')}; eps {info.get('eps')} {info.get('eps_unit')}"
        )
    lines += [
        "",
        "Protocols: `projected` = an L-infinity budget eps with step 2.5 eps / T; `paper` = per-step eps, ball T * "
        "eps.",
        "",
    ]
    if meta.get("grid"):
        lines += [f"Grid: {meta['grid']} (the attacks perturb the network input, not the source file's voxels).", ""]
    return lines


def _forest(path: Path, title: str, rows: Sequence[Mapping[str, Any]]) -> Path:
    """One panel per metric (their scales differ): each claim's mean difference and paired interval."""
    plt = pyplot()
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    groups = [[r for r in rows if r["metric"] == m] for m in metrics]
    heights = [0.26 * len(g) + 0.9 for g in groups]
    fig, axes = plt.subplots(
        len(groups), 1, figsize=(9, sum(heights)), gridspec_kw={"height_ratios": heights}, squeeze=False
    )
    for ax, metric, group in zip(axes[:, 0], metrics, groups):
        y = np.arange(len(group))[::-1]
        for yi, r in zip(y, group):
            color = "tab:green" if r["verdict"] == HOLDS else "tab:red"
            ax.plot([r["lo"], r["hi"]], [yi, yi], color=color, linewidth=2)
            ax.plot([r["mean_difference"]], [yi], "o", color=color, markersize=3)
        ax.axvline(0.0, color="grey", linewidth=0.8)
        ax.set_yticks(y)
        ax.set_yticklabels([f"{r['protocol']} {r['reading']}: {r['claim']}" for r in group], fontsize=6)
        ax.set_xlabel(f"{metric}: mean difference a - b, paired 95% interval (green: holds, red: does not)", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def write_claims(
    output_dir: str | Path,
    specs: Sequence[ClaimSpec],
    meta: Mapping[str, Any],
    num_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate ``specs`` and write ``reproduce.md``, ``reproduce.json`` and figures into ``output_dir``."""
    out = Path(output_dir)
    rows = evaluate_claims(specs, num_resamples, seed)
    figures = []
    for table, title in TABLE_TITLES.items():
        for bundle in dict.fromkeys(r["bundle"] for r in rows):
            rows_t = [r for r in rows if r["table"] == table and r["bundle"] == bundle]
            if rows_t:
                figures.append(_forest(out / f"claims_table{table}_{bundle}.png", f"{bundle}: {title}", rows_t).name)
    holds = sum(r["verdict"] == HOLDS for r in paper_claims(rows))
    report = {**dict(meta), "claims": rows, "figures": figures, "holds": holds}
    text = "\n".join(_header(meta, rows)) + "\n### Overview (default reading; holds / total per reading below)\n\n"
    text += format_claims_overview(rows) + "\n### Every claim\n\n" + format_claims_markdown(rows)
    warned = sorted({r["warning"] for r in rows if r.get("warning")})
    if warned:
        text += (
            "\n(warned): the attack warned that this setting collapses:\n\n"
            + "\n".join(f"- {w}" for w in warned)
            + "\n"
        )
    text += "\nFigures: " + ", ".join(figures) + "\n"
    write_json_atomic(out / "reproduce.json", to_jsonable(report), allow_nan=False, trailing_newline=True)
    atomic_write_text(out / "reproduce.md", text)
    return report
