"""The two silent failures of the bad-input sweep: a budget unit is one of a fixed list and HU only
fits a bundle whose input is in Hounsfield units (else the budget silently became the whole input
range), and no command writes into its input folder. Through the CLI, on real data."""

from __future__ import annotations

import json

import pytest
from conftest import REPO_ROOT

from monai_smia.cli import main
from monai_smia.io.units import EPS_UNITS, check_eps_unit, hounsfield_input, resolve_eps_scale

MNIST = REPO_ROOT / "bundles" / "mnist_cls"


def _one_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"monai-smia {command}: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.mark.parametrize("command", ["evaluate", "attack"])
def test_hu_is_refused_for_a_bundle_without_hounsfield_input(command, mnist, tmp_path, capsys):
    out = tmp_path / "out"
    data = ["--dataset-dir", str(mnist)] if command == "evaluate" else ["--input", str(mnist)]
    argv = [command, "--bundle", "mnist_cls", *data, "--output", str(out), "--eps", "20", "--eps-unit", "HU"]
    assert main([*argv, "--num-iter", "1", "--device", "cpu"]) == 2
    line = _one_error(capsys, command)
    assert "--eps-unit 'HU'" in line and "mnist_cls" in line and "Hounsfield" in line
    assert not out.exists()


@pytest.mark.parametrize("unit", ["bogus", "furlongs", "hu"])
@pytest.mark.parametrize("command", ["evaluate", "attack"])
def test_unknown_units_are_refused_by_the_parser(command, unit, mnist, tmp_path, capsys):
    out = tmp_path / "out"
    data = ["--dataset-dir", str(mnist)] if command == "evaluate" else ["--input", str(mnist)]
    with pytest.raises(SystemExit) as stop:
        main([command, "--bundle", "mnist_cls", *data, "--output", str(out), "--eps", "2", "--eps-unit", unit])
    assert stop.value.code == 2 and "--eps-unit" in capsys.readouterr().err and not out.exists()


def test_unknown_units_are_refused_by_the_library():
    for unit in ("bogus", "Hounsfield", 1.0):
        with pytest.raises(ValueError, match="is not a unit"):
            check_eps_unit(unit)
    with pytest.raises(ValueError, match="is not a unit"):
        resolve_eps_scale("furlongs")
    assert [check_eps_unit(u) for u in EPS_UNITS] == list(EPS_UNITS) and check_eps_unit(None) == ""


def test_hounsfield_input_reads_the_metadata_then_the_window():
    ct = {"network_data_format": {"inputs": {"image": {"format": "hounsfield", "modality": "CT"}}}}
    grey = json.loads((MNIST / "configs" / "metadata.json").read_text())
    window_ct = {"a_min": -1000.0, "a_max": 500.0, "b_min": 0.0, "b_max": 1.0}
    window_8bit = {"a_min": 0.0, "a_max": 255.0, "b_min": 0.0, "b_max": 1.0}
    assert hounsfield_input(ct, window_8bit) and not hounsfield_input(grey, window_ct)
    assert hounsfield_input({}, window_ct) and not hounsfield_input({}, window_8bit) and not hounsfield_input({}, None)


def test_both_commands_give_the_same_budget_for_a_unit(mnist, tmp_path):
    """``--eps-unit /255`` on mnist_cls: 8/255 in both commands; evaluate drops the bundle's own eps_scale (1.0,
    which belongs to its default unit) instead of keeping it for the unit given."""
    from monai_smia.apps.attack.run import run_attack
    from monai_smia.apps.evaluate.evaluation import evaluation_from_bundle

    ev = evaluation_from_bundle("mnist_cls", dataset_dir=mnist, output_dir=tmp_path / "ev", attacks=["FGSM"], eps=[8.0],
                                eps_unit="/255", max_cases=2, device="cpu")  # fmt: skip
    assert ev.eps_scale is None
    ev.run()
    settings = json.loads((tmp_path / "ev" / "settings.json").read_text())
    run_attack("mnist_cls", mnist, tmp_path / "at", attack="FGSM", eps=8.0, eps_unit="/255", max_cases=2, device="cpu")
    provenance = json.loads((tmp_path / "at" / "provenance.json").read_text())["attack_settings"]
    assert settings["eps_scale"] == pytest.approx(1 / 255) and provenance["eps_network"] == pytest.approx(8 / 255)
    linf = [json.loads(p.read_text())["linf"] for p in (tmp_path / "ev" / "cases").rglob("*.json") if "FGSM" in p.parts]
    assert linf and max(linf) == pytest.approx(8.0, rel=1e-4)  # in the user's unit: 8 (/255), not 8 network units


