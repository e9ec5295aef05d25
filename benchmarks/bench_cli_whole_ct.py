"""``monai-smia attack`` on a whole, uncropped CT through a bundle in the model zoo's spleen_ct_segmentation shape.

The bundle is the tests' zoo-shaped fixture (tests/zoo_fixtures.py, inference.json only: attacked label-free)
with the zoo's own network and inferer settings: UNet channels 16-256, strides 2-2-2-2, 2 residual units,
batch norm (seeded, untrained weights: memory and time do not depend on them); ``Spacingd`` to
1.5 x 1.5 x 2 mm; ``SlidingWindowInferer`` roi 96^3, sw_batch_size 4, overlap 0.5. The input is the
TotalSegmentator example CT (abdomen-pelvis, 3 mm, 122 x 101 x 112), whole: 244 x 202 x 168 voxels on the
network grid, 60 windows. Each run is its own process; peak RSS of that process is reported:

- ``inference``: the bundle's preprocessing and one sliding-window prediction (what inference costs);
- ``attack --grid network`` and ``attack --grid source`` (FGSM, 20 HU; window-wise gradients).

    python benchmarks/bench_cli_whole_ct.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ZOO_NETWORK = {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2}
ZOO_INFERER = {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96], "sw_batch_size": 4, "overlap": 0.5}

INFERENCE = """
import sys, torch
from monai_smia.bundle.victim import load_victim
v = load_victim(sys.argv[1], device="cpu", labels=False)
x = v.preprocessing({"image": sys.argv[2]})["image"][None]
with torch.no_grad():
    print(tuple(v.inferer(x, v.network).shape))
"""


def make_bundle(folder: Path) -> Path:
    """The zoo-shaped fixture bundle with the zoo's spleen network, spacing and inferer (seeded weights)."""
    import torch
    from monai.bundle import ConfigParser

    sys.path.insert(0, str(REPO / "tests"))
    from zoo_fixtures import zoo_bundle

    bundle = zoo_bundle(folder / "spleen_ct_segmentation", shape="inference_only")
    path = bundle / "configs" / "inference.json"
    config = json.loads(path.read_text())
    config["network_def"].update(ZOO_NETWORK)
    config["inferer"] = ZOO_INFERER
    for t in config["preprocessing"]["transforms"]:
        if t["_target_"] == "Spacingd":
            t["pixdim"] = [1.5, 1.5, 2.0]
    path.write_text(json.dumps(config, indent=4))
    torch.manual_seed(0)
    net = ConfigParser({"network_def": config["network_def"]}).get_parsed_content("network_def", instantiate=True)
    torch.save(net.state_dict(), bundle / "models" / "model.pt")
    return bundle


def _peak_of(cmd: list[str]) -> tuple[float, float, str]:
    """Peak RSS (MiB) and seconds of ``cmd`` run in a fresh process of its own, and its last output line."""
    probe = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(p.returncode, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
        "print((p.stdout.strip() or p.stderr.strip() or ' ').splitlines()[-1])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, *cmd], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    rc, seconds, kib = out[0].split()
    if rc != "0":
        raise RuntimeError(f"{' '.join(cmd)} failed: {out[1]}")
    return int(kib) / 1024, float(seconds), out[1] if len(out) > 1 else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="the data folder (../shared/data)")
    parser.add_argument("--attack", default="FGSM")
    parser.add_argument("--grids", nargs="+", default=["network", "source"])
    args = parser.parse_args()
    ct = Path(args.data_dir) / "ct" / "totalsegmentator" / "example_ct.nii.gz"
    with tempfile.TemporaryDirectory() as tmp:
        bundle = make_bundle(Path(tmp))
        rows = [("inference", *_peak_of([sys.executable, "-c", INFERENCE, str(bundle), str(ct)]))]
        for grid in args.grids:
            out = Path(tmp) / f"adv_{grid}"
            cmd = [sys.executable, "-m", "monai_smia.cli", "attack", "--bundle", str(bundle), "--input", str(ct),
                   "--output", str(out), "--attack", args.attack, "--eps", "20", "--eps-unit", "HU", "--grid", grid,
                   "--device", "cpu"]  # fmt: skip
            rows.append((f"attack --grid {grid}", *_peak_of(cmd)))
    base = rows[0][1]
    print(
        f"\n{args.attack}, 20 HU, whole example_ct.nii.gz, zoo spleen UNet/inferer, CPU ({time.strftime('%Y-%m-%d')})"
    )
    print("| run | peak RSS MiB | x inference | seconds | last line |\n|---|---|---|---|---|")
    for name, peak, seconds, last in rows:
        print(f"| {name} | {peak:.0f} | {peak / base:.2f} | {seconds:.0f} | {last[:160]} |")


if __name__ == "__main__":
    main()
