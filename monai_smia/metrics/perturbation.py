"""Perturbation statistics and image-similarity metrics of an attack, per case.

The variance (``"var"``) is the statistic of the SMIA paper (Qi et al., "Stabilized Medical Image
Attacks", ICLR 2021, arXiv 2103.05232, Table 1): the population variance of ``d = x_adv - x``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from monai.metrics import (
    CumulativeIterationMetric,
    PSNRMetric,
    SSIMMetric,
)
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

PERTURBATION_STATISTICS = ("linf", "l2", "var")


def _check_pair(x: torch.Tensor, x_adv: torch.Tensor, name: str = "x_adv") -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(x_adv, torch.Tensor):
        raise TypeError(f"x and {name} must be torch.Tensor, got {type(x).__name__} and {type(x_adv).__name__}.")
    if x.shape != x_adv.shape:
        raise ValueError(
            f"x {tuple(x.shape)} and {name} {tuple(x_adv.shape)} must have the same shape (B, C, *spatial)."
        )
    if x.ndim < 3:
        raise ValueError(f"x must be batch-first and channel-first (B, C, *spatial), got shape {tuple(x.shape)}.")


def perturbation_statistics(
    x: torch.Tensor, x_adv: torch.Tensor, mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """L-infinity norm, L2 norm and variance of ``d = x_adv - x`` per case.

    Args:
        x: clean images ``(B, C, *spatial)``.
        x_adv: adversarial images, same shape.
        mask: optional, broadcastable to ``x``; only elements where ``mask != 0`` are counted
            (the variance is then taken over the masked elements only).

    Returns:
        ``{"linf": (B,), "l2": (B,), "var": (B,)}`` float64 tensors on ``x``'s device. The variance is
        the population variance over elements (the paper's "Var"); a case with no element counted
        gives ``nan``.
    """
    _check_pair(x, x_adv)
    d = (x_adv.detach().double() - x.detach().double()).reshape(x.shape[0], -1)
    if mask is None:
        w = torch.ones_like(d)
    else:
        try:
            w = (
                (torch.broadcast_to(torch.as_tensor(mask, device=x.device), x.shape) != 0)
                .reshape(x.shape[0], -1)
                .double()
            )
        except RuntimeError as err:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to images {tuple(x.shape)}."
            ) from err
    n = w.sum(dim=1)
    dw = d * w
    mean = dw.sum(dim=1) / n
    var = ((d - mean[:, None]) ** 2 * w).sum(dim=1) / n
    return {"linf": dw.abs().amax(dim=1), "l2": dw.pow(2).sum(dim=1).sqrt(), "var": var}


class PerturbationMetric(CumulativeIterationMetric):
    """Cumulative perturbation statistic for MONAI evaluators: ``y_pred`` is ``x_adv``, ``y`` the clean ``x``.

    Args:
        statistic: ``"linf"``, ``"l2"`` or ``"var"`` (the SMIA paper's perturbation variance).
        reduction: MONAI metric reduction applied by :meth:`aggregate` (``"none"`` keeps per-case values).
        get_not_nans: also return the number of non-nan values, as MONAI metrics do.

    Example::

        metric = PerturbationMetric("linf")
        metric(x_adv, x)            # per batch; (B, 1)
        metric.aggregate()          # mean over all cases seen
    """

    def __init__(
        self,
        statistic: str = "linf",
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        if statistic not in PERTURBATION_STATISTICS:
            raise ValueError(f"statistic must be one of {PERTURBATION_STATISTICS}, got {statistic!r}.")
        self.statistic = statistic
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        if y is None:
            raise ValueError("PerturbationMetric needs y (the clean images) beside y_pred (the adversarial images).")
        return perturbation_statistics(y, y_pred, kwargs.get("mask"))[self.statistic][:, None]

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise RuntimeError(
                "PerturbationMetric.aggregate: nothing accumulated yet (call the metric on a batch first)."
            )
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f


def _data_range(x: torch.Tensor, bounds: tuple[float, float] | None, data_range: float | None) -> list[float]:
    """Per-case data range: ``data_range`` if given, else ``hi - lo`` of ``bounds``, else the clean image's range."""
    if data_range is not None:
        if not data_range > 0:
            raise ValueError(f"data_range must be positive, got {data_range}.")
        return [float(data_range)] * x.shape[0]
    if bounds is not None:
        lo, hi = bounds
        if not hi > lo:
            raise ValueError(f"bounds must be (lo, hi) with hi > lo, got {bounds}.")
        return [float(hi - lo)] * x.shape[0]
    flat = x.detach().reshape(x.shape[0], -1).double()
    rng = (flat.amax(dim=1) - flat.amin(dim=1)).tolist()
    return [r if r > 0 else 1.0 for r in rng]


def _grouped(x: torch.Tensor, ranges: list[float]) -> list[tuple[float, list[int]]]:
    groups: dict[float, list[int]] = {}
    for i, r in enumerate(ranges):
        groups.setdefault(r, []).append(i)
    return list(groups.items())


def psnr_per_case(
    x: torch.Tensor, x_adv: torch.Tensor, bounds: tuple[float, float] | None = None, data_range: float | None = None
) -> torch.Tensor:
    """PSNR (dB) of ``x_adv`` against the clean ``x`` per case, through MONAI's :class:`PSNRMetric`.

    The data range is ``data_range``, else ``hi - lo`` of ``bounds``, else each clean image's
    ``max - min``. Identical images give ``inf``.

    Returns:
        ``(B,)`` float64 tensor on the CPU.
    """
    _check_pair(x, x_adv)
    out = torch.empty(x.shape[0], dtype=torch.float64)
    xd, ad = x.detach().double(), x_adv.detach().double()
    for r, idx in _grouped(x, _data_range(x, bounds, data_range)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            vals = PSNRMetric(max_val=r, reduction="none")(ad[idx], xd[idx])
        out[idx] = vals.reshape(-1).cpu().double()
    return out


def ssim_per_case(
    x: torch.Tensor, x_adv: torch.Tensor, bounds: tuple[float, float] | None = None, data_range: float | None = None
) -> torch.Tensor:
    """SSIM of ``x_adv`` against the clean ``x`` per case, through MONAI's :class:`SSIMMetric`.

    2D for ``(B, C, H, W)`` and 3D for ``(B, C, H, W, D)``; the Gaussian window (11, sigma 1.5) is
    shrunk to the largest odd size that fits a small dimension (e.g. a thin slab of slices). Cases
    with a spatial dimension under 3 give ``nan``. Channels are averaged.

    Returns:
        ``(B,)`` float64 tensor on the CPU.
    """
    _check_pair(x, x_adv)
    spatial = tuple(x.shape[2:])
    if len(spatial) not in (2, 3):
        raise ValueError(f"SSIM needs 2D or 3D images (B, C, *spatial), got shape {tuple(x.shape)}.")
    if min(spatial) < 3:
        return torch.full((x.shape[0],), float("nan"), dtype=torch.float64)
    win = [min(11, s) if min(11, s) % 2 == 1 else min(11, s) - 1 for s in spatial]
    out = torch.empty(x.shape[0], dtype=torch.float64)
    xd, ad = x.detach().double(), x_adv.detach().double()
    for r, idx in _grouped(x, _data_range(x, bounds, data_range)):
        metric = SSIMMetric(spatial_dims=len(spatial), data_range=r, win_size=win, reduction="none")
        out[idx] = metric(ad[idx], xd[idx]).reshape(-1).cpu().double()
    return out


def perturbation_case_metrics(
    x: torch.Tensor,
    x_adv: torch.Tensor,
    mask: torch.Tensor | None = None,
    bounds: tuple[float, float] | None = None,
    data_range: float | None = None,
) -> dict[str, np.ndarray]:
    """All perturbation figures per case: ``linf``, ``l2``, ``var`` (see :func:`perturbation_statistics`),
    ``psnr`` and ``ssim`` (whole image against the clean one; see :func:`psnr_per_case`).

    Returns:
        ``{name: (B,) float64 numpy array}``.
    """
    stats = {k: v.cpu().numpy() for k, v in perturbation_statistics(x, x_adv, mask).items()}
    stats["psnr"] = psnr_per_case(x, x_adv, bounds, data_range).numpy()
    stats["ssim"] = ssim_per_case(x, x_adv, bounds, data_range).numpy()
    return stats


