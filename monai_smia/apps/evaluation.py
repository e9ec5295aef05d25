"""Robustness evaluation of a MONAI bundle's network: clean data and each attack of a list, at the
same budget and iteration count, as MONAI ``SupervisedEvaluator`` runs, with MONAI metrics side by side.

Every case's result is stored as soon as it is computed (:class:`~monai_smia.reports.CaseStore`), so
an interrupted run resumes where it stopped; under ``torchrun`` each rank evaluates its share of the
pending cases (``DistributedSampler(even_divisible=False)``: every case exactly once) and rank 0
merges the stored results into the reports.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.data.utils import list_data_collate
from monai.engines import SupervisedEvaluator
from monai.engines.utils import PrepareBatchExtraInput
from monai.inferers import SliceInferer
from monai.utils import ensure_tuple, optional_import

from monai_smia.io.datalist import load_datalist
from monai_smia.attacks.registry import ATTACKS, DEFAULT_ATTACKS, check_attacks, make_attack
from monai_smia.reports.figures import case_figure, trace_curves_figure
from monai_smia.bundle.data import CaseErrors, bundle_cases, find_case_error, root_cause
from monai_smia.handlers.seeding import case_seed
from monai_smia.inferers import AttackInferer
from monai_smia.io.units import parse_bounds, resolve_bounds, resolve_eps_scale
from monai_smia.metrics import (
    classification_attack_success,
    classification_case_metrics,
    perturbation_case_metrics,
    segmentation_attack_success,
    segmentation_case_metrics,
)
from monai_smia.reports import (
    CaseStore,
    atomic_write_bytes,
    check_run_settings,
    classification_set_metrics,
    file_sha256,
    write_eps_sweep,
    write_provenance,
    write_reports,
)
from monai_smia.bundle.victim import Victim, is_train_override, load_victim, resolve_bundle

Events, _ = optional_import("ignite.engine", name="Events")
ProgressBar, _ = optional_import("ignite.handlers", name="ProgressBar")

__all__ = ["ATTACKS", "DEFAULT_ATTACKS", "make_attack", "RobustnessEvaluation"]

logger = logging.getLogger(__name__)

TRACE_CURVES = ("deviation_loss", "stabilization_loss", "perturbation_variance", "cosine")


class RobustnessEvaluation:
    """Evaluate a bundle's victim on clean and attacked data and write the reports.

    Args:
        bundle: bundle name (``lung_ct_seg``, ...) or the path of any MONAI bundle folder.
        dataset_dir: a data_prep folder (``datalist.json`` at its root).
        output_dir: where reports, figures and the resumable per-case results go.
        attacks: names from :data:`ATTACKS`.
        eps: budgets in the user's unit (``eps_unit``), e.g. ``[20]`` HU; each becomes
            ``eps * eps_scale`` in the network's input units.
        eps_unit: display unit of ``eps`` (``"HU"``, ``"/255"``, ...).
        eps_scale: network-input units per ``eps`` unit; ``None``: ``1 / (hu_window[1] - hu_window[0])``
            when the bundle config has ``hu_window`` and the unit is HU, otherwise 1.
        num_iter, alpha, sigma: iterative attack settings (DESIGN.md defaults: 10, 1, 1 voxel).
        bounds: valid range of the network input (``None``: no clamp).
        data_split: datalist split to evaluate.
        max_cases: evaluate only the first cases (smoke runs).
        seed: seeds random starts and noise.
        device: ``"cuda"``/``"cpu"``; default: CUDA when available (``cuda:LOCAL_RANK`` under torchrun).
        distributed: split cases across ``torchrun`` processes (NCCL on GPUs, gloo on CPUs).
        num_figure_cases: cases drawn in the example figures.
        batch_size: cases per evaluator iteration (volumes of different sizes need 1).
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
        batch_size: int = 1,
    ) -> None:
        self.attacks = check_attacks(list(attacks))
        if eps is None:
            raise ValueError(f"no attack budget for {bundle}: pass eps (in the bundle's input units, or with eps_unit='HU').")
        eps_list = [eps] if isinstance(eps, (int, float)) else list(eps)
        if not eps_list or any(not isinstance(e, (int, float)) or not e > 0 for e in eps_list):
            raise ValueError(f"eps must be one or more budgets > 0, got {eps!r}")
        self.eps = [float(e) for e in eps_list]
        self.bundle, self.dataset_dir, self.output_dir = bundle, Path(dataset_dir), Path(output_dir)
        self.eps_unit, self.eps_scale = eps_unit, eps_scale
        self.num_iter, self.alpha, self.sigma = int(num_iter), float(alpha), float(sigma)
        self.bounds_arg = parse_bounds(bounds)
        self.bounds: tuple[float, float] | None = None  # resolved by run() once the bundle is loaded
        self.data_split, self.max_cases, self.seed = data_split, max_cases, int(seed)
        self.distributed, self.num_figure_cases, self.batch_size = bool(distributed), int(num_figure_cases), int(batch_size)
        self.device = device
        self.rank, self.world_size = 0, 1

    # ------------------------------------------------------------------ set-up
    def _setup_distributed(self) -> torch.device:
        import torch.distributed as dist

        if self.distributed and not dist.is_initialized() and "RANK" not in os.environ:
            logger.warning("distributed=True but not launched by torchrun (no RANK): running as one process")
            self.distributed = False
        if self.distributed:
            if not dist.is_initialized():
                backend = "nccl" if torch.cuda.is_available() and self.device != "cpu" else "gloo"
                dist.init_process_group(backend=backend)
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        if self.device is not None:
            dev = torch.device(self.device)
        else:
            dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return dev

    def _barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def cases(self, bundle_root: Path | None = None) -> list[dict[str, Any]]:
        """The evaluated items (:func:`monai_smia.bundle.bundle_cases`), each with a stable ``case_id``."""
        items, self.case_source = bundle_cases(bundle_root or resolve_bundle(self.bundle), self.dataset_dir, self.data_split)
        if self.max_cases is not None:
            items = items[: int(self.max_cases)]
        out = []
        for i, item in enumerate(items):
            stem = Path(str(item["image"])).name.split(".")[0]
            out.append({**item, "case_id": f"{i:04d}_{stem}"})
        return out

    def run_settings(self, victim: Victim, items: list[dict[str, Any]]) -> dict[str, Any]:
        """What every stored case of this output folder depends on (attacks and budgets are keys of the store)."""
        cases = json.dumps([[it["case_id"], Path(it["image"]).name, Path(str(it.get("label", ""))).name] for it in items])
        return {
            "bundle": victim.root.name,
            "checkpoint_sha256": file_sha256(victim.checkpoint),
            "cases_from": self.case_source,
            "cases_sha256": hashlib.sha256(cases.encode()).hexdigest(),
            "data_split": self.data_split,
            "eps_unit": self.eps_unit,
            "eps_scale": self.scale,
            "num_iter": self.num_iter,
            "step_size": "2.5 * eps / T",
            "alpha": self.alpha,
            "sigma": self.sigma,
            "bounds": list(self.bounds) if self.bounds is not None else None,
            "seed": self.seed,
        }

    def resolve_bounds(self, victim: Victim) -> None:
        """Bounds from the argument, else from the bundle's preprocessing (:func:`resolve_bounds`);
        warns when a budget covers the whole valid range."""
        self.bounds, self.bounds_note = resolve_bounds(self.bounds_arg, victim.preprocessing)
        if self.bounds is not None:
            width = self.bounds[1] - self.bounds[0]
            for eps in self.eps:
                if eps * self.scale >= width:
                    warnings.warn(
                        f"eps = {eps:g}{self.eps_unit} covers the whole valid input range {self.bounds} of {victim.name} "
                        f"({width / self.scale:g}{self.eps_unit}): even random noise can replace the image.",
                        stacklevel=2,
                    )

    def resolved_eps_scale(self, victim: Victim) -> float:
        if self.eps_scale is not None:
            self.eps_scale_note = {"eps_unit": self.eps_unit, "eps_scale": "given"}
            return float(self.eps_scale)
        scale, self.eps_scale_note = resolve_eps_scale(self.eps_unit, victim.preprocessing, victim.config, bundle=victim.name)
        return scale

    def spatial_dims(self, victim: Victim) -> int:
        if isinstance(victim.inferer, SliceInferer):
            return 2
        shape = victim.metadata.get("network_data_format", {}).get("inputs", {}).get("image", {}).get("spatial_shape", [0, 0])
        return len(shape)

    # ------------------------------------------------------------------ one condition
    def _evaluate(self, victim: Victim, attack_name: str, eps: float | None, items: list[dict[str, Any]], device: torch.device) -> None:
        store, scale = self.store, self.scale
        self._barrier()  # every rank sees the same finished cases, before any rank writes new ones
        pending = store.pending(attack_name, eps, [it["case_id"] for it in items])
        self._barrier()
        todo = [it for it in items if it["case_id"] in set(pending)]
        sampler = None
        if self.distributed:
            from monai.data import DistributedSampler

            sampler = DistributedSampler(Dataset(todo), even_divisible=False, shuffle=False)
        if not todo or (sampler is not None and len(sampler) == 0):
            return
        loader = DataLoader(Dataset(todo, CaseErrors(victim.preprocessing)), batch_size=self.batch_size, sampler=sampler, num_workers=0, collate_fn=list_data_collate)
        if attack_name == "clean":
            inferer, attack = victim.inferer, None
        else:
            attack = make_attack(attack_name, victim.network, eps * scale, self.num_iter, self.alpha, self.sigma, self.spatial_dims(victim), self.bounds)
            inferer = AttackInferer(attack, victim.inferer, use_labels=victim.has_labels, seed=self.seed)
        prepare = PrepareBatchExtraInput({"labels": "label"}) if attack is not None and victim.has_labels else None
        kwargs = {"prepare_batch": prepare} if prepare is not None else {}
        evaluator = SupervisedEvaluator(
            device=device, val_data_loader=loader, network=victim.network, inferer=inferer, decollate=False, amp=False, **kwargs
        )
        figure_cases = {it["case_id"] for it in items[: self.num_figure_cases]}

        def on_iteration(engine: Any) -> None:
            out, batch = engine.state.output, engine.state.batch
            x = out["image"].as_tensor() if hasattr(out["image"], "as_tensor") else out["image"]
            x_adv = inferer.last_adversarial if attack is not None else None
            for rec, example in self.case_records(victim, attack_name, eps, batch["case_id"], x, x_adv, out, inferer, figure_cases):
                store.save(rec)
                if example is not None:
                    self._save_example(attack_name, eps, rec["case_id"], example)

        def reseed(engine: Any) -> None:  # random starts depend on the cases, not on batching or ranks
            if isinstance(inferer, AttackInferer):
                inferer.generator = torch.Generator().manual_seed(case_seed(self.seed, attack_name, eps, engine.state.batch["case_id"]))

        def name_case(engine: Any, err: Exception) -> None:  # errors during a case name the case's file
            loading = find_case_error(err)  # raised while loading the next batch: state.batch is not that batch
            if loading is not None:
                raise ValueError(str(loading)) from err
            batch = engine.state.batch if isinstance(engine.state.batch, dict) else {}
            meta = getattr(batch.get("image"), "meta", {}) or {}
            files = [str(f) for f in ensure_tuple(meta.get("filename_or_obj", ()))] or list(batch.get("case_id", []))
            cause = root_cause(err)
            raise ValueError(f"{', '.join(files) or 'a case'}: {cause}") from err

        evaluator.add_event_handler(Events.EXCEPTION_RAISED, name_case)
        evaluator.add_event_handler(Events.ITERATION_STARTED, reseed)
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, on_iteration)
        if ProgressBar is not None and self.rank == 0:
            ProgressBar(desc=f"{victim.name} {attack_name}{'' if eps is None else f' eps={eps:g}{self.eps_unit}'}", persist=True).attach(evaluator)
        evaluator.run()

    def case_records(
        self,
        victim: Victim,
        attack_name: str,
        eps: float | None,
        case_ids: Sequence[str],
        x: torch.Tensor,
        x_adv: torch.Tensor | None,
        out: dict[str, Any],
        inferer: Any,
        figure_cases: set[str],
    ) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
        """Per-case records (and example arrays for figure cases) of one evaluator iteration."""
        logits = out["pred"].float().cpu()
        label = out.get("label")
        label = None if label is None else torch.as_tensor(label).cpu()
        per_case: dict[str, np.ndarray] = {}
        if label is not None:
            per_case.update(
                classification_case_metrics(logits, label) if victim.task == "classification" else segmentation_case_metrics(logits, label)
            )
        if x_adv is not None:
            stats = perturbation_case_metrics(x.cpu(), x_adv.cpu(), bounds=self.bounds)
            for k in ("linf", "l2"):
                stats[k] = stats[k] / self.scale
            stats["var"] = stats["var"] / self.scale**2
            per_case.update(stats)
        diagnostics = getattr(inferer, "last_diagnostics", []) if x_adv is not None else []
        results = []
        for b, cid in enumerate(case_ids):
            rec: dict[str, Any] = {"case_id": str(cid), "attack": attack_name, "eps": eps}
            for k, v in per_case.items():
                rec[k] = v[b].item() if hasattr(v[b], "item") else v[b]
            if victim.task == "classification":
                rec["logits"] = logits[b].tolist()
            if b < len(diagnostics) and "positive_cosine_share" in diagnostics[b] and attack_name not in ("noise", "FGSM"):
                rec["positive_cosine_share"] = diagnostics[b]["positive_cosine_share"]
                for k in TRACE_CURVES:
                    rec[f"trace_{k}"] = diagnostics[b][k]
            example = None
            if str(cid) in figure_cases:
                example = {"image": x[b].cpu().numpy(), "pred": logits[b].argmax(0).numpy() if logits.ndim > 2 else int(logits[b].argmax())}
                if x_adv is not None:
                    example["adv_image"] = x_adv[b].cpu().numpy()
                if label is not None:
                    example["label"] = label[b].numpy()
            results.append((rec, example))
        return results

    def _example_path(self, attack_name: str, eps: float | None, case_id: str) -> Path:
        tag = "clean" if eps is None else f"{attack_name}_eps{eps:g}"
        return self.output_dir / "examples" / f"{tag}_{case_id}.npz"

    def _save_example(self, attack_name: str, eps: float | None, case_id: str, example: dict[str, Any]) -> None:
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, **{k: np.asarray(v) for k, v in example.items()})
        atomic_write_bytes(self._example_path(attack_name, eps, case_id), buf.getvalue())

    # ------------------------------------------------------------------ whole run
    def run(self) -> dict[str, Any]:
        """Evaluate every pending (condition, case), then (rank 0) write the reports; returns the summary of the first eps."""
        device = self._setup_distributed()
        victim = load_victim(self.bundle, self.dataset_dir, device)
        self.scale = self.resolved_eps_scale(victim)
        self.resolve_bounds(victim)
        self.store = CaseStore(self.output_dir)
        items = self.cases(victim.root)
        check_run_settings(self.output_dir, self.run_settings(victim, items), write=self.rank == 0)
        if self.rank == 0:
            logger.info("evaluating %s on %d %s cases of %s", victim.name, len(items), self.data_split, self.dataset_dir)
        self._evaluate(victim, "clean", None, items, device)
        for eps in self.eps:
            for name in self.attacks:
                self._evaluate(victim, name, eps, items, device)
        self._barrier()
        summary: dict[str, Any] = {}
        if self.rank == 0:
            summary = self.write_reports(victim, items)
        self._barrier()
        return summary

    def _records(self, items: list[dict[str, Any]], eps: float, victim: Victim) -> list[dict[str, Any]]:
        ids = {it["case_id"] for it in items}
        clean = {r["case_id"]: r for r in self.store.records("clean") if r["case_id"] in ids}
        records = list(clean.values())
        for name in self.attacks:
            rows = [r for r in self.store.records(name, eps) if r["case_id"] in ids]
            for r in rows:
                c = clean.get(r["case_id"])
                if c is None or victim.task == "classification" and "label" not in r:
                    continue
                if victim.task == "classification":
                    r["success"] = float(classification_attack_success([c["pred"]], [r["pred"]], [r["label"]])[0])
                elif "dice" in r:
                    r["success"] = float(segmentation_attack_success([c["dice"]], [r["dice"]])[0])
            records.extend(rows)
        return records

    def write_reports(self, victim: Victim, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Summaries, tables, per-case CSV, provenance and figures from the stored per-case results."""
        out = self.output_dir
        cls = victim.task == "classification"
        headline = ["top1"] if cls else ["dice"]
        task_metrics = ["top1"] if cls else ["dice", "iou", "pixel_accuracy"]
        metrics = [*task_metrics, "success", "linf", "l2", "var", "psnr", "ssim", "positive_cosine_share"]
        set_metrics = classification_set_metrics(output_key="logits") if cls else None
        unit = self.eps_unit
        by_eps = {}
        for i, eps in enumerate(self.eps):
            records = self._records(items, eps, victim)
            target = out if i == 0 else out / f"eps_{eps:g}"
            res = write_reports(
                target,
                records,
                metrics=metrics,
                headline=headline,
                set_metrics=set_metrics,
                title=f"{victim.name}: {self.data_split} split, eps = {eps:g}{unit}, T = {self.num_iter}",
                seed=self.seed,
            )
            by_eps[eps] = res["summary"]
        write_eps_sweep(out, by_eps, headline[0], eps_unit=unit)
        write_provenance(
            out / "provenance.json",
            seed=self.seed,
            checkpoint=victim.checkpoint,
            data_source=self._data_source(),
            attack_settings={
                "attacks": self.attacks,
                "eps": self.eps,
                "eps_unit": unit,
                "eps_scale": self.scale,
                "eps_scale_from": self.eps_scale_note,
                "num_iter": self.num_iter,
                "step_size": "2.5 * eps / T",
                "alpha": self.alpha,
                "sigma": self.sigma,
                "bounds": self.bounds,
                "bounds_from": self.bounds_note,
                "bundle": str(victim.root.name),
                "data_split": self.data_split,
                "cases": len(items),
            },
            command_line=sys.argv,
        )
        self.write_figures(victim, items, self.eps[0])
        print((out / "summary.md").read_text())
        return by_eps[self.eps[0]]

    def _data_source(self) -> dict[str, Any]:
        try:
            meta = load_datalist(self.dataset_dir)
        except (FileNotFoundError, ValueError):
            return {"dataset_dir": self.dataset_dir.name, "cases_from": self.case_source}
        return {k: meta.get(k) for k in ("name", "source", "synthetic")} | {"dataset_dir": self.dataset_dir.name, "cases_from": self.case_source}

    def write_figures(self, victim: Victim, items: list[dict[str, Any]], eps: float) -> list[Path]:
        """Example cases for each attack, and Fig. 2-style DEV vs SMIA iteration curves."""
        paths = []
        task = victim.task
        for name in self.attacks:
            cases = []
            for it in items[: self.num_figure_cases]:
                cid = it["case_id"]
                clean_p, adv_p = self._example_path("clean", None, cid), self._example_path(name, eps, cid)
                if not (clean_p.is_file() and adv_p.is_file()):
                    continue
                with np.load(clean_p) as c, np.load(adv_p) as a:
                    case = {"case_id": cid, "image": c["image"], "adv_image": a["adv_image"], "clean_pred": c["pred"], "adv_pred": a["pred"]}
                    if task == "classification":  # PNGs load width-first (PILReader): show them upright
                        case["image"], case["adv_image"] = (np.swapaxes(case[k], -1, -2) for k in ("image", "adv_image"))
                    if "label" in c.files:
                        case["label"] = c["label"]
                cases.append(case)
            if cases:
                paths.append(
                    case_figure(
                        self.output_dir / f"examples_{name}.png",
                        cases,
                        task=task,
                        attack_name=f"{name} ({eps:g}{self.eps_unit})",
                        transpose=task == "segmentation",  # RAS arrays: anterior at the top
                    )
                )
        curves = {}
        for name in ("DEV", "SMIA"):
            rows = [r for r in self.store.records(name, eps) if "trace_deviation_loss" in r]
            if rows:
                with warnings.catch_warnings():  # DEV has no stabilization term: an all-nan curve is expected
                    warnings.simplefilter("ignore", RuntimeWarning)
                    curves[name] = {
                        k: np.nanmean(np.array([r[f"trace_{k}"] for r in rows], dtype=np.float64), axis=0).tolist() for k in TRACE_CURVES
                    }
        if curves:
            paths.append(trace_curves_figure(self.output_dir / "iterations_dev_vs_smia.png", curves, title=f"{victim.name}, eps = {eps:g}{self.eps_unit}"))
        return paths


def evaluation_from_bundle(bundle: str | os.PathLike, **overrides: Any) -> RobustnessEvaluation:
    """A :class:`RobustnessEvaluation` with the defaults of the bundle's ``configs/evaluate.json``
    (budget, unit, batch size, ...) and ``overrides`` (``None`` values are ignored).

    Bundles without such a config (e.g. from the MONAI model zoo) get the package defaults.
    """
    from monai.bundle import ConfigParser

    root = resolve_bundle(bundle)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    cfg = root / "configs" / "evaluate.json"
    parser = ConfigParser()
    if cfg.is_file() and not is_train_override(cfg):
        parser.read_config(str(cfg))
    target = str(parser.config.get("evaluation", {}).get("_target_", "")) if isinstance(parser.config.get("evaluation"), dict) else ""
    if not target.endswith("RobustnessEvaluation"):
        for key, flag in (("dataset_dir", "--dataset-dir"), ("output_dir", "--output"), ("eps", "--eps")):
            if key not in overrides:
                raise ValueError(
                    f"{root.name} declares no monai-smia evaluation ({cfg.name} has no 'evaluation'), so it has no "
                    f"default {key}: pass {flag}" + (" (in the bundle's input units, or with --eps-unit HU)" if key == "eps" else "") + "."
                )
        return RobustnessEvaluation(bundle=root, **overrides)
    parser["bundle_root"] = str(root)
    for key, value in overrides.items():
        if key not in parser.config:
            raise ValueError(f"unknown evaluation setting {key!r}")
        parser[key] = value
    return parser.get_parsed_content("evaluation", instantiate=True)
