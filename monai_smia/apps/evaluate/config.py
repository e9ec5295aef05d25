"""One condition (attack x eps) of a robustness evaluation: what the evaluator config of
:mod:`monai_smia.apps.evaluate.wiring` derives from the bundle and the settings.

:class:`EvaluationCondition` (the config's ``condition``) holds the cases, the budget in network units, the
bounds, the case store and the run-settings check (:class:`EvaluationSettings`, stored as ``settings.json``);
:class:`CaseErrorNamer` names the case a failing iteration was on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import SliceInferer

from monai_smia.apps.attack.cases import GRIDS
from monai_smia.attacks.registry import check_attacks, make_attack
from monai_smia.bundle.bundle import open_bundle
from monai_smia.bundle.data import bundle_cases, find_case_error, out_of_memory, out_of_memory_message, root_cause
from monai_smia.bundle.inputs import check_case_files, input_spec
from monai_smia.handlers.seeding import seed_key
from monai_smia.io.paths import check_output_outside
from monai_smia.io.units import (
    check_eps_unit,
    parse_bounds,
    resolve_bounds,
    resolve_eps_scale,
    source_intensity_scale,
    warn_whole_range,
)
from monai_smia.reports import CaseStore, all_stored_line, atomic_write_bytes, check_run_settings, file_sha256
from monai_smia.transforms.differentiable import split_preprocessing

__all__ = ["CaseErrorNamer", "EvaluationCondition", "EvaluationSettings", "EvaluationStore"]


@dataclass(frozen=True)
class EvaluationSettings:
    """The settings every stored case of an evaluation's output folder depends on (``settings.json`` is their
    ``asdict``): the bundle, its weights, the cases, the budget's unit and scale, the attack settings and the
    grid. The attacks and budgets are not among them: they are keys of the case store."""

    bundle: str
    checkpoint_sha256: str
    cases_from: str
    cases_sha256: str
    data_split: str
    eps_unit: str
    eps_scale: float
    num_iter: int
    alpha: float
    sigma: float
    bounds: list[float] | None
    seed: int
    grid: str
    step_size: str = "2.5 * eps / T"


class EvaluationStore(CaseStore):
    """The per-case store plus the example arrays drawn in the figures (``examples/<tag>_<case>.npz``)."""

    def example_path(self, attack: str, eps: float | None, case_id: str) -> Path:
        tag = "clean" if eps is None else f"{attack}_eps{eps:g}"
        return self.root / "examples" / f"{tag}_{case_id}.npz"

    def save_example(self, attack: str, eps: float | None, case_id: str, example: dict[str, Any]) -> Path:
        buf = io.BytesIO()
        np.savez_compressed(buf, **{k: np.asarray(v) for k, v in example.items()})
        return atomic_write_bytes(self.example_path(attack, eps, case_id), buf.getvalue())


def _rank() -> tuple[int, bool]:
    dist = torch.distributed
    on = dist.is_available() and dist.is_initialized()
    return (dist.get_rank() if on else 0), on


class EvaluationCondition:
    """What one condition of a bundle evaluation derives from the bundle and the settings.

    Resolves the budget (``eps`` in ``eps_unit``; ``scale`` network-input units per unit, from the
    bundle's ``ScaleIntensityRange(d)`` window for HU) and the bounds (``"auto"``: from the
    preprocessing), lists the cases (:func:`monai_smia.bundle.bundle_cases`, each with a stable
    ``case_id``), and refuses an ``output_dir`` holding results of other settings
    (:func:`~monai_smia.reports.check_run_settings`; rank 0 records them).

    Args:
        bundle_root, dataset_dir, output_dir: the bundle, the data and the results folder.
        preprocessing, inferer: ``@validate#preprocessing`` and ``@validate#inferer`` of the bundle.
        attack: a name of :data:`~monai_smia.attacks.ATTACKS`, or ``"clean"``.
        eps: budget in ``eps_unit`` (ignored for ``"clean"``).
        checkpoint: the weights (default ``models/model.pt`` of the bundle).
        grid: ``"network"`` (default: attack the network input) or ``"source"``: attack the source
            voxels through the preprocessing (:mod:`monai_smia.apps.evaluate.source`).
    """

    def __init__(
        self,
        bundle_root: str | os.PathLike,
        dataset_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        preprocessing: Any,
        inferer: Any = None,
        attack: str = "SMIA",
        eps: float | None = None,
        eps_unit: str = "",
        eps_scale: float | None = None,
        num_iter: int = 10,
        alpha: float = 1.0,
        sigma: float = 1.0,
        bounds: Any = "auto",
        data_split: str = "test",
        max_cases: int | None = None,
        seed: int = 0,
        num_figure_cases: int = 2,
        checkpoint: str | os.PathLike | None = None,
        use_labels: bool = True,
        grid: str = "network",
    ) -> None:
        if grid not in GRIDS:
            raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}.")
        self.grid = str(grid)
        self.root, self.dataset_dir, self.output_dir = Path(bundle_root).resolve(), Path(dataset_dir), Path(output_dir)
        check_output_outside(self.output_dir, self.dataset_dir, "output_dir", "dataset_dir")
        self.bundle = open_bundle(self.root)
        self.metadata, self.task, self.num_classes = self.bundle.metadata, self.bundle.task, self.bundle.num_classes
        self.attack = str(attack)
        if self.attack != "clean":
            check_attacks([self.attack], self.task)
            if eps is None or isinstance(eps, bool) or not float(eps) > 0:
                raise ValueError(
                    f"eps: {self.root.name} needs a budget > 0 for {self.attack} (pass --eps), got {eps!r}."
                )
        self.eps = None if self.attack == "clean" else float(eps)  # type: ignore[arg-type]
        self.eps_unit, self.preprocessing, self.inferer = eps_unit or "", preprocessing, inferer
        self.num_iter, self.alpha, self.sigma, self.seed = int(num_iter), float(alpha), float(sigma), int(seed)
        self.data_split, self.max_cases, self.use_labels = data_split, max_cases, bool(use_labels)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else self.root / "models" / "model.pt"
        self.scale, self.scale_note = self._eps_scale(eps_scale)
        self.bounds, self.bounds_note = resolve_bounds(parse_bounds(bounds), preprocessing)
        if self.eps is not None:
            warn_whole_range(self.eps, self.scale, self.eps_unit, self.bounds, self.root.name)
        if self.grid == "source":  # a preprocessing that cannot run inside the attack: refused before any write
            split_preprocessing(preprocessing)
            source_intensity_scale(preprocessing)
        self.items, self.case_source = self._cases()
        spec = input_spec(self.metadata, preprocessing, inferer)
        check_case_files(self.items, spec, require=("label",) if self.use_labels else ())  # before anything is written
        self.figure_cases = [it["case_id"] for it in self.items[: int(num_figure_cases)]]
        self.rank, self.distributed = _rank()
        self.store = EvaluationStore(self.output_dir)
        check_run_settings(self.output_dir, self.run_settings(), write=self.rank == 0)

    def _eps_scale(self, eps_scale: float | None) -> tuple[float, dict[str, Any]]:
        if eps_scale is not None:
            return float(eps_scale), {"eps_unit": check_eps_unit(self.eps_unit), "eps_scale": "given"}
        return resolve_eps_scale(self.eps_unit, self.preprocessing, None, bundle=self.root.name, metadata=self.metadata)

    def _cases(self) -> tuple[list[dict[str, Any]], str]:
        items, source = bundle_cases(self.root, self.dataset_dir, self.data_split)
        if self.max_cases is not None:
            items = items[: int(self.max_cases)]
        out = [
            {**it, "case_id": f"{i:04d}_{seed_key(it['image'])}", "seed_key": seed_key(it["image"])}
            for i, it in enumerate(items)
        ]
        return out, source

    def run_settings(self) -> dict[str, Any]:
        """What every stored case of the output folder depends on (attacks and budgets are keys of the store):
        the :class:`EvaluationSettings` of this condition, as stored in ``settings.json``."""
        cases = [[it["case_id"], Path(it["image"]).name, Path(str(it.get("label", ""))).name] for it in self.items]
        settings = EvaluationSettings(
            bundle=self.root.name,
            checkpoint_sha256=file_sha256(self.checkpoint),
            cases_from=self.case_source,
            cases_sha256=hashlib.sha256(json.dumps(cases).encode()).hexdigest(),
            data_split=self.data_split,
            eps_unit=self.eps_unit,
            eps_scale=self.scale,
            num_iter=self.num_iter,
            alpha=self.alpha,
            sigma=self.sigma,
            bounds=list(self.bounds) if self.bounds is not None else None,
            seed=self.seed,
            grid=self.grid,
        )
        return dataclasses.asdict(settings)

    @property
    def eps_source(self) -> float | None:
        """The budget in source intensity units (e.g. HU) for a source-grid attack."""
        return None if self.eps is None else self.eps * self.scale / source_intensity_scale(self.preprocessing)

    @property
    def source_to_eps(self) -> float:
        """The user's eps units per source intensity unit."""
        return source_intensity_scale(self.preprocessing) / self.scale

    @property
    def is_main_rank(self) -> bool:
        return self.rank == 0

    @property
    def description(self) -> str:
        grid = " (source grid)" if self.grid == "source" else ""
        return f"{self.root.name} {self.attack}" + (
            "" if self.eps is None else f" eps={self.eps:g}{self.eps_unit}{grid}"
        )

    def spatial_dims(self) -> int:
        """2 for a slice-wise (``SliceInferer``) bundle, else the rank of its declared input shape."""
        if isinstance(self.inferer, SliceInferer):
            return 2
        shape = (
            self.metadata.get("network_data_format", {}).get("inputs", {}).get("image", {}).get("spatial_shape", [0, 0])
        )
        return len(shape)

    def pending_items(self) -> list[dict[str, Any]]:
        """The cases without a stored record of this condition (all ranks see the same list)."""
        self._barrier()  # every rank reads the store before any rank writes to it
        done = set(self.store.pending(self.attack, self.eps, [it["case_id"] for it in self.items]))
        self._barrier()
        if not done and self.rank == 0:  # a rerun that finds everything stored says so instead of exiting silently
            print(all_stored_line(self.description, len(self.items), self.output_dir))
        return [it for it in self.items if it["case_id"] in done]

    def _barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def make_attack(self, network: torch.nn.Module) -> Any:
        """The condition's attack on ``network`` at ``eps * scale`` network units; ``None`` for clean."""
        if self.attack == "clean":
            return None
        return make_attack(
            self.attack,
            network,
            self.eps * self.scale,
            self.num_iter,
            self.alpha,
            self.sigma,
            self.spatial_dims(),
            self.bounds,
        )


class CaseErrorNamer:
    """On ``EXCEPTION_RAISED``: re-raise as a one-line ``ValueError`` naming the case's file and the root
    cause (a loading error names the file being loaded, not the previous batch)."""

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EXCEPTION_RAISED, self)

    def __call__(self, engine: Any, err: Exception) -> None:
        from monai.utils import ensure_tuple

        if isinstance(err, KeyboardInterrupt):
            raise err  # Ctrl-C is not the case's fault: the CLI says so and keeps the finished cases
        loading = find_case_error(err)
        if loading is not None:
            raise ValueError(str(loading)) from err
        batch = engine.state.batch if isinstance(engine.state.batch, dict) else {}
        image = batch.get("image")
        meta = getattr(image, "meta", {}) or {}
        files = [str(f) for f in ensure_tuple(meta.get("filename_or_obj", ()))] or list(batch.get("case_id", []))
        if out_of_memory(err):
            shape = tuple(image.shape[1:]) if isinstance(image, torch.Tensor) else None
            raise ValueError(
                out_of_memory_message(
                    ", ".join(files) or "a case", shape, getattr(engine.state, "device", "the device")
                )
            ) from err
        raise ValueError(f"{', '.join(files) or 'a case'}: {root_cause(err)}") from err
