"""Atomic writes: a file or a whole folder appears complete or not at all, and nothing else is lost.

Files are written to a temporary sibling and renamed into place (:func:`atomic_file`). Folders
(:func:`atomic_output_dir`) are built in a temporary sibling ``.<name>.tmp-<pid>-*`` and renamed
into place; an existing folder is replaced only when this package wrote it (it holds the
:data:`OWNER_MARKER` file) or it is empty, and never when it is, or contains, a protected input.
Temporary folders left behind by a killed process are removed by the next write of the same folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "OWNER_MARKER",
    "atomic_file",
    "atomic_output_dir",
    "check_replaceable_dir",
    "remove_stale_temporaries",
    "write_json_atomic",
]

#: file written into every folder :func:`atomic_output_dir` creates; only such folders are ever replaced
OWNER_MARKER = ".monai_smia_output"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _as_created(path: str | os.PathLike, folder: bool = False) -> None:
    """Give a temporary file (or folder) the mode a plain ``open`` (``mkdir``) would have: ``mkstemp`` and
    ``mkdtemp`` make them private (0600/0700) whatever the user's umask."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary file name beside ``path``; on success it replaces ``path`` in one rename.

    The writer writes to the yielded name (``suffix`` keeps the extension some writers need). On
    error the temporary file is removed and ``path`` (if it existed) is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    _as_created(tmp)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(
    path: str | os.PathLike, obj: Any, allow_nan: bool = True, trailing_newline: bool = False
) -> Path:
    """Write ``obj`` as JSON (``indent=2``) to ``path`` through a synced temporary file and a rename.

    Args:
        path: the file to (re)write; its folder is created when missing.
        obj: a JSON-serialisable object (``monai_smia.reports.to_jsonable`` converts arrays and tensors).
        allow_nan: write ``NaN``/``Infinity`` (Python's ``json`` reads them back); ``False`` raises on them.
        trailing_newline: end the file with a newline.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    text = json.dumps(obj, indent=2, allow_nan=allow_nan) + ("\n" if trailing_newline else "")
    with atomic_file(path, suffix=".tmp") as tmp, open(tmp, "wb") as f:
        f.write(text.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(out: str | os.PathLike) -> list[Path]:
    """Remove ``.<name>.tmp-<pid>-*`` / ``.<name>.old-<pid>`` siblings of ``out`` whose process is gone.

    Only folders holding :data:`OWNER_MARKER` are removed (the ones this module made). Returns them.
    """
    out = Path(out)
    removed: list[Path] = []
    if not out.parent.is_dir():
        return removed
    for kind in ("tmp", "old"):
        for p in out.parent.glob(f".{out.name}.{kind}-*"):
            pid_text = p.name[len(f".{out.name}.{kind}-") :].split("-")[0]
            if not pid_text.isdigit() or _pid_alive(int(pid_text)) or not (p / OWNER_MARKER).is_file():
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_replaceable_dir(
    out: str | os.PathLike, protected: Iterable[str | os.PathLike] = (), overwrite: bool = False
) -> None:
    """Raise unless writing the folder ``out`` (replacing it when it exists) loses nothing.

    Args:
        out: the folder to be (re)written.
        protected: inputs that must survive: ``out`` may be neither one of them, nor inside one,
            nor an ancestor of one.
        overwrite: allow replacing an existing ``out`` that this package wrote (holds :data:`OWNER_MARKER`).

    Raises:
        ValueError: ``out`` is, contains or lies inside a protected path.
        FileExistsError: ``out`` exists and may not be replaced.
    """
    target = Path(out).resolve()
    for p in protected:
        src = Path(p).resolve()
        if _within(src, target) or _within(target, src):
            raise ValueError(
                f"output folder {str(out)!r} is, contains or lies inside the input {str(p)!r}; inputs are never "
                "replaced or written to: choose an output folder outside the input."
            )
    if not target.exists():
        return
    if not target.is_dir():
        raise FileExistsError(f"output {str(out)!r} exists and is not a folder; choose another output folder.")
    if not any(target.iterdir()):
        return
    if not (target / OWNER_MARKER).is_file():
        raise FileExistsError(
            f"output folder {str(out)!r} exists and was not written by monai-smia; it is never replaced: "
            "choose a new or empty output folder."
        )
    if not overwrite:
        raise FileExistsError(f"output folder {str(out)!r} exists; pass overwrite=True or choose another folder.")


@contextlib.contextmanager
def atomic_output_dir(
    out: str | os.PathLike, overwrite: bool = False, protected: Iterable[str | os.PathLike] = ()
) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out`` in one rename.

    See :func:`check_replaceable_dir` for what may be replaced. On error the temporary folder is
    removed and ``out`` (if it existed) is left untouched. Stale temporaries of ``out`` left by a
    killed process are removed first.
    """
    out = Path(out).resolve()
    check_replaceable_dir(out, protected, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    _as_created(tmp, folder=True)
    try:
        (tmp / OWNER_MARKER).write_text("written by monai-smia; a rerun may replace this folder\n")
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
