"""The Linux hardware RNG character device, `/dev/hwrng`.

The kernel's hw_random core exposes whichever RNG driver is current (virtio-rng,
a TPM, a CPU or SoC block) as one read-only character device, and describes it in
`/sys/class/misc/hw_random/` (`rng_current`, `rng_available`, `rng_quality`;
drivers/char/hw_random/core.c, Documentation/admin-guide/hw_random.rst).

Choices made here:

* `raw = False`: what the device returns is whatever the driver hands the core,
  and for the common drivers that is already conditioned (virtio-rng forwards the
  host's RNG, TPMs return DRBG output). The kernel gives no way to tell.
* `min_entropy`: unless the user sets `min_entropy=`, H is taken from the kernel's
  own rating, `rng_quality`, which counts bits of entropy per 1024 bits read
  (include/linux/hw_random.h; 1..1024), so H = 8 * quality / 1024 bits per byte.
  A quality of 0 means the kernel credits nothing from the device; the source then
  reports itself unavailable rather than guess, and `min_entropy=` overrides that.
  Without sysfs (or for a `device=` other than /dev/hwrng) H stays at 8.
* Reads are non-blocking in modest chunks with one overall deadline per `read()`:
  the device is slow (about 10 KB/s for virtio-rng) and has no poll method, and a
  blocking 4 KB read can stall for seconds (measured on the project's build hosts).

The device's output is never logged or put into an exception message.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

from ..shared.errors import DeviceError
from .base import Availability, Source, positive_number

DEFAULT_DEVICE = "/dev/hwrng"
DEFAULT_SYSFS = "/sys/class/misc/hw_random"
#: bytes asked for per read(2); the core copies at most its buffer per call anyway
CHUNK = 256
#: the deadline of one `read(n)` is BASE_TIMEOUT + n / MIN_RATE seconds unless timeout= is set
BASE_TIMEOUT = 10.0
MIN_RATE = 1000.0
#: back-off between EAGAIN retries (the device has no poll method to wait on)
BACKOFF_FIRST, BACKOFF_MAX = 0.002, 0.05

UDEV_HINT = (
    "run as root, or let a group read it with a udev rule such as "
    "'KERNEL==\"hw_random\", GROUP=\"seedtool\", MODE=\"0440\"' "
    "(e.g. /etc/udev/rules.d/60-seedtool-hwrng.rules) and add your user to that group"
)


def _read_attr(sysfs: Path, name: str) -> str | None:
    try:
        return (sysfs / name).read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def quality_to_h(quality: int) -> float:
    """Bits of min-entropy per byte from the kernel's bits-per-1024-bits rating."""
    return 8.0 * quality / 1024.0


