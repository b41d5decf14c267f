"""The EGD listener in-process, with a raw-socket client: every command and every bad input.

The listener runs on its own event loop thread over the real `EntropyCore` (source
`os`); `GatedCore` wraps it to play a core that is not serving (a --require source
unhealthy) until the test opens the gate.
"""

from __future__ import annotations

import asyncio
import grp
import os
import socket
import stat
import struct
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from seedtool.serve import egd as egd_mod
from seedtool.serve.core import EntropyCore
from seedtool.serve.egd import (
    LEVEL_BITS,
    EgdServer,
    TokenBucket,
    bind_unix,
    parse_listen_spec,
    take_over_stale,
)
from seedtool.shared.errors import SeedtoolError, UsageError

WAIT = 20.0  # an upper bound for things that happen at once; never a measured threshold


class Events:
    """The listener's log, kept for the test to wait on."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, dict[str, object]]] = []
        self._cond = threading.Condition()

    def __call__(self, event: str, fields: Mapping[str, object] | None = None) -> None:
        with self._cond:
            self.rows.append((event, dict(fields or {})))
            self._cond.notify_all()

    def wait(self, event: str, **match: object) -> dict[str, object]:
        def found() -> dict[str, object] | None:
            for name, fields in self.rows:
                if name == event and all(fields.get(k) == v for k, v in match.items()):
                    return fields
            return None

        with self._cond:
            self._cond.wait_for(lambda: found() is not None, WAIT)
            hit = found()
        assert hit is not None, f"no {event} {match} in {self.rows}"
        return hit

    def names(self) -> list[str]:
        with self._cond:
            return [n for n, _ in self.rows]


class GatedCore:
    """The real core, but not serving until `open()`."""

    def __init__(self, core: EntropyCore) -> None:
        self.core, self.gate = core, threading.Event()

    @property
    def serving(self) -> bool:
        return self.gate.is_set() and self.core.serving

    def read(self, n: int, timeout: float | None = None) -> bytes | None:
        if not self.gate.wait(timeout):
            return None
        return self.core.read(n, timeout)


class Running:
    """An `EgdServer` on a unix socket, its loop on a thread."""

    def __init__(self, core: Any, path: str, events: Events, **kw: Any) -> None:
        self.path, self.events = path, events
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = EgdServer(core, events, **kw)
        spec = parse_listen_spec(f"unix:{path}")
        self.call(self.server.add(spec, EgdServer.bind(spec)))
        self.call(self.server.start_serving())

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT)

    def status(self) -> dict[str, Any]:
        async def get() -> dict[str, Any]:
            return self.server.status()

        return dict(self.call(get()))

    def connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.path)  # blocking: waits for room in the backlog
        s.settimeout(WAIT)
        return s

    def close(self) -> None:
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()


@pytest.fixture(scope="module")
def core() -> Iterator[EntropyCore]:
    c = EntropyCore([], log=lambda e, f: None)
    c.start()
    yield c
    c.stop()


@pytest.fixture
def serve(core: EntropyCore, sockdir: Path) -> Iterator[Any]:
    started: list[Running] = []

    def start(core_: Any = None, **kw: Any) -> Running:
        r = Running(core_ or core, str(sockdir / f"egd{len(started)}.sock"), Events(), **kw)
        started.append(r)
        return r

    yield start
    for r in started:
        r.close()


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, f"the daemon closed the connection after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


def level(s: socket.socket) -> int:
    s.sendall(b"\x00")
    return int(struct.unpack(">I", recv_exact(s, 4))[0])


def assert_closed(s: socket.socket) -> None:
    """The daemon hung up: EOF (or a reset), and no byte before it."""
    try:
        rest = s.recv(1)
    except ConnectionResetError:
        rest = b""
    assert rest == b""


# -- the commands ----------------------------------------------------------------------


def test_blocking_reads_back_to_back_as_qemu_sends_them(serve: Any) -> None:
    r = serve()
    with r.connect() as s:
        # QEMU's rng-egd splits a request into 0x02 n pieces of at most 255, all at once
        s.sendall(b"\x02\xff\x02\xff\x02\x0a")
        data = recv_exact(s, 255 + 255 + 10)
        assert level(s) == LEVEL_BITS  # the next answer starts right after: nothing extra
        assert len(set(data)) > 64
    client = r.events.wait("client-close", reason="client closed")
    assert client["bytes"] == 520 and client["requests"] == 4


def test_level_pid_and_nonblocking_read(serve: Any) -> None:
    r = serve()
    with r.connect() as s:
        assert level(s) == LEVEL_BITS
        s.sendall(b"\x04")
        (n,) = recv_exact(s, 1)
        assert recv_exact(s, n) == str(os.getpid()).encode()
        s.sendall(b"\x01\xc8")
        (k,) = recv_exact(s, 1)
        assert k == 200
        assert len(recv_exact(s, k)) == 200
        assert level(s) == LEVEL_BITS


def test_write_is_refused_without_closing(serve: Any) -> None:
    r = serve()
    with r.connect() as s:
        s.sendall(b"\x03\x00\x28\x05" + b"abcde")  # 40 bits in 5 bytes
        s.sendall(b"\x03\x00\x00\x00")  # an empty write
        assert level(s) == LEVEL_BITS  # still open, nothing answered to the writes
        status = r.status()
        assert status["clients"][0]["written_ignored"] == 5
    assert r.events.names().count("write-refused") == 2


def test_bytes_per_client_are_counted(serve: Any) -> None:
    r = serve()
    with r.connect() as a, r.connect() as b:
        a.sendall(b"\x02\x40" * 3)
        recv_exact(a, 192)
        b.sendall(b"\x01\x10")
        assert len(recv_exact(b, 17)) == 17
        rows = {c["id"]: c for c in r.status()["clients"]}
        assert sorted(c["bytes"] for c in rows.values()) == [16, 192]
        assert r.status()["bytes_total"] == 208


# -- bad input: a log line, that connection closed, the others unaffected ------------------


BAD = {
    "unknown command": (b"\x7f", "unknown command byte 0x7f"),
    "garbage": (b"GET / HTTP/1.1\r\n", "unknown command byte 0x47"),
    "zero-length blocking read": (b"\x02\x00", "a read of 0 bytes"),
    "zero-length non-blocking read": (b"\x01\x00", "a read of 0 bytes"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_request_closes_only_that_connection(serve: Any, name: str) -> None:
    request, reason = BAD[name]
    r = serve()
    with r.connect() as good, r.connect() as bad:
        assert level(good) == LEVEL_BITS
        bad.sendall(request)
        assert_closed(bad)
        logged = r.events.wait("client-bad")
        assert reason in str(logged["reason"])
        good.sendall(b"\x02\x20")
        assert len(recv_exact(good, 32)) == 32


@pytest.mark.parametrize("request_", [b"\x02", b"\x01", b"\x03\x00", b"\x03\x00\x08\x04ab"])
def test_half_request_then_vanishing(serve: Any, request_: bytes) -> None:
    r = serve()
    with r.connect() as good:
        with r.connect() as bad:
            bad.sendall(request_)
        logged = r.events.wait("client-bad")
        assert "vanished in the middle" in str(logged["reason"])
        assert level(good) == LEVEL_BITS


def test_half_request_then_silence_is_closed(serve: Any) -> None:
    r = serve(arg_timeout=0.2)
    with r.connect() as good, r.connect() as bad:
        bad.sendall(b"\x02")
        assert_closed(bad)
        assert "sent half a read request" in str(r.events.wait("client-bad")["reason"])
        assert level(good) == LEVEL_BITS


def _flood_without_reading(r: Running) -> socket.socket:
    """A client that asks for far more than the socket buffers hold and never reads."""
    s = r.connect()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    sent, request = 0, b"\x02\xff" * 512
    while sent < 4 * 1024 * 1024:  # stops as soon as the daemon stops taking requests
        try:
            sent += s.send(request)
        except BlockingIOError:
            break
    return s


def test_a_client_that_never_reads_does_not_stall_the_others(serve: Any) -> None:
    r = serve(rate=0)
    stuck = _flood_without_reading(r)
    try:
        with r.connect() as good:
            for _ in range(200):
                good.sendall(b"\x02\x40")
                assert len(recv_exact(good, 64)) == 64
        rows = {c["id"]: c for c in r.status()["clients"]}
        assert "c1" in rows  # the stuck one is still there, waiting on its own drain
    finally:
        stuck.close()


def test_a_client_that_never_reads_is_closed_after_the_stall_timeout(serve: Any) -> None:
    r = serve(rate=0, stall_timeout=0.3)
    stuck = _flood_without_reading(r)
    try:
        assert "unread" in str(r.events.wait("client-bad", client="c1")["reason"])
        with r.connect() as good:
            assert level(good) == LEVEL_BITS
    finally:
        stuck.close()


def test_many_connections_at_once_each_get_their_own_bytes(serve: Any) -> None:
    r = serve(rate=0)
    socks = [r.connect() for _ in range(300)]  # one per VM, all open together
    try:
        for s in socks:
            s.sendall(b"\x02\x20")
        answers = [recv_exact(s, 32) for s in socks]
        assert len(set(answers)) == len(socks)  # no two clients share output
        assert len(r.status()["clients"]) == 300
    finally:
        for s in socks:
            s.close()


def test_connection_limit(serve: Any) -> None:
    r = serve(max_clients=2)
    with r.connect() as a, r.connect() as b:
        assert level(a) == LEVEL_BITS and level(b) == LEVEL_BITS
        with r.connect() as c:
            assert_closed(c)
        r.events.wait("client-refused", reason="connection limit")
        assert level(a) == LEVEL_BITS
        assert r.status()["connections_refused"] == 1
    r.events.wait("client-close", client="c2")
    with r.connect() as d:  # a slot is free again
        assert level(d) == LEVEL_BITS


def test_not_serving_blocking_read_waits_and_nonblocking_gets_nothing(
        serve: Any, core: EntropyCore) -> None:
    gated = GatedCore(core)
    r = serve(gated)
    with r.connect() as s:
        assert level(s) == 0
        s.sendall(b"\x01\x10")
        assert recv_exact(s, 1) == b"\x00"
        s.sendall(b"\x02\x10")
        r.events.wait("client-waiting")
        gated.gate.set()
        assert len(recv_exact(s, 16)) == 16
        assert level(s) == LEVEL_BITS


# -- the rate limit, on a clock the test holds -------------------------------------------


def test_token_bucket_waits_for_what_exceeds_the_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(egd_mod.time, "monotonic", lambda: now[0])
    bucket = TokenBucket(1000.0)  # one second of burst: 1000 bytes at once
    assert [bucket.take(250) for _ in range(4)] == [0.0] * 4
    assert bucket.take(500) == pytest.approx(0.5)
    now[0] += 0.5  # the wait done: the bucket is empty again, not in debt
    assert bucket.take(100) == pytest.approx(0.1)
    assert TokenBucket(0).take(10**9) == 0.0  # 0: no limit


def test_rate_limit_holds_the_answer_not_the_connection(serve: Any) -> None:
    r = serve(rate=300.0)  # a 255-byte burst, then 300 bytes/s
    with r.connect() as s, r.connect() as other:
        s.sendall(b"\x02\xff\x02\xff")  # the second must wait for tokens
        assert len(recv_exact(s, 255)) == 255
        assert level(other) == LEVEL_BITS  # served while s waits
        assert len(recv_exact(s, 255)) == 255
        assert level(s) == LEVEL_BITS


# -- listen addresses and socket files ----------------------------------------------------


def test_listen_specs() -> None:
    u = parse_listen_spec("unix:/run/seedtool/egd.sock,mode=0640,group=kvm")
    assert (u.kind, u.path, u.mode, u.group) == ("unix", "/run/seedtool/egd.sock", 0o640, "kvm")
    assert parse_listen_spec("unix:/x").mode == 0o660
    t = parse_listen_spec("tcp:127.0.0.1:8888")
    assert (t.kind, t.host, t.port) == ("tcp", "127.0.0.1", 8888)
    assert parse_listen_spec("tcp:[::1]:8888").host == "::1"


@pytest.mark.parametrize("text, words", [
    ("tcp:0.0.0.0:8888", "loopback"),
    ("tcp:192.168.1.2:8888", "loopback"),
    ("tcp:localhost:8888", "loopback"),
    ("tcp:127.0.0.1:99999", "port number"),
    ("tcp:127.0.0.1", "port number"),
    ("unix:", "not a listen address"),
    ("unix:/x,mode=999", "octal"),
    ("unix:/x,owner=me", "unknown option"),
    ("/run/egd.sock", "not a listen address"),
])
def test_bad_listen_specs(text: str, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        parse_listen_spec(text)


def test_stale_socket_is_taken_over_live_one_refused(sockdir: Path) -> None:
    path = str(sockdir / "s.sock")
    old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old.bind(path)
    old.close()  # the file stays, nobody listens: stale
    live = bind_unix(path, 0o600)
    try:
        with pytest.raises(SeedtoolError, match="already listening on"):
            take_over_stale(path)
    finally:
        live.close()
    (sockdir / "f").write_text("x")
    with pytest.raises(SeedtoolError, match="is not a socket"):
        take_over_stale(str(sockdir / "f"))


def test_socket_mode_and_group(sockdir: Path) -> None:
    path = str(sockdir / "m.sock")
    gid = os.getgid()
    spec = parse_listen_spec(f"unix:{path},mode=0640,group={grp.getgrgid(gid).gr_name}")
    sock = EgdServer.bind(spec)
    try:
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == gid
    finally:
        sock.close()
    with pytest.raises(UsageError, match="there is no group"):
        EgdServer.bind(parse_listen_spec(f"unix:{sockdir}/n.sock,group=no-such-group-xyz"))
    with pytest.raises(SeedtoolError, match="does not exist"):
        EgdServer.bind(parse_listen_spec(f"unix:{sockdir}/missing/n.sock"))


def test_close_removes_the_socket_file(core: EntropyCore, sockdir: Path) -> None:
    r = Running(core, str(sockdir / "c.sock"), Events())
    assert os.path.exists(r.path)
    r.close()
    assert not os.path.exists(r.path)
