"""Atomic text writes, the run-settings check and the resumable per-case store (``CaseStore``).

A *record* is one case scored under one condition, a flat dict
``{"case_id": str, "attack": "clean" | attack name, "eps": float | None, <metric>: value, ...}``;
:class:`CaseStore` keeps one small JSON file per record so an interrupted run resumes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from monai_smia.io.atomic import atomic_file, write_json_atomic

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


def all_stored_line(what: str, num_cases: int, output_dir: str | Path) -> str:
    """What a rerun that finds every case of ``what`` (a condition, an attack) already stored says."""
    return f"{what}: all {num_cases} cases already stored in {output_dir}; nothing to do."


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
        write_json_atomic(path, new, trailing_newline=True)


@contextlib.contextmanager
def provisional_settings(output_dir: str | Path) -> Iterator[None]:
    """Within this context a run records its settings; if it fails before any case result is stored, the
    ``settings.json`` it wrote (and the folder, if the run made it and left it empty) is removed, so a
    corrected rerun with other settings is not refused by a run that produced nothing."""
    out = Path(output_dir)
    existed, had_settings = out.exists(), (out / RUN_SETTINGS).is_file()
    try:
        yield
    except BaseException:
        if not had_settings and not any((out / "cases").rglob("*.json")):
            (out / RUN_SETTINGS).unlink(missing_ok=True)
            if not existed and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
        raise


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

    def folder(self, attack: str, eps: float | None) -> Path:
        """The folder of one condition's records."""
        return self.cases_dir / _safe_name(str(attack)) / _eps_tag(eps)

    def path(self, attack: str, eps: float | None, case_id: str) -> Path:
        return self.folder(attack, eps) / f"{_safe_name(str(case_id))}.json"

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
        path = self.path(rec["attack"], rec["eps"], rec["case_id"])
        return write_json_atomic(path, to_jsonable(rec, strict=False), trailing_newline=True)

    def has_records(self, attack: str, eps: float | None) -> bool:
        """Whether any record of ``attack`` at ``eps`` is stored (a folder holding at least one record file)."""
        folder = self.folder(attack, eps)
        return folder.is_dir() and any(not p.name.startswith(".") for p in folder.glob("*.json"))

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
