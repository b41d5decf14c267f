"""Fake TrueRNG, TrueRNGpro, OneRNG and ChaosKey devices for the fake pyusb backend.

Each fake produces a deterministic keyed stream (`ByteStream`), so a test can
predict exactly which bytes the host must return and where they come from
(e.g. that the OneRNG's first 10 KB were thrown away). Pass `stream=Stuck(0)`
for a broken device that repeats one byte.

Protocol facts modelled here (the project's shared device notes; ChaosKey also
chaosread(1) from Debian's chaosread 1.1 package): TrueRNGs stream over CDC
while DTR is on; TrueRNGpro models choose a mode by the line-coding sequence
110, 300, 110 baud then the mode's baud (300 normal, 19200 raw binary); OneRNG
boots paused and needs `cmd0`/`cmdO`, with `cmdo` pausing; ChaosKey is a vendor
device with cooked bulk IN 0x85 and raw bulk IN 0x86 (12-bit samples in 16-bit
little-endian words) and a kernel driver named `chaoskey`.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

from . import BULK, Config, Endpoint, FakeDevice, Interface
from .cdc import CdcAcmDevice


class Stream(Protocol):
    def take(self, n: int) -> bytes: ...


class ByteStream:
    """SHA-256 in counter mode over a key: a reproducible, random-looking stream."""

    def __init__(self, key: bytes = b"fakeusb") -> None:
        self.key = key
        self.position = 0

    @staticmethod
    def expected(key: bytes, offset: int, n: int) -> bytes:
        """The n bytes at `offset` of the stream with this key."""
        first, last = offset // 32, (offset + n + 31) // 32
        blob = b"".join(
            hashlib.sha256(key + i.to_bytes(8, "big")).digest() for i in range(first, last)
        )
        start = offset - first * 32
        return blob[start : start + n]

    def take(self, n: int) -> bytes:
        out = self.expected(self.key, self.position, n)
        self.position += n
        return out


class Stuck:
    """A failed noise source: the same byte for ever."""

    def __init__(self, value: int = 0) -> None:
        self.value = value
        self.position = 0

    def take(self, n: int) -> bytes:
        self.position += n
        return bytes([self.value]) * n


# --------------------------------------------------------------------------- TrueRNG


class TrueRNG(CdcAcmDevice):
    """TrueRNG v1-v3 (04d8:f5fe): streams conditioned bytes while DTR is on."""

    VID, PID = 0x04D8, 0xF5FE
    PRODUCT = "TrueRNG"

    def __init__(self, stream: Stream | None = None, serial: str | None = None, **kw: Any) -> None:
        super().__init__(
            self.VID,
            self.PID,
            manufacturer="ubld.it",
            product=self.PRODUCT,
            serial=serial,
            **kw,
        )
        self.stream: Stream = stream if stream is not None else ByteStream(b"truerng")

    def cdc_in(self, size: int) -> bytes:
        return self.stream.take(size)


class TrueRNGPro(TrueRNG):
    """TrueRNGpro (16d0:0aa0): mode chosen by line coding 110, 300, 110, then the mode's baud."""

    VID, PID = 0x16D0, 0x0AA0
    PRODUCT = "TrueRNGpro"
    MODES = {300: "normal", 19200: "raw_binary"}

    def __init__(self, stream: Stream | None = None, **kw: Any) -> None:
        super().__init__(stream, **kw)
        self.mode = "normal"  # power-on mode
        self.mode_changes: list[str] = []
        self.raw_stream: Stream = ByteStream(b"truerngpro-raw")

    def on_line_coding(self, baud: int) -> None:
        if self.baud_history[-4:-1] == [110, 300, 110] and baud in self.MODES:
            self.mode = self.MODES[baud]
            self.mode_changes.append(self.mode)

    def cdc_in(self, size: int) -> bytes:
        if self.mode == "raw_binary":
            return self.raw_stream.take(size)
        return self.stream.take(size)


class TrueRNGProV2(TrueRNGPro):
    """TrueRNGproV2 (04d8:ebb5)."""

    VID, PID = 0x04D8, 0xEBB5
    PRODUCT = "TrueRNGproV2"


# --------------------------------------------------------------------------- OneRNG


