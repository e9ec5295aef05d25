"""What an exception chain says: its root cause, and whether it is an allocator running out of memory.

A leaf module (no imports from the package), so every layer can ask the same question the same way.
"""

from __future__ import annotations

__all__ = ["out_of_memory", "root_cause"]


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
