"""Attack names and the ONE attack factory, :func:`make_attack`, that evaluations, exports and
reproductions build their attacks with."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from monai_smia.attacks.apgd import APGD
from monai_smia.attacks.base import Attack
from monai_smia.attacks.cospgd import CosPGD
from monai_smia.attacks.dag import DAG
from monai_smia.attacks.deepfool import DeepFool
from monai_smia.attacks.fgsm import FGSM
from monai_smia.attacks.noise import RandomSignNoise
from monai_smia.attacks.pgd import PGD
from monai_smia.attacks.segpgd import SegPGD
from monai_smia.attacks.smia import SMIA
from monai_smia.attacks.square import Square
from monai_smia.attacks.worstcase import WorstCase

__all__ = ["ATTACKS", "DEFAULT_ATTACKS", "MIN_CLASSES", "ROBUSTNESS", "TASK_ATTACKS", "check_attacks", "make_attack"]

#: attack names understood by :func:`make_attack`, in the paper's order
ATTACKS = (
    "noise",
    "FGSM",
    "PGD",
    "DEV",
    "SMIA",
    "DeepFool",
    "DAG",
    "APGD",
    "APGD-T",
    "SegPGD",
    "CosPGD",
    "Square",
    "worst-case",
)
#: the attacks of a default evaluation (every task)
DEFAULT_ATTACKS = ("noise", "FGSM", "PGD", "DEV", "SMIA")
#: attacks that only fit one task, and that task
TASK_ATTACKS = {"DeepFool": "classification", "DAG": "segmentation", "SegPGD": "segmentation", "CosPGD": "segmentation"}
#: the robustness-evaluation attacks and the options :func:`make_attack` passes on to them
ROBUSTNESS = {
    "APGD": ("restarts",),
    "APGD-T": ("restarts", "num_targets"),
    "SegPGD": (),
    "CosPGD": (),
    "Square": ("num_queries", "p_init"),
    "worst-case": ("attacks", "num_queries"),
}
#: attacks that need a number of classes (network output channels), and why: APGD-T's targeted DLR loss
#: (Croce & Hein 2020, Eq. 7) compares the true class with the target and the third-ranked class
MIN_CLASSES = {"APGD-T": (4, "its targeted DLR loss")}
#: SMIA's reading options that :func:`make_attack` passes on (docs/design.md, section 1)
SMIA_READINGS = ("stabilization", "stabilization_target", "smooth", "protocol")


def check_attacks(attacks: Sequence[str], task: str | None = None, num_classes: int | None = None) -> list[str]:
    """Validate attack names, unique and in order (an empty list evaluates clean data only).

    Args:
        attacks: names from :data:`ATTACKS`.
        task: ``"classification"``, ``"segmentation"`` (or ``"detection"``) when known: refuse an
            attack that does not fit it (DeepFool on segmentation, DAG on a classifier).
        num_classes: the network's output channels when known (``None`` or 0: not declared): refuse an attack of
            :data:`MIN_CLASSES` that needs more (``worst-case`` falls back instead, warned:
            :func:`~monai_smia.attacks.worstcase.member_fallback`).
    """
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attack(s) {', '.join(map(repr, unknown))}; choose from {', '.join(ATTACKS)}")
    if task is not None:
        wrong = [a for a in attacks if TASK_ATTACKS.get(a, task) != task and not (a == "DAG" and task == "detection")]
        if wrong:
            fits = ", ".join(f"{a} needs {TASK_ATTACKS[a]}" for a in wrong)
            raise ValueError(f"attacks: {fits}, but the task is {task}; drop {', '.join(wrong)}.")
    few = [a for a in attacks if num_classes and num_classes < MIN_CLASSES.get(a, (0, ""))[0]]  # 0: not declared
    if few:
        needs = ", ".join(f"{a} needs at least {MIN_CLASSES[a][0]} classes for {MIN_CLASSES[a][1]}" for a in few)
        raise ValueError(
            f"attacks: {needs}, but the network has {num_classes}; use APGD (cross-entropy) or worst-case instead."
        )
    return list(dict.fromkeys(attacks))


def make_attack(
    name: str,
    network: torch.nn.Module,
    eps: float,
    num_iter: int = 10,
    alpha: float = 1.0,
    sigma: float | Sequence[float] = 1.0,
    spatial_dims: int = 2,
    bounds: Sequence[float] | None = (0.0, 1.0),
    **reading_options: Any,
) -> Attack:
    """One of :data:`ATTACKS` at budget ``eps`` (network input units).

    ``noise`` (random sign noise), ``FGSM``, ``PGD`` (Madry et al., random start), ``DEV`` (SMIA with
    alpha = 0, no random start), ``SMIA``, ``DeepFool`` (classifiers; the paper's overshoot 0.02
    and 50 iterations) and ``DAG`` (segmentation; gamma = 0.5 on a 0-255 scale, i.e.
    ``0.5 / 255`` of the bounds' range, 200 iterations); for robustness evaluations (Croce & Hein
    2020) ``APGD`` (APGD-CE), ``APGD-T`` (targeted DLR), ``SegPGD``, ``CosPGD`` (segmentation; random
    start), ``Square`` (5000 queries) and ``worst-case`` (:class:`~monai_smia.attacks.worstcase.WorstCase`,
    its gradient members at ``num_iter``). DeepFool and DAG return the result
    projected onto ``eps``; their unconstrained result is in ``attack.result``.

    Args:
        reading_options: for ``SMIA``/``DEV``, the readings ``stabilization``,
            ``stabilization_target``, ``smooth``, ``protocol``; ``task`` (checked as in
            :func:`check_attacks`); for ``DeepFool``/``DAG``, their own arguments (``overshoot``,
            ``max_iter``, ``gamma``, ``target_fn``, ``until``).

    Raises:
        ValueError: an unknown name, an attack that does not fit ``task``, or an option the attack does not take.
    """
    options = dict(reading_options)
    task = options.pop("task", None)
    check_attacks([name], task)
    if name in ("DEV", "SMIA"):
        unknown = sorted(set(options) - set(SMIA_READINGS))
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not an option of {name}; choose from {', '.join(SMIA_READINGS)}.")
        stabilizing = sorted(set(options) - {"protocol"})
        if name == "DEV" and stabilizing:
            raise ValueError(
                f"{', '.join(stabilizing)}: DEV is SMIA without the stabilization term (alpha = 0), so a stabilization "
                "reading has no effect; drop it, or use SMIA."
            )
        a = 0.0 if name == "DEV" else alpha
        return SMIA(
            network,
            eps=eps,
            num_iter=num_iter,
            alpha=a,
            sigma=sigma,
            spatial_dims=spatial_dims,
            bounds=bounds,
            **options,
        )
    readings = sorted(set(options) & set(SMIA_READINGS))
    if readings:
        raise ValueError(f"{', '.join(readings)}: a reading of SMIA, not an option of {name}; drop it.")
    if name == "DeepFool":
        return DeepFool(network, eps=eps, bounds=bounds, **options)
    if name == "DAG":
        if "gamma" not in options and bounds is not None:
            options["gamma"] = 0.5 * (bounds[1] - bounds[0]) / 255
        return DAG(network, eps=eps, bounds=bounds, **options)
    if name in ROBUSTNESS:
        return _robustness_attack(name, network, eps, num_iter, bounds, options)
    if options:
        raise ValueError(f"{', '.join(sorted(options))}: {name} takes no reading options.")
    if name == "noise":
        return RandomSignNoise(network, eps=eps, bounds=bounds)
    if name == "FGSM":
        return FGSM(network, eps=eps, bounds=bounds)
    return PGD(network, eps=eps, num_iter=num_iter, random_start=True, bounds=bounds)


def _robustness_attack(
    name: str,
    network: torch.nn.Module,
    eps: float,
    num_iter: int,
    bounds: Sequence[float] | None,
    options: dict[str, Any],
) -> Attack:
    """APGD (CE), APGD-T (targeted DLR), SegPGD, CosPGD (random start, as PGD), Square, worst-case (WorstCase)."""
    unknown = sorted(set(options) - set(ROBUSTNESS[name]))
    if unknown:
        allowed = ", ".join(ROBUSTNESS[name]) or "none"
        raise ValueError(f"{', '.join(unknown)}: not an option of {name}; its options: {allowed}.")
    if name == "APGD":
        return APGD(network, eps=eps, num_iter=num_iter, loss="ce", bounds=bounds, **options)
    if name == "APGD-T":
        return APGD(network, eps=eps, num_iter=num_iter, loss="dlr", targeted=True, bounds=bounds, **options)
    if name in ("SegPGD", "CosPGD"):
        cls = SegPGD if name == "SegPGD" else CosPGD
        return cls(network, eps=eps, num_iter=num_iter, bounds=bounds, random_start=True)
    if name == "Square":
        return Square(network, eps=eps, bounds=bounds, **options)
    return WorstCase(network, eps=eps, num_iter=num_iter, bounds=bounds, **options)
