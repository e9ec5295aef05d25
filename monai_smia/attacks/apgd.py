"""Auto-PGD (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, arXiv 2003.01690), L-infinity: PGD with momentum and a step size
that halves itself at fixed checkpoints, for classifiers and dense (segmentation) outputs.

Algorithm 1 of the paper: the step starts at ``2 * eps``; ``x_1 = P(x_0 + eta sign(grad))``, then
``z = P(x_k + eta sign(grad))`` and ``x_{k+1} = P(x_k + 0.75 (z - x_k) + 0.25 (x_k - x_{k-1}))``.
At the checkpoints ``w_j = ceil(p_j T)``, ``p_0 = 0``, ``p_1 = 0.22``,
``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, a sample's step is halved and it restarts from
its best (highest-loss) point when (1) its loss rose in fewer than ``rho = 0.75`` of the iterations
since the last checkpoint, or (2) its step was not halved at the last checkpoint and its best loss has
not changed since. Each sample keeps its best iterate: the one with most voxels (a classifier: the
case) misclassified, ties broken by the higher loss. Losses: cross-entropy, DLR (Eq. 6), targeted
DLR (Eq. 7) towards each of the ``num_targets`` most likely other classes in turn (APGD-T);
dense outputs use them per voxel (mean over voxels, a constant multiple of the sum, so the same steps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from monai_smia.attacks.base import Attack, check_positive, frozen_network
from monai_smia.attacks.seeding import per_sample_uniform, sample_generators
from monai_smia.attacks.trace import TraceRecorder
from monai_smia.losses import deviation_loss, dlr_loss, hard_prediction, per_sample_mean

__all__ = ["APGD", "apgd_checkpoints"]


def apgd_checkpoints(num_iter: int) -> list[int]:
    """The iterations ``w_j = ceil(p_j * num_iter)``, ``j >= 1``, where APGD may halve its step (Sec. 3.2)."""
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({min(num_iter, max(1, math.ceil(q * num_iter - 1e-9))) for q in p[1:]})


def misclassified_share(logits: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per sample, the share of voxels (a classifier: 0 or 1) whose prediction differs from ``ref``."""
    return per_sample_mean((hard_prediction(logits.detach()) != ref).double())


