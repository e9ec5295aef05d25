"""Training one of the shipped bundles never writes over its committed checkpoint: train.json's saver
writes under ``output_dir`` unless the user names the bundle's ``models/`` folder on purpose."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from monai.bundle import ConfigParser

BUNDLES = ("lung_ct_seg", "lung_ct_seg3d", "mnist_cls", "retina_dr_cls", "lung_tumour_det")


def _saver_target(config: dict) -> str:
    """The config key the training run saves its checkpoint to."""
    text = json.dumps(config)
    if '"save_dir": "@train_ckpt_dir"' in text:
        return "train_ckpt_dir"
    assert "@dataset_dir, @train_ckpt_path," in text, "the detector's training call must save to @train_ckpt_path"
    return "train_ckpt_path"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_training_saves_outside_the_shipped_models_folder(bundle, tmp_path):
    root = REPO_ROOT / "bundles" / bundle
    config = json.loads((root / "configs" / "train.json").read_text())
    assert '"save_dir": "@ckpt_dir"' not in json.dumps(config) and "@dataset_dir, @ckpt_path," not in json.dumps(config)
    key = _saver_target(config)
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.json"))
    parser["bundle_root"] = str(root)
    target = Path(parser.get_parsed_content(key)).resolve()
    shipped = (root / "models").resolve()
    assert target != shipped and shipped not in target.parents
    parser[key] = str(root / "models") if key == "train_ckpt_dir" else str(root / "models" / "model.pt")
    assert Path(parser.get_parsed_content(key)).resolve() in (shipped, shipped / "model.pt")  # a deliberate override
