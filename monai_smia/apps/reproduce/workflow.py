"""``monai-smia reproduce``: the claims of the SMIA paper (Qi et al., ICLR 2021, arXiv 2103.05232),
settled on this project's victims with paired statistics.

For each bundle (lung CT 2D slice-wise, RetinaMNIST, MNIST) and each protocol (a projected budget,
and the paper's per-step epsilon), it attacks the same test cases with FGSM, PGD, DEV, every SMIA
reading, DeepFool (classifiers) or DAG (segmentation), and the sweeps of the paper's Tables 2-4
(iterations, eps, alpha). Per-case results are stored as they are computed (a rerun resumes; a
rerun with other settings is refused), then :mod:`monai_smia.reports.claims` compares the methods
case by case and writes ``reproduce.md``, ``reproduce.json`` and figures. The lung-tumour detector adds
the detection rows of Tables 1 and 6 (:mod:`~monai_smia.apps.reproduce.detection`: AP@0.5, paired over
patches, the projected budget only).

Example::

    monai-smia reproduce --data-dir ../shared/data --output out/reproduce --quick
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from monai_smia.apps.devices import run_device
from monai_smia.apps.reproduce.data import REPRODUCE_BUNDLES, load_cases, prepare_bundle_data
from monai_smia.apps.reproduce.detection import DETECTION_BUNDLE, detection_claims, run_detection_bundle
from monai_smia.apps.reproduce.plan import bundle_claims, bundle_conditions
from monai_smia.apps.reproduce.run import PROTOCOLS, READINGS, run_clean, run_condition
from monai_smia.bundle.victim import load_victim
from monai_smia.io.cache import default_cache
from monai_smia.io.paths import check_folder, check_output_outside
from monai_smia.io.units import resolve_bounds, resolve_eps_scale
from monai_smia.reports.claims import write_claims
from monai_smia.reports.provenance import file_sha256
from monai_smia.reports.store import CaseStore, check_run_settings

__all__ = ["BUNDLE_EPS", "ReproduceSettings", "reproduce_from_config", "run_reproduce"]

logger = logging.getLogger(__name__)

#: each bundle's budget (docs/design.md, section 1, default budgets) and its unit
BUNDLE_EPS: dict[str, tuple[float, str]] = {
    "lung_ct_seg": (20.0, "HU"),
    "retina_dr_cls": (1.0, "/255"),
    "mnist_cls": (0.1, ""),
}


@dataclass
class ReproduceSettings:
    """What a reproduction runs; :meth:`quick` is the under-10-minutes subset.

    Attributes:
        bundles, protocols, readings: what is covered (defaults: all).
        max_cases: per bundle, the first test cases kept (``None``: all).
        max_slices: lung volumes keep this many axial slices, the slab with the most lung (``None``: all).
        num_iter, alpha: the base setting (the paper's T = 10, alpha = 1).
        iterations, eps_factors, alphas: the sweeps of Tables 2, 3 (multiples of the bundle's eps) and 4.
        dag_max_iter: DAG's iteration cap (the paper's 200 cut to bound the cost).
        worst_case_queries: Square's queries inside the worst case (AutoAttack's 5000; ``quick``: 500).
        num_resamples, seed: of the paired bootstrap and the random starts.
        batch_size, slice_batch_size: images (classification) or axial slices (segmentation) per attack call.
    """

    bundles: tuple[str, ...] = REPRODUCE_BUNDLES
    protocols: tuple[str, ...] = PROTOCOLS
    readings: tuple[str, ...] = tuple(READINGS)
    max_cases: dict[str, int | None] = field(
        default_factory=lambda: {"mnist_cls": 500, "retina_dr_cls": None, "lung_ct_seg": None, DETECTION_BUNDLE: None}
    )
    max_slices: int | None = 16
    num_iter: int = 10
    alpha: float = 1.0
    iterations: tuple[int, ...] = (1, 2, 5, 10, 20)
    eps_factors: tuple[float, ...] = (0.5, 1.0, 2.0)
    alphas: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
    dag_max_iter: int = 50
    worst_case_queries: int = 5000
    num_resamples: int = 1000
    seed: int = 0
    batch_size: int = 250
    slice_batch_size: int = 32
    quick_mode: bool = False

    @classmethod
    def quick(cls, **overrides: Any) -> ReproduceSettings:
        """Fewer cases (64 MNIST and RetinaMNIST images, 4 axial slices of 2 lung volumes, 32 detection patches),
        sweep points (iterations 1, 5, 10; eps x0.5, x1) and Square queries in the worst case (500)."""
        base = cls(
            max_cases={"mnist_cls": 64, "retina_dr_cls": 64, "lung_ct_seg": 2, DETECTION_BUNDLE: 32},
            max_slices=4,
            iterations=(1, 5, 10),
            eps_factors=(0.5, 1.0),
            worst_case_queries=500,
            quick_mode=True,
        )
        return replace(base, **overrides)

    def check(self) -> None:
        """Refuse unknown names and sweeps without the base setting (one-line errors naming the argument)."""
        for name, given, known in (
            ("bundles", self.bundles, REPRODUCE_BUNDLES),
            ("protocols", self.protocols, PROTOCOLS),
            ("readings", self.readings, tuple(READINGS)),
        ):
            unknown = [g for g in given if g not in known]
            if unknown or not given:
                raise ValueError(f"{name}: {unknown or 'none given'}; choose from {', '.join(known)}.")
        if self.num_iter not in self.iterations:
            raise ValueError(f"iterations {self.iterations} must include num_iter={self.num_iter} (the base setting).")
        if 1.0 not in self.eps_factors or 0.0 not in self.alphas or self.alpha not in self.alphas:
            raise ValueError("eps_factors must include 1.0, and alphas must include 0.0 and alpha (the base setting).")


def _bundle_eps(bundle: str, victim: Any) -> tuple[float, dict[str, Any]]:
    value, unit = BUNDLE_EPS[bundle]
    scale, how = resolve_eps_scale(unit, victim.preprocessing, victim.config, bundle, metadata=victim.metadata)
    return value * scale, {"eps": value, "eps_unit": unit or "input", "eps_network": value * scale, **how}


def _run_bundle(
    bundle: str, settings: ReproduceSettings, out: Path, data_dir: Any, cache: Path, device: str
) -> dict[str, Any]:
    if bundle == DETECTION_BUNDLE:  # the detection rows (Tables 1 and 6): its own runner and set-level AP
        return run_detection_bundle(settings, out, data_dir, cache, device)
    dataset_dir, source = prepare_bundle_data(bundle, data_dir, cache)
    victim = load_victim(bundle, dataset_dir, device=device)
    cases = load_cases(victim, dataset_dir, settings.max_cases.get(bundle), source, settings.max_slices)
    eps, eps_info = _bundle_eps(bundle, victim)
    bounds, _ = resolve_bounds("auto", victim.preprocessing)
    batch = settings.batch_size if victim.task == "classification" else settings.slice_batch_size
    options = {
        "bounds": bounds,
        "batch_size": batch,
        "seed": settings.seed,
        "dag_max_iter": settings.dag_max_iter,
        "num_queries": settings.worst_case_queries,
    }
    info: dict[str, Any] = {
        "task": victim.task,
        "source": cases.source,
        "num_cases": len(cases.ids),
        "bounds": bounds,
        **eps_info,
    }
    info["checkpoint_sha256"] = file_sha256(victim.checkpoint)
    for protocol in settings.protocols:
        store = CaseStore(out / bundle / protocol)
        run_clean(store, victim, cases, batch)
        for cond in bundle_conditions(victim.task, settings):
            t0 = time.perf_counter()
            run_condition(store, victim, cases, cond, protocol, eps * cond.eps_factor, options)
            logger.info("%s %s %s: %.1f s", bundle, protocol, cond.key, time.perf_counter() - t0)
    return info


def run_reproduce(
    output_dir: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    settings: ReproduceSettings | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) the reproduction into ``output_dir`` and write its claims; returns the claims report.

    Raises:
        ValueError: ``output_dir`` holds results of other settings, or the settings are invalid.
    """
    settings = settings or ReproduceSettings()
    settings.check()
    out = Path(output_dir)
    data_dir = data_dir if data_dir is not None else os.environ.get("MONAI_SMIA_DATA")
    if data_dir is not None:
        check_folder(data_dir, "data_dir (--data-dir)", "point it at a folder laid out like the data folder")
        check_output_outside(out, data_dir, "output_dir", "data_dir")
    cache = check_folder(cache if cache is not None else default_cache(), "cache (--cache)", may_be_missing=True)
    out.mkdir(parents=True, exist_ok=True)
    check_run_settings(out, {"reproduce": asdict(settings)})
    device = str(run_device(device))
    t0 = time.perf_counter()
    bundles = {b: _run_bundle(b, settings, out, data_dir, cache, device) for b in settings.bundles}
    claims = []
    for bundle, info in bundles.items():
        if bundle == DETECTION_BUNDLE:
            claims += [] if info.get("skipped") else detection_claims(out)
            continue
        for protocol in settings.protocols:
            store = CaseStore(out / bundle / protocol)
            claims += bundle_claims(bundle, info["task"], protocol, settings, store.records())
    meta = {"settings": asdict(settings), "bundles": bundles, "wall_time_s": time.perf_counter() - t0, "device": device}
    meta["grid"] = "network"  # every attack here perturbs the network input (2D slices for lung CT), as the paper does
    return write_claims(out, claims, meta, num_resamples=settings.num_resamples, seed=settings.seed)


def reproduce_from_config(
    output_dir: str,
    data_dir: str | None = None,
    cache: str | None = None,
    quick: bool = False,
    device: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Entry point of the bundles' ``configs/reproduce.json`` (``python -m monai.bundle run``)."""
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items() if v is not None}
    settings = ReproduceSettings.quick(**overrides) if quick else replace(ReproduceSettings(), **overrides)
    return run_reproduce(output_dir, data_dir=data_dir, cache=cache, settings=settings, device=device)
