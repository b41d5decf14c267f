"""ChaosKey (Altus Metrum, 1d50:60c6), a vendor-class USB TRNG, read with pyusb.

Bulk IN 0x85 carries the firmware's conditioned output; bulk IN 0x86 carries
raw noise: 12-bit ADC samples in 16-bit little-endian words. Linux binds the
`chaoskey` driver (which feeds /dev/hwrng); it is detached while we read and
re-attached on close. This source never logs or reports device output.

Options: `raw=1` reads endpoint 0x86 instead of 0x85 (see `_RAW_*` below).
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..shared.errors import DeviceError
from ._usb import UsbId, UsbLink, UsbSource, bool_option

CHAOSKEY = UsbId(0x1D50, 0x60C6, "ChaosKey")

EP_COOKED = 0x85
EP_RAW = 0x86
INTERFACE = 0

# Raw mode sample handling. Each 16-bit word holds one 12-bit ADC sample. Bytes
# taken straight from the words would alternate between a near-constant high
# byte (only 4 sample bits, which barely move for noise centred in the ADC's
# range) and a noisy low byte, so byte-level health tests would measure the word
# layout rather than the noise. Instead each sample gives one byte: bits 1-8,
# the same reduction the device author's own tool makes (chaosread(1), Debian
# package chaosread 1.1: "--bytes ... one byte per sample from bits 1-8 of the
# sample (zero-based, so shift right by one)"). Unconditioned noise has less than
# full entropy per sample and no SP 800-90B assessment of this device has been
# published, so the assumed min-entropy is a conservative 2 bits per byte sample;
# set `min_entropy=` from your own assessment (e.g. NIST's ea_non_iid on raw
# captures) to tighten these tests
_RAW_MIN_ENTROPY = 2.0


class ChaosKeySource(UsbSource):
    name = "chaoskey"
    description = "ChaosKey (USB avalanche-noise TRNG); raw=1 for unconditioned samples"
    product = "ChaosKey"
    ids: ClassVar[tuple[UsbId, ...]] = (CHAOSKEY,)
    # Cooked output (0x85) is conditioned by the firmware, "trimmed and whitened
    # data which has 8 bits of entropy per byte" (chaosread(1)): H = 8. Raw mode
    # changes both attributes in __init__.
    raw = False
    min_entropy = 8.0
    sample_bits = 8
    known_options = {
        "raw": "1 reads unconditioned noise samples (endpoint 0x86, H = 2 unless min_entropy=)",
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.raw_mode = bool_option(options, "raw")
        if self.raw_mode:
            self.raw = True  # type: ignore[misc]
            if options.get("min_entropy") in (None, ""):  # a given min_entropy= still wins
                self.min_entropy = _RAW_MIN_ENTROPY  # type: ignore[misc]
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
        return sample_bytes(words)


# (sample >> 1) & 0xFF from a little-endian word: low byte >> 1, plus bit 0 of the
# high byte as bit 7; done with bytes.translate so it runs at C speed.
_LOW_SHIFTED = bytes(b >> 1 for b in range(256))
_HIGH_BIT0_TO_7 = bytes((b & 1) << 7 for b in range(256))


def sample_bytes(words: bytes) -> bytes:
    """One byte per 16-bit LE sample: bits 1-8 of the sample."""
    n = len(words) // 2
    low = words[0 : 2 * n : 2].translate(_LOW_SHIFTED)
    high = words[1 : 2 * n : 2].translate(_HIGH_BIT0_TO_7)
    return (int.from_bytes(low, "big") | int.from_bytes(high, "big")).to_bytes(n, "big")
