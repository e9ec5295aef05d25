"""Fast gradient sign method (Goodfellow et al., "Explaining and Harnessing Adversarial Examples",
ICLR 2015, arXiv 1412.6572): one signed gradient step of size ``eps``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import torch

from monai_smia.attacks.base import IterativeAttack

__all__ = ["FGSM"]


class FGSM(IterativeAttack):
    """FGSM: ``x_adv = clip(x + eps * sign(grad_x L(f(x), y)))``, PGD with one step of size ``eps``."""

    def __init__(
        self,
        network: torch.nn.Module,
        eps: float,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        bounds: Sequence[float] | None = (0.0, 1.0),
        **kwargs: Any,
    ) -> None:
        super().__init__(
            network, eps, num_iter=1, step_size=eps, random_start=False, loss=loss, bounds=bounds, **kwargs
        )