class APGD(Attack):
    """APGD-CE, APGD-DLR and APGD-T (targeted DLR) with an L-infinity budget.

    Example::

        attack = APGD(net, eps=8 / 255, num_iter=100, loss="ce")
        x_adv = attack(images, labels)
        apgd_t = APGD(net, eps=8 / 255, loss="dlr", targeted=True, num_targets=9)
        x_adv = apgd_t(images, labels)          # labels: the TRUE classes (AutoAttack's APGD-T)

    Args:
        network: see :class:`~monai_smia.attacks.base.Attack`.
        eps: L-infinity budget.
        num_iter: iterations per run (each one forward and backward; one more for the start).
        loss: ``"ce"`` (cross-entropy; BCE with logits for one output channel) or ``"dlr"`` (needs
            >= 3 classes, >= 4 when targeted).
        targeted: APGD-T: ``labels`` stay the true classes (``None``: the clean prediction); each of
            the ``num_targets`` most likely other classes (per voxel for dense outputs, by the clean
            logits) is targeted in turn, on the cases not yet fully misclassified. This differs from the
            other attacks, whose ``targeted`` labels are the target.
        num_targets: number of target classes (default ``min(9, K - 1)``, AutoAttack's 9).
        restarts: runs per target from new random starts, on the cases not yet fully misclassified.
        bounds: valid intensity range.
        random_start: start the first run from uniform noise (``delta_init`` when given) as the
            paper does; later restarts always start from noise.
        rho: the share of loss increases below which the step is halved (paper: 0.75).
        momentum: weight ``alpha`` of the new step against the previous update (paper: 0.75).

    ``attack.trace`` holds the first run's per-iteration diagnostics (all cases); later runs are not
    traced. Its ``zero_gradient`` flags only cases not yet fully misclassified: DLR is constant (1)
    where the true class ranks third, a genuine zero gradient that is no sign of gradient masking.
    Random draws come from per-sample streams (:mod:`monai_smia.attacks.seeding`), so results do
    not depend on how cases are batched.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        eps: float,
        num_iter: int = 100,
        loss: str = "ce",
        targeted: bool = False,
        num_targets: int | None = None,
        restarts: int = 1,
        bounds: Sequence[float] | None = (0.0, 1.0),
        random_start: bool = True,
        rho: float = 0.75,
        momentum: float = 0.75,
        **kwargs: Any,
    ) -> None:
        super().__init__(network, eps, bounds=bounds, targeted=targeted, **kwargs)
        for name, value in (("num_iter", num_iter), ("restarts", restarts)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        if loss not in ("ce", "dlr"):
            raise ValueError(f"loss must be 'ce' or 'dlr', got {loss!r}.")
        if num_targets is not None and (
            isinstance(num_targets, bool) or not isinstance(num_targets, int) or num_targets < 1
        ):
            raise ValueError(f"num_targets must be an integer >= 1 or None, got {num_targets!r}.")
        if not 0 < rho <= 1 or not 0 < momentum <= 1:
            raise ValueError(f"rho and momentum must lie in (0, 1], got {rho!r} and {momentum!r}.")
        self.num_iter, self.restarts, self.loss_name = num_iter, restarts, loss
        self.num_targets = num_targets
        self.random_start = bool(random_start)
        self.rho, self.momentum = check_positive("rho", rho), check_positive("momentum", momentum)
        self.checkpoints = apgd_checkpoints(num_iter)

    @property
    def draws_random_start(self) -> bool:
        return self.random_start or self.restarts > 1 or self.targeted  # later runs start from noise

    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """As :meth:`Attack.__call__`; with ``targeted=True``, ``labels=None`` means the clean prediction."""
        if labels is None and self.targeted:
            x = self._check_images(images)
            with frozen_network(self.network), torch.no_grad():
                labels = hard_prediction(self.logits(x))
        return super().__call__(images, labels, **kwargs)

    # ----------------------------------------------------------------- objectives and targets
    def run_targets(self, clean_logits: torch.Tensor, ref: torch.Tensor) -> list[torch.Tensor | None]:
        """The target classes of each run (``[None]`` untargeted), checked against the number of classes."""
        k = clean_logits.shape[1]
        if not self.targeted:
            if self.loss_name == "dlr":
                dlr_loss(clean_logits.detach()[:1], ref[:1])  # raises for fewer than 3 classes
            return [None]
        if k < 2:
            raise ValueError("targeted APGD needs at least 2 classes; the network has one output channel.")
        n = min(9, k - 1) if self.num_targets is None else self.num_targets
        if n > k - 1:
            raise ValueError(f"num_targets={n}, but the network has only {k - 1} classes besides the true one.")
        order = clean_logits.detach().scatter(1, ref.unsqueeze(1), float("-inf")).argsort(dim=1, descending=True)
        targets = [order[:, j] for j in range(n)]
        if self.loss_name == "dlr":
            dlr_loss(clean_logits.detach()[:1], ref[:1], targets[0][:1])  # raises for fewer than 4 classes
        return targets

    def objective(self, logits: torch.Tensor, ref: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """The per-sample loss APGD maximises: CE or DLR, or their targeted forms towards ``target``."""
        if self.loss_name == "dlr":
            return dlr_loss(logits, ref, target)
        return deviation_loss(logits, ref) if target is None else -deviation_loss(logits, target)

    # ----------------------------------------------------------------- the attack
    def perturb(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None,
        delta_init: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        zero = torch.zeros_like(x).requires_grad_(True)
        clean = self.logits(x + zero)
        ref = self.target(labels, clean)
        targets = self.run_targets(clean, ref)
        gens = sample_generators(x, delta_init, generator) if self.draws_random_start else []
        best = torch.zeros_like(x)
        best_wrong = misclassified_share(clean, ref)
        self.trace = None
        for j, target in enumerate(targets):
            for r in range(self.restarts):
                first = j == 0 and r == 0  # the first run attacks every case (and is traced)
                active = torch.arange(x.shape[0], device=x.device) if first else (best_wrong < 1).nonzero().flatten()
                if active.numel() == 0:
                    return best
                start = self._start(x, mask, delta_init, gens, first)[active]
                m = None if mask is None else (mask if mask.shape[0] == 1 else mask[active])
                t = None if target is None else target[active]
                d, wrong = self._run(x[active], ref[active], t, start, m, first)
                better = torch.ones_like(active, dtype=torch.bool) if first else wrong > best_wrong[active]
                best[active[better]] = d[better]
                best_wrong[active[better]] = wrong[better]
        return best

    def _start(
        self, x: torch.Tensor, mask: torch.Tensor | None, delta_init: torch.Tensor | None, gens: list, first: bool
    ) -> torch.Tensor:
        """The first run's start (zero, ``delta_init`` or per-sample noise), then fresh per-sample noise."""
        if first and not self.random_start:
            return torch.zeros_like(x)
        if first and delta_init is not None:
            return self.project(x, self.checked_delta_init(x, delta_init), mask)
        return self.project(x, per_sample_uniform(gens, x, self.eps), mask)

    def _evaluate(
        self, x: torch.Tensor, delta: torch.Tensor, ref: torch.Tensor, target: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss, misclassified share (both per sample) and the loss's input gradient at ``x + delta``."""
        delta = delta.detach().requires_grad_(True)
        logits = self.logits(x + delta)
        loss = self.objective(logits, ref, target)
        (grad,) = torch.autograd.grad(loss.sum(), delta)
        return loss.detach(), misclassified_share(logits, ref), grad

    def _run(
        self,
        x: torch.Tensor,
        ref: torch.Tensor,
        target: torch.Tensor | None,
        delta: torch.Tensor,
        mask: torch.Tensor | None,
        traced: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One APGD run (Algorithm 1) from ``delta``: the best perturbation per sample and its misclassified share."""
        b, view = x.shape[0], (-1,) + (1,) * (x.ndim - 1)
        eta = torch.full((b,), 2 * self.eps, dtype=x.dtype, device=x.device)
        loss, wrong, grad = self._evaluate(x, delta, ref, target)
        top_d, top_loss, top_grad = delta, loss, grad  # x_max, the restart point
        out_d, out_wrong, out_loss = delta, wrong, loss  # the returned iterate
        recorder = TraceRecorder(b, x[0].numel(), x.device) if traced else None
        prev, losses, solved = delta, [loss], []
        last, last_top, halved = 0, top_loss, torch.ones(b, dtype=torch.bool, device=x.device)
        for k in range(1, self.num_iter + 1):
            a = 1.0 if k == 1 else self.momentum
            step = eta.view(view) * grad.sign()
            z = self.project(x, delta + step, mask)
            prev, delta = delta, self.project(x, delta + a * (z - delta) + (1 - a) * (delta - prev), mask)
            loss, wrong, grad = self._evaluate(x, delta, ref, target)
            if recorder is not None:
                recorder.record(grad, loss, None, delta, delta - prev, step)
                solved.append(wrong >= 1)
            losses.append(loss)
            up = loss > top_loss
            top_d, top_grad = torch.where(up.view(view), delta, top_d), torch.where(up.view(view), grad, top_grad)
            top_loss = torch.where(up, loss, top_loss)
            keep = (wrong > out_wrong) | ((wrong == out_wrong) & (loss > out_loss))
            out_d = torch.where(keep.view(view), delta, out_d)
            out_wrong, out_loss = torch.where(keep, wrong, out_wrong), torch.where(keep, loss, out_loss)
            if k in self.checkpoints and k < self.num_iter:
                rises = sum((losses[i + 1] > losses[i]).int() for i in range(last, k))
                halve = (rises < self.rho * (k - last)) | (~halved & (top_loss == last_top))
                eta = torch.where(halve, eta / 2, eta)
                delta = torch.where(halve.view(view), top_d, delta)
                grad = torch.where(halve.view(view), top_grad, grad)
                last, last_top, halved = k, top_loss, halve
        if recorder is not None:  # a zero gradient once every voxel is misclassified is no sign of masking
            self.trace = recorder.finish()
            self.trace.zero_gradient &= ~torch.stack(solved).cpu()
        return out_d, out_wrong
