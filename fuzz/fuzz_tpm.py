"""Fuzz target: TPM 2.0 replies (`seedtool.sources.tpm`).

The first input byte picks what the rest of the input is:

0. one reply for `parse_header` and then `parse_get_random` (the pure checks);
1. the bytes a TPM character device gives back, read by the device transport from
   one end of a real socket pair (the other end writes them, then shuts down);
2. the same over the swtpm TCP framing, 3. over the mssim framing;
4. a conversation: `TpmSource.read(n)` against a scripted transport that answers
   each command with the next length-prefixed reply from the input (so retries,
   TPM2_Startup and short replies are reached), on a fake clock.

Invariants: only `DeviceError` (and its `TpmError`) ends a call; a transport
returns exactly one reply within the size limits, which `parse_header` accepts only
when its header states that size; `parse_get_random`
returns 1..requested bytes; `read(n)` returns exactly n bytes.
"""

from __future__ import annotations

import socket
import struct
import time
import types
from collections.abc import Iterator
from typing import Any

from seedtool.shared.errors import DeviceError
from seedtool.sources import tpm

from ._script import Clock, Script

INSTRUMENT = ["seedtool"]
MAX_LEN = 1024


def _reply(rc: int = 0, data: bytes | None = None, tag: int = tpm.TPM_ST_NO_SESSIONS) -> bytes:
    body = b"" if data is None else struct.pack(">H", len(data)) + data
    return struct.pack(">HII", tag, 10 + len(body), rc) + body


def _scripted(*replies: bytes) -> bytes:
    return b"".join(struct.pack("<H", len(r)) + r for r in replies)


def seeds() -> Iterator[bytes]:
    good = _reply(0, bytes(range(32)))
    yield b"\x00" + good
    yield b"\x00" + _reply(0x922)
    yield b"\x01" + good
    yield b"\x02" + good
    yield b"\x03" + struct.pack(">I", len(good)) + good + b"\x00" * 4
    yield b"\x04\x40" + _scripted(good, good)
    yield b"\x04\x08" + _scripted(_reply(0x100), _reply(0), _reply(0, b"\x01" * 8))
    yield b"\x04\x10" + _scripted(_reply(0x90A), _reply(0x922), _reply(0, b"\x02" * 16))
    yield b"\x04\x10" + _scripted(_reply(0x101))
    yield b"\x00" + struct.pack(">HII", 0x00C4, 10, 0x1E)


def _pure(data: bytes) -> None:
    rc = tpm.parse_header(data, "fuzz")
    if rc != tpm.RC_SUCCESS:
        return
    requested = 64
    got = tpm.parse_get_random(data, requested, "fuzz")
    assert 1 <= len(got) <= requested


def _over_socketpair(kind: int, data: bytes) -> None:
    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(data)
        theirs.shutdown(socket.SHUT_WR)
        transport: Any
        if kind == 1:
            transport = object.__new__(tpm._DeviceTransport)
            transport.path = transport.where = "fuzz device"
            transport.fd = ours.fileno()
        else:
            transport = object.__new__(tpm._TcpTransport)
            transport.where = "fuzz tcp"
            transport.sock = ours
            transport.mssim = kind == 3
            transport.locality = 0
        # the peer shut down its side: every read ends, so the deadline is never reached
        reply = transport.transact(tpm.get_random_command(32), time.monotonic() + 3600)
        assert tpm.HEADER.size <= len(reply) <= tpm.MAX_RESPONSE
        # the mssim framing carries its own size; the TPM header inside is checked here
        rc = tpm.parse_header(reply, transport.where)
        (size,) = struct.unpack_from(">I", reply, 2)
        assert size == len(reply)
        if rc == tpm.RC_SUCCESS:
            assert 1 <= len(tpm.parse_get_random(reply, 32, transport.where)) <= 32
    finally:
        ours.close()
        theirs.close()


class _ScriptedTransport(tpm._Transport):
    def __init__(self, script: Script) -> None:
        self.script = script
        self.where = "fuzz TPM"

    def transact(self, command: bytes, deadline: float) -> bytes:
        if not self.script.remaining:
            raise DeviceError("the fuzz TPM went away")
        return self.script.take(self.script.u16())

    def close(self) -> None:
        pass


def _conversation(data: bytes) -> None:
    script = Script(data)
    n = script.u8() % 130
    source = tpm.TpmSource(device="/nonexistent/fuzz-tpm")
    transport = _ScriptedTransport(script)
    source._transport = lambda: transport  # type: ignore[method-assign]
    clock = Clock()
    real_time = tpm.time
    tpm.time = types.SimpleNamespace(monotonic=clock.monotonic, sleep=clock.sleep)  # type: ignore[assignment]
    try:
        out = source.read(n)
    finally:
        tpm.time = real_time
    assert len(out) == n


def test_one_input(data: bytes) -> None:
    if not data:
        return
    kind, rest = data[0] % 5, data[1:]
    if kind == 0:
        _pure(rest)
    elif kind in (1, 2, 3):
        _over_socketpair(kind, rest)
    else:
        _conversation(rest)
