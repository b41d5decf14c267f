"""Small helpers over `TargetFS` that bake and its checks share: symlinks resolved
inside the target, type tests, a walk that never follows a symlink, the init system."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

from ..image.fs import FileStat, SymlinkLoop, TargetFS, resolve


def real(fs: TargetFS, path: str, follow_final: bool = True) -> str | None:
    """`path` with symlinks resolved inside the target (`fs.resolve`); None for a loop."""
    try:
        return resolve(fs, path, follow_final)
    except SymlinkLoop:
        return None


def is_dir(fs: TargetFS, path: str) -> bool:
    st = fs.stat(path)
    return st is not None and stat.S_ISDIR(st.mode)


def is_file(fs: TargetFS, path: str) -> bool:
    st = fs.stat(path)
    return st is not None and stat.S_ISREG(st.mode)


def walk(fs: TargetFS, top: str) -> Iterator[tuple[str, FileStat]]:
    """(path, stat) of everything below `top`, children before their directory.

    Symlinks are listed, never followed, so a walk stays inside the tree it was given.
    """
    for name, st in fs.scandir(top):
        path = f"{top.rstrip('/')}/{name}"
        if stat.S_ISDIR(st.mode):
            yield from walk(fs, path)
        yield path, st


def uses_systemd(fs: TargetFS) -> bool:
    """True if the target boots systemd as its init (/sbin/init is systemd)."""
    init = fs.stat("/sbin/init")
    if init is not None and stat.S_ISLNK(init.mode):
        return os.path.basename(fs.readlink("/sbin/init")) == "systemd"
    if init is not None:
        return False  # a real /sbin/init binary: sysvinit, busybox, runit ...
    return is_file(fs, "/usr/lib/systemd/systemd") or is_file(fs, "/lib/systemd/systemd")
