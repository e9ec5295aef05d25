"""Deviation and stabilization losses of SMIA (Qi et al., ICLR 2021, arXiv 2103.05232), per sample.

Every function here returns one value per sample, shape ``(B,)``: the mean over classes' pixels for
segmentation, so that a batch mean equals the usual "mean over batch and pixels" and an attack's
result does not depend on how samples (or the slices of a volume) are batched.

Networks with a single output channel are binary with logits: they use sigmoid and
binary cross-entropy with logits, both for the deviation loss and for the stabilization term
(softmax over one channel is constant 1 and would silently turn SMIA into PGD).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "prepare_labels",
    "deviation_loss",
    "pixel_loss",
    "stabilization_loss",
    "stabilization_kl",
    "soft_prediction",
    "hard_prediction",
    "per_sample_mean",
    "dlr_loss",
    "DeviationLoss",
]

DeviationLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _wide(logits: torch.Tensor) -> torch.Tensor:
    """Logits in at least float32 (half and bfloat16 outputs of autocast are widened; float64 stays)."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def per_sample_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over every dim but the first: ``(B, ...) -> (B,)``."""
    return t.reshape(t.shape[0], -1).mean(dim=1) if t.ndim > 1 else t


def prepare_labels(labels: torch.Tensor, logits: torch.Tensor, name: str = "labels") -> torch.Tensor:
    """Bring ``labels`` into the form :func:`deviation_loss` expects for ``logits``.

    Multi-class (K > 1): integer class indices of shape ``(B,)`` (classification) or ``(B, *spatial)``
    (segmentation). Accepted inputs: indices ``(B,)``/``(B, 1)``, label maps ``(B, 1, *sp)``/``(B, *sp)``,
    one-hot ``(B, K[, *sp])``. Binary (K == 1): float targets shaped like ``logits``.

    Raises:
        ValueError: when the shape or the values do not fit the network output.
    """
    b, k, spatial = logits.shape[0], logits.shape[1], tuple(logits.shape[2:])
    lab = labels.to(logits.device)
    if lab.shape[:1] != (b,):
        raise ValueError(f"{name} has batch size {tuple(lab.shape)[:1]}, the network output has {b}.")
    rest = tuple(lab.shape[1:])
    if k == 1:
        if rest not in (spatial, (1, *spatial)) and not (not spatial and rest in ((), (1,))):
            raise ValueError(
                f"{name} of shape {tuple(lab.shape)} does not fit a single-channel output {tuple(logits.shape)}; "
                f"expected (B, 1, *spatial) or (B, *spatial) binary targets."
            )
        return lab.reshape(logits.shape).to(torch.promote_types(logits.dtype, torch.float32))
    if rest == spatial:
        idx = lab
    elif rest == (1, *spatial):
        idx = lab[:, 0]
    elif rest == (k, *spatial):
        idx = lab.argmax(dim=1)
    else:
        raise ValueError(
            f"{name} of shape {tuple(lab.shape)} does not fit the network output {tuple(logits.shape)}; expected "
            f"class indices (B,{' *spatial' if spatial else ''}), a label map (B, 1{', *spatial' if spatial else ''}) "
            f"or one-hot (B, {k}{', *spatial' if spatial else ''})."
        )
    if idx.is_floating_point():
        if not torch.equal(idx, idx.round()):
            raise ValueError(f"{name} must hold integer class indices, got non-integer values.")
    idx = idx.long()
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= k:
        raise ValueError(f"{name} values must lie in [0, {k - 1}] for a {k}-channel output, got [{lo}, {hi}].")
    return idx


def pixel_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Unreduced task loss: cross-entropy ``(B[, *spatial])`` (K > 1) or BCE with logits ``(B, 1[, *spatial])``."""
    logits = _wide(logits)
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return F.cross_entropy(logits, target, reduction="none")


def deviation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Task loss per sample: cross-entropy (K > 1) or BCE with logits (K == 1), mean over pixels."""
    return per_sample_mean(pixel_loss(logits, target))


