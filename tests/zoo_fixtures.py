"""Fixture bundles in the shapes of the MONAI model zoo, written as the zoo writes them (read with the
search tool: Project-MONAI/model-zoo, models/spleen_ct_segmentation/configs/{train,evaluate,inference}.json):
``train.json`` with ``images``/``labels`` globs over ``dataset_dir`` and a ``validate`` section whose
preprocessing is ``%train#deterministic_transforms``; ``evaluate.json`` as an *override* of train.json
(``validate#...`` keys, CheckpointLoader, MetricsSaver); ``inference.json`` with a ``datalist`` glob of
``imagesTs``. Networks are tiny (seeded, untrained) so the CLI runs in seconds on a CPU; what is tested
is that an unmodified bundle of each shape runs, not how good the network is.

The data is a Medical Segmentation Decathlon task folder (``imagesTr``, ``labelsTr``, ``imagesTs``,
``dataset.json``) made from the real TotalSegmentator CTs and their spleen masks in ``../shared/data``.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser

WINDOW = {"a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1, "clip": True}  # the zoo spleen bundle's window


def decathlon_spleen(data_dir: Path, out: Path) -> Path:
    """``Task09_Spleen``-shaped folder: two labelled CTs (spleen = 1) and one test CT, with ``dataset.json``."""
    ts = data_dir / "ct" / "totalsegmentator"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    # (case, CT, TotalSegmentator mask, first slice of a 24-slice crop through the spleen)
    pairs = [
        ("spleen_1", "example_ct_sm.nii.gz", "example_seg.nii.gz", 0),
        ("spleen_2", "example_ct.nii.gz", "example_seg_v1.nii.gz", 85),
    ]
    training = []
    for name, ct, seg, z0 in pairs:
        img, lab = nib.load(str(ts / ct)), nib.load(str(ts / seg))
        crop = img.slicer[:, :, z0 : z0 + 24]  # nibabel keeps the crop's affine
        nib.save(
            nib.Nifti1Image(np.asarray(crop.dataobj).astype(np.int16), crop.affine),
            str(out / "imagesTr" / f"{name}.nii.gz"),
        )
        spleen = (np.asarray(lab.dataobj)[:, :, z0 : z0 + 24] == 1).astype(np.uint8)
        nib.save(nib.Nifti1Image(spleen, crop.affine), str(out / "labelsTr" / f"{name}.nii.gz"))
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    img = nib.load(str(ts / "example_ct_sm.nii.gz"))
    nib.save(
        nib.Nifti1Image(np.asarray(img.dataobj)[:, :, 6:30].astype(np.int16), img.affine),
        str(out / "imagesTs" / "spleen_3.nii.gz"),
    )
    meta = {
        "name": "Spleen",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "spleen"},
        "numTraining": 2,
        "numTest": 1,
        "training": training,
        "test": ["./imagesTs/spleen_3.nii.gz"],
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=4))
    return out


def _network_def() -> dict:
    return {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "channels": [4, 8],
        "strides": [2],
        "num_res_units": 1,
        "norm": "batch",
    }


def _deterministic(keys: list[str]) -> list[dict]:
    modes = ["bilinear", "nearest"][: len(keys)]
    return [
        {"_target_": "LoadImaged", "keys": keys},
        {"_target_": "EnsureChannelFirstd", "keys": keys},
        {"_target_": "Orientationd", "keys": keys, "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": keys, "pixdim": [4.5, 4.5, 4.5], "mode": modes if len(keys) > 1 else modes[0]},
        {"_target_": "ScaleIntensityRanged", "keys": "image", **WINDOW},
        {"_target_": "EnsureTyped", "keys": keys},
    ]


def _train_config() -> dict:
    return {
        "imports": ["$import glob", "$import os", "$import ignite"],
        "bundle_root": ".",
        "ckpt_dir": "$@bundle_root + '/models'",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data/Task09_Spleen",
        "images": "$list(sorted(glob.glob(@dataset_dir + '/imagesTr/*.nii.gz')))",
        "labels": "$list(sorted(glob.glob(@dataset_dir + '/labelsTr/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": _network_def(),
        "network": "$@network_def.to(@device)",
        "train": {
            "deterministic_transforms": _deterministic(["image", "label"]),
            "postprocessing": {
                "_target_": "Compose",
                "transforms": [
                    {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                    {"_target_": "AsDiscreted", "keys": ["pred", "label"], "argmax": [True, False], "to_onehot": 2},
                ],
            },
        },
        "validate": {
            "preprocessing": {"_target_": "Compose", "transforms": "%train#deterministic_transforms"},
            "dataset": {
                "_target_": "CacheDataset",
                "data": "$[{'image': i, 'label': l} for i, l in zip(@images[-1:], @labels[-1:])]",
                "transform": "@validate#preprocessing",
                "cache_rate": 1.0,
            },
            "dataloader": {"_target_": "DataLoader", "dataset": "@validate#dataset", "batch_size": 1, "shuffle": False},
            "inferer": {
                "_target_": "SlidingWindowInferer",
                "roi_size": [32, 32, 16],
                "sw_batch_size": 4,
                "overlap": 0.25,
            },
            "postprocessing": "%train#postprocessing",
            "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
            "key_metric": {
                "val_mean_dice": {
                    "_target_": "MeanDice",
                    "include_background": False,
                    "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
                }
            },
            "evaluator": {
                "_target_": "SupervisedEvaluator",
                "device": "@device",
                "val_data_loader": "@validate#dataloader",
                "network": "@network",
                "inferer": "@validate#inferer",
                "postprocessing": "@validate#postprocessing",
                "key_val_metric": "@validate#key_metric",
                "val_handlers": "@validate#handlers",
            },
        },
        "run": ["$@validate#evaluator.run()"],
    }


def _evaluate_override() -> dict:
    return {
        "validate#dataset#cache_rate": 0,
        "validate#handlers": [
            {
                "_target_": "CheckpointLoader",
                "load_path": "$@ckpt_dir + '/model.pt'",
                "load_dict": {"model": "@network"},
            },
            {"_target_": "StatsHandler", "iteration_log": False},
            {"_target_": "MetricsSaver", "save_dir": "@output_dir", "metrics": ["val_mean_dice"], "summary_ops": "*"},
        ],
        "run": ["$@validate#evaluator.run()"],
    }


def _inference_config() -> dict:
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data/Task09_Spleen",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": _network_def(),
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": _deterministic(["image"])},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 16], "sw_batch_size": 4, "overlap": 0.25},
    }


def _metadata() -> dict:
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        "version": "0.0.1",
        "changelog": {"0.0.1": "test fixture"},
        "monai_version": "1.4.0",
        "pytorch_version": "2.4.0",
        "numpy_version": "1.26.0",
        "required_packages_version": {"nibabel": "5.2.1"},
        "task": "Spleen segmentation (fixture)",
        "description": "tiny untrained UNet in the shape of the zoo's spleen_ct_segmentation",
        "authors": "monai-smia tests",
        "copyright": "Copyright (c) MONAI Consortium",
        "network_data_format": {
            "inputs": {
                "image": {"type": "image", "format": "hounsfield", "num_channels": 1, "spatial_shape": [96, 96, 96]}
            },
            "outputs": {
                "pred": {"type": "image", "format": "segmentation", "num_channels": 2, "spatial_shape": [96, 96, 96]}
            },
        },
    }


def zoo_bundle(out: Path, shape: str = "train_override") -> Path:
    """A bundle folder: ``shape`` is ``"train_override"`` (train.json + evaluate.json override + inference.json)
    or ``"inference_only"`` (inference.json alone: label-free)."""
    configs = out / "configs"
    configs.mkdir(parents=True)
    (configs / "metadata.json").write_text(json.dumps(_metadata(), indent=4))
    (configs / "inference.json").write_text(json.dumps(_inference_config(), indent=4))
    if shape == "train_override":
        (configs / "train.json").write_text(json.dumps(_train_config(), indent=4))
        (configs / "evaluate.json").write_text(json.dumps(_evaluate_override(), indent=4))
    (out / "models").mkdir()
    parser = ConfigParser({"network_def": _network_def()})
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def", instantiate=True)
    torch.save(net.state_dict(), out / "models" / "model.pt")
    return out


def without_data_keys(bundle: Path) -> Path:
    """The Decathlon-fed shape: drop ``validate#dataset`` from train.json and the evaluate.json override
    that refers to it, so the bundle's cases come from the data folder's ``dataset.json``."""
    drops = {
        "train.json": lambda c: c["validate"].pop("dataset"),
        "evaluate.json": lambda c: c.pop("validate#dataset#cache_rate"),
    }
    for name, drop in drops.items():
        path = bundle / "configs" / name
        config = json.loads(path.read_text())
        drop(config)
        path.write_text(json.dumps(config))
    return bundle
