"""The checks the image backends (debugfs, libguestfs) make around an operation, written
once: before `write` (`check_file_target`), after it (`check_reads_back`), before
`mkdir` (`missing_dirs`) and before `remove` (`file_to_remove`). Each raises the
backend's own error class, and never puts file contents into a message.
"""

from __future__ import annotations

import hmac
import stat as stat_mod

from .fs import FileStat, TargetFS


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


def missing_dirs(fs: TargetFS, path: str, error: type[Exception]) -> list[str]:
    """Before `mkdir`: the directories to create for `path`, outermost first (each path
    below a missing one is missing too); raises `error` if a part of `path` exists and
    is not a directory."""
    out: list[str] = []
    cur = ""
    for part in (p for p in path.split("/") if p):
        cur += "/" + part
        st = None if out else fs.stat(cur)
        if st is None:
            out.append(cur)
        elif not stat_mod.S_ISDIR(st.mode):
            raise error(f"cannot create {path} in {fs.description}: {cur} exists and is not "
                        "a directory")
    return out


def check_reads_back(fs: TargetFS, path: str, data: bytes, mode: int, uid: int, gid: int,
                     error: type[Exception], hint: str = "") -> None:
    """After `write`: raise `error` (its message ending in `hint`) unless `path` is a
    regular file with exactly this mode, owner and content (compared in constant time:
    the content may be a seed, and is never put into the message)."""
    st = fs.stat(path)
    ok = (st is not None and stat_mod.S_ISREG(st.mode)
          and stat_mod.S_IMODE(st.mode) == mode & 0o7777 and (st.uid, st.gid) == (uid, gid))
    if not ok or not hmac.compare_digest(fs.read(path), data):
        raise error(f"{path} in {fs.description} did not read back as written{hint}")


def file_to_remove(fs: TargetFS, path: str, error: type[Exception]) -> bool:
    """Before `remove`: False if `path` is absent; raises `error` if it is a directory."""
    st = fs.stat(path)
    if st is not None and stat_mod.S_ISDIR(st.mode):
        raise error(f"{path} in {fs.description} is a directory; remove() takes files only")
    return st is not None
