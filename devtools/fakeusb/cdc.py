"""A CDC ACM (USB serial) fake device base: comm + data interface, line coding, DTR.

Requests follow the USB CDC PSTN subclass specification (class requests sent to
the comm interface): SET_LINE_CODING 0x20 (7 bytes: dwDTERate LE32, bCharFormat,
bParityType, bDataBits), GET_LINE_CODING 0x21, SET_CONTROL_LINE_STATE 0x22
(wValue bit 0 = DTR, bit 1 = RTS), SEND_BREAK 0x23.

Subclass and override `cdc_in(size)` (bytes for the host's bulk IN; b"" when
nothing is ready), `cdc_out(data)` (bytes the host sent), and optionally
`on_line_coding(baud)` / `on_control_line_state(dtr, rts)`. With `needs_dtr`
set (the default) the device sends nothing until the host raises DTR, which is
how TrueRNG-style devices behave.

Observations: `dtr`, `rts`, `baud` (current), `baud_history` (every
SET_LINE_CODING baud in order), `dtr_history`.
"""

from __future__ import annotations

import struct
from typing import Any

from . import BULK, INTERRUPT, Config, Endpoint, FakeDevice, Interface, Setup, Stall

SET_LINE_CODING = 0x20
GET_LINE_CODING = 0x21
SET_CONTROL_LINE_STATE = 0x22
SEND_BREAK = 0x23


def cdc_functional_descriptors(comm: int, data: int) -> bytes:
    """Header, call management, ACM and union functional descriptors (CDC 1.1)."""
    return (
        bytes([0x05, 0x24, 0x00, 0x10, 0x01])  # header, bcdCDC 1.10
        + bytes([0x05, 0x24, 0x01, 0x00, data])  # call management
        + bytes([0x04, 0x24, 0x02, 0x02])  # ACM: line coding + control line state
        + bytes([0x05, 0x24, 0x06, comm, data])  # union: master comm, slave data
    )


class CdcAcmDevice(FakeDevice):
    """A CDC ACM device: interface `comm` (class 2) and `data` (class 0x0A)."""

    def __init__(
        self,
        vid: int,
        pid: int,
        *,
        comm: int = 0,
        data: int = 1,
        notify_ep: int = 0x81,
        in_ep: int = 0x82,
        out_ep: int = 0x02,
        packet: int = 64,
        needs_dtr: bool = True,
        kernel_drivers: dict[int, str] | None = None,
        **kw: Any,
    ) -> None:
        self.comm, self.data = comm, data
        self.in_ep, self.out_ep, self.notify_ep = in_ep, out_ep, notify_ep
        config = Config(
            1,
            [
                Interface(
                    comm,
                    cls=0x02,
                    subclass=0x02,
                    protocol=0x01,
                    endpoints=[Endpoint(notify_ep, INTERRUPT, 8, interval=2)],
                    extra=cdc_functional_descriptors(comm, data),
                ),
                Interface(
                    data,
                    cls=0x0A,
                    endpoints=[Endpoint(out_ep, BULK, packet), Endpoint(in_ep, BULK, packet)],
                ),
            ],
        )
        if kernel_drivers is None:
            kernel_drivers = {comm: "cdc_acm", data: "cdc_acm"}
        super().__init__(
            vid, pid, [config], device_class=0x02, kernel_drivers=kernel_drivers, **kw
        )
        self.needs_dtr = needs_dtr
        self.dtr = False
        self.rts = False
        self.baud = 9600
        self.line = (0, 0, 8)  # stop bits code, parity, data bits
        self.baud_history: list[int] = []
        self.dtr_history: list[bool] = []

    # ---- hooks for subclasses
    def cdc_in(self, size: int) -> bytes:
        return b""

    def cdc_out(self, data: bytes) -> None:
        pass

    def on_line_coding(self, baud: int) -> None:
        pass

    def on_control_line_state(self, dtr: bool, rts: bool) -> None:
        pass

    # ---- FakeDevice hooks
    def control(self, setup: Setup, data: bytes) -> bytes | None:
        if setup.type != "class" or (setup.wIndex & 0xFF) != self.comm:
            raise Stall()
        if setup.bRequest == SET_LINE_CODING and not setup.is_in:
            if len(data) != 7:
                raise Stall()
            baud, stop, parity, bits = struct.unpack("<IBBB", data)
            self.baud, self.line = baud, (stop, parity, bits)
            self.baud_history.append(baud)
            self.on_line_coding(baud)
            return None
        if setup.bRequest == GET_LINE_CODING and setup.is_in:
            return struct.pack("<IBBB", self.baud, *self.line)
        if setup.bRequest == SET_CONTROL_LINE_STATE and not setup.is_in:
            self.dtr, self.rts = bool(setup.wValue & 1), bool(setup.wValue & 2)
            self.dtr_history.append(self.dtr)
            self.on_control_line_state(self.dtr, self.rts)
            return None
        if setup.bRequest == SEND_BREAK and not setup.is_in:
            return None
        raise Stall()

    def bulk_in(self, ep: int, size: int) -> bytes:
        if ep != self.in_ep or (self.needs_dtr and not self.dtr):
            return b""
        return self.cdc_in(size)

    def bulk_out(self, ep: int, data: bytes) -> None:
        if ep == self.out_ep:
            self.cdc_out(data)
