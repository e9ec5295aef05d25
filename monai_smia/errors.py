"""What an exception chain says: its root cause, whether it is an allocator running out of memory, and
the one line a command prints for it.

A leaf module (no imports from the package), so every layer can ask the same question the same way.
"""

from __future__ import annotations

__all__ = ["error_line", "out_of_memory", "root_cause"]


def root_cause(err: BaseException) -> BaseException:
    """The innermost exception of a chain (MONAI wraps a transform's error in "applying transform ...")."""
    while err.__cause__ is not None or (err.__context__ is not None and not err.__suppress_context__):
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return err


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err``'s root cause is a device (CUDA) or host allocator running out of memory."""
    cause = root_cause(err)
    text = str(cause)
    oom = type(cause).__name__ == "OutOfMemoryError"  # torch.OutOfMemoryError (CUDA), without importing torch here
    return (
        oom
        or isinstance(cause, MemoryError)
        or (isinstance(cause, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))
    )


def error_line(err: BaseException) -> str:
    """One line: the error's own message, or its root cause's when MONAI/ignite wrapped it (what ``monai-smia``
    and ``python -m monai.bundle run`` print on stderr before exiting with code 2)."""
    cause = err if isinstance(err, (ValueError, FileNotFoundError, FileExistsError)) else root_cause(err)
    text = cause.args[0] if isinstance(cause, KeyError) and cause.args else str(cause)
    text = " ".join(str(text).split())
    return text if isinstance(cause, (ValueError, OSError, KeyError)) else f"{type(cause).__name__}: {text}"
