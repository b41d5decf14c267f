"""EntropyCore through real sources: `os`, and fake USB TRNGs on the real pyusb path.

The sources are named by spec strings as on the command line, so the USB fakes reach
them as they reach the CLI: SEEDTOOL_USB_BACKEND names `fake_backend` below, whose
device list each test fills. Every wait is for an event the core logs, never a delay.
"""

from __future__ import annotations

import errno
import json
import threading
from collections.abc import Iterator, Mapping

import pytest

from devtools.fakeusb import FakeBackend
from devtools.fakeusb.devices import ByteStream, Stuck, TrueRNG
from seedtool.serve.core import MAX_READ, EntropyCore
from seedtool.shared.errors import SourceError

BACKEND = FakeBackend()
#: a hang guard only: every wait ends as soon as its event is logged
DEADLINE = 60.0


def fake_backend() -> FakeBackend:
    """The backend SEEDTOOL_USB_BACKEND names (built once per process by seedtool)."""
    return BACKEND


@pytest.fixture
def usb(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBackend]:
    monkeypatch.setenv("SEEDTOOL_USB_BACKEND", f"{__name__}:fake_backend")
    BACKEND.devices.clear()
    yield BACKEND
    BACKEND.devices.clear()


class Events:
    """The core's log: (event, fields), with a wait for an event to be logged."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, object]]] = []
        self.cond = threading.Condition()

    def __call__(self, event: str, fields: Mapping[str, object]) -> None:
        with self.cond:
            self.items.append((event, dict(fields)))
            self.cond.notify_all()

    def of(self, event: str) -> list[dict[str, object]]:
        with self.cond:
            return [f for e, f in self.items if e == event]

    def wait(self, event: str, count: int = 1) -> dict[str, object]:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.of(event)) >= count, DEADLINE)
            assert ok, f"no '{event}' #{count} in {[e for e, _ in self.items]}"
            return self.of(event)[count - 1]


def make(
    specs: list[str], require: tuple[str, ...] = (), **kw: float
) -> tuple[EntropyCore, Events]:
    events = Events()
    kw.setdefault("retry_min", 0.001)
    kw.setdefault("retry_max", 0.01)
    return EntropyCore(specs, require, log=events, **kw), events  # type: ignore[arg-type]


def source(core: EntropyCore, name: str) -> dict[str, object]:
    return next(s for s in core.status()["sources"] if s["name"] == name)


def drain_until(core: EntropyCore, events: Events, event: str) -> None:
    """Keep reading (each read reseeds, so the sources are read again) until `event`."""
    for _ in range(10_000):
        if events.of(event):
            return
        core.read(64, timeout=0.001)
    events.wait(event)


# --------------------------------------------------------------------------- os only


def test_os_only_core_serves_distinct_bytes() -> None:
    core, _ = make(["os"])
    with core:
        assert core.serving
        a, b = core.read(64), core.read(64)
        assert a is not None and b is not None
        assert len(a) == len(b) == 64 and a != b
        st = core.status()
        assert st["serving"] is True and st["drbg"]["reseeds"] == 1
        assert [s["name"] for s in st["sources"]] == ["os"]
    assert core.read(1) is None  # stopped


@pytest.mark.parametrize("n", [0, MAX_READ + 1])
def test_read_size_is_checked(n: int) -> None:
    core, _ = make([])
    with core, pytest.raises(ValueError, match="1 to 4096 bytes"):
        core.read(n)


def test_two_cores_never_equal() -> None:
    a, _ = make(["os"])
    b, _ = make(["os"])
    with a, b:
        assert a.read(MAX_READ) != b.read(MAX_READ)


def test_reseed_schedule_by_bytes_and_os_in_every_reseed() -> None:
    core, _ = make(["os"], reseed_bytes=100)
    with core:
        for _ in range(5):
            core.read(64)
        st = core.status()
    # the first read fits the instantiate's budget; each later one crosses 100 bytes
    assert st["drbg"]["reseeds"] == 5 and st["drbg"]["bytes_since_reseed"] == 64
    # 64 bytes of getrandom per (re)seed plus the instantiate's 16-byte nonce
    assert st["sources"][0]["bytes"] == 5 * 64 + 16


def test_reseed_schedule_by_seconds() -> None:
    now = [1000.0]
    core = EntropyCore(["os"], log=lambda e, f: None, reseed_seconds=30, clock=lambda: now[0])
    with core:
        core.read(64)
        now[0] += 29.5
        core.read(64)
        assert core.status()["drbg"]["reseeds"] == 1
        assert core.status()["drbg"]["last_reseed_age_s"] == 29.5
        now[0] += 0.5
        core.read(64)
        st = core.status()["drbg"]
    assert st["reseeds"] == 2 and st["last_reseed_age_s"] == 0 and st["bytes_since_reseed"] == 64


def test_many_threads_get_distinct_bytes(usb: FakeBackend) -> None:
    usb.add(TrueRNG())
    core, _ = make(["truerng"], reseed_bytes=512)
    outs: list[bytes] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = [core.read(32) for _ in range(200)]
        with lock:
            outs.extend(o for o in mine if o is not None)

    with core:
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        st = core.status()
    assert len(outs) == 1600 and len(set(outs)) == 1600
    assert st["bytes_served"] == 1600 * 32 and st["drbg"]["reseeds"] > 1


def test_status_holds_no_output(usb: FakeBackend) -> None:
    usb.add(TrueRNG())
    core, events = make(["truerng"], reseed_bytes=64)
    with core:
        outs = [core.read(64) for _ in range(20)]
        text = json.dumps(core.status()) + json.dumps(events.items)
    for out in outs:
        assert out is not None
        assert out.hex()[:12] not in text and out[:6].decode("latin-1") not in text
    # nor any byte the device sent
    sent = ByteStream.expected(b"truerng", 0, 4096)
    assert all(sent[i : i + 6].hex() not in text for i in range(0, 4096, 6))


# --------------------------------------------------------------------------- faults


def test_optional_trng_unplugged_mid_read_then_replugged(usb: FakeBackend) -> None:
    # collecting a chunk reads 64 bytes + 448 to finish the APT window, the first one
    # 1024 start-up samples before: 2048 bytes for the chunks of start() and the one
    # ready after it; the third collection is cut off inside its window completion
    dev = usb.add(TrueRNG(unplug_after=2048 + 128))
    core, events = make(["truerng"], reseed_bytes=64)
    with core:
        assert source(core, "truerng")["healthy"] is True
        drain_until(core, events, "source-failed")
        failed = events.of("source-failed")[0]
        assert failed["source"] == "truerng" and failed["failures"] == 1
        assert "was unplugged while reading; plug it back in" in str(failed["error"])
        st = source(core, "truerng")
        assert st["healthy"] is False and "unplugged" in str(st["last_error"])
        # the others unaffected: still serving from os
        assert core.serving and core.read(64) is not None
        assert dev.present is False
        usb.add(TrueRNG())  # plugged back in: a new device on the bus
        events.wait("source-healthy")
        assert source(core, "truerng")["healthy"] is True
        assert core.read(64) is not None


def test_stuck_output_stops_a_required_source_until_it_recovers(usb: FakeBackend) -> None:
    dev = usb.add(TrueRNG())
    core, events = make(["truerng"], require=("truerng",), reseed_bytes=64)
    with core:
        assert core.serving
        dev.stream = Stuck(0xA5)
        drain_until(core, events, "not-serving")
        failed = events.of("source-failed")[0]
        assert "failed its health tests" in str(failed["error"])
        assert events.of("not-serving")[0]["waiting_for"] == "truerng"
        assert core.serving is False
        assert core.read(64, timeout=0.01) is None  # readers wait; None on timeout
        assert source(core, "truerng")["healthy"] is False
        # retried with fresh start-up tests while stuck: each fails again
        events.wait("source-failed", 2)
        reseeds = core.status()["drbg"]["reseeds"]
        dev.stream = ByteStream(b"repaired")
        events.wait("serving")
        # serving again only after a reseed that took the recovered source's bytes
        assert core.status()["drbg"]["reseeds"] > reseeds
        assert core.read(64, timeout=DEADLINE) is not None


def test_reader_blocked_while_not_serving_is_woken_by_recovery(usb: FakeBackend) -> None:
    dev = usb.add(TrueRNG())
    core, events = make(["truerng"], require=("truerng",), reseed_bytes=64)
    with core:
        dev.stream = Stuck(0)
        drain_until(core, events, "not-serving")
        got: list[bytes | None] = []
        reader = threading.Thread(target=lambda: got.append(core.read(64)))
        reader.start()
        dev.stream = ByteStream(b"back")
        reader.join(DEADLINE)
        assert got and got[0] is not None and len(got[0]) == 64


def test_required_source_unusable_at_start_is_one_sentence(usb: FakeBackend) -> None:
    core, _ = make(["os"], require=("truerng",))
    with pytest.raises(SourceError) as info:
        core.start()
    msg = str(info.value)
    assert msg.startswith("the required source 'truerng' is unavailable: no TrueRNG")
    assert "plug it in" in msg and "\n" not in msg


def test_required_stuck_at_start_is_refused(usb: FakeBackend) -> None:
    usb.add(TrueRNG(stream=Stuck(0x55)))
    core, _ = make(["truerng"], require=("truerng",))
    with pytest.raises(SourceError, match="^the required source 'truerng' failed its health"):
        core.start()


def test_no_permission_on_the_device(usb: FakeBackend) -> None:
    usb.add(TrueRNG(open_errno=errno.EACCES))
    core, events = make(["truerng"])
    with core:
        err = str(events.of("source-failed")[0]["error"])
        assert "udev rule" in err or "plugdev" in err
        assert core.serving and core.read(64) is not None  # the others unaffected
        events.wait("source-failed", 2)  # and it keeps being retried
    core2, _ = make(["truerng"], require=("truerng",))
    with pytest.raises(SourceError, match="udev rule|plugdev"):
        core2.start()


def test_optional_source_absent_at_start_joins_when_plugged_in(usb: FakeBackend) -> None:
    core, events = make(["truerng"])
    with core:
        assert "no TrueRNG" in str(events.of("source-failed")[0]["error"])
        assert core.serving
        usb.add(TrueRNG())
        events.wait("source-healthy")
        assert source(core, "truerng")["healthy"] is True


def test_reopen_runs_a_fresh_start_up_test(usb: FakeBackend) -> None:
    dev = usb.add(TrueRNG())
    core, events = make(["truerng"])
    with core:
        opens = len(dev.events("open"))
        delivered = dev.total_delivered
        core.reopen()
        events.wait("source-healthy")
        assert len(dev.events("open")) > opens
        assert dev.total_delivered >= delivered + 1024  # the start-up samples, again
        assert source(core, "truerng")["healthy"] is True and core.serving
