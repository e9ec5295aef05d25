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
from monai.bundle import ConfigParser
from monai.inferers import Inferer, SimpleInferer

from monai_smia.bundle.files import check_config_file, load_config_files, read_config_file, read_metadata
from monai_smia.bundle.loading import load_weights

__all__ = ["BUILTIN_BUNDLES_DIR", "Victim", "load_victim", "resolve_bundle"]

#: the bundles shipped inside the package (``monai_smia/bundles`` links to the repository's ``bundles/``)
BUILTIN_BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"


def builtin_bundles() -> list[str]:
    """Names of the bundles shipped with the package."""
    if not BUILTIN_BUNDLES_DIR.is_dir():
        return []
    return sorted(p.name for p in BUILTIN_BUNDLES_DIR.iterdir() if (p / "configs" / "metadata.json").is_file())


def resolve_bundle(name_or_path: str | os.PathLike) -> Path:
    """A bundle folder from a path, or from the name of one of this repository's bundles.

    Raises:
        FileNotFoundError: neither a folder nor a known name, or a folder that is not a MONAI bundle.
    """
    path = Path(name_or_path)
    if not path.is_dir():
        candidate = BUILTIN_BUNDLES_DIR / str(name_or_path)
        if candidate.is_dir():
            path = candidate
        else:
            raise FileNotFoundError(
                f"bundle {str(name_or_path)!r} not found: pass the path of a MONAI bundle folder or one of "
                f"{', '.join(builtin_bundles()) or '(no bundles installed)'}"
            )
    if not (path / "configs" / "metadata.json").is_file():
        raise FileNotFoundError(f"{path} is not a MONAI bundle: it has no configs/metadata.json")
    if not any((path / "configs" / f"{c}.json").is_file() for c in ("train", "inference")):
        raise FileNotFoundError(
            f"{path} is not a usable MONAI bundle: it has neither configs/train.json nor configs/inference.json"
        )
    for f in sorted((path / "configs").glob("*.json")):  # a file that does not parse is named before any run
        check_config_file(f)
    return path.resolve()


@dataclass
class Victim:
    """A trained network with the preprocessing and inferer its bundle evaluates it with."""

    root: Path
    name: str
    network: torch.nn.Module
    preprocessing: Callable
    inferer: Inferer
    task: str  # "segmentation" or "classification"
    num_classes: int
    checkpoint: Path
    has_labels: bool
    config: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        """A plain value of the bundle config (e.g. ``hu_window``)."""
        return self.config.get(key, default)


def is_train_override(config_file: Path) -> bool:
    """Whether ``config_file`` (an ``evaluate.json``) overrides ``train.json`` as model-zoo bundles do
    (``validate#...`` keys), rather than being a stand-alone monai-smia evaluation config."""
    if not config_file.is_file():
        return False
    config = read_config_file(config_file)
    return "evaluation" not in config and any("#" in str(k) for k in config)


def task_from_metadata(meta: dict[str, Any]) -> tuple[str, int]:
    """``("classification" | "segmentation" | "detection", output channels)`` from a bundle's metadata
    (the ``format`` of its ``pred`` output: classes, a label map, or bounding boxes)."""
    pred = meta.get("network_data_format", {}).get("outputs", {}).get("pred", {})
    fmt = str(pred.get("format", "")).lower()
    if fmt in ("classes", "class", "classification", "labels"):
        task = "classification"
    else:
        task = "detection" if "box" in fmt else "segmentation"
    return task, int(pred.get("num_channels", 0) or 0)


def load_victim(
    bundle: str | os.PathLike,
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
    root = resolve_bundle(bundle)
    meta = read_metadata(root)
    configs = root / "configs"
    use_train = (configs / "train.json").is_file() and (labels or not (configs / "inference.json").is_file())
    parser = ConfigParser()
    files = [configs / ("train.json" if use_train else "inference.json")]
    if use_train and is_train_override(configs / "evaluate.json"):
        files.append(configs / "evaluate.json")  # the model zoo's idiom: evaluate.json overrides train.json
    try:
        parser.read_config(load_config_files(files))
    except KeyError as e:
        raise ValueError(
            f"{files[-1]} overrides {e.args[0] if e.args else e} that {files[0].name} of {root.name} does not define; "
            "an evaluate.json override needs the train.json it was written for."
        ) from e
    parser["bundle_root"] = str(root)
    if dataset_dir is not None:
        parser["dataset_dir"] = str(dataset_dir)
    parser["device"] = f"$torch.device('{torch.device(device)}')"
    if use_train and "validate" in parser.config and "preprocessing" in parser["validate"]:
        pre_key, inf_key, has_labels = "validate#preprocessing", "validate#inferer", True
    else:  # inference.json (already read, with the overrides above) or a train.json without validate#preprocessing
        pre_key, inf_key, has_labels = "preprocessing", "inferer", False
    network = parser.get_parsed_content("network_def", instantiate=True)
    ckpt = Path(checkpoint) if checkpoint is not None else root / "models" / "model.pt"
    load_weights(network, ckpt)
    network = network.to(device).eval()
    preprocessing = parser.get_parsed_content(pre_key, instantiate=True)
    try:
        inferer = parser.get_parsed_content(inf_key, instantiate=True)
    except KeyError:
        inferer = SimpleInferer()
    task, num_classes = task_from_metadata(meta)
    plain = {
        k: v
        for k, v in parser.config.items()
        if isinstance(v, (int, float, str, list)) and not str(v).startswith(("$", "@"))
    }
    return Victim(
        root=root,
        name=root.name,
        network=network,
        preprocessing=preprocessing,
        inferer=inferer,
        task=task,
        num_classes=num_classes,
        checkpoint=ckpt,
        has_labels=has_labels,
        config=plain,
        metadata=meta,
    )
