"""`TargetFS` over e2fsprogs' `debugfs -w`: an ext2/3/4 file system inside a raw image.

No root, mount or loop device: debugfs opens the image file itself, at a byte offset
when the file system is a partition (`image?offset=BYTES`, the unix I/O manager's
option, debugfs(8)). Every operation is one or a few debugfs runs with argument lists
(never a shell); a run's requests go on its standard input (`-f -`), and anything it
prints on standard error other than its version banner is a failure, because debugfs
exits 0 even when a request fails.

Writes are all-or-nothing: the data goes to a temporary name in the same directory
with its mode and owner set in the same run, is read back and compared in constant
time, and only then takes the final name (`ln` plus `unlink`, which together are a
rename: neither touches the link count). On any failure, a full file system included,
the temporary file is deleted, so a path holds either the old file, the complete new
one, or nothing. debugfs commits a run's changes when it closes the file system at the
end of the run; `close()` then fsyncs the image.

Must never put file contents (a seed) into an error message or a log.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat as stat_mod
import subprocess
import tempfile
from collections.abc import Iterator, Sequence

from ..shared.errors import DeliveryError
from .fs import FileStat, TargetFS
from .guards import check_file_target, check_reads_back, file_to_remove, missing_dirs

DEBUGFS = "debugfs"
#: a debugfs run on a large image opens its group descriptors; minutes means it hangs
TIMEOUT = 300
_BANNER = re.compile(r"^debugfs \d+\.\d+")
# `ls -p` prints /inode/mode(octal)/uid/gid/name/size/ per entry (debugfs/ls.c)
_LS_P = re.compile(r"^/(\d+)/([0-7]+)/(\d+)/(\d+)/(.*)/(\d*)/$")
_NOT_FOUND = ("File not found by ext2_lookup", "Ext2 inode is not a directory")
_FAST_LINK = re.compile(r'^Fast link dest: "(.*)"$', re.M)
#: one `read_chunks` run reads at most this many files; its requests stay far below a
#: pipe's buffer, so writing them all before reading the output cannot deadlock
_BATCH = 256
#: directories whose listings scandir fetches ahead at most (a few MB of metadata)
_AHEAD = 50_000
_FULL = ("Could not allocate block", "Could not allocate inode", "No free space",
         "No space left")


class DebugfsError(DeliveryError):
    """debugfs is missing, or it refused or failed a request on the image."""


class FileSystemFull(DebugfsError):
    """The file system inside the image has no room for the file; nothing was written."""


def _quote(path: str) -> str:
    """A path as one debugfs request argument (its parser takes double quotes)."""
    if not path.startswith("/"):
        raise DebugfsError(f"path {path!r} inside the image must be absolute")
    if any(c == '"' or ord(c) < 32 or ord(c) == 127 for c in path):
        raise DebugfsError(
            f"path {path!r} holds a quote or control character, which debugfs requests "
            "cannot carry; use the libguestfs backend for it"
        )
    return f'"{path}"'


def _quotable(path: str) -> bool:
    return not any(c == '"' or ord(c) < 32 or ord(c) == 127 for c in path)


def _split(path: str) -> tuple[str, str]:
    path = "/" + path.strip("/")
    parent, _, name = path.rpartition("/")
    return parent or "/", name


class DebugfsTarget(TargetFS):
    """An ext2/3/4 file system at byte `offset` of the raw image file `image`.

    Works on image files the caller may write; does not check whether the image is in
    use (`seedtool.image.open.open_target` refuses that before it opens one).
    """

    def __init__(self, image: str | os.PathLike[str], offset: int = 0,
                 description: str | None = None, debugfs: str = DEBUGFS) -> None:
        exe = shutil.which(debugfs)
        if exe is None:
            raise DebugfsError(
                "debugfs was not found; install e2fsprogs (apt-get install e2fsprogs)"
            )
        self._exe = exe
        self.image = os.fspath(image)
        self.offset = offset
        self.description = description or (
            f"{os.path.basename(self.image)} (ext4 at byte {offset}, debugfs)")
        self._linkdir: str | None = None
        # listings fetched ahead by scandir, each used once; any change empties it
        self._listed: dict[str, list[tuple[str, FileStat]]] = {}
        target = self.image
        if "?" in target:
            # debugfs reads everything after '?' as I/O options: reach the file
            # through a symlink whose name has none
            self._linkdir = tempfile.mkdtemp(prefix="seedtool-img-")
            target = os.path.join(self._linkdir, "image")
            os.symlink(os.path.abspath(self.image), target)
        self._device = f"{target}?offset={offset}" if offset else target
        # fail early, with debugfs's reason, if this is no ext file system it can open
        self._run(["ls -p /"], write=False)

    # ---- running debugfs ----------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # English messages (we match a few), and no pager for `ls`
        env.update(LC_ALL="C", LANG="C", DEBUGFS_PAGER="__none__", PAGER="__none__")
        return env

    def _run(self, requests: Sequence[str], write: bool) -> str:
        """Run requests in one debugfs session; return stdout; raise on any error text."""
        args = [self._exe, *(["-w"] if write else []), "-f", "-", self._device]
        out, errors = self._exec(args, ("\n".join(requests) + "\n").encode())
        if errors:
            self._raise(errors)
        return out.decode("utf-8", "surrogateescape")

    def _exec(self, args: list[str], stdin: bytes | None) -> tuple[bytes, list[str]]:
        try:
            proc = subprocess.run(args, input=stdin, capture_output=True, timeout=TIMEOUT,
                                  env=self._env(), check=False)
        except subprocess.TimeoutExpired:
            raise DebugfsError(
                f"debugfs did not finish within {TIMEOUT} s on {self.image}; check that the "
                "image is a local file and not damaged (e2fsck -fn)"
            ) from None
        except OSError as e:
            raise DebugfsError(f"cannot run debugfs: {e.strerror}") from None
        errors = [ln.strip() for ln in proc.stderr.decode("utf-8", "replace").splitlines()
                  if ln.strip() and not _BANNER.match(ln)]
        if proc.returncode != 0 and not errors:
            errors = [f"exit status {proc.returncode}"]
        return proc.stdout, errors

    def _raise(self, errors: list[str]) -> None:
        # debugfs's messages name paths and libext2fs errors, never file contents
        text = "; ".join(errors)[:300]
        if any(k in text for k in _FULL):
            raise FileSystemFull(
                f"the file system in {self.description} is full ({text}); free space in "
                "the image or grow it, then try again: nothing was written"
            )
        raise DebugfsError(
            f"debugfs failed on {self.description}: {text}; check the image with "
            "e2fsck -fn"
        )

    # ---- TargetFS ---------------------------------------------------------------------

    def _ls(self, path: str) -> list[tuple[str, FileStat]]:
        out = self._run([f"ls -p {_quote(path)}"], write=False)
        entries = []
        for line in out.splitlines():
            m = _LS_P.match(line)
            if m:
                _ino, mode, uid, gid, name, size = m.groups()
                entries.append((name, FileStat(int(mode, 8), int(uid), int(gid),
                                               int(size or 0))))
        return entries

    def stat(self, path: str) -> FileStat | None:
        """Metadata of `path`, not following a final symlink (from `ls -p` of its parent)."""
        parent, name = _split(path)
        try:
            entries = self._ls(parent)
        except DebugfsError as e:
            if any(k in str(e) for k in _NOT_FOUND):
                return None
            raise
        want = name or "."
        for entry, st in entries:
            if entry == want:
                return st
        return None

    def read(self, path: str) -> bytes:
        """The contents of the regular file `path`; a symlink or anything else is an
        error (read its target instead)."""
        st = self.stat(path)
        if st is None or not stat_mod.S_ISREG(st.mode):
            raise DebugfsError(f"{path} is not a regular file in {self.description}")
        return self._cat(path, st.size, path)

    def write(self, path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0
              ) -> None:
        """Create or replace the regular file `path` (its parent must exist) with this mode
        and owner from the start; all-or-nothing, verified by reading it back."""
        self._listed.clear()
        parent, name = _split(path)
        old = check_file_target(self, path, parent, DebugfsError)
        tmp = f"{parent.rstrip('/')}/.seedtool-{secrets.token_hex(6)}"
        qtmp, qpath = _quote(tmp), _quote(path)
        with tempfile.TemporaryDirectory(prefix="seedtool-img-") as local_dir:
            local = os.path.join(local_dir, "data")
            fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            try:
                self._run([
                    f'write "{local}" {qtmp}',
                    f"sif {qtmp} mode 0{stat_mod.S_IFREG | (mode & 0o7777):o}",
                    f"sif {qtmp} uid {uid}",
                    f"sif {qtmp} gid {gid}",
                ], write=True)
                self._check(tmp, data, mode, uid, gid)
                self._run([*([f"rm {qpath}"] if old is not None else []),
                           f"ln {qtmp} {qpath}", f"unlink {qtmp}"], write=True)
            except BaseException:
                self._discard(tmp)
                raise
        self._check(path, data, mode, uid, gid)

    def _check(self, path: str, data: bytes, mode: int, uid: int, gid: int) -> None:
        check_reads_back(self, path, data, mode, uid, gid, DebugfsError,
                         "; check the image with e2fsck -fn: nothing was kept")

    def _discard(self, tmp: str) -> None:
        try:
            if self.stat(tmp) is not None:
                self._run([f"rm {_quote(tmp)}"], write=True)
        except DeliveryError:
            pass  # the original error is the one to report

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        """Create a directory and missing parents (each created one gets `mode`, owner
        root); fine if it exists; an existing non-directory is an error."""
        self._listed.clear()
        for cur in missing_dirs(self, path, DebugfsError):
            q = _quote(cur)
            self._run([f"mkdir {q}", f"sif {q} mode 0{stat_mod.S_IFDIR | (mode & 0o7777):o}",
                       f"sif {q} uid 0", f"sif {q} gid 0"], write=True)

    def rmdir(self, path: str) -> None:
        """Remove an empty directory; fine if it is absent."""
        self._listed.clear()
        st = self.stat(path)
        if st is None:
            return
        if not stat_mod.S_ISDIR(st.mode):
            raise DebugfsError(f"{path} in {self.description} is not a directory")
        self._run([f"rmdir {_quote(path)}"], write=True)

    def remove(self, path: str) -> None:
        """Remove a file, symlink or other non-directory; fine if it is absent."""
        self._listed.clear()
        if file_to_remove(self, path, DebugfsError):
            self._run([f"rm {_quote(path)}"], write=True)

    def listdir(self, path: str) -> list[str]:
        """Names in the directory `path`, without . and .., sorted."""
        st = self.stat(path)
        if st is None or not stat_mod.S_ISDIR(st.mode):
            raise DebugfsError(f"{path} is not a directory in {self.description}")
        return sorted(n for n, _ in self._ls(path) if n not in (".", ".."))

    def symlink(self, target: str, path: str) -> None:
        """Make `path` a symlink to `target` (owner root), replacing a file or symlink."""
        self._listed.clear()
        old = self.stat(path)
        if old is not None and stat_mod.S_ISDIR(old.mode):
            raise DebugfsError(f"cannot make {path} a symlink: it is a directory")
        if any(c == '"' or ord(c) < 32 for c in target):
            raise DebugfsError(f"symlink target {target!r} holds a quote or control character")
        q = _quote(path)
        self._run([*([f"rm {q}"] if old is not None else []), f'symlink {q} "{target}"'],
                  write=True)

    def readlink(self, path: str) -> str:
        """The target stored in the symlink `path`: `stat` shows a fast (inline) link's,
        `cat` prints a slow link's data blocks (debugfs/debugfs.c, dump.c)."""
        st = self.stat(path)
        if st is None or not stat_mod.S_ISLNK(st.mode):
            raise DebugfsError(f"{path} is not a symlink in {self.description}")
        out = self._run([f"stat {_quote(path)}"], write=False)
        m = _FAST_LINK.search(out)
        if m is not None:
            return m.group(1)
        return self._cat(path, st.size, f"the symlink {path}").decode("utf-8", "surrogateescape")

    def _cat(self, path: str, size: int, what: str) -> bytes:
        """`cat` of `path`, which must give exactly `size` bytes."""
        data, errors = self._exec([self._exe, "-R", f"cat {_quote(path)}", self._device], None)
        if errors:
            self._raise(errors)
        if len(data) != size:
            raise DebugfsError(
                f"reading {what} from {self.description} gave {len(data)} bytes, not "
                f"{size}; check the image with e2fsck -fn"
            )
        return data

    def scandir(self, path: str) -> list[tuple[str, FileStat]]:
        """Entries of the directory `path` with their metadata, from one `ls -p`.

        A name with a newline would split its `ls -p` line: such a directory is an error
        naming the other backend, never a listing that silently lacks the entry.

        A whole-image walk lists every directory; one debugfs run each is most of its
        time. So a directory not fetched ahead is listed with its whole subtree, one run
        per level (at most _AHEAD directories), and later calls take those listings."""
        ahead = self._listed.pop(path, None)
        if ahead is not None:
            return ahead
        entries = self._scandir_one(path)
        self._fetch_ahead(path, entries)
        return entries

    def _fetch_ahead(self, top: str, entries: list[tuple[str, FileStat]]) -> None:
        level = [f"{top.rstrip('/')}/{n}" for n, st in entries if stat_mod.S_ISDIR(st.mode)]
        budget = _AHEAD - len(self._listed)
        while level and budget > 0:
            level = [d for d in level[:budget] if _quotable(d)]
            listed = self._ls_many(level) if level else None
            if listed is None:
                return  # something it could not parse: those are listed one by one
            nxt = []
            for d in level:
                if d not in listed:
                    return
                got = sorted(((n, st) for n, st in listed[d].items() if n not in (".", "..")),
                             key=lambda e: e[0])
                self._listed[d] = got
                nxt += [f"{d}/{n}" for n, st in got if stat_mod.S_ISDIR(st.mode)]
            budget -= len(level)
            level = nxt

    def _scandir_one(self, path: str) -> list[tuple[str, FileStat]]:
        try:
            out = self._run([f"ls -p {_quote(path)}"], write=False)
        except DebugfsError as e:
            if any(k in str(e) for k in _NOT_FOUND):
                raise DebugfsError(f"{path} is not a directory in {self.description}") from None
            raise
        entries = []
        dot = False
        for line in out.splitlines():
            m = _LS_P.match(line)
            if m:
                _ino, mode, uid, gid, name, size = m.groups()
                dot = dot or (name == "." and stat_mod.S_ISDIR(int(mode, 8)))
                if name not in (".", ".."):
                    entries.append((name, FileStat(int(mode, 8), int(uid), int(gid),
                                                   int(size or 0))))
            elif line.strip() and not line.startswith("debugfs: "):
                raise DebugfsError(
                    f"{path} in {self.description} holds a name debugfs cannot list (a "
                    "control character); use --backend libguestfs for this image"
                )
        if not dot:  # `ls -p` of a file lists the file itself, with no "." entry
            raise DebugfsError(f"{path} is not a directory in {self.description}")
        return sorted(entries, key=lambda e: e[0])

    def read_chunks(self, paths: Sequence[str], size: int) -> Iterator[tuple[str, bytes | None]]:
        """Files in batches, each batch one debugfs run of `cat` requests streamed back.

        With `-f` debugfs echoes each request ("debugfs: cat PATH") before its output,
        and `cat` prints exactly the file's size in bytes: each file is cut out of the
        stream by its size and the next echo is checked, so a failed or short `cat`
        is an error rather than bytes credited to the wrong file."""
        for i in range(0, len(paths), _BATCH):
            yield from self._cat_batch(paths[i:i + _BATCH], size)

    def _cat_batch(self, paths: Sequence[str], size: int) -> Iterator[tuple[str, bytes | None]]:
        listed = self._ls_many(sorted({_split(p)[0] for p in paths}))
        sizes = []
        for path in paths:
            parent, name = _split(path)
            st = self.stat(path) if listed is None else listed.get(parent, {}).get(name)
            if st is None or not stat_mod.S_ISREG(st.mode):
                raise DebugfsError(f"{path} is not a regular file in {self.description}")
            sizes.append(st.size)
        requests = [f"cat {_quote(p)}" for p in paths]
        with tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen([self._exe, "-f", "-", self._device],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=err, env=self._env())
            except OSError as e:
                raise DebugfsError(f"cannot run debugfs: {e.strerror}") from None
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(("\n".join(requests) + "\n").encode())
                proc.stdin.close()
                for path, req, n in zip(paths, requests, sizes):
                    echo = f"debugfs: {req}\n".encode()
                    if proc.stdout.read(len(echo)) != echo:
                        self._stream_failed(path)
                    left = n
                    while left:
                        piece = proc.stdout.read(min(size, left))
                        if not piece:
                            self._stream_failed(path)
                        left -= len(piece)
                        yield path, piece
                if proc.stdout.read(1):
                    self._stream_failed(paths[-1])
                proc.wait(timeout=TIMEOUT)
                err.seek(0)
                errors = [ln.strip() for ln in err.read().decode("utf-8", "replace").splitlines()
                          if ln.strip() and not _BANNER.match(ln)]
                if errors:
                    self._raise(errors)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                proc.stdout.close()

    def _ls_many(self, dirs: Sequence[str]) -> dict[str, dict[str, FileStat]] | None:
        """`ls -p` of several directories in one run, split at the echoed requests; None
        if any line is not an echo or an entry (a name with a newline could fake either),
        or a directory was met twice or not as a directory."""
        requests = [f"ls -p {_quote(d)}" for d in dirs]
        try:
            out = self._run(requests, write=False)
        except DebugfsError:
            return None
        echoes = {f"debugfs: {r}": d for r, d in zip(requests, dirs)}
        listed: dict[str, dict[str, FileStat]] = {}
        cur: dict[str, FileStat] | None = None
        for line in out.splitlines():
            if line in echoes:
                if echoes[line] in listed:
                    return None
                cur = listed[echoes[line]] = {}
                continue
            m = _LS_P.match(line)
            if m and cur is not None:
                _ino, mode, uid, gid, name, size = m.groups()
                cur[name] = FileStat(int(mode, 8), int(uid), int(gid), int(size or 0))
            elif line.strip():
                return None
        if any("." not in got or not stat_mod.S_ISDIR(got["."].mode) for got in listed.values()):
            return None
        return listed

    def _stream_failed(self, path: str) -> None:
        raise DebugfsError(
            f"reading {path} from {self.description} did not give its size in bytes; check "
            "the image with e2fsck -fn"
        )

    def mounts(self) -> set[str]:
        return {"/"}  # one file system: debugfs follows no mounts

    def close(self) -> None:
        """Make what debugfs wrote durable (fsync the image) and drop temporary links."""
        try:
            fd = os.open(self.image, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise DebugfsError(f"cannot flush {self.image}: {e.strerror}") from None
        finally:
            if self._linkdir is not None:
                shutil.rmtree(self._linkdir, ignore_errors=True)
                self._linkdir = None

    def __enter__(self) -> DebugfsTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
