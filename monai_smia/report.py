"""Reports of a robustness evaluation: summary.json, a markdown table, a per-case CSV, provenance, an
eps sweep and resumable per-case results.

Data model: a *record* is one case scored under one condition, a flat dict
``{"case_id": str, "attack": "clean" | attack name, "eps": float | None, <metric>: value, ...}``.
Records are what :class:`CaseStore` keeps (one small JSON file each, so an interrupted run resumes),
what :func:`write_per_case_csv` writes, and what :func:`summarize_records` turns into the summary
``{"clean": {metric: value, metric + "_ci95": [lo, hi], "num_cases": n}, "<attack>": {...}}``.

Every file is written atomically (a temporary name in the same folder, then :func:`os.replace`),
so a crash never leaves a half-written report behind.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
import logging
import math
import os
import platform
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from monai_smia.io.atomic import atomic_file
from monai_smia.metrics import (
    bootstrap_ci,
    bootstrap_indices,
    bootstrap_statistic_ci,
    one_vs_rest_fpr,
    percentile_interval,
    resampled_one_vs_rest_fpr,
    resampled_roc_auc_one_vs_rest,
    roc_auc_one_vs_rest,
)

__all__ = [
    "RESERVED_KEYS",
    "CaseStore",
    "SetMetric",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "classification_set_metrics",
    "collect_provenance",
    "file_sha256",
    "format_eps_sweep_table",
    "format_markdown_table",
    "read_per_case_csv",
    "summarize_records",
    "check_run_settings",
    "to_jsonable",
    "write_eps_sweep",
    "write_markdown_table",
    "write_per_case_csv",
    "write_provenance",
    "write_reports",
    "write_summary_json",
]

logger = logging.getLogger(__name__)

#: record keys that identify a case or hold raw outputs; they are never summarised as metrics.
RESERVED_KEYS = ("case_id", "attack", "eps", "pred", "label", "logits", "probs")


# ---------------------------------------------------------------------------------------------
# atomic files


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and :func:`os.replace`."""
    path = Path(path)
    with atomic_file(path, suffix=".tmp") as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomic UTF-8 text write (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any, strict: bool = True) -> Any:
    """Plain-Python copy of ``obj`` for JSON: numpy/torch scalars and arrays to numbers and lists,
    paths to strings; with ``strict``, ``nan`` and ``inf`` become ``None`` (valid JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v, strict) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, strict) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy and torch
        return to_jsonable(obj.tolist(), strict)
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return None if strict and not math.isfinite(obj) else float(obj)
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def atomic_write_json(path: str | Path, obj: Any, strict: bool = True) -> Path:
    """Atomic JSON write; ``strict`` writes non-finite numbers as ``null`` (see :func:`to_jsonable`)."""
    text = json.dumps(to_jsonable(obj, strict), indent=2, allow_nan=not strict)
    return atomic_write_text(path, text + "\n")


# ---------------------------------------------------------------------------------------------
# summary


def _as_float(v: Any) -> float:
    if v is None:
        return float("nan")
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _is_metric_value(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool))


def _ci_key(metric: str, confidence: float) -> str:
    return f"{metric}_ci{round(confidence * 100):d}"


def _group_records(records: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        if "attack" not in r:
            raise ValueError(f"record {dict(r)!r} has no 'attack' key (use 'clean' for unattacked cases).")
        groups.setdefault(str(r["attack"]), []).append(r)
    order = (["clean"] if "clean" in groups else []) + [k for k in groups if k != "clean"]
    return {k: groups[k] for k in order}


def summarize_records(
    records: Iterable[Mapping[str, Any]],
    metrics: Sequence[str] | None = None,
    set_metrics: Mapping[str, Callable[[Sequence[Mapping[str, Any]]], float]] | None = None,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Mean of every per-case metric per condition, with percentile bootstrap intervals over cases.

    Args:
        records: per-case records (see module docstring); one condition per distinct ``"attack"``.
        metrics: per-case metric keys to summarise (default: every numeric key not in
            :data:`RESERVED_KEYS`, in order of first appearance). ``None``/``nan`` values mean "not
            defined for this case" and are left out of the mean and its interval.
        set_metrics: metrics of the whole set (e.g. :func:`classification_set_metrics`): each is called
            with a list of records and returns a float; its interval resamples the records (vectorised
            when it is a :class:`SetMetric`, else one call per resample).
        num_resamples, confidence, seed: bootstrap settings (:func:`monai_smia.metrics.bootstrap_ci`).

    Returns:
        ``{condition: {metric: mean, metric + "_ci95": [lo, hi], "num_cases": n}}``, ``"clean"`` first.
    """
    groups = _group_records(records)
    if metrics is None:
        seen: dict[str, None] = {}
        for rows in groups.values():
            for r in rows:
                for k, v in r.items():
                    if k not in RESERVED_KEYS and _is_metric_value(v):
                        seen.setdefault(k, None)
        metrics = list(seen)
    summary: dict[str, dict[str, Any]] = {}
    for name, rows in groups.items():
        out: dict[str, Any] = {"num_cases": len({str(r.get("case_id", i)) for i, r in enumerate(rows)})}
        for m in metrics:
            if not any(m in r for r in rows):
                continue
            v = np.array([_as_float(r.get(m)) for r in rows], dtype=np.float64)
            finite_or_inf = v[~np.isnan(v)]
            out[m] = float(finite_or_inf.mean()) if finite_or_inf.size else float("nan")
            out[_ci_key(m, confidence)] = list(bootstrap_ci(v, num_resamples, confidence, seed))
        for m, fn in (set_metrics or {}).items():
            out[m] = float(fn(rows))
            if hasattr(fn, "bootstrap"):  # vectorised over resamples (SetMetric)
                stats = fn.bootstrap(rows, bootstrap_indices(len(rows), num_resamples, seed))
                ci = (
                    percentile_interval(np.asarray(stats, dtype=np.float64), confidence)
                    if rows
                    else (math.nan, math.nan)
                )
            else:
                ci = bootstrap_statistic_ci(
                    lambda idx, fn=fn, rows=rows: fn([rows[i] for i in idx]), len(rows), num_resamples, confidence, seed
                )
            out[_ci_key(m, confidence)] = list(ci)
        summary[name] = out
    return summary


