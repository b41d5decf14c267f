"""The entropy core of `seedtool serve`: health-tested sources in, DRBG output out.

`EntropyCore` opens the sources once (the same `--source`/`--require` syntax and source
modules as `generate`), reads each hardware source in its own background thread through
the SP 800-90B health tests (`seedtool.health.HealthMonitor`), and serves bytes only from
an HMAC_DRBG (`seedtool.serve.drbg`). Every listener (EGD now, the HTTPS seed API next)
calls `read()`; nothing else ever leaves the core, and no raw sample is ever returned.

Sources. Each hardware source keeps one health-tested chunk ready (512 bits of assumed
min-entropy: 64 bytes at H = 8); a reseed takes it and the source's thread reads the next.
A source failing its health tests, or failing to read (unplugged, no permission), stops
contributing at once: the monitor drops the failing block, the core drops the source's
ready chunk, logs one line, and retries after a back-off (1 s doubling to 60 s) with a
new source object and a new monitor, so with a fresh start-up test (SP 800-90B 4.3).
The monitor is made with `max_failures=0`: in a daemon that runs for months, the one
false alarm `HealthMonitor` forgives per seed would otherwise be forgiven forever.
One thread per source: a source that hangs never delays another one or a reader.

`os` (getrandom(2)) is mixed into every (re)seed, so the output is never weaker than the
kernel CSPRNG even while every hardware source is down. The contributions are combined
with `seedtool.shared.mix` (HKDF-SHA512, labelled per source) into the entropy input.

Output. Reads are served from `drbg.OutputBuffer`: one Generate call of 4 KiB cut into
request-sized slices, each zeroed in the buffer as it is handed out, and the rest
discarded at every reseed, so no byte generated before a reseed is served after it.

Reseed schedule: at start (Instantiate), then before a read whenever `reseed_bytes`
(default 1 MiB) have been served or `reseed_seconds` (default 30 s) have passed since the
last reseed, and at once when a required source recovers (it serves again only from a
state that holds its new bytes). Every reseed brings 512 bits from getrandom plus 512
assumed bits from each healthy hardware source, against a security strength of 256.
SP 800-90A Rev. 1, 10.1 Table 2, allows HMAC_DRBG a reseed_interval of 2^48 requests of
up to 2^19 bits (2^16 bytes) each, about 2^64 bytes between reseeds; ours is 2^20 bytes,
i.e. 256 Generate calls of 4 KiB: 2^40 times fewer requests, 2^44 times fewer bytes.
The SP's limit is where the construction's security argument stops; ours is set by what
a reseed costs and what it buys. It costs six HMACs, 64 bytes of getrandom and
at most one discarded 4 KiB block: at the core's full rate (some 15 MB/s, 1 MiB every
~70 ms) that is well under 1% of the work, and each TRNG is asked for one 64-byte chunk
(512 bytes with its APT window) per reseed, a few KB/s, far below what a USB TRNG
yields. What it buys: a state read out of memory predicts at most 1 MiB or 30 s of
output before fresh entropy locks the reader out again, and a source's health verdict
reaches the output within 30 s; for virtio-rng guests, which pull a few KB at boot, the
seconds bound is the one that matters.

Required sources (`require`): `serving` is False while any of them is unhealthy or has
not contributed to the DRBG since it (re)passed its start-up test; `read()` then waits
(for virtio-rng the safe failure) and returns None on timeout.

This module logs names, counts and error sentences only, never a byte of output or of
a source; `status()` is JSON-able and holds no output.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..health import HealthMonitor
from ..shared.errors import SeedtoolError, SourceError
from ..shared.mix import mix
from ..sources import make_source, parse_source_spec
from ..sources.base import Source
from .drbg import MIN_NONCE_BYTES, OUTLEN, HmacDrbg, OutputBuffer

MAX_READ = 4096
DEFAULT_RESEED_BYTES = 1 << 20
DEFAULT_RESEED_SECONDS = 30.0
#: assumed min-entropy each hardware source brings to a reseed, bits
CHUNK_ENTROPY_BITS = 512
RETRY_MIN_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0
#: how long stop() waits for a source thread stuck in a device read
STOP_JOIN_SECONDS = 5.0
PERSONALIZATION = b"seedtool serve v1"

LogFn = Callable[[str, Mapping[str, object]], None]


def stderr_log(event: str, fields: Mapping[str, object]) -> None:
    """The default log: one line per event on stderr."""
    words = " ".join(f"{k}={v}" for k, v in fields.items())
    print(f"seedtool serve: {event} {words}".rstrip(), file=sys.stderr, flush=True)


@dataclass(eq=False)
class _Slot:
    """One hardware source and its health state; guarded by the core's lock."""

    name: str
    options: dict[str, str]
    required: bool
    chunk: int
    source: Source | None = None
    monitor: HealthMonitor | None = None
    healthy: bool = False
    fresh: bool = False  # contributed to the DRBG since it last became healthy
    failures: int = 0
    bytes: int = 0
    last_error: str = ""
    pending: bytearray | None = None
    reopen: bool = False
    retry: float = RETRY_MIN_SECONDS  # the back-off after the next failure
    wait: float = 0.0  # the back-off before the next attempt
    thread: threading.Thread | None = field(default=None, repr=False)

    def drop_pending(self) -> None:
        if self.pending is not None:
            self.pending[:] = bytes(len(self.pending))
            self.pending = None


