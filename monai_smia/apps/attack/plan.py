"""What one ``monai-smia attack`` run is, declared once: the settings a rerun must share
(:class:`AttackSettings`, stored as ``settings.json``), the run's plan (:class:`AttackPlan`: the settings
plus where and how it runs, the bundle's defaults merged with the caller's values and checked once), and
the attack each case gets once the bundle's preprocessing is loaded (:class:`CaseAttack`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from monai_smia.apps.attack.cases import (
    GRIDS,
    bundle_attack_defaults,
    check_paths,
    check_writer_arguments,
    default_eps_scale,
    use_series_loader,
)
from monai_smia.apps.devices import run_device
from monai_smia.bundle.bundle import Bundle, open_bundle
from monai_smia.bundle.victim import Victim
from monai_smia.io.units import check_eps_unit, parse_bounds, resolve_bounds, source_intensity_scale, warn_whole_range
from monai_smia.transforms.differentiable import split_preprocessing

__all__ = ["AttackPlan", "AttackSettings", "CaseAttack", "case_attack"]


@dataclass(frozen=True)
class AttackSettings:
    """The settings every stored case of an output folder depends on; ``settings.json`` is their ``asdict``
    (with the checkpoint's hash). ``bounds`` is as given (``"auto"``, ``None`` or ``[lo, hi]``)."""

    bundle: str
    attack: str
    eps: float
    eps_unit: str
    eps_scale: float | None
    num_iter: int
    alpha: float
    sigma: float
    bounds: str | list[float] | None
    grid: str
    save_dtype: str
    dicom: bool
    seed: int
    label_free: bool = False
    step_size: str = "2.5 * eps / num_iter"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class AttackPlan:
    """One attack run: its :class:`AttackSettings` and where and how it runs (:meth:`create` builds it)."""

    bundle: Bundle
    input: Path
    output_dir: Path
    settings: AttackSettings
    data_split: str = "test"
    label_key: str = "label"
    use_labels: bool = True
    source_scale: float | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    checkpoint: Path | None = None
    verify: bool = True
    max_cases: int | None = None
    progress: bool = True

    @classmethod
    def create(
        cls, bundle: str | os.PathLike | Bundle, input: str | os.PathLike, output_dir: str | os.PathLike, **kwargs: Any
    ) -> AttackPlan:
        """The plan of ``AdversarialWriter(bundle, input, output_dir, **kwargs)``: every argument checked (one-line
        errors naming it), the budget, unit, bounds and grid left out taken from the bundle's ``attack.json``
        (else its ``evaluate.json``)."""
        args = {**_DEFAULTS, **kwargs, "bundle": bundle, "input": input, "output_dir": output_dir}
        unknown = sorted(set(kwargs) - set(_DEFAULTS))
        if unknown:
            raise TypeError(f"unknown attack argument(s) {', '.join(unknown)}")
        args["grid"] = "source" if args["grid"] is None else args["grid"]
        check_writer_arguments(args)
        b = open_bundle(bundle)
        check_paths(Path(input), Path(output_dir))
        settings = AttackSettings(
            bundle=b.name,
            attack=args["attack"],
            num_iter=int(args["num_iter"]),
            alpha=float(args["alpha"]),
            sigma=float(args["sigma"]),
            save_dtype=args["save_dtype"],
            dicom=bool(args["dicom"]),
            seed=int(args["seed"]),
            **_budget(
                b,
                kwargs.get("eps"),
                kwargs.get("eps_unit"),
                kwargs.get("eps_scale"),
                args["bounds"],
                kwargs.get("grid"),
            ),
        )
        return cls(
            bundle=b,
            input=Path(input),
            output_dir=Path(output_dir),
            settings=settings,
            data_split=args["data_split"],
            label_key=args["label_key"],
            use_labels=bool(args["use_labels"]),
            source_scale=None if args["source_scale"] is None else float(args["source_scale"]),
            device=run_device(args["device"]),
            checkpoint=None if args["checkpoint"] is None else Path(args["checkpoint"]),
            verify=bool(args["verify"]),
            max_cases=args["max_cases"],
            progress=bool(args["progress"]),
        )

    @property
    def weights(self) -> Path:
        """The checkpoint the run loads: the given one, else the bundle's ``models/model.pt``."""
        return self.checkpoint if self.checkpoint is not None else self.bundle.checkpoint


#: :meth:`AttackPlan.create`'s keyword arguments and their defaults (those of ``AdversarialWriter``)
_DEFAULTS: dict[str, Any] = {
    "attack": "SMIA",
    "eps": None,
    "eps_unit": None,
    "eps_scale": None,
    "num_iter": 10,
    "alpha": 1.0,
    "sigma": 1.0,
    "bounds": "bundle",
    "grid": None,
    "data_split": "test",
    "label_key": "label",
    "use_labels": True,
    "save_dtype": "float32",
    "dicom": True,
    "source_scale": None,
    "device": None,
    "checkpoint": None,
    "seed": 0,
    "verify": True,
    "max_cases": None,
    "progress": True,
}


def _budget(b: Bundle, eps: Any, eps_unit: Any, eps_scale: Any, bounds: Any, grid: str | None) -> dict[str, Any]:
    """``eps``, its unit and scale, the bounds and the grid: given, else the bundle's defaults."""
    defaults = bundle_attack_defaults(b)
    if eps is None:
        eps = defaults.get("eps")
        if eps is None:
            raise ValueError(
                f"eps is required: bundle {b.name!r} has no default budget (no eps in configs/attack.json "
                "or configs/evaluate.json)."
            )
    if eps_unit is None:
        eps_unit = defaults.get("eps_unit")
        if eps_scale is None:
            eps_scale = defaults.get("eps_scale")
    grid = grid if grid is not None else defaults.get("grid", "source")
    if grid not in GRIDS:
        raise ValueError(f"{b.name}'s configs/attack.json sets grid {grid!r}; choose one of {GRIDS}.")
    parsed = parse_bounds(defaults.get("bounds", "auto") if isinstance(bounds, str) else bounds)
    return {
        "eps": float(eps),
        "eps_unit": check_eps_unit(eps_unit),
        "eps_scale": None if eps_scale is None else float(eps_scale),
        "bounds": parsed if isinstance(parsed, str) or parsed is None else list(parsed),
        "grid": grid,
    }


@dataclass(frozen=True)
class CaseAttack:
    """What attacking one case needs once the bundle's preprocessing is loaded: the attack and its budget in
    every unit, the bounds, and the preprocessing (split into loading and the rest for the source grid).

    Attributes:
        eps: the budget in the user's unit; ``eps_network`` in network-input units, ``eps_source`` in source
            intensity units (``source_scale`` network units per source unit).
        bounds: the network input's valid range (``None``: no clamp); ``bounds_note`` says where it came from.
        missing_ok: the preprocessing loads labels that a label-free run does not have.
    """

    attack: str
    eps: float
    eps_network: float
    eps_source: float
    source_scale: float
    num_iter: int
    alpha: float
    sigma: float
    bounds: tuple[float, float] | None
    seed: int
    preprocessing: Any
    loading: Sequence[Any] = ()
    rest: Sequence[Any] = ()
    missing_ok: bool = False
    bounds_note: Any = None


def case_attack(plan: AttackPlan, victim: Victim, label_free: bool) -> CaseAttack:
    """The :class:`CaseAttack` of ``plan`` on ``victim``: the budget in network and source units and the bounds
    from the bundle's preprocessing (checked before anything is written)."""
    s = plan.settings
    scale = s.eps_scale if s.eps_scale is not None else default_eps_scale(victim, s.eps_unit)
    source_scale = plan.source_scale if plan.source_scale is not None else source_intensity_scale(victim.preprocessing)
    bounds_arg = tuple(s.bounds) if isinstance(s.bounds, list) else s.bounds
    bounds, note = resolve_bounds(bounds_arg, victim.preprocessing)
    warn_whole_range(s.eps, scale, s.eps_unit, bounds, plan.bundle.name)
    use_series_loader(victim.preprocessing)
    loading, rest = split_preprocessing(victim.preprocessing) if s.grid == "source" else ((), ())
    return CaseAttack(
        attack=s.attack,
        eps=s.eps,
        eps_network=s.eps * scale,
        eps_source=s.eps * scale / source_scale,
        source_scale=source_scale,
        num_iter=s.num_iter,
        alpha=s.alpha,
        sigma=s.sigma,
        bounds=bounds,
        seed=s.seed,
        preprocessing=victim.preprocessing,
        loading=loading,
        rest=rest,
        missing_ok=label_free and victim.has_labels,
        bounds_note=note,
    )