class HwrngSource(Source):
    name = "hwrng"
    description = "Linux hardware RNG device /dev/hwrng (virtio-rng, TPM, CPU or SoC RNG driver)"
    min_entropy = 8.0
    raw = False
    known_options = {
        "device": f"the hardware RNG character device (default {DEFAULT_DEVICE})",
        "sysfs": f"the hw_random sysfs directory (default {DEFAULT_SYSFS} for {DEFAULT_DEVICE})",
        "timeout": f"seconds one read may take "
        f"(default {BASE_TIMEOUT:g} + 1 s per {MIN_RATE:g} bytes)",
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.device = str(options.get("device") or DEFAULT_DEVICE)
        sysfs = options.get("sysfs")
        # sysfs describes the kernel's /dev/hwrng only; a different device= has no sysfs
        # unless the caller names one explicitly.
        self.sysfs: Path | None = None
        if sysfs:
            self.sysfs = Path(str(sysfs))
        elif self.device == DEFAULT_DEVICE:
            self.sysfs = Path(DEFAULT_SYSFS)
        self.timeout = positive_number(self.name, options, "timeout", None, "seconds")
        self._explicit_h = options.get("min_entropy") not in (None, "")
        self.quality: int | None = None
        attrs = self._sysfs_attrs()
        q = attrs.get("rng_quality")
        if q is not None and q.isdigit():
            self.quality = int(q)
            if not self._explicit_h and 0 < self.quality <= 1024:
                self.min_entropy = quality_to_h(self.quality)  # type: ignore[misc]
        self._fd: int | None = None

    def _sysfs_attrs(self) -> dict[str, str]:
        if self.sysfs is None:
            return {}
        out: dict[str, str] = {}
        for attr in ("rng_current", "rng_available", "rng_quality"):
            value = _read_attr(self.sysfs, attr)
            if value is not None:
                out[attr] = value
        return out

    def available(self) -> Availability:
        detail: dict[str, str] = {"device": self.device, **self._sysfs_attrs()}
        current = detail.get("rng_current")
        if current is not None and current in ("", "none"):
            choices = [a for a in detail.get("rng_available", "").split() if a != "none"]
            hint = (
                f"select one with 'echo {choices[0]} > {self.sysfs}/rng_current'"
                if choices
                else "load a hardware RNG driver (e.g. 'modprobe virtio_rng' in a VM)"
            )
            return Availability.no(
                f"no hardware RNG driver is active (rng_current is 'none'); {hint}", detail
            )
        if self.quality == 0 and not self._explicit_h:
            return Availability.no(
                "the kernel rates the current hardware RNG at rng_quality 0 and credits nothing "
                "from it; set min_entropy= for this source if you trust it anyway",
                detail,
            )
        try:
            fd = self._open()
        except DeviceError as e:
            return Availability.no(str(e), detail)
        if fd != self._fd:
            os.close(fd)
        return Availability.yes(detail)

    def _open(self) -> int:
        if self._fd is not None:
            return self._fd
        try:
            return os.open(self.device, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise self._os_error(e, "open") from None

    def _os_error(self, e: OSError, doing: str) -> DeviceError:
        dev = self.device
        if e.errno == errno.ENOENT:
            return DeviceError(
                f"{dev} does not exist; load a hardware RNG driver "
                "(e.g. 'modprobe virtio_rng' in a VM) or pass device=PATH"
            )
        if e.errno in (errno.EACCES, errno.EPERM):
            return DeviceError(f"permission denied opening {dev}; {UDEV_HINT}")
        if e.errno in (errno.ENODEV, errno.ENXIO):
            return DeviceError(
                f"{dev} has no hardware RNG driver behind it "
                f"({errno.errorcode[e.errno]} on {doing}); "
                f"check {DEFAULT_SYSFS}/rng_current and load or select a driver"
            )
        if e.errno == errno.EBUSY:
            return DeviceError(f"{dev} is busy; stop the other program reading it (e.g. rngd)")
        reason = e.strerror or errno.errorcode.get(e.errno or 0, "error")
        return DeviceError(f"{doing} of {dev} failed ({reason}); check the device and its driver")

    def _deadline(self, n: int) -> float:
        budget = self.timeout if self.timeout is not None else BASE_TIMEOUT + n / MIN_RATE
        return time.monotonic() + budget

    def read(self, n: int) -> bytes:
        if n < 0:
            raise ValueError("n must not be negative")
        if n == 0:
            return b""
        self._fd = self._open()
        out = bytearray()
        deadline = self._deadline(n)
        backoff = BACKOFF_FIRST
        while len(out) < n:
            try:
                chunk = os.read(self._fd, min(CHUNK, n - len(out)))
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    self.close()
                    raise DeviceError(
                        f"{self.device} delivered {len(out)} of {n} bytes before the deadline; "
                        "check that its driver is working, "
                        "or raise timeout=SECONDS for a slow device"
                    ) from None
                time.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            except OSError as e:
                self.close()
                raise self._os_error(e, "read") from None
            if not chunk:
                self.close()
                raise DeviceError(
                    f"{self.device} ended after {len(out)} of {n} bytes (end of file); "
                    "it is not a hardware RNG device, or its driver went away"
                )
            out += chunk
            backoff = BACKOFF_FIRST
        return bytes(out)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
