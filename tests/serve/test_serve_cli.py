"""`seedtool serve` as a real subprocess: the project's `egd` source reading from it,
signals, `serve status`, socket files, start-up errors, and the systemd unit example."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from seedtool.sources import make_source

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "examples/systemd/seedtool-serve.service"
WAIT = 60.0  # an upper bound on a start-up, never a measured threshold


class Daemon:
    """`python -m seedtool serve ARGS`, its stderr collected line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "seedtool", "serve", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, cwd=REPO)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<eof>")
            self._cond.notify_all()

    def wait_for(self, text: str) -> str:
        def hit() -> str | None:
            return next((ln for ln in self.lines if text in ln), None)

        with self._cond:
            self._cond.wait_for(lambda: hit() is not None or "<eof>" in self.lines, WAIT)
            found = hit()
        assert found is not None, f"no '{text}' in the daemon's log: {self.lines}"
        return found

    def exited(self) -> int:
        """Wait for the daemon to end by itself (a start-up error)."""
        rc = self.proc.wait(WAIT)
        self._reader.join(WAIT)
        return rc

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(WAIT)
        self._reader.join(WAIT)
        return rc


@pytest.fixture
def daemon(sockdir: Path) -> Iterator[Any]:
    started: list[Daemon] = []

    def start(*extra: str, control: bool = True, json_logs: bool = False) -> Daemon:
        args = ["--egd", f"unix:{sockdir}/egd.sock", *extra]
        args += ["--control", f"{sockdir}/control.sock"] if control else ["--no-control"]
        if json_logs:
            args.append("--json")
        d = Daemon(*args)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.stop(signal.SIGKILL)


def status(sockdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seedtool", "serve", "status",
         "--control", f"{sockdir}/control.sock", *extra],
        capture_output=True, text=True, cwd=REPO, timeout=WAIT)


def test_egd_source_round_trip_unix_and_tcp(daemon: Any, sockdir: Path) -> None:
    d = daemon("--egd", "tcp:127.0.0.1:0")
    d.wait_for("listening listener=unix:")
    tcp = d.wait_for("listening listener=tcp:").split("listener=tcp:")[1]
    d.wait_for("control")
    for opts in ({"path": f"{sockdir}/egd.sock"}, {"tcp": tcp},
                 {"path": f"{sockdir}/egd.sock", "mode": "nonblocking"}):
        src = make_source("egd", **opts)
        try:
            avail = src.available()
            assert avail.ok, avail.reason
            assert avail.detail["pid"] == str(d.proc.pid)
            data = src.read(3000)  # several 255-byte requests on one connection
            assert len(data) == 3000 and len(set(data)) > 200
        finally:
            src.close()
    assert d.stop() == 0


def test_status_shows_sources_and_bytes_per_client(daemon: Any, sockdir: Path) -> None:
    d = daemon()
    d.wait_for("control")
    src = make_source("egd", path=f"{sockdir}/egd.sock")
    try:
        assert len(src.read(1000)) == 1000
        got = status(sockdir, "--json")
        assert got.returncode == 0, got.stderr
        answer = json.loads(got.stdout)
        assert answer["serving"] is True
        assert [s["name"] for s in answer["core"]["sources"]] == ["os"]
        [client] = answer["clients"]
        assert client["bytes"] == 1000 and client["peer"].startswith(f"pid={os.getpid()},")
        text = status(sockdir)
        assert text.returncode == 0
        assert "serving: yes" in text.stdout and "os: healthy" in text.stdout
        assert "1000 bytes in" in text.stdout
    finally:
        src.close()
    d.stop()


