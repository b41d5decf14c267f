"""Reading a fuzz input as a script: small integers and byte strings, never an error.

Targets that drive a conversation (a fake socket, a simulated device) take their
decisions from the input through a `Script`. When the input runs out every read
returns zeros or empty bytes, so any input is a complete script. A `Clock` stands in
for `time.monotonic` and `time.sleep` in the module under test, so a timeout or a
back-off costs no real time.
"""

from __future__ import annotations


class Script:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def u8(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self) -> int:
        return self.u8() | (self.u8() << 8)

    def u32(self) -> int:
        return self.u16() | (self.u16() << 16)

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + max(n, 0)]
        self.pos += len(out)
        return out

    def rest(self) -> bytes:
        return self.take(self.remaining)


class Clock:
    """time.monotonic and time.sleep for a module under test: sleeping advances the clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
