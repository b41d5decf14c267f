"""ChaosKey (Altus Metrum, 1d50:60c6), a vendor-class USB TRNG, read with pyusb.

Bulk IN 0x85 carries the firmware's conditioned output; bulk IN 0x86 carries
raw noise: 12-bit ADC samples in 16-bit little-endian words. Linux binds the
`chaoskey` driver (which feeds /dev/hwrng); it is detached while we read and
re-attached on close. This source never logs or reports device output.

Options: `raw=1` reads endpoint 0x86 instead of 0x85 (see `_RAW_*` below).
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..errors import DeviceError
from ._usb import UsbId, UsbLink, UsbSource, bool_option

CHAOSKEY = UsbId(0x1D50, 0x60C6, "ChaosKey")

EP_COOKED = 0x85
EP_RAW = 0x86
INTERFACE = 0

# Raw mode sample handling. Each 16-bit word holds one 12-bit sample. For noise
# centred in the ADC's range the top 4 bits of a sample barely move, so bytes
# taken straight from the words would alternate between a near-constant high
# byte and a noisy low byte: byte-level health tests would then measure the
# word layout, not the noise. So raw mode keeps the low 8 bits of each sample as
# one byte sample (two device bytes per output byte) and health-tests those.
# Unconditioned noise has less than full entropy per sample and nobody has
# published an SP 800-90B assessment of this device, so the assumed min-entropy
# is a conservative 2 bits per byte sample; set `min_entropy=` from your own
# assessment (e.g. NIST's ea_non_iid on raw captures) to tighten the tests.
_RAW_MIN_ENTROPY = 2.0


class ChaosKeySource(UsbSource):
    name = "chaoskey"
    description = "ChaosKey (USB avalanche-noise TRNG); raw=1 for unconditioned samples"
    product = "ChaosKey"
    ids: ClassVar[tuple[UsbId, ...]] = (CHAOSKEY,)
    # Cooked output (0x85) is conditioned by the firmware: H = 8 is the
    # health-test setting a conditioned byte stream must pass, not an entropy
    # claim. Raw mode changes both attributes in __init__.
    raw = False
    min_entropy = 8.0
    sample_bits = 8

    def __init__(self, **options: Any) -> None:
        self.raw_mode = bool_option(options, "raw")
        if self.raw_mode:
            self.raw = True  # type: ignore[misc]
            self.min_entropy = _RAW_MIN_ENTROPY  # type: ignore[misc]
        super().__init__(**options)  # a given min_entropy= still wins
        self._ep = EP_RAW if self.raw_mode else EP_COOKED
        self._packet = 64

    def _start(self, link: UsbLink) -> None:
        config = link.configure(1)
        intf = link.usb.util.find_descriptor(config, bInterfaceNumber=INTERFACE)
        ep = None if intf is None else link.usb.util.find_descriptor(
            intf, bEndpointAddress=self._ep
        )
        if ep is None:
            raise DeviceError(
                f"{link.label} has no bulk endpoint {self._ep:#04x}; update its firmware"
            )
        self._packet = int(ep.wMaxPacketSize) or 64
        link.detach_kernel_drivers([INTERFACE])
        link.claim(INTERFACE)

    def _read(self, link: UsbLink, n: int) -> bytes:
        if not self.raw_mode:
            return link.read_exact(self._ep, n, self._packet, self.timeout_ms)
        words = link.read_exact(self._ep, 2 * n, self._packet, self.timeout_ms)
        return words[0::2]  # low byte of each little-endian word