@pytest.mark.parametrize("command", ["evaluate", "attack", "reproduce"])
def test_output_inside_the_input_is_refused(command, mnist, tmp_path, capsys):
    data = tmp_path / "data"
    data.symlink_to(mnist, target_is_directory=True)
    before = sorted(p.name for p in mnist.rglob("*"))
    out = data / "out"
    option = {"evaluate": "--dataset-dir", "attack": "--input", "reproduce": "--data-dir"}[command]
    argv = [command, option, str(data), "--output", str(out)] + (
        [] if command == "reproduce" else ["--bundle", "mnist_cls"]
    )
    assert main([*argv, "--device", "cpu"]) == 2
    line = _one_error(capsys, command)
    assert f"--output {str(out)!r} lies inside the input {option}" in line
    assert sorted(p.name for p in mnist.rglob("*")) == before and not (mnist / "out").exists()


def test_bundle_run_output_inside_the_dataset_is_refused(mnist, tmp_path):
    """The evaluator config path (``python -m monai.bundle run``) keeps the same rule, before anything is written."""
    from monai_smia.apps.evaluate.config import EvaluationCondition
    from monai_smia.apps.evaluate.evaluation import RobustnessEvaluation

    with pytest.raises(ValueError, match="output_dir .* lies inside the input dataset_dir"):
        RobustnessEvaluation(MNIST, mnist, mnist / "eval", eps=[0.1])
    with pytest.raises(ValueError, match="output_dir .* lies inside the input dataset_dir"):
        EvaluationCondition(MNIST, mnist, mnist, preprocessing=None, attack="FGSM", eps=0.1)
    assert not (mnist / "eval").exists()