class SetMetric:
    """A metric of a whole set of records (not a mean over cases), with a vectorised bootstrap.

    Args:
        value: ``(outputs (N, K) tensor, labels (N,) tensor) -> float``, the point value (MONAI).
        resampled: ``(outputs, labels, idx (R, n)) -> (R,)`` values of resamples, equal to ``value`` on each.
        output_key: record key holding each case's output vector (logits or probabilities).
    """

    def __init__(
        self,
        value: Callable[[Any, Any], float],
        resampled: Callable[[Any, Any, np.ndarray], np.ndarray],
        output_key: str = "logits",
    ) -> None:
        self.value, self.resampled, self.output_key = value, resampled, output_key

    def arrays(self, rows: Sequence[Mapping[str, Any]]) -> tuple[Any, Any]:
        import torch

        try:
            out = torch.tensor(np.array([np.ravel(np.asarray(r[self.output_key], dtype=np.float64)) for r in rows]))
            lab = torch.tensor([int(r["label"]) for r in rows], dtype=torch.long)
        except KeyError as err:
            raise ValueError(
                f"set metrics need records with {self.output_key!r} and 'label' keys; missing {err}."
            ) from err
        return out, lab

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> float:
        if not rows:
            return math.nan
        return float(self.value(*self.arrays(rows)))

    def bootstrap(self, rows: Sequence[Mapping[str, Any]], idx: np.ndarray) -> np.ndarray:
        if not rows:
            return np.full(len(idx), np.nan)
        return np.asarray(self.resampled(*self.arrays(rows), idx), dtype=np.float64)


