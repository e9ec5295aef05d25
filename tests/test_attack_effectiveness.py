"""Effectiveness on real data: attacks must hurt a RetinaMNIST classifier far more than random noise."""

from __future__ import annotations

import torch

from quick_victim import baseline_attacks, load_retinamnist, top1_accuracy, train_quick_classifier


def test_attacks_lower_top1_accuracy_on_retinamnist(data_dir):
    data = load_retinamnist(data_dir)
    net = train_quick_classifier(*data["train"], epochs=3)
    x, y = data["test"]
    clean = top1_accuracy(net, x, y)
    results = {}
    for name, attack in baseline_attacks(net, eps=1 / 255).items():
        if name == "DEV":
            continue
        torch.manual_seed(0)
        results[name] = top1_accuracy(net, attack(x, y), y)
    print(
        f"\nRetinaMNIST top-1 at eps=1/255: clean {clean:.3f}, " + ", ".join(f"{k} {v:.3f}" for k, v in results.items())
    )
    assert clean > 0.4, f"quick victim too weak to judge attacks: clean top-1 {clean:.3f}"
    assert results["noise"] > clean - 0.05, "random sign noise of 1/255 should barely change accuracy"
    for name in ("FGSM", "PGD", "SMIA"):
        assert results[name] < clean - 0.15, f"{name} lowered top-1 only from {clean:.3f} to {results[name]:.3f}"
        assert results[name] < results["noise"] - 0.1, f"{name} ({results[name]:.3f}) not clearly below noise"
