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
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor
from monai.transforms.utils import allow_missing_keys_mode
from monai.utils import optional_import

from monai_smia.apps.attack.cases import SourceCase, bundle_attack_defaults, bundle_loads_labels, discover_cases
from monai_smia.apps.attack.grids import network_grid_case, predict, source_grid_case
from monai_smia.apps.attack.outputs import loaded_png, write_png, write_volume
from monai_smia.apps.attack.plan import AttackPlan, AttackSettings, CaseAttack, case_attack
from monai_smia.apps.attack.survival import case_record, read_back_survival, summarize_cases
from monai_smia.attacks.registry import check_attacks
from monai_smia.attacks.volume import slice_progress
from monai_smia.bundle.bundle import Bundle
from monai_smia.bundle.data import out_of_memory, out_of_memory_message
from monai_smia.bundle.inputs import check_case_files, input_spec
from monai_smia.bundle.victim import Victim, load_victim
from monai_smia.io.atomic import write_json_atomic
from monai_smia.losses import hard_prediction, prepare_labels
from monai_smia.metrics import case_success
from monai_smia.reports import (
    CaseStore,
    all_stored_line,
    check_run_settings,
    file_sha256,
    provisional_settings,
    to_jsonable,
    write_provenance,
)

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
        self, bundle: str | os.PathLike | Bundle, input: str | os.PathLike, output_dir: str | os.PathLike, **kwargs: Any
    ) -> None:
        self.plan = AttackPlan.create(bundle, input, output_dir, **kwargs)
        self.store = CaseStore(self.plan.output_dir)

    def cases(self) -> tuple[list[SourceCase], dict[str, Any]]:
        """The input's cases (the first ``max_cases``) and where they came from."""
        p = self.plan
        cases, source = discover_cases(p.input, p.data_split, p.label_key, p.use_labels)
        return (cases if p.max_cases is None else cases[: p.max_cases]), source

    def is_done(self, case: SourceCase) -> bool:
        """A stored record whose outputs all exist."""
        s = self.plan.settings
        rec = self.store.load(s.attack, s.eps, case.case_id)
        if rec is None or rec.get("source") != str(case.source.resolve()):
            return False
        outputs = rec.get("outputs")
        return isinstance(outputs, dict) and all((self.plan.output_dir / p).exists() for p in outputs.values())

    def _label_free(self, cases: list[SourceCase]) -> bool:
        label_free = not all(c.label is not None for c in cases)
        if not label_free and not bundle_loads_labels(self.plan.bundle):
            name = self.plan.bundle.name
            logger.warning(
                "%s has no train.json 'validate' preprocessing that loads labels; attacking label-free.", name
            )
            label_free = True
        if label_free:
            for c in cases:
                c.label = None
        return label_free

    def run(self) -> dict[str, Any]:
        """Attack every pending case, then write ``summary.json`` and ``provenance.json``; returns the summary.
        A run that fails before storing any case leaves no ``settings.json`` behind."""
        with provisional_settings(self.plan.output_dir):
            return self._run()

    def _checked_victim(self, pending: list[SourceCase], label_free: bool) -> tuple[Victim, CaseAttack]:
        """The bundle's victim and the cases' attack, with the attack, every input and the budget checked (before
        anything is written)."""
        p = self.plan
        if not p.weights.is_file():
            raise FileNotFoundError(
                f"checkpoint {str(p.weights)!r} not found: train the bundle first (see its docs/README.md) or pass "
                "checkpoint=PATH."
            )
        victim = load_victim(p.bundle, device=p.device, checkpoint=p.checkpoint, labels=not label_free)
        try:
            check_attacks([p.settings.attack], task=victim.task)
        except ValueError as err:
            raise ValueError(f"--attack {p.settings.attack}: {str(err).removeprefix('attacks: ')}") from None
        check_case_files([c.source for c in pending], input_spec(victim.metadata, victim.preprocessing, victim.inferer))
        return victim, case_attack(p, victim, label_free)

    def _run(self) -> dict[str, Any]:
        p = self.plan
        cases, data_source = self.cases()
        settings = dataclasses.replace(p.settings, label_free=self._label_free(cases))
        pending = [c for c in cases if not self.is_done(c)]
        victim, spec = self._checked_victim(pending, settings.label_free) if pending else (None, None)
        p.output_dir.mkdir(parents=True, exist_ok=True)
        sha = file_sha256(p.weights) if p.weights.is_file() else None
        check_run_settings(p.output_dir, {**settings.as_dict(), "checkpoint_sha256": sha})
        logger.info("%s on %s: %d cases, %d already done, %s eps=%g%s on the %s grid", p.bundle.name, p.input,
                    len(cases), len(cases) - len(pending), settings.attack, settings.eps, settings.eps_unit,
                    settings.grid)  # fmt: skip
        if not pending:  # a rerun that finds everything stored says so (as the evaluator does)
            print(all_stored_line(f"{p.bundle.name} {settings.attack}", len(cases), p.output_dir))
        if victim is not None and spec is not None:
            show = p.progress and _has_tqdm
            bar = tqdm(pending, desc=f"{p.bundle.name} {settings.attack}", disable=not show) if _has_tqdm else pending
            for case in bar:
                with slice_progress(f"{case.case_id} slices") if show else contextlib.nullcontext():
                    self.store.save(attack_case_named(p, settings, spec, victim, case))
        summary = self.write_summary(cases)
        if pending or not (p.output_dir / "provenance.json").is_file():  # else keep the run's that wrote the outputs
            self._write_provenance(settings, spec, len(cases), data_source)
        return summary

    def _write_provenance(
        self, settings: AttackSettings, spec: CaseAttack | None, num_cases: int, data_source: Any
    ) -> None:
        attack_settings = {
            **settings.as_dict(),
            "eps_network": None if spec is None else spec.eps_network,
            "bounds_resolved": None if spec is None else spec.bounds,
            "bounds_from": None if spec is None else spec.bounds_note,
            "cases": num_cases,
        }
        write_provenance(
            self.plan.output_dir / "provenance.json",
            seed=settings.seed,
            checkpoint=self.plan.weights if self.plan.weights.is_file() else None,
            data_source=data_source,
            attack_settings=attack_settings,
            command_line=sys.argv,
        )

    def write_summary(self, cases: list[SourceCase]) -> dict[str, Any]:
        """``summary.json``: per case the key numbers, their means over cases and the read-back / in-memory ratios."""
        s = self.plan.settings
        records = {c.case_id: rec for c in cases if (rec := self.store.load(s.attack, s.eps, c.case_id)) is not None}
        head = {"bundle": s.bundle, "attack": s.attack, "eps": s.eps, "eps_unit": s.eps_unit, "grid": s.grid}
        summary = summarize_cases(records, head)
        path = self.plan.output_dir / "summary.json"
        write_json_atomic(path, to_jsonable(summary), allow_nan=False, trailing_newline=True)
        return summary


