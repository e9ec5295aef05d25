"""Robust accuracy and wall time of WorstCase against torchattacks' AutoAttack (version="standard") on the
committed mnist_cls victim and the first MNIST test digits (issue 19).

Both run on the same digits, at the same budgets, on the same device and thread count, one after the
other. torchattacks' AutoAttack "standard": APGD-CE, APGD-T (9 targets), FAB-T (9 targets), each with
torchattacks' default of 10 steps (the official AutoAttack runs 100), and Square (5000 queries), each on
the digits still unbroken. WorstCase's default members
for a classifier: APGD-CE, APGD-T (100 iterations each) and Square (5000 queries), no FAB-T.

Usage: ``python benchmarks/bench_worst_case.py --data-dir ../shared/data [--num 300] [--eps 0.05 0.1] [--threads 1]``
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
import torch

from monai_smia import PGD, WorstCase
from monai_smia.bundle.victim import load_victim


def load_digits(data_dir: Path, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` MNIST test digits as mnist_cls reads them (PILReader: width first, so transposed)."""
    folder = data_dir / "digits" / "mnist"
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)[:n]
    x = torch.tensor(raw / 255.0, dtype=torch.float32).transpose(-1, -2).unsqueeze(1).contiguous()
    return x, torch.tensor(labels, dtype=torch.long)


def accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).double().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="the data root holding digits/mnist")
    parser.add_argument("--num", type=int, default=300)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.1])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--num-iter", type=int, default=100, help="iterations of WorstCase's gradient members")
    parser.add_argument("--skip-autoattack", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net = load_victim("mnist_cls", device="cpu").network.eval()
    x, y = load_digits(args.data_dir, args.num)
    top1 = accuracy(net, x, y)
    print(f"mnist_cls, {args.num} digits, clean top-1 {top1:.3f}, {args.threads} thread(s), T={args.num_iter}")
    print("| eps | PGD-10 | WorstCase | time | AutoAttack (standard) | time | winners |")
    print("|---|---|---|---|---|---|---|")
    for eps in args.eps:
        torch.manual_seed(0)
        pgd = accuracy(net, PGD(net, eps=eps, num_iter=10, random_start=True)(x, y), y)
        worst = WorstCase(net, eps=eps, num_iter=args.num_iter)
        t = time.perf_counter()
        adv = worst(x, y)
        t_worst = time.perf_counter() - t
        acc_worst = accuracy(net, adv, y)
        wins = {w: worst.winners.count(w) for w in dict.fromkeys(worst.winners)}
        print(f"eps {eps:g}: WorstCase member seconds {({k: round(v) for k, v in worst.seconds.items()})}", flush=True)
        aa, t_aa = float("nan"), float("nan")
        if not args.skip_autoattack:
            import torchattacks

            auto = torchattacks.AutoAttack(net, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
            t = time.perf_counter()
            adv_aa = auto(x, y)
            t_aa = time.perf_counter() - t
            aa = accuracy(net, adv_aa, y)
        print(
            f"| {eps:g} | {pgd:.3f} | {acc_worst:.3f} | {t_worst:.0f} s | {aa:.3f} | {t_aa:.0f} s | {wins} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
