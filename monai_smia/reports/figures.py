"""Figures of a robustness evaluation (matplotlib, Agg backend), each written atomically as PNG.

- :func:`case_figure`: for a few cases, clean | adversarial | amplified perturbation | prediction
  overlays (segmentation) or labels and predictions in the titles (classification); a 3D volume is
  shown at the axial slice with the most foreground.
- :func:`trace_curves_figure`: per-iteration deviation loss, stabilization loss, perturbation
  variance and cosine between consecutive updates, comparing e.g. DEV with SMIA as in Fig. 2 of
  Qi et al., "Stabilized Medical Image Attacks", ICLR 2021 (arXiv 2103.05232).
- :func:`robustness_curve_figure`: a metric against the budget, one line per attack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.utils import optional_import

from monai_smia.io.atomic import atomic_file

matplotlib, _has_mpl = optional_import("matplotlib")

__all__ = ["case_figure", "pick_axial_slice", "pyplot", "robustness_curve_figure", "save_figure", "trace_curves_figure"]

TRACE_CURVES = (
    ("deviation_loss", "deviation loss"),
    ("stabilization_loss", "stabilization loss"),
    ("perturbation_variance", "perturbation variance"),
    ("cosine", "cosine of consecutive updates"),
)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (figures are only written to files).

    Raises:
        ImportError: matplotlib is not installed.
    """
    if not _has_mpl:
        raise ImportError("figures need matplotlib: pip install matplotlib")
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG through a temporary file and :func:`os.replace`; closes it."""
    plt = pyplot()
    path = Path(path)
    try:
        with atomic_file(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _np(a: Any) -> np.ndarray | None:
    if a is None:
        return None
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _label_map(a: Any, spatial_ndim: int) -> np.ndarray | None:
    """Label map (*spatial) from (*spatial), (1, *spatial) or one-hot (K, *spatial)."""
    a = _np(a)
    if a is None:
        return None
    if a.ndim == spatial_ndim + 1:
        a = a[0] if a.shape[0] == 1 else a.argmax(axis=0)
    if a.ndim != spatial_ndim:
        raise ValueError(f"label/prediction map of shape {a.shape} does not match a {spatial_ndim}D image.")
    return a


def pick_axial_slice(foreground: Any, axis: int = -1) -> int:
    """Index along ``axis`` (default the last: axial after RAS orientation) with the most foreground
    voxels (``!= 0``); the middle slice when there is none."""
    fg = _np(foreground)
    if fg is None:
        raise ValueError("pick_axial_slice needs a label or prediction map.")
    ax = axis % fg.ndim
    counts = (
        (fg != 0).reshape(-1, fg.shape[ax])
        if ax == fg.ndim - 1
        else np.moveaxis(fg != 0, ax, -1).reshape(-1, fg.shape[ax])
    )
    per_slice = counts.sum(axis=0)
    return int(per_slice.argmax()) if per_slice.max() > 0 else fg.shape[ax] // 2


def _prepare_case(case: Mapping[str, Any], task: str, axis: int) -> dict[str, Any]:
    for key in ("image", "adv_image"):
        if key not in case:
            raise ValueError(
                f"case_figure: each case needs 'image' and 'adv_image' (channel-first arrays); missing {key!r}."
            )
    img, adv = _np(case["image"]).astype(np.float64), _np(case["adv_image"]).astype(np.float64)
    if img.ndim == 2:
        img, adv = img[None], adv[None]
    if img.shape != adv.shape or img.ndim not in (3, 4):
        raise ValueError(
            f"case_figure: image {img.shape} and adv_image {adv.shape} must match, as (C, H, W) or (C, H, W, D)."
        )
    sp = img.ndim - 1
    out: dict[str, Any] = {"case_id": case.get("case_id", ""), "title": case.get("title")}
    maps = {}
    if task == "segmentation":
        maps = {k: _label_map(case.get(k), sp) for k in ("label", "clean_pred", "adv_pred")}
    if sp == 3:
        fg = next((maps[k] for k in ("label", "clean_pred") if maps.get(k) is not None and (maps[k] != 0).any()), None)
        z = case.get("slice_index")
        if z is None:
            z = pick_axial_slice(fg, axis) if fg is not None else img.shape[axis] // 2
        img, adv = np.take(img, z, axis=axis), np.take(adv, z, axis=axis)
        maps = {k: None if v is None else np.take(v, z, axis=axis) for k, v in maps.items()}
        out["slice_index"] = int(z)
    out.update(image=img, adv_image=adv, **maps)
    if task == "classification":
        for k in ("label", "clean_pred", "adv_pred"):
            v = case.get(k)
            out[k] = None if v is None else int(np.asarray(_np(v)).reshape(-1)[0])
    return out


def _display(img: np.ndarray, vmin: float, vmax: float) -> tuple[np.ndarray, dict[str, Any]]:
    """(C, H, W) -> something imshow draws: RGB scaled to [0, 1], or one channel with a grey window."""
    if img.shape[0] == 3:
        rgb = np.clip((np.moveaxis(img, 0, -1) - vmin) / max(vmax - vmin, 1e-12), 0, 1)
        return rgb, {}
    return img.mean(axis=0), {"cmap": "gray", "vmin": vmin, "vmax": vmax}


def _name(k: int | None, class_names: Sequence[str] | None) -> str:
    if k is None:
        return "?"
    return class_names[k] if class_names is not None and 0 <= k < len(class_names) else str(k)


def case_figure(
    path: str | Path,
    cases: Sequence[Mapping[str, Any]],
    task: str = "segmentation",
    display_range: tuple[float, float] | None = None,
    class_names: Sequence[str] | None = None,
    axial_axis: int = -1,
    attack_name: str = "adversarial",
    overlay_alpha: float = 0.45,
    transpose: bool = False,
    window: Mapping[str, Any] | None = None,
) -> Path:
    """Clean | adversarial | amplified perturbation | prediction overlays, one row per case.

    Args:
        path: PNG to write.
        cases: each a mapping with ``image`` and ``adv_image`` (channel-first ``(C, H, W)`` or
            ``(C, H, W, D)``, numpy or torch), optional ``case_id``, ``label``, ``clean_pred``,
            ``adv_pred`` (segmentation: label maps ``(*spatial)``, ``(1, *spatial)`` or one-hot;
            classification: class indices) and ``slice_index`` (3D: otherwise the slice along
            ``axial_axis`` with the most foreground in the label, else the clean prediction).
        task: ``"segmentation"`` (adds clean and adversarial prediction overlays, ground truth as a
            contour) or ``"classification"`` (label and predictions in the titles).
        display_range: intensity window ``(lo, hi)`` of the images (default: the clean image's 1st
            and 99th percentiles; e.g. ``(-1000, 400)`` for lung CT in HU).
        class_names: names shown instead of class indices.
        axial_axis: the slicing axis of 3D images (spatial axes; -1 is axial after RAS orientation).
        attack_name: shown in the column titles.
        overlay_alpha: opacity of the prediction overlays.
        transpose: swap the two in-plane axes for display (e.g. RAS-oriented CT arrays, whose first
            axis runs left-right, are shown with anterior at the top after ``transpose`` and a flip).
        window: the bundle's ``ScaleIntensityRange`` window (:func:`monai_smia.io.units.intensity_window`,
            optionally with a ``unit`` such as ``"HU"``): images and the perturbation are shown in the
            source's units (e.g. HU), with the window as the default display range.

    Returns:
        ``path``. The perturbation is shown amplified: scaled so that its largest magnitude fills the
        colour map (red positive, blue negative), its maximum written in the title.
    """
    if task not in ("segmentation", "classification"):
        raise ValueError(f"task must be 'segmentation' or 'classification', got {task!r}.")
    if not cases:
        raise ValueError("case_figure needs at least one case.")
    plt = pyplot()
    prepared = [_prepare_case(c, task, axial_axis) for c in cases]
    for c in prepared:
        if window is not None:
            _to_source_units(c, window)
        if transpose:
            _transpose_case(c, task)
    ncols = 5 if task == "segmentation" else 3
    fig, axes = plt.subplots(len(prepared), ncols, figsize=(2.6 * ncols, 2.7 * len(prepared)), squeeze=False)
    style = {"names": class_names, "attack": attack_name, "alpha": overlay_alpha, "cmap": plt.get_cmap("tab10")}
    if window is not None:
        style["unit"] = f" {window.get('unit', '')}".rstrip()
        display_range = display_range or (window["a_min"], window["a_max"])
    for row, c in zip(axes, prepared):
        _draw_row(row, c, task, _display_range(c["image"], display_range), style)
    fig.tight_layout()
    return save_figure(fig, path)


def _to_source_units(c: dict[str, Any], window: Mapping[str, Any]) -> None:
    """Map network-input intensities back through a ``ScaleIntensityRange`` window (e.g. to HU)."""
    scale = (window["a_max"] - window["a_min"]) / (window["b_max"] - window["b_min"])
    for k in ("image", "adv_image"):
        c[k] = (c[k] - window["b_min"]) * scale + window["a_min"]


def _transpose_case(c: dict[str, Any], task: str) -> None:
    c["image"], c["adv_image"] = (np.flip(np.swapaxes(c[k], -1, -2), -2) for k in ("image", "adv_image"))
    for k in ("label", "clean_pred", "adv_pred"):
        if task == "segmentation" and c.get(k) is not None:
            c[k] = np.flip(np.swapaxes(c[k], -1, -2), -2)


def _display_range(img: np.ndarray, display_range: tuple[float, float] | None) -> tuple[float, float]:
    lo, hi = (
        display_range if display_range is not None else (float(np.percentile(img, 1)), float(np.percentile(img, 99)))
    )
    return (float(img.min()), float(img.max()) + 1e-12) if hi <= lo else (lo, hi)


def _draw_row(row: Any, c: Mapping[str, Any], task: str, rng: tuple[float, float], style: Mapping[str, Any]) -> None:
    """One case: clean, adversarial, perturbation and (segmentation) the two prediction overlays."""
    img, adv = c["image"], c["adv_image"]
    d = adv - img
    m = float(np.abs(d).max())
    where = f"{c['case_id']}" + (f", slice {c['slice_index']}" if "slice_index" in c else "")
    t_clean, t_adv = "clean", style["attack"]
    if task == "classification":
        names = style["names"]
        t_clean = f"clean: label {_name(c['label'], names)}, pred {_name(c['clean_pred'], names)}"
        t_adv = f"{style['attack']}: pred {_name(c['adv_pred'], names)}"
    for ax, im, t in ((row[0], img, t_clean), (row[1], adv, t_adv)):
        shown, kw = _display(im, *rng)
        ax.imshow(shown, **kw)
        ax.set_title(t, fontsize=8)
    if d.shape[0] == 3:
        row[2].imshow(np.clip(0.5 + np.moveaxis(d, 0, -1) / (2 * m if m > 0 else 1.0), 0, 1))
    else:
        row[2].imshow(d.mean(axis=0), cmap="seismic", vmin=-(m or 1.0), vmax=m or 1.0)
    row[2].set_title(f"perturbation, max |d| = {m:.3g}{style.get('unit', '')}", fontsize=8)
    if task == "segmentation":
        for ax, key in ((row[3], "clean_pred"), (row[4], "adv_pred")):
            _overlay(ax, c, key, rng, style)
    row[0].set_ylabel(c["title"] or where, fontsize=8)
    for ax in row:
        ax.set_xticks([])
        ax.set_yticks([])


def _overlay(ax: Any, c: Mapping[str, Any], key: str, rng: tuple[float, float], style: Mapping[str, Any]) -> None:
    shown, kw = _display(c["image"], *rng)
    ax.imshow(shown, **kw)
    pred = c.get(key)
    if pred is not None:
        masked = np.ma.masked_equal(pred, 0)
        ax.imshow(masked, cmap=style["cmap"], vmin=0, vmax=9, alpha=style["alpha"], interpolation="nearest")
    if c.get("label") is not None and (c["label"] != 0).any():
        ax.contour(c["label"] != 0, levels=[0.5], colors="yellow", linewidths=0.8)
    ax.set_title(("clean" if key == "clean_pred" else style["attack"]) + " prediction (GT contour)", fontsize=8)


def _as_summary(s: Any) -> Mapping[str, Any]:
    return s.summary() if hasattr(s, "summary") and callable(s.summary) else s


def trace_curves_figure(path: str | Path, summaries: Mapping[str, Any], title: str | None = None) -> Path:
    """Per-iteration curves of iterative attacks, as in Fig. 2 of the SMIA paper.

    Args:
        path: PNG to write.
        summaries: ``{attack name: AttackTrace.summary() dict (or the AttackTrace itself)}``, e.g.
            ``{"DEV": dev.trace.summary(), "SMIA": smia.trace.summary()}``.
        title: optional figure title.

    Returns:
        ``path``: four panels (deviation loss, stabilization loss, perturbation variance, cosine
        between consecutive updates) against the iteration, one line per attack; the legend gives
        each attack's share of positive cosines. A curve that was not computed (the stabilization
        loss of DEV) is left out of its panel.
    """
    if not summaries:
        raise ValueError("trace_curves_figure needs at least one attack summary.")
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0", "C1", "C2", "C3"])
    for n, (name, s) in enumerate(summaries.items()):
        s = _as_summary(s)
        missing = [k for k, _ in TRACE_CURVES if k not in s]
        if missing:
            raise ValueError(f"summary of {name!r} lacks {missing}: pass AttackTrace.summary() dicts.")
        share = s.get("positive_cosine_share")
        label = name if share is None or not np.isfinite(share) else f"{name} (positive cosines {share:.2f})"
        for ax, (key, _) in zip(axes, TRACE_CURVES):
            y = np.asarray(s[key], dtype=np.float64)
            if np.isnan(y).all():
                continue
            ax.plot(np.arange(1, len(y) + 1), y, marker="o", markersize=3, label=label, color=colors[n % len(colors)])
    for ax, (_, text) in zip(axes, TRACE_CURVES):
        ax.set_title(text, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[3].axhline(0.0, color="grey", linewidth=0.8)
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=9, bbox_to_anchor=(0.5, -0.08))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def robustness_curve_figure(
    path: str | Path,
    summaries_by_eps: Mapping[float, Mapping[str, Mapping[str, Any]]],
    metric: str,
    eps_scale: float = 1.0,
    eps_unit: str = "",
    confidence: float = 0.95,
    title: str | None = None,
) -> Path:
    """A metric against the attack budget, one line per attack (with its bootstrap interval as a band)
    and the clean value as a dashed horizontal line.

    Args:
        path: PNG to write.
        summaries_by_eps: ``{eps: summary}`` with summaries from
            :func:`monai_smia.reports.summarize_records`.
        metric: the metric plotted, e.g. ``"dice"`` or ``"top1"``.
        eps_scale, eps_unit: how eps is shown on the axis, e.g. ``255`` and ``"/255"``.
        confidence: which interval key to read (``metric_ci95`` for 0.95).
        title: optional title.
    """
    if not summaries_by_eps:
        raise ValueError("robustness_curve_figure needs at least one eps.")
    plt = pyplot()
    ci_key = f"{metric}_ci{round(confidence * 100):d}"
    eps_values = sorted(summaries_by_eps, key=float)
    attacks: dict[str, None] = {}
    for e in eps_values:
        for a in summaries_by_eps[e]:
            if a != "clean":
                attacks.setdefault(a, None)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    clean = [summaries_by_eps[e]["clean"].get(metric) for e in eps_values if "clean" in summaries_by_eps[e]]
    clean = [v for v in clean if v is not None and np.isfinite(v)]
    if clean:
        ax.axhline(float(np.mean(clean)), color="black", linestyle="--", linewidth=1, label="clean")
    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0", "C1", "C2", "C3"])
    for n, a in enumerate(attacks):
        xs, ys, lo, hi = [], [], [], []
        for e in eps_values:
            s = summaries_by_eps[e].get(a, {})
            v = s.get(metric)
            if v is None or not np.isfinite(v):
                continue
            xs.append(float(e) * eps_scale)
            ys.append(float(v))
            ci = s.get(ci_key) or [np.nan, np.nan]
            lo.append(np.nan if ci[0] is None else float(ci[0]))
            hi.append(np.nan if ci[1] is None else float(ci[1]))
        if not xs:
            continue
        (line,) = ax.plot(xs, ys, marker="o", label=a, color=colors[n % len(colors)])
        if np.isfinite(lo).all() and np.isfinite(hi).all():
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xlabel(f"eps [{eps_unit.strip()}]" if eps_unit.strip() else "eps")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or f"{metric} against the attack budget", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
