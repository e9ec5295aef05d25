"""A bundle's deterministic preprocessing as a differentiable function of the source voxels.

A source-grid attack keeps its perturbation on the image as it was loaded
(``LoadImaged`` and ``EnsureChannelFirstd``: the file's own grid and units, e.g. HU) and lets the
bundle's remaining preprocessing (``Orientationd``, ``Spacingd``, ``ScaleIntensityRanged``,
padding, cropping, ``EnsureTyped``) run inside the attack. MONAI's own transforms are used
unchanged: on a ``MetaTensor`` that requires a gradient, flips and permutations (``Orientation``),
the torch ``grid_sample`` resampling of ``Spacing`` (``mode="bilinear"``/``"nearest"``), the
arithmetic and clamp of ``ScaleIntensityRange`` and the pads and crops all stay on the autograd
graph (``tests/test_source_grid_preprocess.py`` checks this with ``gradcheck`` and against the
bundle's ``Compose``). A transform that is random, or that leaves the graph (e.g. a scipy spline
resampling), is named in a one-line error that suggests the network-grid attack instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.transforms import EnsureChannelFirstd, LoadImaged, Randomizable
from monai.transforms.utils import allow_missing_keys_mode

from monai_smia.io.units import flat_transforms

__all__ = ["DifferentiablePreprocessing", "split_preprocessing"]

#: what to do when the preprocessing cannot run inside the attack
USE_NETWORK_GRID = "attack on the network grid instead (--grid network, or grid='network')"


def _acts_on(t: Any, key: str) -> bool:
    keys = getattr(t, "keys", None)
    return keys is None or key in keys


def split_preprocessing(preprocessing: Any, image_key: str = "image") -> tuple[list[Any], list[Any]]:
    """``(loading, rest)``: the loading transforms (``LoadImaged``, ``EnsureChannelFirstd``) and the
    transforms after them that act on ``image_key``.

    Raises:
        ValueError: the preprocessing does not start with ``LoadImaged``, or ``rest`` holds a random
            transform (naming it).
    """
    flat = flat_transforms(preprocessing)
    if not flat or not isinstance(flat[0], LoadImaged):
        first = type(flat[0]).__name__ if flat else "nothing"
        raise ValueError(
            f"the bundle's preprocessing starts with {first}, not LoadImaged; a source-grid attack needs the "
            f"loader first: {USE_NETWORK_GRID}."
        )
    n = 1
    while n < len(flat) and isinstance(flat[n], EnsureChannelFirstd):
        n += 1
    rest = [t for t in flat[n:] if _acts_on(t, image_key)]
    for t in rest:
        if isinstance(t, Randomizable):
            raise ValueError(  # noqa: TRY004 - a bundle setting, reported as bad input
                f"the bundle's preprocessing applies the random transform {type(t).__name__} to {image_key!r}; a "
                f"source-grid attack needs a deterministic preprocessing after loading: {USE_NETWORK_GRID}."
            )
    return flat[:n], rest


class DifferentiablePreprocessing(torch.nn.Module):
    """The bundle's preprocessing after loading, as a module from source voxels to network input.

    Args:
        transforms: the ``rest`` of :func:`split_preprocessing` (MONAI dictionary or array transforms).
        meta: the loaded source's metadata (``MetaTensor.meta``: affine, spacing, ...); every call
            starts from it, so the result equals the bundle's ``Compose`` on the same values.
        image_key: the dictionary key of the image.

    ``forward(x)``: ``x`` is ``(1, C, *spatial)`` on the source grid; returns the network input
    ``(1, C', *spatial')`` as a plain tensor on the graph of ``x``.
    """

    def __init__(self, transforms: Sequence[Any], meta: dict[str, Any], image_key: str = "image") -> None:
        super().__init__()
        self.transforms = list(transforms)
        self.meta = dict(meta)
        self.image_key = image_key
        self.checked = False

    def _transform(self, t: Any, img: MetaTensor) -> MetaTensor:
        if getattr(t, "keys", None) is None:
            return t(img)
        with allow_missing_keys_mode(t):
            return t({self.image_key: img})[self.image_key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 3 or x.shape[0] != 1:
            raise ValueError(f"source-grid preprocessing takes one image (1, C, *spatial), got {tuple(x.shape)}.")
        img = MetaTensor(x[0], meta=dict(self.meta), applied_operations=[])
        track = x.requires_grad and not self.checked
        for t in self.transforms:
            out = self._transform(t, img)
            if track and not torch.as_tensor(out).requires_grad:
                raise ValueError(
                    f"the bundle's preprocessing step {type(t).__name__} has no gradient path to the source voxels "
                    f"(it leaves torch's autograd graph); {USE_NETWORK_GRID}."
                )
            img = out if isinstance(out, MetaTensor) else MetaTensor(out)
        self.checked = self.checked or track
        return img.as_tensor()[None]

    def output_meta(self, x: torch.Tensor) -> MetaTensor:
        """The network input for ``x`` as a ``MetaTensor`` (affine and applied operations of the network grid)."""
        img = MetaTensor(x[0].detach(), meta=dict(self.meta), applied_operations=[])
        for t in self.transforms:
            img = self._transform(t, img)
        return img
