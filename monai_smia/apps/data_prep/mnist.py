"""MNIST idx files (gzip) to PNG files plus ``datalist.json``.

LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied to document recognition", Proc. IEEE 1998;
the SMIA paper (Qi et al., ICLR 2021) uses MNIST as its non-medical sanity check.

Only the 10,000-image test set (``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``) is needed:
it is carved into ``training``/``validation``/``test`` (70/10/20 % by default, i.e. about 7000/1000/2000),
stratified by digit and decided by a hash of each image's index (stable across runs and machines). When
the 60,000-image training files (``train-*``) are present too, ``--use-train-files`` puts all of them
into ``training``/``validation`` and keeps the official test set as ``test``.

Usage::

    python -m monai_smia.apps.data_prep.mnist --data-dir ../shared/data --out data/mnist

``--data-dir`` is a folder holding the files directly or under ``digits/mnist/``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from monai_smia.apps.data_prep.layout import DATALIST, atomic_output_dir, deterministic_split, write_datalist
from monai_smia.apps.data_prep.png_classification import check_images_labels, sha256_of, write_png_items

__all__ = ["read_idx", "find_mnist_files", "prepare_mnist", "main"]

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)


def read_idx(path: str | os.PathLike, expected_magic: int) -> np.ndarray:
    """Read one gzip-compressed idx file (``uint8`` payload) into an array.

    Raises:
        ValueError: if the file is not gzip, has the wrong magic number, or is truncated.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path} is not a readable gzip idx file ({type(e).__name__}: {e}); re-download it") from e
    if len(raw) < 8:
        raise ValueError(f"{path} is too short to be an idx file ({len(raw)} bytes)")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != expected_magic:
        kind = {IMAGES_MAGIC: "an images", LABELS_MAGIC: "a labels"}[expected_magic]
        raise ValueError(f"{path}: magic number {magic}, expected {expected_magic} for {kind} idx file")
    ndim = magic & 0xFF
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    payload = raw[4 + 4 * ndim :]
    if len(payload) != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} ({int(np.prod(dims))} bytes) but holds {len(payload)} bytes")
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def find_mnist_files(data_dir: str | os.PathLike, prefix: str = "t10k") -> tuple[Path, Path]:
    """Return the (images, labels) idx.gz paths with ``prefix`` (``t10k`` or ``train``) under ``data_dir``."""
    data_dir = Path(data_dir)
    for folder in (data_dir, data_dir / "digits" / "mnist", data_dir / "mnist"):
        img, lab = folder / f"{prefix}-images-idx3-ubyte.gz", folder / f"{prefix}-labels-idx1-ubyte.gz"
        if img.is_file() and lab.is_file():
            return img, lab
    raise FileNotFoundError(
        f"{prefix}-images-idx3-ubyte.gz and {prefix}-labels-idx1-ubyte.gz not found in {data_dir} "
        f"(nor in {data_dir / 'digits' / 'mnist'}); fetch them with `python -m monai_smia.apps.data_prep.download "
        "--dataset mnist "
        "--out DIR` on a machine with a network, or download them by hand (see data_prep/download.py)."
    )


def _load_pair(img_path: Path, lab_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(img_path, IMAGES_MAGIC)
    labels = read_idx(lab_path, LABELS_MAGIC)
    return check_images_labels(images, labels, 10, f"{img_path.name}/{lab_path.name}")


def _stratified(labels: np.ndarray, ids: list[str], fractions: tuple[float, float, float]) -> dict[str, list[int]]:
    """Per digit, split the ids with :func:`deterministic_split`; return row indices per split (sorted)."""
    out: dict[str, list[int]] = {"training": [], "validation": [], "test": []}
    index = {i: n for n, i in enumerate(ids)}
    for digit in range(10):
        members = [ids[n] for n in np.flatnonzero(labels == digit)]
        for split, chosen in deterministic_split(members, fractions, salt="monai-smia-mnist").items():
            out[split].extend(index[c] for c in chosen)
    return {k: sorted(v) for k, v in out.items()}


def prepare_mnist(
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    use_train_files: bool = False,
    force: bool = False,
) -> Path:
    """Convert MNIST to ``out`` (PNG files and ``datalist.json``); return the datalist path.

    Args:
        data_dir: folder with the idx.gz files (directly or under ``digits/mnist``).
        out: output folder, replaced atomically.
        fractions: training/validation/test fractions used when carving the 10k test set.
        use_train_files: use the official 60k training files for training/validation (fractions
            ``fractions[0]:fractions[1]`` of it) and the official 10k set as test.
        force: rebuild even if ``out`` was written from the same source files.
    """
    t_img, t_lab = find_mnist_files(data_dir, "t10k")
    sources = [t_img, t_lab]
    if use_train_files:
        sources = [*find_mnist_files(data_dir, "train"), t_img, t_lab]
    digest = "+".join(sha256_of(p)[:16] for p in sources) + f"|{fractions}"
    existing = Path(out) / DATALIST
    if existing.is_file() and not force:
        with open(existing) as f:
            if json.load(f).get("source_sha256") == digest:
                print(f"{existing} is up to date; nothing to do (use --force to rebuild)")
                return existing

    images, labels = _load_pair(t_img, t_lab)
    with atomic_output_dir(out, overwrite=True, protected=[data_dir]) as tmp:
        splits: dict[str, list] = {}
        if use_train_files:
            tr_images, tr_labels = _load_pair(*sources[:2])
            ids = [f"train-{i:05d}" for i in range(len(tr_labels))]
            f_tr, f_va = fractions[0], fractions[1]
            parts = _stratified(tr_labels, ids, (f_tr / (f_tr + f_va), f_va / (f_tr + f_va), 0.0))
            for split in ("training", "validation"):
                rows = parts[split] + (parts["test"] if split == "training" else [])
                rows = sorted(rows)
                splits[split] = write_png_items(
                    tmp, [f"train_{r:05d}" for r in rows], tr_images[rows], tr_labels[rows], index=rows
                )
            rows = list(range(len(labels)))
            splits["test"] = write_png_items(tmp, [f"t10k_{r:05d}" for r in rows], images, labels, index=rows)
            source = "MNIST: official 60k training set (split into training/validation) and official 10k test set"
        else:
            ids = [f"t10k-{i:05d}" for i in range(len(labels))]
            for split, rows in _stratified(labels, ids, fractions).items():
                splits[split] = write_png_items(
                    tmp, [f"t10k_{r:05d}" for r in rows], images[rows], labels[rows], index=rows
                )
            source = f"MNIST official 10k test set, carved into training/validation/test {fractions} by digit"
        write_datalist(
            tmp,
            splits,
            name="mnist",
            source=source,
            synthetic=False,
            task="handwritten digit classification",
            num_classes=10,
            class_names={str(d): str(d) for d in range(10)},
            license="CC BY-SA 3.0",
            source_sha256=digest,
        )
    print(f"wrote mnist to {out}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    return Path(out) / DATALIST


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="folder with the MNIST idx.gz files")
    parser.add_argument("--out", required=True, help="output dataset folder (replaced atomically)")
    parser.add_argument("--fractions", type=float, nargs=3, default=DEFAULT_FRACTIONS, metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--use-train-files", action="store_true", help="use the official 60k training files too")
    parser.add_argument("--force", action="store_true", help="rebuild even if --out is up to date")
    args = parser.parse_args(argv)
    prepare_mnist(args.data_dir, args.out, tuple(args.fractions), args.use_train_files, args.force)


if __name__ == "__main__":
    main()
