"""A differentiable intensity window, so that an attack budget can be stated in physical units.

A CT network usually sees ``ScaleIntensityRange(a_min=-1000, a_max=400, b_min=0, b_max=1, clip=True)``
applied to Hounsfield units (HU). Putting that window *inside* the network instead of the
preprocessing chain lets an attack run on the HU volume itself, so ``eps`` is in HU (e.g. 20 HU)
and the perturbation can be added back to the source CT file unchanged::

    net_hu = with_intensity_window(unet, a_min=-1000, a_max=400)   # input in HU, same predictions
    attack = SMIA(net_hu, eps=20.0, bounds=None, spatial_dims=2)      # eps in HU

About clipping: the window clamps HU outside ``[a_min, a_max]``, which has zero gradient there.
With ``clip=True`` (what the network saw during training) a sign-gradient attack therefore leaves
voxels outside the window unperturbed (``sign(0) = 0``), e.g. air below -1000 HU or bone above
the upper level: a perturbation there could not change the network's input anyway. A voxel that a
step pushes out of the window stays where it is afterwards. ``straight_through=True`` keeps the
clamped forward pass but passes the gradient through the clamp unchanged (a straight-through
estimator): voxels just outside the window can then be pushed in, at the price of gradient steps
that are wasted on voxels deep outside it. ``clip=False`` is a plain affine map (the network then
sees values outside ``[b_min, b_max]`` it may never have been trained on).
"""

from __future__ import annotations

import torch

__all__ = ["IntensityWindow", "with_intensity_window"]


class IntensityWindow(torch.nn.Module):
    """Map ``[a_min, a_max]`` linearly to ``[b_min, b_max]`` (and clamp), differentiably.

    Computes the same values as MONAI's ``ScaleIntensityRange`` with the same arguments, in the
    same order of operations, so a network trained with that transform predicts identically.

    Args:
        a_min: input intensity mapped to ``b_min`` (e.g. -1000 HU).
        a_max: input intensity mapped to ``b_max`` (e.g. 400 HU).
        b_min: output lower level.
        b_max: output upper level.
        clip: clamp the output to ``[b_min, b_max]``.
        straight_through: with ``clip``, let the gradient pass the clamp as if it were the identity
            (the forward values are still clamped). See the module docstring.
    """

    def __init__(
        self,
        a_min: float,
        a_max: float,
        b_min: float = 0.0,
        b_max: float = 1.0,
        clip: bool = True,
        straight_through: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("a_min", a_min), ("a_max", a_max), ("b_min", b_min), ("b_max", b_max)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"IntensityWindow: {name} must be a number, got {type(value).__name__}.")
        if not a_min < a_max:
            raise ValueError(f"IntensityWindow: need a_min < a_max, got a_min={a_min}, a_max={a_max}.")
        if not b_min < b_max:
            raise ValueError(f"IntensityWindow: need b_min < b_max, got b_min={b_min}, b_max={b_max}.")
        if straight_through and not clip:
            raise ValueError("IntensityWindow: straight_through=True only makes sense with clip=True.")
        self.a_min, self.a_max = float(a_min), float(a_max)
        self.b_min, self.b_max = float(b_min), float(b_max)
        self.clip = bool(clip)
        self.straight_through = bool(straight_through)

    @property
    def gain(self) -> float:
        """Output units per input unit: an input budget ``eps`` is ``eps * gain`` at the network input."""
        return (self.b_max - self.b_min) / (self.a_max - self.a_min)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (x - self.a_min) / (self.a_max - self.a_min)
        y = y * (self.b_max - self.b_min) + self.b_min
        if not self.clip:
            return y
        clamped = y.clamp(self.b_min, self.b_max)
        if self.straight_through:
            return y + (clamped - y).detach()
        return clamped

    def extra_repr(self) -> str:
        return (
            f"a_min={self.a_min}, a_max={self.a_max}, b_min={self.b_min}, b_max={self.b_max}, "
            f"clip={self.clip}, straight_through={self.straight_through}"
        )


def with_intensity_window(
    network: torch.nn.Module,
    a_min: float,
    a_max: float,
    b_min: float = 0.0,
    b_max: float = 1.0,
    clip: bool = True,
    straight_through: bool = False,
) -> torch.nn.Sequential:
    """Return ``Sequential(IntensityWindow(...), network)``: a network that takes raw intensities (HU).

    The returned module shares ``network``'s parameters (nothing is copied).
    """
    if not isinstance(network, torch.nn.Module):
        raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}.")
    return torch.nn.Sequential(IntensityWindow(a_min, a_max, b_min, b_max, clip, straight_through), network)
