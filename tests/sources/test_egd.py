"""The `egd` source against our EGD server (UNIX and TCP) and against the real ekeyd daemon."""

from __future__ import annotations

import base64
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from devtools.egd_server import EgdServer, Step
from seedtool.health import HealthMonitor
from seedtool.shared.errors import DeviceError, HealthTestFailure, UsageError
from seedtool.sources import make_source
from seedtool.sources.egd import DEFAULT_PATH, EgdProtocolError, EgdSource

EKEYD = shutil.which("ekeyd") or (os.path.exists("/usr/sbin/ekeyd") and "/usr/sbin/ekeyd") or None
needs_ekeyd = pytest.mark.skipif(not EKEYD, reason="ekeyd not installed (apt install ekeyd)")

Serve = Callable[..., tuple[EgdServer, dict[str, str]]]


@pytest.fixture
def sockdir() -> Iterator[Path]:
    # short: a UNIX socket path must fit in 108 bytes, pytest's tmp_path may not
    d = Path(tempfile.mkdtemp(prefix="egd"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(params=["unix", "tcp"])
def serve(request: pytest.FixtureRequest, sockdir: Path) -> Iterator[Serve]:
    servers: list[EgdServer] = []

    def start(script: list[Step] | None = None, **kw: Any) -> tuple[EgdServer, dict[str, str]]:
        if request.param == "unix":
            s = EgdServer(path=str(sockdir / f"egd{len(servers)}"), script=script, **kw)
            opts = {"path": s.address}
        else:
            s = EgdServer(script=script, **kw)
            opts = {"tcp": s.address}
        servers.append(s)
        return s, opts

    yield start
    for s in servers:
        s.close()


# ---- the protocol against our server ------------------------------------------------


def test_available_reports_level_and_pid(serve: Serve) -> None:
    server, opts = serve(level=12345, pid=b"777")
    src = make_source("egd", **opts)
    avail = src.available()
    src.close()
    assert avail.ok, avail.reason
    assert avail.detail is not None
    assert avail.detail["entropy_bits"] == "12345" and avail.detail["pid"] == "777"
    kind = "unix" if "path" in opts else "tcp"
    assert avail.detail["socket"] == f"{kind}:{server.address}"
    assert server.commands == [0x00, 0x04]
    assert server.connections == 1


def test_blocking_read_in_255_byte_requests(serve: Serve) -> None:
    server, opts = serve()
    src = EgdSource(**opts)
    data = src.read(600)
    src.close()
    assert data == bytes(server.sent)
    assert server.commands == [0x02, 0x02, 0x02]
    assert len(data) == 600


def test_nonblocking_read_waits_for_short_offers(serve: Serve) -> None:
    server, opts = serve([("limit", 10), ("limit", 0), ("limit", 1)])
    src = EgdSource(mode="nonblocking", **opts)
    data = src.read(300)
    src.close()
    assert data == bytes(server.sent) and len(data) == 300
    assert server.commands == [0x01] * 5  # 10 + 0 + 1 + 255 + 34


def test_reply_in_pieces(serve: Serve) -> None:
    server, opts = serve([("trickle", 3), ("trickle", 5)])
    src = EgdSource(**opts)
    assert src.entropy_level() == 4096
    assert len(src.read(100)) == 100
    src.close()


def test_offer_larger_than_request_is_refused(serve: Serve) -> None:
    _, opts = serve([("limit", 20)])
    src = EgdSource(mode="nonblocking", **opts)
    with pytest.raises(EgdProtocolError, match="offered 20 bytes when 16"):
        src.read(16)
    assert src._sock is None
    src.close()


def test_server_dropping_mid_read(serve: Serve) -> None:
    _, opts = serve([("partial", 5)])
    src = EgdSource(**opts)
    with pytest.raises(DeviceError, match="closed the connection mid-reply"):
        src.read(16)
    src.close()


def test_server_closing_without_answer(serve: Serve) -> None:
    _, opts = serve(["close"])
    src = EgdSource(**opts)
    with pytest.raises(DeviceError, match="mid-reply"):
        src.read(16)
    src.close()


def test_silent_server_times_out(serve: Serve) -> None:
    _, opts = serve(["silent"])
    src = EgdSource(timeout="0.3", **opts)
    with pytest.raises(DeviceError, match="delivered 0 of 16 bytes before the deadline"):
        src.read(16)
    src.close()


def test_stalled_stream_times_out_and_counts_what_came(serve: Serve) -> None:
    server, opts = serve(["ok", ("stall", 5)])
    src = EgdSource(timeout="0.5", **opts)
    with pytest.raises(DeviceError, match="delivered 260 of 300 bytes"):
        src.read(300)
    assert src._sock is None  # the rest of that reply may still come: never reuse the link
    src.close()


def test_empty_pool_in_nonblocking_mode_times_out(serve: Serve) -> None:
    _, opts = serve([("limit", 0)] * 1000)
    src = EgdSource(mode="nonblocking", timeout="0.3", **opts)
    with pytest.raises(DeviceError, match="had only 0 of 16 bytes"):
        src.read(16)
    src.close()


def test_unasked_bytes_are_a_protocol_error(serve: Serve) -> None:
    _, opts = serve([("extra", b"zz")])
    src = EgdSource(**opts)
    assert len(src.read(16)) == 16
    with pytest.raises(EgdProtocolError, match="nobody asked for"):
        src.entropy_level()
    assert src._sock is None
    src.close()


def test_bad_pid_reply_makes_it_unavailable(serve: Serve) -> None:
    _, opts = serve(["ok", ("raw", b"\x03a\xffc")])
    avail = EgdSource(**opts).available()
    assert not avail.ok and "not a number" in avail.reason


def test_reconnects_when_the_daemon_closed_an_idle_link(serve: Serve) -> None:
    server, opts = serve([("partial", 4)])  # whole level answer, then hang up
    src = EgdSource(**opts)
    assert src.entropy_level() == 4096
    assert src._sock is not None
    # wait until the hang-up is visible on our side (EOF makes the socket readable)
    assert select.select([src._sock], [], [], 10)[0]
    assert src.entropy_level() == 4096
    assert server.connections == 2
    src.close()


def test_health_tests_see_a_stuck_daemon(serve: Serve) -> None:
    _, opts = serve(rng=lambda n: b"\x55" * n)
    src = EgdSource(**opts)
    mon = HealthMonitor("egd", src.min_entropy, src.sample_bits)
    with pytest.raises(HealthTestFailure):
        mon.read(src.read, 64)
    src.close()


def test_health_tests_pass_good_output(serve: Serve) -> None:
    _, opts = serve()
    src = EgdSource(**opts)
    mon = HealthMonitor("egd", src.min_entropy, src.sample_bits)
    assert len(mon.read(src.read, 512)) == 512
    assert mon.report.verdict == "pass"
    src.close()


# ---- connection errors ------------------------------------------------------------------


def test_missing_socket(sockdir: Path) -> None:
    avail = EgdSource(path=str(sockdir / "none")).available()
    assert not avail.ok and "no EGD socket at" in avail.reason


def test_stale_socket_file(sockdir: Path) -> None:
    path = sockdir / "stale"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens
    avail = EgdSource(path=str(path)).available()
    assert not avail.ok and "refused" in avail.reason and "stale" in avail.reason


def test_nothing_listening_on_tcp() -> None:
    s = socket.create_server(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    avail = EgdSource(tcp=f"127.0.0.1:{port}").available()
    assert not avail.ok and "nothing is listening" in avail.reason


def test_permission_denied_names_the_socket_mode(sockdir: Path) -> None:
    server = EgdServer(path=str(sockdir / "egd"))
    try:
        os.chmod(server.address, 0o600)
        if os.geteuid() != 0:
            pytest.skip("needs root to own a socket another user cannot open")
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: drop root, answer, never return into pytest
            try:
                os.close(r)
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                a = EgdSource(path=server.address).available()
                os.write(w, f"{a.ok}\n{a.reason}".encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            out = f.read().decode()
        os.waitpid(pid, 0)
    finally:
        server.close()
    ok, _, reason = out.partition("\n")
    assert ok == "False"
    assert "permission denied" in reason and "EGDUnixSocket" in reason and "group" in reason


@pytest.mark.parametrize("opts", [
    {"path": "/x", "tcp": "127.0.0.1:1"},
    {"tcp": "nohost"},
    {"tcp": "127.0.0.1:99999"},
    {"mode": "eager"},
    {"timeout": "never"},
    {"timeout": "0"},
])
def test_bad_options_are_usage_errors(opts: dict[str, str]) -> None:
    with pytest.raises(UsageError):
        EgdSource(**opts)


@pytest.mark.skipif(os.path.exists(DEFAULT_PATH), reason="this machine has /etc/entropy")
def test_default_is_ekeyd_tcp_port() -> None:
    assert EgdSource().where == "127.0.0.1:8888"


# ---- the real ekeyd --------------------------------------------------------------------


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


class Ekeyd:
    """ekeyd with EGD output on a UNIX socket and 127.0.0.1 TCP, optionally with one key."""

    def __init__(self, d: Path, key_tty: str | None = None, keyring: bytes = b"") -> None:
        self.sock = str(d / "egd.sock")
        self.port = _free_port()
        self.pidfile = d / "ekeyd.pid"
        conf = [f'EGDUnixSocket "{self.sock}"', f'EGDTCPSocket({self.port}, "127.0.0.1")']
        if key_tty:
            (d / "keyring").write_bytes(keyring)
            conf += [f'Keyring "{d / "keyring"}"', f'AddEntropyKey "{key_tty}"']
        (d / "ekeyd.conf").write_text("\n".join(conf) + "\n")
        subprocess.run([str(EKEYD), "-f", str(d / "ekeyd.conf"), "-p", str(self.pidfile)],
                       check=True, timeout=30, stdin=subprocess.DEVNULL)
        self.pid = 0
        for _ in range(200):  # it daemonises; wait for the pid file and the socket
            if self.pidfile.exists() and self.pidfile.read_text().strip() and \
                    os.path.exists(self.sock):
                self.pid = int(self.pidfile.read_text())
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("ekeyd did not start")

    def stop(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            for _ in range(100):
                try:
                    os.kill(self.pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.05)
            os.kill(self.pid, signal.SIGKILL)


@pytest.fixture
def ekeyd_factory() -> Iterator[list[Ekeyd]]:
    started: list[Ekeyd] = []
    yield started
    for e in started:
        e.stop()


@needs_ekeyd
@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_real_ekeyd_without_keys(
    ekeyd_factory: list[Ekeyd], sockdir: Path, transport: str
) -> None:
    e = Ekeyd(sockdir)
    ekeyd_factory.append(e)
    opts = {"path": e.sock} if transport == "unix" else {"tcp": f"127.0.0.1:{e.port}"}
    src = EgdSource(timeout="0.5", **opts)
    avail = src.available()
    assert avail.ok, avail.reason
    assert avail.detail is not None
    assert avail.detail["entropy_bits"] == "0"  # no Entropy Key attached
    assert avail.detail["pid"] == "-1"  # README.egd-protocol: ekeyd always answers -1
    with pytest.raises(DeviceError, match="delivered 0 of 16"):
        src.read(16)
    src.close()
    nb = EgdSource(timeout="0.5", mode="nonblocking", **opts)
    with pytest.raises(DeviceError, match="had only 0 of 16"):
        nb.read(16)
    nb.close()


@needs_ekeyd
def test_real_ekeyd_serving_a_simulated_entropy_key(
    ekeyd_factory: list[Ekeyd], sockdir: Path
) -> None:
    from devtools.ekey_sim import EntropyKeySim, PtySimulator
    from seedtool.sources.entropykey_protocol import format_keyring_line

    serial = base64.b64decode("SeedToolEgd00001")
    ltk = os.urandom(32)
    with PtySimulator(EntropyKeySim(serial, ltk)) as key:
        e = Ekeyd(sockdir, key.path, format_keyring_line(serial, ltk))
        ekeyd_factory.append(e)
        src = EgdSource(path=e.sock, timeout="60")
        mon = HealthMonitor("egd", src.min_entropy, src.sample_bits)
        try:
            a = mon.read(src.read, 1000)
            b = src.read(1000)
        finally:
            src.close()
            e.stop()
    assert len(a) == 1000 and len(b) == 1000 and a != b
    assert mon.report.verdict == "pass"
