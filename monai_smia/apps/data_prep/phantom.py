"""Synthetic chest CT phantoms (body, lungs, vessels, noise) in the data_prep layout.

Used ONLY where no real CT is available (e.g. a demo on a machine without the shared data); every
output is named synthetic: file names start with ``synthetic_``, the datalist says
``"synthetic": true`` and each item ``"label_source": "synthetic_phantom"``.

Usage::

    python -m monai_smia.apps.data_prep.phantom --out data/lung_ct_synthetic [--num-cases 6] [--seed 0]

Each phantom is an elliptic body (fat rim, soft tissue) holding two lungs (about -850 HU) with
branching vessels (soft tissue), a heart, a spine, a table, and Gaussian noise; the label is
the lungs (vessels inside them included), like the real lung labels of ``monai_smia.apps.data_prep.lung_ct``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from monai_smia.apps.data_prep.layout import DATALIST, atomic_output_dir, deterministic_split, write_datalist

__all__ = ["make_phantom", "prepare"]


def _ellipsoid(grid: tuple[np.ndarray, ...], center: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1.0


def make_phantom(
    shape_zyx: Sequence[int] = (48, 160, 160),
    spacing_zyx: Sequence[float] = (5.0, 2.0, 2.0),
    seed: int = 0,
    noise_hu: float = 20.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic chest CT and its lung label.

    Args:
        shape_zyx: volume shape, axial slices along axis 0.
        spacing_zyx: voxel spacing in mm (used to keep anatomy in mm whatever the shape).
        seed: random seed (anatomy sizes, vessel paths, noise).
        noise_hu: standard deviation of the Gaussian noise in HU.

    Returns:
        ``(hu, label)``: int16 HU volume and uint8 lung label, both of ``shape_zyx``.
    """
    if len(shape_zyx) != 3 or min(shape_zyx) < 8:
        raise ValueError(f"shape_zyx must be three sizes of at least 8, got {tuple(shape_zyx)}")
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape_zyx
    sz, sy, sx = spacing_zyx
    z, y, x = np.meshgrid(
        (np.arange(nz) - nz / 2) * sz, (np.arange(ny) - ny / 2) * sy, (np.arange(nx) - nx / 2) * sx, indexing="ij"
    )
    grid = (z, y, x)
    extent_z = nz * sz
    body_r = (extent_z * 2.0, 0.36 * ny * sy * rng.uniform(0.9, 1.05), 0.45 * nx * sx * rng.uniform(0.9, 1.05))
    hu = np.full(shape_zyx, -1000.0)
    body = _ellipsoid(grid, (0, 0, 0), body_r)
    hu[body] = -100.0  # fat rim
    inner = _ellipsoid(grid, (0, 0, 0), (body_r[0], body_r[1] - 12, body_r[2] - 12))
    hu[inner] = 40.0
    lung_r = (extent_z * 0.45 * rng.uniform(0.9, 1.1), body_r[1] * 0.75, body_r[2] * 0.38)
    lungs = np.zeros(shape_zyx, dtype=bool)
    for side in (-1, 1):
        c = (rng.uniform(-0.05, 0.05) * extent_z, -0.05 * body_r[1], side * body_r[2] * 0.45)
        lungs |= _ellipsoid(grid, c, lung_r)
    lungs &= inner
    hu[lungs] = rng.uniform(-880, -820)
    heart = _ellipsoid(
        grid, (-0.1 * extent_z, -0.2 * body_r[1], 0.1 * body_r[2]), (extent_z * 0.2, body_r[1] * 0.35, body_r[2] * 0.3)
    )
    hu[heart] = 40.0
    lungs &= ~heart
    # vessels: random walks of soft-tissue tubes inside the lungs
    vessels = np.zeros(shape_zyx, dtype=bool)
    centers = np.argwhere(lungs)
    for _ in range(16 if centers.size else 0):
        line = np.zeros(shape_zyx, dtype=bool)
        p = centers[rng.integers(len(centers))].astype(float)
        step = rng.normal(size=3)
        for _ in range(60):
            step = 0.8 * step + 0.2 * rng.normal(size=3)
            p = p + step / (np.linalg.norm(step) + 1e-6) * np.array([0.5, 1.0, 1.0])
            zi, yi, xi = np.round(p).astype(int)
            if not (0 <= zi < nz and 0 <= yi < ny and 0 <= xi < nx):
                break
            line[zi, yi, xi] = True
        dist = ndimage.distance_transform_edt(~line, sampling=spacing_zyx)
        vessels |= dist <= rng.uniform(1.5, 3.5)
    hu[vessels & lungs] = 40.0
    spine = _ellipsoid(grid, (0, body_r[1] * 0.7, 0), (extent_z * 2, 14, 14))
    hu[spine] = 700.0
    table = (y > body_r[1] + 8) & (y < body_r[1] + 14) & (np.abs(x) < body_r[2] * 1.1)
    hu[table] = 200.0
    hu += rng.normal(0.0, noise_hu, size=shape_zyx)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), lungs.astype(np.uint8)


