"""WorstCase measured on the committed victims (issue 19), one command per table of docs/results.md.

``mnist``: robust accuracy and wall time of WorstCase against torchattacks' AutoAttack (version="standard") on the
committed mnist_cls victim and the first MNIST test digits. Both run on the same digits, at the same budgets, on the
same device and thread count, one after the other. torchattacks' AutoAttack "standard": APGD-CE, APGD-T (9 targets),
FAB-T (9 targets), each with torchattacks' default of 10 steps (the official AutoAttack runs 100), and Square (5000
queries), each on the digits still unbroken. WorstCase's default members for a classifier: APGD-CE, APGD-T (100
iterations each) and Square (5000 queries), no FAB-T.

``retina``: WorstCase (APGD-CE, APGD-T, Square) against the pair APGD-CE + Square on the committed retina_dr_cls
victim at 1/255, paired per image. ``lung``: each member (APGD-CE, SegPGD, CosPGD, PGD, SMIA, Square) and the worst
case on lung_ct_seg's axial slices at 20 HU, paired per slice against the worst case. ``spleen``: the same on the
zoo-shaped spleen fixture bundle (tests/zoo_fixtures.py: the zoo's configs, a tiny seeded untrained 3D UNet, real
TotalSegmentator CTs) through its sliding-window inferer at 20 HU.

Usage::

    python benchmarks/bench_worst_case.py mnist --data-dir ../shared/data [--num 300] [--eps 0.05 0.1]
    python benchmarks/bench_worst_case.py retina --data-dir ../shared/data [--num 100]
    python benchmarks/bench_worst_case.py lung --data-dir ../shared/data [--num 2 --slices 4]
    python benchmarks/bench_worst_case.py spleen --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from monai_smia import PGD, WorstCase
from monai_smia.bundle.victim import load_victim
from monai_smia.metrics.paired import compare_paired

SEGMENTATION_MEMBERS = ["APGD-CE", "SegPGD", "CosPGD", "PGD", "SMIA", "Square"]


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


def mnist(args: argparse.Namespace) -> None:
    """Robust accuracy of PGD-10, WorstCase and torchattacks' AutoAttack on the first MNIST test digits."""
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


def bundle_cases(bundle: str, args: argparse.Namespace, dataset_dir: Path | None = None) -> tuple:
    """The victim, its test cases through its own preprocessing (as ``monai-smia reproduce`` loads them), and the
    budget ``args.eps`` in ``args.unit`` in network units with the bounds read off the preprocessing."""
    from monai_smia.apps.reproduce.data import load_cases, prepare_bundle_data
    from monai_smia.io.units import resolve_bounds, resolve_eps_scale

    source = "the bundle's own data keys"
    if dataset_dir is None:
        dataset_dir, source = prepare_bundle_data(bundle, args.data_dir, args.cache)
    victim = load_victim(bundle, dataset_dir, device="cpu")
    cases = load_cases(victim, dataset_dir, args.num, source, args.slices)
    scale, _ = resolve_eps_scale(args.unit, victim.preprocessing, victim.config, victim.name, metadata=victim.metadata)
    bounds, _ = resolve_bounds("auto", victim.preprocessing)
    eps = args.eps[0] * scale
    print(f"{victim.name}: {cases.source}; eps {args.eps[0]:g} {args.unit or 'input units'} = {eps:.5g} network units")
    return victim, cases, eps, bounds