# ---------------------------------------------------------------------------------------------- one case
def _preprocess(spec: CaseAttack, item: dict[str, Any]) -> dict[str, Any]:
    ctx = allow_missing_keys_mode(spec.preprocessing) if spec.missing_ok else contextlib.nullcontext()
    with ctx:
        try:
            return spec.preprocessing(item)  # type: ignore[no-any-return]
        except Exception as e:
            raise ValueError(f"the bundle's preprocessing failed on {item['image']!r}: {e}") from e


def load_batch(
    spec: CaseAttack, item: dict[str, Any], device: torch.device
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor | None]:
    """``item`` through the bundle's preprocessing: the data, the image as a batch of one and its label (or
    ``None``) on ``device``."""
    data = _preprocess(spec, item)
    img = data["image"]
    x = (img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img))[None].float().to(device)
    lab = None
    if "label" in item:
        lab = data["label"]
        lab = torch.as_tensor(lab.as_tensor() if isinstance(lab, MetaTensor) else lab)
        lab = lab[None].to(device) if lab.ndim > 0 else lab.reshape(1).to(device)
    return data, x, lab


def attack_case_named(
    plan: AttackPlan, settings: AttackSettings, spec: CaseAttack, victim: Victim, case: SourceCase
) -> dict[str, Any]:
    """:func:`attack_case`, with a case that runs out of memory named with its shape and what to lower."""
    item: dict[str, Any] = {"image": str(case.source)}
    if not settings.label_free:
        item["label"] = case.label
    batch = load_batch(spec, item, plan.device)
    try:
        return attack_case(plan, settings, spec, victim, case, item, batch)
    except (RuntimeError, MemoryError) as err:
        if not out_of_memory(err):
            raise
        raise ValueError(out_of_memory_message(str(case.source), tuple(batch[1].shape[2:]), plan.device)) from err


