"""USB sources (truerng, onerng, chaoskey) through the real pyusb code path.

Every test drives pyusb's own `usb.core` / `usb.util` against emulated devices
from `devtools.fakeusb`; the fakes record what the host did (control requests,
commands, driver detach/attach) and produce predictable streams, so each test
checks observable protocol behaviour and exact bytes.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devtools.fakeusb import FakeBackend, FakeDevice
from devtools.fakeusb.devices import (
    ByteStream,
    ChaosKey,
    OneRNG,
    Stuck,
    TrueRNG,
    TrueRNGPro,
    TrueRNGProV2,
)
from seedtool.generate import SeedFactory
from seedtool.health import HealthMonitor
from seedtool.shared.errors import DeviceError, HealthTestFailure
from seedtool.sources import make_source, source_class
from seedtool.sources.chaoskey import ChaosKeySource
from seedtool.sources.onerng import OneRngSource
from seedtool.sources.truerng import TrueRngSource

ROOT = Path(__file__).resolve().parents[2]
PERMISSION = (
    "add a udev rule (examples/udev/60-seedtool.rules) or add your user to the plugdev group"
)
BUSY = "another program (rngd, ekeyd) holds it; stop it"


def expected(key: bytes, n: int, offset: int = 0) -> bytes:
    return ByteStream.expected(key, offset, n)


def kinds(dev: FakeDevice) -> list[str]:
    return [e.kind for e in dev.log]


# --------------------------------------------------------------------------- discovery


@pytest.mark.parametrize(
    "device, model",
    [
        (TrueRNG(serial="TR3"), "TrueRNG"),
        (TrueRNGPro(serial="PRO"), "TrueRNGpro"),
        (TrueRNGProV2(serial="PRO2"), "TrueRNGproV2"),
    ],
)
def test_truerng_available_names_the_model(device: FakeDevice, model: str) -> None:
    src = make_source("truerng", backend=FakeBackend([device]))
    avail = src.available()
    assert avail.ok, avail.reason
    assert avail.detail is not None
    assert avail.detail["model"] == model
    assert avail.detail["usb_id"] == f"{device.vid:04x}:{device.pid:04x}"
    assert avail.detail["serial"] == device.serial
    # available() opens nothing it does not give back, and claims nothing
    assert "claim" not in kinds(device) and device.open_handles == 0


def test_registry_and_class_attributes() -> None:
    assert source_class("truerng") is TrueRngSource
    assert source_class("onerng") is OneRngSource
    assert source_class("chaoskey") is ChaosKeySource
    for cls in (TrueRngSource, OneRngSource, ChaosKeySource):
        assert cls.extra == "usb"
        assert cls.raw is False and cls.min_entropy == 8.0 and cls.sample_bits == 8


def test_absent_device_is_unavailable_and_read_says_so() -> None:
    backend = FakeBackend([ChaosKey()])  # plugged in, but not a TrueRNG
    src = make_source("truerng", backend=backend)
    avail = src.available()
    assert not avail.ok
    assert avail.reason.startswith("no TrueRNG (04d8:f5fe, 16d0:0aa0, 04d8:ebb5) found")
    with pytest.raises(DeviceError, match=r"^no TrueRNG .* found; plug it in"):
        src.read(16)


# --------------------------------------------------------------------------- TrueRNG


def test_truerng_raises_dtr_streams_exact_bytes_and_gives_the_tty_back() -> None:
    dev = TrueRNG(serial="A")
    src = make_source("truerng", backend=FakeBackend([dev]))
    first = src.read(100)
    second = src.read(1000)
    assert first + second == expected(b"truerng", 1100)
    assert dev.events("detach") == [(0, "cdc_acm"), (1, "cdc_acm")]
    assert dev.dtr is True
    assert dev.baud_history == []  # v1-v3 have no modes: no line-coding knock
    src.close()
    assert dev.dtr is False
    assert dev.kernel_drivers == {0: "cdc_acm", 1: "cdc_acm"}
    assert sorted(dev.events("attach")) == [(0, "cdc_acm"), (1, "cdc_acm")]
    assert dev.claims == {} and dev.open_handles == 0
    src.close()  # safe twice
    assert len(dev.events("attach")) == 2


def test_truerng_without_dtr_sends_nothing() -> None:
    # the fake only streams with DTR up, so the exact bytes above prove DTR was set;
    # this is the counterpart: the same device read by bare pyusb without DTR times out
    import usb.core

    dev = TrueRNG(kernel_drivers={})
    found = usb.core.find(idVendor=0x04D8, idProduct=0xF5FE, backend=FakeBackend([dev]))
    with pytest.raises(usb.core.USBTimeoutError):
        found.read(0x82, 64, 100)


@pytest.mark.parametrize("cls", [TrueRNGPro, TrueRNGProV2])
def test_truerng_pro_knocks_into_normal_mode(cls: type[TrueRNGPro]) -> None:
    dev = cls()
    dev.mode = "raw_binary"  # left in another mode by an earlier user
    src = TrueRngSource(backend=FakeBackend([dev]))
    data = src.read(256)
    assert dev.baud_history == [110, 300, 110, 300]
    assert dev.mode_changes == ["normal"]
    assert dev.dtr is True
    assert data == expected(b"truerng", 256)  # the normal-mode stream
    assert src.model is not None and src.model.model == cls.PRODUCT
    src.close()


def test_short_transfers_are_joined_to_exact_counts() -> None:
    dev = TrueRNG(max_transfer=7)
    src = make_source("truerng", backend=FakeBackend([dev]))
    assert src.read(1000) == expected(b"truerng", 1000)
    assert max(n for _, n in dev.events("bulk_in")) == 7
    src.close()


def test_transfer_timeout_option_reaches_the_device() -> None:
    dev = TrueRNG()
    src = make_source("truerng", backend=FakeBackend([dev]), timeout_ms="1234")
    src.read(10)
    assert dev.timeouts and set(dev.timeouts) == {1234}
    src.close()


def test_choose_by_serial_bus_and_address() -> None:
    a = TrueRNG(serial="A", stream=ByteStream(b"a"))
    b = TrueRNG(serial="B", stream=ByteStream(b"b"))
    backend = FakeBackend([a, b])
    src = make_source("truerng", backend=backend, serial="B")
    assert src.available().detail["serial"] == "B"  # type: ignore[index]
    assert src.read(32) == expected(b"b", 32)
    src.close()
    assert a.events("claim") == []

    src = make_source("truerng", backend=backend, bus="1", address=str(a.address))
    assert src.read(32) == expected(b"a", 32)
    src.close()

    avail = make_source("truerng", backend=backend).available()
    assert avail.ok and avail.detail is not None and avail.detail["matching_devices"] == "2"

    missing = make_source("truerng", backend=backend, serial="C")
    assert not missing.available().ok
    with pytest.raises(DeviceError, match="found with serial C; plug it in"):
        missing.read(1)


# --------------------------------------------------------------------------- OneRNG


def test_onerng_commands_and_first_10k_discarded() -> None:
    dev = OneRNG(serial="00001")
    src = make_source("onerng", backend=FakeBackend([dev]))
    assert src.available().ok
    out = src.read(300) + src.read(700)
    # the fake sends 10 KB of stale zeros first: none of them may come back
    assert out == expected(b"onerng", 1000)
    assert dev.delivered[0x85] >= 10240 + 1000
    assert dev.commands == ["cmd0", "cmdO"]
    assert dev.written(0x05) == b"cmd0cmdO"
    assert dev.events("detach") == [(0, "cdc_acm"), (1, "cdc_acm")]
    src.close()
    assert dev.commands == ["cmd0", "cmdO", "cmdo"]
    assert dev.running is False
    assert dev.kernel_drivers == {0: "cdc_acm", 1: "cdc_acm"}


def test_onerng_that_never_starts_times_out() -> None:
    # a device ignoring its commands: nothing flows, and the error says so
    class Deaf(OneRNG):
        def cdc_out(self, data: bytes) -> None:
            pass

    dev = Deaf()
    src = make_source("onerng", backend=FakeBackend([dev]), timeout_ms="50")
    with pytest.raises(DeviceError, match=r"sent no data for 50 ms; unplug and replug it"):
        src.read(10)
    # the failed start still gives the device back to the kernel
    assert dev.kernel_drivers == {0: "cdc_acm", 1: "cdc_acm"}
    assert dev.claims == {}


# --------------------------------------------------------------------------- ChaosKey


def test_chaoskey_cooked_detaches_and_reattaches_driver() -> None:
    dev = ChaosKey()
    src = make_source("chaoskey", backend=FakeBackend([dev]))
    assert src.read(4096) == expected(b"chaoskey", 4096)
    assert dev.events("detach") == [(0, "chaoskey")]
    assert dev.kernel_drivers == {}
    assert set(dev.delivered) == {0x85}
    src.close()
    assert dev.events("attach") == [(0, "chaoskey")]
    assert dev.kernel_drivers == {0: "chaoskey"}


def test_chaoskey_without_kernel_driver_attaches_nothing() -> None:
    dev = ChaosKey(kernel_drivers={})
    src = make_source("chaoskey", backend=FakeBackend([dev]))
    src.read(64)
    src.close()
    assert dev.events("detach") == [] and dev.events("attach") == []
    assert dev.kernel_drivers == {}


def test_chaoskey_raw_reads_0x86_and_keeps_bits_1_to_8() -> None:
    dev = ChaosKey()
    src = make_source("chaoskey", backend=FakeBackend([dev]), raw="1")
    assert src.raw is True and src.min_entropy == 2.0 and src.sample_bits == 8
    out = src.read(500)
    words = ChaosKey.raw_words(expected(b"ck-raw", 1000))
    samples = [int.from_bytes(words[i : i + 2], "little") for i in range(0, 1000, 2)]
    assert out == bytes((v >> 1) & 0xFF for v in samples)  # bits 1-8 of each sample
    assert set(dev.delivered) == {0x86} and dev.delivered[0x86] >= 1000
    src.close()
    # an explicit assessment overrides the default
    assert make_source("chaoskey", raw="1", min_entropy="3.5").min_entropy == 3.5
    assert make_source("chaoskey", raw="0").raw is False


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name, device", [("truerng", TrueRNG), ("onerng", OneRNG),
                                          ("chaoskey", ChaosKey)])
def test_permission_denied_points_at_udev_rule(name: str, device: Callable[..., Any]) -> None:
    dev = device(open_errno=errno.EACCES)
    src = make_source(name, backend=FakeBackend([dev]))
    avail = src.available()
    assert not avail.ok
    assert avail.reason.endswith(f"permission denied; {PERMISSION}")
    with pytest.raises(DeviceError) as info:
        src.read(8)
    assert str(info.value).endswith(f"permission denied; {PERMISSION}")


def test_interface_held_by_another_program_is_busy() -> None:
    dev = TrueRNG(other_claims={1})
    src = make_source("truerng", backend=FakeBackend([dev]))
    with pytest.raises(DeviceError, match=re.escape(f"is busy: {BUSY}")):
        src.read(8)
    # we gave back what we took: the drivers we detached are bound again
    assert dev.kernel_drivers == {0: "cdc_acm", 1: "cdc_acm"}


def test_second_reader_of_the_same_device_is_busy() -> None:
    dev = ChaosKey()
    backend = FakeBackend([dev])
    first = make_source("chaoskey", backend=backend)
    first.read(16)
    second = make_source("chaoskey", backend=backend)
    with pytest.raises(DeviceError, match=re.escape(f"is busy: {BUSY}")):
        second.read(16)
    assert first.read(16) == expected(b"chaoskey", 32, 0)[16:]
    first.close()
    second.close()
    assert dev.kernel_drivers == {0: "chaoskey"}


@pytest.mark.parametrize("name, device", [("truerng", TrueRNG), ("chaoskey", ChaosKey)])
def test_unplugged_mid_read(name: str, device: Callable[..., Any]) -> None:
    dev = device(unplug_after=700)
    backend = FakeBackend([dev])
    src = make_source(name, backend=backend)
    with pytest.raises(DeviceError, match=r"was unplugged while reading; plug it back in"):
        src.read(2000)
    assert not dev.present and backend.enumerate_devices() == []
    src.close()  # nothing to re-attach to; must not raise
    with pytest.raises(DeviceError, match="was unplugged while reading"):
        src.read(1)  # a source that failed mid-read stays failed
    assert not src.available().ok


def test_onerng_unplugged_while_discarding_stale_output() -> None:
    dev = OneRNG(unplug_after=5000)
    src = make_source("onerng", backend=FakeBackend([dev]))
    with pytest.raises(DeviceError, match="was unplugged while reading"):
        src.read(10)


def test_device_that_stops_mid_read_reports_short_read() -> None:
    dev = ChaosKey(timeout_after=100)
    src = make_source("chaoskey", backend=FakeBackend([dev]), timeout_ms="25")
    with pytest.raises(DeviceError) as info:
        src.read(1000)
    assert str(info.value) == (
        "ChaosKey 1d50:60c6 on bus 1 address 2 returned only 100 of 1000 bytes "
        "before timing out after 25 ms; unplug and replug it"
    )
    src.close()
    assert dev.kernel_drivers == {0: "chaoskey"}


def test_device_that_sends_nothing_times_out() -> None:
    dev = TrueRNG(timeout_after=0)
    src = make_source("truerng", backend=FakeBackend([dev]), timeout_ms="10")
    with pytest.raises(DeviceError, match=r"sent no data for 10 ms"):
        src.read(1)


def test_bad_options_are_usage_errors() -> None:
    from seedtool.shared.errors import UsageError

    with pytest.raises(UsageError, match="bus='x' must be a whole number"):
        make_source("truerng", bus="x")
    with pytest.raises(UsageError, match="raw='maybe' must be 1 or 0"):
        make_source("chaoskey", raw="maybe")


def test_error_messages_carry_no_device_output() -> None:
    # the stream's bytes must never appear in any message, even in hex
    dev = TrueRNG(unplug_after=64)
    src = make_source("truerng", backend=FakeBackend([dev]))
    with pytest.raises(DeviceError) as info:
        src.read(128)
    leaked = expected(b"truerng", 64)
    text = str(info.value)
    assert leaked.hex()[:8] not in text and repr(leaked[:4])[2:-1] not in text


# --------------------------------------------------------------------------- health tests


def test_stuck_device_fails_health_tests() -> None:
    dev = TrueRNG(stream=Stuck(0xA5))
    src = make_source("truerng", backend=FakeBackend([dev]))
    monitor = HealthMonitor("truerng", src.min_entropy, src.sample_bits)
    with pytest.raises(HealthTestFailure, match="source 'truerng' failed its health tests"):
        monitor.read(src.read, 256)
    src.close()


def test_good_device_passes_health_tests() -> None:
    src = make_source("chaoskey", backend=FakeBackend([ChaosKey()]))
    monitor = HealthMonitor("chaoskey", src.min_entropy, src.sample_bits)
    block = monitor.read(src.read, 256)
    # start-up samples are read first and discarded
    assert block == expected(b"chaoskey", 1024 + 256)[1024:]
    assert monitor.report.verdict == "pass"
    src.close()


def test_required_stuck_usb_source_stops_seed_generation() -> None:
    dev = OneRNG(stream=Stuck(0))
    backend = FakeBackend([dev])
    factory = SeedFactory(
        Ed25519PrivateKey.generate(),
        sources=[("onerng", {"backend": backend})],
        required=["onerng"],
    )
    with pytest.raises(HealthTestFailure):
        factory.new()
    factory.close()
    assert dev.commands[-1] == "cmdo"  # paused again on close


# --------------------------------------------------------------------------- subprocesses


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def test_backend_from_environment_in_a_subprocess() -> None:
    code = (
        "from seedtool.sources import make_source\n"
        "from devtools.fakeusb.devices import ByteStream\n"
        "s = make_source('chaoskey')\n"
        "a = s.available()\n"
        "assert a.ok, a.reason\n"
        "assert s.read(100) == ByteStream.expected(b'chaoskey', 0, 100)\n"
        "s.close()\n"
        "t = make_source('truerng')\n"
        "print(a.detail['serial'], t.available().reason)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(
            SEEDTOOL_USB_BACKEND="devtools.fakeusb.env:backend",
            FAKEUSB_DEVICES="chaoskey;serial=CK9",
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    serial, reason = proc.stdout.strip().split(" ", 1)
    assert serial == "CK9"
    assert reason.startswith("no TrueRNG")


def test_subprocess_permission_fault_from_environment() -> None:
    code = (
        "from seedtool.sources import make_source\n"
        "print(make_source('onerng').available().reason)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(
            SEEDTOOL_USB_BACKEND="devtools.fakeusb.env:backend",
            FAKEUSB_DEVICES="onerng;open_errno=EACCES",
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(PERMISSION)


def test_missing_pyusb_says_how_to_install(tmp_path: Path) -> None:
    # A copy of sys.path in which every directory holding `usb` is replaced by a
    # view of that directory without it: the subprocess cannot import pyusb.
    import usb

    hidden = Path(usb.__file__).resolve().parent.parent
    view = tmp_path / "site"
    view.mkdir()
    for entry in hidden.iterdir():
        if entry.name == "usb" or entry.name.lower().startswith("pyusb"):
            continue
        (view / entry.name).symlink_to(entry)
    paths = [str(ROOT)] + [
        str(view) if Path(p).resolve() == hidden else p for p in sys.path if p
    ]
    code = (
        "import sys\n"
        f"sys.path[:] = {paths!r}\n"
        "try:\n"
        "    import usb\n"
        "    print('usb still importable')\n"
        "    sys.exit(3)\n"
        "except ImportError:\n"
        "    pass\n"
        "from seedtool.shared.errors import SourceError\n"
        "from seedtool.sources import make_source\n"
        "for name in ('truerng', 'onerng', 'chaoskey'):\n"
        "    s = make_source(name)\n"
        "    print(name, s.available().reason)\n"
        "    try:\n"
        "        s.read(1)\n"
        "    except SourceError as e:\n"
        "        print(name, e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    hint = "install the usb extra: pip install 'seedtool[usb]'"
    assert len(lines) == 6
    for line in lines:
        assert line.endswith(hint), line


# --------------------------------------------------------------------------- udev example


def test_udev_rules_cover_every_device() -> None:
    text = (ROOT / "examples" / "udev" / "60-seedtool.rules").read_text()
    rules = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    pairs = set()
    for line in rules:
        vid = re.search(r'ATTRS?\{idVendor\}=="([0-9a-f]{4})"', line)
        pid = re.search(r'ATTRS?\{idProduct\}=="([0-9a-f]{4})"', line)
        assert vid and pid, line
        assert 'GROUP="plugdev"' in line and 'MODE="0660"' in line, line
        pairs.add(f"{vid.group(1)}:{pid.group(1)}")
    wanted = {str(i) for cls in (TrueRngSource, OneRngSource, ChaosKeySource) for i in cls.ids}
    wanted.add("20df:0001")  # Simtec Entropy Key
    assert pairs == wanted

