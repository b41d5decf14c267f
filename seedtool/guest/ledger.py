"""The ledger of consumed seed ids: a seed is credited at most once per disk.

What it must never do: let a consumed seed id become invisible. A seed id that is
not seen is a seed that can be credited a second time (claim C2 in
docs/threat-model.md), so every state of the file is either read completely or
refused with `LedgerError`, and `LedgerError` means nothing is credited. The ledger
holds ids only, never seed bytes. Standard library only (it runs at boot).

The record format, in ASCII, one per line::

    <seed id: 32 lower-case hex digits> <unix time: decimal> <origin: [A-Za-z0-9:._/-]{1,64}>\\n

Why a seed id can be trusted to be durable: `consume` writes the record and fsyncs
the file (and its directory) BEFORE it returns True, and only then does the caller
credit the seed. fsync(2) returns only once the data and the file size are on
stable storage (POSIX fsync, Linux Documentation/filesystems/vfs.rst), so a power cut
or crash after it cannot tear that record. Hence a record that is incomplete on disk
belongs to an append whose fsync never returned: that seed was never credited.

What a crash or power cut can leave, and so what is tolerated (at the end only):

* a partial last record without its newline: a prefix of the line being appended
  (write(2) of one buffer can reach the disk in part);
* a run of NUL bytes at the end, possibly after such a prefix: ext4 with delayed
  allocation (and XFS) can persist a larger file size before the data blocks, so
  the unwritten tail reads back as zeros (ext4's `auto_da_alloc` documentation in
  Documentation/admin-guide/ext4.rst describes this window).

A tail fragment that already holds a whole 32-digit id is counted as consumed all
the same (conservative: an id is never dropped, even one whose credit never
happened), and is kept by the writer. A complete line may therefore also be such a
terminated fragment: the id, optionally followed by a cut-off time or origin
(`<id>`, `<id> 17`, `<id> 1764620000 user-da`). Everything else is refused with
`LedgerError`, whose sentence names the file, the line and the fix: a complete line
that is not a record (a hand edit, garbage, CR line ends, non-ASCII, an empty line,
two records run together by an older writer), NUL bytes or an unknown fragment
before the end, a file that is not a regular file or is larger than MAX_LEDGER.
A reader never guesses: an unreadable ledger is an error, never "empty".

How the writer keeps every record on its own line (under an exclusive flock, so
reader and writer see one state): it parses the file as above; the end of the last
complete record, or of a kept id-bearing fragment, is `keep`. Bytes past `keep`
(NULs, a fragment without a whole id) are truncated away: by the argument above
they belong to an append that never returned, and they hold no id, so no consumed
id is lost, and a crash during the truncation leaves either state, both readable.
A kept fragment is terminated by writing "\\n" in the same write(2) as the new
record, so the new record always starts at the start of a line; a torn write of
that buffer is again one of the tolerated tails. If the write or the fsync fails
(ENOSPC, EIO, a short write) the file is truncated back to `keep` and fsynced, and
`LedgerError` is raised: the file is as it was before the append (after the
repair, which dropped only bytes that held no id), and nothing is credited. Only
if the record is on disk and the fsync of the directory then fails does the record
stay: the id counts as consumed and nothing is credited, which is the safe side.
"""

from __future__ import annotations

import errno
import fcntl
import hmac
import os
import re
import stat
import time

from ..shared.errors import SeedtoolError

_ID = rb"[0-9a-f]{32}"
_TIME = rb"-?[0-9]{1,19}"  # a clock before 1970 made older writers put a minus sign
_ORIGIN_CHARS = rb"[A-Za-z0-9:._/-]"
#: a complete line: a whole record, or an id-bearing record cut by a crash and then
#: terminated by the writer (the id, then a prefix of " <time> <origin>")
_LINE = re.compile(
    _ID + rb"(?: (?:-?[0-9]{0,19}|" + _TIME + rb" " + _ORIGIN_CHARS + rb"{0,64}))?"
)
#: what may follow the last newline (NULs stripped): a prefix of a record
_FRAGMENT = re.compile(rb"[0-9a-f]{0,31}|" + _LINE.pattern)
_ORIGIN_UNSAFE = re.compile(r"[^A-Za-z0-9:._/-]")
_SEED_ID = re.compile(r"[0-9a-f]{32}")
#: a ledger of a million boots is 60 MB; refuse to read anything absurd
MAX_LEDGER = 64 * 1024 * 1024
_FIX = ("correct or remove that line by hand, keeping every seed id it holds (one "
        "'<seed id> <unix time> <origin>' record per line), or restore the ledger "
        "from a backup; until then no seed is credited")


class LedgerError(SeedtoolError):
    """The ledger cannot be read or written, so no seed may be credited."""


