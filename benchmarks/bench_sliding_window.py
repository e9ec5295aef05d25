"""Memory and time of whole-volume attacks through sliding-window inference: window-wise vs the full graph.

The network is the model zoo's spleen_ct_segmentation UNet architecture (3D, channels 16-256, 2 residual
units, batch norm; seeded weights: memory and time do not depend on the weights) behind the zoo's
``SlidingWindowInferer`` (roi 96^3, sw_batch_size 4, overlap 0.5). The volume is the TotalSegmentator
example CT from the data folder, windowed to [0, 1] and resampled to each size (a uniform random volume
when the data folder is absent). Each configuration runs in its own process, so peak RSS (peak CUDA
memory on a GPU) is its own:

- ``inference``: one no-grad sliding-window pass (what the bundle's inference costs);
- ``floor``: one no-grad pass plus one window-wise forward+backward pass (what one attack iteration
  cannot go below), with SMIA one more no-grad pass (its stabilization target);
- ``windowwise``/``full``: the attack through ``AttackInferer``'s network, window-wise (default) or
  differentiating the whole ``sliding_window_inference`` call (only where it fits).

Seconds per iteration = attack seconds / iterations. Aims: peak <= 2x the inference peak at every size;
seconds per iteration <= 1.15x the floor.

    python benchmarks/bench_sliding_window.py --data-dir ../shared/data
    python benchmarks/bench_sliding_window.py --sizes 512x512x256 --modes inference windowwise --attack FGSM
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ZOO = {"roi_size": (96, 96, 96), "sw_batch_size": 4, "overlap": 0.5}


def _peak_mib(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _volume(size: tuple[int, int, int], data_dir: str | None, device: str):
    import torch
    import torch.nn.functional as F

    ct = Path(data_dir or "") / "ct" / "totalsegmentator" / "example_ct.nii.gz"
    if data_dir and ct.is_file():
        import nibabel as nib

        hu = torch.as_tensor(nib.load(str(ct)).get_fdata(), dtype=torch.float32)[None, None]
        x = ((hu.clamp(-57, 164) + 57) / 221).to(device)  # the zoo spleen bundle's window
        return F.interpolate(x, size=size, mode="trilinear", align_corners=False).clamp(0, 1)
    return torch.rand(1, 1, *size, generator=torch.Generator().manual_seed(0)).to(device)


def _setup(size: tuple[int, int, int], data_dir: str | None, device: str):
    import torch
    from monai.inferers import SlidingWindowInferer
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(3, 1, 2, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2, norm="batch").to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, SlidingWindowInferer(**ZOO), _volume(size, data_dir, device)


def _attack(name: str, network, num_iter: int):
    from monai_smia import FGSM, PGD, SMIA

    eps = 20.0 / 221  # 20 HU in the zoo spleen window
    if name == "FGSM":
        return FGSM(network, eps=eps, bounds=(0.0, 1.0))
    cls = SMIA if name == "SMIA" else PGD
    kwargs = {"spatial_dims": 3} if name == "SMIA" else {}
    return cls(network, eps=eps, num_iter=num_iter, bounds=(0.0, 1.0), **kwargs)


def run_one(
    mode: str,
    size: tuple[int, int, int],
    attack: str,
    num_iter: int,
    device: str,
    data_dir: str | None,
    grad_batch: int | None = None,
    repeats: int = 1,
) -> dict:
    import torch

    from monai_smia.inferers import InfererNetwork
    from monai_smia.sliding_window import windowwise_sliding_window

    net, inferer, x = _setup(size, data_dir, device)
    labels = None
    if mode in ("windowwise", "full"):
        with torch.no_grad():
            labels = inferer(x, net).argmax(1)  # the clean prediction, as a label-free attack uses
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def work() -> None:
        if mode == "inference":
            with torch.no_grad():
                inferer(x, net)
        elif mode == "floor":
            xg = x.clone().requires_grad_(True)
            out = windowwise_sliding_window(xg, inferer, net, grad_batch)
            torch.autograd.grad(out, xg, torch.ones_like(out))
            if attack == "SMIA":
                with torch.no_grad():
                    inferer(x, net)
        else:
            _attack(attack, InfererNetwork(inferer, net, mode == "windowwise", grad_batch), num_iter)(x, labels)

    times = []
    for _ in range(repeats):  # the fastest of the repeats: other processes only ever add time
        t0 = time.perf_counter()
        work()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    iters = num_iter if mode in ("windowwise", "full") and attack != "FGSM" else 1
    seconds = min(times)
    return {
        "mode": mode,
        "size": "x".join(map(str, size)),
        "peak_mib": _peak_mib(device),
        "s_per_iter": seconds / iters,
    }


def _windows(size: tuple[int, ...]) -> int:
    import math

    roi, step = ZOO["roi_size"][0], int(ZOO["roi_size"][0] * (1 - ZOO["overlap"]))
    return math.prod(max(math.ceil((max(s, roi) - roi) / step), 0) + 1 for s in size)


def _child(mode: str, size: str, args: argparse.Namespace) -> dict | None:
    cmd = [sys.executable, __file__, "--child", mode, size, "--attack", args.attack, "--num-iter", str(args.num_iter),
           "--device", args.device, "--repeats", str(args.repeats)]  # fmt: skip
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    cmd += ["--grad-batch-size", str(args.grad_batch_size)] if args.grad_batch_size else []
    proc = subprocess.run(
        cmd, capture_output=True, text=True, check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )
    if proc.returncode != 0:
        print(f"{mode} {size}: failed ({proc.stderr.strip().splitlines()[-1:]})", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["128x128x64", "256x256x128", "512x512x256"])
    parser.add_argument("--modes", nargs="+", default=["inference", "floor", "windowwise", "full"])
    parser.add_argument("--attack", default="PGD", choices=("FGSM", "PGD", "SMIA"))
    parser.add_argument("--num-iter", type=int, default=2)
    parser.add_argument("--grad-batch-size", type=int, default=None, help="windows per backward batch (default 4)")
    parser.add_argument("--repeats", type=int, default=1, help="time each configuration this often, keep the fastest")
    parser.add_argument("--full-max-windows", type=int, default=60, help="skip the full graph above this many windows")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", default=None, help="the data folder (../shared/data) for a real CT volume")
    parser.add_argument("--output", default=None, help="also write the rows as JSON here")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        size = tuple(int(s) for s in args.child[1].split("x"))
        row = run_one(
            args.child[0],
            size,
            args.attack,
            args.num_iter,
            args.device,
            args.data_dir,
            args.grad_batch_size,
            args.repeats,
        )
        print(json.dumps(row))
        return
    rows = []
    for size in args.sizes:
        n = _windows(tuple(int(s) for s in size.split("x")))
        got = {m: _child(m, size, args) for m in args.modes if m != "full" or n <= args.full_max_windows}
        inf, floor = got.get("inference"), got.get("floor")
        for mode, r in got.items():
            if r is None:
                continue
            r["windows"] = n
            r["peak_vs_inference"] = r["peak_mib"] / inf["peak_mib"] if inf else None
            r["time_vs_floor"] = (
                r["s_per_iter"] / floor["s_per_iter"] if floor and mode in ("windowwise", "full") else None
            )
            rows.append(r)
            print(json.dumps(r), flush=True)
    gb = args.grad_batch_size or ZOO["sw_batch_size"]
    print(
        f"\n{args.attack} (T={args.num_iter}) on {args.device}, zoo spleen UNet, roi 96^3, sw_batch_size 4, "
        f"overlap 0.5, {gb} windows per backward batch"
    )
    print("| volume | windows | mode | peak MiB | x inference | s/iter | x floor |\n|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = "" if r["peak_vs_inference"] is None else f"{r['peak_vs_inference']:.2f}"
        tf = "" if r["time_vs_floor"] is None else f"{r['time_vs_floor']:.3f}"
        print(
            f"| {r['size']} | {r['windows']} | {r['mode']} | {r['peak_mib']:.0f} | {ratio} | {r['s_per_iter']:.1f} | "
            f"{tf} |"
        )
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
