"""The worst case over an ensemble of attacks, AutoAttack style (Croce & Hein, "Reliable evaluation of
adversarial robustness with an ensemble of diverse parameter-free attacks", ICML 2020, arXiv 2003.01690).

Classification: a cascade. Each member attacks only the cases that no earlier member has broken (the
prediction still equals the reference); a case keeps the first result that breaks it. Segmentation:
every member attacks every case and each case keeps the result with the lowest task metric against the
reference (Dice of :func:`~monai_smia.metrics.segmentation_case_metrics`; the per-voxel accuracy
where the reference has no foreground, so Dice is undefined). ``attack.winners`` names, per case, the
member whose result was kept.

AutoAttack's own checks of an evaluation (the authors' ``checks.py``) are recorded per case in ``attack.checks``
(:data:`CHECKS`: a gradient-free member beat every white-box member, an all-zero input gradient at the clean point,
a clean prediction that differs between two forwards), and a fallback for too few classes in ``attack.fallback``;
:meth:`WorstCase.case_notes` hands both, with the winner, to each case's record.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import torch

from monai_smia.attacks.apgd import APGD, misclassified_share
from monai_smia.attacks.base import Attack
from monai_smia.attacks.cospgd import CosPGD
from monai_smia.attacks.pgd import PGD
from monai_smia.attacks.seeding import per_sample_uniform, sample_generators
from monai_smia.attacks.segpgd import SegPGD
from monai_smia.attacks.smia import SMIA
from monai_smia.attacks.square import Square
from monai_smia.losses import deviation_loss, prepare_labels
from monai_smia.metrics.task import segmentation_case_metrics

__all__ = ["CHECKS", "MEMBERS", "WorstCase", "default_members", "member_fallback"]

Builder = Callable[[torch.nn.Module, float, Any, int, int, int], Attack]
#: member names and how each is built from (network, eps, bounds, num_iter, num_queries, spatial_dims)
MEMBERS: dict[str, Builder] = {
    "APGD-CE": lambda n, e, b, t, q, s: APGD(n, eps=e, num_iter=t, loss="ce", bounds=b),
    "APGD-DLR": lambda n, e, b, t, q, s: APGD(n, eps=e, num_iter=t, loss="dlr", bounds=b),
    "APGD-T": lambda n, e, b, t, q, s: APGD(n, eps=e, num_iter=t, loss="dlr", targeted=True, bounds=b),
    "Square": lambda n, e, b, t, q, s: Square(n, eps=e, num_queries=q, bounds=b),
    "SegPGD": lambda n, e, b, t, q, s: SegPGD(n, eps=e, num_iter=t, bounds=b, random_start=True),
    "CosPGD": lambda n, e, b, t, q, s: CosPGD(n, eps=e, num_iter=t, bounds=b, random_start=True),
    "PGD": lambda n, e, b, t, q, s: PGD(n, eps=e, num_iter=t, bounds=b, random_start=True),
    "SMIA": lambda n, e, b, t, q, s: SMIA(n, eps=e, num_iter=t, spatial_dims=s, bounds=b),
}


#: AutoAttack's checks (Croce & Hein 2020; the authors' ``autoattack/checks.py``), per case: name -> what it flags
CHECKS: dict[str, str] = {
    "gradient_masking": "a gradient-free member (Square) beat every white-box member: possible gradient masking",
    "zero_gradient": "the input gradient of the cross-entropy is all zero at the clean point",
    "nondeterministic": "the clean prediction differs between two forwards in eval mode",
}


def member_fallback(task: str, num_classes: int) -> str | None:
    """The change :func:`default_members` makes for a classifier with too few classes for APGD-T, or ``None``.

    APGD-T's targeted DLR (Croce & Hein 2020, Eq. 7) needs 4 classes: with 3 the ensemble uses APGD-DLR, with fewer
    it drops APGD-T (DLR needs at least 3 classes).
    """
    if task == "segmentation" or num_classes >= 4:
        return None
    note = "uses APGD-DLR instead" if num_classes == 3 else "drops it (DLR needs at least 3 classes)"
    return f"APGD-T needs at least 4 classes, the network has {num_classes}; WorstCase {note}"


def default_members(task: str, num_classes: int) -> list[str]:
    """AutoAttack's choice for classifiers (APGD-CE, APGD-T, Square; FAB-T left out), segmentation's own.

    Too few classes for APGD-T: :func:`member_fallback` names the change, which is also warned.
    """
    if task == "segmentation":
        return ["APGD-CE", "SegPGD", "CosPGD", "PGD", "SMIA"]
    fallback = member_fallback(task, num_classes)
    if fallback is None:
        return ["APGD-CE", "APGD-T", "Square"]
    warnings.warn(f"WorstCase: {fallback}.", UserWarning, stacklevel=3)
    return ["APGD-CE", *(["APGD-DLR"] if num_classes == 3 else []), "Square"]


class WorstCase(Attack):
    """AutoAttack-style worst case over member attacks at one budget (module docstring).

    Example::

        attack = WorstCase(net, eps=8 / 255)              # APGD-CE, APGD-T, Square for a classifier
        x_adv = attack(images, labels)
        attack.winners                                    # per case: the member kept, "clean" or None

    Args:
        network, eps, bounds: see :class:`~monai_smia.attacks.base.Attack`.
        attacks: member names from :data:`MEMBERS` or :class:`Attack` instances (named by their class),
            in order; ``None``: :func:`default_members` for the task of the network's output.
        num_iter: iterations of the gradient members (AutoAttack: 100).
        num_queries: queries of Square (AutoAttack: 5000).

    After a call, ``winners`` holds per case the name of the member whose result was kept (``"clean"``:
    a classifier case already wrong; ``None``: a case no member broke, which keeps the first member's
    result) and ``scores`` per member name the per-case outcome (classification: 1.0 broken, 0.0 not,
    ``nan`` not attacked; segmentation: the metric), ``seconds`` per member name its wall time (0 when it
    had no case left). ``trace`` is ``None``. ``checks`` maps each applicable name of :data:`CHECKS` to a per-case
    boolean array (``gradient_masking`` only with both gradient-free and white-box members); ``fallback`` names the
    member change for too few classes (:func:`member_fallback`) or is ``None``.

    Raises:
        ValueError: an unknown member name, or a member that does not fit the network (e.g. DLR with
            fewer than 3 classes).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        eps: float,
        attacks: Sequence[str | Attack] | None = None,
        bounds: Sequence[float] | None = (0.0, 1.0),
        num_iter: int = 100,
        num_queries: int = 5000,
        **kwargs: Any,
    ) -> None:
        super().__init__(network, eps, bounds=bounds, **kwargs)
        if self.targeted or self.loss is not None:
            raise ValueError("WorstCase is untargeted; its members bring their own losses (drop targeted/loss).")
        if attacks is not None:
            if isinstance(attacks, (str, Attack)) or len(attacks) == 0:
                raise ValueError(f"attacks must be a non-empty list of member names or attacks, got {attacks!r}.")
            unknown = [a for a in attacks if not isinstance(a, Attack) and a not in MEMBERS]
            if unknown:
                raise ValueError(
                    f"unknown WorstCase member(s) {unknown}; choose from {', '.join(MEMBERS)} or pass Attack instances."
                )
        self.attacks = None if attacks is None else list(attacks)
        self.num_iter, self.num_queries = num_iter, num_queries
        self.winners: list[str | None] = []
        self.scores: dict[str, np.ndarray] = {}
        self.seconds: dict[str, float] = {}
        self.checks: dict[str, np.ndarray] = {}
        self.fallback: str | None = None

    @property
    def draws_random_start(self) -> bool:
        return True

    def members(self, logits: torch.Tensor, spatial_dims: int) -> list[tuple[str, Attack]]:
        """The members as ``(name, attack)`` for a network with output ``logits``."""
        task = "classification" if logits.ndim == 2 else "segmentation"
        names = self.attacks if self.attacks is not None else default_members(task, logits.shape[1])
        out: list[tuple[str, Attack]] = []
        for i, a in enumerate(names):
            name = type(a).__name__ if isinstance(a, Attack) else a
            if any(name == n for n, _ in out):
                name = f"{name}#{i}"  # a second member of the same kind gets its position
            if not isinstance(a, Attack):
                a = MEMBERS[a](self.network, self.eps, self.bounds, self.num_iter, self.num_queries, spatial_dims)
            out.append((name, a))
        return out

    def perturb(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None,
        delta_init: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        self.trace, self.seconds = None, {}
        with torch.no_grad():
            clean, again = self.logits(x), self.logits(x)
        ref = prepare_labels(labels, clean)
        task = "classification" if clean.ndim == 2 else "segmentation"
        self.fallback = member_fallback(task, clean.shape[1]) if self.attacks is None else None
        members = self.members(clean, x.ndim - 2)
        self.checks = {
            "zero_gradient": self._zero_gradient(x, ref),
            "nondeterministic": (~torch.isclose(clean, again, rtol=1e-5, atol=1e-6)).flatten(1).any(1).cpu().numpy(),
        }
        run = _Runner(x, labels, mask, delta_init, generator, self.eps)
        if clean.ndim == 2:
            best = self._cascade(run, members, misclassified_share(clean, ref) > 0, ref)
        else:
            best = self._lowest_metric(run, members, ref)
        masking = self._gradient_masking(members, clean.ndim == 2)
        if masking is not None:
            self.checks = {"gradient_masking": masking, **self.checks}
        return best

    def case_notes(self) -> list[dict[str, Any]]:
        """Per case of the last call, what its record keeps: ``winner`` (``"none"``: no member broke it),
        ``check_<name>`` for each applicable check of :data:`CHECKS`, and ``fallback`` when one was used."""
        notes = []
        for j, w in enumerate(self.winners):
            note: dict[str, Any] = {"winner": "none" if w is None else w}
            note.update({f"check_{k}": bool(v[j]) for k, v in self.checks.items()})
            if self.fallback:
                note["fallback"] = self.fallback
            notes.append(note)
        return notes

    @staticmethod
    def merge_notes(notes: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """One volume's notes from those of its slices (a 2D network attacked slice by slice): the winner of most
        slices (the first of equals), a check that fired on any slice (the zero gradient: on every slice, since
        only then is the volume's gradient zero), the fallback."""
        merged = dict(notes[0])
        counts = Counter(n["winner"] for n in notes)
        merged["winner"] = max(counts, key=lambda k: counts[k])
        for key in merged:
            if key.startswith("check_"):
                values = [bool(n[key]) for n in notes]
                merged[key] = all(values) if key == "check_zero_gradient" else any(values)
        return merged

    def _zero_gradient(self, x: torch.Tensor, ref: torch.Tensor) -> np.ndarray:
        """Per case, whether the cross-entropy's input gradient at the clean point is all zero (AutoAttack's
        ``check_zero_gradients``); a network output without a gradient path counts as zero everywhere."""
        zero = torch.zeros_like(x, requires_grad=True)
        logits = self.logits(x + zero)
        if not logits.requires_grad:
            return np.ones(x.shape[0], dtype=bool)
        (grad,) = torch.autograd.grad(deviation_loss(logits, ref).sum(), zero, allow_unused=True)
        if grad is None:
            return np.ones(x.shape[0], dtype=bool)
        return (grad.flatten(1).abs().amax(1) == 0).cpu().numpy()

    def _gradient_masking(self, members: list[tuple[str, Attack]], cascade: bool) -> np.ndarray | None:
        """Per case, whether a gradient-free member (Square) beat every white-box member (AutoAttack's check for
        gradient masking); ``None`` without both kinds. Classification: a gradient-free member broke the case (the
        cascade ran it only where the members before it failed); segmentation: its metric is below every white-box
        member's."""
        free = [n for n, a in members if isinstance(a, Square)]
        white = [n for n, a in members if not isinstance(a, Square)]
        if not free or not white:
            return None
        if cascade:
            return np.array([w in free for w in self.winners])
        lowest_free = np.min([self.scores[n] for n in free], axis=0)
        return lowest_free < np.min([self.scores[n] for n in white], axis=0)

    def _cascade(
        self, run: _Runner, members: list[tuple[str, Attack]], broken: torch.Tensor, ref: torch.Tensor
    ) -> torch.Tensor:
        """Classification: each member on the cases still unbroken; the first breaking result is kept."""
        b = broken.shape[0]
        winners: list[str | None] = ["clean" if bool(v) else None for v in broken]
        best = torch.zeros_like(run.x)
        self.scores = {}
        for i, (name, attack) in enumerate(members):
            active = (~broken).nonzero().flatten()
            score = np.full(b, np.nan)
            if active.numel():
                delta = run(attack, active)
                with torch.no_grad():
                    hit = misclassified_share(self.logits(run.x[active] + delta), ref[active]) > 0
                keep = hit | torch.tensor(i == 0, device=hit.device)
                best[active[keep]] = delta[keep]
                broken[active[hit]] = True
                score[active.cpu().numpy()] = hit.double().cpu().numpy()
                for j in active[hit].tolist():
                    winners[j] = name
            self.scores[name] = score
            self.seconds[name] = run.seconds[-1] if active.numel() else 0.0
        self.winners = winners
        return best

    def _lowest_metric(self, run: _Runner, members: list[tuple[str, Attack]], ref: torch.Tensor) -> torch.Tensor:
        """Segmentation: every member on every case; each case keeps the result with the lowest metric."""
        b = run.x.shape[0]
        everyone = torch.arange(b, device=run.x.device)
        best, best_metric = torch.zeros_like(run.x), np.full(b, np.inf)
        winners: list[str | None] = [None] * b
        self.scores = {}
        for name, attack in members:
            delta = run(attack, everyone)
            with torch.no_grad():
                metrics = segmentation_case_metrics(self.logits(run.x + delta), ref)
            metric = np.where(np.isnan(metrics["dice"]), metrics["pixel_accuracy"], metrics["dice"])
            self.scores[name] = metric
            self.seconds[name] = run.seconds[-1]
            lower = torch.as_tensor(metric < best_metric, device=run.x.device)
            best[lower] = delta[lower]
            for j in np.flatnonzero(metric < best_metric):
                winners[j] = name
            best_metric = np.minimum(best_metric, metric)
        self.winners = winners
        return best


class _Runner:
    """Calls a member on a subset of the cases, handing it their labels, mask and random start."""

    def __init__(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None,
        delta_init: torch.Tensor | None,
        generator: torch.Generator | None,
        eps: float,
    ) -> None:
        self.x, self.labels, self.mask, self.generator = x, labels, mask, generator
        self.seconds: list[float] = []  # wall time of each member call
        if delta_init is None:  # one start per case for every member that draws one, whatever the batch
            delta_init = per_sample_uniform(sample_generators(x, None, generator), x, eps)
        self.delta_init = delta_init

    def __call__(self, attack: Attack, idx: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        m = None if self.mask is None else (self.mask if self.mask.shape[0] == 1 else self.mask[idx])
        d0 = None if self.delta_init is None else self.delta_init[idx.to(self.delta_init.device)]
        labels = self.labels[idx.to(self.labels.device)]
        x_adv = attack(self.x[idx], labels, mask=m, delta_init=d0, generator=self.generator)
        delta = (x_adv - self.x[idx]).detach()
        self.seconds.append(time.perf_counter() - start)
        return delta
