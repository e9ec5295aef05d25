"""Detection data: MSD lung-tumour patches -> one box per connected component (real data), the EAD-2019
detection layout (a synthetic manual download), and the committed lung_tumour_det checkpoint re-measured
against metadata.json eval_metrics (real data; skipped with a reason when ../shared/data is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from monai_smia.apps.data_prep.msd_lung_det import mask_to_boxes, prepare_msd_lung_det
from monai_smia.apps.detection.data import check_boxes, load_detection_split

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


@pytest.mark.slow
def test_committed_checkpoint_matches_eval_metrics(det_dataset, tmp_path):
    import torch

    from monai_smia.apps.detection.evaluate import run_detection_evaluation

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


def _bundle_run(dataset: Path, out: Path, attack: str, max_cases: int, batch_size: int, nproc: int = 1) -> dict:
    """One detection condition through ``python -m monai.bundle run`` with train.json + the evaluate.json
    override (+ multi_gpu_evaluate.json under torchrun, gloo on CPUs); returns the stored records by case."""
    import subprocess
    import sys

    from conftest import subprocess_env

    files = ["train.json", "evaluate.json", *(["multi_gpu_evaluate.json"] if nproc > 1 else [])]
    configs = "[" + ",".join(f"'{BUNDLE}/configs/{f}'" for f in files) + "]"
    args = [
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        configs,
        "--bundle_root",
        str(BUNDLE),
        "--dataset_dir",
        str(dataset),
        "--output_dir",
        str(out),
        "--attack",
        attack,
        "--max_cases",
        str(max_cases),
        "--batch_size",
        str(batch_size),
    ]
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            "29547",
            *args,
        ]
    else:
        cmd = [sys.executable, *args, "--device", "$torch.device('cpu')"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {
        json.loads(p.read_text())["case_id"]: json.loads(p.read_text())
        for p in (out / "cases" / attack).glob("*/*.json")
    }


def test_multi_gpu_evaluate_json_splits_cases_as_the_other_bundles():
    """The detection multi_gpu_evaluate.json is the other bundles' override: the DistributedSampler entries
    (every case once across ranks, no padding), process group set up and torn down; it also loads the weights."""
    from monai_smia.apps.evaluate.wiring import distributed_overrides

    det = json.loads((BUNDLE / "configs" / "multi_gpu_evaluate.json").read_text())
    seg = json.loads((ROOT / "bundles" / "lung_ct_seg" / "configs" / "multi_gpu_evaluate.json").read_text())
    assert {k: det[k] for k in distributed_overrides("validate")} == distributed_overrides("validate")
    assert {k: seg[k] for k in distributed_overrides("validate")} == distributed_overrides("validate")
    assert det["device"] == seg["device"] and det["finalize"] == seg["finalize"]
    assert det["initialize"] == seg["initialize"] + ["@load_weights"]


def _assert_records_close(got: dict, want: dict) -> None:
    assert set(got) == set(want) and got["case_id"] == want["case_id"]
    for key, value in want.items():
        if key not in ("case_id", "attack", "eps"):
            np.testing.assert_allclose(
                np.asarray(got[key], dtype=float), np.asarray(value, dtype=float), atol=1e-5, err_msg=key
            )


@pytest.mark.slow
def test_evaluate_json_is_an_evaluator_override(det_dataset, tmp_path):
    """evaluate.json overrides train.json's validate section: one condition runs through MONAI's
    SupervisedEvaluator; its records equal the attack and detector called directly; random starts are
    seeded per case (the same records at another batch size, and from two torchrun processes); a rerun resumes."""
    import torch

    from monai_smia.apps.detection import detect, make_detection_attack
    from monai_smia.apps.detection.engine import detection_record
    from monai_smia.apps.detection.evaluate import load_detection_bundle

    _, dataset = det_dataset
    fgsm = _bundle_run(dataset, tmp_path / "a", "FGSM", 5, 2)
    detector, defaults = load_detection_bundle(BUNDLE)
    data = load_detection_split(dataset, "test")
    attack = make_detection_attack("FGSM", detector, defaults["eps"], defaults["num_iter"], allow_empty_boxes=True)
    x_adv = attack(data.images[:5], data.boxes[:5], data.labels[:5])
    for i, pred in enumerate(detect(detector, x_adv)):
        want = detection_record(data.case_ids[i], "FGSM", defaults["eps"], pred, data.boxes[i], data.labels[i])
        _assert_records_close(fgsm[data.case_ids[i]], json.loads(json.dumps(want)))
    assert len(fgsm) == 5 and not torch.equal(x_adv, data.images[:5])
    pgd_small = _bundle_run(dataset, tmp_path / "b", "PGD", 5, 2)
    pgd_large = _bundle_run(dataset, tmp_path / "c", "PGD", 5, 5, nproc=2)
    assert sorted(pgd_small) == sorted(pgd_large)
    for case, rec in pgd_small.items():  # same random start per case whatever the batch or the rank
        _assert_records_close(pgd_large[case], rec)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "a").rglob("*.json")}
    assert _bundle_run(dataset, tmp_path / "a", "FGSM", 5, 2) == fgsm  # rerun: nothing pending, nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "a").rglob("*.json")} == stamps


@pytest.mark.parametrize("case", ["hostile", "attack"])
def test_detection_evaluate_bad_input(case, tmp_path, capsys):
    """A hostile checkpoint or an unknown attack: exit 2, one line naming it, nothing written, nothing run."""
    import os
    import pickle
    import shutil

    from monai_smia.cli import main

    bundle = tmp_path / "lung_tumour_det"
    shutil.copytree(BUNDLE, bundle)

    class Hostile:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    if case == "hostile":
        (bundle / "models" / "model.pt").write_bytes(pickle.dumps(Hostile()))
    before = {p: p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    (tmp_path / "data").mkdir()
    args = [
        "evaluate",
        "--bundle",
        str(bundle),
        "--dataset-dir",
        str(tmp_path / "data"),
        "--output",
        str(tmp_path / "out"),
    ]
    assert main([*args, *(["--attacks", "BIM"] if case == "attack" else [])]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert ("not a plain state dict" in err[0] and "model.pt" in err[0]) if case == "hostile" else "'BIM'" in err[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "PWNED").exists()
    assert {p: p.read_bytes() for p in bundle.rglob("*") if p.is_file()} == before


def test_a_class_index_out_of_range_is_named_before_anything_is_written(det_dataset, tmp_path, capsys):
    """A datalist box label the detector has no class for: one line naming the case and the field, exit 2, no output
    (it used to surface as an IndexError deep inside the detector's loss)."""
    import json
    import shutil

    from monai_smia.cli import main

    data = shutil.copytree(det_dataset[1], tmp_path / "data")
    meta = json.loads((data / "datalist.json").read_text())
    meta["test"][0]["label"] = [3] * len(meta["test"][0]["label"])
    (data / "datalist.json").write_text(json.dumps(meta))
    out = tmp_path / "out"
    args = ["evaluate", "--bundle", str(BUNDLE), "--dataset-dir", str(data), "--output", str(out), "--attacks", "FGSM"]
    assert main([*args, "--max-cases", "2"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("monai-smia evaluate: error:")]
    assert len(err) == 1 and "test[0]" in err[0] and "field 'label' holds classes [3" in err[0], err
    assert not out.exists()
