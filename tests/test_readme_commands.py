"""Every command and Python block of the README and docs/usage.md runs as written, with tiny settings injected
(one case, one or two iterations, at most two budgets), each into its own output folder, and ends with a line
naming what it wrote. A command this test does not know fails it: each one is run, or skipped with its reason.

The commands run in a scratch folder laid out like the repository root (a copy of ``bundles/``, so a training
run never touches a shipped checkpoint; ``monai_smia`` for the package's configs); ``../shared/data`` stands for
the real data folder, and ``path/to/any/monai/bundle`` / ``DIR`` for the zoo-shaped fixture bundle and its
Decathlon task folder (``tests/zoo_fixtures.py``)."""

from __future__ import annotations

import re
import runpy
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO_ROOT, shared_data_dir, subprocess_env
from zoo_fixtures import decathlon_spleen, zoo_bundle

from monai_smia.cli import build_parser, main

DOCS = ("README.md", "docs/usage.md")
DATA = "../shared/data"

#: commands not run here, by their first words, and why
SKIPPED = {
    "pip install": "installs packages; CI runs the Quick start's install and test line verbatim (.ci/run)",
    "python -m pytest": "the test suite itself; CI runs it verbatim (.ci/run, test_cli_and_readme.py)",
    "torchrun": "two processes double the cost; the same config under torchrun is tests/test_evaluation.py's",
}
#: commands checked by their parser only, and why
PARSED_ONLY = {
    "monai-smia reproduce": "even --quick runs for minutes; tests/test_reproduce.py runs it with tiny settings",
}
#: stand-ins for what a user supplies (their zoo bundle and dataset)
STAND_INS = {"path/to/any/monai/bundle": "zoo/spleen_ct_segmentation", "DIR": "Task09_Spleen"}
#: the tiny settings of the Python blocks: (as written, as run); each must occur in the docs
#: the budget of the last attack on ``images`` in each document's Python blocks
LAST_EPS = {"README.md": 8 / 255, "docs/usage.md": 0.05}
PYTHON_TINY = (
    ("torch.rand(8, 1, 256, 256)", "torch.rand(2, 1, 64, 64)"),
    ("torch.randint(0, 3, (8, 1, 256, 256))", "torch.randint(0, 3, (2, 1, 64, 64))"),
    ("num_iter=10", "num_iter=2"),
    ("WorstCase(net, eps=0.05)", "WorstCase(net, eps=0.05, num_iter=2, num_queries=20)"),
    ("APGD(net, eps=0.05, num_iter=100", "APGD(net, eps=0.05, num_iter=2"),
    ("SMIA(net_hu, eps=20.0, bounds=None)", "SMIA(net_hu, eps=20.0, bounds=None, num_iter=2)"),
    ("eps=20.0, slice_dim=2, bounds=None,", "eps=20.0, slice_dim=2, bounds=None, num_iter=2,"),
)


@dataclass
class Command:
    """One command of the docs: its words as written (``&&`` chains split), and the document it is in."""

    text: str
    doc: str

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text)

    @property
    def env(self) -> dict[str, str]:
        """``NAME=value`` words before the program."""
        return dict(w.split("=", 1) for w in self.argv if re.fullmatch(r"[A-Z_]+=.*", w))

    @property
    def words(self) -> list[str]:
        return [w for w in self.argv if not re.fullmatch(r"[A-Z_]+=.*", w)]

    def starts(self, prefix: str) -> bool:
        return " ".join(self.words).startswith(prefix)


def code_blocks(doc: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (REPO_ROOT / doc).read_text(), re.S)


def doc_commands() -> list[Command]:
    """Every command of the bash blocks, in order, each once (the README repeats some of docs/usage.md)."""
    seen, out = set(), []
    for doc in DOCS:
        for block in code_blocks(doc, "bash"):
            for line in block.splitlines():
                words = shlex.split(line, comments=True)
                starts = [0] + [i + 1 for i, w in enumerate(words) if w == "&&"]
                for a, b in zip(starts, [*starts[1:], len(words) + 1]):
                    text = shlex.join(words[a : b - 1])
                    if text and text not in seen:
                        seen.add(text)
                        out.append(Command(text, doc))
    return out


def _with(words: list[str], option: str, *values: str) -> list[str]:
    """``words`` with ``option`` set to ``values`` unless the command sets it already."""
    return words if option in words else [*words, option, *values]


