"""Loading a bundle's victim: the overrides a run sets (bundle root, data folder, device) reach every
section it instantiates, including the label-free path through ``inference.json``."""

from __future__ import annotations

import json

import torch

from monai_smia.bundle.victim import load_victim
from zoo_fixtures import zoo_bundle


def test_label_free_victim_keeps_the_run_overrides(tmp_path, monkeypatch):
    bundle = zoo_bundle(tmp_path / "infer_only", shape="inference_only")
    (bundle / "models" / "offset.txt").write_text("7.0")
    path = bundle / "configs" / "inference.json"
    config = json.loads(path.read_text())
    config["device"] = "$torch.device('meta')"  # the bundle's own default; the run asks for the CPU
    config["preprocessing"] = {
        "_target_": "Compose",
        "transforms": [
            {
                "_target_": "ShiftIntensityd",
                "keys": "image",
                "offset": "$float(open(@bundle_root + '/models/offset.txt').read())",
            },
            {"_target_": "ToDeviced", "keys": "image", "device": "@device"},
        ],
    }
    path.write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)  # "." (the bundle's default root) is not the bundle
    victim = load_victim(bundle, dataset_dir=tmp_path / "data", device="cpu", labels=False)
    assert not victim.has_labels and victim.config["dataset_dir"] == str(tmp_path / "data")
    out = victim.preprocessing({"image": torch.zeros(1, 4, 4, 4)})["image"]
    assert out.device == torch.device("cpu") and torch.equal(out, torch.full((1, 4, 4, 4), 7.0))
