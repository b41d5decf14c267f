"""The `hwrng` source against this machine's real /dev/hwrng and against device paths we control."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from seedtool.health import HealthMonitor
from seedtool.shared.errors import DeviceError, HealthTestFailure, UsageError
from seedtool.sources import make_source
from seedtool.sources.hwrng import DEFAULT_DEVICE, DEFAULT_SYSFS, HwrngSource

MARK = b"NOT-RANDOM-MARKER"

real_hwrng = pytest.mark.skipif(
    not (os.path.exists(DEFAULT_DEVICE) and os.access(DEFAULT_DEVICE, os.R_OK)),
    reason="no readable /dev/hwrng on this machine",
)


def fake_sysfs(tmp_path: Path, current: str, available: str, quality: str | None) -> Path:
    d = tmp_path / "hw_random"
    d.mkdir()
    (d / "rng_current").write_text(current + "\n")
    (d / "rng_available").write_text(available + "\n")
    if quality is not None:
        (d / "rng_quality").write_text(quality + "\n")
    return d


# ---- the real device -------------------------------------------------------------------


@real_hwrng
def test_real_device_is_available_and_describes_itself() -> None:
    src = HwrngSource()
    avail = src.available()
    assert avail.ok, avail.reason
    assert avail.detail is not None
    current = Path(DEFAULT_SYSFS, "rng_current").read_text().strip()
    assert avail.detail["rng_current"] == current
    assert current in avail.detail["rng_available"].split()
    quality = int(Path(DEFAULT_SYSFS, "rng_quality").read_text())
    assert src.min_entropy == pytest.approx(8.0 * quality / 1024)
    src.close()


@real_hwrng
def test_real_device_reads_exact_lengths_that_differ() -> None:
    with make_source("hwrng") as src:
        a = src.read(700)  # several CHUNK-sized reads, the last one partial
        b = src.read(700)
        one = src.read(1)
    assert len(a) == 700 and len(b) == 700 and len(one) == 1
    assert a != b


@real_hwrng
def test_real_device_passes_health_tests() -> None:
    src = HwrngSource()
    mon = HealthMonitor("hwrng", src.min_entropy, src.sample_bits)
    try:
        block = mon.read(src.read, 512)
    finally:
        src.close()
    assert len(block) == 512
    assert mon.report.verdict == "pass"
    assert mon.report.startup_samples == 1024


# ---- sysfs interpretation --------------------------------------------------------------


def test_quality_sets_min_entropy(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, "virtio_rng.0", "virtio_rng.0 none", "512")
    src = HwrngSource(device=str(tmp_path / "absent"), sysfs=str(sysfs))
    assert src.min_entropy == 4.0


def test_explicit_min_entropy_wins_over_quality(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, "virtio_rng.0", "virtio_rng.0", "512")
    src = HwrngSource(sysfs=str(sysfs), min_entropy="6")
    assert src.min_entropy == 6.0


def test_other_device_without_sysfs_keeps_default_h(tmp_path: Path) -> None:
    src = HwrngSource(device=str(tmp_path / "dev"))
    assert src.min_entropy == 8.0
    assert src.sysfs is None


def test_no_current_rng_is_unavailable_and_names_a_choice(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, "none", "tpm-rng-0 none", "1024")
    avail = HwrngSource(sysfs=str(sysfs)).available()
    assert not avail.ok
    assert "rng_current is 'none'" in avail.reason
    assert "tpm-rng-0" in avail.reason
    assert avail.detail is not None and avail.detail["rng_available"] == "tpm-rng-0 none"


def test_no_driver_at_all_suggests_loading_one(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, "none", "none", None)
    avail = HwrngSource(sysfs=str(sysfs)).available()
    assert not avail.ok
    assert "modprobe" in avail.reason


def test_quality_zero_is_unavailable_unless_overridden(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.write_bytes(os.urandom(64))
    sysfs = fake_sysfs(tmp_path, "some_rng", "some_rng", "0")
    avail = HwrngSource(device=str(dev), sysfs=str(sysfs)).available()
    assert not avail.ok and "rng_quality 0" in avail.reason
    assert HwrngSource(device=str(dev), sysfs=str(sysfs), min_entropy="2").available().ok


def test_bad_timeout_option_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        HwrngSource(timeout="soon")
    with pytest.raises(UsageError):
        HwrngSource(timeout="0")


# ---- device errors -------------------------------------------------------------------


def test_missing_device(tmp_path: Path) -> None:
    src = HwrngSource(device=str(tmp_path / "hwrng"))
    avail = src.available()
    assert not avail.ok and "does not exist" in avail.reason
    with pytest.raises(DeviceError, match="does not exist"):
        src.read(16)


def _available_as_nobody(device: str) -> tuple[bool, str]:
    """Call available() in a forked child that has dropped root, as an operator would run it."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            a = HwrngSource(device=device).available()
            os.write(w, (f"{a.ok}\n{a.reason}").encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    ok, _, reason = out.partition("\n")
    return ok == "True", reason


def test_permission_denied_names_the_udev_rule(tmp_path: Path) -> None:
    dev = tmp_path / "hwrng"
    dev.write_bytes(b"\0" * 16)
    dev.chmod(0o600)
    tmp_path.chmod(0o755)
    if os.geteuid() == 0:
        # root ignores permission bits: ask as an unprivileged user
        ok, reason = _available_as_nobody(str(dev))
    else:
        dev.chmod(0)
        a = HwrngSource(device=str(dev)).available()
        ok, reason = a.ok, a.reason
    assert not ok
    assert "permission denied" in reason
    assert 'KERNEL=="hw_random"' in reason and "group" in reason


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_device_node_without_driver_is_enodev(tmp_path: Path) -> None:
    # misc minors 240-254 are reserved for local use (Documentation/admin-guide/devices.txt),
    # so no driver claims them and misc_open() answers ENODEV.
    in_use = {int(line.split()[0]) for line in Path("/proc/misc").read_text().splitlines()}
    minor = next(m for m in range(254, 239, -1) if m not in in_use)
    node = tmp_path / "hwrng"
    os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(10, minor))
    src = HwrngSource(device=str(node))
    avail = src.available()
    assert not avail.ok
    assert "no hardware RNG driver" in avail.reason and "ENODEV" in avail.reason
    with pytest.raises(DeviceError, match="ENODEV"):
        src.read(8)


