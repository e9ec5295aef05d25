"""Progress inside a case: a slice-wise attack reports every slice of each volume within ``slice_progress``."""

from __future__ import annotations

import torch

from monai_smia import FGSM
from monai_smia.attacks import progress, volume


class _Bar:
    made: list[_Bar] = []

    def __init__(self, total: int, desc: str, **_: object) -> None:
        self.total, self.desc, self.n = total, desc, 0
        _Bar.made.append(self)

    def update(self, k: int) -> None:
        self.n += k

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *_: object) -> None:
        return None


def test_slice_progress_counts_every_slice(monkeypatch):
    monkeypatch.setattr(progress, "tqdm", _Bar)
    monkeypatch.setattr(progress, "_has_tqdm", True)
    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    x = torch.rand(2, 1, 8, 8, 7)
    attack = FGSM(net, eps=0.01)
    volume.attack_volumes(attack, x, slice_dim=2, slice_batch_size=3)
    assert _Bar.made == []  # silent outside the context
    with volume.slice_progress("case A"):
        volume.attack_volumes(attack, x, slice_dim=2, slice_batch_size=3)
    assert [(b.desc, b.total, b.n) for b in _Bar.made] == [("case A", 7, 7), ("case A", 7, 7)]
