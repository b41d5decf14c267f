"""The `tpm` source against a real swtpm on 127.0.0.1 and a scripted fake TPM on a pty or TCP."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.fake_tpm import FakeTpm, PtyTpm, Step, TcpTpm
from seedtool.health import HealthMonitor
from seedtool.shared.errors import DeviceError, UsageError
from seedtool.sources import make_source
from seedtool.sources.tpm import TpmError, TpmSource

SWTPM = shutil.which("swtpm")
needs_swtpm = pytest.mark.skipif(SWTPM is None, reason="swtpm not installed (apt install swtpm)")


# ---- a real swtpm ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


class Swtpm:
    """`swtpm socket --tpm2` listening on 127.0.0.1 (its server fd= option wants a
    connected socket, not a listening one, so free ports are picked and then waited on)."""

    def __init__(self, state: Path, flags: str | None) -> None:
        state.mkdir(exist_ok=True)
        self.port, ctrl = _free_port(), _free_port()
        args = [
            str(SWTPM), "socket", "--tpm2",
            "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
            "--ctrl", f"type=tcp,port={ctrl},bindaddr=127.0.0.1",
            "--tpmstate", f"dir={state}",
            "--log", f"file={state / 'swtpm.log'}",
        ]
        if flags:
            args += ["--flags", flags]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(200):  # until it listens (or exits)
            if self.proc.poll() is not None:
                raise RuntimeError(f"swtpm exited with {self.proc.returncode}; see {state}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("swtpm did not start listening")

    @property
    def spec(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def swtpm_factory(tmp_path: Path) -> Iterator[list[Swtpm]]:
    started: list[Swtpm] = []
    yield started
    for s in started:
        s.stop()


def start_swtpm(factory: list[Swtpm], tmp_path: Path, flags: str | None) -> Swtpm:
    s = Swtpm(tmp_path / f"swtpm{len(factory)}", flags)
    factory.append(s)
    return s


@needs_swtpm
def test_swtpm_fresh_needs_startup_and_then_serves(
    swtpm_factory: list[Swtpm], tmp_path: Path
) -> None:
    # without startup-clear the TPM answers TPM_RC_INITIALIZE until TPM2_Startup
    sw = start_swtpm(swtpm_factory, tmp_path, "not-need-init")
    src = make_source("tpm", tcp=sw.spec)
    try:
        avail = src.available()
        assert avail.ok, avail.reason
        assert avail.detail == {"transport": "tcp", "where": sw.spec, "protocol": "swtpm"}
        a, b = src.read(1000), src.read(1000)
    finally:
        src.close()
    assert len(a) == 1000 and len(b) == 1000 and a != b


@needs_swtpm
def test_swtpm_output_passes_health_tests(swtpm_factory: list[Swtpm], tmp_path: Path) -> None:
    sw = start_swtpm(swtpm_factory, tmp_path, "not-need-init,startup-clear")
    src = TpmSource(tcp=sw.spec)
    mon = HealthMonitor("tpm", src.min_entropy, src.sample_bits)
    try:
        block = mon.read(src.read, 256)
    finally:
        src.close()
    assert len(block) == 256 and mon.report.verdict == "pass"
    assert src.retries == 0


@needs_swtpm
def test_swtpm_without_init_is_failure_mode_with_the_fix(
    swtpm_factory: list[Swtpm], tmp_path: Path
) -> None:
    sw = start_swtpm(swtpm_factory, tmp_path, None)
    src = TpmSource(tcp=sw.spec)
    avail = src.available()
    assert not avail.ok
    assert "0x101 TPM_RC_FAILURE" in avail.reason and "not-need-init" in avail.reason


@needs_swtpm
def test_swtpm_killed_mid_session(swtpm_factory: list[Swtpm], tmp_path: Path) -> None:
    sw = start_swtpm(swtpm_factory, tmp_path, "not-need-init,startup-clear")
    src = TpmSource(tcp=sw.spec, timeout="10")
    assert len(src.read(64)) == 64
    sw.proc.kill()
    sw.proc.wait()
    with pytest.raises(DeviceError):
        src.read(64)
    src.close()


# ---- the fake on a pty (device transport) -------------------------------------------


@pytest.fixture
def pty_tpm() -> Iterator[tuple[FakeTpm, PtyTpm]]:
    fakes: list[PtyTpm] = []
    fake = FakeTpm()
    p = PtyTpm(fake)
    fakes.append(p)
    yield fake, p
    for f in fakes:
        f.close()


def pty_source(pty: tuple[FakeTpm, PtyTpm], script: list[Step], **opts: str) -> TpmSource:
    fake, p = pty
    fake.script = list(script)
    return TpmSource(device=p.path, **opts)


def get_random_requests(fake: FakeTpm) -> list[int]:
    return [struct.unpack_from(">H", c, 10)[0] for c in fake.commands
            if struct.unpack_from(">I", c, 6)[0] == 0x17B]


def test_device_reads_loop_over_small_digests(pty_tpm: tuple[FakeTpm, PtyTpm]) -> None:
    fake, _ = pty_tpm
    src = pty_source(pty_tpm, [])
    data = src.read(100)
    src.close()
    assert data == bytes(fake.sent_random)  # assembled in order, nothing added or lost
    assert get_random_requests(fake) == [64, 64, 36, 4]  # the fake returns at most 32 per call


def test_device_reply_in_pieces(pty_tpm: tuple[FakeTpm, PtyTpm]) -> None:
    fake, _ = pty_tpm
    src = pty_source(pty_tpm, [("split", 5), ("split", 3)])
    assert src.read(40) == bytes(fake.sent_random)
    src.close()


def test_retry_codes_are_retried(pty_tpm: tuple[FakeTpm, PtyTpm]) -> None:
    script: list[Step] = [("rc", 0x922), ("rc", 0x908), ("rc", 0x909), ("rc", 0x90A)]
    src = pty_source(pty_tpm, script)
    assert len(src.read(16)) == 16
    assert src.retries == 4
    src.close()


def test_endless_retry_ends_at_the_deadline(pty_tpm: tuple[FakeTpm, PtyTpm]) -> None:
    src = pty_source(pty_tpm, [("rc", 0x922)] * 500, timeout="0.3")
    with pytest.raises(TpmError, match="0x922 TPM_RC_RETRY") as err:
        src.read(16)
    assert err.value.rc == 0x922
    src.close()


@pytest.mark.parametrize("rc, words", [
    (0x101, ["0x101 TPM_RC_FAILURE", "failure mode"]),
    (0x1C4, ["0x1C4", "TPM2_GetRandom"]),
    (0x143, ["0x143 TPM_RC_COMMAND_CODE"]),
])
def test_other_codes_are_named(pty_tpm: tuple[FakeTpm, PtyTpm], rc: int, words: list[str]) -> None:
    src = pty_source(pty_tpm, [("rc", rc)])
    with pytest.raises(TpmError) as err:
        src.read(16)
    assert err.value.rc == rc
    for w in words:
        assert w in str(err.value)
    assert src.retries == 0
    src.close()


def test_initialize_sends_startup_once(pty_tpm: tuple[FakeTpm, PtyTpm]) -> None:
    fake, _ = pty_tpm
    src = pty_source(pty_tpm, [("rc", 0x100)])
    assert len(src.read(16)) == 16
    codes = [struct.unpack_from(">I", c, 6)[0] for c in fake.commands]
    assert codes == [0x17B, 0x144, 0x17B]
    assert fake.commands[1] == struct.pack(">HIIH", 0x8001, 12, 0x144, 0)
    src.close()


def test_initialize_after_startup_is_an_error(pty_tpm: tuple[FakeTpm, PtyTpm]) -> None:
    src = pty_source(pty_tpm, [("rc", 0x100), "ok", ("rc", 0x100)])
    with pytest.raises(TpmError, match="after TPM2_Startup"):
        src.read(16)
    src.close()


def _reply(tag: int, rc: int, body: bytes = b"", size: int | None = None) -> bytes:
    return struct.pack(">HII", tag, 10 + len(body) if size is None else size, rc) + body


@pytest.mark.parametrize("raw, match", [
    (_reply(0x8001, 0, struct.pack(">H", 40) + bytes(40)), "40 random bytes when 16"),
    (_reply(0x8001, 0, struct.pack(">H", 5) + bytes(4)), "does not match its size"),
    (_reply(0x8001, 0, struct.pack(">H", 0)), "no random bytes"),
    (_reply(0x8001, 0), "no count field"),
    (_reply(0x8002, 0, struct.pack(">H", 2) + bytes(2)), "session tag"),
    (_reply(0x1234, 0), "unknown tag 0x1234"),
    (_reply(0x00C4, 0x1E), "TPM 1.2"),
    (_reply(0x8001, 0x101, b"xx"), "bare header"),
    (_reply(0x8001, 0, size=9), "claiming 9 bytes"),
    (_reply(0x8001, 0, size=100000), "claiming 100000 bytes"),
], ids=["count>asked", "count!=size", "count0", "nocount", "sessiontag", "badtag", "tpm12",
        "errbody", "size9", "size100000"])
def test_malformed_replies_are_refused(
    pty_tpm: tuple[FakeTpm, PtyTpm], raw: bytes, match: str
) -> None:
    src = pty_source(pty_tpm, [("raw", raw)], timeout="5")
    with pytest.raises(TpmError, match=match):
        src.read(16)
    assert src._t is None  # a link that sent garbage is dropped
    src.close()


def test_trailing_garbage_never_passes(pty_tpm: tuple[FakeTpm, PtyTpm]) -> None:
    good = _reply(0x8001, 0, struct.pack(">H", 16) + os.urandom(16))
    src = pty_source(pty_tpm, [("raw", good + b"\xff" * 20)], timeout="5")
    # caught at once when it arrives with the reply, else as the next reply's header
    with pytest.raises(TpmError, match="more bytes than|unknown tag"):
        src.read(16)
        src.read(16)
    src.close()


def test_reply_cut_short_times_out(pty_tpm: tuple[FakeTpm, PtyTpm]) -> None:
    src = pty_source(pty_tpm, [("raw", b"\x80\x01\x00\x00")], timeout="0.3")
    with pytest.raises(DeviceError, match="did not answer TPM2_GetRandom in time"):
        src.read(16)
    src.close()


def test_silent_tpm_times_out(pty_tpm: tuple[FakeTpm, PtyTpm]) -> None:
    src = pty_source(pty_tpm, ["silent"], timeout="0.3")
    with pytest.raises(DeviceError, match="in time"):
        src.read(16)
    src.close()


def test_device_vanishing_mid_reply(pty_tpm: tuple[FakeTpm, PtyTpm]) -> None:
    src = pty_source(pty_tpm, ["ok", ("partial", 7)], timeout="5")
    with pytest.raises(DeviceError, match="went away") as err:
        src.read(48)  # the first 32 bytes arrive, then the device disappears
    assert not isinstance(err.value, TpmError)
    src.close()


def test_missing_device(tmp_path: Path) -> None:
    src = TpmSource(device=str(tmp_path / "tpmrm0"))
    avail = src.available()
    assert not avail.ok and "does not exist" in avail.reason
    with pytest.raises(DeviceError, match="does not exist"):
        src.read(8)


@pytest.mark.skipif(any(os.path.exists(p) for p in ("/dev/tpmrm0", "/dev/tpm0")),
                    reason="this machine has a TPM")
def test_no_tpm_here_says_so() -> None:
    avail = TpmSource().available()
    assert not avail.ok
    assert "no TPM device" in avail.reason and "tcp=" in avail.reason


def test_permission_denied_names_the_tss_group(tmp_path: Path) -> None:
    dev = tmp_path / "tpmrm0"
    dev.write_bytes(b"")
    dev.chmod(0o600)
    tmp_path.chmod(0o755)
    if os.geteuid() != 0:
        dev.chmod(0)
        a = TpmSource(device=str(dev)).available()
        ok, reason = a.ok, a.reason
    else:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: drop root, answer, never return into pytest
            try:
                os.close(r)
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                a = TpmSource(device=str(dev)).available()
                os.write(w, f"{a.ok}\n{a.reason}".encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            out = f.read().decode()
        os.waitpid(pid, 0)
        first, _, reason = out.partition("\n")
        ok = first == "True"
    assert not ok
    assert "permission denied" in reason and "'tss' group" in reason


# ---- the fake over TCP -----------------------------------------------------------------


@pytest.fixture
def tcp_tpm() -> Iterator[list[TcpTpm]]:
    servers: list[TcpTpm] = []
    yield servers
    for s in servers:
        s.close()


def test_tcp_reconnects_after_garbage(tcp_tpm: list[TcpTpm]) -> None:
    fake = FakeTpm([("raw", _reply(0x4242, 0))])
    server = TcpTpm(fake)
    tcp_tpm.append(server)
    src = TpmSource(tcp=server.spec, timeout="5")
    with pytest.raises(TpmError, match="unknown tag"):
        src.read(16)
    assert src.read(16) == bytes(fake.sent_random)
    assert server.connections == 2
    src.close()


def test_tcp_server_closing_mid_reply(tcp_tpm: list[TcpTpm]) -> None:
    server = TcpTpm(FakeTpm([("partial", 11)]))
    tcp_tpm.append(server)
    src = TpmSource(tcp=server.spec, timeout="5")
    with pytest.raises(DeviceError, match="closed the connection mid-reply"):
        src.read(16)
    src.close()


def test_tcp_silent_server_times_out(tcp_tpm: list[TcpTpm]) -> None:
    server = TcpTpm(FakeTpm(["silent"]))
    tcp_tpm.append(server)
    src = TpmSource(tcp=server.spec, timeout="0.3")
    with pytest.raises(DeviceError, match="in time"):
        src.read(16)
    src.close()


def test_mssim_framing(tcp_tpm: list[TcpTpm]) -> None:
    fake = FakeTpm([("rc", 0x922)])
    server = TcpTpm(fake, mssim=True)
    tcp_tpm.append(server)
    src = TpmSource(tcp=server.spec, protocol="mssim")
    assert src.available().ok
    data = src.read(70)
    src.close()
    assert data == bytes(fake.sent_random)[1:]  # available() took one byte first
    assert src.retries == 1


def test_bare_protocol_against_mssim_server_fails_cleanly(tcp_tpm: list[TcpTpm]) -> None:
    server = TcpTpm(FakeTpm(), mssim=True)
    tcp_tpm.append(server)
    src = TpmSource(tcp=server.spec, timeout="0.5")
    with pytest.raises(DeviceError):
        src.read(16)
    src.close()


def test_nothing_listening() -> None:
    s = socket.create_server(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    avail = TpmSource(tcp=f"127.0.0.1:{port}").available()
    assert not avail.ok
    assert "nothing is listening" in avail.reason and "swtpm socket" in avail.reason


@pytest.mark.parametrize("opts", [
    {"tcp": "localhost"},
    {"tcp": "127.0.0.1:0"},
    {"tcp": "127.0.0.1:2321", "device": "/dev/tpmrm0"},
    {"protocol": "mssim"},
    {"tcp": "127.0.0.1:2321", "protocol": "tis"},
    {"timeout": "-1"},
    {"locality": "7"},
])
def test_bad_options_are_usage_errors(opts: dict[str, str]) -> None:
    with pytest.raises(UsageError):
        TpmSource(**opts)
