"""Robustness evaluation of a MONAI bundle's network: clean data and each attack of a list, at the same
budget and iteration count, with MONAI metrics side by side.

Each condition (clean, then attack x eps) runs through the bundle's own evaluator config: its
``train.json`` with its ``evaluate.json`` override merged (:mod:`monai_smia.apps.evaluate.wiring`;
a model-zoo bundle gets the same evaluator entries this repository's bundles ship), with ``attack``
and ``eps`` set. That config's record handler stores every case as it completes, so an interrupted
run resumes; under ``torchrun`` each rank evaluates its share of the pending cases
(``DistributedSampler(even_divisible=False)``: every case exactly once). Python keeps only the loop
over the conditions and the reports (:mod:`monai_smia.apps.evaluate.reports`, rank 0).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from monai_smia.apps.attack.cases import GRIDS
from monai_smia.apps.devices import run_device
from monai_smia.apps.evaluate.config import EvaluationCondition
from monai_smia.apps.evaluate.reports import write_evaluation_reports
from monai_smia.apps.evaluate.wiring import EVALUATOR_CONFIG, EVALUATOR_KEY, SETTINGS, bundle_configs, condition_parser
from monai_smia.attacks.progress import slice_progress
from monai_smia.attacks.registry import ATTACKS, DEFAULT_ATTACKS, check_attacks, make_attack
from monai_smia.bundle.bundle import Bundle, open_bundle
from monai_smia.bundle.files import read_config_file
from monai_smia.bundle.victim import Victim, load_victim
from monai_smia.io.paths import check_output_outside
from monai_smia.io.units import check_eps_unit, parse_bounds
from monai_smia.reports import provisional_settings

__all__ = [
    "ATTACKS",
    "DEFAULT_ATTACKS",
    "make_attack",
    "check_attacks",
    "RobustnessEvaluation",
    "evaluation_from_bundle",
]

logger = logging.getLogger(__name__)


def _config_error(err: BaseException) -> BaseException:
    """The error a bundle config raised, without MONAI's "Failed to instantiate/evaluate" wrappers."""
    while isinstance(err, RuntimeError) and str(err).startswith("Failed to ") and err.__cause__ is not None:
        err = err.__cause__
    return err


