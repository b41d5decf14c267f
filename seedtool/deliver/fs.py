"""The small file-system interface that image work goes through.

`seedtool image seed` and `seedtool bake` change files inside a target that may be a
directory (a chroot, `/` in a Packer build) or a disk image (raw ext4 through
e2fsprogs' debugfs without root or mounts; anything else through libguestfs). They
talk to all of them through `TargetFS`, so each backend lives in one module and the
operations on images are written once. Paths are absolute inside the target.
"""

from __future__ import annotations

import stat as stat_mod
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class FileStat:
    mode: int  # full st_mode, file type bits included
    uid: int
    gid: int
    size: int


class TargetFS(Protocol):
    """What image operations need; every method raises a `SeedtoolError` subclass."""

    #: a short human description, e.g. "disk.raw (ext4 partition 1, debugfs)"
    description: str

    def stat(self, path: str) -> FileStat | None:
        """Metadata of `path` (not following a final symlink), or None if absent."""

    def read(self, path: str) -> bytes: ...

    def write(self, path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        """Create or replace a regular file, with this mode and owner from the start."""

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        """Create a directory and missing parents; fine if it exists."""

    def remove(self, path: str) -> None:
        """Remove a file or symlink; fine if it is absent."""

    def listdir(self, path: str) -> list[str]: ...

    def symlink(self, target: str, path: str) -> None: ...

    def close(self) -> None:
        """Flush and release the target; after this nothing is half-written."""


def check_file_target(fs: TargetFS, path: str, parent: str,
                      error: type[Exception]) -> FileStat | None:
    """Before `write`: the parent must be a directory and `path` must not be one.

    Returns the current metadata of `path` (None if absent); raises `error`.
    """
    pst = fs.stat(parent)
    if pst is None or not stat_mod.S_ISDIR(pst.mode):
        raise error(
            f"cannot write {path} in {fs.description}: {parent} is not a directory; "
            "create it first"
        )
    old = fs.stat(path)
    if old is not None and stat_mod.S_ISDIR(old.mode):
        raise error(f"cannot write {path} in {fs.description}: it is a directory")
    return old
