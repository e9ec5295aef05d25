"""Attack every image of a dataset, folder or file with a MONAI bundle's network and write adversarial copies.

This is what a bundle's ``configs/attack.json`` runs (``python -m monai.bundle run --config_file
bundles/NAME/configs/attack.json --bundle_root bundles/NAME --input PATH --output_dir DIR``). The
input is one of

- a data_prep folder (``datalist.json`` at its root): its ``test`` split by default (``data_split``
  picks another, ``"all"`` takes every split); items with labels are attacked in ground-truth mode;
- a plain folder: every NIfTI (``.nii``/``.nii.gz``) and PNG file in it and every DICOM series
  folder below it, attacked label-free (the network's own clean prediction is the target);
- one NIfTI or PNG file, or one DICOM series folder.

Each image goes through the bundle's own preprocessing (``train.json``'s ``validate`` section when
labels are used, otherwise ``inference.json``'s ``preprocessing``: see
:func:`monai_smia.bundle.victim.load_victim`) and is attacked in the network's input space, slice by slice
for a ``SliceInferer`` (:class:`monai_smia.inferers.AttackInferer`). Following DESIGN.md section 3,
the resampled image is never saved: the perturbation is brought back to the source grid (bilinear
``Invertd``, :func:`monai_smia.io.invert_perturbation`), converted to the source's intensity units
(HU for CT, 0..255 for 8-bit PNG) through the preprocessing's ``ScaleIntensityRanged``, added to
the source intensities and clamped to ``eps`` again. Outputs per case ``<case>`` in ``output_dir``:

- NIfTI and DICOM sources: ``<case>_adv.nii.gz`` and ``<case>_perturbation.nii.gz`` with the
  source's shape, affine, orientation and spacing; DICOM sources also ``<case>_adv_dicom/``, one
  new DERIVED series (:func:`monai_smia.io.write_adversarial_dicom_series`);
- PNG sources: ``<case>_adv.png`` in the source's integer type (rounded to nearest, then clamped
  so that ``|adv - source| <= floor(eps)`` in 0..255 units) and ``<case>_perturbation.npy`` (the
  stored ``adv - source``, float32, in the PNG's ``(H, W[, C])`` layout);
- ``cases/<attack>/eps_<eps>/<case>.json``: the case record (settings, ``|d|`` maxima, error rates
  of the clean, adversarial and written images, whether the attack survives integer rounding, the
  attack's per-iteration diagnostics), written last, so a rerun skips exactly the finished cases;
- ``settings.json`` (a rerun into the same folder must use the same settings), ``summary.json``
  and ``provenance.json``.

Every file is written atomically; nothing is written into the input folder.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.inferers import SliceInferer
from monai.transforms import EnsureChannelFirstd, LoadImaged
from monai.transforms.utils import allow_missing_keys_mode
from monai.utils import optional_import

from monai_smia.io.datalist import DATALIST, SPLITS, load_datalist
from monai_smia.apps.evaluation import ATTACKS, make_attack
from monai_smia.inferers import AttackInferer
from monai_smia.io import (
    LoadSeriesImage,
    invert_perturbation,
    load_source_volume,
    save_adversarial_nifti,
    write_adversarial_dicom_series,
)
from monai_smia.losses import hard_prediction, prepare_labels
from monai_smia.reports import (
    CaseStore,
    atomic_write_bytes,
    atomic_write_json,
    check_run_settings,
    file_sha256,
    to_jsonable,
    write_provenance,
)
from monai_smia.handlers.seeding import case_seed
from monai_smia.io.source_grid import write_nifti_atomic
from monai_smia.io.units import flat_transforms, parse_bounds, resolve_bounds, resolve_eps_scale, source_intensity_scale
from monai_smia.bundle.victim import Victim, is_train_override, load_victim, resolve_bundle

Image, _has_pil = optional_import("PIL.Image")
tqdm, _has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["AdversarialWriter", "SourceCase", "bundle_attack_defaults", "discover_cases", "run_attack"]

logger = logging.getLogger(__name__)

SAVE_DTYPES = ("float32", "source")


# ---------------------------------------------------------------------------------------------
# finding the images


@dataclass
class SourceCase:
    """One image to attack.

    Attributes:
        case_id: file-system safe, unique name used for the outputs.
        source: the NIfTI/PNG file or DICOM series folder.
        kind: ``"nifti"``, ``"png"`` or ``"dicom"``.
        label: the ground truth (a class index or a label file) or ``None``.
        split: datalist split the case comes from (``None`` outside a datalist).
    """

    case_id: str
    source: Path
    kind: str
    label: Any = None
    split: str | None = None


def _kind_of_file(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".png"):
        return "png"
    return None


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".png"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _holds_dicom(folder: Path) -> bool:
    try:
        return any(f.is_file() and _is_dicom_file(f) for f in folder.iterdir())
    except OSError:
        return False


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "case"


def _unique_ids(cases: list[SourceCase]) -> list[SourceCase]:
    seen: dict[str, int] = {}
    for c in cases:
        base = _safe_id(c.case_id)
        n = seen.get(base, 0)
        seen[base] = n + 1
        c.case_id = base if n == 0 else f"{base}_{n}"
    return cases


def discover_cases(
    input: str | os.PathLike, data_split: str = "test", label_key: str = "label", use_labels: bool = True
) -> tuple[list[SourceCase], dict[str, Any]]:
    """The images of ``input`` (module docstring), in a stable order, and a description of the source.

    Returns:
        ``(cases, data_source)``; every case has a ``label`` only when ``input`` is a datalist
        folder whose items all carry ``label_key`` (and ``use_labels``).

    Raises:
        FileNotFoundError: ``input`` does not exist, or holds no NIfTI, PNG or DICOM images.
        ValueError: an unsupported file type, a bad ``data_split`` or a malformed datalist.
    """
    path = Path(input)
    if not path.exists():
        raise FileNotFoundError(
            f"input {str(path)!r} does not exist: pass a data_prep folder (with {DATALIST}), a folder of "
            "NIfTI/PNG files or DICOM series, one NIfTI/PNG file, or one DICOM series folder."
        )
    if path.is_file():
        kind = _kind_of_file(path)
        if kind is None:
            if _is_dicom_file(path):
                raise ValueError(
                    f"input {str(path)!r} is a single DICOM file; pass the folder that holds its series instead."
                )
            raise ValueError(f"input {str(path)!r} is not a NIfTI (.nii, .nii.gz) or PNG file.")
        return [SourceCase(_safe_id(_stem(path)), path, kind)], {"input": path.name, "kind": "file"}
    if (path / DATALIST).is_file():
        return _datalist_cases(path, data_split, label_key, use_labels)
    if _holds_dicom(path) and not any(_kind_of_file(f) for f in path.iterdir() if f.is_file()):
        return [SourceCase(_safe_id(path.name), path, "dicom")], {"input": path.name, "kind": "dicom series"}
    cases: list[SourceCase] = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(root)
        rel = here.relative_to(path)
        for f in sorted(files):
            kind = _kind_of_file(here / f)
            if kind is not None and not f.startswith("."):
                cid = "_".join([*rel.parts, _stem(here / f)])
                cases.append(SourceCase(cid, here / f, kind))
        if here != path and _holds_dicom(here):
            cases.append(SourceCase("_".join(rel.parts), here, "dicom"))
    if not cases:
        raise FileNotFoundError(
            f"input folder {str(path)!r} holds no NIfTI (.nii, .nii.gz) or PNG files and no DICOM series folders "
            f"(and no {DATALIST})."
        )
    return _unique_ids(cases), {"input": path.name, "kind": "folder"}


def _datalist_cases(
    root: Path, data_split: str, label_key: str, use_labels: bool
) -> tuple[list[SourceCase], dict[str, Any]]:
    if data_split not in (*SPLITS, "all"):
        raise ValueError(f"data_split must be one of {', '.join(SPLITS)} or 'all', got {data_split!r}.")
    meta = load_datalist(root)
    splits = SPLITS if data_split == "all" else (data_split,)
    cases: list[SourceCase] = []
    for split in splits:
        if split not in meta:
            if data_split == "all":
                continue
            raise ValueError(f"{root / DATALIST} has no {split!r} list; choose data_split from {SPLITS} or 'all'.")
        for i, item in enumerate(load_datalist(root, split)):
            image = item.get("image")
            if not isinstance(image, str):
                raise TypeError(
                    f"{root / DATALIST}: {split}[{i}] has image {image!r}; one file or DICOM folder per item is expected."
                )
            src = Path(image)
            kind = "dicom" if src.is_dir() else _kind_of_file(src)
            if kind is None:
                raise ValueError(
                    f"{root / DATALIST}: {split}[{i}] image {image!r} is not NIfTI, PNG or a DICOM folder."
                )
            prefix = f"{split}_" if data_split == "all" else ""
            cases.append(SourceCase(f"{prefix}{_stem(src)}", src, kind, item.get(label_key), split))
    if not cases:
        raise ValueError(f"{root / DATALIST} has no {data_split!r} cases to attack.")
    if not (use_labels and all(c.label is not None for c in cases)):
        for c in cases:
            c.label = None
    source = {k: meta.get(k) for k in ("name", "source", "synthetic")}
    return _unique_ids(cases), {**source, "input": root.name, "kind": "datalist", "data_split": data_split}


# ---------------------------------------------------------------------------------------------
# bundle defaults and units


def bundle_attack_defaults(bundle: str | os.PathLike) -> dict[str, Any]:
    """Default ``eps``, ``eps_unit``, ``eps_scale``, ``bounds`` of a bundle: from its ``configs/attack.json``,
    else its ``configs/evaluate.json`` (first ``eps`` of a list); ``{}`` when it has neither."""
    root = resolve_bundle(bundle)
    for name in ("attack.json", "evaluate.json"):
        f = root / "configs" / name
        if not f.is_file() or is_train_override(f):
            continue
        parser = ConfigParser()
        parser.read_config(str(f))
        parser["bundle_root"] = str(root)
        out: dict[str, Any] = {}
        for key in ("eps", "eps_unit", "eps_scale", "bounds"):
            if key in parser.config:
                out[key] = parser.get_parsed_content(key)
        if isinstance(out.get("eps"), (list, tuple)):
            out["eps"] = out["eps"][0] if out["eps"] else None
        if out.get("eps") is not None:
            return out
    return {}


def bundle_loads_labels(bundle: str | os.PathLike) -> bool:
    """Whether :func:`monai_smia.bundle.victim.load_victim` gives this bundle a preprocessing for images and labels
    (``configs/train.json`` with a ``validate#preprocessing``)."""
    train = resolve_bundle(bundle) / "configs" / "train.json"
    if not train.is_file():
        return False
    config = ConfigParser.load_config_file(str(train))
    return isinstance(config.get("validate"), dict) and "preprocessing" in config["validate"]


def default_eps_scale(victim: Victim, eps_unit: str) -> float:
    """Network-input units per ``eps`` unit (:func:`monai_smia.io.units.resolve_eps_scale`)."""
    return resolve_eps_scale(eps_unit, victim.preprocessing, victim.config, bundle=victim.name)[0]


def _use_series_loader(preprocessing: Any) -> None:
    """Let the bundle's ``LoadImaged`` read DICOM series folders strictly (one series, no reader fallback)."""
    for t in flat_transforms(preprocessing):
        if type(t) is LoadImaged and type(t._loader).__name__ == "LoadImage":
            t._loader.__class__ = LoadSeriesImage


# ---------------------------------------------------------------------------------------------
# writing


def _atomic_png(arr: np.ndarray, path: Path) -> None:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _atomic_npy(arr: np.ndarray, path: Path) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    atomic_write_bytes(path, buf.getvalue())


class AdversarialWriter:
    """Attack every image of ``input`` with a bundle's network and write adversarial copies (module docstring).

    Args:
        bundle: bundle name (``lung_ct_seg``, ...) or the path of any MONAI bundle folder.
        input: a data_prep folder, a folder of NIfTI/PNG files and DICOM series, one NIfTI/PNG file
            or one DICOM series folder.
        output_dir: where the outputs go (created; must not lie inside ``input``).
        attack: one of :data:`monai_smia.apps.evaluation.ATTACKS` (``noise``, ``FGSM``, ``PGD``, ``DEV``, ``SMIA``).
        eps: L-infinity budget in ``eps_unit``; ``None``: the bundle's default (its ``attack.json``
            or ``evaluate.json``).
        eps_unit: unit of ``eps`` (``"HU"``, ``"/255"``, ``""`` for network units); ``None``: the
            bundle's default unit.
        eps_scale: network-input units per ``eps`` unit; ``None``: the bundle's value, else
            ``1 / hu_window width`` for HU, ``1/255`` for ``"/255"``, else 1.
        num_iter, alpha, sigma: iterative attack settings (DESIGN.md: 10, 1, 1 voxel); the step is
            ``2.5 * eps / num_iter``.
        bounds: valid range of the network input (``None``: no clamp); default the bundle's, else ``(0, 1)``.
        data_split: datalist split to attack (``"training"``, ``"validation"``, ``"test"``, ``"all"``).
        label_key: datalist key of the ground truth.
        use_labels: attack in ground-truth mode when every datalist item has a label; ``False``:
            always label-free.
        save_dtype: ``"float32"`` NIfTI outputs, or ``"source"``: the source's integer type
            (perturbation rounded toward zero). PNG outputs always keep the source's integer type.
        dicom: also write a DICOM series for DICOM sources.
        source_scale: network-input units per source intensity unit; ``None``: read off the
            preprocessing's ``ScaleIntensityRanged`` (:func:`source_intensity_scale`).
        device: ``"cuda"``, ``"cpu"``, ...; default CUDA when available.
        checkpoint: weights to load instead of the bundle's ``models/model.pt``.
        seed: seeds random starts and noise (per case, so results do not depend on the case order).
        verify: reload every written image through the preprocessing and record the error rates
            the network shows on it (one more prediction per written file).
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
        if attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}.")
        if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0):
            raise ValueError(f"eps must be a budget > 0 (e.g. 20 for 20 HU), got {eps!r}.")
        if eps_scale is not None and (
            isinstance(eps_scale, bool) or not isinstance(eps_scale, (int, float)) or not eps_scale > 0
        ):
            raise ValueError(f"eps_scale must be a number > 0 (network units per eps unit), got {eps_scale!r}.")
        if source_scale is not None and (
            isinstance(source_scale, bool) or not isinstance(source_scale, (int, float)) or not source_scale > 0
        ):
            raise ValueError(
                f"source_scale must be a number > 0 (network units per source unit), got {source_scale!r}."
            )
        if isinstance(num_iter, bool) or not isinstance(num_iter, int) or num_iter < 1:
            raise ValueError(f"num_iter must be an integer >= 1, got {num_iter!r}.")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0:
            raise ValueError(f"alpha must be a number >= 0, got {alpha!r}.")
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
            raise ValueError(f"sigma must be a number > 0 (voxels), got {sigma!r}.")
        if save_dtype not in SAVE_DTYPES:
            raise ValueError(f"save_dtype must be one of {SAVE_DTYPES}, got {save_dtype!r}.")
        if max_cases is not None and (isinstance(max_cases, bool) or not isinstance(max_cases, int) or max_cases < 1):
            raise ValueError(f"max_cases must be an integer >= 1 or None, got {max_cases!r}.")
        if bounds is not None and not isinstance(bounds, str):
            if len(bounds) != 2 or not float(bounds[0]) < float(bounds[1]):
                raise ValueError(f"bounds must be (lo, hi) with lo < hi, or None, got {bounds!r}.")
        elif isinstance(bounds, str) and bounds != "bundle":
            raise ValueError(f"bounds must be (lo, hi), None or 'bundle', got {bounds!r}.")
        self.root = resolve_bundle(bundle)
        self.input = Path(input)
        if not self.input.exists():
            raise FileNotFoundError(
                f"input {str(self.input)!r} does not exist: pass a data_prep folder, a folder of NIfTI/PNG files or "
                "DICOM series, one NIfTI/PNG file, or one DICOM series folder."
            )
        self.output_dir = Path(output_dir)
        inp, out = self.input.resolve(), self.output_dir.resolve()
        if out == inp or (self.input.is_dir() and inp in out.parents):
            raise ValueError(
                f"output_dir {str(self.output_dir)!r} lies inside the input {str(self.input)!r}; inputs are never "
                "written to: choose an output_dir outside it."
            )
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
        elif eps_unit is None:
            eps_unit = defaults.get("eps_unit")
            if eps_scale is None:
                eps_scale = defaults.get("eps_scale")
        self.eps = float(eps)
        self.eps_unit = "" if eps_unit is None else str(eps_unit)
        self.eps_scale_arg = None if eps_scale is None else float(eps_scale)
        if isinstance(bounds, str):
            bounds = defaults.get("bounds", "auto")
        self.bounds_arg = parse_bounds(bounds)
        # "auto" is resolved by _prepare once the bundle's preprocessing is loaded
        self.bounds: tuple[float, float] | None = None if self.bounds_arg == "auto" else self.bounds_arg  # type: ignore[assignment]
        self.attack = attack
        self.num_iter, self.alpha, self.sigma = int(num_iter), float(alpha), float(sigma)
        self.data_split, self.label_key, self.use_labels = data_split, label_key, bool(use_labels)
        self.save_dtype, self.dicom = save_dtype, bool(dicom)
        self.source_scale_arg = None if source_scale is None else float(source_scale)
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.seed, self.verify, self.max_cases, self.progress = int(seed), bool(verify), max_cases, bool(progress)
        self.store = CaseStore(self.output_dir)

    # ------------------------------------------------------------------ run
    def cases(self) -> tuple[list[SourceCase], dict[str, Any]]:
        cases, source = discover_cases(self.input, self.data_split, self.label_key, self.use_labels)
        if self.max_cases is not None:
            cases = cases[: self.max_cases]
        return cases, source

    def settings(self, label_free: bool) -> dict[str, Any]:
        """The settings a rerun into the same ``output_dir`` must share."""
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
            "bounds": self.bounds_arg if isinstance(self.bounds_arg, str) or self.bounds_arg is None else list(self.bounds_arg),
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

    def run(self) -> dict[str, Any]:
        """Attack every pending case, then write ``summary.json`` and ``provenance.json``; returns the summary."""
        cases, data_source = self.cases()
        label_free = not all(c.label is not None for c in cases)
        if not label_free and not bundle_loads_labels(self.root):
            logger.warning(
                "%s has no train.json 'validate' preprocessing that loads labels; attacking label-free.", self.root.name
            )
            label_free = True
        if label_free:
            for c in cases:
                c.label = None
        settings = self.settings(label_free)
        pending = [c for c in cases if not self.is_done(c)]
        checkpoint = self.checkpoint if self.checkpoint is not None else self.root / "models" / "model.pt"
        if pending and not Path(checkpoint).is_file():
            raise FileNotFoundError(
                f"checkpoint {str(checkpoint)!r} not found: train the bundle first (see its docs/README.md) or pass "
                "checkpoint=PATH."
            )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        sha = file_sha256(checkpoint) if Path(checkpoint).is_file() else None
        check_run_settings(self.output_dir, {**settings, "checkpoint_sha256": sha})
        logger.info(
            "%s on %s: %d cases, %d already done, %s eps=%g%s",
            self.root.name,
            self.input,
            len(cases),
            len(cases) - len(pending),
            self.attack,
            self.eps,
            self.eps_unit,
        )
        if pending:
            victim = load_victim(self.root, device=self.device, checkpoint=self.checkpoint, labels=not label_free)
            checkpoint = victim.checkpoint
            self._prepare(victim, label_free)
            bar = (
                tqdm(pending, desc=f"{self.root.name} {self.attack}", disable=not (self.progress and _has_tqdm))
                if _has_tqdm
                else pending
            )
            for case in bar:
                self.store.save(self.attack_case(victim, case, label_free))
        summary = self.write_summary(cases)
        if not pending and (self.output_dir / "provenance.json").is_file():
            return summary  # nothing new: keep the provenance of the run that wrote the outputs
        write_provenance(
            self.output_dir / "provenance.json",
            seed=self.seed,
            checkpoint=checkpoint if Path(checkpoint).is_file() else None,
            data_source=data_source,
            attack_settings={
                **settings,
                "eps_network": getattr(self, "eps_network", None),
                "bounds_resolved": self.bounds,
                "bounds_from": getattr(self, "bounds_note", None),
                "cases": len(cases),
            },
            command_line=sys.argv,
        )
        return summary

    # ------------------------------------------------------------------ one case
    def _prepare(self, victim: Victim, label_free: bool) -> None:
        self.preprocessing = victim.preprocessing
        _use_series_loader(self.preprocessing)
        self.missing_ok = label_free and victim.has_labels
        self.eps_scale = (
            self.eps_scale_arg if self.eps_scale_arg is not None else default_eps_scale(victim, self.eps_unit)
        )
        self.eps_network = self.eps * self.eps_scale
        self.source_scale = (
            self.source_scale_arg if self.source_scale_arg is not None else source_intensity_scale(self.preprocessing)
        )
        self.eps_source = self.eps_network / self.source_scale
        self.bounds, self.bounds_note = resolve_bounds(self.bounds_arg, self.preprocessing)

    def _preprocess(self, item: dict[str, Any]) -> dict[str, Any]:
        ctx = allow_missing_keys_mode(self.preprocessing) if self.missing_ok else contextlib.nullcontext()
        with ctx:
            try:
                return self.preprocessing(item)
            except Exception as e:
                raise ValueError(f"the bundle's preprocessing failed on {item['image']!r}: {e}") from e

    def _predict(self, victim: Victim, x: torch.Tensor) -> torch.Tensor:
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

    def attack_case(self, victim: Victim, case: SourceCase, label_free: bool) -> dict[str, Any]:
        """Attack one case, write its outputs and return its record (not yet stored)."""
        item: dict[str, Any] = {"image": str(case.source)}
        if not label_free:
            item["label"] = case.label
        data, x, lab = self._load_batch(item)
        spatial_dims = 2 if isinstance(victim.inferer, SliceInferer) else x.ndim - 2
        attack = make_attack(
            self.attack,
            victim.network,
            self.eps_network,
            self.num_iter,
            self.alpha,
            self.sigma,
            spatial_dims,
            self.bounds,
        )
        seed = case_seed(self.seed, self.attack, self.eps, [case.case_id])
        inferer = AttackInferer(attack, victim.inferer, use_labels=not label_free, compute_success=True, seed=seed)
        logits_clean = self._predict(victim, x)
        with torch.no_grad():
            logits_adv = inferer(x, victim.network, labels=lab)
        logits_adv = logits_adv.as_tensor() if isinstance(logits_adv, MetaTensor) else logits_adv
        ref = hard_prediction(logits_clean) if lab is None else prepare_labels(lab, logits_clean)

        def error(logits: torch.Tensor) -> float:
            return float((hard_prediction(logits) != ref).double().mean())

        result = inferer.last_result
        d_net = result.perturbation[0].detach().cpu()
        diagnostics = inferer.last_diagnostics[0] if inferer.last_diagnostics else {}
        d_src = MetaTensor(d_net.double() / self.source_scale)
        img = data["image"]
        if isinstance(img, MetaTensor) and img.applied_operations:
            d_src = invert_perturbation({"perturbation": d_src, "image": img}, "perturbation", self.preprocessing)

        record: dict[str, Any] = {
            "case_id": case.case_id,
            "attack": self.attack,
            "eps": self.eps,
            "eps_unit": self.eps_unit,
            "eps_network": self.eps_network,
            "eps_source": self.eps_source,
            "source": str(case.source.resolve()),
            "source_kind": case.kind,
            "split": case.split,
            "label_free": label_free,
            "max_abs_perturbation_network": float(d_net.abs().max()),
            "error_clean": error(logits_clean),
            "error_adversarial": error(logits_adv),
        }
        record["prediction_changed_fraction"] = float(
            (hard_prediction(logits_adv) != hard_prediction(logits_clean)).double().mean()
        )
        record["success"] = record["error_adversarial"] > record["error_clean"]
        if victim.task == "classification":
            record["pred_clean"] = hard_prediction(logits_clean).flatten().tolist()
            record["pred_adversarial"] = hard_prediction(logits_adv).flatten().tolist()
        if case.kind == "png":
            outputs, written = self._write_png(case, d_src, data)
        else:
            outputs, written = self._write_volume(case, d_src)
        record["outputs"] = {k: str(Path(v).relative_to(self.output_dir)) for k, v in outputs.items()}
        record.update(written)
        if self.verify:
            errors, deviation = {}, {}
            x_adv = result.adversarial.to(x.device)
            for key in ("adversarial", "dicom"):
                if key in outputs:
                    _, x_w, _ = self._load_batch({**item, "image": str(outputs[key])})
                    if x_w.shape != x.shape:
                        raise ValueError(
                            f"the written {key} {str(outputs[key])!r} preprocesses to shape {tuple(x_w.shape)}, the source "
                            f"to {tuple(x.shape)}; its geometry differs from the source."
                        )
                    errors[key] = error(self._predict(victim, x_w))
                    deviation[key] = float((x_w - x_adv).abs().max())
            record["error_written"] = errors
            # how far the written file, preprocessed again, is from the attacked input (network units):
            # integer rounding, and for resampled volumes the round trip to the source grid and back
            record["written_deviation_network"] = deviation
            integer = "dicom" if "dicom" in errors else ("adversarial" if written.get("integer_output") else None)
            if integer is not None:
                float_err = (
                    errors["adversarial"]
                    if integer == "dicom" and not written.get("integer_output")
                    else record["error_adversarial"]
                )
                e_int = errors[integer]
                record["rounding"] = {
                    "output": integer,
                    "error_float": float_err,
                    "error_integer": e_int,
                    "survives": bool(e_int > record["error_clean"] and e_int >= 0.9 * float_err),
                }
        # the attack's own view, in network input units (eps_network)
        record["diagnostics"] = {k: v for k, v in diagnostics.items() if k not in ("eps",)}
        record["settings"] = self.settings(label_free)
        return to_jsonable(record, strict=False)

    def _write_volume(self, case: SourceCase, d_src: Any) -> tuple[dict[str, Path], dict[str, Any]]:
        out = self.output_dir
        adv_path = out / f"{case.case_id}_adv.nii.gz"
        rep = save_adversarial_nifti(case.source, d_src, adv_path, eps=self.eps_source, dtype=self.save_dtype)
        values, affine, handle = load_source_volume(case.source)
        back = np.asarray(nib.load(str(adv_path)).get_fdata(dtype=np.float64))
        if back.ndim == 4:
            back = back[..., 0]
        applied = (back - values).astype(np.float32)
        header = handle.header.copy() if isinstance(handle, nib.Nifti1Image) else None
        pert_img = nib.Nifti1Image(applied, affine, header)
        pert_img.header.set_data_dtype(np.float32)
        pert_img.header.set_slope_inter(1.0, 0.0)
        pert_path = out / f"{case.case_id}_perturbation.nii.gz"
        write_nifti_atomic(pert_img, pert_path)
        outputs = {"adversarial": adv_path, "perturbation": pert_path}
        written: dict[str, Any] = {
            "max_abs_perturbation_source": rep.max_abs_change,
            "perturbed_fraction": rep.changed_fraction,
            "nifti_dtype": rep.dtype,
            "integer_output": self.save_dtype == "source",
        }
        if case.kind == "dicom" and self.dicom:
            settings = {"attack": self.attack, "eps": self.eps, "eps_unit": self.eps_unit, "num_iter": self.num_iter}
            dcm = write_adversarial_dicom_series(
                case.source, d_src, out / f"{case.case_id}_adv_dicom", eps=self.eps_source, settings=settings, overwrite=True
            )
            outputs["dicom"] = dcm.folder
            written["dicom"] = {
                "series_instance_uid": dcm.series_instance_uid,
                "num_files": len(dcm.files),
                "max_abs_change": dcm.max_abs_change,
                "rescale_slope": dcm.rescale_slope,
            }
        return outputs, written

    def _raw_image(self, path: str) -> np.ndarray:
        """The source as the bundle's loader reads it (channel-first, before any intensity transform)."""
        item: dict[str, Any] = {"image": path}
        for t in flat_transforms(self.preprocessing):
            if not isinstance(t, (LoadImaged, EnsureChannelFirstd)):
                break
            with allow_missing_keys_mode(t):
                item = t(item)
        img = item["image"]
        return np.asarray(img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else img)

    def _write_png(self, case: SourceCase, d_src: Any, data: dict[str, Any]) -> tuple[dict[str, Path], dict[str, Any]]:
        if not _has_pil:
            raise ImportError("writing PNG needs Pillow: pip install pillow")
        with Image.open(case.source) as im:
            src = np.asarray(im)
        if not np.issubdtype(src.dtype, np.integer):
            raise ValueError(
                f"{str(case.source)!r} holds {src.dtype} pixels; only integer PNGs (8 or 16 bit) are supported."
            )
        gray = src.ndim == 2
        cf = src[None] if gray else np.moveaxis(src, -1, 0)  # (C, H, W)
        raw = self._raw_image(str(case.source))
        d = np.asarray(d_src.detach().cpu().numpy() if isinstance(d_src, torch.Tensor) else d_src, dtype=np.float64)
        if d.shape != raw.shape:
            raise ValueError(
                f"the perturbation of {str(case.source)!r} has shape {d.shape} but the bundle loads the image as {raw.shape}; "
                "only spatially invertible preprocessing is supported."
            )
        same = raw.shape == cf.shape and np.array_equal(raw, cf)
        swapped = raw.shape == cf.transpose(0, 2, 1).shape and np.array_equal(raw, cf.transpose(0, 2, 1))
        if not (same or swapped):
            raise ValueError(
                f"the bundle's loader reads {str(case.source)!r} with values or channels other than the PNG's "
                f"(loader {raw.shape}, PNG {cf.shape}); cannot map the perturbation back to the file."
            )
        if swapped and not (same and not getattr(self._png_reader(), "reverse_indexing", True)):
            d = d.transpose(0, 2, 1)  # MONAI's PILReader indexes (W, H) by default
        d = d[0] if gray else np.moveaxis(d, 0, -1)
        info = np.iinfo(src.dtype)
        eps_int = math.floor(self.eps_source + 1e-9)
        values = src.astype(np.float64)
        d = np.clip(d, -self.eps_source, self.eps_source)
        adv = np.clip(np.round(values + d), values - eps_int, values + eps_int)
        adv = np.clip(adv, info.min, info.max).astype(src.dtype)
        adv_path = self.output_dir / f"{case.case_id}_adv.png"
        _atomic_png(adv, adv_path)
        with Image.open(adv_path) as im:
            back = np.asarray(im).astype(np.float64)
        applied = (back - values).astype(np.float32)
        pert_path = self.output_dir / f"{case.case_id}_perturbation.npy"
        _atomic_npy(applied, pert_path)
        written = {
            "max_abs_perturbation_source": float(np.abs(applied).max()),
            "max_abs_perturbation_float": float(np.abs(d).max()),
            "perturbed_fraction": float((applied != 0).mean()),
            "integer_output": True,
            "png_dtype": str(src.dtype),
        }
        if eps_int < 1:
            logger.warning(
                "%s: eps = %g in the PNG's units is below one integer step; the stored image equals the source.",
                case.case_id,
                self.eps_source,
            )
        return {"adversarial": adv_path, "perturbation": pert_path}, written

    def _png_reader(self) -> Any:
        for t in flat_transforms(self.preprocessing):
            if isinstance(t, LoadImaged):
                for r in getattr(t._loader, "readers", []):
                    if type(r).__name__ == "PILReader":
                        return r
        return None

    # ------------------------------------------------------------------ summary
    def write_summary(self, cases: list[SourceCase]) -> dict[str, Any]:
        """``summary.json``: per case the key numbers, and their means over cases."""
        rows = {}
        for c in cases:
            rec = self.store.load(self.attack, self.eps, c.case_id)
            if rec is None:
                continue
            rows[c.case_id] = {
                k: rec.get(k)
                for k in (
                    "source_kind",
                    "error_clean",
                    "error_adversarial",
                    "prediction_changed_fraction",
                    "success",
                    "max_abs_perturbation_source",
                    "outputs",
                )
            }
            rows[c.case_id]["positive_cosine_share"] = (rec.get("diagnostics") or {}).get("positive_cosine_share")
            if "rounding" in rec:
                rows[c.case_id]["rounding_survives"] = rec["rounding"]["survives"]

        def mean(key: str) -> float | None:
            vals = [float(r[key]) for r in rows.values() if isinstance(r.get(key), (int, float))]
            return float(np.mean(vals)) if vals else None

        summary = {
            "bundle": self.root.name,
            "attack": self.attack,
            "eps": self.eps,
            "eps_unit": self.eps_unit,
            "num_cases": len(rows),
            "mean": {
                k: mean(k)
                for k in (
                    "error_clean",
                    "error_adversarial",
                    "prediction_changed_fraction",
                    "success",
                    "positive_cosine_share",
                )
            },
            "max_abs_perturbation_source": max(
                (r["max_abs_perturbation_source"] or 0.0 for r in rows.values()), default=None
            ),
            "cases": rows,
        }
        atomic_write_json(self.output_dir / "summary.json", summary)
        return summary


def run_attack(
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
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Attack every image of ``input`` and write adversarial copies to ``output_dir``; returns the summary.

    A thin call of :class:`AdversarialWriter` (same arguments; ``kwargs`` go to it: ``bounds``,
    ``data_split``, ``label_key``, ``use_labels``, ``save_dtype``, ``dicom``, ``source_scale``,
    ``checkpoint``, ``seed``, ``verify``, ``max_cases``, ``progress``). The attacks are SMIA (Qi et
    al., "Stabilized Medical Image Attacks", ICLR 2021, arXiv 2103.05232) and its baselines
    (:func:`monai_smia.apps.evaluation.make_attack`).
    """
    writer = AdversarialWriter(
        bundle,
        input,
        output_dir,
        attack=attack,
        eps=eps,
        eps_unit=eps_unit,
        eps_scale=eps_scale,
        num_iter=num_iter,
        alpha=alpha,
        sigma=sigma,
        device=device,
        **kwargs,
    )
    return writer.run()
