"""The detection victim's training recipe (monai_smia.apps.detection.training): anchors fitted to the boxes,
box-aware zoom and intensity augmentation, the learning-rate schedule, and a short real training run whose
checkpoint loads with ``weights_only=True`` and matches the EMA weights it validated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_smia.apps.data_prep.msd_lung_det import prepare_msd_lung_det
from monai_smia.apps.detection import retinanet_detector, retinanet_network
from monai_smia.apps.detection.data import DetectionSet
from monai_smia.apps.detection.training import (
    augmented_batch,
    box_augmentation,
    fit_anchor_shapes,
    train_detector,
    warmup_cosine,
)

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "lung_tumour_det"


def _boxes_of_sizes(sizes: list[tuple[float, float]], copies: int) -> np.ndarray:
    wh = np.repeat(np.asarray(sizes, dtype=np.float64), copies, axis=0)
    origin = np.full_like(wh, 3.0)
    return np.concatenate([origin, origin + wh], axis=1)


def test_fit_anchor_shapes_finds_the_size_clusters():
    boxes = _boxes_of_sizes([(4, 4), (10, 10), (20, 16)], copies=5)
    assert fit_anchor_shapes(boxes, k=3) == [[4.0, 4.0], [10.0, 10.0], [20.0, 16.0]]  # sorted by area
    assert fit_anchor_shapes(boxes, k=1) == [[10.0, 10.0]]  # the median box of all
    with pytest.raises(ValueError, match="at least k=3"):
        fit_anchor_shapes(boxes[:2], k=3)


def test_bundle_anchors_are_the_fit_on_its_training_boxes(data_dir, tmp_path):
    """train.json and inference.json carry the k-means anchors of the training split (the same detector)."""
    if not (data_dir / "ct" / "msd_lung_patches" / "val_patches.h5").is_file():
        pytest.skip(f"ct/msd_lung_patches is absent under {data_dir}")
    datalist = json.loads(prepare_msd_lung_det(data_dir, tmp_path / "det").read_text())
    boxes = np.asarray([b for item in datalist["training"] for b in item["box"]], dtype=np.float64)
    fitted = fit_anchor_shapes(boxes, k=3)
    for name in ("train.json", "inference.json"):
        config = json.loads((BUNDLE / "configs" / name).read_text())
        assert config["detector"]["base_anchor_shapes"] == [[round(v) for v in s] for s in fitted], name


def test_warmup_then_cosine():
    f = warmup_cosine(4, 20)
    assert [f(e) for e in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert f(4) == pytest.approx(1.0) and f(12) == pytest.approx(0.5) and f(20) == pytest.approx(0.0)
    assert all(f(e) >= f(e + 1) for e in range(4, 20))
    assert warmup_cosine(0, 10)(0) == pytest.approx(1.0)


def test_zoom_augmentation_moves_boxes_with_the_image():
    """A bright square's box follows it through the random zoom: every augmented box still encloses the
    square's pixels (brighter than anything outside it), and stays inside the image."""
    img = torch.zeros(1, 48, 48)
    img[0, 14:30, 18:28] = 1.0
    data = DetectionSet(img[None], [torch.tensor([[14.0, 18.0, 30.0, 28.0]])], [torch.tensor([0])], ["c"])
    transform, gen = box_augmentation(zoom=(0.7, 1.4), prob=1.0, seed=3), torch.Generator().manual_seed(0)
    sizes = set()
    for _ in range(12):
        images, targets = augmented_batch(data, torch.tensor([0]), gen, transform)
        box = targets[0]["boxes"]
        assert images.shape == (1, 1, 48, 48) and box.shape == (1, 4) and targets[0]["labels"].tolist() == [0]
        assert bool((box[:, :2] >= 0).all()) and bool((box[:, 2:] <= 48).all())
        x1, y1, x2, y2 = box[0].round().long().tolist()
        inside = images[0, 0, x1:x2, y1:y2]
        outside = images[0, 0].clone()
        outside[max(x1 - 1, 0) : x2 + 1, max(y1 - 1, 0) : y2 + 1] = float("-inf")
        assert float(inside.median()) > float(outside.max())  # the box sits on the square
        sizes.add((x2 - x1, y2 - y1))
    assert len(sizes) > 3  # the zoom changed the box size


def test_short_training_saves_the_ema_weights_it_validated(data_dir, tmp_path):
    if not (data_dir / "ct" / "msd_lung_patches" / "val_patches.h5").is_file():
        pytest.skip(f"ct/msd_lung_patches is absent under {data_dir}")
    dataset = prepare_msd_lung_det(data_dir, tmp_path / "det").parent
    torch.manual_seed(0)
    net = retinanet_network(block_inplanes=(4, 8, 8, 8), fpn_channels=8)
    detector = retinanet_detector(net, base_anchor_shapes=((6, 6), (9, 9), (17, 16)))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = train_detector(
        detector, dataset, tmp_path / "m" / "model.pt", max_epochs=2, batch_size=32, val_interval=1,
        num_threads=1, augment=True, ema_decay=0.5, warmup_epochs=1, weight_decay=1e-4,
    )  # fmt: skip
    assert result["epochs_run"] == 2 and result["best_epoch"] in (1, 2)
    assert set(result["val"]) >= {"ap_iou_0.1", "ap_iou_0.5", "coco_map"}
    saved = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    assert set(saved) == set(before)
    trained = net.state_dict()
    conv = next(k for k in saved if k.endswith("weight") and saved[k].ndim == 4)
    assert not torch.equal(saved[conv], before[conv])  # trained
    if result["best_epoch"] == 2:  # the EMA (decay 0.5) lags the raw weights: what was saved is the average
        assert not torch.equal(saved[conv], trained[conv])
