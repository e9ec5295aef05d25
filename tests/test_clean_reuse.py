"""Label-free records reuse the clean output the attack inferer already predicted (``AttackInferer.last_clean``)
instead of one more forward in ``CaseRecordHandler``, with the same records: on the zoo-shaped inference-only
bundle over real CT through the CLI, and on real CT slices through a ``SliceInferer`` in a MONAI evaluator."""

from __future__ import annotations

import dataclasses

import collections
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import PrepareBatchExtraInput, SupervisedEvaluator
from monai.inferers import SimpleInferer, SliceInferer
from monai.networks.nets import UNet
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd

from monai_smia import FGSM, SMIA
from monai_smia.cli import main
from monai_smia.handlers import records
from monai_smia.inferers import AttackInferer
from monai_smia.layers import with_intensity_window

CT = "ct/totalsegmentator/example_ct_sm.nii.gz"


class _Forwards:
    """Counts forwards of ``UNet`` modules, split into the record handler's and the evaluator's."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: collections.Counter = collections.Counter()
        self.phase = "evaluator"
        original = records.CaseRecordHandler.__call__

        def call(handler: Any, engine: Any) -> None:
            self.phase = "handler"
            try:
                original(handler, engine)
            finally:
                self.phase = "evaluator"

        monkeypatch.setattr(records.CaseRecordHandler, "__call__", call)
        self.handle = torch.nn.modules.module.register_module_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: Any, out: Any) -> None:
        if isinstance(module, UNet):
            self.counts[self.phase] += 1

    def take(self) -> dict[str, int]:
        """The counts so far, then start again from zero."""
        counts = dict(self.counts)
        self.counts.clear()
        return counts


@pytest.fixture
def forwards(monkeypatch):
    counter = _Forwards(monkeypatch)
    yield counter
    counter.handle.remove()


def _no_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler's own extra forward, as before ``last_clean``."""
    monkeypatch.setattr(AttackInferer, "clean_is_inferer_output", lambda self, *a: False)


def _same(a: Any, b: Any) -> bool:
    """Equal records, ``nan`` equal to ``nan``."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _cli_records(task: Path, bundle: Path, out: Path, *extra: str) -> dict[str, dict]:
    args = [
        "evaluate",
        "--bundle",
        str(bundle),
        "--dataset-dir",
        str(task),
        "--output",
        str(out),
        "--attacks",
        "FGSM",
        "SMIA",
    ]
    assert main([*args, "--eps", "20", "--eps-unit", "HU", "--num-iter", "2", "--device", "cpu", *extra]) == 0
    return {p.relative_to(out).as_posix(): json.loads(p.read_text()) for p in sorted((out / "cases").rglob("*.json"))}


def test_inference_only_bundle_records_equal_without_the_extra_forward(data_dir, tmp_path, forwards, monkeypatch):
    from zoo_fixtures import decathlon_spleen, zoo_bundle

    task = decathlon_spleen(data_dir, tmp_path / "Task09_Spleen")
    bundle = zoo_bundle(tmp_path / "infer_only", shape="inference_only")
    kept = records.CaseRecordHandler._clean_logits
    equal: list[bool] = []

    def checked(handler: Any, engine: Any, x: torch.Tensor, reused: torch.Tensor | None) -> torch.Tensor | None:
        """The kept clean logits, checked against one more pass of the inner inferer (not counted)."""
        clean = kept(handler, engine, x, reused)
        phase, forwards.phase = forwards.phase, "check"
        with torch.no_grad():
            equal.append(torch.equal(clean, torch.as_tensor(handler.inferer.inferer(x, engine.network))))
        forwards.phase = phase
        return clean

    monkeypatch.setattr(records.CaseRecordHandler, "_clean_logits", checked)
    reused, n_reused = _cli_records(task, bundle, tmp_path / "reuse"), forwards.take()
    assert equal == [True, True]  # FGSM, SMIA: bit for bit the inner inferer's output on the clean batch
    monkeypatch.setattr(records.CaseRecordHandler, "_clean_logits", kept)
    _no_reuse(monkeypatch)
    fresh, n_fresh = _cli_records(task, bundle, tmp_path / "fresh"), forwards.take()
    assert len(reused) == 3 and _same(reused, fresh)  # clean, FGSM, SMIA: every field, success and changed included
    attacked = [r for r in reused.values() if r["attack"] != "clean"]
    assert len(attacked) == 2 and all(r["changed"] > 0 and r["success"] in (0.0, 1.0) for r in attacked)
    # SlidingWindowInferer: 3 window batches per pass; the handler's pass for FGSM and SMIA is gone
    assert n_fresh["handler"] == 6 and "handler" not in n_reused and n_reused["evaluator"] == n_fresh["evaluator"]
    assert n_reused["check"] == 6


def test_label_free_source_grid_reuses_its_clean_prediction(data_dir, tmp_path, forwards, monkeypatch):
    """evaluate --grid source on the inference-only bundle (label-free): the attack runs on the source
    voxels, records the changed share and success, and the handler reuses the inferer's clean prediction."""
    from zoo_fixtures import decathlon_spleen, zoo_bundle

    from monai_smia.apps.evaluate.source import SourceGridAttackInferer

    task = decathlon_spleen(data_dir, tmp_path / "Task09_Spleen")
    bundle = zoo_bundle(tmp_path / "infer_only", shape="inference_only")
    reused, n_reused = _cli_records(task, bundle, tmp_path / "reuse", "--grid", "source"), forwards.take()
    original = SourceGridAttackInferer.__call__

    def without_clean(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        self.last_output = dataclasses.replace(self.last_output, clean=None)  # the handler predicts it itself
        return out

    monkeypatch.setattr(SourceGridAttackInferer, "__call__", without_clean)
    fresh, n_fresh = _cli_records(task, bundle, tmp_path / "fresh", "--grid", "source"), forwards.take()
    assert len(reused) == 3 and _same(reused, fresh)  # clean, FGSM, SMIA
    attacked = [r for r in reused.values() if r["attack"] != "clean"]
    for rec in attacked:
        assert rec["grid"] == "source" and rec["perturbation_grid"] == "source" and rec["linf"] == pytest.approx(20.0)
        assert 0 < rec["changed"] < 1 and rec["success"] in (0.0, 1.0)
    assert n_fresh["handler"] == 6 and "handler" not in n_reused and n_reused["evaluator"] == n_fresh["evaluator"]


def _unet2d() -> torch.nn.Module:
    torch.manual_seed(0)
    unet = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=0)
    return with_intensity_window(unet, a_min=-1000.0, a_max=400.0).eval()


