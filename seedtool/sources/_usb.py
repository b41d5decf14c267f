"""Shared pyusb plumbing for the USB entropy sources (TrueRNG, OneRNG, ChaosKey).

What lives here: importing pyusb lazily (it is the optional `usb` extra),
choosing the pyusb backend, finding a device by VID:PID (and serial, bus,
address), detaching a bound kernel driver (cdc_acm, chaoskey) and re-attaching
it on close, exact-length bulk reads, the CDC ACM requests a USB serial RNG
needs, and turning pyusb errors into a `DeviceError` that says what to do.

This module never logs or puts device output into a message or exception: only
names, VID:PID, bus/address, byte counts and libusb's own error text.
"""

from __future__ import annotations

import errno
import importlib
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar

from ..shared.errors import DeviceError, SourceError, UsageError
from .base import Availability, Source

INSTALL_HINT = "install the usb extra: pip install 'seedtool[usb]'"
PERMISSION_HINT = (
    "add a udev rule (examples/udev/60-seedtool.rules) or add your user to the plugdev group"
)
BUSY_HINT = "another program (rngd, ekeyd) holds it; stop it"
#: `module:callable` returning a pyusb backend object (used by tests to run the CLI
#: against emulated devices); unset means pyusb picks libusb as usual
BACKEND_ENV = "SEEDTOOL_USB_BACKEND"

DEFAULT_TIMEOUT_MS = 2000
#: largest single bulk transfer we ask for; bigger reads loop
MAX_TRANSFER = 16384
#: a device that answers this many transfers in a row with zero bytes has stalled
MAX_EMPTY_TRANSFERS = 8

# USB CDC PSTN subclass class requests (USB CDC 1.2, PSTN 1.2 section 6.3)
CDC_SET_LINE_CODING = 0x20
CDC_SET_CONTROL_LINE_STATE = 0x22
_CLASS_OUT_INTERFACE = 0x21  # host-to-device | class | interface
CDC_COMM_CLASS = 0x02
CDC_DATA_CLASS = 0x0A


# --------------------------------------------------------------------------- pyusb


def import_pyusb() -> ModuleType | None:
    """The `usb` package with `usb.core` and `usb.util` loaded, or None if missing."""
    try:
        usb = importlib.import_module("usb")
        importlib.import_module("usb.core")
        importlib.import_module("usb.util")
    except ImportError:
        return None
    return usb


_env_backends: dict[str, Any] = {}


def backend_from_env() -> Any:
    """The backend named by SEEDTOOL_USB_BACKEND (built once per process), or None."""
    spec = os.environ.get(BACKEND_ENV, "").strip()
    if not spec:
        return None
    if spec not in _env_backends:
        module, _, attr = spec.partition(":")
        if not module or not attr:
            raise UsageError(f"{BACKEND_ENV} must look like 'package.module:callable'")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            raise UsageError(f"{BACKEND_ENV}: cannot import '{spec}'; check the name") from None
        _env_backends[spec] = factory()
    return _env_backends[spec]


# --------------------------------------------------------------------------- options

#: what every USB source takes (`UsbSource.known_options`; the Entropy Key forwards them)
USB_OPTIONS: Mapping[str, str] = {
    "serial": "pick the device with this USB serial number",
    "bus": "pick the device on this USB bus (as lsusb shows it)",
    "address": "pick the device at this USB address (as lsusb shows it)",
    "timeout_ms": f"milliseconds one USB transfer may take (default {DEFAULT_TIMEOUT_MS})",
    "backend": f"a pyusb backend object, from in-process callers only ({BACKEND_ENV} "
    "on the command line)",
}


def _int_option(options: Mapping[str, Any], key: str) -> int | None:
    value = options.get(key)
    if value is None or value == "":
        return None
    try:
        return int(value, 0) if isinstance(value, str) else int(value)
    except ValueError:
        raise UsageError(f"option {key}={value!r} must be a whole number") from None


def bool_option(options: Mapping[str, Any], key: str) -> bool:
    value = options.get(key, False)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise UsageError(f"option {key}={value!r} must be 1 or 0")


@dataclass(frozen=True)
class UsbId:
    """One USB product a source can use."""

    vid: int
    pid: int
    model: str

    def __str__(self) -> str:
        return f"{self.vid:04x}:{self.pid:04x}"


