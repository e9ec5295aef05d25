"""The one place where a budget's unit becomes network-input units, and where the valid input range
comes from: both are read off the bundle's own preprocessing.

- ``HU``: the ``ScaleIntensityRange(d)`` window on the image, ``(b_max - b_min) / (a_max - a_min)``
  network units per HU (a zoo CT bundle's ``a_min=-57, a_max=164, b_min=0, b_max=1`` gives 1/221),
  else a ``hu_window`` in the bundle config; only for a bundle whose input is in Hounsfield units
  (:func:`hounsfield_input`).
- ``/255``: 1/255 (8-bit images scaled to [0, 1]).
- ``""`` or ``"input"``: network-input units.

:data:`EPS_UNITS` is the one list of units; anything else is refused.

Bounds: a clipping ``ScaleIntensityRange(d)`` gives ``[b_min, b_max]``; a final ``ScaleIntensity(d)``
with ``minv``/``maxv`` gives that range; otherwise the attack is left unclamped (``None``) and the
provenance says so. Never a fixed [0, 1].
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from monai.transforms import Compose, ScaleIntensityd, ScaleIntensityRange, ScaleIntensityRanged

__all__ = [
    "EPS_UNITS",
    "bounds_from_preprocessing",
    "check_eps_unit",
    "flat_transforms",
    "hounsfield_input",
    "intensity_window",
    "parse_bounds",
    "resolve_bounds",
    "resolve_eps_scale",
    "source_intensity_scale",
    "warn_whole_range",
]

INPUT_UNITS = ("", "input")
#: every unit a budget may be given in (the CLI's ``--eps-unit`` choices)
EPS_UNITS = (*INPUT_UNITS, "/255", "HU")


def check_eps_unit(eps_unit: Any, option: str = "--eps-unit") -> str:
    """``eps_unit`` as one of :data:`EPS_UNITS` (``None`` is network-input units).

    Raises:
        ValueError: any other unit, named with ``option``.
    """
    unit = "" if eps_unit is None else eps_unit
    if not isinstance(unit, str) or unit.strip() not in EPS_UNITS:
        choices = ", ".join(repr(u) for u in EPS_UNITS)
        raise ValueError(
            f"{option} {eps_unit!r} is not a unit: choose one of {choices} ('' or 'input': network units)."
        )
    return unit.strip()


def _image_format(metadata: Mapping[str, Any] | None, image_key: str) -> tuple[str, str]:
    inputs = ((metadata or {}).get("network_data_format") or {}).get("inputs") or {}
    spec = inputs.get(image_key) or (next(iter(inputs.values())) if len(inputs) == 1 else {})
    spec = spec if isinstance(spec, Mapping) else {}
    return str(spec.get("format", "")).lower(), str(spec.get("modality", "")).upper()


def flat_transforms(transform: Any) -> list[Any]:
    """The transforms of a (nested) ``Compose`` in order."""
    if isinstance(transform, Compose):
        return [t for sub in transform.transforms for t in flat_transforms(sub)]
    return [transform]


def _image_transforms(preprocessing: Any, image_key: str) -> list[Any]:
    return [t for t in flat_transforms(preprocessing) if image_key in getattr(t, "keys", (image_key,))]


def intensity_window(preprocessing: Any, image_key: str = "image") -> dict[str, Any] | None:
    """``{"a_min", "a_max", "b_min", "b_max", "clip", "transform"}`` of the first ``ScaleIntensityRange(d)``
    on ``image_key``, or ``None``."""
    for t in _image_transforms(preprocessing, image_key):
        s = t.scaler if isinstance(t, ScaleIntensityRanged) else t if isinstance(t, ScaleIntensityRange) else None
        if s is not None and s.b_min is not None and s.b_max is not None:
            return {
                "transform": type(t).__name__,
                "a_min": float(s.a_min),
                "a_max": float(s.a_max),
                "b_min": float(s.b_min),
                "b_max": float(s.b_max),
                "clip": bool(s.clip),
            }
    return None


def hounsfield_input(
    metadata: Mapping[str, Any] | None, window: Mapping[str, Any] | None, image_key: str = "image"
) -> bool:
    """Whether a bundle's image input is in Hounsfield units: its metadata says so (MONAI's
    ``network_data_format.inputs.image``: ``format`` ``"hounsfield"`` or ``modality`` ``"CT"``); where the
    metadata names neither, a ``ScaleIntensityRange(d)`` window starting below 0 (air is -1000 HU; an
    8-bit or [0, 1] image never is)."""
    fmt, modality = _image_format(metadata, image_key)
    if fmt == "hounsfield" or modality == "CT":
        return True
    if fmt or modality:
        return False
    return window is not None and window["a_min"] < 0


def resolve_eps_scale(
    eps_unit: str,
    preprocessing: Any = None,
    config: Mapping[str, Any] | None = None,
    bundle: str = "the bundle",
    metadata: Mapping[str, Any] | None = None,
) -> tuple[float, dict[str, Any]]:
    """Network-input units per ``eps_unit`` (one of :data:`EPS_UNITS`), and how that was decided (for the provenance).

    Raises:
        ValueError: an unknown unit; ``HU`` on a bundle whose input is not in Hounsfield units
            (:func:`hounsfield_input`) or that has no window to convert HU with.
    """
    unit = check_eps_unit(eps_unit)
    if unit in INPUT_UNITS:
        return 1.0, {"eps_unit": "network input"}
    if unit == "/255":
        return 1.0 / 255.0, {"eps_unit": "/255"}
    window = intensity_window(preprocessing) if preprocessing is not None else None
    hu = (config or {}).get("hu_window")
    hu = list(hu) if isinstance(hu, (list, tuple)) and len(hu) == 2 else None
    if not hounsfield_input(metadata, window) and not (hu and metadata is None):
        fmt, modality = _image_format(metadata, "image")
        said = f"format {fmt!r}" if fmt else f"modality {modality!r}" if modality else "no CT window"
        raise ValueError(
            f"--eps-unit 'HU': {bundle}'s input is not in Hounsfield units ({said} in its metadata/preprocessing); "
            "give eps in network-input units (no --eps-unit) or with --eps-unit /255."
        )
    if window is not None:
        scale = (window["b_max"] - window["b_min"]) / (window["a_max"] - window["a_min"])
        return abs(scale), {"eps_unit": unit, "window": window}
    if hu is not None:
        return 1.0 / (float(hu[1]) - float(hu[0])), {"eps_unit": unit, "hu_window": hu}
    raise ValueError(
        f"--eps-unit 'HU': {bundle}'s preprocessing has no ScaleIntensityRange(d) window on the image to convert "
        "HU to network units; give eps in network-input units (no --eps-unit) or pass eps_scale."
    )


def bounds_from_preprocessing(preprocessing: Any, image_key: str = "image") -> tuple[tuple[float, float] | None, str]:
    """The valid network-input range the bundle's preprocessing produces, and a note saying where it came from."""
    found: tuple[tuple[float, float] | None, str] = (None, "no clipping intensity transform: unclamped")
    for t in _image_transforms(preprocessing, image_key):
        window = intensity_window(t, image_key) if isinstance(t, (ScaleIntensityRange, ScaleIntensityRanged)) else None
        if window is not None:
            lo, hi = sorted((window["b_min"], window["b_max"]))
            name = window["transform"]
            found = ((lo, hi), f"{name} clip") if window["clip"] else (None, f"{name} without clip: unclamped")
        elif isinstance(t, ScaleIntensityd):
            s = t.scaler
            if s.minv is not None and s.maxv is not None:
                found = ((float(s.minv), float(s.maxv)), "ScaleIntensityd minv/maxv")
        elif type(t).__module__.startswith("monai.transforms.intensity"):
            found = (None, f"{type(t).__name__} after the last range transform: unclamped")
    return found


