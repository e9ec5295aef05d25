"""Uniform random sign noise of size ``eps``: the floor every adversarial attack must beat."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from monai_smia.attacks.base import Attack

__all__ = ["RandomSignNoise"]


class RandomSignNoise(Attack):
    """``x + eps * s`` with ``s`` uniform in ``{-1, +1}`` per element, projected like every attack.

    It uses no gradient; ``labels`` are accepted and ignored so that it plugs in wherever an attack does.
    """

    uses_labels = False
    #: the noise itself is the random draw (``delta_init`` gives its signs)
    draws_random_start = True

    def __init__(
        self, network: torch.nn.Module, eps: float, bounds: Sequence[float] | None = (0.0, 1.0), **kwargs: Any
    ) -> None:
        super().__init__(network, eps, bounds=bounds, **kwargs)

    def perturb(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None,
        delta_init: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        self.trace = None
        if delta_init is not None:
            signs = self.checked_delta_init(x, delta_init).sign()
        else:
            dev = generator.device if generator is not None else x.device
            signs = (
                torch.randint(0, 2, x.shape, generator=generator, device=dev).to(device=x.device, dtype=x.dtype) * 2 - 1
            )
        return self.project(x, self.eps * signs, mask)
