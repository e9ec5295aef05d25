"""Milliseconds per iteration of FGSM, PGD, SMIA and torchattacks' PGD, and SMIA's cost against its floor;
DeepFool (classifier) and DAG (segmentation) per iteration they actually ran.

SMIA's floor per call is T forward+backward passes, T-1 forward passes without gradient (the
prediction on the smoothed perturbation) and T-1 Gaussian smoothings; PGD's is T forward+backward
passes. The table divides measured times by these floors, each component measured in the same run.

DeepFool and DAG stop early, so their time is divided by the iterations they ran (the largest per-sample
count of the call); a DeepFool iteration costs one forward and K backward passes (K classes), a DAG
iteration one forward+backward. Each is timed on the task it fits (and compared with torchattacks'
DeepFool on the classifier when it is installed). DAG runs at most T iterations here.

On the CPU, glibc's malloc hands large freed blocks back to the kernel and page-faults them in again on the
next allocation; how often depends on which tensors happen to be alive, so the same work differed by up to 25%
from one process to the next (10 bare forward+backward passes of the UNet: 1.53 s and 1.96 s). The benchmark
therefore fixes the allocator first (``mallopt``: no trimming, a fixed 32 MiB mmap threshold; the same as
``MALLOC_TRIM_THRESHOLD_``/``MALLOC_MMAP_THRESHOLD_``), so the ratios compare compute; ``--malloc default``
measures with glibc's defaults.

Usage: ``python benchmarks/bench_attacks.py [--repeats 3] [--device cpu|cuda] [--amp] [--malloc steady|default]``
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import platform
import time
from typing import Callable

import torch
from monai.networks.nets import DenseNet121, UNet

from monai_smia import DAG, FGSM, PGD, SMIA, DeepFool
from monai_smia.attacks import frozen_network
from monai_smia.attacks.smia import PerturbationSmoother

T = 10


def steady_allocator() -> str:
    """Stop glibc's malloc from trimming and from moving its mmap threshold (see the module docstring)."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt"):
        return "default (no glibc mallopt here)"
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_trim_threshold, 2**31 - 1) == 1 and libc.mallopt(m_mmap_threshold, 32 * 2**20) == 1
    return "glibc, no trim, mmap threshold 32 MiB" if ok else "default (mallopt refused)"