def test_short_read_is_an_error_without_the_data(tmp_path: Path) -> None:
    dev = tmp_path / "hwrng"
    dev.write_bytes(MARK * 6)  # 102 bytes, then end of file
    src = HwrngSource(device=str(dev))
    assert src.available().ok
    with pytest.raises(DeviceError) as err:
        src.read(200)
    msg = str(err.value)
    assert "102 of 200" in msg
    assert MARK.decode() not in msg and MARK[:8].hex() not in msg


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[tuple[Path, threading.Event, list[bytes]]]:
    """A FIFO whose writer thread sends the queued pieces, then holds the pipe open silently.

    Yields (path, ready, pieces): fill `pieces`, open the read side, then wait for `ready`
    (the writer has connected, so an empty non-blocking read means "no data yet", not EOF).
    """
    path = tmp_path / "hwrng-fifo"
    os.mkfifo(path)
    pieces: list[bytes] = []
    ready, stop = threading.Event(), threading.Event()

    def writer() -> None:
        fd = os.open(path, os.O_WRONLY)  # blocks until the source opens the read side
        try:
            ready.set()
            for p in pieces:
                os.write(fd, p)
            stop.wait()
        finally:
            os.close(fd)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    yield path, ready, pieces
    stop.set()
    if not ready.is_set():
        # the test never opened the FIFO: open the read side once to release the writer
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    t.join(5)
    assert not t.is_alive()


def _open_fifo_source(path: Path, ready: threading.Event, timeout: str) -> HwrngSource:
    src = HwrngSource(device=str(path), timeout=timeout)
    src._fd = src._open()  # the read side: lets the writer thread connect
    assert ready.wait(5)
    return src


def test_fifo_pieces_are_assembled_to_exact_length(
    fifo: tuple[Path, threading.Event, list[bytes]],
) -> None:
    path, ready, pieces = fifo
    payload = os.urandom(1000)
    pieces.extend([payload[:1], payload[1:300], payload[300:999], payload[999:]])
    src = _open_fifo_source(path, ready, "30")
    try:
        assert src.read(1000) == payload
    finally:
        src.close()


def test_silent_device_times_out(fifo: tuple[Path, threading.Event, list[bytes]]) -> None:
    path, ready, pieces = fifo
    pieces.append(b"x" * 10)
    src = _open_fifo_source(path, ready, "0.3")
    with pytest.raises(DeviceError, match="10 of 64 bytes before the deadline"):
        src.read(64)
    assert src._fd is None  # closed after the failure; the next read reopens


def test_stuck_device_fails_health_tests() -> None:
    # /dev/zero is a real character device stuck at one value
    src = HwrngSource(device="/dev/zero")
    assert src.available().ok
    mon = HealthMonitor("hwrng", src.min_entropy, src.sample_bits)
    with pytest.raises(HealthTestFailure) as err:
        mon.read(src.read, 64)
    src.close()
    assert mon.report.verdict == "fail"
    assert mon.report.rct_failures >= 1
    assert "hwrng" in str(err.value)


def test_close_is_idempotent(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.write_bytes(os.urandom(32))
    src = HwrngSource(device=str(dev))
    assert len(src.read(16)) == 16
    src.close()
    src.close()
    assert src.read(16)  # reopens from the start of the file
