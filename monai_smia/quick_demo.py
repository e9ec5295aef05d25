"""A short real-data demonstration: train a small MONAI classifier on RetinaMNIST (fundus photographs,
diabetic-retinopathy grade 0-4) in seconds, then attack its test split with random sign noise,
FGSM, PGD, DEV (SMIA with alpha = 0) and SMIA at the same budget, and report top-1 accuracy.

This stands in for the evaluation bundles (not yet built) as the package's main job; the victim
is trained on the fly, not a tuned model.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import Classifier

from monai_smia.attacks import FGSM, PGD, SMIA, Attack, RandomSignNoise

__all__ = ["load_retinamnist", "train_quick_classifier", "top1_accuracy", "baseline_attacks", "run"]

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
    net = Classifier(in_shape=tuple(images.shape[1:]), classes=num_classes, channels=(8, 16, 32), strides=(2, 2, 2), num_res_units=1)
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


def run(data_dir: str | Path, eps: float = 1 / 255, seed: int = 0) -> dict[str, dict[str, float]]:
    """Train, attack the test split, print and return ``{attack: {"top1": ..., "positive_cosine_share": ...}}``."""
    start = time.time()
    data = load_retinamnist(data_dir)
    net = train_quick_classifier(*data["train"], seed=seed)
    x, y = data["test"]
    rows = {"clean": {"top1": top1_accuracy(net, x, y)}}
    for name, attack in baseline_attacks(net, eps).items():
        torch.manual_seed(seed)
        x_adv = attack(x, y)
        row = {"top1": top1_accuracy(net, x_adv, y), "linf": float((x_adv - x).abs().max())}
        if attack.trace is not None and attack.trace.num_iter > 1:
            row["positive_cosine_share"] = attack.trace.summary()["positive_cosine_share"]
        rows[name] = row
    print(f"RetinaMNIST test split ({len(y)} fundus images), eps = {eps * 255:g}/255, T = 10, quick victim trained in this run")
    print("| data | top-1 accuracy | L-inf | share of positive cosines |")
    print("|---|---|---|---|")
    for name, row in rows.items():
        cos = row.get("positive_cosine_share")
        print(f"| {name} | {row['top1']:.3f} | {row.get('linf', 0.0) * 255:.2f}/255 | {'' if cos is None else f'{cos:.2f}'} |")
    print(f"done in {time.time() - start:.0f} s")
    return rows
