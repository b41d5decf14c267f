"""TrueRNG, TrueRNGpro and TrueRNGproV2 (ubld.it) over USB CDC, driven with pyusb.

All three are USB serial devices that stream random bytes while DTR is raised.
The Pro models keep several output modes; the mode is chosen by opening the port
at 110, 300, 110 baud and then at the mode's baud (300 = normal, whitened output).
This source always selects normal mode on a Pro, so it reads the same kind of
output from every model. (Mode sequence and ids: the vendor's documentation,
as recorded in the project's device notes.) It never logs or reports device output.
"""

from __future__ import annotations

from typing import ClassVar

from ._usb import CdcSource, UsbId, UsbLink

TRUERNG = UsbId(0x04D8, 0xF5FE, "TrueRNG")  # v1, v2 and v3 share this id
TRUERNG_PRO = UsbId(0x16D0, 0x0AA0, "TrueRNGpro")
TRUERNG_PRO_V2 = UsbId(0x04D8, 0xEBB5, "TrueRNGproV2")

#: the "knock" that puts a Pro into mode-select, then the baud that picks the mode
MODE_KNOCK = (110, 300, 110)
NORMAL_MODE_BAUD = 300


class TrueRngSource(CdcSource):
    name = "truerng"
    description = "TrueRNG v1-v3, TrueRNGpro, TrueRNGproV2 (USB avalanche-noise TRNG)"
    product = "TrueRNG"
    ids: ClassVar[tuple[UsbId, ...]] = (TRUERNG, TRUERNG_PRO, TRUERNG_PRO_V2)
    # Every model's default output is whitened by its firmware, so it is
    # conditioned, not raw noise. The firmware conditioning is not an SP 800-90B
    # vetted one, so H here is not an entropy claim: it sets the health-test
    # cutoffs to what a conditioned stream must pass (full-entropy looking
    # bytes), which catches a stuck or disconnected noise source fastest.
    raw = False
    min_entropy = 8.0
    sample_bits = 8

    def _start(self, link: UsbLink) -> None:
        cdc = self._open_cdc(link)
        if self.model in (TRUERNG_PRO, TRUERNG_PRO_V2):
            # What opening and closing the tty at each speed does on the wire:
            # cdc_acm sends the line coding and raises DTR on open, drops it on close.
            for baud in MODE_KNOCK:
                cdc.set_line_coding(baud)
                cdc.set_control_line_state(True, True)
                cdc.set_control_line_state(False, False)
            cdc.set_line_coding(NORMAL_MODE_BAUD)
        cdc.set_control_line_state(True, True)