def classification_set_metrics(output_key: str = "logits", logits: bool = True) -> dict[str, SetMetric]:
    """Set-level classification metrics read from records holding ``output_key`` (each case's output
    vector) and ``"label"``: ``fpr_one_vs_rest`` (macro, as MONAI ``ConfusionMatrixMetric("fpr")``) and
    ``roc_auc_one_vs_rest`` (macro, MONAI ``compute_roc_auc``), for ``set_metrics`` of
    :func:`summarize_records`."""
    thr = 0.0 if logits else 0.5
    return {
        "fpr_one_vs_rest": SetMetric(
            lambda o, y: one_vs_rest_fpr(o, y, threshold=thr)[0],
            lambda o, y, idx: resampled_one_vs_rest_fpr(o, y, idx, threshold=thr),
            output_key,
        ),
        "roc_auc_one_vs_rest": SetMetric(
            lambda o, y: roc_auc_one_vs_rest(o, y, logits=logits),
            lambda o, y, idx: resampled_roc_auc_one_vs_rest(o, y, idx, logits=logits),
            output_key,
        ),
    }


def write_summary_json(summary: Mapping[str, Any], path: str | Path) -> Path:
    """``summary.json``: strict JSON, non-finite numbers as ``null``."""
    return atomic_write_json(path, summary, strict=True)


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
    ci = values.get(_ci_key(metric, confidence))
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


# ---------------------------------------------------------------------------------------------
# per-case CSV


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


# ---------------------------------------------------------------------------------------------
# provenance


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cannot hash {path}: no such file (check the checkpoint path).")
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def collect_provenance(
    seed: int | None = None,
    checkpoint: str | Path | None = None,
    data_source: Any = None,
    attack_settings: Any = None,
    command_line: Sequence[str] | str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What produced a report: package versions (monai_smia, monai, torch, numpy, python), platform,
    device, seed, checkpoint path and sha256, data source, attack settings, command line, UTC time."""
    import monai
    import torch

    import monai_smia

    device: dict[str, Any] = {"cuda_available": bool(torch.cuda.is_available())}
    if torch.cuda.is_available():
        device["cuda_device"] = torch.cuda.get_device_name(0)
        device["cuda_version"] = torch.version.cuda
    prov: dict[str, Any] = {
        "versions": {
            "monai_smia": getattr(monai_smia, "__version__", None) or _version("monai-smia"),
            "monai": monai.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "pytorch-ignite": _version("pytorch-ignite"),
            "python": platform.python_version(),
        },
        "platform": platform.platform(),
        "device": device,
        "seed": seed,
        "checkpoint": None,
        "data_source": data_source,
        "attack_settings": attack_settings,
        "command_line": list(sys.argv) if command_line is None else command_line,
        "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if checkpoint is not None:
        prov["checkpoint"] = {"path": str(checkpoint), "sha256": file_sha256(checkpoint)}
    if extra:
        prov.update(extra)
    return prov


def write_provenance(path: str | Path, **kwargs: Any) -> Path:
    """Write :func:`collect_provenance` (same keyword arguments) to ``path`` as JSON, atomically."""
    return atomic_write_json(path, collect_provenance(**kwargs), strict=True)


# ---------------------------------------------------------------------------------------------
# eps sweep


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
    from monai_smia.figures import robustness_curve_figure

    out = Path(output_dir)
    paths = {
        "json": atomic_write_json(
            out / "eps_sweep.json",
            {repr(float(e)): s for e, s in sorted(summaries_by_eps.items(), key=lambda kv: float(kv[0]))},
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


def _safe_name(text: str) -> str:
    """A file-system safe, collision-free name for an attack name or case id."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", text).strip(".") or "_"
    if safe != text or len(safe) > 100:
        safe = f"{safe[:80]}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:10]}"
    return safe


def _eps_tag(eps: float | None) -> str:
    return "eps_none" if eps is None else f"eps_{float(eps)!r}"


