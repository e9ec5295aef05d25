"""Image-quality metrics of an adversarial batch against the clean one, for MONAI metric handlers.

``IgniteMetricHandler(metric_fn=ImageQualityMetric("psnr", bounds=(0, 1)),
output_transform=from_engine(["image_adv", "image"]))`` reports the mean PSNR (or SSIM) of the
attacked images, computed per case exactly as the stored case records compute it
(:func:`monai_smia.metrics.perturbation.psnr_per_case` / ``ssim_per_case``: data range from the
bounds, an SSIM window shrunk to thin volumes). :class:`~monai_smia.metrics.PerturbationMetric`
does the same for L-inf, L2 and the perturbation variance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

from monai_smia.metrics.perturbation import psnr_per_case, ssim_per_case

__all__ = ["ImageQualityMetric"]

_QUALITY = {"psnr": psnr_per_case, "ssim": ssim_per_case}


class ImageQualityMetric(CumulativeIterationMetric):
    """Cumulative PSNR or SSIM of ``y_pred`` (the adversarial images) against ``y`` (the clean ones).

    Args:
        name: ``"psnr"`` or ``"ssim"``.
        bounds: valid input range; its width is the data range (``None``: each clean image's range).
        reduction: MONAI reduction of :meth:`aggregate` (``"none"`` keeps the per-case values).
    """

    def __init__(
        self,
        name: str = "psnr",
        bounds: Sequence[float] | None = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
    ) -> None:
        super().__init__()
        if name not in _QUALITY:
            raise ValueError(f"name must be one of {', '.join(_QUALITY)}, got {name!r}.")
        self.name, self.reduction = name, reduction
        self.bounds = None if bounds is None else (float(bounds[0]), float(bounds[1]))

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        if y is None:
            raise ValueError("ImageQualityMetric needs y (the clean images) beside y_pred (the adversarial images).")
        x, x_adv = torch.as_tensor(y).detach().cpu(), torch.as_tensor(y_pred).detach().cpu()
        return _QUALITY[self.name](x, x_adv, self.bounds)[:, None]

    def aggregate(self, reduction: MetricReduction | str | None = None) -> torch.Tensor:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise RuntimeError(
                "ImageQualityMetric.aggregate: nothing accumulated yet (call the metric on a batch first)."
            )
        return do_metric_reduction(data, reduction or self.reduction)[0]
