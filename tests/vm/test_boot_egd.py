"""virtio-rng fed by `seedtool serve --egd unix:PATH` (QEMU's rng-egd backend, as
`seedtool launch qemu --rng egd:PATH` builds it), in a Debian 12 VM under TCG on
`-cpu qemu64`, which has no RDRAND: the guest's hardware RNG is virtio_rng, the
daemon's accounting shows the bytes that VM pulled, and killing the daemon mid-boot
neither stops the boot nor QEMU's reconnection to the daemon once it is back.

The time of `random: crng init done` is reported beside a boot in the same run whose
virtio-rng is QEMU's own rng-random on /dev/urandom, not compared: comparing two
boots' timings is a timing threshold in disguise.

Three boots of their own, on bookworm only; the daemons run as subprocesses through
the real CLI and are asked for their status through their control sockets.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools.images import guest_image
from devtools.vm import STOP, Boot, Launch, boot
from seedtool.launch.qemu import parse_rng
from seedtool.serve.control import query

from .conftest import PARALLEL

pytestmark = pytest.mark.vm

#: no boots shared with the other modules
BOOTS = ()
RELEASE = "bookworm"
HWRNG = "/sys/class/misc/hw_random"
OUT = "/var/tmp/hv-rng"

#: cloud-final's runcmd copies what the kernel says about its hardware RNG where the
#: host reads it back (the report unit waits for cloud-init before powering off)
_COPY = "; ".join(f"cat {HWRNG}/{f} > {OUT}/{f}" for f in ("rng_current", "rng_available"))
USER_DATA = f"""#cloud-config
final_message: seedtool test boot done
runcmd:
  - [sh, -c, "mkdir -p {OUT}; {_COPY}"]
""".encode()

#: a failure bound for waits on a booting VM, not a measurement
WAIT = 600.0


class Daemon:
    """`seedtool serve --egd unix:PATH` as a subprocess, logging JSON to a file."""

    def __init__(self, workdir: Path, name: str, egd: Path) -> None:
        self.egd = egd
        self.control = workdir / f"{name}.control.sock"
        self.log = workdir / f"{name}.log"
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "seedtool", "serve", "--egd", f"unix:{egd}",
                 "--control", str(self.control), "--json"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + WAIT
        while True:
            assert self.proc.poll() is None, f"seedtool serve exited: {self.log_tail()}"
            try:
                if query(str(self.control)).get("serving"):
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            assert time.monotonic() < deadline, f"seedtool serve never served: {self.log_tail()}"
            time.sleep(0.2)

    def status(self) -> dict[str, Any]:
        return query(str(self.control))

    def cli_status(self) -> dict[str, Any]:
        """The same through `seedtool serve status --json`, as an operator asks."""
        p = subprocess.run([sys.executable, "-m", "seedtool", "serve", "status", "--control",
                            str(self.control), "--json"], capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, p.stderr
        answer = json.loads(p.stdout)
        assert isinstance(answer, dict)
        return answer

    def log_tail(self, n: int = 15) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def kill(self) -> None:
        """SIGKILL: a crash, leaving its socket file behind."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Run:
    egd: Boot
    egd_status: dict[str, Any]
    random: Boot
    restart: Boot
    before_kill: dict[str, Any]
    after_restart: dict[str, Any]


