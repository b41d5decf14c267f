"""What `seedtool launch qemu` reads from a VM's console, against the lines the guest
core really writes (seedtool.guest.core.Outcome.line) and kernel/cloud-init output."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from devtools.egd_server import EgdServer
from seedtool.guest.core import Outcome
from seedtool.launch.qemu import (
    MachineConfig,
    QemuVM,
    RngBackend,
    crng_init_time,
    host_keys,
    parse_rng,
    reconnect_option,
    seedtool_lines,
)
from seedtool.shared.errors import UsageError


def _console(*lines: str) -> str:
    # as a serial console shows kmsg: time stamp, carriage returns, an escape sequence
    return "".join(f"\x1b[0m[   {12.5 + i:.6f}] {ln}\r\n" for i, ln in enumerate(lines))


def test_credit_from_user_data_is_parsed() -> None:
    out = Outcome("user-data", "cloud-init", seed_id="ab" * 16, key_id="cd" * 8,
                  credited_bits=512, crng_before="not-ready", crng_after="ready")
    [line] = seedtool_lines(_console("random: crng init done", out.line()))
    assert line.credited and line.bits == 512 and line.seed_id == "ab" * 16
    assert line.key_id == "cd" * 8 and line.origin == "user-data"
    assert (line.crng_before, line.crng_after) == ("not-ready", "ready")
    assert line.kernel_time == 13.5


def test_datasource_credit_without_seed_id_or_key_is_parsed() -> None:
    out = Outcome("datasource:openstack", "cloud-init", credited_bits=4096,
                  crng_before="ready", crng_after="ready")
    assert "from seed - signed by key -" in out.line()
    [line] = seedtool_lines(_console(out.line()))
    assert line.credited and line.bits == 4096
    assert (line.seed_id, line.key_id, line.origin) == ("-", "-", "datasource:openstack")


def test_refusals_are_parsed_with_their_reason() -> None:
    outs = [Outcome("user-data", "cloud-init", seed_id="ef" * 16, reason="expired"),
            Outcome("disk", "early-boot", reason="malformed: not a seedtool envelope")]
    lines = seedtool_lines(_console(*(o.line() for o in outs)))
    assert [(ln.credited, ln.seed_id, ln.origin, ln.reason) for ln in lines] == [
        (False, "ef" * 16, "user-data", "expired"),
        (False, "-", "disk", "malformed: not a seedtool envelope")]


def test_crng_time_and_host_keys() -> None:
    text = _console("random: crng init done") + (
        "-----BEGIN SSH HOST KEY FINGERPRINTS-----\r\n"
        "256 SHA256:abcDEF0123+/xyz root@debian (ECDSA)\r\n"
        "256 SHA256:zzzz root@debian (ED25519)\r\n"
        "-----END SSH HOST KEY FINGERPRINTS-----\r\n")
    assert crng_init_time(text) == 12.5
    keys = host_keys(text)
    assert keys is not None and [(k.type, k.fingerprint) for k in keys] == [
        ("ECDSA", "SHA256:abcDEF0123+/xyz"), ("ED25519", "SHA256:zzzz")]
    assert host_keys(_console("no keys yet")) is None


# --- --rng: what feeds the guest's virtio-rng -------------------------------------------

def _qemu_argv(rng: RngBackend | None, tmp_path: Path) -> list[str]:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"")
    config = MachineConfig(image=disk, accel="tcg", network=False, rng=rng)
    return QemuVM("t", tmp_path, disk, config, disk_format="raw").argv()


def _after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_rng_egd_builds_a_reconnecting_socket_an_rng_egd_object_and_a_rate_limited_device(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv = _qemu_argv(parse_rng("egd:egd.sock"), tmp_path)
    spelling = reconnect_option(argv[0])  # what this machine's QEMU accepts
    every = 1000 if spelling == "reconnect-ms" else 1
    assert _after(argv, "-chardev") == [f"socket,id=egd0,path={tmp_path}/egd.sock,"
                                        f"{spelling}={every}"]
    assert _after(argv, "-object") == ["rng-egd,id=rng0,chardev=egd0"]
    assert _after(argv, "-device")[-1] == "virtio-rng-pci,rng=rng0,max-bytes=1024,period=1000"


def test_rng_options_set_the_rate_limit_and_the_reconnect_interval() -> None:
    rng = parse_rng("egd:/run/seedtool/egd.sock,max-bytes=64,period=500,reconnect=5")
    assert rng.qemu_args("reconnect") == [
        "-chardev", "socket,id=egd0,path=/run/seedtool/egd.sock,reconnect=5",
        "-object", "rng-egd,id=rng0,chardev=egd0",
        "-device", "virtio-rng-pci,rng=rng0,max-bytes=64,period=500"]
    # QEMU 9.2+ spells it reconnect-ms, in milliseconds
    assert rng.qemu_args("reconnect-ms")[1].endswith(",reconnect-ms=5000")


def test_rng_urandom_is_qemus_rng_random_on_dev_urandom(tmp_path: Path) -> None:
    argv = _qemu_argv(parse_rng("urandom"), tmp_path)
    assert _after(argv, "-object") == ["rng-random,id=rng0,filename=/dev/urandom"]
    assert "-chardev" not in argv


def test_rng_none_the_default_adds_no_virtio_rng_device(tmp_path: Path) -> None:
    for rng in (parse_rng("none"), None):  # None: MachineConfig's own default
        argv = _qemu_argv(rng, tmp_path)
        assert _after(argv, "-device") == _after(argv, "-object") == _after(argv, "-chardev") == []


@pytest.mark.parametrize("spec, words", [
    ("egd", "none, urandom or egd:PATH"),
    ("egd:", "needs the path"),
    ("hwrng", "none, urandom or egd:PATH"),
    ("none,max-bytes=1", "takes no options"),
    ("urandom,reconnect=1", "only to egd"),
    ("egd:/s,max-bytes=0", "max-bytes must be a whole number from 1"),
    ("egd:/s,period=soon", "period must be a whole number"),
    ("egd:/s,reconnect=-1", "reconnect must be a whole number"),
    ("egd:/a,b", "cannot contain a comma"),
    ("egd:/" + "x" * 120, "longer than a UNIX socket allows"),
])
def test_bad_rng_specs_are_refused_in_one_sentence(spec: str, words: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_rng(spec)
    assert words in str(e.value) and str(e.value).count(". ") == 0


def test_rng_egd_needs_the_socket_to_exist_at_launch(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"")
    with pytest.raises(UsageError, match="there is no EGD socket at .*start the daemon"):
        MachineConfig(image=disk, rng=parse_rng(f"egd:{tmp_path}/egd.sock")).check()
    with pytest.raises(UsageError, match="is not a UNIX socket"):
        MachineConfig(image=disk, rng=parse_rng(f"egd:{disk}")).check()


def _wait(cond: Callable[[], bool], what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60  # a failure bound, not a measurement
    while not cond():
        assert proc.poll() is None, f"QEMU exited with {proc.returncode} before {what}"
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.05)


def test_qemu_accepts_the_rng_egd_arguments_and_reconnects_to_a_restarted_daemon(
        tmp_path: Path) -> None:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    path = str(tmp_path / "egd.sock")
    rng = parse_rng(f"egd:{path}")
    first = EgdServer(path)
    # paused (-S): QEMU opens its chardevs at start, no guest needed
    proc = subprocess.Popen(
        [qemu, "-machine", "pc", "-accel", "tcg", "-nodefaults", "-display", "none", "-S",
         *rng.qemu_args(reconnect_option(qemu))],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait(lambda: first.connections == 1, "connection to the EGD socket", proc)
        first.close()  # the daemon goes away; QEMU keeps running and retries
        second = EgdServer(path)
        with second:
            _wait(lambda: second.connections == 1, "reconnection to the new daemon", proc)
            assert proc.poll() is None
    finally:
        first.close()
        proc.kill()
        proc.wait()
