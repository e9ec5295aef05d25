"""The detection rows of ``monai-smia reproduce``: the paper's Tables 1 and 6 on the detection victim.

``lung_tumour_det`` (a MONAI RetinaNet on MSD lung-tumour CT patches) is attacked on its test patches
with FGSM, PGD, DEV, SMIA and DAG at the bundle's own budget (``configs/evaluate.json``), through
:func:`monai_smia.apps.detection.evaluate.run_detection_evaluation` (records stored per case: a rerun
resumes). The metric is AP at IoU 0.5 (MONAI ``COCOMetric``), a set-level metric, so each claim is
settled with a paired bootstrap of the AP difference over images
(:func:`monai_smia.metrics.paired.compare_paired_statistic`). Only the ``projected`` protocol is run:
the detection attacks take an L-infinity budget.
"""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path
from typing import Any

from monai_smia.apps.detection.metrics import DetectionSetMetrics
from monai_smia.metrics.paired import PairedComparison, compare_paired_statistic
from monai_smia.reports.claims import ClaimSpec
from monai_smia.reports.store import CaseStore

__all__ = [
    "DETECTION_ATTACKS_REPRODUCED",
    "DETECTION_BUNDLE",
    "DETECTION_PROTOCOL",
    "detection_claims",
    "prepare_detection_data",
    "run_detection_bundle",
]

logger = logging.getLogger(__name__)

DETECTION_BUNDLE = "lung_tumour_det"
DETECTION_PROTOCOL = "projected"
#: the conditions of the detection rows (DEV: SMIA with alpha = 0)
DETECTION_ATTACKS_REPRODUCED = ("FGSM", "PGD", "DEV", "SMIA", "DAG")
_METRIC = "ap_iou_0.5"


def prepare_detection_data(data_dir: str | os.PathLike | None, cache: str | os.PathLike) -> tuple[Path, str]:
    """The detection dataset (:mod:`monai_smia.apps.data_prep.msd_lung_det`), prepared once into ``cache``
    from ``data_dir`` (the data root holding ``ct/msd_lung_patches``), and a sentence naming its source.

    Raises:
        FileNotFoundError: no ``data_dir``, or it lacks the MSD lung patches.
    """
    from monai_smia.apps.data_prep.msd_lung_det import find_patch_dir, prepare_msd_lung_det
    from monai_smia.io.cache import source_key

    if data_dir is None:
        raise FileNotFoundError(f"{DETECTION_BUNDLE} needs --data-dir holding ct/msd_lung_patches (no download).")
    src = find_patch_dir(data_dir)
    out = Path(cache) / f"msd_lung_det_{source_key(src)}"
    if not (out / "datalist.json").is_file():
        prepare_msd_lung_det(src, out)
    return out, f"MSD Task06 lung-tumour test patches from {src} (monai_smia.apps.data_prep.msd_lung_det)"


def _bundle_eps(bundle: Path) -> float:
    from monai_smia.apps.detection.evaluate import detection_defaults

    return float(detection_defaults(bundle)["eps"])


def run_detection_bundle(settings: Any, out: Path, data_dir: Any, cache: Path, device: str) -> dict[str, Any]:
    """Run (or resume) the detection conditions into ``out/lung_tumour_det/projected``; returns the bundle's info
    for the report (``task``, ``source``, ``num_cases``, ``eps``...)."""
    from monai_smia.apps.detection.evaluate import run_detection_evaluation
    from monai_smia.bundle.victim import resolve_bundle
    from monai_smia.reports.provenance import file_sha256

    bundle = resolve_bundle(DETECTION_BUNDLE)
    if data_dir is None:  # the MSD patches have no download here: the other bundles still run
        logger.warning("%s skipped: it needs --data-dir holding ct/msd_lung_patches", DETECTION_BUNDLE)
        return {"task": "detection", "source": "not run: no --data-dir with ct/msd_lung_patches", "num_cases": 0,
                "skipped": True}  # fmt: skip
    dataset_dir, source = prepare_detection_data(data_dir, cache)
    max_cases = settings.max_cases.get(DETECTION_BUNDLE)
    summary = run_detection_evaluation(
        bundle, dataset_dir, out / DETECTION_BUNDLE / DETECTION_PROTOCOL, attacks=DETECTION_ATTACKS_REPRODUCED,
        num_iter=settings.num_iter, max_cases=max_cases, seed=settings.seed, device=device, num_figure_cases=0,
        num_resamples=min(settings.num_resamples, 200),
    )  # fmt: skip
    num_cases = int(summary["clean"]["num_cases"])
    return {
        "task": "detection",
        "source": f"{source}; {num_cases} test patches; AP@0.5 compared by a paired bootstrap over patches",
        "num_cases": num_cases,
        "eps": _bundle_eps(bundle),
        "eps_unit": "input ([0, 1] intensity)",
        "eps_network": _bundle_eps(bundle),
        "checkpoint_sha256": file_sha256(bundle / "models" / "model.pt"),
    }


def _compare(
    a: dict[str, Any], b: dict[str, Any], names: tuple[str, str], direction: str, num_resamples: int, seed: int
) -> PairedComparison:
    """AP@0.5 of ``a`` vs ``b`` (``{case_id: record}``, the same cases), paired over images."""
    ids = sorted(a)
    if sorted(b) != ids:
        raise ValueError(f"{names[0]} and {names[1]} were not run on the same detection cases.")
    ra, rb = [a[k] for k in ids], [b[k] for k in ids]
    ma, mb = DetectionSetMetrics(), DetectionSetMetrics()  # each keeps its own matching cache
    return compare_paired_statistic(
        lambda idx: ma.values(ra, idx)[_METRIC], lambda idx: mb.values(rb, idx)[_METRIC], len(ids),
        direction=direction, tolerance=1e-4, names=names, metric=_METRIC, num_resamples=num_resamples, seed=seed,
    )  # fmt: skip


def detection_claims(output_dir: str | os.PathLike) -> list[ClaimSpec]:
    """The detection rows of Tables 1 and 6 from the records stored by :func:`run_detection_bundle`:
    SMIA leaves a lower AP@0.5 than DEV (Table 1), and a larger AP@0.5 drop than FGSM, PGD and DAG (Table 6)."""
    from monai_smia.bundle.victim import resolve_bundle

    store = CaseStore(Path(output_dir) / DETECTION_BUNDLE / DETECTION_PROTOCOL)
    eps = _bundle_eps(resolve_bundle(DETECTION_BUNDLE))
    records: dict[str, dict[str, Any]] = {}
    for r in store.records():
        if r.get("eps") is not None and abs(float(r["eps"]) - eps) <= 1e-12:
            records.setdefault(r["attack"], {})[r["case_id"]] = r
    smia = records.get("SMIA", {})
    rows = [("1", "DEV+STA is a stronger attack than DEV alone (lower AP@0.5)", "DEV", "less")]
    rows += [("6", f"SMIA causes a larger AP@0.5 drop than {b}", b, "less") for b in ("FGSM", "PGD", "DAG")]
    specs = []
    for table, claim, other, direction in rows:
        b = records.get(other, {})
        keep = sorted(set(smia) & set(b))
        a_rec, b_rec = {k: smia[k] for k in keep}, {k: b[k] for k in keep}
        specs.append(
            ClaimSpec(
                table=table, bundle=DETECTION_BUNDLE, protocol=DETECTION_PROTOCOL, reading="default", claim=claim,
                a="SMIA", b=other, metric=_METRIC, metric_label="AP@0.5", direction=direction,
                compare=partial(_compare, a_rec, b_rec, ("SMIA", other), direction),
            )
        )  # fmt: skip
    return specs
