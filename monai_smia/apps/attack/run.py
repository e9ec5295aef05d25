"""Attack every image of a dataset, folder or file with a MONAI bundle's network and write adversarial copies.

This is what a bundle's ``configs/attack.json`` runs (``python -m monai.bundle run --config_file
bundles/NAME/configs/attack.json --bundle_root bundles/NAME --input PATH --output_dir DIR``). The
input is a data_prep folder (its ``test`` split by default; items with labels are attacked in
ground-truth mode), a plain folder of NIfTI/PNG files and DICOM series folders, one NIfTI or PNG
file, or one DICOM series folder (:func:`monai_smia.apps.attack.cases.discover_cases`).

Each image is attacked through the bundle's own preprocessing (``train.json``'s ``validate``
section when labels are used, otherwise ``inference.json``'s ``preprocessing``: see
:func:`monai_smia.bundle.victim.load_victim`). By default (``grid="source"``) the
perturbation lives on the source voxels in source units (HU for CT, grey levels for PNG) and the
preprocessing runs inside the attack, so what is written is exactly what was attacked
(:mod:`monai_smia.apps.attack.grids`); ``grid="network"`` attacks the network input and maps the
perturbation back with a bilinear ``Invertd`` (for comparison). Outputs per case
``<case>`` in ``output_dir`` (:mod:`monai_smia.apps.attack.outputs`):

- NIfTI and DICOM sources: ``<case>_adv.nii.gz`` and ``<case>_perturbation.nii.gz`` with the
  source's shape, affine, orientation and spacing; DICOM sources also ``<case>_adv_dicom/``, one
  new DERIVED series;
- PNG sources: ``<case>_adv.png`` in the source's integer type and ``<case>_perturbation.npy``;
- ``cases/<attack>/eps_<eps>/<case>.json``: the case record (settings, ``|d|`` maxima, error rates,
  the attack's effect in memory and on every written file read back, their ratio, the attack's
  per-iteration diagnostics), written last, so a rerun skips exactly the finished cases;
- ``settings.json`` (a rerun into the same folder must use the same settings, grid included),
  ``summary.json`` and ``provenance.json``.

Every file is written atomically; nothing is written into the input folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor
from monai.transforms.utils import allow_missing_keys_mode
from monai.utils import optional_import

from monai_smia.apps.attack.cases import (
    GRIDS,
    SourceCase,
    bundle_attack_defaults,
    bundle_loads_labels,
    check_paths,
    check_writer_arguments,
    default_eps_scale,
    discover_cases,
    use_series_loader,
)
from monai_smia.apps.attack.grids import network_grid_case, source_grid_case
from monai_smia.apps.attack.outputs import loaded_png, write_png, write_volume
from monai_smia.apps.attack.survival import case_record, read_back_survival, summarize_cases
from monai_smia.attacks.registry import check_attacks
from monai_smia.attacks.volume import slice_progress
from monai_smia.bundle.data import out_of_memory, out_of_memory_message
from monai_smia.bundle.inputs import check_case_files, input_spec
from monai_smia.bundle.victim import Victim, load_victim, resolve_bundle
from monai_smia.io.atomic import write_json_atomic
from monai_smia.io.units import check_eps_unit, parse_bounds, resolve_bounds, source_intensity_scale, warn_whole_range
from monai_smia.losses import hard_prediction, prepare_labels
from monai_smia.metrics import case_success
from monai_smia.reports import (
    CaseStore,
    check_run_settings,
    file_sha256,
    provisional_settings,
    to_jsonable,
    write_provenance,
)
from monai_smia.transforms.differentiable import split_preprocessing

tqdm, _has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["AdversarialWriter", "SourceCase", "bundle_attack_defaults", "discover_cases", "run_attack"]

logger = logging.getLogger(__name__)


class AdversarialWriter:
    """Attack every image of ``input`` with a bundle's network and write adversarial copies (module docstring).

    Args:
        bundle: bundle name (``lung_ct_seg``, ...) or the path of any MONAI bundle folder.
        input: a data_prep folder, a folder of NIfTI/PNG files and DICOM series, one NIfTI/PNG file
            or one DICOM series folder.
        output_dir: where the outputs go (created; must not lie inside ``input``).
        attack: one of :data:`monai_smia.attacks.registry.ATTACKS` (``noise``, ``FGSM``, ``PGD``, ``DEV``, ``SMIA``).
        eps: L-infinity budget in ``eps_unit``; ``None``: the bundle's default (its ``attack.json``
            or ``evaluate.json``).
        eps_unit: unit of ``eps`` (``"HU"``, ``"/255"``, ``""`` for network units); ``None``: the
            bundle's default unit.
        eps_scale: network-input units per ``eps`` unit; ``None``: the bundle's value, else
            ``1 / hu_window width`` for HU, ``1/255`` for ``"/255"``, else 1.
        num_iter, alpha, sigma: iterative attack settings (docs/design.md: 10, 1, 1 voxel); the step is
            ``2.5 * eps / num_iter`` (on a stored-value lattice: rounded to whole steps, at least one).
        bounds: valid range of the network input for ``grid="network"`` (``None``: no clamp);
            default the bundle's. On the source grid the bounds are the stored type's range.
        grid: ``"source"`` (default; the bundle's ``attack.json`` may set it) or ``"network"`` (module docstring).
        data_split: datalist split to attack (``"training"``, ``"validation"``, ``"test"``, ``"all"``).
        label_key: datalist key of the ground truth.
        use_labels: attack in ground-truth mode when every datalist item has a label; ``False``:
            always label-free.
        save_dtype: ``"float32"`` NIfTI outputs, or ``"source"``: the source's integer type and
            scaling. PNG outputs always keep the source's integer type.
        dicom: also write a DICOM series for DICOM sources.
        source_scale: network-input units per source intensity unit; ``None``: read off the
            preprocessing's ``ScaleIntensityRanged`` (:func:`source_intensity_scale`).
        device: ``"cuda"``, ``"cpu"``, ...; default CUDA when available.
        checkpoint: weights to load instead of the bundle's ``models/model.pt``.
        seed: seeds random starts and noise (per case, so results do not depend on the case order).
        verify: reload every written image through the preprocessing and record the attack's effect
            on it (one more prediction per written file).
        max_cases: attack only the first cases (smoke runs).
        progress: show a progress bar.
    """

    def __init__(
        self,
        bundle: str | os.PathLike,
        input: str | os.PathLike,
        output_dir: str | os.PathLike,
        attack: str = "SMIA",
        eps: float | None = None,
        eps_unit: str | None = None,
        eps_scale: float | None = None,
        num_iter: int = 10,
        alpha: float = 1.0,
        sigma: float = 1.0,
        bounds: Sequence[float] | None | str = "bundle",
        grid: str | None = None,
        data_split: str = "test",
        label_key: str = "label",
        use_labels: bool = True,
        save_dtype: str = "float32",
        dicom: bool = True,
        source_scale: float | None = None,
        device: str | torch.device | None = None,
        checkpoint: str | os.PathLike | None = None,
        seed: int = 0,
        verify: bool = True,
        max_cases: int | None = None,
        progress: bool = True,
    ) -> None:
        args = dict(locals())
        args.pop("self")
        args["grid"] = "source" if grid is None else grid
        check_writer_arguments(args)
        self.root = resolve_bundle(bundle)
        self.input, self.output_dir = Path(input), Path(output_dir)
        check_paths(self.input, self.output_dir)
        self._set_budget(eps, eps_unit, eps_scale, bounds, grid)
        self.attack = attack
        self.num_iter, self.alpha, self.sigma = int(num_iter), float(alpha), float(sigma)
        self.data_split, self.label_key, self.use_labels = data_split, label_key, bool(use_labels)
        self.save_dtype, self.dicom = save_dtype, bool(dicom)
        self.source_scale_arg = None if source_scale is None else float(source_scale)
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.seed, self.verify, self.max_cases, self.progress = int(seed), bool(verify), max_cases, bool(progress)
        self.store = CaseStore(self.output_dir)

    def _set_budget(self, eps: Any, eps_unit: Any, eps_scale: Any, bounds: Any, grid: str | None) -> None:
        """``eps``, its unit and scale, the bounds and the grid: given, else the bundle's defaults."""
        defaults = bundle_attack_defaults(self.root)
        if eps is None:
            eps = defaults.get("eps")
            if eps is None:
                raise ValueError(
                    f"eps is required: bundle {self.root.name!r} has no default budget (no eps in configs/attack.json "
                    "or configs/evaluate.json)."
                )
        if eps_unit is None:
            eps_unit = defaults.get("eps_unit")
            if eps_scale is None:
                eps_scale = defaults.get("eps_scale")
        self.eps = float(eps)
        self.eps_unit = check_eps_unit(eps_unit)
        self.eps_scale_arg = None if eps_scale is None else float(eps_scale)
        self.grid = grid if grid is not None else defaults.get("grid", "source")
        if self.grid not in GRIDS:
            raise ValueError(f"{self.root.name}'s configs/attack.json sets grid {self.grid!r}; choose one of {GRIDS}.")
        if isinstance(bounds, str):
            bounds = defaults.get("bounds", "auto")
        self.bounds_arg = parse_bounds(bounds)
        # "auto" is resolved by _prepare once the bundle's preprocessing is loaded
        self.bounds: tuple[float, float] | None = None if self.bounds_arg == "auto" else self.bounds_arg  # type: ignore[assignment]

    # ------------------------------------------------------------------ run
    def cases(self) -> tuple[list[SourceCase], dict[str, Any]]:
        cases, source = discover_cases(self.input, self.data_split, self.label_key, self.use_labels)
        if self.max_cases is not None:
            cases = cases[: self.max_cases]
        return cases, source

    def settings(self, label_free: bool) -> dict[str, Any]:
        """The settings a rerun into the same ``output_dir`` must share."""
        bounds = self.bounds_arg if isinstance(self.bounds_arg, str) or self.bounds_arg is None else list(self.bounds_arg)
        return {
            "bundle": self.root.name,
            "attack": self.attack,
            "eps": self.eps,
            "eps_unit": self.eps_unit,
            "eps_scale": self.eps_scale_arg,
            "num_iter": self.num_iter,
            "step_size": "2.5 * eps / num_iter",
            "alpha": self.alpha,
            "sigma": self.sigma,
            "bounds": bounds,
            "grid": self.grid,
            "save_dtype": self.save_dtype,
            "dicom": self.dicom,
            "seed": self.seed,
            "label_free": label_free,
        }

    def is_done(self, case: SourceCase) -> bool:
        """A stored record whose outputs all exist."""
        rec = self.store.load(self.attack, self.eps, case.case_id)
        if rec is None or rec.get("source") != str(case.source.resolve()):
            return False
        outputs = rec.get("outputs")
        return isinstance(outputs, dict) and all((self.output_dir / p).exists() for p in outputs.values())

    def _label_free(self, cases: list[SourceCase]) -> bool:
        label_free = not all(c.label is not None for c in cases)
        if not label_free and not bundle_loads_labels(self.root):
            logger.warning("%s has no train.json 'validate' preprocessing that loads labels; attacking label-free.", self.root.name)
            label_free = True
        if label_free:
            for c in cases:
                c.label = None
        return label_free

    def run(self) -> dict[str, Any]:
        """Attack every pending case, then write ``summary.json`` and ``provenance.json``; returns the summary.
        A run that fails before storing any case leaves no ``settings.json`` behind."""
        with provisional_settings(self.output_dir):
            return self._run()

    def _run(self) -> dict[str, Any]:
        cases, data_source = self.cases()
        label_free = self._label_free(cases)
        settings = self.settings(label_free)
        pending = [c for c in cases if not self.is_done(c)]
        checkpoint = self.checkpoint if self.checkpoint is not None else self.root / "models" / "model.pt"
        if pending and not Path(checkpoint).is_file():
            raise FileNotFoundError(
                f"checkpoint {str(checkpoint)!r} not found: train the bundle first (see its docs/README.md) or pass "
                "checkpoint=PATH."
            )
        if pending:  # the bundle and every input are checked before anything is written
            victim = load_victim(self.root, device=self.device, checkpoint=self.checkpoint, labels=not label_free)
            try:
                check_attacks([self.attack], task=victim.task)
            except ValueError as err:
                raise ValueError(f"--attack {self.attack}: {str(err).removeprefix('attacks: ')}") from None
            spec = input_spec(victim.metadata, victim.preprocessing, victim.inferer)
            check_case_files([c.source for c in pending], spec)
            self._resolve_budget(victim)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        sha = file_sha256(checkpoint) if Path(checkpoint).is_file() else None
        check_run_settings(self.output_dir, {**settings, "checkpoint_sha256": sha})
        logger.info("%s on %s: %d cases, %d already done, %s eps=%g%s on the %s grid", self.root.name, self.input,
                    len(cases), len(cases) - len(pending), self.attack, self.eps, self.eps_unit, self.grid)  # fmt: skip
        if not pending:  # a rerun that finds everything stored says so (as the evaluator does)
            stored = f"all {len(cases)} cases already stored in {self.output_dir}"
            print(f"{self.root.name} {self.attack}: {stored}; nothing to do.")
        if pending:
            checkpoint = victim.checkpoint
            self._prepare(victim, label_free)
            show = self.progress and _has_tqdm
            for case in tqdm(pending, desc=f"{self.root.name} {self.attack}", disable=not show) if _has_tqdm else pending:
                with slice_progress(f"{case.case_id} slices") if show else contextlib.nullcontext():
                    self.store.save(self._attack_named(victim, case, label_free))
        summary = self.write_summary(cases)
        if not pending and (self.output_dir / "provenance.json").is_file():
            return summary  # nothing new: keep the provenance of the run that wrote the outputs
        attack_settings = {
            **settings,
            "eps_network": getattr(self, "eps_network", None),
            "bounds_resolved": self.bounds,
            "bounds_from": getattr(self, "bounds_note", None),
            "cases": len(cases),
        }
        write_provenance(
            self.output_dir / "provenance.json",
            seed=self.seed,
            checkpoint=checkpoint if Path(checkpoint).is_file() else None,
            data_source=data_source,
            attack_settings=attack_settings,
            command_line=sys.argv,
        )
        return summary

    # ------------------------------------------------------------------ one case
    def _resolve_budget(self, victim: Victim) -> None:
        """The budget in network and source units and the bounds, from the bundle (before anything is written)."""
        self.eps_scale = self.eps_scale_arg if self.eps_scale_arg is not None else default_eps_scale(victim, self.eps_unit)
        self.eps_network = self.eps * self.eps_scale
        self.source_scale = (
            self.source_scale_arg if self.source_scale_arg is not None else source_intensity_scale(victim.preprocessing)
        )
        self.eps_source = self.eps_network / self.source_scale
        self.bounds, self.bounds_note = resolve_bounds(self.bounds_arg, victim.preprocessing)
        warn_whole_range(self.eps, self.eps_scale, self.eps_unit, self.bounds, self.root.name)

    def _prepare(self, victim: Victim, label_free: bool) -> None:
        self.preprocessing = victim.preprocessing
        use_series_loader(self.preprocessing)
        if self.grid == "source":
            self.loading, self.rest = split_preprocessing(self.preprocessing)
        self.missing_ok = label_free and victim.has_labels

    def _preprocess(self, item: dict[str, Any]) -> dict[str, Any]:
        ctx = allow_missing_keys_mode(self.preprocessing) if self.missing_ok else contextlib.nullcontext()
        with ctx:
            try:
                return self.preprocessing(item)
            except Exception as e:
                raise ValueError(f"the bundle's preprocessing failed on {item['image']!r}: {e}") from e

    def predict(self, victim: Victim, x: torch.Tensor) -> torch.Tensor:
        """The network's output on the network input ``x`` through the bundle's inferer (no gradient)."""
        with torch.no_grad():
            out = victim.inferer(x, victim.network)
        return out.as_tensor() if isinstance(out, MetaTensor) else out

    def _load_batch(self, item: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor | None]:
        data = self._preprocess(item)
        img = data["image"]
        x = (img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img))[None].float().to(self.device)
        lab = None
        if "label" in item:
            lab = data["label"]
            lab = torch.as_tensor(lab.as_tensor() if isinstance(lab, MetaTensor) else lab)
            lab = lab[None].to(self.device) if lab.ndim > 0 else lab.reshape(1).to(self.device)
        return data, x, lab

    def _attack_named(self, victim: Victim, case: SourceCase, label_free: bool) -> dict[str, Any]:
        """:meth:`attack_case`, with a case that runs out of memory named with its shape and what to lower."""
        try:
            return self.attack_case(victim, case, label_free)
        except (RuntimeError, MemoryError) as err:
            if not out_of_memory(err):
                raise
            shape = tuple(getattr(self, "last_shape", ()) or ()) or None
            raise ValueError(out_of_memory_message(str(case.source), shape, self.device)) from err

    def attack_case(self, victim: Victim, case: SourceCase, label_free: bool) -> dict[str, Any]:
        """Attack one case, write its outputs and return its record (not yet stored)."""
        item: dict[str, Any] = {"image": str(case.source)}
        if not label_free:
            item["label"] = case.label
        data, x, lab = self._load_batch(item)
        self.last_shape = tuple(x.shape[2:])
        logits_clean = self.predict(victim, x)
        if self.grid == "source":
            res = source_grid_case(self, victim, case, x, lab)
        else:
            res = network_grid_case(self, victim, case, data, x, lab)
        ref = hard_prediction(logits_clean) if lab is None else prepare_labels(lab, logits_clean)
        record = case_record(self, case, label_free, logits_clean, res.logits_adv, ref)
        record["success"] = float(case_success(victim.task, logits_clean, res.logits_adv, ref)[0])
        record["max_abs_perturbation_network"] = float((res.x_adv - x).abs().max())
        record.update(res.record)
        if victim.task == "classification":
            record["pred_clean"] = hard_prediction(logits_clean).flatten().tolist()
            record["pred_adversarial"] = hard_prediction(res.logits_adv).flatten().tolist()
        if case.kind == "png":
            raw, reverse = loaded_png(self.preprocessing, str(case.source))
            outputs, written = write_png(case, res.d_src, raw, reverse, self.output_dir, self.eps_source)
        else:
            settings = {"attack": self.attack, "eps": self.eps, "eps_unit": self.eps_unit, "num_iter": self.num_iter}
            outputs, written = write_volume(case, res.d_src, self.output_dir, self.eps_source, self.save_dtype, self.dicom, settings)
        record["outputs"] = {k: str(Path(v).relative_to(self.output_dir)) for k, v in outputs.items()}
        record.update(written)
        if self.verify:
            load = lambda path: self._load_batch({**item, "image": path})[1]
            read_back_survival(load, lambda xw: self.predict(victim, xw), record, outputs, res.x_adv, logits_clean, ref)
        # the attack's own view, in its own units (network input, or source/stored units on the source grid)
        record["diagnostics"] = {k: v for k, v in res.diagnostics.items() if k not in ("eps",)}
        record["settings"] = self.settings(label_free)
        return to_jsonable(record, strict=False)

    # ------------------------------------------------------------------ summary
    def write_summary(self, cases: list[SourceCase]) -> dict[str, Any]:
        """``summary.json``: per case the key numbers, their means over cases and the read-back / in-memory ratios."""
        records = {c.case_id: rec for c in cases if (rec := self.store.load(self.attack, self.eps, c.case_id)) is not None}
        head = {"bundle": self.root.name, "attack": self.attack, "eps": self.eps, "eps_unit": self.eps_unit, "grid": self.grid}
        summary = summarize_cases(records, head)
        write_json_atomic(self.output_dir / "summary.json", to_jsonable(summary), allow_nan=False, trailing_newline=True)
        return summary


def run_attack(bundle: str | os.PathLike, input: str | os.PathLike, output_dir: str | os.PathLike, **kwargs: Any) -> dict[str, Any]:
    """Attack every image of ``input`` and write adversarial copies to ``output_dir``; returns the summary.

    A thin call of :class:`AdversarialWriter`: ``kwargs`` are its arguments (``attack``, ``eps``,
    ``eps_unit``, ``num_iter``, ``grid``, ``save_dtype``, ``device``, ...) with its defaults. The attacks
    are SMIA (Qi et al., "Stabilized Medical Image Attacks", ICLR 2021, arXiv 2103.05232) and its
    baselines (:func:`monai_smia.attacks.registry.make_attack`).
    """
    return AdversarialWriter(bundle, input, output_dir, **kwargs).run()