def _restart_boot(image: Any, workroot: Path) -> tuple[Boot, dict[str, Any], dict[str, Any]]:
    """Boot with daemon 1; kill it once the VM has pulled bytes; start daemon 2 on the
    same path; wait for QEMU's new connection; let the boot finish."""
    d = workroot / "restart"
    d.mkdir(parents=True, exist_ok=True)
    sock = d / "egd.sock"
    first = Daemon(d, "first", sock)
    second: Daemon | None = None
    pool = ThreadPoolExecutor(1, thread_name_prefix="vm-restart")
    try:
        fut = pool.submit(boot, image, Launch("egd-restart", USER_DATA, cpu="qemu64",
                                              rng=parse_rng(f"egd:{sock}")), workroot)
        deadline = time.monotonic() + WAIT
        while True:
            before = first.status()
            if before.get("bytes_total", 0) > 0:
                break
            assert not fut.done(), "the VM finished before it pulled any bytes"
            assert time.monotonic() < deadline, "the VM never pulled bytes from the daemon"
            time.sleep(0.2)
        first.kill()
        time.sleep(3)  # QEMU finds the socket gone and retries every second meanwhile
        second = Daemon(d, "second", sock)
        while True:
            after = second.status()
            if after.get("connections_total", 0) > 0 or fut.done():
                break
            assert time.monotonic() < deadline, "QEMU did not reconnect to the new daemon"
            time.sleep(0.2)
        result = fut.result()
        after = second.status()  # with what QEMU pulled after reconnecting, if anything
        return result, before, after
    finally:
        first.kill()
        if second is not None:
            second.stop()
        pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def run(vm_cache_ready: None, vm_keys: dict[str, Any],
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    image = guest_image(RELEASE, [vm_keys["trusted_pub"]])
    workroot = tmp_path_factory.mktemp("boots-egd")
    daemon = Daemon(workroot, "egd", workroot / "egd.sock")
    pool = ThreadPoolExecutor(PARALLEL, thread_name_prefix="vm-egd")
    try:
        # the two boots compared run at once, so they share the host's load
        egd: Future[Boot] = pool.submit(
            boot, image, Launch("egd", USER_DATA, cpu="qemu64",
                                rng=parse_rng(f"egd:{daemon.egd}")), workroot)
        rnd: Future[Boot] = pool.submit(
            boot, image, Launch("rng-random", USER_DATA, cpu="qemu64",
                                rng=parse_rng("urandom")), workroot)
        egd_boot = egd.result()
        egd_status = daemon.cli_status()
        random_boot = rnd.result()
    finally:
        daemon.stop()
        pool.shutdown(wait=True, cancel_futures=True)
    if STOP.is_set():
        pytest.fail("the session was interrupted")
    restart, before, after = _restart_boot(image, workroot)
    result = Run(egd_boot, egd_status, random_boot, restart, before, after)
    _report(result, tmp_path_factory)
    yield result


def _report(r: Run, tmp_path_factory: pytest.TempPathFactory) -> None:
    times = {
        "release": RELEASE, "cpu": "qemu64",
        "crng_init_with_rng_egd_s": r.egd.crng_init_time(),
        "crng_init_with_rng_random_s": r.random.crng_init_time(),
        "crng_init_with_daemon_killed_s": r.restart.crng_init_time(),
        "egd_bytes_served": r.egd_status.get("bytes_total"),
        "restart_bytes_before_kill": r.before_kill.get("bytes_total"),
        "restart_second_daemon": {k: r.after_restart.get(k)
                                  for k in ("connections_total", "bytes_total")},
        "boot_seconds": {"egd": r.egd.seconds, "rng-random": r.random.seconds,
                         "egd-restart": r.restart.seconds},
    }
    out = Path(tmp_path_factory.getbasetemp()) / "crng-times-egd.json"
    out.write_text(json.dumps(times, indent=1))
    print(f"\n[{RELEASE}] crng init done: {times['crng_init_with_rng_egd_s']} s with rng-egd, "
          f"{times['crng_init_with_rng_random_s']} s with rng-random, "
          f"{times['crng_init_with_daemon_killed_s']} s with the daemon killed ({out})")


def _hwrng(b: Boot, name: str) -> str:
    return b.text(f"{OUT}/{name}").strip()


def test_the_guests_hardware_rng_is_virtio_rng(run: Run) -> None:
    for b in (run.egd, run.random):
        assert _hwrng(b, "rng_current").startswith("virtio_rng"), b.context()
        assert "virtio_rng" in _hwrng(b, "rng_available")


def test_the_daemons_accounting_shows_the_bytes_the_vm_pulled(run: Run) -> None:
    s = run.egd_status
    assert s["connections_total"] == 1  # the one VM's QEMU
    [client] = s["clients"] + s["recently_closed"]
    assert client["bytes"] > 0 and client["requests"] > 0
    assert s["bytes_total"] == client["bytes"]
    # the kernel credited virtio-rng's bytes: the CRNG got ready during this boot
    assert run.egd.crng_init_time() is not None and run.random.crng_init_time() is not None


def test_the_vm_boots_with_the_daemon_killed_and_qemu_reconnects(run: Run) -> None:
    # the boot finished its report (boot() checks), after the daemon died mid-boot
    assert run.before_kill["bytes_total"] > 0
    # the second daemon on the same socket path saw QEMU come back
    assert run.after_restart["connections_total"] >= 1, run.after_restart
    assert _hwrng(run.restart, "rng_current").startswith("virtio_rng")
