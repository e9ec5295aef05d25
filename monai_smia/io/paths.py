"""The one rule on where results may go: an output folder never lies inside (or is) an input."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["check_folder", "check_output_outside"]


def check_folder(path: str | os.PathLike, name: str, hint: str = "", may_be_missing: bool = False) -> Path:
    """``path`` as a folder: it exists and is a folder (or, with ``may_be_missing``, it does not exist yet and
    will be made).

    Raises:
        ValueError: one line naming ``name``, what is wrong and ``hint`` (what to pass instead).
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{name} {str(path)!r} is a file, not a folder{'; ' + hint if hint else ''}.")
    if not p.exists() and not may_be_missing:
        raise ValueError(f"{name} {str(path)!r} does not exist{'; ' + hint if hint else ''}.")
    return p


def check_output_outside(
    output: str | os.PathLike, source: str | os.PathLike, output_name: str = "--output", source_name: str = "--input"
) -> None:
    """Refuse an ``output`` folder that is ``source`` or lies inside it (inputs are never written to).

    Both paths are compared after resolving symbolic links; ``source`` may be a file or a folder,
    and neither needs to exist yet.

    Raises:
        ValueError: one line naming both options and what to do.
    """
    out, src = Path(output).resolve(), Path(source).resolve()
    if out == src or src in out.parents:
        raise ValueError(
            f"{output_name} {str(output)!r} lies inside the input {source_name} {str(source)!r}; inputs are never "
            f"written to: choose an {output_name} outside it."
        )