class OneRNG(CdcAcmDevice):
    """OneRNG (1d50:6086): data interface 1, bulk 0x85 in / 0x05 out; boots paused.

    Commands are the four-byte strings `cmd0`..`cmd7` (noise mode), `cmdO` (run),
    `cmdo` (pause), `cmdw` (flush), `cmdv` (version); line endings are ignored.
    When first started it sends `stale` bytes (default 10 KB of zeros, which a
    host must discard: they would fail any health test) before `stream`.
    """

    VID, PID = 0x1D50, 0x6086

    def __init__(
        self,
        stream: Stream | None = None,
        serial: str | None = None,
        stale: bytes = bytes(10240),
        **kw: Any,
    ) -> None:
        super().__init__(
            self.VID,
            self.PID,
            notify_ep=0x83,
            in_ep=0x85,
            out_ep=0x05,
            needs_dtr=False,
            manufacturer="Moonbase Otago",
            product="OneRNG entropy device",
            serial=serial,
            **kw,
        )
        self.stream: Stream = stream if stream is not None else ByteStream(b"onerng")
        self.stale = stale
        self.commands: list[str] = []
        self.noise_mode: int | None = None
        self.running = False
        self._inbox = b""

    def cdc_out(self, data: bytes) -> None:
        self._inbox += data
        while True:
            at = self._inbox.find(b"cmd")
            if at < 0 or len(self._inbox) < at + 4:
                self._inbox = self._inbox[at:] if at >= 0 else b""
                return
            cmd = self._inbox[at : at + 4].decode("ascii", "replace")
            self._inbox = self._inbox[at + 4 :]
            self.commands.append(cmd)
            c = cmd[3]
            if c in "01234567":
                self.noise_mode = int(c)
            elif c == "O":
                self.running = True
            elif c == "o":
                self.running = False

    def cdc_in(self, size: int) -> bytes:
        if not self.running:
            return b""
        if self.stale:
            out, self.stale = self.stale[:size], self.stale[size:]
            return out
        return self.stream.take(size)


# --------------------------------------------------------------------------- ChaosKey


class ChaosKey(FakeDevice):
    """ChaosKey (1d50:60c6): vendor interface 0, bulk IN 0x85 cooked, 0x86 raw."""

    VID, PID = 0x1D50, 0x60C6

    def __init__(
        self,
        stream: Stream | None = None,
        raw_stream: Stream | None = None,
        serial: str | None = "0000123",
        kernel_drivers: dict[int, str] | None = None,
        **kw: Any,
    ) -> None:
        config = Config(
            1,
            [
                Interface(
                    0,
                    cls=0xFF,
                    endpoints=[Endpoint(0x85, BULK, 64), Endpoint(0x86, BULK, 64)],
                )
            ],
        )
        super().__init__(
            self.VID,
            self.PID,
            [config],
            manufacturer="altusmetrum.org",
            product="ChaosKey-hw-1.0-sw-1.9.1",
            serial=serial,
            kernel_drivers={0: "chaoskey"} if kernel_drivers is None else kernel_drivers,
            **kw,
        )
        self.stream: Stream = stream if stream is not None else ByteStream(b"chaoskey")
        self.raw_stream: Stream = raw_stream if raw_stream is not None else ByteStream(b"ck-raw")

    @staticmethod
    def raw_words(data: bytes) -> bytes:
        """Turn pairs of stream bytes into 12-bit samples in 16-bit LE words."""
        out = bytearray()
        for i in range(0, len(data) - 1, 2):
            out += (int.from_bytes(data[i : i + 2], "little") & 0x0FFF).to_bytes(2, "little")
        return bytes(out)

    def bulk_in(self, ep: int, size: int) -> bytes:
        if ep == 0x85:
            return self.stream.take(size)
        if ep == 0x86:
            return self.raw_words(self.raw_stream.take(size - size % 2))
        return b""


#: short names for `devtools.fakeusb.env`
DEVICES: dict[str, type[FakeDevice]] = {
    "truerng": TrueRNG,
    "truerngpro": TrueRNGPro,
    "truerngprov2": TrueRNGProV2,
    "onerng": OneRNG,
    "chaoskey": ChaosKey,
}
