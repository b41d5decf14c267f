"""OneRNG (Moonbase Otago, 1d50:6086) over USB CDC, driven with pyusb.

The OneRNG boots paused. It takes four-byte ASCII commands on its data
interface's bulk OUT endpoint: `cmd0` selects the default noise mode (avalanche
diode, firmware whitening on), `cmdO` starts the stream, `cmdo` pauses it. The
first output after starting can be stale, so the first 10 KB are read and
thrown away. (Commands, endpoints and the discard: the vendor's documentation
and start-up script, as recorded in the project's device notes.) This source never logs
or reports device output.
"""

from __future__ import annotations

from typing import ClassVar

from ._usb import CdcSource, UsbId, UsbLink

ONERNG = UsbId(0x1D50, 0x6086, "OneRNG")

CMD_MODE_DEFAULT = b"cmd0"  # avalanche noise, whitened
CMD_RUN = b"cmdO"
CMD_PAUSE = b"cmdo"
#: stale output dropped after every start
DISCARD_BYTES = 10 * 1024


class OneRngSource(CdcSource):
    name = "onerng"
    description = "OneRNG (USB avalanche-noise TRNG, whitened mode)"
    product = "OneRNG"
    ids: ClassVar[tuple[UsbId, ...]] = (ONERNG,)
    # Mode 0 is whitened by the firmware: conditioned output, not raw noise. As
    # for the TrueRNG, that conditioning is not an SP 800-90B vetted one, so H = 8
    # is the health-test setting for conditioned bytes, not an entropy claim.
    raw = False
    min_entropy = 8.0
    sample_bits = 8

    def _start(self, link: UsbLink) -> None:
        cdc = self._open_cdc(link)
        cdc.set_control_line_state(True, True)  # what opening the tty does
        cdc.write(CMD_MODE_DEFAULT)
        cdc.write(CMD_RUN)
        cdc.discard(DISCARD_BYTES, self.timeout_ms)

    def _stop(self, link: UsbLink) -> None:
        cdc = self.cdc
        try:
            if cdc is not None:
                cdc.write(CMD_PAUSE)
        finally:
            super()._stop(link)