def test_sigterm_and_sigint_stop_cleanly_and_remove_the_sockets(
        daemon: Any, sockdir: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        d = daemon()
        d.wait_for("control")
        assert (sockdir / "egd.sock").exists() and (sockdir / "control.sock").exists()
        assert d.stop(sig) == 0
        assert not (sockdir / "egd.sock").exists()
        assert not (sockdir / "control.sock").exists()
        d.wait_for("stopped")


def test_sighup_reopens_sources_and_keeps_serving(daemon: Any, sockdir: Path) -> None:
    d = daemon()
    d.wait_for("control")
    d.proc.send_signal(signal.SIGHUP)
    d.wait_for("signal signal=SIGHUP")
    d.wait_for("reopen")
    src = make_source("egd", path=f"{sockdir}/egd.sock")
    try:
        assert len(src.read(64)) == 64
    finally:
        src.close()
    assert d.stop() == 0


def test_json_logs_one_object_per_line(daemon: Any, sockdir: Path) -> None:
    d = daemon(json_logs=True)
    d.wait_for('"event": "control"')
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(f"{sockdir}/egd.sock")
        s.sendall(b"\x7f")  # garbage: one log line, that connection closed
        assert s.recv(1) == b""
    d.wait_for('"event": "client-bad"')
    d.stop()
    rows = [json.loads(ln) for ln in d.lines if ln != "<eof>"]
    assert {"listening", "client-open", "client-bad", "stopped"} <= {r["event"] for r in rows}
    bad = next(r for r in rows if r["event"] == "client-bad")
    assert "0x7f" in bad["reason"]


def test_live_socket_refused_stale_one_taken_over(daemon: Any, sockdir: Path) -> None:
    first = daemon(control=False)
    first.wait_for("listening")
    second = daemon(control=False)
    assert second.exited() == 1
    line = second.wait_for("error:")
    assert "already listening on" in line and str(sockdir / "egd.sock") in line
    src = make_source("egd", path=f"{sockdir}/egd.sock")
    try:
        assert len(src.read(32)) == 32  # the first is untouched
    finally:
        src.close()
    first.stop(signal.SIGKILL)  # leaves its socket file behind: stale
    assert (sockdir / "egd.sock").exists()
    third = daemon(control=False)
    third.wait_for("listening")
    assert third.stop() == 0


@pytest.mark.parametrize("args, words", [
    ((), "needs at least one --egd"),
    (("--egd", "tcp:0.0.0.0:8888"), "loopback"),
    (("--egd", "udp:1"), "not a listen address"),
    (("--egd", "unix:/x", "--rate", "-1"), "cannot be negative"),
])
def test_usage_errors(args: tuple[str, ...], words: str) -> None:
    got = subprocess.run([sys.executable, "-m", "seedtool", "serve", "--no-control", *args],
                         capture_output=True, text=True, cwd=REPO, timeout=WAIT)
    assert got.returncode == 2
    assert words in got.stderr and got.stderr.count("\n") == 1


def test_required_source_unusable_is_one_sentence(daemon: Any, sockdir: Path) -> None:
    d = daemon("--source", f"hwrng:device={sockdir}/no-such-rng", "--require", "hwrng",
               control=False)
    assert d.exited() == 1
    errors = [ln for ln in d.lines if "error:" in ln]
    assert len(errors) == 1 and "hwrng" in errors[0]
    assert not (sockdir / "egd.sock").exists()


def test_status_without_a_daemon(sockdir: Path) -> None:
    got = status(sockdir)
    assert got.returncode == 1
    assert "no seedtool serve is running" in got.stderr


# -- the systemd unit ---------------------------------------------------------------------


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    text = UNIT.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.strip() and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_unit_sandboxing() -> None:
    s = _unit_settings()
    assert s["DynamicUser"] == ["yes"] and s["ProtectSystem"] == ["strict"]
    assert {"kvm", "plugdev"} <= set(s["SupplementaryGroups"][0].split())
    assert {"/dev/hwrng r", "char-usb_device rw"} <= set(s["DeviceAllow"])
    assert s["DevicePolicy"] == ["closed"] and s["RuntimeDirectory"] == ["seedtool"]
    assert s["CapabilityBoundingSet"] == [""] and s["NoNewPrivileges"] == ["yes"]
    exec_start = s["ExecStart"][0].split()
    assert exec_start[1] == "serve" and "--egd" in exec_start
    control = exec_start[exec_start.index("--control") + 1]
    assert control == "/run/seedtool/control.sock"  # what `serve status` finds as root
    egd = exec_start[exec_start.index("--egd") + 1]
    assert egd.startswith("unix:/run/seedtool/")


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    # verify insists that ExecStart's program exists: point it at this checkout's
    seedtool = shutil.which("seedtool") or str(Path(sys.executable).with_name("seedtool"))
    if not os.path.exists(seedtool):
        pytest.skip("no seedtool executable installed")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/bin/seedtool", seedtool))
    got = subprocess.run(["systemd-analyze", "verify", str(unit)],
                         capture_output=True, text=True, timeout=WAIT)
    assert got.returncode == 0 and got.stderr == "" and got.stdout == "", got.stderr