def parse_bounds(bounds: Any) -> tuple[float, float] | str | None:
    """A ``bounds`` argument checked: ``"auto"`` (from the bundle's preprocessing), ``None`` (no clamp) or
    ``(lo, hi)``."""
    if bounds is None:
        return None
    if isinstance(bounds, str):
        if bounds != "auto":
            raise ValueError(f"bounds must be 'auto', None or (lo, hi), got {bounds!r}.")
        return bounds
    lo, hi = (float(b) for b in bounds)
    return (lo, hi)


def resolve_bounds(
    bounds: tuple[float, float] | str | None, preprocessing: Any
) -> tuple[tuple[float, float] | None, str]:
    """The valid range to attack in and a note for the provenance: ``"auto"`` reads it off the
    preprocessing (:func:`bounds_from_preprocessing`); given bounds (or ``None``) are used as they are."""
    if bounds == "auto":
        return bounds_from_preprocessing(preprocessing)
    return bounds, "given"  # type: ignore[return-value]


def warn_whole_range(eps: float, scale: float, unit: str, bounds: tuple[float, float] | None, bundle: str) -> bool:
    """Warn (and return ``True``) when a budget of ``eps`` (in ``unit``, ``scale`` network units each)
    covers the whole valid input range ``bounds``: then even random noise can replace the image."""
    if bounds is None or eps * scale < bounds[1] - bounds[0]:
        return False
    width = (bounds[1] - bounds[0]) / scale
    warnings.warn(
        f"eps = {eps:g}{unit} covers the whole valid input range of {bundle} ({width:g}{unit}, {tuple(bounds)} at the "
        "network input): even random noise can replace the image; pass a smaller --eps.",
        stacklevel=2,
    )
    return True


def source_intensity_scale(preprocessing: Any, image_key: str = "image") -> float:
    """Network-input units per source intensity unit (1 with no intensity transform on the image).

    Raises:
        ValueError: an intensity transform other than ``ScaleIntensityRange(d)`` acts on the image
            (its effect on the perturbation's unit is not a known constant): pass ``source_scale``.
    """
    scale = 1.0
    for t in _image_transforms(preprocessing, image_key):
        window = intensity_window(t, image_key) if isinstance(t, (ScaleIntensityRange, ScaleIntensityRanged)) else None
        if window is not None:
            scale *= (window["b_max"] - window["b_min"]) / (window["a_max"] - window["a_min"])
        elif type(t).__module__.startswith("monai.transforms.intensity"):
            raise ValueError(
                f"the bundle's preprocessing applies {type(t).__name__} to {image_key!r}; the perturbation cannot be "
                "converted back to source intensities automatically: pass source_scale (network units per source unit)."
            )
    return scale
