"""Writing secrets safely: atomic, 0600 by default, never a partial file."""

from __future__ import annotations

import os
import tempfile

from .errors import SeedtoolError


class WriteError(SeedtoolError):
    pass


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` via a temporary file in the same directory and rename.

    The temporary file is created with `mode` from the start (no window where a
    secret is world-readable); on any failure it is removed and `path` is untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".seedtool-", dir=directory)
    except OSError as e:
        raise WriteError(
            f"cannot write {path}: {e.strerror}; check the directory exists and is writable"
        ) from None
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except OSError as e:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise WriteError(f"cannot write {path}: {e.strerror}; nothing was written") from None
