"""A fake Simtec Entropy Key (20df:0001) for the fake pyusb backend.

The device side of the protocol is `devtools.ekey_sim.EntropyKeySim`; this class only
puts it behind USB the way the real key presents itself: a CDC ACM device whose
data interface 1 has bulk IN 0x81 and bulk OUT 0x03 (ekeyd's ekey-ulusbd.c:
EKEY_IFACE 1, EP_TOHOST 1, EP_TODEVICE 3; the interrupt endpoint number of the
comm interface is not documented there, 0x82 is a stand-in), the 16-character
serial as its USB serial string (README.protocol: "identical to the serial number
which can be retrieved from the USB device descriptor"), and frames flowing
without DTR (ekey-ulusbd sends no CDC requests).

Without arguments (as `FAKEUSB_DEVICES=devtools.fakeusb.entropykey:EntropyKeyUsb`
builds it) the serial and long-term key are fixed test values, so a subprocess
test can write the matching keyring with `keyring_line()`.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from devtools.ekey_sim import EntropyKeySim

from .cdc import CdcAcmDevice

VID, PID = 0x20DF, 0x0001
DEFAULT_SERIAL = base64.b64decode("TestEKeyFake0001")


def fake_long_term_key(serial: bytes) -> bytes:
    """The long-term key a default fake uses (test-only, derived from the serial)."""
    return hashlib.sha256(b"seedtool fake entropy key\0" + serial).digest()


class EntropyKeyUsb(CdcAcmDevice):
    """An Entropy Key on USB; `sim` is the protocol state machine behind it."""

    def __init__(
        self,
        sim: EntropyKeySim | None = None,
        serial: str | None = None,
        long_term_key: bytes | None = None,
        **kw: Any,
    ) -> None:
        if sim is None:
            raw_serial = base64.b64decode(serial) if serial else DEFAULT_SERIAL
            key = long_term_key or fake_long_term_key(raw_serial)
            sim = EntropyKeySim(raw_serial, key)
        self.sim = sim
        super().__init__(
            VID,
            PID,
            comm=0,
            data=1,
            notify_ep=0x82,
            in_ep=0x81,
            out_ep=0x03,
            needs_dtr=False,
            manufacturer="Simtec Electronics",
            product="Entropy Key",
            serial=base64.b64encode(sim.serial).decode("ascii"),
            **kw,
        )
        self._out = b""
        #: optional hook to alter each frame on its way to the host (tamper tests)
        self.tamper: Any = None

    def keyring_line(self) -> bytes:
        return (
            base64.b64encode(self.sim.serial)
            + b" "
            + base64.b64encode(self.sim.long_term_key)
            + b"\n"
        )

    def cdc_out(self, data: bytes) -> None:
        self.sim.host_write(data)

    def cdc_in(self, size: int) -> bytes:
        while len(self._out) < size:
            frame = self.sim.next_frame()
            if self.tamper is not None:
                frame = self.tamper(frame)
            self._out += frame
        out, self._out = self._out[:size], self._out[size:]
        return out
