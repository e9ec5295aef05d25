"""The ``monai-smia`` console command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _default_data_dir() -> str | None:
    return os.environ.get("MONAI_SMIA_DATA")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monai-smia",
        description="Stress-test MONAI networks with SMIA (Stabilized Medical Image Attack, ICLR 2021) and its baselines.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="train a small RetinaMNIST classifier and compare noise, FGSM, PGD, DEV and SMIA on real fundus images",
        description="Train a small MONAI classifier on RetinaMNIST for a few seconds, attack the test split with "
        "random sign noise, FGSM, PGD, DEV and SMIA at one budget, and print top-1 accuracy for each.",
    )
    demo.add_argument(
        "--data-dir",
        default=_default_data_dir(),
        help="folder laid out like ../shared/data holding fundus/retinamnist.npz (default: $MONAI_SMIA_DATA)",
    )
    demo.add_argument("--eps", type=float, default=1 / 255, help="L-infinity budget in [0, 1] intensity units (default 1/255)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        if not args.data_dir:
            print("monai-smia demo: no data folder; pass --data-dir DIR or set MONAI_SMIA_DATA=DIR", file=sys.stderr)
            return 2
        if args.eps <= 0:
            print(f"monai-smia demo: --eps must be > 0, got {args.eps}", file=sys.stderr)
            return 2
        from monai_smia.quick_demo import run

        try:
            run(args.data_dir, eps=args.eps, seed=args.seed)
        except FileNotFoundError as e:
            print(f"monai-smia demo: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
