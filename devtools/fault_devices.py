"""Fake devices that fail in the middle of a stream, for tests/test_faults.py.

`DriftingChaosKey` is the fake pyusb ChaosKey of `devtools.fakeusb` whose noise source
drifts: it streams good (keyed SHA-256) bytes, then, from byte `good` on, every
other sample is 0x00 and the rest stay random. There is never a run of two equal
samples, so the Repetition Count Test cannot see the drift; only the Adaptive
Proportion Test can (half of each 512-sample window is one value, against a cutoff
of 13 at H = 8). Usable from a subprocess through `devtools.fakeusb.env`:

    SEEDTOOL_USB_BACKEND=devtools.fakeusb.env:backend
    FAKEUSB_DEVICES=devtools.fault_devices:DriftingChaosKey
    FAULT_DRIFT_AFTER=1024      (default: right after the 1024-sample start-up test)
"""

from __future__ import annotations

import os
from typing import Any

from devtools.fakeusb.devices import ByteStream, ChaosKey

STARTUP = 1024


class DriftingStream:
    """Good bytes up to `good`, then 0x00 at every even position from there on."""

    def __init__(self, good: int, key: bytes = b"drift") -> None:
        self.good = good
        self.key = key
        self.position = 0

    def byte_at(self, pos: int, fresh: int) -> int:
        if pos < self.good:
            return fresh
        if (pos - self.good) % 2 == 0:
            return 0
        return fresh or 1  # never 0 between the zeros: no two equal neighbours

    def take(self, n: int) -> bytes:
        fresh = ByteStream.expected(self.key, self.position, n)
        out = bytes(self.byte_at(self.position + i, fresh[i]) for i in range(n))
        self.position += n
        return out

    @staticmethod
    def is_drifted(data: bytes) -> bool:
        """True when data (from the drift on) has the drift's signature: zeros at even offsets."""
        return len(data) >= 2 and all(b == 0 for b in data[0::2])


class DriftingChaosKey(ChaosKey):
    def __init__(self, **kw: Any) -> None:
        good = int(os.environ.get("FAULT_DRIFT_AFTER", str(STARTUP)), 0)
        kw.setdefault("stream", DriftingStream(good))
        super().__init__(**kw)
