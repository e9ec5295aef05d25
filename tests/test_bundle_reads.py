"""One evaluation run reads each bundle file at most twice, loads the checkpoint at most twice and builds
its network once (the configs are parsed once per file version, whatever the number of conditions)."""

from __future__ import annotations

import builtins
import collections
import io
import os

import torch

from monai_smia.bundle import bundle, loading
from monai_smia.cli import main


def test_one_evaluation_reads_the_bundle_once(mnist, tmp_path, monkeypatch):
    opened: collections.Counter[str] = collections.Counter()
    loads: collections.Counter[str] = collections.Counter()
    real_open, real_load = builtins.open, torch.load

    def counting_open(file, *args, **kwargs):
        name = os.fspath(file) if isinstance(file, (str, os.PathLike)) else ""
        if f"{os.sep}mnist_cls{os.sep}" in name:
            opened[os.path.basename(name)] += 1
        return real_open(file, *args, **kwargs)

    def counting_load(f, *args, **kwargs):
        loads[os.path.basename(os.fspath(f))] += 1
        return real_load(f, *args, **kwargs)

    built: list[str] = []
    real_weights = loading.load_weights

    def counting_weights(network, path, *args, **kwargs):
        built.append(type(network).__name__)
        return real_weights(network, path, *args, **kwargs)

    bundle.clear()  # a network another test still holds would otherwise be reused
    monkeypatch.setattr(loading, "load_weights", counting_weights)
    monkeypatch.setattr("monai_smia.bundle.bundle.load_weights", counting_weights)
    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)  # pathlib reads through io.open
    monkeypatch.setattr(torch, "load", counting_load)
    args = ["evaluate", "--bundle", "mnist_cls", "--dataset-dir", str(mnist), "--output", str(tmp_path / "out")]
    assert main([*args, "--attacks", "noise", "FGSM", "PGD", "SMIA", "--num-iter", "2", "--max-cases", "4"]) == 0
    assert opened["train.json"] >= 1 and opened["evaluate.json"] >= 1, opened  # the counter sees the reads
    assert max(opened.values()) <= 2, opened
    assert loads["model.pt"] <= 2, loads
    assert len(built) == 1, built  # one network for the clean run and the four attacked conditions
