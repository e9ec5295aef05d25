"""The README's Quick start and the console command."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

from monai_smia.cli import main


def quick_start_commands() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_quick_start_has_two_commands_and_ci_runs_the_second():
    cmds = quick_start_commands()
    assert len(cmds) == 2, cmds
    assert "monai-smia" in cmds[0]
    assert "pytest" in cmds[1] and "torch==2.13.0" in cmds[1]
    ci = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    assert cmds[1] in ci, ".ci/run must run exactly the README's test command"


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "monai_smia.cli", "demo", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "lung CT" in out.stdout and "--data-dir" in out.stdout


def test_cli_demo_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MONAI_SMIA_DATA", raising=False)
    assert main(["demo", "--data-dir", str(tmp_path), "--cache", str(tmp_path / "cache")]) == 2
    assert "has no ct/ folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["demo", "--max-cases", "0"])
    assert e.value.code == 2
    assert "must be >= 1" in capsys.readouterr().err