def timed_round_robin(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Best-of-``repeats`` wall time in seconds of each function, measured in turns (one call of each per
    round, after one warm-up call each) so that a slow phase of a shared machine hits all of them alike."""
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def minimal_norm(
    net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, amp: bool
) -> tuple[DeepFool | DAG, dict[str, Callable[[], object]]]:
    """DeepFool on a classifier, DAG on a segmentation network, and torchattacks' DeepFool when installed.

    DAG is capped at T iterations (its paper's 200 would dominate the run; the time per iteration is what counts).
    """
    if y.ndim > 1:
        dag = DAG(net, eps=eps, gamma=0.5 / 255, max_iter=T, amp=amp)
        return dag, {"minimal": lambda: dag(x, y)}
    deepfool = DeepFool(net, eps=eps, amp=amp)
    fns: dict[str, Callable[[], object]] = {"minimal": lambda: deepfool(x, y)}
    try:
        import torchattacks

        if not amp:
            ta = torchattacks.DeepFool(net, steps=deepfool.max_iter, overshoot=deepfool.overshoot)
            fns["torchattacks_DeepFool"] = lambda: ta(x, y)
    except ImportError:
        pass
    return deepfool, fns


def bench(
    name: str, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int, amp: bool
) -> dict[str, float]:
    device = x.device
    eps = 4 / 255
    net.eval()
    res: dict[str, float] = {}

    def fwd_bwd() -> None:
        with frozen_network(net), torch.enable_grad():
            xr = x.clone().requires_grad_(True)
            with torch.autocast(device.type, enabled=amp):
                out = net(xr)
            torch.autograd.grad(torch.nn.functional.cross_entropy(out.float(), y, reduction="sum"), xr)

    def fwd() -> None:
        with torch.no_grad(), torch.autocast(device.type, enabled=amp):
            net(x)

    smoother = PerturbationSmoother(1.0, x.ndim - 2)
    d = torch.rand_like(x)

    def gauss() -> None:
        smoother(d)

    attacks = {
        "FGSM": FGSM(net, eps=eps, amp=amp),
        "PGD": PGD(net, eps=eps, num_iter=T, amp=amp),
        "SMIA": SMIA(net, eps=eps, num_iter=T, spatial_dims=x.ndim - 2, amp=amp),
        "PGD_untraced": PGD(net, eps=eps, num_iter=T, amp=amp, trace=False),
        "SMIA_untraced": SMIA(net, eps=eps, num_iter=T, spatial_dims=x.ndim - 2, amp=amp, trace=False),
    }
    fns: dict[str, Callable[[], object]] = {"fwd_bwd": fwd_bwd, "fwd": fwd, "gauss": gauss}
    fns.update({k: (lambda a=a: a(x, y)) for k, a in attacks.items()})
    minimal, minimal_fns = minimal_norm(net, x, y, eps, amp)
    fns.update(minimal_fns)
    try:
        import torchattacks

        if not amp:
            ta = torchattacks.PGD(net, eps=eps, alpha=2.5 * eps / T, steps=T, random_start=False)
            fns["torchattacks_PGD"] = lambda: ta(x, y)
    except ImportError:
        pass
    res.update(timed_round_robin(fns, repeats, device))
    res.setdefault("torchattacks_PGD", float("nan"))
    res.setdefault("torchattacks_DeepFool", float("nan"))
    res["minimal_name"] = type(minimal).__name__  # type: ignore[assignment]
    res["minimal_iters"] = float(minimal.iterations.max().clamp_min(1))
    res["deepfool_over_torchattacks"] = res["minimal"] / res["torchattacks_DeepFool"]
    floor_smia = T * res["fwd_bwd"] + (T - 1) * (res["fwd"] + res["gauss"])
    floor_pgd = T * res["fwd_bwd"]
    res["floor_ratio"] = floor_smia / floor_pgd
    res["smia_over_pgd"] = res["SMIA"] / res["PGD"]
    res["smia_over_pgd_vs_floor"] = res["smia_over_pgd"] / res["floor_ratio"]
    res["pgd_over_bare"] = res["PGD"] / floor_pgd
    res["untraced_vs_floor"] = res["SMIA_untraced"] / res["PGD_untraced"] / res["floor_ratio"]
    res["untraced_pgd_over_bare"] = res["PGD_untraced"] / floor_pgd
    res["trace_cost"] = res["PGD"] / res["PGD_untraced"]
    res["ours_over_torchattacks"] = res["PGD"] / res["torchattacks_PGD"]
    res["name"] = name  # type: ignore[assignment]
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="run the networks under autocast")
    parser.add_argument("--densenet-size", type=int, default=96, help="side of the DenseNet121 inputs (default 96)")
    parser.add_argument(
        "--malloc", choices=("steady", "default"), default="steady", help="CPU allocator setting (see above)"
    )
    parser.add_argument("--unet-size", type=int, default=256, help="side of the UNet inputs (default 256)")
    args = parser.parse_args()
    device = torch.device(args.device)
    allocator = steady_allocator() if args.malloc == "steady" else "glibc defaults"
    torch.manual_seed(0)
    unet = UNet(2, 1, 2, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2).to(device)
    dense = DenseNet121(spatial_dims=2, in_channels=3, out_channels=5).to(device)
    s, u = args.densenet_size, args.unet_size
    cases = [
        (
            f"UNet 2D, 8 x 1 x {u} x {u}",
            unet,
            torch.rand(8, 1, u, u, device=device),
            torch.randint(0, 2, (8, u, u), device=device),
        ),
        (
            f"DenseNet121 2D, 16 x 3 x {s} x {s}",
            dense,
            torch.rand(16, 3, s, s, device=device),
            torch.randint(0, 5, (16,), device=device),
        ),
    ]
    rows = [bench(name, net, x, y, args.repeats, args.amp) for name, net, x, y in cases]
    print_tables(rows, device, args.amp, args.repeats, allocator)


def print_tables(rows: list[dict[str, float]], device: torch.device, amp: bool, repeats: int, allocator: str) -> None:
    """The speed table, the trace's cost and the minimal-norm attacks' table, in Markdown."""
    dev = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"\ndevice: {dev}; torch {torch.__version__}; T = {T}; amp = {amp}; best of {repeats}; malloc: "
        f"{allocator}\n"
    )
    print(
        "| network | FGSM ms/it | PGD ms/it | SMIA ms/it | torchattacks PGD ms/it | floor SMIA/PGD | SMIA/PGD / floor "
        "| PGD / T bare fwd+bwd | ours / torchattacks |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {1e3 * r['FGSM']:.1f} | {1e3 * r['PGD'] / T:.1f} | {1e3 * r['SMIA'] / T:.1f} | "
            f"{1e3 * r['torchattacks_PGD'] / T:.1f} | {r['floor_ratio']:.3f} | {r['smia_over_pgd_vs_floor']:.3f} | "
            f"{r['pgd_over_bare']:.3f} | {r['ours_over_torchattacks']:.3f} |"
        )
    print("\naims: SMIA/PGD / floor <= 1.05; PGD / T bare fwd+bwd <= 1.05; ours / torchattacks <= 1.05")
    print("\n| network | trace=False: SMIA/PGD / floor | trace=False: PGD / T bare fwd+bwd | PGD traced / untraced |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['untraced_vs_floor']:.3f} | {r['untraced_pgd_over_bare']:.3f} | "
            f"{r['trace_cost']:.3f} |"
        )
    print(
        "\n| network | attack | ms per call | iterations | ms/it | ms/it / bare fwd+bwd | ours / torchattacks "
        "DeepFool (whole call) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        per_it = r["minimal"] / r["minimal_iters"]
        print(
            f"| {r['name']} | {r['minimal_name']} | {1e3 * r['minimal']:.1f} | {r['minimal_iters']:.0f} | "
            f"{1e3 * per_it:.1f} | "
            f"{per_it / r['fwd_bwd']:.3f} | {r['deepfool_over_torchattacks']:.3f} |"
        )


if __name__ == "__main__":
    main()