def _same_eps(a: Any, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


RUN_SETTINGS = "settings.json"


def check_run_settings(output_dir: str | Path, settings: Mapping[str, Any], write: bool = True) -> None:
    """Refuse an ``output_dir`` that holds results of other settings; record ``settings`` there otherwise.

    Every stored case of a run is only valid for the settings it was computed with (bundle,
    checkpoint hash, attack parameters, data split, ...). A rerun with equal settings resumes; a
    rerun with any other value is refused, as is a folder holding case results but no settings.

    Raises:
        ValueError: naming ``output_dir`` and every setting that differs.
    """
    out = Path(output_dir)
    path = out / RUN_SETTINGS
    new = to_jsonable(dict(settings), strict=False)
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{str(path)!r} is unreadable ({e}); choose another output folder or delete it.") from e
        diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        if diff:
            raise ValueError(
                f"output folder {str(out)!r} holds results of other settings ("
                + "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in diff)
                + "); choose another output folder, or rerun with the same settings to resume."
            )
        return
    if (out / "cases").is_dir() and any((out / "cases").rglob("*.json")):
        raise ValueError(
            f"output folder {str(out)!r} holds case results without {RUN_SETTINGS} (an older or foreign run); "
            "choose another output folder."
        )
    if write:
        atomic_write_json(path, new, strict=False)


class CaseStore:
    """Per-case results kept as one small JSON file per ``(attack, eps, case)`` so a rerun resumes.

    Layout: ``root/cases/<attack>/eps_<eps>/<case_id>.json`` (names made file-system safe). Files are
    written atomically; a file that cannot be read back, or whose identity keys do not match, counts as
    not done and is recomputed (overwritten) by the caller.

    Example::

        store = CaseStore(output_dir)
        for case_id in store.pending("SMIA", eps, all_ids):
            store.save({"case_id": case_id, "attack": "SMIA", "eps": eps, **compute(case_id)})
        records = store.records()
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.cases_dir = self.root / "cases"

    def path(self, attack: str, eps: float | None, case_id: str) -> Path:
        return self.cases_dir / _safe_name(str(attack)) / _eps_tag(eps) / f"{_safe_name(str(case_id))}.json"

    def load(self, attack: str, eps: float | None, case_id: str) -> dict[str, Any] | None:
        """The stored record, or ``None`` when absent or unreadable (then logged and to be recomputed)."""
        p = self.path(attack, eps, case_id)
        if not p.is_file():
            return None
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            logger.warning("ignoring unreadable case result %s (%s); it will be recomputed", p, err)
            return None
        if not (
            isinstance(rec, dict)
            and rec.get("case_id") == str(case_id)
            and rec.get("attack") == str(attack)
            and _same_eps(rec.get("eps"), eps)
        ):
            logger.warning("ignoring case result %s: it does not belong to (%s, %s, %s)", p, attack, eps, case_id)
            return None
        return rec

    def is_done(self, attack: str, eps: float | None, case_id: str) -> bool:
        return self.load(attack, eps, case_id) is not None

    def pending(self, attack: str, eps: float | None, case_ids: Iterable[str]) -> list[str]:
        """The case ids (in the given order) without a valid stored result."""
        return [c for c in case_ids if not self.is_done(attack, eps, c)]

    def save(self, record: Mapping[str, Any]) -> Path:
        """Store one record; it must hold ``case_id`` and ``attack`` (``eps`` defaults to ``None``)."""
        missing = [k for k in ("case_id", "attack") if k not in record]
        if missing:
            raise ValueError(f"CaseStore.save: record lacks {missing}; every record needs 'case_id' and 'attack'.")
        rec = dict(record)
        rec["case_id"], rec["attack"] = str(rec["case_id"]), str(rec["attack"])
        rec["eps"] = None if rec.get("eps") is None else float(rec["eps"])
        # internal file: keep nan/inf (Python's json reads them back)
        return atomic_write_json(self.path(rec["attack"], rec["eps"], rec["case_id"]), rec, strict=False)

    def records(self, attack: str | None = None, eps: float | None | str = "any") -> list[dict[str, Any]]:
        """All valid stored records (optionally of one attack and/or one eps), sorted by attack, eps, case."""
        out = []
        if not self.cases_dir.is_dir():
            return out
        for p in sorted(self.cases_dir.glob("*/eps_*/*.json")):
            if p.name.startswith("."):
                continue
            try:
                rec = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                logger.warning("ignoring unreadable case result %s", p)
                continue
            if not isinstance(rec, dict) or "case_id" not in rec or "attack" not in rec:
                continue
            if attack is not None and rec["attack"] != attack:
                continue
            if eps != "any" and not _same_eps(rec.get("eps"), eps):  # type: ignore[arg-type]
                continue
            out.append(rec)
        out.sort(
            key=lambda r: (
                r["attack"] != "clean",
                r["attack"],
                -1.0 if r.get("eps") is None else float(r["eps"]),
                r["case_id"],
            )
        )
        return out