def _first_eps(words: list[str], keep: int = 2) -> list[str]:
    """At most ``keep`` values of an ``--eps`` list."""
    if "--eps" not in words:
        return words
    i = words.index("--eps") + 1
    j = next((k for k in range(i, len(words)) if words[k].startswith("--")), len(words))
    return words[: i + min(keep, j - i)] + words[j:]


def tiny(cmd: Command, scratch: Path) -> list[str] | None:
    """The command as run: paths made real, tiny settings injected; ``None`` for one this test skips."""
    data = str(shared_data_dir())
    words = [STAND_INS.get(w, w.replace(DATA, data)) for w in cmd.words]
    if any(cmd.starts(p) for p in (*SKIPPED, *PARSED_ONLY)):
        return None
    if cmd.starts("monai-smia evaluate"):
        words = _with(_with(_with(_first_eps(words), "--max-cases", "1"), "--num-iter", "1"), "--attacks", "SMIA")
    elif cmd.starts("monai-smia attack"):
        words = _with(_with(words, "--max-cases", "1"), "--num-iter", "1")
    elif cmd.starts("monai-smia demo"):
        words = [*words, "--bundles", "retina_dr_cls", "--max-cases", "1", "--cache", str(scratch / "cache")]
    elif cmd.starts("python -m monai.bundle run") and is_training(cmd):
        words = [*words, "--max_epochs", "1", "--val_interval", "1", "--train_repeat", "1", "--num_samples", "1"]
        words += ["--max_val_items", "1"]
    elif cmd.starts("python -m monai.bundle run"):
        words = [*words, "--max_cases", "1", "--num_iter", "1"]
    elif not cmd.starts("python -m monai_smia.apps.data_prep."):
        pytest.fail(f"{cmd.doc}: no plan for `{cmd.text}`: run it in test_readme_commands.py or list it as skipped")
    return words


def is_training(cmd: Command) -> bool:
    """A bundle run of ``train.json`` alone."""
    words = cmd.words
    return "--config_file" in words and words[words.index("--config_file") + 1].endswith("train.json")


def output_of(cmd: Command) -> str | None:
    """The folder a command writes (its output option, or its documented default)."""
    words = cmd.words
    for option in ("--output", "--out", "--output_dir"):
        if option in words:
            return words[words.index(option) + 1]
    if cmd.starts("monai-smia demo"):
        return "monai_smia_demo"
    if is_training(cmd):
        return words[words.index("--bundle_root") + 1] + "/eval"  # train.json's default output_dir
    return None


def test_every_command_has_a_plan_and_its_own_output_folder(tmp_path):
    commands = doc_commands()
    assert len(commands) >= 15 and {c.doc for c in commands} == set(DOCS)
    outputs = {}
    for cmd in commands:
        tiny(cmd, tmp_path)  # fails for a command without a plan
        out = output_of(cmd)
        if out is not None:
            assert out not in outputs, f"`{cmd.text}` and `{outputs[out]}` both write {out}"
            outputs[out] = cmd.text
    # `monai-smia ...` runs in-process through the function the console script calls
    assert 'monai-smia = "monai_smia.cli:main"' in (REPO_ROOT / "pyproject.toml").read_text()
    readme = [c for c in commands if c.doc == "README.md"]
    assert [c for c in readme if c.starts("monai-smia evaluate") and "--max-cases 1" in c.text], "no smoke test"
    for prefix, reason in {**SKIPPED, **PARSED_ONLY}.items():
        assert any(c.starts(prefix) for c in commands), f"{prefix!r} is listed ({reason}) but in no document"