@pytest.fixture(scope="module")
def volumes(data_dir) -> torch.Tensor:
    """Two real CT crops ``(2, 1, 40, 32, 6)`` (HU), on the network's 6 mm grid."""
    if not (data_dir / CT).is_file():
        pytest.skip(f"{data_dir / CT} is absent")
    pre = Compose(
        [
            LoadImaged("image", image_only=True),
            EnsureChannelFirstd("image"),
            Orientationd("image", "RAS", labels=None),
            Spacingd("image", (6.0, 6.0, 6.0)),
        ]
    )
    x = pre({"image": str(data_dir / CT)})["image"].as_tensor()
    return torch.stack([x[:, 10:50, 10:42, 2:8], x[:, 10:50, 10:42, 8:14]])


class _Store:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def save(self, record: dict[str, Any]) -> None:
        self.rows.append(record)


def _evaluate(volumes: torch.Tensor, net: torch.nn.Module, inferer: AttackInferer) -> list[dict[str, Any]]:
    """Label-free records of one batch of both volumes through a MONAI evaluator."""
    items = [{"image": v, "case_id": f"ct{i}"} for i, v in enumerate(volumes)]
    loader = DataLoader(Dataset(items), batch_size=2)
    ev = SupervisedEvaluator(
        torch.device("cpu"), loader, net, inferer=inferer, prepare_batch=PrepareBatchExtraInput({}), decollate=False
    )
    store = _Store()
    records.CaseRecordHandler(store, "segmentation", "SMIA", 20.0, inferer=inferer).attach(ev)
    ev.run()
    return store.rows


def test_slice_inferer_clean_is_the_inferers_output_and_records_agree(volumes, forwards, monkeypatch):
    net = _unet2d()
    inner = SliceInferer(roi_size=(40, 32), spatial_dim=2, sw_batch_size=3)

    def attacker() -> AttackInferer:
        return AttackInferer(SMIA(net, eps=20.0, num_iter=2, bounds=None), inner, seed=0)

    inferer = attacker()
    with torch.no_grad():
        inferer(volumes, net)
        expected = inner(volumes, net)
    assert inferer.last_clean is not None and torch.equal(inferer.last_clean, expected)
    forwards.take()
    reused = _evaluate(volumes, net, attacker())
    n_reused = forwards.take()
    _no_reuse(monkeypatch)
    fresh = _evaluate(volumes, net, attacker())
    n_fresh = forwards.take()
    assert len(reused) == 2 and _same(reused, fresh) and all(0 < r["changed"] <= 1 and "success" in r for r in reused)
    assert "handler" not in n_reused and n_fresh["handler"] == 4  # 12 slices, 3 per call


@pytest.mark.parametrize(
    "case", ["uneven_slice_batches", "gaussian_blending", "windows_in_slices", "amp", "whole_input_batch", "labels"]
)
def test_no_last_clean_where_it_may_differ(volumes, case):
    """Where the attack's clean pass is not provably the inferer's (other network calls, blending weights,
    autocast, batched whole inputs) or not needed (labels), nothing is kept and the handler predicts again."""
    net = _unet2d()
    kw: dict[str, Any] = {"roi_size": (40, 32), "spatial_dim": 2, "sw_batch_size": 3}
    kw.update({"uneven_slice_batches": {"sw_batch_size": 4}, "gaussian_blending": {"mode": "gaussian"}}.get(case, {}))
    kw.update({"windows_in_slices": {"roi_size": (20, 32)}}.get(case, {}))
    inner = SimpleInferer() if case == "whole_input_batch" else SliceInferer(**kw)
    x = volumes[..., 0] if case == "whole_input_batch" else volumes
    inferer = AttackInferer(FGSM(net, eps=20.0, bounds=None, amp=case == "amp"), inner)
    with torch.no_grad():
        inferer(x, net, labels=(x > 0).long() if case == "labels" else None)
    assert inferer.last_clean is None and inferer.last_result is not None and inferer.last_result.changed
    with torch.no_grad():
        inferer(x[:1], net)  # one volume: its clean pass is the inferer's
    assert (inferer.last_clean is not None) is (case not in ("gaussian_blending", "windows_in_slices", "amp"))
