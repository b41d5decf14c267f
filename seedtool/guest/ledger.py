"""The ledger of consumed seed ids: a seed is credited at most once per disk.

One line per consumed seed: `<seed id hex> <unix time> <origin>`. A seed id is
appended and the file and its directory are fsynced BEFORE the seed is credited,
so a crash between the two can only lose a credit, never give a second one. The
ledger holds ids only, never seed bytes. Standard library only.
"""

from __future__ import annotations

import fcntl
import hmac
import os
import re
import time

from ..errors import SeedtoolError

_LINE = re.compile(rb"^([0-9a-f]{32})(?: |$)")
#: a ledger of a million boots is 60 MB; refuse to read anything absurd
MAX_LEDGER = 64 * 1024 * 1024


class LedgerError(SeedtoolError):
    """The ledger cannot be read or written, so no seed may be credited."""


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Ledger:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    def _ids(self, fd: int) -> list[bytes]:
        size = os.fstat(fd).st_size
        if size > MAX_LEDGER:
            raise LedgerError(
                f"ledger {self.path} is larger than {MAX_LEDGER} bytes; archive it and start "
                "a new one"
            )
        data = os.pread(fd, size, 0) if size else b""
        ids = []
        for line in data.splitlines():
            m = _LINE.match(line)
            if m:
                ids.append(m.group(1))
        return ids

    def contains(self, seed_id_hex: str) -> bool:
        """True if this seed id was consumed before; a missing ledger holds nothing."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise LedgerError(f"cannot read ledger {self.path}: {e.strerror}") from None
        try:
            want = seed_id_hex.encode()
            return any(hmac.compare_digest(i, want) for i in self._ids(fd))
        finally:
            os.close(fd)

    def consume(self, seed_id_hex: str, origin: str, now: float | None = None) -> bool:
        """Record a seed id durably; False if it was already there (a replay).

        Checks and appends under an exclusive lock, so two processes can never both
        see a seed as new. Raises LedgerError when the record cannot be made durable.
        """
        if not re.fullmatch(r"[0-9a-f]{32}", seed_id_hex):
            raise ValueError("seed id must be 32 lower-case hex digits")
        try:
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o755, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise LedgerError(f"cannot write ledger {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            want = seed_id_hex.encode()
            if any(hmac.compare_digest(i, want) for i in self._ids(fd)):
                return False
            safe_origin = re.sub(r"[^A-Za-z0-9:._/-]", "_", origin)[:64] or "-"
            stamp = int(time.time() if now is None else now)
            line = f"{seed_id_hex} {stamp} {safe_origin}\n".encode()
            if os.write(fd, line) != len(line):
                raise OSError(28, "short write")
            os.fsync(fd)
            _fsync_dir(os.path.dirname(self.path) or ".")
            return True
        except OSError as e:
            raise LedgerError(f"cannot write ledger {self.path}: {e.strerror}") from None
        finally:
            os.close(fd)
