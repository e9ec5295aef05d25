"""Report files of an evaluation: summary.json, the markdown table, the per-case CSV, the eps sweep.

Every file is written atomically, so a crash never leaves a half-written report behind.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_smia.io.atomic import write_json_atomic
from monai_smia.reports.store import atomic_write_text, to_jsonable
from monai_smia.reports.summary import ci_key, summarize_records


def write_summary_json(summary: Mapping[str, Any], path: str | Path) -> Path:
    """``summary.json``: strict JSON, non-finite numbers as ``null``."""
    return write_json_atomic(path, to_jsonable(summary), allow_nan=False, trailing_newline=True)


def _fmt(v: Any, digits: int) -> str:
    if v is None:
        return "n/a"
    v = float(v)
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v != 0 and (abs(v) < 10 ** -(digits - 1) or abs(v) >= 1e5):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}f}"


def _cell(values: Mapping[str, Any], metric: str, with_ci: bool, digits: int, confidence: float) -> str:
    if metric not in values:
        return ""
    text = _fmt(values[metric], digits)
    ci = values.get(ci_key(metric, confidence))
    if with_ci and ci is not None and text != "n/a":
        text += f" [{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]"
    return text


def format_markdown_table(
    summary: Mapping[str, Mapping[str, Any]],
    metrics: Sequence[str] | None = None,
    headline: Sequence[str] | None = None,
    digits: int = 3,
    confidence: float = 0.95,
) -> str:
    """Markdown table: one row per condition (clean, then each attack), one column per metric.

    Args:
        summary: as returned by :func:`summarize_records`.
        metrics: columns (default: every metric present, in order of first appearance).
        headline: metrics whose cells also show the interval, e.g. ``0.912 [0.890, 0.930]``
            (default: all metrics).
        digits: decimals shown.
    """
    if metrics is None:
        seen: dict[str, None] = {}
        for values in summary.values():
            for k in values:
                if k != "num_cases" and not re.search(r"_ci\d+$", k):
                    seen.setdefault(k, None)
        metrics = list(seen)
    show_ci = set(metrics if headline is None else headline)
    header = ["condition", "cases", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for name, values in summary.items():
        cells = [str(name), str(values.get("num_cases", ""))]
        cells += [_cell(values, m, m in show_ci, digits, confidence) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_markdown_table(
    summary: Mapping[str, Mapping[str, Any]], path: str | Path, title: str | None = None, **kwargs: Any
) -> Path:
    """Write :func:`format_markdown_table` (with an optional ``# title`` line) atomically."""
    text = (f"# {title}\n\n" if title else "") + format_markdown_table(summary, **kwargs)
    return atomic_write_text(path, text)


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, tuple)) or hasattr(v, "tolist"):
        v = to_jsonable(v, strict=False)
        return json.dumps(v) if isinstance(v, list) else str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    return str(v)


def write_per_case_csv(records: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Per-case CSV (comma-separated, header row): ``case_id, attack, eps`` then every other key in
    order of first appearance; lists (e.g. logits) as JSON; ``nan``/``inf`` spelled out, missing empty.
    (MONAI's ``MetricsSaver`` writes one tab-separated file per metric; this is one file for all.)"""
    rows = list(records)
    cols: dict[str, None] = {"case_id": None, "attack": None, "eps": None}
    for r in rows:
        for k in r:
            cols.setdefault(k, None)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(cols))
    for r in rows:
        writer.writerow([_csv_value(r.get(c)) for c in cols])
    return atomic_write_text(path, buf.getvalue())


def read_per_case_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read a CSV written by :func:`write_per_case_csv`; numbers become floats, empty cells ``None``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"per-case CSV {path} not found.")
    out = []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rec: dict[str, Any] = {}
            for k, v in row.items():
                if k in ("case_id", "attack"):
                    rec[k] = v
                elif v == "":
                    rec[k] = None
                else:
                    try:
                        rec[k] = float(v)
                    except ValueError:
                        rec[k] = json.loads(v) if v.startswith("[") else v
            out.append(rec)
    return out