class EntropyCore:
    """Thread-safe: any number of listener threads may call `read()` at once."""

    def __init__(
        self,
        specs: Sequence[str],
        require: Sequence[str] = (),
        *,
        reseed_bytes: int = DEFAULT_RESEED_BYTES,
        reseed_seconds: float = DEFAULT_RESEED_SECONDS,
        log: LogFn | None = None,
        retry_min: float = RETRY_MIN_SECONDS,
        retry_max: float = RETRY_MAX_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < reseed_bytes:
            raise ValueError("reseed_bytes must be positive")
        if not (math.isfinite(reseed_seconds) and reseed_seconds > 0):
            raise ValueError("reseed_seconds must be a positive number")
        self.reseed_bytes = reseed_bytes
        self.reseed_seconds = reseed_seconds
        self.retry_min, self.retry_max = retry_min, retry_max
        self._clock = clock  # for the reseed_seconds schedule only (tests pass their own)
        self._log = log or stderr_log
        parsed = [parse_source_spec(s) for s in specs]
        required = set()
        for r in require:  # a name, as generate's --require takes; NAME:options also works
            name, opts = parse_source_spec(r)
            required.add(name)
            if name not in (n for n, _ in parsed):
                parsed.append((name, opts))
        self._os = make_source("os")
        self._os_bytes = 0
        self._slots: list[_Slot] = []
        for name, opts in parsed:
            if name == "os":
                continue  # always mixed, once
            src = make_source(name, **opts)  # refuses bad option values now
            per_sample = src.min_entropy * (8 // src.sample_bits)
            chunk = max(1, math.ceil(CHUNK_ENTROPY_BITS / per_sample))
            self._slots.append(
                _Slot(name, opts, name in required, chunk, source=src, retry=retry_min)
            )
        self._cond = threading.Condition(threading.RLock())
        self._drbg: HmacDrbg | None = None
        self._out: OutputBuffer | None = None
        self._reseeds = 0
        self._since_reseed = 0
        self._last_reseed = 0.0
        self._served = 0
        self._started = False
        self._stopping = False
        self._was_serving = False

    # ---- life cycle
    def start(self) -> None:
        """Open the sources, run their start-up tests, seed the DRBG, start the threads."""
        if self._started:
            return
        avail = self._os.available()
        if not avail.ok:
            raise SourceError(f"the kernel CSPRNG cannot be read: {avail.reason}")
        for slot in self._slots:
            if not self._collect(slot) and slot.required:
                self._close_all()
                raise SourceError(f"the required {slot.last_error}")
        with self._cond:
            self._reseed_locked()
            self._started = True
            self._was_serving = self._serving_locked()
            self._log("started", {
                "sources": ",".join(["os", *(s.name for s in self._slots)]),
                "healthy": ",".join(["os", *(s.name for s in self._slots if s.healthy)]),
                "required": ",".join(s.name for s in self._slots if s.required) or "-",
            })
        for slot in self._slots:
            slot.thread = threading.Thread(
                target=self._run, args=(slot,), name=f"seedtool-serve-{slot.name}", daemon=True
            )
            slot.thread.start()

    def stop(self) -> None:
        """Stop the source threads, close the sources; later reads return None."""
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._cond.notify_all()
        for slot in self._slots:
            if slot.thread is not None:
                slot.thread.join(STOP_JOIN_SECONDS)
        self._close_all()
        with self._cond:
            if self._out is not None:
                self._out.discard()
            self._drbg = self._out = None
        self._log("stopped", {"bytes_served": self._served})

    def reopen(self) -> None:
        """SIGHUP: close and reopen every hardware source, each with a fresh start-up test."""
        with self._cond:
            for slot in self._slots:
                slot.reopen = True
            self._cond.notify_all()
        self._log("reopen", {"sources": len(self._slots)})

    def __enter__(self) -> EntropyCore:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- serving
    @property
    def serving(self) -> bool:
        with self._cond:
            return self._serving_locked()

    def _serving_locked(self) -> bool:
        return (
            self._started
            and not self._stopping
            and self._drbg is not None
            and all(s.healthy and s.fresh for s in self._slots if s.required)
        )

    def read(self, n: int, timeout: float | None = None) -> bytes | None:
        """n bytes from the DRBG; waits while not serving; None on timeout or after stop()."""
        if not 1 <= n <= MAX_READ:
            raise ValueError(f"a read must ask for 1 to {MAX_READ} bytes")
        with self._cond:
            if self._stopping or not self._serving_locked():  # else no waiting to set up
                self._cond.wait_for(lambda: self._stopping or self._serving_locked(), timeout)
            if self._stopping or self._out is None or not self._serving_locked():
                return None
            if (
                self._since_reseed + n > self.reseed_bytes
                or self._clock() - self._last_reseed >= self.reseed_seconds
            ):
                self._reseed_locked()
            out = self._out.read(n)
            self._since_reseed += n
            self._served += n
            return out

    def _reseed_locked(self) -> None:
        """(Re)seed from `os` and every ready health-tested chunk; erase the chunks."""
        os_bytes = self._os.read(OUTLEN)
        self._os_bytes += OUTLEN
        parts = [("os", os_bytes)]
        used = []
        for slot in self._slots:
            if slot.healthy and slot.pending is not None:
                parts.append((slot.name, bytes(slot.pending)))
                slot.drop_pending()
                used.append(slot)
        context = b"reseed" + self._reseeds.to_bytes(8, "big")
        entropy = mix(parts, OUTLEN, context)
        if self._drbg is None:
            nonce = self._os.read(MIN_NONCE_BYTES)
            self._os_bytes += MIN_NONCE_BYTES
            self._drbg = HmacDrbg(entropy, nonce, PERSONALIZATION)
            self._out = OutputBuffer(self._drbg)
        else:
            self._drbg.reseed(entropy)
            assert self._out is not None
            self._out.discard()  # nothing generated before the reseed is served after it
        for slot in used:
            slot.fresh = True
        self._reseeds += 1
        self._since_reseed = 0
        self._last_reseed = self._clock()
        self._cond.notify_all()  # the source threads refill, waiting readers re-check

    def _note_serving(self) -> None:
        now = self._serving_locked()
        if now != self._was_serving and self._started:
            waiting = [s.name for s in self._slots if s.required and not (s.healthy and s.fresh)]
            if now:
                self._log("serving", {})
            else:
                self._log("not-serving", {"waiting_for": ",".join(waiting) or "-"})
        self._was_serving = now

    # ---- the source threads
    def _run(self, slot: _Slot) -> None:
        while True:
            old: Source | None = None
            with self._cond:
                self._cond.wait_for(
                    lambda: self._stopping or slot.reopen or not slot.healthy
                    or slot.pending is None
                )
                if self._stopping:
                    return
                if slot.reopen:
                    slot.reopen = False
                    old = self._down(slot)
                    slot.retry = self.retry_min
                    slot.wait = 0.0
                    reopened = True
                else:
                    reopened = False
                delay = 0.0 if (slot.healthy or reopened) else slot.wait
            if old is not None:
                _close_quietly(old)  # device I/O: never with the lock held
            with self._cond:
                if delay:
                    self._cond.wait_for(lambda: self._stopping or slot.reopen, delay)
                    if self._stopping:
                        return
                    if slot.reopen:
                        continue
            self._collect(slot)

    def _collect(self, slot: _Slot) -> bool:
        """Open the source if needed and read one health-tested chunk into `slot.pending`.

        Runs in the slot's thread (or in start()), without the lock held during I/O.
        """
        src, mon = slot.source, slot.monitor
        try:
            if src is None:
                src = make_source(slot.name, **slot.options)
            if mon is None:
                avail = src.available()
                if not avail.ok:
                    raise SourceError(f"source '{slot.name}' is unavailable: {avail.reason}")
                mon = HealthMonitor(slot.name, src.min_entropy, src.sample_bits, max_failures=0)
            with self._cond:
                slot.source, slot.monitor = src, mon
            data = mon.read(src.read, slot.chunk)
        except SeedtoolError as e:
            self._fail(slot, src, str(e))
            return False
        except Exception as e:  # a driver library's own error: reported by kind only
            why = f"source '{slot.name}' failed ({type(e).__name__}); check the device"
            self._fail(slot, src, why)
            return False
        with self._cond:
            if slot.reopen or self._stopping:
                return True  # read from the handle being replaced: dropped
            slot.drop_pending()
            slot.pending = bytearray(data)
            slot.bytes += slot.chunk
            if not slot.healthy:
                slot.healthy = True
                slot.retry = self.retry_min
                if self._started:
                    self._log("source-healthy", {"source": slot.name, "failures": slot.failures})
            if slot.required and not slot.fresh and self._started and not self._stopping:
                self._reseed_locked()  # serve again only from a state holding its new bytes
            self._note_serving()
        return True

    def _fail(self, slot: _Slot, src: Source | None, reason: str) -> None:
        if not reason.startswith(f"source '{slot.name}'"):
            reason = f"source '{slot.name}': {reason}"
        with self._cond:
            slot.failures += 1
            slot.last_error = reason
            self._down(slot)
            slot.wait = slot.retry
            slot.retry = min(self.retry_max, slot.retry * 2)
            self._log("source-failed", {
                "source": slot.name, "failures": slot.failures,
                "retry_s": round(slot.wait, 3), "error": reason,
            })
            self._note_serving()
        if src is not None:
            _close_quietly(src)

    def _down(self, slot: _Slot) -> Source | None:
        """Take the slot out of service (lock held); the caller closes the source returned."""
        old = slot.source
        slot.healthy = slot.fresh = False
        slot.drop_pending()
        slot.source = slot.monitor = None
        self._note_serving()
        return old

    def _close_all(self) -> None:
        with self._cond:
            slots = [(s, s.source) for s in self._slots]
            for s, _ in slots:
                s.drop_pending()
                s.source = s.monitor = None
                s.healthy = s.fresh = False
        for _, src in slots:
            if src is not None:
                _close_quietly(src)
        _close_quietly(self._os)

    # ---- reporting
    def status(self) -> dict[str, Any]:
        """JSON-able state for `seedtool serve status`; names and counts only."""
        with self._cond:
            sources: list[dict[str, Any]] = [{
                "name": "os", "required": True, "healthy": True, "failures": 0,
                "bytes": self._os_bytes, "last_error": "",
            }]
            for s in self._slots:
                sources.append({
                    "name": s.name, "required": s.required, "healthy": s.healthy,
                    "failures": s.failures, "bytes": s.bytes, "last_error": s.last_error,
                })
            age = self._clock() - self._last_reseed if self._reseeds else None
            return {
                "serving": self._serving_locked(),
                "bytes_served": self._served,
                "sources": sources,
                "drbg": {
                    "construction": "HMAC_DRBG-SHA512",
                    "reseeds": self._reseeds,
                    "bytes_since_reseed": self._since_reseed,
                    "last_reseed_age_s": None if age is None else round(age, 3),
                    "reseed_bytes": self.reseed_bytes,
                    "reseed_seconds": self.reseed_seconds,
                },
            }


def _close_quietly(src: Source) -> None:
    try:
        src.close()
    except Exception:  # noqa: BLE001 - closing a device that went away is not an error
        pass
