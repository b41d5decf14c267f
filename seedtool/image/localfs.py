"""`TargetFS` over a directory: a chroot, an unpacked image tree, or `/` itself.

`seedtool bake --root DIR` works on the image being built through this backend, so
the same bake code also serves disk images through the debugfs and libguestfs
backends. Paths are absolute *inside the target*: every symlink met on the way is
resolved as it would be inside the target (an absolute link target starts again at
the target's root, `..` never climbs above it), so an image's `/etc/foo -> /etc/shadow`
is read as the image's file, never the build host's.

Must never: follow a symlink out of the root, leave a half-written file (every write
goes to a temporary file in the same directory, is synced and renamed over the old
one), or put file contents into an error message.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..shared.errors import DeliveryError
from ..shared.fileio import replace_file
from .fs import FileStat, TargetFS, resolve_links


class LocalFS(TargetFS):
    """A directory tree as a `TargetFS`."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        r = Path(root)
        try:
            real = r.resolve(strict=True)
        except (OSError, RuntimeError):
            raise DeliveryError(
                f"target root {r} does not exist; give an existing directory"
            ) from None
        if not real.is_dir():
            raise DeliveryError(
                f"target root {r} is not a directory; give the image's root directory"
            )
        self.root = real
        self.description = "/ (the running system)" if str(real) == "/" else f"directory {real}"

    # --- path resolution -----------------------------------------------------------

    def _host(self, path: str, follow_final: bool = False) -> Path:
        """The host path of `path` inside the root, symlinks resolved inside the root."""
        if not path.startswith("/") or "\x00" in path:
            raise DeliveryError(f"{path!r} is not an absolute path inside the target")

        def mode(p: str) -> int | None:
            try:
                return os.lstat(self.root / p.lstrip("/")).st_mode
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as e:
                raise self._error("look up", path, e) from None

        inside = resolve_links(path, follow_final, mode,
                               lambda p: os.readlink(self.root / p.lstrip("/")),
                               self.description)
        return self.root.joinpath(inside.lstrip("/"))

    def _error(self, verb: str, path: str, e: OSError) -> DeliveryError:
        reason = e.strerror or type(e).__name__
        hint = (
            "run as root or fix the permissions"
            if e.errno in (errno.EACCES, errno.EPERM)
            else "the file system is read-only; bake a writable copy"
            if e.errno == errno.EROFS
            else "check the target"
        )
        return DeliveryError(f"cannot {verb} {path} in {self.description}: {reason}; {hint}")

    # --- TargetFS --------------------------------------------------------------------

    def stat(self, path: str) -> FileStat | None:
        host = self._host(path)
        try:
            st = os.lstat(host)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise self._error("stat", path, e) from None
        return FileStat(st.st_mode, st.st_uid, st.st_gid, st.st_size)

    def read(self, path: str) -> bytes:
        host = self._host(path, follow_final=True)
        try:
            fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise self._error("read", path, e) from None
        try:
            with os.fdopen(fd, "rb") as f:
                return f.read()
        except OSError as e:
            raise self._error("read", path, e) from None

    def write(self, path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        parent = self._host(str(Path(path).parent), follow_final=True)
        # only root can give files away; an unprivileged build owns what it makes
        owner = (uid, gid) if os.geteuid() == 0 else None
        try:
            replace_file(parent / Path(path).name, data, mode, owner=owner)
        except OSError as e:
            raise self._error("write", path, e) from None

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        parts = [p for p in path.split("/") if p]
        for i in range(1, len(parts) + 1):
            sub = "/" + "/".join(parts[:i])
            host = self._host(sub, follow_final=True)
            if host.is_dir():
                continue
            try:
                os.mkdir(host, mode)
                os.chmod(host, mode)  # not reduced by the umask
            except FileExistsError:
                if not host.is_dir():
                    raise DeliveryError(
                        f"{sub} in {self.description} exists and is not a directory; "
                        "remove it or fix the image"
                    ) from None
            except OSError as e:
                raise self._error("create directory", sub, e) from None

    def remove(self, path: str) -> None:
        host = self._host(path)
        try:
            st = os.lstat(host)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as e:
            raise self._error("remove", path, e) from None
        if stat.S_ISDIR(st.st_mode):
            raise DeliveryError(
                f"{path} in {self.description} is a directory where a file was expected; "
                "remove it by hand"
            )
        try:
            os.unlink(host)
        except FileNotFoundError:
            return
        except OSError as e:
            raise self._error("remove", path, e) from None

    def listdir(self, path: str) -> list[str]:
        host = self._host(path, follow_final=True)
        try:
            return sorted(os.listdir(host))
        except OSError as e:
            raise self._error("list", path, e) from None

    def symlink(self, target: str, path: str) -> None:
        parent = self._host(str(Path(path).parent), follow_final=True)
        host = parent / Path(path).name
        tmp = parent / f".{host.name}.seedtool-tmp"
        try:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(target, tmp)
            os.replace(tmp, host)
        except OSError as e:
            raise self._error("create symlink", path, e) from None

    def mounts(self) -> set[str]:
        return {"/"}  # what is mounted below the root is part of the directory tree

    def close(self) -> None:
        """Nothing is buffered here: every write was synced and renamed into place."""

    def readlink(self, path: str) -> str:
        host = self._host(path)
        try:
            return os.readlink(host)
        except OSError as e:
            raise self._error("read symlink", path, e) from None

    def scandir(self, path: str) -> list[tuple[str, FileStat]]:
        host = self._host(path, follow_final=True)
        out = []
        try:
            with os.scandir(host) as it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # removed meanwhile
                    out.append((entry.name, FileStat(st.st_mode, st.st_uid, st.st_gid,
                                                     st.st_size)))
        except OSError as e:
            raise self._error("list", path, e) from None
        return sorted(out, key=lambda e: e[0])

    def read_chunks(self, paths: Sequence[str], size: int) -> Iterator[tuple[str, bytes | None]]:
        for path in paths:
            host = self._host(path)
            try:
                # O_NOFOLLOW: a file swapped for a symlink meanwhile is refused, not followed
                fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
                             | os.O_NONBLOCK)
            except OSError as e:
                if e.errno in (errno.EACCES, errno.EPERM):
                    yield path, None
                    continue
                raise self._error("read", path, e) from None
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise DeliveryError(f"{path} in {self.description} is not a regular file")
                while True:
                    try:
                        piece = os.read(fd, size)
                    except OSError as e:
                        raise self._error("read", path, e) from None
                    if not piece:
                        break
                    yield path, piece
            finally:
                os.close(fd)

    def rmdir(self, path: str) -> None:
        """Remove an empty directory; fine if it is absent."""
        host = self._host(path)
        try:
            os.rmdir(host)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as e:
            raise self._error("remove directory", path, e) from None
