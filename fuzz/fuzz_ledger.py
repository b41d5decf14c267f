"""Fuzz target: the guest's ledger of consumed seed ids (`seedtool.guest.ledger.Ledger`).

The input is the ledger file's content, written to a real file as the guest finds
it after a crash, a power cut or a hand edit. Invariants (claim C2: no state of the
file makes a consumed seed id invisible):

* `contains` and `consume` end in a result or a `LedgerError`, exactly when the
  reference reading below (written apart from the module's regular expressions,
  byte by byte from its documented format) refuses the file; a refused file is left
  byte for byte as it was;
* `contains` is True for every id the reference reading sees (whole records, and a
  final fragment that holds a whole id) and False for another id;
* a `consume` of a new id afterwards keeps every complete line as it was, makes
  the new record the file's last line (so it starts on its own line), and the file
  then reads back with every earlier id plus the new one, nothing else; consuming
  an earlier id again is refused as a replay.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

from seedtool.guest.ledger import Ledger, LedgerError

from ._scratch import scratch_path

INSTRUMENT = ["seedtool"]
MAX_LEN = 2048

_PATH = scratch_path("ledger")
_HEX = frozenset(b"0123456789abcdef")
_DIGITS = frozenset(b"0123456789")
_ORIGIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789:._/-")


def _is_time(t: bytes, complete: bool) -> bool:
    """A unix time ("-" then up to 19 digits); a cut-off one may be shorter."""
    digits = t[1:] if t[:1] == b"-" else t
    if len(digits) > 19 or any(c not in _DIGITS for c in digits):
        return False
    return len(digits) >= 1 or not complete


def _is_line(line: bytes) -> bool:
    """A record `<id> <time> <origin>`, or one cut after its id (see ledger.py)."""
    if len(line) < 32 or any(c not in _HEX for c in line[:32]):
        return False
    rest = line[32:]
    if not rest:
        return True
    if rest[:1] != b" ":
        return False
    time_and_origin = rest[1:]
    if b" " not in time_and_origin:
        return _is_time(time_and_origin, complete=False)
    t, origin = time_and_origin.split(b" ", 1)
    return (_is_time(t, complete=True) and len(origin) <= 64
            and all(c in _ORIGIN for c in origin))


def reference(data: bytes) -> list[bytes] | None:
    """The ids a ledger holds, or None when it must be refused."""
    *complete, tail = data.split(b"\n")
    ids = []
    for line in complete:
        if not _is_line(line):
            return None
        ids.append(line[:32])
    fragment = tail
    while fragment.endswith(b"\0"):
        fragment = fragment[:-1]
    if len(fragment) < 32:
        return ids if all(c in _HEX for c in fragment) else None
    return [*ids, fragment[:32]] if _is_line(fragment) else None


def seeds() -> Iterator[bytes]:
    a, b = b"0123456789abcdef" * 2, b"fedcba9876543210" * 2
    yield b""
    yield a + b" 1764620000 user-data\n"
    yield a + b" 1764620000 user-data\n" + b + b" 1764620099 datasource:openstack\n"
    yield a + b" 1764620000 user-data\n" + b[:20]
    yield a + b" 1764620000 user-data\n" + b + b" 17646"
    yield a + b" 1764620000 user-data\n" + b + b" 1764620099 dis" + b"\0" * 300
    yield a + b" 1764620000 user-data\n" + b"\0" * 512
    yield a + b"\n" + b + b" 5\n" + a + b" -5 x\n"
    yield a + b" 1764620000 user-data\r\n"
    yield a + b" 1764620000 user-data\n\n"
    yield b"# ledger\n" + a + b" 1 x\n"
    yield a[:10] + a + b" 1 x\n"


def _absent(data: bytes, ids: list[bytes]) -> str:
    digest = hashlib.sha256(data).digest()
    while True:
        candidate = digest[:16].hex()
        if candidate.encode() not in ids:
            return candidate
        digest = hashlib.sha256(digest).digest()


def test_one_input(data: bytes) -> None:
    with open(_PATH, "wb") as f:
        f.write(data)
    led = Ledger(_PATH)
    ids = reference(data)
    new = _absent(data, ids or [])
    if ids is None:
        for call in (lambda: led.contains(new), lambda: led.consume(new, "fuzz", now=1)):
            try:
                call()
            except LedgerError:
                pass
            else:
                raise AssertionError("the ledger read a file the reference refuses")
        with open(_PATH, "rb") as f:
            assert f.read() == data, "a refused ledger was changed"
        return
    for i in ids:
        assert led.contains(i.decode()), "a consumed seed id is invisible"
    assert not led.contains(new), "an id the file does not hold is seen"
    assert led.consume(new, "fuzz", now=1) is True
    with open(_PATH, "rb") as f:
        after = f.read()
    kept = data[: data.rfind(b"\n") + 1]
    assert after.startswith(kept), "a complete line was changed"
    record = f"{new} 1 fuzz\n".encode()
    assert after.endswith(record) and (len(after) == len(record)
                                       or after[-len(record) - 1:-len(record)] == b"\n"), \
        "the new record does not start on its own line"
    again = reference(after)
    assert again is not None and again[-1] == new.encode(), "the written ledger is refused"
    assert sorted(again) == sorted([*ids, new.encode()]), "ids appeared or vanished"
    assert not after.rstrip(b"\n").count(b"\0"), "a NUL tail was kept"
    for i in ids[:3]:
        assert led.consume(i.decode(), "fuzz", now=1) is False, "a replay was accepted"
    os.truncate(_PATH, 0)