def test_parsed_only_commands_parse(tmp_path):
    for cmd in [c for c in doc_commands() if any(c.starts(p) for p in PARSED_ONLY)]:
        args = build_parser().parse_args(cmd.words[1:])
        assert args.command == cmd.words[1] and args.output == output_of(cmd)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A folder laid out like the repository root, with the zoo stand-ins."""
    data = shared_data_dir()
    if not data.is_dir():
        pytest.skip(f"the real data folder {data} is absent")
    root = tmp_path_factory.mktemp("newcomer")
    shutil.copytree(REPO_ROOT / "bundles", root / "bundles", ignore=shutil.ignore_patterns("eval"))
    (root / "monai_smia").symlink_to(REPO_ROOT / "monai_smia")
    zoo_bundle(root / STAND_INS["path/to/any/monai/bundle"])
    decathlon_spleen(data, root / STAND_INS["DIR"])
    return root


def _run_in_process(words: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> int:
    """``monai-smia ...`` through its entry point, ``python -m MODULE ...`` through runpy."""
    for key, value in env.items():
        monkeypatch.setenv(key, value.replace(DATA, str(shared_data_dir())))
    if words[0] == "monai-smia":
        return main(words[1:])
    monkeypatch.setattr(sys, "argv", [words[2], *words[3:]])
    try:
        runpy.run_module(words[2], run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 2
    return 0


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip() and "%|" not in line]
    return lines[-1] if lines else ""


@pytest.mark.parametrize("index", range(len(doc_commands())), ids=[" ".join(c.words)[:60] for c in doc_commands()])
def test_command_runs_as_written(index, scratch, monkeypatch, capsys):
    cmd = doc_commands()[index]
    words = tiny(cmd, scratch)
    if words is None:
        pytest.skip({**SKIPPED, **PARSED_ONLY}[next(p for p in {**SKIPPED, **PARSED_ONLY} if cmd.starts(p))])
    monkeypatch.chdir(scratch)
    if cmd.starts("python -m monai_smia.apps.data_prep.download"):
        return _download_offline(words, monkeypatch)
    if words[0] == "python" and words[2] == "monai.bundle":
        proc = subprocess.run([sys.executable, *words[1:]], cwd=scratch, capture_output=True, text=True,
                              env=subprocess_env(), timeout=600)  # fmt: skip
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    else:
        code = _run_in_process(words, cmd.env, monkeypatch)
        stdout, stderr = capsys.readouterr()
    assert code == 0, f"`{' '.join(words)}` exited {code}: {stderr[-3000:]}"
    out = output_of(cmd)
    if out is not None:
        assert (scratch / out).is_dir() and any((scratch / out).iterdir()), f"`{cmd.text}` wrote nothing to {out}"
        assert out in _last_line(stdout), f"`{cmd.text}` does not end naming {out}: {_last_line(stdout)!r}"
    if is_training(cmd):
        assert list((scratch / out / "models").glob("*.pt")), "training saved no checkpoint under output_dir"


def _download_offline(words: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline (as in CI) the download stops with the --manual-dir way round, and writes nothing."""
    import urllib.error

    from monai_smia.apps.data_prep import fetch

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("simulated: no network")

    monkeypatch.setattr(fetch, "_fetch_url", offline)
    monkeypatch.setenv("MONAI_SMIA_CACHE", str(Path.cwd() / "download_cache"))
    monkeypatch.setattr(sys, "argv", [words[2], *words[3:]])
    with pytest.raises(SystemExit, match="--manual-dir"):
        runpy.run_module(words[2], run_name="__main__", alter_sys=True)
    assert not Path(words[words.index("--out") + 1]).exists()


@pytest.mark.parametrize("doc", DOCS)
def test_python_blocks_run(doc, scratch, monkeypatch):
    """The blocks of one document run in order in one namespace (later blocks continue earlier ones)."""
    text = "\n".join(code_blocks(doc, "python"))
    for written, run in PYTHON_TINY:
        text = text.replace(written, run)
    text = text.replace(DATA, str(shared_data_dir()))
    monkeypatch.chdir(scratch)
    namespace: dict = {"__name__": f"{doc}_blocks"}
    exec(compile(text, doc, "exec"), namespace)
    x, x_adv = namespace["images"], namespace["x_adv"]
    assert x_adv.shape == x.shape and 0 < (x_adv - x).abs().max() <= LAST_EPS[doc] + 1e-6
    assert 0.0 <= namespace["inferer"].last_diagnostics[0]["positive_cosine_share"] <= 1.0
    if doc == "docs/usage.md":
        assert (scratch / "adv.nii.gz").is_file() and (scratch / "adv_dicom").is_dir()


def test_python_tiny_settings_are_used():
    text = "".join(b for doc in DOCS for b in code_blocks(doc, "python"))
    assert [w for w, _ in PYTHON_TINY if w not in text] == [], "a tiny setting no longer matches the docs"
