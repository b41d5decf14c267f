"""The small file-system interface that image work goes through.

`seedtool image seed` and `seedtool bake` change files inside a target that may be a
directory (a chroot, `/` in a Packer build) or a disk image (raw ext4 through
e2fsprogs' debugfs without root or mounts; anything else through libguestfs). They
talk to all of them through `TargetFS`, so each backend lives in one module and the
operations on images are written once. Paths are absolute inside the target.
"""

from __future__ import annotations

import stat as stat_mod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..shared.errors import DeliveryError

#: Linux's own limit on symlinks followed in one lookup (path_resolution(7))
MAX_SYMLINKS = 40


@dataclass(frozen=True)
class FileStat:
    mode: int  # full st_mode, file type bits included
    uid: int
    gid: int
    size: int


class TargetFS(Protocol):
    """What image operations need; every method raises a `SeedtoolError` subclass.

    Each backend subclasses it (localfs.py, debugfs.py, guestfs.py), so a backend that
    lacks an operation cannot be made (mypy: abstract class) and callers never probe."""

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

    def rmdir(self, path: str) -> None:
        """Remove an empty directory; fine if it is absent."""

    def listdir(self, path: str) -> list[str]: ...

    def symlink(self, target: str, path: str) -> None: ...

    def readlink(self, path: str) -> str:
        """The target of the symlink `path` as stored in it (not resolved)."""

    def scandir(self, path: str) -> list[tuple[str, FileStat]]:
        """(name, metadata not following symlinks) of each entry of the directory `path`,
        without . and .., sorted by name: one listing instead of a stat per entry."""

    def read_chunks(self, paths: Sequence[str], size: int) -> Iterator[tuple[str, bytes | None]]:
        """The regular files `paths`, in that order, as (path, piece) with pieces of at most
        `size` bytes, so a large file is never held whole. An empty file yields nothing; a
        file this process may not read (permissions) yields (path, None) once and the
        others are still read. A path that is not a regular file is an error."""

    def mounts(self) -> set[str]:
        """The mount points of the file systems this target shows, "/" included: one
        for a directory or a debugfs file system, the root's fstab mounts as libguestfs
        mounted them."""

    def close(self) -> None:
        """Flush and release the target; after this nothing is half-written."""


class SymlinkLoop(DeliveryError):
    """Resolving a path inside the target met more than MAX_SYMLINKS symlinks."""


def resolve(fs: TargetFS, path: str, follow_final: bool = True) -> str:
    """`path` with every symlink resolved *inside* the target, as the booted image would
    see it: an absolute link target starts again at the target's root and `..` never
    climbs above it, so no answer lies outside the target. The path need not exist
    (what is missing is kept as given). Raises SymlinkLoop after MAX_SYMLINKS links.
    """
    def mode(p: str) -> int | None:
        st = fs.stat(p)
        return None if st is None else st.mode

    return resolve_links(path, follow_final, mode, fs.readlink, fs.description)


def resolve_links(path: str, follow_final: bool, mode: Callable[[str], int | None],
                  readlink: Callable[[str], str], description: str) -> str:
    """The walk behind `resolve`, given how to lstat (`mode`: None when missing) and
    read a link at an absolute path inside the target; every backend resolves alike."""
    todo = [p for p in path.split("/") if p]
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        if not todo and not follow_final:
            done.append(part)
            break
        cur = "/" + "/".join([*done, part])
        m = mode(cur)
        if m is None or not stat_mod.S_ISLNK(m):
            done.append(part)
            if m is None or not stat_mod.S_ISDIR(m):
                done.extend(todo)  # missing or not a directory: nothing below to resolve
                break
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise SymlinkLoop(
                f"{path} in {description} goes through more than {MAX_SYMLINKS} symlinks; "
                "fix the link loop in the image"
            )
        target = readlink(cur)
        if target.startswith("/"):
            done = []
        todo = [p for p in target.split("/") if p] + todo
    return "/" + "/".join(done)
