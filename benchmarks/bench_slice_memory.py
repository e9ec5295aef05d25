"""Activation memory of slice-wise SMIA: it must grow with slice_batch_size, not with the number of slices.

Each configuration runs in its own subprocess (so peak RSS is not shared between runs). Activation
memory = peak RSS during the attack minus the RSS just before it, minus the bytes of the output volume
and of its perturbation (both have the volume's size and are allocated during the attack). The
network is a small 2D MONAI UNet on 256 x 256 slices (CPU, float32, 3 iterations). Subprocesses run
with ``MALLOC_MMAP_THRESHOLD_=131072`` so that RSS follows live memory (see ``main``).

    python benchmarks/bench_slice_memory.py                 # default table
    python benchmarks/bench_slice_memory.py --depths 50 200 --batch-sizes 1 4 16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run_one(depth: int, batch: int, num_iter: int) -> dict[str, float]:
    import torch
    from monai.networks.nets import UNet

    from monai_smia import SMIA
    from monai_smia.layers import with_intensity_window
    from monai_smia.attacks.volume import attack_volumes

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = with_intensity_window(UNet(2, 1, 2, channels=(8, 16, 32), strides=(2, 2), num_res_units=1), -1000.0, 400.0)
    x = torch.rand(1, 1, 256, 256, depth) * 1400 - 1000
    attack = SMIA(net, eps=20.0, num_iter=num_iter, bounds=None, spatial_dims=2)
    # warm up allocator and kernels on one slice batch so one-off costs do not count
    attack_volumes(attack, x[..., :batch], slice_dim=2, slice_batch_size=batch, compute_success=False)
    base = _rss_bytes()
    peak_before = _peak_rss_bytes()
    result = attack_volumes(attack, x, slice_dim=2, slice_batch_size=batch, compute_success=False)
    peak = max(_peak_rss_bytes(), peak_before)
    volume_bytes = result.adversarial.numel() * result.adversarial.element_size()
    pert_bytes = result.perturbation.numel() * result.perturbation.element_size()
    activation = peak - base - volume_bytes - pert_bytes
    return {
        "depth": depth,
        "batch": batch,
        "volume_mib": x.numel() * 4 / 2**20,
        "peak_minus_base_mib": (peak - base) / 2**20,
        "activation_mib": activation / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--num-iter", type=int, default=3)
    parser.add_argument("--one", type=int, nargs=2, help=argparse.SUPPRESS)  # internal: depth batch
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], args.num_iter)))
        return
    rows = []
    for depth in args.depths:
        for batch in args.batch_sizes:
            cmd = [sys.executable, __file__, "--one", str(depth), str(batch), "--num-iter", str(args.num_iter)]
            # a fixed mmap threshold makes glibc return freed activation buffers to the OS, so RSS
            # follows live memory instead of heap fragmentation (glibc's dynamic threshold grows to 32 MiB)
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
            out = (
                subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1]
            )
            rows.append(json.loads(out))
    print("| slices | slice_batch_size | volume (MiB) | peak RSS - base (MiB) | activation (MiB) |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['depth']} | {r['batch']} | {r['volume_mib']:.1f} | {r['peak_minus_base_mib']:.1f} | "
            f"{r['activation_mib']:.1f} |"
        )


if __name__ == "__main__":
    main()