class RobustnessEvaluation:
    """Evaluate a bundle's victim on clean and attacked data and write the reports.

    Args:
        bundle: bundle name (``lung_ct_seg``, ...) or the path of any MONAI bundle folder.
        dataset_dir: the data: a data_prep folder (``datalist.json``), a Decathlon task folder, or the
            ``dataset_dir`` the bundle's own data keys read.
        output_dir: where reports, figures and the resumable per-case results go.
        attacks: names from :data:`ATTACKS`; each must fit the bundle's task.
        eps: budgets in the user's unit (``eps_unit``), e.g. ``[20]`` HU; each becomes
            ``eps * eps_scale`` in the network's input units.
        eps_unit: unit of ``eps`` (``"HU"``, ``"/255"``, ``""`` for network-input units).
        eps_scale: network-input units per ``eps`` unit; ``None``: from the unit and the bundle's
            ``ScaleIntensityRange(d)`` window.
        num_iter, alpha, sigma: iterative attack settings (docs/design.md defaults: 10, 1, 1 voxel).
        bounds: valid range of the network input (``"auto"``: from the bundle's preprocessing; ``None``: no clamp).
        data_split: split to evaluate.
        max_cases: evaluate only the first cases (smoke runs).
        seed: seeds random starts and noise.
        device: ``"cuda"``/``"cpu"``; default: CUDA when available (``cuda:LOCAL_RANK`` under torchrun).
        distributed: split cases across ``torchrun`` processes (NCCL on GPUs, gloo on CPUs).
        num_figure_cases: cases drawn in the example figures.
        batch_size: cases per evaluator iteration; ``None``: the bundle's evaluate.json (volumes of different
            sizes need 1).
        grid: ``"network"`` (default): attack the network input; ``"source"``: attack the source voxels
            (e.g. HU) through the bundle's preprocessing, as ``monai-smia attack`` does by default
            (:mod:`monai_smia.apps.evaluate.source`; L-inf/L2/variance then measured on the source grid).
    """

    def __init__(
        self,
        bundle: str | os.PathLike,
        dataset_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        attacks: Sequence[str] = DEFAULT_ATTACKS,
        eps: Sequence[float] | float | None = None,
        eps_unit: str = "",
        eps_scale: float | None = None,
        num_iter: int = 10,
        alpha: float = 1.0,
        sigma: float = 1.0,
        bounds: Sequence[float] | str | None = "auto",
        data_split: str = "test",
        max_cases: int | None = None,
        seed: int = 0,
        device: str | None = None,
        distributed: bool = False,
        num_figure_cases: int = 2,
        batch_size: int | None = None,
        grid: str = "network",
    ) -> None:
        if grid not in GRIDS:
            raise ValueError(f"--grid {grid!r}: choose one of {', '.join(GRIDS)}.")
        self.grid = str(grid)
        self.attacks = check_attacks(list(attacks))
        if eps is None:
            raise ValueError(
                f"no attack budget for {bundle}: pass eps (in the bundle's input units, or with eps_unit='HU')."
            )
        eps_list = [eps] if isinstance(eps, (int, float)) else list(eps)
        if not eps_list or any(not isinstance(e, (int, float)) or isinstance(e, bool) or not e > 0 for e in eps_list):
            raise ValueError(f"eps must be one or more budgets > 0, got {eps!r}")
        self.eps = [float(e) for e in eps_list]
        self.bundle, self.dataset_dir, self.output_dir = bundle, Path(dataset_dir), Path(output_dir)
        check_output_outside(self.output_dir, self.dataset_dir, "output_dir", "dataset_dir")
        self.eps_unit, self.eps_scale = check_eps_unit(eps_unit), eps_scale
        self.num_iter, self.alpha, self.sigma = int(num_iter), float(alpha), float(sigma)
        self.bounds = parse_bounds(bounds)
        self.data_split, self.max_cases, self.seed = data_split, max_cases, int(seed)
        self.distributed, self.num_figure_cases = bool(distributed), int(num_figure_cases)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.device = device
        self.rank, self.world_size = 0, 1
        self.config_files: list[str] = []

    def _setup_distributed(self) -> torch.device:
        import torch.distributed as dist

        if self.distributed and not dist.is_initialized() and "RANK" not in os.environ:
            logger.warning("distributed=True but not launched by torchrun (no RANK): running as one process")
            self.distributed = False
        if self.distributed:
            if not dist.is_initialized():
                dist.init_process_group(
                    backend="nccl" if torch.cuda.is_available() and self.device != "cpu" else "gloo"
                )
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        dev = run_device(self.device)
        if dev.type == "cuda" and dev.index is None:
            dev = run_device(None)  # cuda:LOCAL_RANK
        return dev

    def _barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def settings(self, root: Path, attack: str, eps: float | None, device: torch.device) -> dict[str, Any]:
        """The top-level config keys of one condition."""
        bounds = list(self.bounds) if isinstance(self.bounds, tuple) else self.bounds
        return {
            "bundle_root": str(root),
            "dataset_dir": str(self.dataset_dir),
            "output_dir": str(self.output_dir),
            "device": f"$torch.device('{device}')",
            "attack": attack,
            "eps": eps,
            "eps_unit": self.eps_unit,
            "eps_scale": self.eps_scale,
            "num_iter": self.num_iter,
            "alpha": self.alpha,
            "sigma": self.sigma,
            "bounds": bounds,
            "data_split": self.data_split,
            "max_cases": self.max_cases,
            "seed": self.seed,
            "num_figure_cases": self.num_figure_cases,
            "grid": self.grid,
        }

    def run_condition(
        self, victim: Victim, attack: str, eps: float | None, device: torch.device
    ) -> EvaluationCondition:
        """Run one condition through the bundle's evaluator config (its ``initialize`` and ``run``), on the
        victim's network."""
        settings = self.settings(victim.root, attack, eps, device)
        parser = condition_parser(
            victim.bundle, settings, victim.has_labels, self.distributed, self.batch_size, victim.network
        )
        # in a terminal, bars over each case's slices and window-wise passes (a whole CT takes minutes per case)
        tag = attack if eps is None else f"{attack} eps={eps:g}"
        progress = slice_progress(f"{victim.name} {tag}") if sys.stderr.isatty() else contextlib.nullcontext()
        try:
            with progress:
                parser.get_parsed_content("initialize")
                parser.get_parsed_content("run")
            return parser.get_parsed_content("condition")
        except RuntimeError as err:
            inner = _config_error(err)
            if inner is err:
                raise
        raise inner

    def run(self) -> dict[str, Any]:
        """Evaluate every pending (condition, case), then (rank 0) write the reports; returns the summary of the
        first eps. A run that fails before storing any case leaves no ``settings.json`` behind."""
        with provisional_settings(self.output_dir):
            return self._run()

    def _run(self) -> dict[str, Any]:
        device = self._setup_distributed()
        victim = load_victim(
            self.bundle, self.dataset_dir, device
        )  # a bundle that cannot load fails here, naming its file
        try:
            self.attacks = check_attacks(self.attacks, task=victim.task, num_classes=victim.num_classes)
        except ValueError as err:
            reason = str(err).removeprefix("attacks: ")
            raise ValueError(f"--attacks {' '.join(self.attacks)}: {reason}") from None
        files, _ = bundle_configs(victim.bundle)
        self.config_files = [f.name for f in files]
        clean = self.run_condition(victim, "clean", None, device)
        if self.rank == 0:
            logger.info(
                "evaluated %s clean on %d %s cases of %s",
                victim.name,
                len(clean.items),
                self.data_split,
                self.dataset_dir,
            )
        for eps in self.eps:
            for name in self.attacks:
                self.run_condition(victim, name, eps, device)
        self._barrier()
        summary: dict[str, Any] = {}
        if self.rank == 0:
            summary = write_evaluation_reports(self, clean)
        self._barrier()
        return summary


