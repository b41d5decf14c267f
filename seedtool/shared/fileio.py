"""Writing secrets safely: atomic, 0600 by default, never a partial file.

Standard library only, and no `tempfile`: the guest writes its status and systemd's
random-seed with this at boot, where `tempfile` (which imports `random`, `shutil`
and more) is a measurable cost under emulation and, before the CRNG is ready,
`random`'s import-time seeding is best not triggered at all.
"""

from __future__ import annotations

import itertools
import os
import time

from .errors import SeedtoolError

_counter = itertools.count()
_ATTEMPTS = 100


class WriteError(SeedtoolError):
    pass


def _create_temporary(directory: str, mode: int) -> tuple[int, str]:
    """A new file beside the target, created exclusively (O_EXCL, no symlink followed)
    with `mode` from the start, so a secret is never readable by others."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(_ATTEMPTS):
        name = f".seedtool-{os.getpid()}-{time.monotonic_ns():x}-{next(_counter)}"
        tmp = os.path.join(directory, name)
        try:
            return os.open(tmp, flags, mode & 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(17, "no free temporary name")


def _fill_and_rename(fd: int, tmp: str, path: str, data: bytes, mode: int, durable: bool,
                     owner: tuple[int, int] | None) -> None:
    """Give the temporary file its mode (and owner), its data, then its name `path`;
    on any failure remove it and raise the OSError."""
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if durable:
            os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except OSError:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def replace_file(path: str | os.PathLike[str], data: bytes, mode: int = 0o600, *,
                 durable: bool = True, owner: tuple[int, int] | None = None) -> None:
    """`atomic_write` for a caller with its own errors: the same steps, raising OSError.

    `owner` (uid, gid) is given to the file before its data (it needs root).
    """
    path = os.fspath(path)
    fd, tmp = _create_temporary(os.path.dirname(os.path.abspath(path)), mode)
    _fill_and_rename(fd, tmp, path, data, mode, durable, owner)


def atomic_write(
    path: str | os.PathLike[str], data: bytes, mode: int = 0o600, durable: bool = True
) -> None:
    """Write `data` to `path` via a temporary file in the same directory and rename.

    The temporary file is created with at most 0600 and gets `mode` before any byte
    is written; on any failure it is removed and `path` is untouched. `durable`
    flushes the data to disk before the rename (fsync); without it the rename is still
    atomic but a crash soon after may leave the old file or an empty one, which suits
    files that are rewritten anyway (status, systemd's random-seed). Raises WriteError.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = _create_temporary(directory, mode)
    except OSError as e:
        raise WriteError(
            f"cannot write {path}: {e.strerror}; check the directory exists and is writable"
        ) from None
    try:
        _fill_and_rename(fd, tmp, path, data, mode, durable, None)
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror}; nothing was written") from None
