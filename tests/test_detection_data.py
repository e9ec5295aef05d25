"""Detection data: MSD lung-tumour patches -> one box per connected component (real data), the EAD-2019
detection layout (a synthetic manual download), and the committed lung_tumour_det checkpoint re-measured
against metadata.json eval_metrics (real data; skipped with a reason when ../shared/data is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from monai_smia.apps.data_prep.msd_lung_det import mask_to_boxes, prepare_msd_lung_det
from monai_smia.detection.data import check_boxes, load_detection_split

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "lung_tumour_det"


@pytest.fixture(scope="module")
def det_dataset(data_dir, tmp_path_factory):
    if not (data_dir / "ct" / "msd_lung_patches" / "val_patches.h5").is_file():
        pytest.skip(f"ct/msd_lung_patches is absent under {data_dir}")
    out = tmp_path_factory.mktemp("det") / "lung_tumour_det"
    prepare_msd_lung_det(data_dir, out)
    return data_dir, out


def test_mask_to_boxes_components():
    m = np.zeros((10, 12), np.uint8)
    m[1:3, 2:5] = 1
    m[6, 9] = 1
    m[7, 10] = 1  # diagonal neighbour: same component
    assert mask_to_boxes(m).tolist() == [[1, 2, 3, 5], [6, 9, 8, 11]]
    assert mask_to_boxes(np.zeros((4, 4))).shape == (0, 4)


def test_msd_conversion_boxes_match_masks(det_dataset):
    import h5py

    data_dir, out = det_dataset
    meta = json.loads((out / "datalist.json").read_text())
    assert meta["box_mode"] == "xyxy" and meta["label_names"] == ["tumour"]
    assert (len(meta["training"]), len(meta["validation"]), len(meta["test"])) == (104, 26, 130)
    assert {i["source"] for i in meta["training"] + meta["validation"]} == {"val"}
    train_ids = {i["index"] for i in meta["training"]}
    assert not train_ids & {i["index"] for i in meta["validation"]}
    with h5py.File(data_dir / "ct" / "msd_lung_patches" / "test_patches.h5") as f:
        images, labels = np.asarray(f["images"]), np.asarray(f["labels"])
    test = load_detection_split(out, "test")
    assert np.array_equal(test.images.numpy(), images)  # float 0..1 kept bit for bit
    for lab, boxes in zip(labels, test.boxes):
        assert boxes.numpy().tolist() == mask_to_boxes(lab[0]).tolist()
    assert sum(len(b) for b in test.boxes) == 127 and sum(len(b) == 0 for b in test.boxes) == 13


def test_datalist_errors_name_case_and_field():
    with pytest.raises(ValueError, match="case7: field 'box' has a box outside the image"):
        check_boxes([[0, 0, 49, 10]], [0], (48, 48), "case7")
    with pytest.raises(ValueError, match="case7: field 'label' must hold one integer class per box"):
        check_boxes([[0, 0, 4, 10]], [0, 1], (48, 48), "case7")
    with pytest.raises(ValueError, match="case7: box_mode 'yxyx'"):
        check_boxes([[0, 0, 4, 10]], [0], (48, 48), "case7", box_mode="yxyx")


def test_ead2019_detection_layout(tmp_path):
    from PIL import Image

    from monai_smia.apps.data_prep.download import prepare_dataset

    manual = tmp_path / "ead"
    (manual / "images").mkdir(parents=True)
    (manual / "masks").mkdir()
    for n in range(3):
        Image.fromarray(np.full((16, 20, 3), 40 * n, np.uint8)).save(manual / "images" / f"f{n}.jpg")
        pages = [np.zeros((16, 20), np.uint8) for _ in range(5)]
        pages[1][2:5, 3:9] = 255
        pages[4][10:12, 15:18] = 255
        pil = [Image.fromarray(p) for p in pages]
        pil[0].save(manual / "masks" / f"f{n}.tif", save_all=True, append_images=pil[1:])
    path = prepare_dataset("ead2019_det", tmp_path / "out", manual_dir=manual)
    meta = json.loads(path.read_text())
    assert meta["box_mode"] == "xyxy" and meta["label_names"][1] == "specularity"
    items = meta["training"] + meta["validation"] + meta["test"]
    assert len(items) == 3 and all(i["box"] == [[2, 3, 5, 9], [10, 15, 12, 18]] and i["label"] == [1, 4] for i in items)


def test_committed_checkpoint_matches_eval_metrics(det_dataset, tmp_path):
    import torch

    from monai_smia.apps.detection_eval import run_detection_evaluation

    _, out = det_dataset
    model = BUNDLE / "models" / "model.pt"
    assert model.stat().st_size < 10 * 2**20
    torch.load(model, weights_only=True)
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["eval_metrics"]
    summary = run_detection_evaluation(BUNDLE, out, tmp_path / "eval", attacks=[], num_figure_cases=0, num_resamples=10)
    for key in ("ap_iou_0.1", "ap_iou_0.5", "coco_map", "mean_iou_matched"):
        assert summary["clean"][key] == pytest.approx(meta[f"test_{key}"], abs=2e-3), key
        assert summary["centre_box"][key] == pytest.approx(meta[f"baseline_{key}"], abs=2e-3), key
    assert summary["clean"]["ap_iou_0.5"] > summary["centre_box"]["ap_iou_0.5"]
