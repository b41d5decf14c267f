"""Fuzz target: replies of an EGD daemon (`seedtool.sources.egd`).

The EGD client runs unchanged against an in-process fake socket that replays the
input, on a fake clock (so deadlines and back-off cost no time). The input is a
script: a first byte choosing blocking or non-blocking reads and the sequence of
commands, then, for each request the client sends, a length byte and that many
reply bytes, delivered in chunks whose sizes also come from the input. Whatever
the client reads beyond a reply stays in the socket and is seen before the next
command, as on a real connection. When the script has no more replies, the fake
either closes the connection or lets the read time out (the next input byte decides).

Invariants: only `DeviceError` (and its `EgdProtocolError`) ends a call;
`entropy_level` is a 32-bit count; `daemon_pid` is a decimal number; `read(n)`
returns exactly n bytes and only bytes the daemon sent as payload.
"""

from __future__ import annotations

import errno
import socket
import types
from collections.abc import Iterator

from seedtool.shared.errors import DeviceError
from seedtool.sources import egd

from ._script import Clock, Script

INSTRUMENT = ["seedtool"]
MAX_LEN = 2048
#: a client that reconnects more often than this within one input is looping
MAX_CONNECTIONS = 64


class _FakeDaemon:
    """Holds the script; hands out connections."""

    def __init__(self, script: Script, clock: Clock) -> None:
        self.script = script
        self.clock = clock
        self.connections = 0
        self.payload = bytearray()  # every reply byte, for the read(n) invariant


class _FakeSocket:
    """The parts of socket.socket the EGD client uses, replaying the daemon's script."""

    def __init__(self, daemon: _FakeDaemon) -> None:
        self.daemon = daemon
        self.buf = bytearray()
        self.timeout: float | None = None
        self.closed_by_peer = False
        self.chunk = 0  # the largest piece one recv may return (0: no limit)

    def settimeout(self, value: float | None) -> None:
        self.timeout = value

    def sendall(self, data: bytes) -> None:
        script = self.daemon.script
        if self.closed_by_peer:
            raise BrokenPipeError(errno.EPIPE, "closed")
        if not script.remaining:
            return  # no reply is coming: the next recv decides how that ends
        reply = script.take(script.u8())
        self.chunk = script.u8() % 8
        self.buf += reply
        self.daemon.payload += reply

    def recv(self, n: int, flags: int = 0) -> bytes:
        if not self.buf:
            if self.closed_by_peer:
                return b""
            if self.timeout == 0.0:
                raise BlockingIOError(errno.EAGAIN, "would block")
            if self.daemon.script.u8() & 1:
                self.closed_by_peer = True
                return b""
            # nothing comes: the wait lasts until the deadline the client set
            self.daemon.clock.now += self.timeout if self.timeout is not None else 3600.0
            raise socket.timeout("timed out")
        take = min(n, self.chunk or n, len(self.buf))
        out = bytes(self.buf[:take])
        if not flags & socket.MSG_PEEK:
            del self.buf[:take]
        return out

    def close(self) -> None:
        pass


class _FuzzEgd(egd.EgdSource):
    def __init__(self, daemon: _FakeDaemon, mode: str) -> None:
        super().__init__(path="/nonexistent/fuzz-egd", mode=mode)
        self.daemon = daemon

    def _connect(self) -> socket.socket:
        if self._sock is None:
            self.daemon.connections += 1
            if self.daemon.connections > MAX_CONNECTIONS:
                raise DeviceError("the fuzz daemon stopped accepting connections")
            self._sock = _FakeSocket(self.daemon)  # type: ignore[assignment]
        assert self._sock is not None
        return self._sock


def seeds() -> Iterator[bytes]:
    level = b"\x04\x00\x00\x10\x00\x00"
    pid = b"\x03\x00-11\x00"
    yield b"\x00" + level + pid + b"\x20" + bytes(range(32)) + b"\x00"
    yield b"\x01" + level + b"\x05\x07" + b"\x04" + b"abcd" + b"\x00" + b"\x01\x09\x00"
    yield b"\x02" + b"\x05\x01" + b"123\x00\x00" + b"\x02\x00\x01"
    yield b"\x03" + b"\x01\x00\x00" + b"\x00"
    yield b"\x00\x02\x00\x10" + b"\x01"


def test_one_input(data: bytes) -> None:
    script = Script(data)
    first = script.u8()
    mode = "nonblocking" if first & 1 else "blocking"
    clock = Clock()
    daemon = _FakeDaemon(script, clock)
    source = _FuzzEgd(daemon, mode)
    real_time = egd.time
    egd.time = types.SimpleNamespace(monotonic=clock.monotonic, sleep=clock.sleep)  # type: ignore[assignment]
    try:
        for step in range(1 + (first >> 1) % 4):
            what = (first >> (3 + step)) & 3 if step < 3 else 2
            try:
                if what == 0:
                    level = source.entropy_level()
                    assert 0 <= level < 2**32
                elif what == 1:
                    pid = source.daemon_pid()
                    assert pid.lstrip("-").isdigit()
                else:
                    n = script.u16() % 600
                    before = len(daemon.payload)
                    out = source.read(n)
                    assert len(out) == n
                    assert _is_subsequence(out, bytes(daemon.payload[before:]))
            except DeviceError:
                continue
    finally:
        egd.time = real_time
        source.close()


def _is_subsequence(small: bytes, big: bytes) -> bool:
    """Every byte of `small`, in order, comes from `big` (payload, not headers)."""
    it = iter(big)
    return all(b in it for b in small)