def _eps_label(eps: float, eps_scale: float, eps_unit: str) -> str:
    return f"{float(eps) * eps_scale:g}{eps_unit}"


def format_eps_sweep_table(
    summaries_by_eps: Mapping[float, Mapping[str, Mapping[str, Any]]],
    metric: str,
    digits: int = 3,
    confidence: float = 0.95,
    eps_scale: float = 1.0,
    eps_unit: str = "",
) -> str:
    """Markdown table of one metric over budgets: one row per condition, one column per eps.

    Args:
        summaries_by_eps: ``{eps: summary}`` with summaries from :func:`summarize_records`.
        metric: the metric shown (with its interval when present).
        eps_scale, eps_unit: display of eps, e.g. ``255`` and ``"/255"``.
    """
    if not summaries_by_eps:
        raise ValueError("summaries_by_eps is empty: run at least one eps.")
    eps_values = sorted(summaries_by_eps, key=float)
    conditions: dict[str, None] = {}
    for e in eps_values:
        for c in summaries_by_eps[e]:
            conditions.setdefault(c, None)
    header = [f"{metric} \\ eps", *(_eps_label(e, eps_scale, eps_unit) for e in eps_values)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for c in conditions:
        cells = [c] + [_cell(summaries_by_eps[e].get(c, {}), metric, True, digits, confidence) for e in eps_values]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_eps_sweep(
    output_dir: str | Path,
    summaries_by_eps: Mapping[float, Mapping[str, Mapping[str, Any]]],
    metric: str,
    eps_scale: float = 1.0,
    eps_unit: str = "",
    confidence: float = 0.95,
) -> dict[str, Path]:
    """Write the eps sweep: ``eps_sweep.json`` (``{str(eps): summary}``), ``eps_sweep_<metric>.md``
    and the robustness curve ``robustness_<metric>.png`` (metric against budget, one line per attack).

    Returns:
        ``{"json": path, "markdown": path, "figure": path}``.
    """
    from monai_smia.reports.figures import robustness_curve_figure

    out = Path(output_dir)
    paths = {
        "json": write_json_atomic(
            out / "eps_sweep.json",
            to_jsonable({repr(float(e)): s for e, s in sorted(summaries_by_eps.items(), key=lambda kv: float(kv[0]))}),
            allow_nan=False,
            trailing_newline=True,
        ),
        "markdown": atomic_write_text(
            out / f"eps_sweep_{metric}.md",
            format_eps_sweep_table(
                summaries_by_eps, metric, confidence=confidence, eps_scale=eps_scale, eps_unit=eps_unit
            ),
        ),
        "figure": robustness_curve_figure(
            out / f"robustness_{metric}.png",
            summaries_by_eps,
            metric,
            eps_scale=eps_scale,
            eps_unit=eps_unit,
            confidence=confidence,
        ),
    }
    return paths


def write_reports(
    output_dir: str | Path,
    records: Sequence[Mapping[str, Any]],
    metrics: Sequence[str] | None = None,
    headline: Sequence[str] | None = None,
    set_metrics: Mapping[str, Callable[[Sequence[Mapping[str, Any]]], float]] | None = None,
    title: str | None = None,
    num_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Summarise ``records`` and write ``summary.json``, ``summary.md`` and ``per_case.csv`` in ``output_dir``.

    Returns:
        ``{"summary": summary, "json": path, "markdown": path, "csv": path}``.
    """
    out = Path(output_dir)
    summary = summarize_records(
        records, metrics=metrics, set_metrics=set_metrics, num_resamples=num_resamples, seed=seed
    )
    columns = None if metrics is None else [*metrics, *(set_metrics or {})]
    return {
        "summary": summary,
        "json": write_summary_json(summary, out / "summary.json"),
        "markdown": write_markdown_table(summary, out / "summary.md", title=title, metrics=columns, headline=headline),
        "csv": write_per_case_csv(records, out / "per_case.csv"),
    }


# ---------------------------------------------------------------------------------------------
# resumable per-case results


