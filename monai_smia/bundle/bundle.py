"""A MONAI bundle folder, opened once per run: its root, metadata, task, config files and network.

:func:`open_bundle` resolves a bundle name or folder, checks that every JSON config parses and reads the
metadata, once per version of its ``metadata.json``; every part of a run takes the :class:`Bundle` it
returns instead of reading the bundle's files again. :meth:`Bundle.network` builds ``network_def`` and
loads the checkpoint once per process for as long as someone holds the network (the evaluator of each
condition of a run reuses the victim's).
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from monai_smia.bundle import files
from monai_smia.bundle.files import check_config_file, file_version, load_config_files, read_config_file, read_metadata
from monai_smia.bundle.loading import load_weights

__all__ = [
    "BUILTIN_BUNDLES_DIR",
    "Bundle",
    "builtin_bundles",
    "clear",
    "is_train_override",
    "open_bundle",
    "resolve_bundle",
    "task_from_metadata",
]

#: the bundles shipped inside the package (``monai_smia/bundles`` links to the repository's ``bundles/``)
BUILTIN_BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"

_OPENED: dict[tuple[str, int, int], Bundle] = {}
_NETWORKS: weakref.WeakValueDictionary[tuple[Any, ...], torch.nn.Module] = weakref.WeakValueDictionary()


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
        if not candidate.is_dir():
            raise FileNotFoundError(
                f"bundle {str(name_or_path)!r} not found: pass the path of a MONAI bundle folder or one of "
                f"{', '.join(builtin_bundles()) or '(no bundles installed)'}"
            )
        path = candidate
    if not (path / "configs" / "metadata.json").is_file():
        raise FileNotFoundError(f"{path} is not a MONAI bundle: it has no configs/metadata.json")
    if not any((path / "configs" / f"{c}.json").is_file() for c in ("train", "inference")):
        raise FileNotFoundError(
            f"{path} is not a usable MONAI bundle: it has neither configs/train.json nor configs/inference.json"
        )
    for f in sorted((path / "configs").glob("*.json")):  # a file that does not parse is named before any run
        check_config_file(f)
    return path.resolve()


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


def is_train_override(config_file: Path) -> bool:
    """Whether ``config_file`` (an ``evaluate.json``) overrides ``train.json`` as model-zoo bundles do
    (``validate#...`` keys), rather than being a stand-alone monai-smia evaluation config."""
    if not config_file.is_file():
        return False
    config = read_config_file(config_file)
    return "evaluation" not in config and any("#" in str(k) for k in config)


@dataclass(frozen=True)
class Bundle:
    """One MONAI bundle folder as a run sees it (:func:`open_bundle` makes it).

    Attributes:
        root: the resolved bundle folder.
        metadata: ``configs/metadata.json``.
        task: ``"classification"``, ``"segmentation"`` or ``"detection"`` (:func:`task_from_metadata`).
        num_classes: the output channels its metadata declares (0 when it declares none).
    """

    root: Path
    metadata: dict[str, Any] = field(compare=False)
    task: str = "segmentation"
    num_classes: int = 0

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def checkpoint(self) -> Path:
        """The bundle's own weights, ``models/model.pt``."""
        return self.root / "models" / "model.pt"

    def config_path(self, name: str) -> Path:
        """``configs/<name>.json`` (which may not exist: see :meth:`has_config`)."""
        return self.root / "configs" / f"{name}.json"

    def has_config(self, name: str) -> bool:
        return self.config_path(name).is_file()

    def read(self, name: str) -> dict[str, Any]:
        """``configs/<name>.json`` as plain JSON (read once per file version; the caller's own copy)."""
        return read_config_file(self.config_path(name))

    def victim_files(self, labels: bool = True) -> list[Path]:
        """The config files a victim is instantiated from: ``train.json`` (with an ``evaluate.json`` written as
        its override) when ``labels`` or when there is no ``inference.json``; else ``inference.json``."""
        use_train = self.has_config("train") and (labels or not self.has_config("inference"))
        if not use_train:
            return [self.config_path("inference")]
        files = [self.config_path("train")]
        if is_train_override(self.config_path("evaluate")):
            files.append(self.config_path("evaluate"))  # the model zoo's idiom: evaluate.json overrides train.json
        return files

    def parser(self, files: Sequence[Path], overrides: dict[str, Any] | None = None) -> ConfigParser:
        """A parser of ``files`` merged in order, with ``bundle_root`` and then ``overrides`` set."""
        parser = ConfigParser()
        try:
            parser.read_config(load_config_files(files))
        except KeyError as e:
            raise ValueError(
                f"{files[-1]} overrides {e.args[0] if e.args else e} that {files[0].name} of {self.name} does not "
                "define; an evaluate.json override needs the train.json it was written for."
            ) from e
        parser["bundle_root"] = str(self.root)
        for key, value in (overrides or {}).items():
            parser[key] = value
        return parser

    def network(
        self, parser: ConfigParser, device: str | torch.device, checkpoint: str | os.PathLike | None = None
    ) -> torch.nn.Module:
        """``network_def`` of ``parser`` (one of :meth:`parser`'s) with ``checkpoint`` loaded, on ``device``, in
        eval mode: built once per process while a caller holds it (the key is the network's config, the
        checkpoint's file version and the device). Callers must not change it in place."""
        ckpt = Path(checkpoint) if checkpoint is not None else self.checkpoint
        definition = json.dumps(parser.config.get("network_def"), sort_keys=True, default=str)
        version = file_version(ckpt) if ckpt.is_file() else (str(ckpt), -1, -1)
        key = (str(self.root), definition, version, str(torch.device(device)))
        network = _NETWORKS.get(key)
        if network is None:
            network = parser.get_parsed_content("network_def", instantiate=True)
            network = load_weights(network, ckpt).to(device).eval()
            _NETWORKS[key] = network
        return network


def clear() -> None:
    """Forget every opened bundle, built network and cached file read (tests that count them start here)."""
    _OPENED.clear()
    _NETWORKS.clear()
    files.clear()


def open_bundle(name_or_path: str | os.PathLike | Bundle) -> Bundle:
    """The :class:`Bundle` of a name or folder (:func:`resolve_bundle`), opened once per metadata version."""
    if isinstance(name_or_path, Bundle):
        return name_or_path
    root = resolve_bundle(name_or_path)
    key = file_version(root / "configs" / "metadata.json")
    if key not in _OPENED:
        meta = read_metadata(root)
        task, num_classes = task_from_metadata(meta)
        _OPENED[key] = Bundle(root=root, metadata=meta, task=task, num_classes=num_classes)
    return _OPENED[key]
