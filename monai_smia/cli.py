"""The ``monai-smia`` console command: a thin front to the MONAI bundles.

monai-smia demo
monai-smia evaluate --bundle NAME_OR_PATH --dataset-dir DIR --output DIR [--attacks ...] [--eps ...]
monai-smia attack --bundle NAME_OR_PATH --input PATH --output DIR [--attack SMIA] [--eps ...]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_smia.errors import error_line

__all__ = ["build_parser", "main"]

ATTACK_HELP = (
    "noise (random sign noise), FGSM, PGD (Madry, random start), DEV (SMIA with alpha=0), SMIA, DeepFool "
    "(classifiers), DAG (segmentation), APGD and APGD-T (Croce & Hein 2020), SegPGD and CosPGD (segmentation), "
    "Square (gradient-free), worst-case (AutoAttack-style ensemble of the strongest, per case)"
)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"budgets must be > 0, got {text} (the sign of eps is not a direction)")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from monai_smia.bundle.victim import builtin_bundles

    bundles = ", ".join(builtin_bundles())
    parser = argparse.ArgumentParser(
        prog="monai-smia",
        description="Stress-test MONAI networks with SMIA (Stabilized Medical Image Attack, ICLR 2021) and the "
        "baselines it is compared with. Each command runs a MONAI bundle: one of this package's ("
        + bundles
        + ") or any bundle folder.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,evaluate,attack,reproduce}")
    _add_demo(sub)
    _add_evaluate(sub, bundles)
    _add_attack(sub, bundles)
    _add_reproduce(sub)
    return parser


def _add_eps_unit(parser: argparse.ArgumentParser) -> None:
    from monai_smia.io.units import EPS_UNITS

    parser.add_argument(
        "--eps-unit",
        default=None,
        choices=EPS_UNITS,
        help="unit of --eps: HU (a CT bundle: through its ScaleIntensityRange window), /255, or '' / input for "
        "network-input units (default: the bundle's own unit)",
    )


def _add_data_options(parser: argparse.ArgumentParser, output: str) -> None:
    """The options of the commands that prepare the real data themselves (demo, reproduce)."""
    parser.add_argument(
        "--data-dir", default=os.environ.get("MONAI_SMIA_DATA"), help="raw data folder (default: $MONAI_SMIA_DATA)"
    )
    parser.add_argument("--output", default=output, help=f"output folder (default: ./{output})")
    parser.add_argument(
        "--cache", default=None, help="where prepared data is kept (default: $MONAI_SMIA_CACHE or ~/.cache/monai_smia)"
    )


def _add_reproduce(sub: Any) -> None:
    rep = sub.add_parser(
        "reproduce",
        help="settle the SMIA paper's claims (Tables 1-6) with paired statistics on the lung CT, RetinaMNIST and "
        "MNIST bundles",
        description="Attack the same test cases with FGSM, PGD, DEV, every SMIA reading, DeepFool / DAG and the "
        "sweeps of the paper's Tables 2-4, under a projected budget and the paper's per-step eps; write "
        "reproduce.md, reproduce.json and figures (each claim: holds / does not hold by a paired bootstrap "
        "interval). Resumes an interrupted run.",
    )
    _add_data_options(rep, "monai_smia_reproduce")
    rep.add_argument(
        "--quick",
        action="store_true",
        help="fewer cases, sweep points and Square queries (see the README for run times)",
    )
    rep.add_argument(
        "--bundles",
        nargs="+",
        default=None,
        help="bundles (default: lung_ct_seg retina_dr_cls mnist_cls lung_tumour_det)",
    )
    rep.add_argument("--protocols", nargs="+", default=None, help="projected and/or paper (default: both)")
    rep.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")


def _add_demo(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="evaluate the lung CT and fundus bundles on real data against noise, FGSM, PGD, DEV and SMIA",
        description="Evaluate the 2D lung CT segmentation bundle (eps = 20 HU) and the fundus DR grading bundle "
        "(eps = 1/255) on clean data and under noise, FGSM, PGD, DEV and SMIA; print the tables and name the figures. "
        "Data: --data-dir or $MONAI_SMIA_DATA (a folder laid out like ../shared/data), else the public sample "
        "(downloaded once), else a synthetic CT phantom, announced as such.",
    )
    _add_data_options(demo, "monai_smia_demo")
    demo.add_argument("--bundles", nargs="+", default=None, help="bundles to run (default: lung_ct_seg retina_dr_cls)")
    demo.add_argument("--max-cases", type=_positive_int, default=None, help="evaluate only the first N test cases")
    demo.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")


def _add_evaluate(sub: Any, bundles: str) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="clean vs attacked MONAI metrics of a bundle's network on a dataset",
        description="Evaluate a bundle's network on the test list of DATASET_DIR/datalist.json, clean and under each "
        "attack at the same budget, and write summary.json, summary.md, per_case.csv, provenance.json and figures "
        "to OUTPUT. An interrupted run resumes where it stopped.",
    )
    ev.add_argument("--bundle", required=True, help=f"a bundle name ({bundles}) or the path of a MONAI bundle folder")
    ev.add_argument(
        "--dataset-dir",
        required=True,
        help="the data: a data_prep folder (datalist.json), a Decathlon task folder (dataset.json), or the "
        "dataset_dir the bundle's own data keys read",
    )
    ev.add_argument("--output", required=True, help="output folder")
    from monai_smia.attacks.registry import ATTACKS, DEFAULT_ATTACKS

    ev.add_argument(
        "--attacks",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"attacks to run (default: the bundle's, else {' '.join(DEFAULT_ATTACKS)}); "
        f"accepted: {', '.join(ATTACKS)}. {ATTACK_HELP}",
    )
    ev.add_argument(
        "--eps",
        nargs="+",
        type=_positive_float,
        default=None,
        help="budget(s) in the bundle's unit (several: an eps sweep); required for a bundle that declares none",
    )
    _add_eps_unit(ev)
    ev.add_argument("--num-iter", type=_positive_int, default=None, help="iterations of PGD, DEV and SMIA (default 10)")
    ev.add_argument(
        "--split", default=None, choices=("training", "validation", "test"), help="datalist split (default test)"
    )
    ev.add_argument("--max-cases", type=_positive_int, default=None, help="evaluate only the first N cases")
    ev.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    ev.add_argument(
        "--grid",
        default=None,
        choices=("source", "network"),
        help="where the attacks perturb: network (default: the network input) or source (the source voxels, e.g. HU, "
        "through the bundle's preprocessing, as monai-smia attack does; L-inf/L2 then measured on the source grid)",
    )


def _add_attack(sub: Any, bundles: str) -> None:
    from monai_smia.apps.evaluate.evaluation import ATTACKS

    at = sub.add_parser(
        "attack",
        help="write adversarial images and perturbation maps for a bundle's network",
        description="Attack every image of INPUT (a data_prep folder, a folder of NIfTI/PNG files and DICOM series, "
        "one file, or one DICOM series folder) and write adversarial images and perturbation maps on the source grid "
        "to OUTPUT. Finished cases are skipped on a rerun; inputs are never written to.",
    )
    at.add_argument("--bundle", required=True, help=f"a bundle name ({bundles}) or the path of a MONAI bundle folder")
    at.add_argument(
        "--input", required=True, help="image file, DICOM series folder, folder of images, or data_prep folder"
    )
    at.add_argument("--output", required=True, help="output folder")
    at.add_argument("--attack", default="SMIA", choices=ATTACKS, help="attack (default SMIA)")
    at.add_argument(
        "--eps",
        type=_positive_float,
        default=None,
        help="budget in the bundle's unit (default: the bundle's; required for a bundle that declares none)",
    )
    _add_eps_unit(at)
    at.add_argument("--num-iter", type=_positive_int, default=None, help="iterations (default 10)")
    at.add_argument("--max-cases", type=_positive_int, default=None, help="attack only the first N cases")
    at.add_argument("--device", default=None, help="cpu, cuda or cuda:N")
    at.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "source"),
        help="NIfTI output type: float32 (default) or source, the source's integer type (e.g. int16 HU)",
    )
    at.add_argument(
        "--grid",
        default=None,
        choices=("source", "network"),
        help="where the perturbation lives: source (default: the source voxels, through the bundle's preprocessing; "
        "the written file carries exactly what was attacked) or network (the network input, mapped back by resampling)",
    )


def _run(args: argparse.Namespace) -> None:
    from monai_smia.apps.runners import run_command

    run_command(args)


def _check_device(device: str | None) -> None:
    """``--device`` names a device this machine has (before anything is loaded or written)."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a device: use cpu, cuda or cuda:N.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: this machine has no CUDA device; use --device cpu.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here.")


