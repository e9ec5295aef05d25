"""Load the network a robustness evaluation attacks from any MONAI bundle folder.

The bundle's own configs supply everything: ``network_def``, the checkpoint ``models/model.pt``
(loaded with ``weights_only=True``), the preprocessing and the inferer. ``configs/train.json``'s
``validate`` section is preferred (it prepares images AND labels on the network's grid, as during
model selection); otherwise ``configs/inference.json``'s ``preprocessing``/``inferer`` (images only:
the attack is then label-free). This works for this repository's bundles and for MONAI model-zoo
bundles alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from monai.inferers import Inferer, SimpleInferer

from monai_smia.bundle.bundle import (
    BUILTIN_BUNDLES_DIR,
    Bundle,
    builtin_bundles,
    is_train_override,
    open_bundle,
    resolve_bundle,
    task_from_metadata,
)

__all__ = [
    "BUILTIN_BUNDLES_DIR",
    "Victim",
    "builtin_bundles",
    "is_train_override",
    "load_victim",
    "resolve_bundle",
    "task_from_metadata",
]



@dataclass
class Victim:
    """A trained network with the preprocessing and inferer its :class:`~monai_smia.bundle.bundle.Bundle`
    evaluates it with."""

    bundle: Bundle
    network: torch.nn.Module
    preprocessing: Callable
    inferer: Inferer
    checkpoint: Path
    has_labels: bool
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.bundle.root

    @property
    def name(self) -> str:
        return self.bundle.name

    @property
    def task(self) -> str:
        """``"classification"``, ``"segmentation"`` or ``"detection"``."""
        return self.bundle.task

    @property
    def num_classes(self) -> int:
        return self.bundle.num_classes

    @property
    def metadata(self) -> dict[str, Any]:
        return self.bundle.metadata

    def get(self, key: str, default: Any = None) -> Any:
        """A plain value of the bundle config (e.g. ``hu_window``)."""
        return self.config.get(key, default)


def load_victim(
    bundle: str | os.PathLike | Bundle,
    dataset_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    checkpoint: str | os.PathLike | None = None,
    labels: bool = True,
) -> Victim:
    """Instantiate the bundle's network, preprocessing and inferer, and load its checkpoint.

    Args:
        labels: prefer ``train.json``'s ``validate`` preprocessing (images and labels). ``False``:
            prefer ``inference.json``'s ``preprocessing``/``inferer`` (images only), for images
            without labels; ``train.json`` is used only when the bundle has no ``inference.json``.
    """
    b = open_bundle(bundle)
    files = b.victim_files(labels)
    overrides = {"dataset_dir": str(dataset_dir)} if dataset_dir is not None else {}
    parser = b.parser(files, {**overrides, "device": f"$torch.device('{torch.device(device)}')"})
    if files[0].name == "train.json" and "validate" in parser.config and "preprocessing" in parser["validate"]:
        pre_key, inf_key, has_labels = "validate#preprocessing", "validate#inferer", True
    else:  # inference.json (already read, with the overrides above) or a train.json without validate#preprocessing
        pre_key, inf_key, has_labels = "preprocessing", "inferer", False
    ckpt = Path(checkpoint) if checkpoint is not None else b.checkpoint
    network = b.network(parser, device, ckpt)
    preprocessing = parser.get_parsed_content(pre_key, instantiate=True)
    try:
        inferer = parser.get_parsed_content(inf_key, instantiate=True)
    except KeyError:
        inferer = SimpleInferer()
    plain = {
        k: v
        for k, v in parser.config.items()
        if isinstance(v, (int, float, str, list)) and not str(v).startswith(("$", "@"))
    }
    return Victim(b, network, preprocessing, inferer, ckpt, has_labels, plain)
