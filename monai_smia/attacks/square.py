"""Square Attack (Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020, arXiv 1912.00049), L-infinity: gradient-free random
search over square (cube, in 3D) windows set to ``+-eps`` per channel.

Algorithm 2 of the paper: start from vertical stripes of ``+-eps`` (one random sign per channel and
column); at query ``i`` draw a window of side ``s = round(sqrt(p_i * N / C))`` (``N`` the number of
input elements, ``C`` channels; the ``d``-th root over ``d`` spatial dims) at a random position, set it
to one random sign per channel times ``eps``, and keep the change if the loss went down. ``p_i`` halves
at the paper's fixed fractions of 10,000 queries (rescaled to ``num_queries``). Loss: the margin
``z_y - max_{k != y} z_k`` for classifiers (a case stops once it is negative); for segmentation, the
share of voxels still predicted as their reference (labels or the clean prediction), ties broken by
the mean per-voxel margin. A case whose proposal would change nothing takes the opposite signs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from monai_smia.attacks.base import Attack
from monai_smia.attacks.seeding import sample_generators
from monai_smia.losses import hard_prediction, per_sample_mean, prepare_labels

__all__ = ["Square", "square_fraction", "margin"]

#: the paper's schedule: (query among 10,000 after which, divisor of p_init)
_SCHEDULE = ((10, 2), (50, 4), (200, 8), (500, 16), (1000, 32), (2000, 64), (4000, 128), (6000, 256), (8000, 512))


def square_fraction(p_init: float, query: int, num_queries: int) -> float:
    """``p_i``: the share of elements the window covers at ``query`` (the official schedule, rescaled)."""
    it = int(query / num_queries * 10000)
    divisor = 1
    for start, div in _SCHEDULE:
        if it > start:
            divisor = div
    return p_init / divisor


def margin(logits: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per element ``z_y - max_{k != y} z_k`` (one channel: ``(2y - 1) z``); negative where misclassified."""
    z = logits.detach().float() if logits.dtype in (torch.float16, torch.bfloat16) else logits.detach()
    if z.shape[1] == 1:
        return ((2 * ref - 1) * z)[:, 0]
    z_y = z.gather(1, ref.unsqueeze(1)).squeeze(1)
    return z_y - z.scatter(1, ref.unsqueeze(1), float("-inf")).amax(dim=1)


class Square(Attack):
    """Square Attack, L-infinity, untargeted; ``num_queries`` network evaluations after the first.

    Example::

        attack = Square(net, eps=8 / 255, num_queries=5000, p_init=0.8)
        x_adv = attack(images, labels)

    Args:
        network, eps, bounds: see :class:`~monai_smia.attacks.base.Attack`.
        num_queries: number of proposals (each one forward pass of the cases still unbroken).
        p_init: initial share of elements a window covers (paper: 0.05 for L-inf on ImageNet,
            AutoAttack: 0.8).

    Random draws come from per-sample streams (:mod:`monai_smia.attacks.seeding`): a case's result
    does not depend on the batch it is in. No trace is recorded (there are no gradients).
    """

    draws_random_start = True

    def __init__(
        self,
        network: torch.nn.Module,
        eps: float,
        num_queries: int = 5000,
        p_init: float = 0.8,
        bounds: Sequence[float] | None = (0.0, 1.0),
        **kwargs: Any,
    ) -> None:
        super().__init__(network, eps, bounds=bounds, **kwargs)
        if isinstance(num_queries, bool) or not isinstance(num_queries, int) or num_queries < 1:
            raise ValueError(f"num_queries must be an integer >= 1, got {num_queries!r}.")
        if isinstance(p_init, bool) or not isinstance(p_init, (int, float)) or not 0 < p_init <= 1:
            raise ValueError(f"p_init must lie in (0, 1], got {p_init!r}.")
        if self.targeted or self.loss is not None:
            raise ValueError(
                "Square is untargeted with its own loss (margin / share of voxels kept); drop targeted/loss."
            )
        self.num_queries, self.p_init = num_queries, float(p_init)

    def score(self, logits: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample ``(primary, tie-break)`` to minimise: the margin (classifier), or the share of voxels
        kept and the mean margin (segmentation)."""
        m = margin(logits, ref)
        if m.ndim == 1:
            return m, torch.zeros_like(m)
        kept = per_sample_mean((hard_prediction(logits.detach()) == ref).double())
        return kept.to(m.dtype), per_sample_mean(m)

    def perturb(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None,
        delta_init: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        self.trace = None
        with torch.no_grad():
            ref = prepare_labels(labels, self.logits(x))
        gens = sample_generators(x, delta_init, generator)
        b, c, spatial = x.shape[0], x.shape[1], tuple(x.shape[2:])
        # per sample, every random number of the run drawn at once: stripes, then per query positions and signs
        count = c * spatial[-1] + self.num_queries * (len(spatial) + c)
        draws = torch.stack([torch.rand(count, generator=g, dtype=torch.float64) for g in gens]).to(x.device)
        stripes = (draws[:, : c * spatial[-1]] < 0.5).to(x.dtype) * 2 - 1
        delta = self.project(
            x, self.eps * stripes.reshape(b, c, *([1] * (len(spatial) - 1)), spatial[-1]).expand_as(x), mask
        )
        with torch.no_grad():
            best, tie = self.score(self.logits(x + delta), ref)
        queries = draws[:, c * spatial[-1] :].reshape(b, self.num_queries, len(spatial) + c)
        for i in range(self.num_queries):
            active = (best > 0).nonzero().flatten()
            if active.numel() == 0:
                break
            m = None if mask is None else (mask if mask.shape[0] == 1 else mask[active])
            proposal = self._propose(x[active], delta[active], m, queries[active, i], i)
            with torch.no_grad():
                new, new_tie = self.score(self.logits(x[active] + proposal), ref[active])
            keep = (new < best[active]) | ((new == best[active]) & (new_tie < tie[active]))
            idx = active[keep]
            delta[idx], best[idx], tie[idx] = proposal[keep], new[keep], new_tie[keep]
        return delta

    def _propose(
        self, x: torch.Tensor, delta: torch.Tensor, mask: torch.Tensor | None, u: torch.Tensor, query: int
    ) -> torch.Tensor:
        """``delta`` with one window per sample set to ``+-eps`` per channel (positions and signs from ``u``)."""
        c, spatial = x.shape[1], tuple(x.shape[2:])
        n = len(spatial)
        p = square_fraction(self.p_init, query, self.num_queries)
        side = max(1, min(min(spatial), round((p * x[0].numel() / c) ** (1.0 / n))))
        window = torch.ones((x.shape[0], 1, *spatial), dtype=torch.bool, device=x.device)
        for d, size in enumerate(spatial):
            start = (u[:, d] * (size - side + 1)).floor().long().clamp_max(size - side)
            idx = torch.arange(size, device=x.device)
            inside = (idx >= start[:, None]) & (idx < start[:, None] + side)
            window = window & inside.reshape(x.shape[0], 1, *[size if k == d else 1 for k in range(n)])
        signs = ((u[:, n:] < 0.5).to(x.dtype) * 2 - 1).reshape(x.shape[0], c, *([1] * n))
        new = self.project(x, torch.where(window, self.eps * signs, delta), mask)
        same = (new == delta).flatten(1).all(dim=1).reshape(-1, *([1] * (n + 1)))
        flipped = self.project(x, torch.where(window, -self.eps * signs, delta), mask)
        return torch.where(same, flipped, new)