def bundle_evaluation_defaults(bundle: Path | Bundle) -> dict[str, Any]:
    """The evaluation settings a bundle's own ``evaluate.json`` declares (budget, unit, attacks, batch
    size, data and output folders); ``{}`` for a bundle without a monai-smia evaluate.json."""
    b = open_bundle(bundle)
    files, section = bundle_configs(b)
    if EVALUATOR_CONFIG not in files:
        return {}
    own = read_config_file(files[-1])
    parser = b.parser(files)
    out = {k: parser.get_parsed_content(k) for k in SETTINGS if k in own and k != "attack"}
    out["eps"] = out["eps"] if isinstance(out.get("eps"), (list, tuple)) or out.get("eps") is None else [out["eps"]]
    out["batch_size"] = parser[f"{section}#dataloader#batch_size"]
    for key in ("dataset_dir", "output_dir"):
        if key in parser.config:
            out[key] = parser.get_parsed_content(key)
    return out


def evaluation_from_bundle(bundle: str | os.PathLike, **overrides: Any) -> RobustnessEvaluation:
    """A :class:`RobustnessEvaluation` with the defaults of the bundle's ``configs/evaluate.json``
    (budget, unit, attacks, batch size, ...) and ``overrides`` (``None`` values are ignored).

    Bundles without a monai-smia evaluate.json (e.g. from the MONAI model zoo) get the package
    defaults and need ``dataset_dir``, ``output_dir`` and ``eps``.
    """
    b = open_bundle(bundle)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    defaults = bundle_evaluation_defaults(b)
    if "eps_unit" in overrides and "eps_scale" not in overrides:
        defaults.pop("eps_scale", None)  # the bundle's scale belongs to the bundle's unit, not to the one given
    unknown = sorted(set(overrides) - set(inspect.signature(RobustnessEvaluation).parameters))
    if unknown:
        raise ValueError(f"unknown evaluation setting(s) {', '.join(map(repr, unknown))}")
    for key, flag in (("dataset_dir", "--dataset-dir"), ("output_dir", "--output"), ("eps", "--eps")):
        if key not in overrides and defaults.get(key) is None:
            raise ValueError(
                f"{b.name} declares no monai-smia evaluation (its configs/evaluate.json has no "
                f"'{EVALUATOR_KEY}'), so it has no default {key}: pass {flag}"
                + (" (in the bundle's input units, or with --eps-unit HU)" if key == "eps" else "")
                + "."
            )
    return RobustnessEvaluation(bundle=b.root, **{**defaults, **overrides})