def _check_output(args: argparse.Namespace) -> None:
    """The output folder can be written and lies outside every input folder (checked before any case is
    computed; nothing is left behind)."""
    output = getattr(args, "output", None)
    if output is None:
        return
    import tempfile

    from monai_smia.io.paths import check_output_outside

    for option in ("dataset_dir", "input", "data_dir"):
        if getattr(args, option, None) is not None:
            check_output_outside(output, getattr(args, option), "--output", "--" + option.replace("_", "-"))
    path = Path(output).absolute()
    parent = next((p for p in [path, *path.parents] if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise ValueError(f"--output {output!r}: {parent} is not a folder.")
    try:
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as e:
        raise ValueError(
            f"--output {output!r}: cannot write in {str(parent)!r} ({e.strerror}); choose a writable folder."
        ) from None


def _check_folders(args: argparse.Namespace) -> None:
    """The input folders a command names exist, and its cache is a folder (checked before anything is written)."""
    from monai_smia.io.paths import check_folder

    hint = "point it at a folder laid out like the data folder (ct/, fundus/, digits/, ...)"
    if getattr(args, "data_dir", None) is not None:
        check_folder(args.data_dir, "--data-dir", hint)
    if getattr(args, "dataset_dir", None) is not None:
        check_folder(args.dataset_dir, "--dataset-dir", "pass the folder that holds the cases")
    if getattr(args, "cache", None) is not None:
        check_folder(args.cache, "--cache", "pass a folder (made if missing) for prepared data", may_be_missing=True)


def _warnings_and_above(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def _no_detection_notices(record: logging.LogRecord) -> bool:
    """Drop the notices MONAI's detection utilities log on the root logger each time a detector is built."""
    return record.levelno >= logging.WARNING or "monai/apps/detection/" not in Path(record.pathname).as_posix()


def _quiet_libraries() -> None:
    """Keep the CLI's output to its progress bars, tables and errors: the evaluator's per-condition
    key-metric lines and MONAI's notices about optional decoders and changed defaults are not the
    user's business (``--debug`` shows them)."""
    import warnings

    logging.getLogger("ignite").setLevel(logging.WARNING)
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    # MONAI's StatsHandler resets its logger's level each time it is built: a filter stays
    # one filter however often main runs
    logging.getLogger("monai.handlers.StatsHandler").addFilter(_warnings_and_above)
    logging.getLogger().addFilter(_no_detection_notices)
    warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
    warnings.filterwarnings("ignore", message=".*Current default value of argument `labels=")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; every error is one line on stderr with exit code 2 (the traceback only with --debug);
    Ctrl-C is one line and exit code 130, keeping every finished case."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.debug:
        _quiet_libraries()
    try:
        _check_device(getattr(args, "device", None))
        _check_folders(args)
        _check_output(args)
        _run(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(
            f"monai-smia {args.command}: interrupted; rerun the same command to resume (finished cases are kept).",
            file=sys.stderr,
        )
        return 130
    except Exception as err:
        if args.debug:
            raise
        print(f"monai-smia {args.command}: error: {error_line(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