# --------------------------------------------------------------------------- errors


def device_error(err: Exception, label: str, doing: str = "reading") -> DeviceError:
    """Turn a pyusb error into a DeviceError with the fix (no device output in it)."""
    usb = import_pyusb()
    code = getattr(err, "errno", None)
    if code == errno.ETIMEDOUT or (usb is not None and isinstance(err, usb.core.USBTimeoutError)):
        return DeviceError(
            f"{label} sent no data in time while {doing}; unplug and replug it, "
            "and check that no other program is reading it"
        )
    if code in (errno.EACCES, errno.EPERM):
        return DeviceError(f"{label}: permission denied; {PERMISSION_HINT}")
    if code == errno.EBUSY:
        return DeviceError(f"{label} is busy: {BUSY_HINT}")
    if code == errno.ENODEV:
        return DeviceError(f"{label} was unplugged while {doing}; plug it back in and retry")
    text = getattr(err, "strerror", None) or type(err).__name__
    return DeviceError(f"{label}: USB error while {doing} ({text}); unplug and replug the device")


# --------------------------------------------------------------------------- one open device


class UsbLink:
    """An open pyusb device: interfaces we claimed, drivers we detached, buffered reads."""

    def __init__(self, usb: ModuleType, dev: Any, label: str) -> None:
        self.usb = usb
        self.dev = dev
        self.label = label
        self._detached: list[int] = []
        self._pending: dict[int, bytearray] = {}
        self.closed = False

    # ---- set-up
    def detach_kernel_drivers(self, interfaces: Sequence[int]) -> list[int]:
        """Detach a bound kernel driver from each interface; remember it for close()."""
        for intf in interfaces:
            try:
                active = self.dev.is_kernel_driver_active(intf)
            except NotImplementedError:  # not Linux: no kernel drivers to detach
                return []
            except self.usb.core.USBError as e:
                raise device_error(e, self.label, "opening it") from None
            if active:
                try:
                    self.dev.detach_kernel_driver(intf)
                except self.usb.core.USBError as e:
                    raise device_error(e, self.label, "detaching its kernel driver") from None
                self._detached.append(intf)
        return list(self._detached)

    def configure(self, value: int = 1) -> Any:
        """The active configuration; set `value` only if the device is unconfigured.

        Setting a configuration on a configured device resets it and fails with
        EBUSY while any interface is bound, so it is left alone when already set.
        """
        try:
            return self.dev.get_active_configuration()
        except self.usb.core.USBError as e:
            if e.errno is not None:
                raise device_error(e, self.label, "opening it") from None
        try:
            self.dev.set_configuration(value)
            return self.dev.get_active_configuration()
        except self.usb.core.USBError as e:
            raise device_error(e, self.label, "configuring it") from None

    def claim(self, *interfaces: int) -> None:
        for intf in interfaces:
            try:
                self.usb.util.claim_interface(self.dev, intf)
            except self.usb.core.USBError as e:
                raise device_error(e, self.label, "claiming it") from None

    # ---- transfers
    def control_out(self, request_type: int, request: int, value: int, index: int,
                    data: bytes | None = None, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> None:
        try:
            self.dev.ctrl_transfer(request_type, request, value, index, data, timeout_ms)
        except self.usb.core.USBError as e:
            raise device_error(e, self.label, "sending it a request") from None

    def write(self, ep: int, data: bytes, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> None:
        try:
            sent = self.dev.write(ep, data, timeout_ms)
        except self.usb.core.USBError as e:
            raise device_error(e, self.label, "sending it a command") from None
        if sent != len(data):
            raise DeviceError(
                f"{self.label} accepted {sent} of {len(data)} command bytes; unplug and replug it"
            )

    def read_exact(self, ep: int, n: int, packet: int = 64,
                   timeout_ms: int = DEFAULT_TIMEOUT_MS) -> bytes:
        """Exactly n bytes from bulk IN `ep`, looping over short transfers.

        Transfers are asked for in whole packets (a device may always send a full
        packet, and a smaller buffer overflows); the excess is kept for the next call.
        """
        buf = self._pending.setdefault(ep, bytearray())
        empty = 0
        while len(buf) < n:
            want = n - len(buf)
            size = min(MAX_TRANSFER, max(packet, -(-want // packet) * packet))
            try:
                chunk = self.dev.read(ep, size, timeout_ms)
            except self.usb.core.USBTimeoutError:
                got = len(buf)
                if got:
                    raise DeviceError(
                        f"{self.label} returned only {got} of {n} bytes before timing out "
                        f"after {timeout_ms} ms; unplug and replug it"
                    ) from None
                raise DeviceError(
                    f"{self.label} sent no data for {timeout_ms} ms; unplug and replug it, "
                    "and check that no other program is reading it"
                ) from None
            except self.usb.core.USBError as e:
                raise device_error(e, self.label) from None
            if len(chunk) == 0:
                empty += 1
                if empty >= MAX_EMPTY_TRANSFERS:
                    raise DeviceError(
                        f"{self.label} keeps sending empty transfers ({len(buf)} of {n} "
                        "bytes read); unplug and replug it"
                    )
                continue
            empty = 0
            buf += bytes(chunk)
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def discard(self, ep: int, n: int, packet: int = 64,
                timeout_ms: int = DEFAULT_TIMEOUT_MS) -> None:
        """Read and drop n bytes (stale output a device sends after waking up)."""
        left = n
        while left:
            step = min(left, MAX_TRANSFER)
            self.read_exact(ep, step, packet, timeout_ms)
            left -= step

    # ---- tear-down
    def close(self) -> None:
        """Release interfaces and re-attach the kernel drivers we detached; never raises."""
        if self.closed:
            return
        self.closed = True
        self._pending.clear()
        usb = self.usb
        try:
            usb.util.dispose_resources(self.dev)
        except usb.core.USBError:
            pass
        for intf in self._detached:
            try:
                self.dev.attach_kernel_driver(intf)
            except (usb.core.USBError, NotImplementedError):
                pass  # unplugged, or the driver went away: nothing to give back
        self._detached.clear()
        try:
            usb.util.dispose_resources(self.dev)
        except usb.core.USBError:
            pass


class CdcAcm:
    """A USB CDC ACM ("USB serial") device driven directly over pyusb.

    Finds the communication (class 0x02) and data (class 0x0A) interfaces of the
    active configuration, and their bulk IN / OUT endpoints.
    """

    def __init__(self, link: UsbLink, config: Any) -> None:
        self.link = link
        usb = link.usb
        comm = usb.util.find_descriptor(config, bInterfaceClass=CDC_COMM_CLASS)
        data = usb.util.find_descriptor(config, bInterfaceClass=CDC_DATA_CLASS)
        if comm is None or data is None:
            raise DeviceError(
                f"{link.label} does not look like a USB serial (CDC ACM) device; "
                "check the VID:PID and the firmware"
            )
        self.comm = int(comm.bInterfaceNumber)
        self.data = int(data.bInterfaceNumber)
        ep_in = ep_out = None
        for ep in data:
            kind = usb.util.endpoint_type(ep.bmAttributes)
            if kind != usb.util.ENDPOINT_TYPE_BULK:
                continue
            if usb.util.endpoint_direction(ep.bEndpointAddress) == usb.util.ENDPOINT_IN:
                ep_in = ep_in or ep
            else:
                ep_out = ep_out or ep
        if ep_in is None:
            raise DeviceError(
                f"{link.label} has no bulk IN endpoint on its data interface; check the firmware"
            )
        self.ep_in = int(ep_in.bEndpointAddress)
        self.packet_in = int(ep_in.wMaxPacketSize) or 64
        self.ep_out = int(ep_out.bEndpointAddress) if ep_out is not None else None

    @property
    def interfaces(self) -> tuple[int, int]:
        return (self.comm, self.data)

    def set_line_coding(self, baud: int, stop_bits: int = 0, parity: int = 0,
                        data_bits: int = 8) -> None:
        """SET_LINE_CODING: dwDTERate (LE32), bCharFormat, bParityType, bDataBits."""
        payload = struct.pack("<IBBB", baud, stop_bits, parity, data_bits)
        self.link.control_out(_CLASS_OUT_INTERFACE, CDC_SET_LINE_CODING, 0, self.comm, payload)

    def set_control_line_state(self, dtr: bool, rts: bool = False) -> None:
        """SET_CONTROL_LINE_STATE: wValue bit 0 is DTR, bit 1 is RTS."""
        value = (1 if dtr else 0) | (2 if rts else 0)
        self.link.control_out(_CLASS_OUT_INTERFACE, CDC_SET_CONTROL_LINE_STATE, value, self.comm)

    def write(self, data: bytes) -> None:
        if self.ep_out is None:
            raise DeviceError(f"{self.link.label} has no bulk OUT endpoint; check the firmware")
        self.link.write(self.ep_out, data)

    def read(self, n: int, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> bytes:
        return self.link.read_exact(self.ep_in, n, self.packet_in, timeout_ms)

    def discard(self, n: int, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> None:
        self.link.discard(self.ep_in, n, self.packet_in, timeout_ms)


# --------------------------------------------------------------------------- base source


class UsbSource(Source):
    """A Source backed by one USB device found by VID:PID.

    Options (all optional, strings from the command line are accepted):
    `serial=` pick the device with this serial number; `bus=` and `address=` pick
    it by position (as `lsusb` shows them); `timeout_ms=` per-transfer timeout;
    `backend=` a pyusb backend object (in-process tests). Without `backend` the
    environment variable SEEDTOOL_USB_BACKEND may name one (`module:callable`).

    Subclasses set `ids` and implement `_start(link, config)` (protocol set-up
    after the device is claimed), `_read(n)` and optionally `_stop()`.
    """

    extra = "usb"
    ids: ClassVar[tuple[UsbId, ...]] = ()
    #: what the user calls the device, for messages ("TrueRNG", "OneRNG")
    product: ClassVar[str] = "USB device"
    known_options = USB_OPTIONS

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._serial: str | None = options.get("serial") or None
        self._bus = _int_option(options, "bus")
        self._address = _int_option(options, "address")
        timeout = _int_option(options, "timeout_ms")
        self.timeout_ms = DEFAULT_TIMEOUT_MS if timeout is None else timeout
        if self.timeout_ms <= 0:
            raise UsageError("option timeout_ms must be a positive number of milliseconds")
        self._backend_option = options.get("backend")
        if isinstance(self._backend_option, str):
            raise UsageError(
                f"{self.name} option backend= takes a pyusb backend object from in-process "
                f"callers; on the command line set {BACKEND_ENV}=module:callable instead"
            )
        self.link: UsbLink | None = None
        self.model: UsbId | None = None
        self._failed: DeviceError | None = None

    # ---- finding
    def _product_words(self) -> str:
        return f"{self.product} ({', '.join(str(i) for i in self.ids)})"

    def _backend(self) -> Any:
        if self._backend_option is not None:
            return self._backend_option
        return backend_from_env()

    def _candidates(self, usb: ModuleType) -> Iterator[tuple[Any, UsbId]]:
        by_id = {(i.vid, i.pid): i for i in self.ids}
        try:
            found = list(
                usb.core.find(
                    find_all=True,
                    backend=self._backend(),
                    custom_match=lambda d: (d.idVendor, d.idProduct) in by_id,
                )
            )
        except usb.core.NoBackendError:
            raise SourceError(
                "pyusb found no libusb library; install libusb-1.0 (apt-get install libusb-1.0-0)"
            ) from None
        found.sort(key=lambda d: (d.bus or 0, d.address or 0))
        for dev in found:
            if self._bus is not None and dev.bus != self._bus:
                continue
            if self._address is not None and dev.address != self._address:
                continue
            yield dev, by_id[(dev.idVendor, dev.idProduct)]

    @staticmethod
    def _label(dev: Any, model: UsbId) -> str:
        return f"{model.model} {model} on bus {dev.bus} address {dev.address}"

    def _find(self, usb: ModuleType) -> tuple[Any, UsbId, int]:
        """(device, model, how many matched) or raise DeviceError."""
        matches = []
        for dev, model in self._candidates(usb):
            if self._serial is not None:
                try:
                    serial = dev.serial_number
                except usb.core.USBError as e:
                    raise device_error(e, self._label(dev, model), "reading its serial") from None
                except ValueError:  # no string descriptors readable
                    serial = None
                if serial != self._serial:
                    continue
            matches.append((dev, model))
        if not matches:
            where = []
            if self._serial is not None:
                where.append(f"serial {self._serial}")
            if self._bus is not None:
                where.append(f"bus {self._bus}")
            if self._address is not None:
                where.append(f"address {self._address}")
            which = f" with {', '.join(where)}" if where else ""
            raise DeviceError(
                f"no {self._product_words()} found{which}; plug it in and check `lsusb`"
            )
        dev, model = matches[0]
        return dev, model, len(matches)

    # ---- Source interface
    def available(self) -> Availability:
        usb = import_pyusb()
        if usb is None:
            return Availability.no(INSTALL_HINT)
        try:
            dev, model, count = self._find(usb)
        except SourceError as e:
            return Availability.no(str(e))
        label = self._label(dev, model)
        detail = {
            "model": model.model,
            "usb_id": str(model),
            "bus": str(dev.bus),
            "address": str(dev.address),
        }
        if count > 1:
            detail["matching_devices"] = str(count)
        # Opening (not claiming) shows whether udev gives us access.
        serial = None
        try:
            try:
                dev.get_active_configuration()
            except usb.core.USBError as e:
                if e.errno is not None:  # errno None: merely unconfigured
                    raise
            serial = dev.serial_number
            product = dev.product
            if product:
                detail["product"] = str(product)
        except usb.core.USBError as e:
            return Availability.no(str(device_error(e, label, "opening it")), detail)
        except ValueError:  # no readable string descriptors
            pass
        finally:
            try:
                usb.util.dispose_resources(dev)
            except usb.core.USBError:
                pass
        if serial:
            detail["serial"] = str(serial)
        return Availability.yes(detail)

    def _ensure_open(self) -> UsbLink:
        if self._failed is not None:
            raise self._failed
        if self.link is not None:
            return self.link
        usb = import_pyusb()
        if usb is None:
            raise SourceError(f"source '{self.name}' needs pyusb; {INSTALL_HINT}")
        dev, model, _ = self._find(usb)
        link = UsbLink(usb, dev, self._label(dev, model))
        self.model = model
        try:
            self.link = link
            self._start(link)
        except BaseException:
            self._stop_quietly()
            link.close()
            self.link = None
            raise
        return link

    def read(self, n: int) -> bytes:
        if n < 0:
            raise ValueError("n must be >= 0")
        link = self._ensure_open()
        if n == 0:
            return b""
        try:
            data = self._read(link, n)
        except DeviceError as e:
            # a device that failed mid-read is not trusted again in this run
            self._failed = e
            self.close()
            raise
        if len(data) != n:  # pragma: no cover - guarded by read_exact
            raise DeviceError(f"{link.label} returned {len(data)} of {n} bytes; replug it")
        return data

    def close(self) -> None:
        link, self.link = self.link, None
        if link is None:
            return
        try:
            self._stop(link)
        except (DeviceError, SourceError):
            pass  # stopping a device that went away is not an error
        finally:
            link.close()

    def _stop_quietly(self) -> None:
        if self.link is None:
            return
        try:
            self._stop(self.link)
        except (DeviceError, SourceError):
            pass

    # ---- subclass hooks
    def _start(self, link: UsbLink) -> None:
        raise NotImplementedError

    def _read(self, link: UsbLink, n: int) -> bytes:
        raise NotImplementedError

    def _stop(self, link: UsbLink) -> None:
        """Undo protocol state on close (pause the device, drop DTR)."""


class CdcSource(UsbSource):
    """A UsbSource for CDC ACM devices: detaches cdc_acm, claims, raises DTR."""

    cdc: CdcAcm | None = None

    def _open_cdc(self, link: UsbLink) -> CdcAcm:
        config = link.configure(1)
        cdc = CdcAcm(link, config)
        link.detach_kernel_drivers(cdc.interfaces)
        link.claim(*cdc.interfaces)
        self.cdc = cdc
        return cdc

    def _read(self, link: UsbLink, n: int) -> bytes:
        assert self.cdc is not None
        return self.cdc.read(n, self.timeout_ms)

    def _stop(self, link: UsbLink) -> None:
        cdc, self.cdc = self.cdc, None
        if cdc is not None:
            cdc.set_control_line_state(False)
