"""``python -m monai.bundle run`` answers bad input the way ``monai-smia`` does.

The package's configs (``evaluator.json``, every shipped ``attack.json`` and ``multi_gpu_evaluate.json``,
the detector's ``evaluate.json``) call :func:`exit_on_error` first in their ``initialize`` list. From then on,
an error of the run (a settings clash with the output folder, a missing file, a bad option) is one line on
stderr and exit code 2 instead of MONAI's traceback; Ctrl-C is one line and exit code 130.
``MONAI_SMIA_DEBUG=1`` keeps the traceback (the CLI's ``--debug``). In any other process (``monai-smia``, a
test, a notebook) the call does nothing: those report errors themselves. :func:`say` ends a bundle run
(evaluation, training) with a line naming what it wrote, as ``monai-smia`` ends its commands.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType

from monai_smia.errors import error_line

__all__ = ["BUNDLE_RUN", "DEBUG_ENV", "exit_on_error", "is_bundle_command", "say"]

#: how the one-line answers name the command
BUNDLE_RUN = "python -m monai.bundle run"
#: set to 1 to see the full traceback of a bundle run's error
DEBUG_ENV = "MONAI_SMIA_DEBUG"


def is_bundle_command() -> bool:
    """Whether this process is ``python -m monai.bundle`` (also as launched by ``torchrun -m``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "monai.bundle.__main__"


def _answer(kind: type[BaseException], err: BaseException, tb: TracebackType | None) -> None:
    """The exception hook: the error's one line and exit code 2, or 130 for Ctrl-C."""
    if issubclass(kind, KeyboardInterrupt):
        print(f"{BUNDLE_RUN}: interrupted; rerun the same command to resume (finished cases are kept).",
              file=sys.stderr)
        raise SystemExit(130)
    if not issubclass(kind, Exception) or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        sys.__excepthook__(kind, err, tb)
        return
    print(f"{BUNDLE_RUN}: error: {error_line(err)}", file=sys.stderr)
    raise SystemExit(2)


def exit_on_error() -> None:
    """In a ``python -m monai.bundle`` process, report any later uncaught error as one line with exit code 2."""
    if is_bundle_command():
        sys.excepthook = _answer


def say(line: str, main_rank: bool = True) -> None:
    """Print ``line`` (what the run wrote) in a ``python -m monai.bundle`` process, on its main rank; elsewhere
    (``monai-smia``, which reports after all its conditions) do nothing."""
    if main_rank and is_bundle_command():
        print(line)
