"""Every bundle under ``bundles/``: MONAI bundle layout, ``verify_metadata`` against the pinned schema, and
``verify_net_in_out`` on the network of its ``inference.json``.

The schema is read offline from ``../shared/monai/meta_schema_20240725.json`` (or ``$MONAI_SMIA_SCHEMA``);
the metadata tests skip with a reason when it is absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = (
    sorted(p for p in (ROOT / "bundles").iterdir() if (p / "configs").is_dir()) if (ROOT / "bundles").is_dir() else []
)
SCHEMA = Path(os.environ.get("MONAI_SMIA_SCHEMA", ROOT / ".." / "shared" / "monai" / "meta_schema_20240725.json"))
REQUIRED = (
    "configs/metadata.json",
    "configs/train.json",
    "configs/inference.json",
    "configs/logging.conf",
    "docs/README.md",
    "LICENSE",
)
MAX_MODEL_BYTES = 10 * 1024 * 1024

pytestmark = pytest.mark.skipif(not BUNDLES, reason="no bundles/ folder with configs yet")


def _is_detection(bundle: Path) -> bool:
    from monai_smia.bundle.victim import task_from_metadata

    return task_from_metadata(json.loads((bundle / "configs" / "metadata.json").read_text()))[0] == "detection"


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_bundle_layout_and_checkpoint(bundle: Path):
    missing = [f for f in REQUIRED if not (bundle / f).is_file()]
    assert not missing, f"{bundle.name} lacks {missing}"
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta.get("schema", "").endswith("meta_schema_20240725.json")
    assert meta.get("eval_metrics"), f"{bundle.name}: metadata.json has no eval_metrics"
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    runner = "detector" if _is_detection(bundle) else "inferer"  # a RetinaNetDetector holds its own inferer
    for key in ("bundle_root", "device", "network_def", runner, "output_dir"):
        assert key in inference, f"{bundle.name}/configs/inference.json lacks {key!r}"
    model = bundle / "models" / "model.pt"
    assert model.is_file(), f"{bundle.name}: no committed models/model.pt"
    assert model.stat().st_size <= MAX_MODEL_BYTES, f"{model} is {model.stat().st_size} bytes (> 10 MB)"
    state = torch.load(model, map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and state, f"{model} is not a state dict"


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_verify_metadata(bundle: Path):
    pytest.importorskip("jsonschema", reason="verify_metadata needs jsonschema")
    if not SCHEMA.is_file():
        pytest.skip(f"metadata schema {SCHEMA} not found (offline copy of meta_schema_20240725.json)")
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(SCHEMA))


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_verify_net_in_out(bundle: Path):
    from monai.bundle import verify_net_in_out

    if _is_detection(bundle):
        pytest.skip(
            "verify_net_in_out compares one output tensor; a RetinaNet returns head dicts (tested in "
            "test_detection_data.py)"
        )

    verify_net_in_out(
        net_id="network_def",
        meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=str(bundle / "configs" / "inference.json"),
        device="cpu",
        bundle_root=str(bundle),
    )


def test_verify_net_in_out_catches_a_wrong_channel_count(tmp_path):
    """The check above can fail: a metadata file that promises the wrong number of output channels is refused."""
    bundle = BUNDLES[0]
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    outputs = meta["network_data_format"]["outputs"]
    first = next(iter(outputs))
    outputs[first]["num_channels"] = int(outputs[first]["num_channels"]) + 3
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    from monai.bundle import verify_net_in_out

    with pytest.raises(ValueError, match="output channel number"):
        verify_net_in_out(
            net_id="network_def", meta_file=str(bad), config_file=str(bundle / "configs" / "inference.json"),
            device="cpu", bundle_root=str(bundle),
        )  # fmt: skip