class LedgerInvalid(LedgerError):
    """The ledger holds something that is not a ledger: it is never read as empty."""


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Reading:
    """One parse of the file: the ids it holds and where the next record goes."""

    __slots__ = ("ids", "keep", "terminate", "size")

    def __init__(self, ids: list[bytes], keep: int, terminate: bool, size: int) -> None:
        self.ids = ids
        #: bytes to keep: the end of the last record, or of a kept id-bearing fragment
        self.keep = keep
        #: the kept fragment needs a newline before the next record
        self.terminate = terminate
        self.size = size

    def holds(self, want: bytes) -> bool:
        found = False
        for i in self.ids:  # no early exit: the time does not say where an id is
            found |= hmac.compare_digest(i, want)
        return found


def _parse(data: bytes, path: str = "ledger") -> _Reading:
    """Read a ledger's bytes (see the module doc); raise LedgerError if they are not one."""
    end = data.rfind(b"\n") + 1
    body, tail = data[:end], data[end:]
    ids: list[bytes] = []
    if body:
        fullmatch = _LINE.fullmatch
        for n, line in enumerate(body[:-1].split(b"\n"), 1):
            if fullmatch(line) is None:
                raise LedgerInvalid(f"ledger {path} line {n} is not a seedtool ledger record; "
                                  + _FIX)
            ids.append(line[:32])
    fragment = tail.rstrip(b"\0")
    if _FRAGMENT.fullmatch(fragment) is None:
        n = body.count(b"\n") + 1
        raise LedgerInvalid(f"ledger {path} ends in an incomplete line {n} that is not the "
                          "start of a ledger record; " + _FIX)
    if len(fragment) >= 32:
        ids.append(fragment[:32])
        return _Reading(ids, end + len(fragment), True, len(data))
    return _Reading(ids, end, False, len(data))


class Ledger:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    def _open(self, flags: int) -> int:
        # O_NONBLOCK: opening a FIFO put in the ledger's place must not hang the boot
        # (open(2) of a FIFO for reading waits for a writer); no effect on a file
        fd = os.open(self.path, flags | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, 0o644)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise LedgerInvalid(f"ledger {self.path} is not a regular file; move it away "
                              "(nothing is credited until the ledger is a file)")
        return fd

    def _read(self, fd: int) -> _Reading:
        st = os.fstat(fd)
        if st.st_size > MAX_LEDGER:
            raise LedgerError(
                f"ledger {self.path} is larger than {MAX_LEDGER} bytes; archive it and start "
                "a new one"
            )
        chunks = []
        offset = 0
        while offset < st.st_size:
            chunk = os.pread(fd, st.st_size - offset, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        return _parse(b"".join(chunks), self.path)

    def contains(self, seed_id_hex: str) -> bool:
        """True if this seed id was consumed before; a missing ledger holds nothing.

        Raises LedgerError when the ledger cannot be read or parsed.
        """
        try:
            fd = self._open(os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise LedgerError(f"cannot read ledger {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # not in the middle of a writer's repair
            return self._read(fd).holds(seed_id_hex.encode())
        except OSError as e:
            raise LedgerError(f"cannot read ledger {self.path}: {e.strerror}") from None
        finally:
            os.close(fd)

    def consume(self, seed_id_hex: str, origin: str, now: float | None = None) -> bool:
        """Record a seed id durably; False if it was already there (a replay).

        Checks and appends under an exclusive lock, so two processes can never both
        see a seed as new. Raises LedgerError when the ledger cannot be parsed or the
        record cannot be made durable; the file is then as it was before the append.
        """
        if not _SEED_ID.fullmatch(seed_id_hex):
            raise ValueError("seed id must be 32 lower-case hex digits")
        want = seed_id_hex.encode()
        safe_origin = _ORIGIN_UNSAFE.sub("_", origin)[:64] or "-"
        stamp = int(time.time() if now is None else now)
        record = f"{seed_id_hex} {stamp} {safe_origin}\n".encode()
        directory = os.path.dirname(self.path) or "."
        try:
            os.makedirs(directory, mode=0o755, exist_ok=True)
            # no O_APPEND: the record goes at `keep`, which may be before the end
            fd = self._open(os.O_RDWR | os.O_CREAT)
        except OSError as e:
            raise LedgerError(f"cannot write ledger {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            reading = self._read(fd)
            if reading.holds(want):
                return False
            if reading.keep < reading.size:
                os.ftruncate(fd, reading.keep)  # a crash tail that holds no id
            self._append(fd, reading.keep, (b"\n" if reading.terminate else b"") + record)
            _fsync_dir(directory)
            return True
        except OSError as e:
            raise LedgerError(f"cannot write ledger {self.path}: {e.strerror}") from None
        finally:
            os.close(fd)

    def _append(self, fd: int, at: int, payload: bytes) -> None:
        """Write and fsync `payload` at `at`; on any failure truncate back and re-raise."""
        try:
            view = memoryview(payload)
            offset = at
            while view:
                n = os.pwrite(fd, view, offset)
                if n <= 0:
                    raise OSError(errno.ENOSPC, "short write")
                view, offset = view[n:], offset + n
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, at)
                os.fsync(fd)
            except OSError:
                pass  # the reader copes with any tail the failed write left
            raise