@pytest.mark.parametrize("command", ["evaluate", "attack"])
def test_ctrl_c_keeps_finished_cases_and_a_rerun_resumes(command, mnist, tmp_path, monkeypatch, capsys):
    """Ctrl-C in the middle of a run: one line saying how to resume, exit 130, no traceback, the finished
    cases kept (evaluate: the clean condition; attack: the first case); the same command then finishes."""
    from monai_smia.apps.attack import run as attack_run
    from monai_smia.attacks import FGSM

    calls = {"n": 0, "stop": 1 if command == "evaluate" else 2}
    perturb = FGSM.perturb

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["stop"]:
            raise KeyboardInterrupt
        return perturb(self, *args, **kwargs)

    def three_cases(self):
        found, source = cases(self)
        return found[:3], source

    cases = attack_run.AdversarialWriter.cases
    monkeypatch.setattr(attack_run.AdversarialWriter, "cases", three_cases)
    monkeypatch.setattr(FGSM, "perturb", interrupted)
    out = tmp_path / "out"
    data = (
        ["--dataset-dir", str(mnist), "--attacks", "FGSM", "--max-cases", "3"]
        if command == "evaluate"
        else ["--input", str(mnist), "--attack", "FGSM"]
    )
    argv = [command, "--bundle", "mnist_cls", *data, "--output", str(out), "--eps", "0.1", "--device", "cpu"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted; rerun the same command to resume" in err and "Traceback" not in err and "error:" not in err
    done = {p.relative_to(out) for p in (out / "cases").rglob("*.json")}
    assert len(done) == (3 if command == "evaluate" else 1)  # what finished is kept
    calls["stop"] = -1
    assert main(argv) == 0
    assert done < {p.relative_to(out) for p in (out / "cases").rglob("*.json")}


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (
            ["demo", "--data-dir", "{tmp}/missing", "--bundles", "retina_dr_cls"],
            "--data-dir '{tmp}/missing' does not exist",
        ),
        (["reproduce", "--data-dir", "{tmp}/missing", "--quick"], "--data-dir '{tmp}/missing' does not exist"),
        (
            ["reproduce", "--data-dir", "{data}", "--cache", "{tmp}/a_file", "--quick"],
            "--cache '{tmp}/a_file' is a file",
        ),
        (["demo", "--data-dir", "{data}", "--cache", "{tmp}/a_file"], "--cache '{tmp}/a_file' is a file"),
        (
            ["evaluate", "--bundle", "mnist_cls", "--dataset-dir", "{tmp}/a_file", "--eps", "0.1"],
            "--dataset-dir '{tmp}/a_file' is a file",
        ),
    ],
)
def test_data_and_cache_folders_are_checked_before_anything_is_written(argv, said, data_dir, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    out = tmp_path / "out"
    fill = {"tmp": str(tmp_path), "data": str(data_dir)}
    argv = [a.format(**fill) for a in argv]
    assert main([*argv, "--output", str(out)]) == 2
    line = _one_error(capsys, argv[0])
    assert said.format(**fill) in line
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_written_files_follow_the_umask(mnist, tmp_path):
    """Files and folders the attack writes get the user's umask, not the private mode of temporary files."""
    import os

    png = next(mnist.rglob("*.png"))
    old = os.umask(0o022)
    try:
        assert main(["attack", "--bundle", "mnist_cls", "--input", str(png), "--output", str(tmp_path / "out"),
                     "--attack", "FGSM", "--device", "cpu"]) == 0  # fmt: skip
    finally:
        os.umask(old)
    written = [p for p in (tmp_path / "out").rglob("*")]
    assert any(p.suffix == ".png" for p in written) and any(p.name == "settings.json" for p in written)
    modes = {p.relative_to(tmp_path): oct(p.stat().st_mode & 0o777) for p in written}
    assert all(m == ("0o755" if (tmp_path / p).is_dir() else "0o644") for p, m in modes.items()), modes


def test_summary_lists_every_condition_stored(mnist, tmp_path):
    """Two runs into one folder with different --attacks (same settings): summary.md and summary.json list both."""
    out = tmp_path / "out"
    base = ["evaluate", "--bundle", "mnist_cls", "--dataset-dir", str(mnist), "--output", str(out), "--max-cases", "4"]
    assert main([*base, "--attacks", "FGSM", "--device", "cpu"]) == 0
    assert main([*base, "--attacks", "noise", "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["clean", "noise", "FGSM"]
    text = (out / "summary.md").read_text()
    assert "FGSM" in text and "noise" in text


def test_attack_takes_max_cases_and_ends_with_what_it_wrote(mnist, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["attack", "--bundle", "mnist_cls", "--input", str(mnist), "--output", str(out), "--attack", "FGSM"]
    assert main([*argv, "--max-cases", "2", "--device", "cpu"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(
        f"wrote 2 adversarial case(s) to {out}; FGSM eps=0.1 on the source grid; prediction changed on"
    )
    assert "read back: " in last and len(list((out / "cases").rglob("*.json"))) == 2


def test_evaluate_prints_the_table_of_every_budget(mnist, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["evaluate", "--bundle", "mnist_cls", "--dataset-dir", str(mnist), "--output", str(out), "--attacks", "FGSM"]
    assert main([*argv, "--eps", "0.05", "0.1", "--max-cases", "3", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "eps = 0.05" in printed and "eps = 0.1" in printed


def test_ctrl_c_in_reproduce_is_one_line_and_130(data_dir, tmp_path, monkeypatch, capsys):
    from monai_smia.apps.reproduce import workflow as reproduce

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(reproduce, "run_reproduce", interrupted)
    assert main(["reproduce", "--data-dir", str(data_dir), "--output", str(tmp_path / "out"), "--quick"]) == 130
    err = capsys.readouterr().err
    assert "monai-smia reproduce: interrupted; rerun the same command to resume" in err and "Traceback" not in err
