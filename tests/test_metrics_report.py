"""Reporting layer: perturbation statistics, attack success, bootstrap intervals, reports, resume, figures."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.metrics import ConfusionMatrixMetric, PSNRMetric, ROCAUCMetric

from monai_smia import metrics as M
from monai_smia import reports as R
from monai_smia.reports.figures import case_figure, robustness_curve_figure, trace_curves_figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path) -> None:
    from PIL import Image

    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        im.verify()
    assert not list(path.parent.glob(f".{path.name}.*")), "temporary file left behind"


def _drawn(monkeypatch) -> list:
    """Capture every figure the reports module saves (it is still written), to check what was drawn."""
    from monai_smia.reports import figures

    seen, save = [], figures.save_figure
    monkeypatch.setattr(figures, "save_figure", lambda fig, path, **kw: (seen.append(fig), save(fig, path, **kw))[1])
    return seen


def _split_perturbation(shape: tuple[int, ...], size: float) -> torch.Tensor:
    """+size on the first half of rows, -size on the second half (mean 0, variance size**2)."""
    d = torch.full(shape, size, dtype=torch.float64)
    d[..., shape[-2] // 2 :, :] = -size
    return d


# ------------------------------------------------------------------ perturbation statistics


def test_perturbation_statistics_on_constructed_perturbation():
    x = torch.rand(3, 2, 16, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    d = _split_perturbation(x.shape, 0.1)
    n = 2 * 16 * 20
    stats = M.perturbation_statistics(x, x + d)
    np.testing.assert_allclose(stats["linf"].numpy(), 0.1, rtol=1e-12)
    np.testing.assert_allclose(stats["l2"].numpy(), 0.1 * math.sqrt(n), rtol=1e-12)
    np.testing.assert_allclose(stats["var"].numpy(), 0.01, rtol=1e-10)
    # the mask keeps only the +0.1 half: no spread left, L2 over half the elements
    mask = torch.zeros(3, 1, 16, 20)
    mask[..., :8, :] = 1
    masked = M.perturbation_statistics(x, x + d, mask)
    np.testing.assert_allclose(masked["var"].numpy(), 0.0, atol=1e-15)
    np.testing.assert_allclose(masked["l2"].numpy(), 0.1 * math.sqrt(n / 2), rtol=1e-12)
    # a constant shift has zero variance but a nonzero norm
    shifted = M.perturbation_statistics(x, x + 0.05)
    np.testing.assert_allclose(shifted["var"].numpy(), 0.0, atol=1e-15)
    np.testing.assert_allclose(shifted["linf"].numpy(), 0.05, rtol=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        M.perturbation_statistics(x, x[:, :1])


def test_psnr_ssim_identical_and_known_mse():
    x = torch.rand(2, 1, 24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.isinf(M.psnr_per_case(x, x, bounds=(0.0, 1.0))).all()
    np.testing.assert_allclose(M.ssim_per_case(x, x, bounds=(0.0, 1.0)).numpy(), 1.0, rtol=1e-6)
    d = _split_perturbation(x.shape, 0.1)  # MSE 0.01 with range 1 -> 20 dB
    psnr = M.psnr_per_case(x, x + d, bounds=(0.0, 1.0))
    np.testing.assert_allclose(psnr.numpy(), 20.0, rtol=1e-9)
    np.testing.assert_allclose(psnr.numpy(), PSNRMetric(1.0, reduction="none")(x + d, x).reshape(-1).numpy())
    # range 2 -> +6.02 dB; range from the clean image when no bounds are given
    np.testing.assert_allclose(M.psnr_per_case(x, x + d, data_range=2.0).numpy(), 20.0 + 20 * math.log10(2), rtol=1e-9)
    per_image_range = (x.reshape(2, -1).amax(1) - x.reshape(2, -1).amin(1)).numpy()
    np.testing.assert_allclose(M.psnr_per_case(x, x + d).numpy(), 20.0 + 20 * np.log10(per_image_range), rtol=1e-9)
    small, large = (M.ssim_per_case(x, x + s * d / 0.1, bounds=(0.0, 1.0)) for s in (0.01, 0.1))
    assert (large < small).all() and (small < 1).all()


def test_ssim_3d_thin_volumes():
    v = torch.rand(1, 1, 20, 20, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    val = M.ssim_per_case(v, v + 0.02, bounds=(0.0, 1.0))
    assert 0.9 < float(val) < 1.0  # window shrunk to fit 5 slices
    assert torch.isnan(M.ssim_per_case(v[..., :2], v[..., :2] + 0.02)).all()


def test_perturbation_metric_accumulates_like_per_case():
    g = torch.Generator().manual_seed(3)
    x1, x2 = torch.rand(2, 1, 8, 8, generator=g), torch.rand(3, 1, 8, 8, generator=g)
    a1, a2 = x1 + 0.1 * torch.randn(x1.shape, generator=g), x2 + 0.2 * torch.randn(x2.shape, generator=g)
    for stat in M.PERTURBATION_STATISTICS:
        metric = M.PerturbationMetric(stat, reduction="none")
        metric(a1, x1)
        metric(a2, x2)
        expected = torch.cat([M.perturbation_statistics(x1, a1)[stat], M.perturbation_statistics(x2, a2)[stat]])
        torch.testing.assert_close(metric.aggregate().reshape(-1), expected)
        assert float(metric.aggregate("mean")) == pytest.approx(float(expected.mean()), rel=1e-6)
    with pytest.raises(ValueError, match="statistic"):
        M.PerturbationMetric("l1")


# ------------------------------------------------------------------ task metrics


def test_top1_is_ignite_accuracy_not_one_vs_rest_accuracy():
    from ignite.metrics import Accuracy

    g = torch.Generator().manual_seed(4)
    logits, y = torch.randn(60, 5, generator=g), torch.randint(0, 5, (60,), generator=g)
    acc = Accuracy()
    acc.update((logits, y))
    assert M.top1_accuracy(logits, y) == pytest.approx(acc.compute())
    cm = ConfusionMatrixMetric(metric_name="accuracy", reduction="mean")
    cm(torch.eye(5)[logits.argmax(1)], torch.eye(5)[y])
    assert float(cm.aggregate()[0]) > M.top1_accuracy(logits, y) + 0.1  # one-vs-rest reads higher
    # labels as (B, 1) and one-hot give the same; one channel is thresholded at 0
    assert M.top1_accuracy(logits, y[:, None]) == M.top1_accuracy(logits, torch.eye(5)[y])
    np.testing.assert_array_equal(
        M.top1_correct(torch.tensor([[2.0], [-1.0], [0.5]]), torch.tensor([1, 1, 0])), [1, 0, 0]
    )


def test_fpr_and_auc_match_monai_and_their_resampled_forms():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(80, 4, generator=g).round(decimals=1)  # ties on purpose
    y = torch.randint(0, 4, (80,), generator=g)
    fpr, per_class = M.one_vs_rest_fpr(logits, y)
    cm = ConfusionMatrixMetric(metric_name="fpr", reduction="sum_batch")
    cm(torch.eye(4)[logits.argmax(1)], torch.eye(4)[y])
    np.testing.assert_allclose(per_class, cm.aggregate()[0].numpy(), rtol=1e-6)
    assert fpr == pytest.approx(per_class.mean())
    auc = ROCAUCMetric()
    auc(torch.softmax(logits, 1), torch.eye(4)[y])
    assert M.roc_auc_one_vs_rest(logits, y) == pytest.approx(auc.aggregate())
    idx = M.bootstrap_indices(80, 15, seed=1)
    np.testing.assert_allclose(
        M.resampled_roc_auc_one_vs_rest(logits, y, idx),
        [M.roc_auc_one_vs_rest(logits[i], y[i]) for i in idx],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        M.resampled_one_vs_rest_fpr(logits, y, idx), [M.one_vs_rest_fpr(logits[i], y[i])[0] for i in idx], rtol=1e-6
    )


def test_segmentation_case_metrics_hand_computed():
    label = torch.zeros(1, 1, 10, 10, dtype=torch.long)
    label[..., 2:6, 2:6] = 1  # 16 foreground pixels
    pred_map = torch.zeros(1, 10, 10, dtype=torch.long)
    pred_map[:, 2:4, 2:6] = 1  # 8 of them found, no false positive
    logits = torch.stack([1 - pred_map, pred_map], dim=1).float()
    out = M.segmentation_case_metrics(logits, label)
    assert out["dice"][0] == pytest.approx(2 * 8 / (16 + 8))
    assert out["iou"][0] == pytest.approx(8 / 16)
    assert out["pixel_accuracy"][0] == pytest.approx(1 - 8 / 100)
    binary = M.segmentation_case_metrics((pred_map[:, None].float() - 0.5), label)  # one-channel logits
    assert binary["dice"][0] == pytest.approx(out["dice"][0])
    with_bg = M.segmentation_case_metrics(logits, label, include_background=True)
    assert with_bg["dice"][0] > out["dice"][0]


def test_attack_success_definitions():
    # clean correct -> flipped counts 1, kept 0; clean wrong -> not counted
    s = M.classification_attack_success([0, 1, 2, 3], [1, 1, 0, 3], [0, 1, 0, 3])
    np.testing.assert_array_equal(s[[0, 1, 3]], [1.0, 0.0, 0.0])
    assert np.isnan(s[2])
    assert M.success_rate(s) == pytest.approx(1 / 3)
    seg = M.segmentation_attack_success([0.8, 0.8, 0.0, np.nan, 0.6], [0.39, 0.41, 0.0, 0.2, 0.1])
    np.testing.assert_array_equal(seg[[0, 1, 4]], [1.0, 0.0, 1.0])
    assert np.isnan(seg[2]) and np.isnan(seg[3])
    assert math.isnan(M.success_rate([np.nan, np.nan]))
    with pytest.raises(ValueError, match="one entry per case"):
        M.classification_attack_success([0, 1], [0], [0, 1])


# ------------------------------------------------------------------ bootstrap


def test_bootstrap_interval_contains_mean_shrinks_and_handles_nan():
    rng = np.random.default_rng(0)
    few, many = rng.normal(0.7, 0.1, 30), rng.normal(0.7, 0.1, 1000)
    lo_f, hi_f = M.bootstrap_ci(few)
    lo_m, hi_m = M.bootstrap_ci(many)
    assert lo_f < few.mean() < hi_f and lo_m < many.mean() < hi_m
    assert (hi_m - lo_m) < 0.4 * (hi_f - lo_f)
    assert M.bootstrap_ci(few, seed=3) == M.bootstrap_ci(few, seed=3)
    with_nan = np.concatenate([few, [np.nan] * 10])
    assert M.bootstrap_ci(with_nan) == M.bootstrap_ci(few)
    assert all(math.isnan(v) for v in M.bootstrap_ci([np.nan, np.nan]))
    wider = M.bootstrap_ci(few, confidence=0.99)
    assert wider[0] <= lo_f and wider[1] >= hi_f
    with pytest.raises(ValueError, match="confidence"):
        M.bootstrap_ci(few, confidence=95)


# ------------------------------------------------------------------ reports


def _records() -> list[dict]:
    rng = np.random.default_rng(1)
    recs = []
    for i in range(12):
        label = int(i % 3)
        clean_logits = rng.normal(size=3)
        clean_logits[label] += 2.0
        adv_logits = clean_logits.copy()
        adv_logits[label] -= 3.0 if i % 2 else 0.0
        recs.append({"case_id": f"c{i}", "attack": "clean", "eps": None, "top1": float(clean_logits.argmax() == label),
                     "label": label, "logits": clean_logits.tolist()})  # fmt: skip
        recs.append(
            {
                "case_id": f"c{i}",
                "attack": "SMIA",
                "eps": 0.1,
                "top1": float(adv_logits.argmax() == label),
                "linf": 0.1,
                "psnr": math.inf if i == 0 else 30.0 + i,
                "label": label,
                "logits": adv_logits.tolist(),
            }
        )
    return recs


def test_reports_written_and_readable(tmp_path: Path):
    recs = _records()
    out = R.write_reports(
        tmp_path,
        recs,
        set_metrics=R.classification_set_metrics(),
        headline=["top1", "roc_auc_one_vs_rest"],
        num_resamples=200,
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary) == ["clean", "SMIA"]
    clean_top1 = np.mean([r["top1"] for r in recs if r["attack"] == "clean"])
    assert summary["clean"]["top1"] == pytest.approx(clean_top1)
    lo, hi = summary["clean"]["top1_ci95"]
    assert lo <= clean_top1 <= hi
    assert summary["SMIA"]["top1"] < summary["clean"]["top1"]
    # one identical case gives inf: left out of the mean (PSNR is undefined there) and counted
    assert summary["SMIA"]["psnr"] == pytest.approx(np.mean([30.0 + i for i in range(1, 12)]))
    assert summary["SMIA"]["psnr_unperturbed_cases"] == 1
    assert 0 <= summary["clean"]["roc_auc_one_vs_rest"] <= 1 and "fpr_one_vs_rest_ci95" in summary["SMIA"]
    assert summary["clean"]["num_cases"] == 12 and "linf" not in summary["clean"]
    md = (tmp_path / "summary.md").read_text().splitlines()
    assert len(md) == 4 and md[2].startswith("| clean | 12 |") and md[3].startswith("| SMIA | 12 |")
    assert f"{summary['clean']['top1']:.3f} [{lo:.3f}, {hi:.3f}]" in md[2]
    rows = R.read_per_case_csv(tmp_path / "per_case.csv")
    assert len(rows) == len(recs) and rows[1]["attack"] == "SMIA" and math.isinf(rows[1]["psnr"])
    with (tmp_path / "per_case.csv").open() as f:
        assert next(csv.reader(f))[:3] == ["case_id", "attack", "eps"]
    assert out["summary"]["SMIA"]["top1"] == summary["SMIA"]["top1"]


def test_provenance(tmp_path: Path):
    ckpt = tmp_path / "model.pt"
    torch.save({"w": torch.arange(5)}, ckpt)
    path = R.write_provenance(
        tmp_path / "provenance.json",
        seed=7,
        checkpoint=ckpt,
        data_source="RetinaMNIST test split",
        attack_settings={"SMIA": {"eps": 1 / 255}},
        command_line=["monai-smia", "evaluate"],
    )
    prov = json.loads(path.read_text())
    assert prov["checkpoint"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert prov["seed"] == 7 and prov["versions"]["torch"] == torch.__version__
    assert {"monai_smia", "monai", "numpy", "python"} <= set(prov["versions"])
    assert prov["attack_settings"]["SMIA"]["eps"] == pytest.approx(1 / 255)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        R.collect_provenance(checkpoint=tmp_path / "missing.pt")


def test_case_store_resumes_and_recomputes_corrupted(tmp_path: Path):
    store = R.CaseStore(tmp_path)
    ids = [f"case/{i}" for i in range(5)]  # ids with a slash still map to one file each
    computed = []

    def run() -> None:
        for c in store.pending("SMIA", 0.1, ids):
            computed.append(c)
            store.save({"case_id": c, "attack": "SMIA", "eps": 0.1, "dice": 0.5, "psnr": math.inf})

    run()
    assert computed == ids and store.pending("SMIA", 0.1, ids) == []
    assert store.pending("SMIA", 0.2, ids) == ids and store.pending("PGD", 0.1, ids) == ids
    computed.clear()
    broken = store.path("SMIA", 0.1, ids[2])
    broken.write_text(broken.read_text()[:20])  # a half-written file from a crash
    (broken.parent / f".{broken.name}.xyz.tmp").write_text("{")  # a stray temporary file
    run()
    assert computed == [ids[2]]
    recs = store.records()
    assert sorted(r["case_id"] for r in recs) == sorted(ids) and all(math.isinf(r["psnr"]) for r in recs)
    assert store.records(attack="PGD") == [] and len(store.records(eps=0.1)) == 5
    with pytest.raises(ValueError, match="case_id"):
        store.save({"attack": "SMIA"})


def test_eps_sweep_table_and_curve(tmp_path: Path):
    base = {"clean": {"dice": 0.9, "dice_ci95": [0.85, 0.93], "num_cases": 5}}
    sweep = {
        eps: {
            **base,
            "PGD": {"dice": 0.9 - 2 * eps, "dice_ci95": [0.8 - 2 * eps, 0.95 - 2 * eps]},
            "SMIA": {"dice": 0.9 - 3 * eps},
        }
        for eps in (0.2, 0.05, 0.1)
    }
    text = R.format_eps_sweep_table(sweep, "dice", eps_scale=100, eps_unit=" HU")
    lines = text.splitlines()
    assert lines[0] == "| dice \\ eps | 5 HU | 10 HU | 20 HU |"
    assert lines[3].startswith("| PGD | 0.800 [0.700, 0.850] | 0.700")
    paths = R.write_eps_sweep(tmp_path, sweep, "dice", eps_scale=100, eps_unit="HU")
    assert list(json.loads(paths["json"].read_text())) == ["0.05", "0.1", "0.2"]
    _assert_png(paths["figure"])


# ------------------------------------------------------------------ figures on real data


def test_figures_from_a_real_attack(data_dir: Path, tmp_path: Path, monkeypatch):
    from monai_smia import SMIA
    from quick_victim import load_retinamnist, train_quick_classifier

    if not (data_dir / "fundus" / "retinamnist.npz").is_file():
        pytest.skip("fundus/retinamnist.npz is absent from the data folder")
    data = load_retinamnist(data_dir)
    net = train_quick_classifier(data["train"][0][:256], data["train"][1][:256], epochs=1)
    x, y = data["test"][0][:16], data["test"][1][:16]
    eps = 2 / 255
    summaries, adv = {}, {}
    for name, alpha in (("DEV", 0.0), ("SMIA", 1.0)):
        attack = SMIA(net, eps=eps, num_iter=5, alpha=alpha)
        adv[name] = attack(x, y)
        summaries[name] = attack.trace.summary()
    stats = M.perturbation_case_metrics(x, adv["SMIA"], bounds=(0.0, 1.0))
    assert (stats["linf"] <= eps + 1e-6).all() and (stats["psnr"] > 40).all()
    assert all(math.isnan(v) for v in summaries["DEV"]["stabilization_loss"])
    with torch.no_grad():
        clean_pred, adv_pred = net(x).argmax(1), net(adv["SMIA"]).argmax(1)
    drawn = _drawn(monkeypatch)
    _assert_png(trace_curves_figure(tmp_path / "fig2.png", summaries, title="RetinaMNIST"))
    dev_loss, sta_loss = drawn[0].axes[0], drawn[0].axes[1]
    assert [line.get_label().split()[0] for line in dev_loss.lines] == ["DEV", "SMIA"]
    assert np.allclose(dev_loss.lines[1].get_ydata(), summaries["SMIA"]["deviation_loss"])
    assert [line.get_label().split()[0] for line in sta_loss.lines] == ["SMIA"]  # DEV has no stabilization loss
    cases = [{"case_id": f"test_{i}", "image": x[i], "adv_image": adv["SMIA"][i], "label": y[i],
              "clean_pred": clean_pred[i], "adv_pred": adv_pred[i]} for i in range(3)]  # fmt: skip
    _assert_png(
        case_figure(tmp_path / "cases.png", cases, task="classification", display_range=(0.0, 1.0), attack_name="SMIA")
    )
    axes = drawn[1].axes
    assert len(axes) == 9  # a row per case: clean, adversarial, perturbation
    for i in range(3):
        clean_ax, adv_ax, d_ax = axes[3 * i : 3 * i + 3]
        assert f"pred {int(clean_pred[i])}" in clean_ax.get_title() and f"pred {int(adv_pred[i])}" in adv_ax.get_title()
        shown = clean_ax.images[0].get_array(), adv_ax.images[0].get_array()
        assert 0 < np.abs(np.asarray(shown[1], float) - np.asarray(shown[0], float)).max() <= 2 / 255 + 1e-6
        assert f"max |d| = {float((adv['SMIA'][i] - x[i]).abs().max()):.3g}" in d_ax.get_title()
    with pytest.raises(ValueError, match="adv_image"):
        case_figure(tmp_path / "bad.png", [{"image": x[0]}], task="classification")


def test_segmentation_figure_on_real_ct(data_dir: Path, tmp_path: Path, monkeypatch):
    nib = pytest.importorskip("nibabel")
    ct = data_dir / "ct" / "totalsegmentator" / "example_ct_sm.nii.gz"
    seg = data_dir / "ct" / "totalsegmentator" / "example_seg.nii.gz"
    if not (ct.is_file() and seg.is_file()):
        pytest.skip("ct/totalsegmentator/example_ct_sm.nii.gz or example_seg.nii.gz is absent from the data folder")
    image = torch.as_tensor(np.asarray(nib.load(ct).dataobj, dtype=np.float32))[None]
    label = np.asarray(nib.load(seg).dataobj) > 0
    label[..., :10] = False  # most foreground must then be found among the last slices
    d = 20.0 * torch.sign(torch.randn(image.shape, generator=torch.Generator().manual_seed(0)))
    broken = label.copy()
    broken[: label.shape[0] // 2] = False
    drawn = _drawn(monkeypatch)
    path = case_figure(
        tmp_path / "seg.png",
        [
            {
                "case_id": "ct",
                "image": image,
                "adv_image": image + d,
                "label": label,
                "clean_pred": label,
                "adv_pred": broken,
            }
        ],
        display_range=(-1000, 400),
        transpose=True,
    )
    _assert_png(path)
    clean_ax, adv_ax, d_ax, clean_pred_ax, adv_pred_ax = drawn[0].axes
    assert "max |d| = 20" in d_ax.get_title()
    assert np.abs(np.asarray(d_ax.images[0].get_array())).max() == pytest.approx(20.0)
    # the overlays show the two predictions: the broken one has less foreground on the shown slice
    clean_fg = (~np.ma.getmaskarray(clean_pred_ax.images[1].get_array())).sum()
    adv_fg = (~np.ma.getmaskarray(adv_pred_ax.images[1].get_array())).sum()
    assert clean_fg > 0 and adv_fg < clean_fg
    from monai_smia.reports.figures import pick_axial_slice

    assert pick_axial_slice(label) >= 10


def test_figure_in_hu_through_the_window(monkeypatch, tmp_path: Path):
    """Network-input images of a windowed CT bundle are shown in HU: 0.5 of a [-1000, 400] window is -300 HU,
    and the perturbation's title names its maximum in HU."""
    from monai_smia.reports import figures

    seen = {}
    monkeypatch.setattr(figures, "_draw_row", lambda row, c, task, rng, style: seen.update(c=c, rng=rng, style=style))
    window = {"a_min": -1000.0, "a_max": 400.0, "b_min": 0.0, "b_max": 1.0, "unit": "HU"}
    x = torch.full((1, 8, 8), 0.5)
    figures.case_figure(tmp_path / "hu.png", [{"case_id": "c", "image": x, "adv_image": x + 20 / 1400}], window=window)
    assert np.allclose(seen["c"]["image"], -300.0) and np.allclose(seen["c"]["adv_image"] - seen["c"]["image"], 20.0)
    assert seen["rng"] == (-1000.0, 400.0) and seen["style"]["unit"] == " HU"


def test_robustness_curve_needs_data(tmp_path: Path):
    with pytest.raises(ValueError, match="eps"):
        robustness_curve_figure(tmp_path / "r.png", {}, "dice")


def test_psnr_mean_leaves_out_unperturbed_cases():
    """An attack that leaves a case unchanged has PSNR inf: not averaged in (the mean would be inf), but counted."""
    from monai_smia.reports.summary import summarize_records

    rows = [
        {"case_id": str(i), "attack": "DeepFool", "psnr": p, "linf": 0.1}
        for i, p in enumerate([float("inf"), 30.0, 40.0])
    ]
    out = summarize_records(rows, metrics=["psnr", "linf"])["DeepFool"]
    assert out["psnr"] == 35.0 and out["psnr_unperturbed_cases"] == 1 and out["num_cases"] == 3
    lo, hi = out["psnr_ci95"]
    assert 30.0 <= lo <= hi <= 40.0
