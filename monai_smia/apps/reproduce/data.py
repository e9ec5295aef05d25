"""Data of ``monai-smia reproduce``: each bundle's test cases, prepared from raw data into a cache the
way ``monai-smia demo`` prepares them, then loaded through the bundle's own preprocessing."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from monai_smia.bundle.data import bundle_cases
from monai_smia.bundle.victim import Victim

__all__ = ["REPRODUCE_BUNDLES", "BundleCases", "label_slab", "load_cases", "prepare_bundle_data"]

#: the bundles the reproduction covers: lung CT 2D slice-wise, RetinaMNIST, MNIST, and the lung-tumour detector
#: (:mod:`monai_smia.apps.reproduce.detection`, Tables 1 and 6)
REPRODUCE_BUNDLES = ("lung_ct_seg", "retina_dr_cls", "mnist_cls", "lung_tumour_det")


@dataclass
class BundleCases:
    """The cases of one bundle, preprocessed for its network.

    Attributes:
        ids: case ids (the datalist's ``case`` or the image file's stem).
        images: one ``(C, *spatial)`` tensor per case.
        labels: one label per case: a class index ``()`` tensor, or a ``(1, *spatial)`` label map.
        source: a sentence naming where the cases came from.
    """

    ids: list[str]
    images: list[torch.Tensor]
    labels: list[torch.Tensor]
    source: str


def prepare_bundle_data(bundle: str, data_dir: str | os.PathLike | None, cache: str | os.PathLike) -> tuple[Path, str]:
    """A data_prep folder for ``bundle`` (prepared once into ``cache``) and a sentence naming its source.

    ``lung_ct_seg`` and ``retina_dr_cls`` go through :func:`monai_smia.apps.demo.prepare_demo_data`;
    ``mnist_cls`` through :func:`monai_smia.apps.data_prep.mnist.prepare_mnist` (the raw folder's
    ``digits/mnist``), or the registry download when no folder is given.

    Raises:
        FileNotFoundError: ``data_dir`` lacks the bundle's raw data.
    """
    from monai_smia.apps.demo import prepare_demo_data
    from monai_smia.io.cache import source_key

    cache = Path(cache)
    if bundle != "mnist_cls":
        return prepare_demo_data(bundle, data_dir, cache)
    if data_dir is None:
        from monai_smia.apps.data_prep.download import prepare_dataset

        out = cache / "mnist_public"
        if not (out / "datalist.json").is_file():
            prepare_dataset("mnist", out, cache=cache / "downloads")
        return out, "MNIST, downloaded once into the cache"
    from monai_smia.apps.data_prep.mnist import find_mnist_files, prepare_mnist

    raw = Path(data_dir)
    find_mnist_files(raw)  # names the missing files before anything is written
    out = cache / f"mnist_{source_key(raw)}"
    if not (out / "datalist.json").is_file():
        prepare_mnist(raw, out)
    return out, f"MNIST test set from {raw} (monai_smia.apps.data_prep.mnist)"


def _case_id(item: dict[str, Any], n: int) -> str:
    if item.get("case"):
        return str(item["case"])
    name = Path(str(item.get("image", f"case{n}"))).name
    for ext in (".nii.gz", ".png", ".nii", ".jpg"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def label_slab(label: torch.Tensor, num_slices: int) -> slice:
    """The ``num_slices`` consecutive slices along the last axis holding the most foreground (the first
    such window on ties; all slices when there are not more)."""
    depth = label.shape[-1]
    if num_slices >= depth:
        return slice(0, depth)
    per_slice = (label > 0).reshape(-1, depth).sum(dim=0).double()
    windows = per_slice.unfold(0, num_slices, 1).sum(dim=1)
    start = int(windows.argmax())
    return slice(start, start + num_slices)


def _plain(t: Any) -> torch.Tensor:
    return t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)


def _slices(victim: Victim, case: str, image: torch.Tensor, label: torch.Tensor, max_slices: int | None) -> list[tuple]:
    """A volume of a slice-wise bundle as its axial slices ``(case/zNNN, (C, H, W), (1, H, W))``: the
    2D network's inputs, attacked and scored one by one (``max_slices``: the slab with the most lung)."""
    dim = int(victim.inferer.spatial_dim) + 1  # SliceInferer's spatial dim, in (C, *spatial)
    image, label = image.movedim(dim, -1), label.movedim(dim, -1)
    slab = label_slab(label, int(max_slices)) if max_slices is not None else slice(0, image.shape[-1])
    return [
        (f"{case}/z{z:03d}", image[..., z].contiguous(), label[..., z].contiguous())
        for z in range(slab.start, slab.stop)
    ]


def load_cases(
    victim: Victim, dataset_dir: str | os.PathLike, max_cases: int | None, source: str, max_slices: int | None = None
) -> BundleCases:
    """The first ``max_cases`` test cases of ``dataset_dir`` through the victim's preprocessing.

    A volume of a slice-wise bundle (``SliceInferer``) becomes its axial slices, each a case, the
    2D network's input; ``max_slices`` keeps the consecutive slices with the most labelled
    foreground (:func:`label_slab`), to bound the cost of a reproduction.

    Raises:
        ValueError: the split is empty, or an item has no label (the claims are scored against labels).
    """
    from monai.inferers import SliceInferer

    items, where = bundle_cases(victim.root, dataset_dir, "test")
    if max_cases is not None:
        items = items[: int(max_cases)]
    cases: list[tuple] = []
    for n, item in enumerate(items):
        if "label" not in item:
            raise ValueError(f"{where}: case {n} has no label; the reproduction scores attacks against labels.")
        data = victim.preprocessing(dict(item))
        image, label = _plain(data["image"]).float(), _plain(data["label"]).long()
        if victim.task == "segmentation" and isinstance(victim.inferer, SliceInferer) and image.ndim == 4:
            cases += _slices(victim, _case_id(item, n), image, label, max_slices)
        else:
            cases.append((_case_id(item, n), image, label.reshape(()) if victim.task == "classification" else label))
    ids = [c[0] for c in cases]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{where}: case ids are not unique; the paired comparison needs one id per case.")
    unit = "test cases"
    if len(cases) != len(items):
        slab = f" (the {max_slices} consecutive slices with the most lung)" if max_slices else ""
        unit = f"axial slices{slab} of {len(items)} test volumes (slices of one volume are correlated)"
    return BundleCases(
        ids=ids,
        images=[c[1] for c in cases],
        labels=[c[2] for c in cases],
        source=f"{source}; {len(ids)} {unit} from {where}",
    )
