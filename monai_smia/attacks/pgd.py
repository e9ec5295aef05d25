"""Projected gradient descent (Madry et al., "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018, arXiv 1706.06083): iterated signed gradient steps projected onto the
L-infinity ball and the valid intensity range."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import torch

from monai_smia.attacks.base import IterativeAttack

__all__ = ["PGD"]


class PGD(IterativeAttack):
    """PGD with L-infinity budget ``eps``, ``num_iter`` steps of ``step_size`` (default ``2.5 * eps / T``).

    Example::

        attack = PGD(net, eps=8 / 255, num_iter=10, random_start=True)
        x_adv = attack(images, labels)
    """

    def __init__(
        self,
        network: torch.nn.Module,
        eps: float,
        num_iter: int = 10,
        step_size: float | None = None,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        bounds: Sequence[float] | None = (0.0, 1.0),
        random_start: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            network,
            eps,
            num_iter=num_iter,
            step_size=step_size,
            random_start=random_start,
            loss=loss,
            bounds=bounds,
            **kwargs,
        )
