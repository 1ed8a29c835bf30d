"""Atomic file writes: a reader sees the old file or the whole new one, never a part of it.

The bytes go to a temporary file in the target's folder, are flushed and fsynced, get their mode, and the file is
renamed over the target (``rename(2)`` is atomic within a file system). Whatever stops the write — a full disk, a
signal, an exception in the caller's chunk generator — the temporary file is removed and the target is untouched;
an ``OSError`` becomes an :class:`~kolm_audit.errors.InputError` naming the file.

Example::

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "report.json"
    >>> write_atomic(target, b'{"ok": true}\\n', what="report").read_bytes()
    b'{"ok": true}\\n'
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from kolm_audit.errors import InputError

__all__ = ["write_atomic"]


def write_atomic(path: str | Path, data: bytes | Iterable[bytes], *, what: str, mode: int = 0o644) -> Path:
    """Write ``data`` (bytes, or chunks of bytes written in order) to ``path`` atomically with ``mode``;
    ``what`` names the document in an error ("cannot write <what> (<reason>)")."""
    path = Path(path)
    chunks = (data,) if isinstance(data, bytes | bytearray | memoryview) else data
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise InputError(f"cannot write {what} ({exc.strerror})", file=str(path)) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:  # leave no temporary file behind, whatever stopped the write
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise InputError(f"cannot write {what} ({exc.strerror})", file=str(path)) from None
        raise
    return path
