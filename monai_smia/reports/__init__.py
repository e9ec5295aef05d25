"""Reports of a robustness evaluation: the per-case store, summaries, tables, provenance and figures."""

from __future__ import annotations

from monai_smia.reports.figures import (
    case_figure,
    pick_axial_slice,
    robustness_curve_figure,
    save_figure,
    trace_curves_figure,
)
from monai_smia.reports.provenance import collect_provenance, file_sha256, write_provenance
from monai_smia.reports.store import (
    RESERVED_KEYS,
    RUN_SETTINGS,
    CaseStore,
    all_stored_line,
    atomic_write_bytes,
    atomic_write_text,
    check_run_settings,
    provisional_settings,
    to_jsonable,
)
from monai_smia.reports.summary import SetMetric, ci_key, classification_set_metrics, summarize_records
from monai_smia.reports.tables import (
    format_eps_sweep_table,
    format_markdown_table,
    read_per_case_csv,
    write_eps_sweep,
    write_markdown_table,
    write_per_case_csv,
    write_reports,
    write_summary_json,
)

__all__ = [
    "RESERVED_KEYS",
    "RUN_SETTINGS",
    "CaseStore",
    "all_stored_line",
    "SetMetric",
    "atomic_write_bytes",
    "atomic_write_text",
    "case_figure",
    "check_run_settings",
    "provisional_settings",
    "ci_key",
    "classification_set_metrics",
    "collect_provenance",
    "file_sha256",
    "format_eps_sweep_table",
    "format_markdown_table",
    "pick_axial_slice",
    "read_per_case_csv",
    "robustness_curve_figure",
    "save_figure",
    "summarize_records",
    "to_jsonable",
    "trace_curves_figure",
    "write_eps_sweep",
    "write_markdown_table",
    "write_per_case_csv",
    "write_provenance",
    "write_reports",
    "write_summary_json",
]
