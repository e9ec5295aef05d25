"""CosPGD (Agnihotri, Jung, Keuper, "CosPGD: an efficient white-box adversarial attack for pixel-wise
prediction tasks", ICML 2024, arXiv 2302.02213): PGD on the per-pixel loss scaled, pixel by pixel, by
the cosine similarity between the softmax prediction and the one-hot label of that pixel.

As in the authors' reference code, the cosine is taken per pixel (not one mean cosine for the image)
and without gradient; pixels the network still classifies confidently and correctly weigh most, so
the attack spreads over the whole image instead of pushing already broken pixels further. Targeted
(``targeted=True``, labels are the target): the scale is ``1 - cosine`` and the loss is descended.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from monai_smia.attacks.pgd import PGD
from monai_smia.losses import per_sample_mean, pixel_loss, soft_prediction

__all__ = ["CosPGD", "cospgd_loss"]


def pixel_cosine(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per pixel, the cosine between the predicted class probabilities and the one-hot target
    (``(B[, *spatial])``; one channel: the two-class vectors ``(1 - p, p)`` and ``(1 - y, y)``)."""
    prob = soft_prediction(logits.detach())
    if logits.shape[1] == 1:
        prob, one_hot = torch.cat([1 - prob, prob], dim=1), torch.cat([1 - target, target], dim=1)
    else:
        one_hot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(prob.dtype)
    return F.cosine_similarity(prob, one_hot, dim=1)


def cospgd_loss(logits: torch.Tensor, target: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """CosPGD's loss per sample: the per-pixel loss times the (gradient-free) per-pixel cosine, mean over pixels."""
    cos = pixel_cosine(logits, target)
    if targeted:
        cos = 1 - cos
    loss = pixel_loss(logits, target)
    return per_sample_mean(loss * (cos if logits.shape[1] > 1 else cos.unsqueeze(1)))


class CosPGD(PGD):
    """CosPGD with L-infinity budget ``eps``: ``num_iter`` signed steps of ``step_size`` (default
    ``2.5 * eps / T``) on :func:`cospgd_loss`, for 2D and 3D segmentation outputs.

    Example::

        attack = CosPGD(net, eps=8 / 255, num_iter=20, random_start=True)
        x_adv = attack(images, label_maps)
    """

    def __init__(self, network: torch.nn.Module, eps: float, *args: Any, **kwargs: Any) -> None:
        """Arguments as :class:`~monai_smia.attacks.pgd.PGD` (``num_iter``, ``step_size``, ``bounds``,
        ``random_start``, ...), without ``loss``: the attack defines its own."""
        super().__init__(network, eps, *args, **kwargs)
        if self.loss is not None:
            raise ValueError("CosPGD defines its own loss (cosine-scaled cross-entropy); drop loss=.")

    def deviation(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cospgd_loss(logits, target, self.targeted)
