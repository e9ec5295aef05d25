"""The runner of each ``monai-smia`` command, and of ``evaluate`` per task: what :mod:`monai_smia.cli`
dispatches to once it has parsed and checked the command line.

``evaluate`` picks its runner from the bundle's task (``metadata.json``): a detection bundle goes to
:func:`monai_smia.apps.detection.evaluate.run_detection_evaluation`, every other task to
:class:`monai_smia.apps.evaluate.evaluation.RobustnessEvaluation`; both take the same options.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

__all__ = ["RUNNERS", "EVALUATE_RUNNERS", "bundle_task", "run_command", "attack_line"]


def bundle_task(bundle: str) -> str:
    """The task a bundle's metadata declares: ``"classification"``, ``"segmentation"`` or ``"detection"``."""
    from monai_smia.bundle.bundle import open_bundle

    return open_bundle(bundle).task


def _demo(args: argparse.Namespace) -> None:
    from monai_smia.apps.demo import DEMO_BUNDLES, run_demo

    run_demo(args.data_dir, args.output, args.cache, tuple(args.bundles or DEMO_BUNDLES), args.max_cases, args.device)


def _evaluate_detection(args: argparse.Namespace) -> None:
    from monai_smia.apps.detection.evaluate import run_detection_evaluation
    from monai_smia.bundle.victim import resolve_bundle

    kwargs = {"attacks": args.attacks, "data_split": args.split, "eps": args.eps[0] if args.eps else None}
    if args.eps is not None and (len(args.eps) > 1 or args.eps_unit):
        raise ValueError("--eps: a detection bundle takes one budget, in its [0, 1] input units (no --eps-unit).")
    if args.grid == "source":
        raise ValueError("--grid source: a detection bundle is evaluated on the network grid only; leave --grid out.")
    run_detection_evaluation(
        resolve_bundle(args.bundle),
        args.dataset_dir,
        args.output,
        num_iter=args.num_iter,
        max_cases=args.max_cases,
        device=args.device,
        **{k: v for k, v in kwargs.items() if v is not None},
    )


def _evaluate_bundle(args: argparse.Namespace) -> None:
    from monai_smia.apps.evaluate.evaluation import check_attacks, evaluation_from_bundle

    if args.attacks is not None:
        check_attacks(args.attacks)
    evaluation_from_bundle(
        args.bundle,
        dataset_dir=args.dataset_dir,
        output_dir=args.output,
        attacks=args.attacks,
        eps=args.eps,
        eps_unit=args.eps_unit,
        num_iter=args.num_iter,
        data_split=args.split,
        max_cases=args.max_cases,
        device=args.device,
        grid=args.grid,
    ).run()


#: ``monai-smia evaluate``'s runner per task (:func:`bundle_task`)
EVALUATE_RUNNERS: dict[str, Callable[[argparse.Namespace], None]] = {
    "classification": _evaluate_bundle,
    "segmentation": _evaluate_bundle,
    "detection": _evaluate_detection,
}


def _evaluate(args: argparse.Namespace) -> None:
    EVALUATE_RUNNERS[bundle_task(args.bundle)](args)
    print(f"wrote summary.md, summary.json, per_case.csv, provenance.json and figures to {args.output}")


def _attack(args: argparse.Namespace) -> None:
    from monai_smia.apps.attack.run import run_attack

    extra: dict[str, Any] = {"num_iter": args.num_iter} if args.num_iter is not None else {}
    extra["save_dtype"] = args.dtype
    for key in ("grid", "eps_unit", "max_cases"):
        if getattr(args, key) is not None:
            extra[key] = getattr(args, key)
    summary = run_attack(
        args.bundle, args.input, args.output, attack=args.attack, eps=args.eps, device=args.device, **extra
    )
    print(attack_line(summary, args.output))


def _reproduce(args: argparse.Namespace) -> None:
    from monai_smia.apps.reproduce import reproduce_from_config
    from monai_smia.reports.claims import paper_claims

    report = reproduce_from_config(
        args.output,
        args.data_dir,
        args.cache,
        quick=args.quick,
        device=args.device,
        bundles=args.bundles,
        protocols=args.protocols,
    )
    claims = paper_claims(report["claims"])  # the paper's claims; the worst-case rows are measurements beside them
    print(f"{report['holds']} of {len(claims)} claims hold; see {args.output}/reproduce.md")


#: the runner of each command
RUNNERS: dict[str, Callable[[argparse.Namespace], None]] = {
    "demo": _demo,
    "evaluate": _evaluate,
    "attack": _attack,
    "reproduce": _reproduce,
}


def run_command(args: argparse.Namespace) -> None:
    """Run the parsed command line ``args`` (``args.command`` names the runner)."""
    RUNNERS[args.command](args)


def attack_line(summary: dict, output: str) -> str:
    """The last line of ``monai-smia attack``: what it wrote and what the attack did."""
    mean, survival = summary.get("mean") or {}, summary.get("survival_ratio") or {}
    changed, success = mean.get("prediction_changed_fraction"), mean.get("success")
    parts = [f"wrote {summary.get('num_cases', 0)} adversarial case(s) to {output}"]
    grid = f"on the {summary.get('grid')} grid"
    parts.append(f"{summary.get('attack')} eps={summary.get('eps'):g}{summary.get('eps_unit') or ''} {grid}")
    if changed is not None:
        parts.append(f"prediction changed on {changed:.1%} of the output")
    if success is not None:
        parts.append(f"success {success:.2f}")
    kept = [f"{v} keeps {r:.2f} of the effect" for v, r in survival.items() if r is not None]
    if kept:
        parts.append("read back: " + ", ".join(kept))
    return "; ".join(parts)
