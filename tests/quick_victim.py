"""A victim trained in seconds: a small MONAI classifier on RetinaMNIST (fundus photographs,
diabetic-retinopathy grade 0-4), with the paper's comparison at one budget (random sign noise, FGSM,
PGD, DEV = SMIA with alpha 0, SMIA). Used by tests and quick experiments; the tuned victims are the
bundles (``bundles/retina_dr_cls``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import Classifier

from monai_smia.attacks import FGSM, PGD, SMIA, Attack, RandomSignNoise

__all__ = ["load_retinamnist", "train_quick_classifier", "top1_accuracy", "baseline_attacks"]

RETINAMNIST = Path("fundus") / "retinamnist.npz"


def load_retinamnist(data_dir: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """RetinaMNIST splits from ``DATA/fundus/retinamnist.npz`` as ``(images in [0, 1], labels)`` per split."""
    path = Path(data_dir) / RETINAMNIST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: pass --data-dir (or set MONAI_SMIA_DATA) to a folder laid out like ../shared/data "
            "holding fundus/retinamnist.npz (MedMNIST v2)."
        )
    with np.load(path) as npz:
        out = {}
        for split in ("train", "val", "test"):
            images = torch.from_numpy(npz[f"{split}_images"]).permute(0, 3, 1, 2).float() / 255.0
            out[split] = (images, torch.from_numpy(npz[f"{split}_labels"].reshape(-1)).long())
    return out


def train_quick_classifier(
    images: torch.Tensor, labels: torch.Tensor, epochs: int = 4, seed: int = 0, num_classes: int = 5
) -> torch.nn.Module:
    """A small MONAI :class:`Classifier` trained with Adam for a few epochs (seconds on a CPU)."""
    torch.manual_seed(seed)
    net = Classifier(
        in_shape=tuple(images.shape[1:]), classes=num_classes, channels=(8, 16, 32), strides=(2, 2, 2), num_res_units=1
    )
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(images), generator=g)
        for i in range(0, len(images), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(images[idx]), labels[idx]).backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def top1_accuracy(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy: share of cases whose argmax equals the label."""
    return float((net(images).argmax(dim=1) == labels).double().mean())


def baseline_attacks(net: torch.nn.Module, eps: float, num_iter: int = 10) -> dict[str, Attack]:
    """The paper's comparison at one budget: noise floor, FGSM, PGD (Madry), DEV (alpha = 0), SMIA."""
    return {
        "noise": RandomSignNoise(net, eps=eps),
        "FGSM": FGSM(net, eps=eps),
        "PGD": PGD(net, eps=eps, num_iter=num_iter, random_start=True),
        "DEV": SMIA(net, eps=eps, num_iter=num_iter, alpha=0.0),
        "SMIA": SMIA(net, eps=eps, num_iter=num_iter, alpha=1.0),
    }