def segmentation_score(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Per case, Dice, or the pixel accuracy where the label has no foreground (WorstCase's segmentation score)."""
    from monai_smia.metrics import segmentation_case_metrics

    m = segmentation_case_metrics(logits, labels)
    return np.where(np.isnan(m["dice"]), m["pixel_accuracy"], m["dice"])


def run_worst_case(victim, cases, eps: float, bounds, members: list[str] | None, args: argparse.Namespace) -> dict:
    """WorstCase on every case (cases of one shape batched, up to ``args.batch``): per case the final score (top-1
    correct, or the member scores' minimum: Dice), each member's per-case score, seconds, and the winners."""
    from monai_smia.apps.reproduce.run import attack_network

    out = {"clean": {}, "final": {}, "members": {}, "seconds": Counter(), "winners": Counter(), "wall": 0.0}
    order = list(range(len(cases.ids)))
    while order:
        shape = cases.images[order[0]].shape
        chunk = [i for i in order if cases.images[i].shape == shape][: args.batch]
        order = [i for i in order if i not in chunk]
        x = torch.stack([cases.images[i] for i in chunk])
        y = torch.stack([cases.labels[i] for i in chunk])
        net = attack_network(victim, x)
        attack = WorstCase(net, eps, attacks=members, bounds=bounds, num_iter=args.num_iter,
                           num_queries=args.num_queries)
        start = time.perf_counter()
        adv = attack(x, y, generator=torch.Generator().manual_seed(0))
        out["wall"] += time.perf_counter() - start
        out["seconds"].update(attack.seconds)
        out["winners"].update("none" if w is None else w for w in attack.winners)
        with torch.no_grad():
            correct = (net(adv).argmax(1) == y).double().numpy() if y.ndim == 1 else None
            clean = (net(x).argmax(1) == y).double().numpy() if y.ndim == 1 else segmentation_score(net(x), y)
        scores = np.stack(list(attack.scores.values()))
        for j, i in enumerate(chunk):
            cid = cases.ids[i]
            out["clean"][cid] = float(clean[j])
            out["final"][cid] = float(correct[j]) if correct is not None else float(np.nanmin(scores[:, j]))
            for name, s in attack.scores.items():
                out["members"].setdefault(name, {})[cid] = float(s[j])
    return out


def retina(args: argparse.Namespace) -> None:
    """WorstCase (APGD-CE, APGD-T, Square) against APGD-CE + Square on retina_dr_cls, paired per image."""
    victim, cases, eps, bounds = bundle_cases("retina_dr_cls", args)
    with torch.no_grad():
        clean = np.mean([float(victim.network(x[None]).argmax(1) == y) for x, y in zip(cases.images, cases.labels)])
    runs = {"WorstCase (APGD-CE, APGD-T, Square)": None, "APGD-CE + Square": ["APGD-CE", "Square"]}
    results = {name: run_worst_case(victim, cases, eps, bounds, members, args) for name, members in runs.items()}
    (full, r_full), (pair, r_pair) = results.items()
    cmp = compare_paired(r_full["final"], r_pair["final"], direction="less", names=(full, pair), metric="top1")
    print(f"clean top-1 {clean:.3f}; T = {args.num_iter}, {args.num_queries} Square queries")
    print("| attack | robust top-1 | wall time | member seconds | cases won |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        secs = ", ".join(f"{k} {v:.0f} s" for k, v in r["seconds"].items())
        wins = ", ".join(f"{k} {v}" for k, v in r["winners"].most_common())
        print(f"| {name} | {np.mean(list(r['final'].values())):.3f} | {r['wall']:.0f} s | {secs} | {wins} |")
    print(f"\npaired, {full} - {pair}: {cmp.interval_text(3)} (95% CI), W/T/L {cmp.wins}/{cmp.ties}/{cmp.losses}, "
          f"{cmp.num_cases} images")


def segmentation(bundle: str, args: argparse.Namespace, dataset_dir: Path | None = None) -> None:
    """Each member and the worst case on a segmentation bundle: Dice per case, paired against the worst case."""
    victim, cases, eps, bounds = bundle_cases(bundle, args, dataset_dir)
    r = run_worst_case(victim, cases, eps, bounds, SEGMENTATION_MEMBERS, args)
    clean = np.mean(list(r["clean"].values()))
    print(f"clean Dice {clean:.4f}; T = {args.num_iter}, {args.num_queries} Square queries; Dice (pixel accuracy "
          "where no foreground)")
    print("| attack | mean Dice | member - worst case [95% paired CI] | cases won | seconds |")
    print("|---|---|---|---|---|")
    for name, values in r["members"].items():
        cmp = compare_paired(values, r["final"], direction="greater", names=(name, "worst case"), metric="dice")
        print(f"| {name} | {cmp.mean_a:.4f} | {cmp.interval_text(4)} | {r['winners'].get(name, 0)} | "
              f"{r['seconds'][name]:.0f} s |")
    print(f"| worst case | {np.mean(list(r['final'].values())):.4f} | | {len(r['final'])} | {r['wall']:.0f} s |")


def spleen(args: argparse.Namespace) -> None:
    """The zoo-shaped spleen fixture bundle (tests/zoo_fixtures.py), built into a temporary folder."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from zoo_fixtures import decathlon_spleen, zoo_bundle

    with tempfile.TemporaryDirectory() as tmp:
        data = decathlon_spleen(args.data_dir, Path(tmp) / "Task09_Spleen")
        bundle = zoo_bundle(Path(tmp) / "spleen_bundle")
        segmentation(str(bundle), args, dataset_dir=data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["mnist", "retina", "lung", "spleen"])
    parser.add_argument("--data-dir", type=Path, required=True, help="the data root (laid out like shared/data)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bench_worst_case_cache")
    parser.add_argument("--num", type=int, default=None, help="cases (mnist: digits; lung: volumes)")
    parser.add_argument("--slices", type=int, default=4, help="lung: axial slices per volume (most lung)")
    parser.add_argument("--eps", type=float, nargs="+", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--num-iter", type=int, default=None, help="iterations of the gradient members")
    parser.add_argument("--num-queries", type=int, default=5000, help="Square's queries")
    parser.add_argument("--batch", type=int, default=64, help="cases of one shape per WorstCase call")
    parser.add_argument("--skip-autoattack", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    defaults = {"mnist": (300, [0.05, 0.1], "", 100), "retina": (100, [1.0], "/255", 100),
                "lung": (2, [20.0], "HU", 10), "spleen": (None, [20.0], "HU", 10)}[args.what]
    args.num = defaults[0] if args.num is None else args.num
    args.eps = defaults[1] if args.eps is None else args.eps
    args.unit, args.num_iter = defaults[2], defaults[3] if args.num_iter is None else args.num_iter
    if args.what == "lung":
        segmentation("lung_ct_seg", args)
    else:
        {"mnist": mnist, "retina": retina, "spleen": spleen}[args.what](args)


if __name__ == "__main__":
    main()
