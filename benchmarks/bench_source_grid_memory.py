"""Peak memory of a source-grid attack (issue 13): bounded by one slice batch of the network plus the
resampling of one volume, not by the number of slices times the activations.

Each size runs in its own subprocess (peak RSS is per process), with ``MALLOC_MMAP_THRESHOLD_=131072``
so that RSS follows live memory. A synthetic int16 CT of 512 x 512 x D voxels (0.7 x 0.7 x 2.5 mm, HU
in -1024..400) is attacked with the ``lung_ct_seg`` bundle (SMIA, 20 HU, label-free) on the source
grid through ``monai_smia.apps.attack.run.AdversarialWriter`` (``verify=False``: no read-back). The
report gives the peak RSS minus the RSS after loading the bundle, the bytes of one source volume
(float32) and their ratio; on CUDA also ``torch.cuda.max_memory_allocated``.

    python benchmarks/bench_source_grid_memory.py                    # D = 64 and 256, CPU, 2 iterations
    python benchmarks/bench_source_grid_memory.py --depths 64 --device cuda --num-iter 10

Run it on a quiet machine (nothing else allocating), not while tests run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def make_source(depth: int, folder: Path) -> Path:
    """A synthetic int16 CT, 512 x 512 x ``depth``, written in the parent so its making does not count."""
    import nibabel as nib
    import numpy as np

    vol = np.random.default_rng(0).integers(-1024, 400, size=(512, 512, depth), dtype=np.int16)
    src = folder / f"synthetic_{depth}.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([-0.7, -0.7, 2.5, 1.0])), str(src))
    return src


def run_one(src: Path, depth: int, num_iter: int, device: str) -> dict[str, float]:
    import torch

    from monai_smia.apps.attack.run import AdversarialWriter
    from monai_smia.bundle.victim import load_victim

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    with tempfile.TemporaryDirectory() as tmp:
        load_victim("lung_ct_seg", device=device, labels=False)  # imports and kernels, so one-off costs do not count
        writer = AdversarialWriter(
            "lung_ct_seg", src, Path(tmp) / "out", attack="SMIA", eps=20.0, num_iter=num_iter,
            device=device, verify=False, progress=False,
        )  # fmt: skip
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        base = _rss_bytes()
        writer.run()
        peak = _peak_rss_bytes()
        volume = 512 * 512 * depth * 4
        row = {
            "depth": depth,
            "device": device,
            "num_iter": num_iter,
            "volume_float32_mib": volume / 2**20,
            "peak_rss_minus_base_mib": (peak - base) / 2**20,
            "peak_over_volume": (peak - base) / volume,
        }
        if device.startswith("cuda"):
            row["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depths", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--num-iter", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_one(Path(args.one), args.depths[0], args.num_iter, args.device)))
        return
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for depth in args.depths:
            src = make_source(depth, Path(tmp))
            cmd = [
                sys.executable,
                __file__,
                "--one",
                str(src),
                "--depths",
                str(depth),
                "--num-iter",
                str(args.num_iter),
            ]
            out = subprocess.run([*cmd, "--device", args.device], check=True, capture_output=True, text=True, env=env)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print(
        "\n| slices | volume (float32) | peak RSS - base | ratio |" + (" CUDA peak |" if args.device != "cpu" else "")
    )
    for r in rows:
        cuda = f" {r['cuda_max_allocated_mib']:.0f} MiB |" if "cuda_max_allocated_mib" in r else ""
        print(
            f"| {r['depth']} | {r['volume_float32_mib']:.0f} MiB | {r['peak_rss_minus_base_mib']:.0f} MiB | "
            f"{r['peak_over_volume']:.1f} |{cuda}"
        )


if __name__ == "__main__":
    main()