def prepare(
    out: str | os.PathLike,
    num_cases: int = 6,
    seed: int = 0,
    shape_zyx: Sequence[int] = (48, 160, 160),
    spacing_zyx: Sequence[float] = (5.0, 2.0, 2.0),
) -> Path:
    """Write ``num_cases`` synthetic phantoms and their datalist to ``out`` (atomically).

    Returns:
        The path of the written ``datalist.json``.
    """
    import SimpleITK as sitk

    if num_cases < 3:
        raise ValueError(f"--num-cases must be at least 3 (one per split), got {num_cases}")
    names = [f"synthetic_phantom_{i:03d}" for i in range(num_cases)]
    n_hold = max(1, round(0.2 * num_cases))  # at least one phantom in validation and in test
    split = deterministic_split(names, ((num_cases - 2 * n_hold) / num_cases, n_hold / num_cases, n_hold / num_cases))
    where = {n: s for s, ns in split.items() for n in ns}
    items: dict[str, list[dict]] = {"training": [], "validation": [], "test": []}
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        for i, name in enumerate(names):
            hu, lab = make_phantom(shape_zyx, spacing_zyx, seed=seed * 1000 + i)
            for arr, sub in ((hu, "images"), (lab, "labels")):
                img = sitk.GetImageFromArray(arr)
                img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
                sitk.WriteImage(img, str(tmp / sub / f"{name}.nii.gz"), useCompression=True)
            items[where[name]].append(
                {
                    "image": f"images/{name}.nii.gz",
                    "label": f"labels/{name}.nii.gz",
                    "case": name,
                    "patient": name,
                    "label_source": "synthetic_phantom",
                    "independent_label": False,
                    "synthetic": True,
                    "lung_fraction": round(float(lab.mean()), 5),
                }
            )
        write_datalist(
            tmp,
            items,
            name="lung_ct_synthetic",
            source="synthetic CT phantoms generated by monai_smia.apps.data_prep.phantom (NOT real data)",
            synthetic=True,
            labels={"0": "background", "1": "lung"},
            params={
                "num_cases": num_cases,
                "seed": seed,
                "shape_zyx": list(shape_zyx),
                "spacing_zyx": list(spacing_zyx),
            },
        )
    return Path(out) / DATALIST


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m monai_smia.apps.data_prep.phantom", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--num-cases", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", type=int, nargs=3, default=[48, 160, 160], metavar=("Z", "Y", "X"))
    p.add_argument("--spacing", type=float, nargs=3, default=[5.0, 2.0, 2.0], metavar=("Z", "Y", "X"))
    args = p.parse_args(argv)
    try:
        path = prepare(args.out, args.num_cases, args.seed, args.shape, args.spacing)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path} (synthetic phantoms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
