"""A real, tiny file system for disk-full tests: a tmpfs of the test's own, and a filler."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

PAGE = os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` (mount(8) syntax, e.g. "256k") at `where`; unmount after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                    str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def fill(fs: Path, leave: int = 0) -> Path:
    """Fill `fs` until ENOSPC, leaving `leave` bytes (whole pages) free; the filler file,
    to delete to free the space again."""
    reserve = fs / ".reserve"
    if leave:
        reserve.write_bytes(b"\0" * leave)
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * PAGE)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    if leave:
        reserve.unlink()
    assert os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize == leave
    return filler
