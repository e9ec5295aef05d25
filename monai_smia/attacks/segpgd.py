"""SegPGD (Gu, Zhao, Tresp, Torr, "SegPGD: An Effective and Efficient Adversarial Attack for Evaluating and
Boosting Segmentation Robustness", ECCV 2022, arXiv 2207.12391): PGD on a per-pixel loss that weights
correctly and wrongly classified pixels differently, shifting its attention from the former to the
latter as the iterations go on.

Eq. 4 of the paper: ``L = (1 - lambda_t) / N * sum_{correct} CE_j + lambda_t / N * sum_{wrong} CE_j`` with
``lambda_t = (t - 1) / (2T)`` at iteration ``t = 1..T`` (0 first, just under 1/2 last); "correct" means the
current prediction of pixel ``j`` equals its label (no gradient through that choice).
"""

from __future__ import annotations

from typing import Any

import torch

from monai_smia.attacks.pgd import PGD
from monai_smia.losses import hard_prediction, per_sample_mean, pixel_loss

__all__ = ["SegPGD", "segpgd_loss"]


def segpgd_loss(logits: torch.Tensor, target: torch.Tensor, weight: float) -> torch.Tensor:
    """SegPGD's loss per sample: per-pixel loss weighted ``1 - weight`` where the prediction equals
    ``target`` and ``weight`` where it does not, mean over pixels (the paper's ``1/N`` sum)."""
    loss = pixel_loss(logits, target)
    correct = hard_prediction(logits.detach()) == target
    return per_sample_mean(torch.where(correct, (1.0 - weight) * loss, weight * loss))


class SegPGD(PGD):
    """SegPGD with L-infinity budget ``eps``: ``num_iter`` signed steps of ``step_size`` (default
    ``2.5 * eps / T``) on :func:`segpgd_loss` with ``lambda_t = t / (2T)``, ``t = 0..T-1``.

    For 2D and 3D segmentation outputs ``(B, K, *spatial)`` (one channel: BCE with logits); a
    classifier output is treated as one pixel. ``attack.trace.deviation_loss`` records the weighted loss.

    Example::

        attack = SegPGD(net, eps=8 / 255, num_iter=20, random_start=True)
        x_adv = attack(images, label_maps)
    """

    def __init__(self, network: torch.nn.Module, eps: float, *args: Any, **kwargs: Any) -> None:
        """Arguments as :class:`~monai_smia.attacks.pgd.PGD` (``num_iter``, ``step_size``, ``bounds``,
        ``random_start``, ...), without ``loss``: the attack defines its own."""
        super().__init__(network, eps, *args, **kwargs)
        if self.loss is not None:
            raise ValueError("SegPGD defines its own loss (the paper's Eq. 4); drop loss=.")
        self._t = 0

    def perturb(self, x: torch.Tensor, labels: torch.Tensor, *args: Any) -> torch.Tensor:
        self._t = 0  # :meth:`deviation` runs once per iteration and counts them
        return super().perturb(x, labels, *args)

    def deviation(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = self._t / (2 * self.num_iter)
        self._t += 1
        return segpgd_loss(logits, target, weight)