def soft_prediction(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities: softmax over channels, sigmoid for a single channel."""
    logits = _wide(logits)
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def hard_prediction(logits: torch.Tensor) -> torch.Tensor:
    """Predicted labels in the form :func:`deviation_loss` takes as target (argmax, or > 0 for one channel)."""
    if logits.shape[1] == 1:
        return (logits > 0).float()
    return logits.argmax(dim=1)


def stabilization_loss(logits: torch.Tensor, smoothed_prob: torch.Tensor, mode: str = "soft") -> torch.Tensor:
    """SMIA's stabilization term per sample: cross-entropy of ``logits`` against the prediction
    ``smoothed_prob`` on the Gaussian-smoothed perturbation (Qi et al. 2021, Eq. 5).

    The soft cross-entropy has the gradient of KL(s || softmax(logits)), the quantity the paper analyses;
    ``mode="hard"`` uses argmax(s), as the authors' released code does.
    """
    logits = _wide(logits)
    if mode not in ("soft", "hard"):
        raise ValueError(f"stabilization must be 'soft' or 'hard', got {mode!r}.")
    if logits.shape[1] == 1:
        target = smoothed_prob if mode == "soft" else (smoothed_prob > 0.5).float()
        return per_sample_mean(F.binary_cross_entropy_with_logits(logits, target, reduction="none"))
    if mode == "hard":
        return per_sample_mean(F.cross_entropy(logits, smoothed_prob.argmax(dim=1), reduction="none"))
    return per_sample_mean(-(smoothed_prob * F.log_softmax(logits, dim=1)).sum(dim=1))


def stabilization_kl(smoothed_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(f(x + W*d) || f(x + d)) per sample, differentiable in both arguments: SMIA's stabilization
    term as the paper's KL/Fisher analysis states it (Qi et al. 2021, Sec. 3.2; the
    ``stabilization_target="differentiable"`` reading).

    ``smoothed_logits`` give the reference distribution P (softmax, or sigmoid for one channel),
    ``logits`` the distribution Q; the result is ``sum_c P_c (log P_c - log Q_c)``, mean over pixels.
    """
    a, b = _wide(smoothed_logits), _wide(logits)
    if a.shape != b.shape:
        raise ValueError(f"smoothed logits {tuple(a.shape)} and logits {tuple(b.shape)} differ in shape.")
    if a.shape[1] == 1:
        p = torch.sigmoid(a)
        kl = p * (F.logsigmoid(a) - F.logsigmoid(b)) + (1 - p) * (F.logsigmoid(-a) - F.logsigmoid(-b))
        return per_sample_mean(kl)
    log_p, log_q = F.log_softmax(a, dim=1), F.log_softmax(b, dim=1)
    return per_sample_mean((log_p.exp() * (log_p - log_q)).sum(dim=1))


def dlr_loss(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Difference of logits ratio per sample (Croce & Hein, ICML 2020, arXiv 2003.01690, Eq. 6 and 7), to maximise.

    Untargeted: ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``; targeted towards ``target``:
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, where ``z_pi1 >= z_pi2 >= ...`` are the sorted
    logits. It is invariant to shifting and rescaling the logits. Per voxel for dense outputs, then
    the mean over voxels (a constant multiple of the paper's sum, so the same attack).

    Args:
        logits: ``(B, K[, *spatial])``, ``K >= 3`` (``K >= 4`` when targeted).
        labels: class indices ``(B[, *spatial])`` (the true classes).
        target: class indices of ``labels``' shape for the targeted form; ``None`` for the untargeted one.

    Raises:
        ValueError: too few classes.
    """
    z = _wide(logits)
    k, need = z.shape[1], 3 if target is None else 4
    if k < need:
        kind = "targeted DLR" if target is not None else "DLR"
        raise ValueError(f"{kind} needs at least {need} classes, the network has {k}; use the cross-entropy loss.")
    top = z.topk(need, dim=1).values
    z_y = z.gather(1, labels.unsqueeze(1)).squeeze(1)
    if target is None:
        other = z.scatter(1, labels.unsqueeze(1), float("-inf")).amax(dim=1)
        value = -(z_y - other) / (top[:, 0] - top[:, 2] + 1e-12)
    else:
        z_t = z.gather(1, target.unsqueeze(1)).squeeze(1)
        value = -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)
    return per_sample_mean(value)
