"""Shared test fixtures: the real data folder (``../shared/data`` beside the repository, or ``MONAI_SMIA_DATA``)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """The raw data folder laid out like ``../shared/data``."""
    env = os.environ.get("MONAI_SMIA_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def subprocess_env() -> dict[str, str]:
    """The environment for a test's subprocess: one thread (the machine is shared) and this checkout importable."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return env


def mnist_digits(data_dir: Path, num: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The committed mnist_cls network and the first ``num`` MNIST test digits and labels as it reads them
    (skips the test when either is absent)."""
    from monai_smia.bundle.victim import load_victim

    if not (REPO_ROOT / "bundles" / "mnist_cls" / "models" / "model.pt").is_file():
        pytest.skip("bundles/mnist_cls/models/model.pt is absent (train the bundle first)")
    folder = data_dir / "digits" / "mnist"
    if not (folder / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST test digits absent from {folder}")
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)[:num]
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)[:num]
    # the bundle loads PNGs with PILReader, which puts the image width first: rows become columns
    x = torch.tensor(raw / 255.0, dtype=torch.float32).transpose(-1, -2).unsqueeze(1).contiguous()
    return load_victim("mnist_cls", device="cpu").network.eval(), x, torch.tensor(labels, dtype=torch.long)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent (set MONAI_SMIA_DATA to a folder laid out like ../shared/data)")
    return path


@pytest.fixture(scope="session")
def mnist(data_dir, tmp_path_factory) -> Path:
    """MNIST prepared by data_prep (PNGs and datalist.json), shared by the tests that only read it."""
    from monai_smia.apps.data_prep.mnist import prepare_mnist

    out = tmp_path_factory.mktemp("mnist")
    prepare_mnist(data_dir, out)
    return out


@pytest.fixture(scope="session")
def retina(data_dir, tmp_path_factory) -> Path:
    """RetinaMNIST prepared by data_prep, shared like :func:`mnist`."""
    from monai_smia.apps.data_prep.medmnist import prepare_medmnist

    out = tmp_path_factory.mktemp("retina")
    prepare_medmnist(data_dir, out, "retinamnist")
    return out


def _input_files() -> list[Path]:
    """Every input a test may read: the real data folder and the committed checkpoints."""
    files = [p for p in shared_data_dir().rglob("*") if p.is_file()] if shared_data_dir().is_dir() else []
    return files + sorted((REPO_ROOT / "bundles").glob("*/models/*"))


def _fingerprints(files: list[Path]) -> dict[Path, tuple[int, int, int]]:
    out = {}
    for p in files:
        st = p.stat()
        out[p] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def _input_hashes() -> dict[Path, str]:
    """sha256 of every input at the start of the session (checked against ``SHA256SUMS`` where it lists it)."""
    hashes = {p: _sha256(p) for p in _input_files()}
    sums = shared_data_dir() / "SHA256SUMS"
    if sums.is_file():
        for line in sums.read_text().splitlines():
            digest, name = line.split(maxsplit=1)
            path = sums.parent / name
            assert hashes.get(path, digest) == digest, f"input {name} differs from SHA256SUMS before the tests ran"
    return hashes


@pytest.fixture(autouse=True)
def inputs_unchanged(_input_hashes):
    """After each test, every input file is byte-equal to what it was: a file whose inode, size or mtime
    changed is hashed again and must still have its sha256 of the session start; none may vanish."""
    before = _fingerprints(list(_input_hashes))
    yield
    for path, fp in before.items():
        assert path.is_file(), f"the test removed input {path.name}"
        if _fingerprints([path])[path] != fp:
            assert _sha256(path) == _input_hashes[path], f"the test changed input {path.name}"
