"""Does the adversarial CT survive the round trip? Issue 13's survival table.

Attacks real CT sources with the ``lung_ct_seg`` bundle (SMIA, 20 HU, 10 iterations, label-free) on
the network grid (the former mode: bilinear ``Invertd`` back to the source) and on the source grid
(through the bundle's preprocessing), writes float32 and integer (source dtype) NIfTI and, for a
DICOM source, a DERIVED series, reads every file back through the bundle's preprocessing and
prints the share of voxels whose prediction changed, in memory and read back, and their ratio.

    python benchmarks/bench_source_grid_survival.py                      # both sources, both grids
    python benchmarks/bench_source_grid_survival.py --sources a0002 --device cuda

Sources (under ``$MONAI_SMIA_DATA``, default ``../shared/data``): ``a0002`` =
``ct/chest/lung_pet_ct_dx_A0002`` (30 slices of 512x512, 0.65 x 0.65 x 8 mm DICOM), ``ts`` =
``ct/totalsegmentator/example_ct.nii.gz`` (3 mm, int32 HU).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

SOURCES = {"a0002": "ct/chest/lung_pet_ct_dx_A0002", "ts": "ct/totalsegmentator/example_ct.nii.gz"}


def _data_dir() -> Path:
    env = os.environ.get("MONAI_SMIA_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def run_one(source: Path, grid: str, dtype: str, device: str | None, num_iter: int, work: Path) -> dict:
    from monai_smia.apps.attack.run import run_attack

    out = work / f"{source.name}_{grid}_{dtype}"
    t0 = time.perf_counter()
    summary = run_attack(
        "lung_ct_seg", source, out, attack="SMIA", eps=20.0, eps_unit="HU", num_iter=num_iter,
        grid=grid, save_dtype=dtype, device=device, progress=False,
    )  # fmt: skip
    rec = json.loads(next((out / "cases").rglob("*.json")).read_text())
    surv = rec["survival"]
    return {
        "source": source.name,
        "grid": grid,
        "dtype": dtype,
        "seconds": round(time.perf_counter() - t0, 1),
        "in_memory": surv["in_memory"]["prediction_changed_fraction"],
        "nifti": surv.get("nifti", {}).get("prediction_changed_fraction"),
        "dicom": surv.get("dicom", {}).get("prediction_changed_fraction"),
        "ratio_nifti": summary["survival_ratio"].get("nifti"),
        "ratio_dicom": summary["survival_ratio"].get("dicom"),
    }


def _fmt(v: float | None, pct: bool = True) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.2f}%" if pct else f"{v:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    parser.add_argument("--grids", nargs="+", default=["network", "source"], choices=["network", "source"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "source"], choices=["float32", "source"])
    parser.add_argument("--num-iter", type=int, default=10)
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sources:
            for grid in args.grids:
                for dtype in args.dtypes:
                    rows.append(
                        run_one(_data_dir() / SOURCES[name], grid, dtype, args.device, args.num_iter, Path(tmp))
                    )
                    print(json.dumps(rows[-1]), flush=True)
    print(
        "\n| source | grid | NIfTI dtype | changed in memory | NIfTI read back | DICOM read back | ratio NIfTI | "
        "ratio DICOM |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['source']} | {r['grid']} | {r['dtype']} | {_fmt(r['in_memory'])} | {_fmt(r['nifti'])} | "
            f"{_fmt(r['dicom'])} "
            f"| {_fmt(r['ratio_nifti'], False)} | {_fmt(r['ratio_dicom'], False)} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