def attack_case(
    plan: AttackPlan,
    settings: AttackSettings,
    spec: CaseAttack,
    victim: Victim,
    case: SourceCase,
    item: dict[str, Any],
    batch: tuple[dict[str, Any], torch.Tensor, torch.Tensor | None],
) -> dict[str, Any]:
    """Attack one case (``item`` loaded as ``batch`` by :func:`load_batch`), write its outputs and return its
    record (not yet stored)."""
    data, x, lab = batch
    logits_clean = predict(victim, x)
    if settings.grid == "source":
        res = source_grid_case(spec, victim, case, x, lab)
    else:
        res = network_grid_case(spec, victim, case, data, x, lab)
    ref = hard_prediction(logits_clean) if lab is None else prepare_labels(lab, logits_clean)
    record = case_record(spec, settings, case, logits_clean, res.logits_adv, ref)
    record["success"] = float(case_success(victim.task, logits_clean, res.logits_adv, ref)[0])
    record["max_abs_perturbation_network"] = float((res.x_adv - x).abs().max())
    record.update(res.record)
    if victim.task == "classification":
        record["pred_clean"] = hard_prediction(logits_clean).flatten().tolist()
        record["pred_adversarial"] = hard_prediction(res.logits_adv).flatten().tolist()
    outputs, written = _write_case(plan, settings, spec, case, res.d_src)
    record["outputs"] = {k: str(Path(v).relative_to(plan.output_dir)) for k, v in outputs.items()}
    record.update(written)
    if plan.verify:
        load = lambda path: load_batch(spec, {**item, "image": path}, plan.device)[1]  # noqa: E731
        read_back_survival(load, lambda xw: predict(victim, xw), record, outputs, res.x_adv, logits_clean, ref)
    # the attack's own view, in its own units (network input, or source/stored units on the source grid)
    record["diagnostics"] = {k: v for k, v in res.diagnostics.items() if k not in ("eps",)}
    record["settings"] = settings.as_dict()
    return to_jsonable(record, strict=False)  # type: ignore[no-any-return]


def _write_case(
    plan: AttackPlan, settings: AttackSettings, spec: CaseAttack, case: SourceCase, d_src: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the case's adversarial image and perturbation (PNG, or NIfTI and DICOM on the source grid)."""
    if case.kind == "png":
        raw, reverse = loaded_png(spec.preprocessing, str(case.source))
        return write_png(case, d_src, raw, reverse, plan.output_dir, spec.eps_source)
    head = {
        "attack": settings.attack,
        "eps": settings.eps,
        "eps_unit": settings.eps_unit,
        "num_iter": settings.num_iter,
    }
    return write_volume(case, d_src, plan.output_dir, spec.eps_source, settings.save_dtype, settings.dicom, head)


def run_attack(
    bundle: str | os.PathLike, input: str | os.PathLike, output_dir: str | os.PathLike, **kwargs: Any
) -> dict[str, Any]:
    """Attack every image of ``input`` and write adversarial copies to ``output_dir``; returns the summary.

    A thin call of :class:`AdversarialWriter`: ``kwargs`` are its arguments (``attack``, ``eps``,
    ``eps_unit``, ``num_iter``, ``grid``, ``save_dtype``, ``device``, ...) with its defaults. The attacks
    are SMIA (Qi et al., "Stabilized Medical Image Attacks", ICLR 2021, arXiv 2103.05232) and its
    baselines (:func:`monai_smia.attacks.registry.make_attack`).
    """
    return AdversarialWriter(bundle, input, output_dir, **kwargs).run()
