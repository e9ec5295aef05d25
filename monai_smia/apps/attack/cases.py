"""Which images ``monai-smia attack`` attacks, and a bundle's attack defaults.

The input is a data_prep folder (``datalist.json`` at its root; its ``test`` split by default), a
plain folder (every NIfTI and PNG file in it and every DICOM series folder below it), one NIfTI or
PNG file, or one DICOM series folder (:func:`discover_cases`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai.transforms import LoadImaged

from monai_smia.attacks.base import check_positive
from monai_smia.attacks.registry import ATTACKS
from monai_smia.bundle.bundle import Bundle, is_train_override, open_bundle
from monai_smia.bundle.victim import Victim
from monai_smia.io import SeriesFolderReader
from monai_smia.io.datalist import DATALIST, SPLITS, load_datalist
from monai_smia.io.paths import check_output_outside
from monai_smia.io.units import flat_transforms, resolve_eps_scale

#: NIfTI output types
SAVE_DTYPES = ("float32", "source")
#: where the perturbation lives (:mod:`monai_smia.apps.attack.grids`)
GRIDS = ("source", "network")

__all__ = [
    "GRIDS",
    "SAVE_DTYPES",
    "SourceCase",
    "bundle_attack_defaults",
    "bundle_loads_labels",
    "check_paths",
    "check_writer_arguments",
    "default_eps_scale",
    "discover_cases",
    "use_series_loader",
]

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
                    f"{root / DATALIST}: {split}[{i}] has image {image!r}; one file or DICOM folder per item is "
                    "expected."
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


def bundle_attack_defaults(bundle: str | os.PathLike | Bundle) -> dict[str, Any]:
    """Default ``eps``, ``eps_unit``, ``eps_scale``, ``bounds``, ``grid`` of a bundle: from its ``configs/attack.json``,
    else its ``configs/evaluate.json`` (first ``eps`` of a list); ``{}`` when it has neither."""
    b = open_bundle(bundle)
    for name in ("attack", "evaluate"):
        f = b.config_path(name)
        if not f.is_file() or is_train_override(f):
            continue
        parser = b.parser([f])
        out: dict[str, Any] = {}
        for key in ("eps", "eps_unit", "eps_scale", "bounds", "grid"):
            if key in parser.config:
                out[key] = parser.get_parsed_content(key)
        if isinstance(out.get("eps"), (list, tuple)):
            out["eps"] = out["eps"][0] if out["eps"] else None
        if out.get("eps") is not None:
            return out
    return {}


def bundle_loads_labels(bundle: str | os.PathLike | Bundle) -> bool:
    """Whether :func:`monai_smia.bundle.victim.load_victim` gives this bundle a preprocessing for images and labels
    (``configs/train.json`` with a ``validate#preprocessing``)."""
    b = open_bundle(bundle)
    if not b.has_config("train"):
        return False
    config = b.read("train")
    return isinstance(config.get("validate"), dict) and "preprocessing" in config["validate"]


def default_eps_scale(victim: Victim, eps_unit: str) -> float:
    """Network-input units per ``eps`` unit (:func:`monai_smia.io.units.resolve_eps_scale`)."""
    return resolve_eps_scale(
        eps_unit, victim.preprocessing, victim.config, bundle=victim.name, metadata=victim.metadata
    )[0]


def use_series_loader(preprocessing: Any) -> None:
    """Let the bundle's ``LoadImaged`` read DICOM series folders strictly (one series, no reader fallback)."""
    for t in flat_transforms(preprocessing):
        if type(t) is LoadImaged:
            t.register(SeriesFolderReader())


# ---------------------------------------------------------------------------------------------
# arguments


def check_writer_arguments(args: dict[str, Any]) -> None:
    """One-line ``ValueError`` for the first bad argument of :class:`AdversarialWriter`."""
    if args["attack"] not in ATTACKS:
        raise ValueError(f"unknown attack {args['attack']!r}; choose one of {', '.join(ATTACKS)}.")
    for name, hint in (
        ("eps", " (e.g. 20 for 20 HU)"),
        ("eps_scale", " (network units per eps unit)"),
        ("source_scale", " (network units per source unit)"),
    ):
        if args[name] is not None:
            check_positive(name, args[name], hint)
    num_iter, max_cases = args["num_iter"], args["max_cases"]
    if isinstance(num_iter, bool) or not isinstance(num_iter, int) or num_iter < 1:
        raise ValueError(f"num_iter must be an integer >= 1, got {num_iter!r}.")
    check_positive("alpha", args["alpha"], allow_zero=True)
    check_positive("sigma", args["sigma"], " (voxels)")
    if args["save_dtype"] not in SAVE_DTYPES:
        raise ValueError(f"save_dtype must be one of {SAVE_DTYPES}, got {args['save_dtype']!r}.")
    if args["grid"] not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS} (where the perturbation lives), got {args['grid']!r}.")
    if max_cases is not None and (isinstance(max_cases, bool) or not isinstance(max_cases, int) or max_cases < 1):
        raise ValueError(f"max_cases must be an integer >= 1 or None, got {max_cases!r}.")
    bounds = args["bounds"]
    if bounds is not None and not isinstance(bounds, str):
        if len(bounds) != 2 or not float(bounds[0]) < float(bounds[1]):
            raise ValueError(f"bounds must be (lo, hi) with lo < hi, or None, got {bounds!r}.")
    elif isinstance(bounds, str) and bounds != "bundle":
        raise ValueError(f"bounds must be (lo, hi), None or 'bundle', got {bounds!r}.")


def check_paths(input: Path, output_dir: Path) -> None:
    if not input.exists():
        raise FileNotFoundError(
            f"input {str(input)!r} does not exist: pass a data_prep folder, a folder of NIfTI/PNG files or "
            "DICOM series, one NIfTI/PNG file, or one DICOM series folder."
        )
    check_output_outside(output_dir, input, "output_dir", "input")
