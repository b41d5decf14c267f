"""A fake pyusb backend: emulated USB devices behind the real pyusb code path.

Tests hand a `FakeBackend` to pyusb (`usb.core.find(..., backend=fake)`), so
everything above the backend -- `Device`, `Configuration`, `Interface`,
`Endpoint`, `usb.util.claim_interface`, `dev.ctrl_transfer`, `ep.read`,
string descriptors, kernel-driver calls -- is pyusb's own code. Only the layer
pyusb normally gets from libusb is emulated here, and it behaves like libusb-1.0
on Linux does (errors are `usb.core.USBError` with libusb's error code, message
and errno, e.g. ENODEV for a device that vanished, EBUSY for a claimed
interface, EACCES for a device node the user cannot open; a timeout is
`usb.core.USBTimeoutError`; a timed-out bulk transfer that moved some bytes
returns the short count, as pyusb's libusb1 backend does).

Like real hardware, a device fills an IN transfer with whole packets of the
endpoint's wMaxPacketSize: a read whose buffer is not a whole number of packets
fails with EOVERFLOW when the device has enough data to fill it (so hosts must
read in multiples of wMaxPacketSize and keep the excess).

Nothing here sleeps: a "timeout" is reported at once, so tests never depend on
wall-clock time.

API (what a new fake device needs)
----------------------------------
Descriptors are plain dataclasses::

    Endpoint(address=0x85, kind=BULK, max_packet=64)
    Interface(number=1, cls=0x0A, endpoints=[...], extra=b"", alt=0)
    Config(value=1, interfaces=[...])

A device subclasses `FakeDevice`, sets identity and descriptors, and overrides
the hooks it needs:

    class MyRng(FakeDevice):
        def __init__(self, **kw):
            super().__init__(vid=0x1234, pid=0x5678, product="My RNG",
                             serial="0001", configs=[Config(1, [...])], **kw)

        def control(self, setup, data):   # class/vendor requests on EP0
            ...                           # OUT: return None; IN: return bytes
                                          # raise Stall() to STALL (-> EPIPE)
        def bulk_out(self, ep, data):     # host wrote `data` to OUT endpoint `ep`
            ...
        def bulk_in(self, ep, size):      # host asks for up to `size` bytes;
            return b"..."                 # return b"" when nothing is ready
                                          # (-> the transfer times out)
        def intr_in(self, ep, size):      # interrupt IN (default: nothing ready)

Standard requests (GET_DESCRIPTOR for strings, SET_CONFIGURATION,
SET_INTERFACE, CLEAR_FEATURE) are answered by the base class. `devtools.fakeusb.cdc`
has `CdcAcmDevice`, a base for CDC ACM devices (comm + data interface,
SET_LINE_CODING / GET_LINE_CODING / SET_CONTROL_LINE_STATE, `cdc_in()` /
`cdc_out()` hooks, data flows only while DTR is set if `needs_dtr`).
`devtools.fakeusb.devices` has the TrueRNG, OneRNG and ChaosKey fakes and
`ByteStream`, a deterministic keyed byte stream whose bytes a test can predict
with `ByteStream.expected(key, offset, n)`.

Observing what the host did: every device keeps `log`, a list of `Event(kind,
args)` with kinds "open", "close", "set_configuration", "claim", "release",
"set_altsetting", "detach", "attach", "ctrl", "bulk_out", "bulk_in",
"intr_in", "clear_halt", "reset". Helpers: `events(kind)`, `written(ep)` (all
bytes written to an OUT endpoint), `delivered` (bulk-IN bytes handed to the
host, per endpoint), `timeouts` (timeout values, in ms, the host passed to
bulk/interrupt reads).

Faults (attributes, set before or during a test; all default to "no fault"):

    kernel_drivers   {interface number: driver name} bound in the kernel, e.g.
                     {0: "cdc_acm", 1: "cdc_acm"}; claiming such an interface
                     fails with EBUSY until the host detaches the driver, and
                     `attach_kernel_driver` re-binds it
    open_errno       errno raised by open (errno.EACCES: no udev rule)
    other_claims     interfaces claimed by another program (claim -> EBUSY)
    unplug_after     after this many bulk-IN bytes in total the device vanishes:
                     the transfer that reaches the limit returns the bytes up
                     to it, then every call fails with ENODEV and the device
                     is no longer enumerated; `unplug()` does it at once
    timeout_after    after this many bulk-IN bytes in total every bulk read
                     times out (a device that stops producing)
    max_transfer     each bulk-IN transfer returns at most this many bytes
                     (short reads)

Running a real subprocess (the CLI) against fakes: set
`SEEDTOOL_USB_BACKEND=devtools.fakeusb.env:backend` and
`FAKEUSB_DEVICES=truerng,chaoskey;kernel_drivers=0:chaoskey` (see
`devtools.fakeusb.env`), with the repository root on PYTHONPATH.
"""

from __future__ import annotations

import array
import errno as _errno
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import usb.backend
import usb.core

# bmAttributes transfer types
CONTROL, ISO, BULK, INTERRUPT = 0, 1, 2, 3

# libusb-1.0 error codes, messages and errno values as pyusb's libusb1 backend
# reports them (usb/backend/libusb1.py: _str_error_map, _libusb_errno)
_LIBUSB = {
    _errno.EIO: (-1, "Input/output error"),
    _errno.EINVAL: (-2, "Invalid parameter"),
    _errno.EACCES: (-3, "Access denied (insufficient permissions)"),
    _errno.ENODEV: (-4, "No such device (it may have been disconnected)"),
    _errno.ENOENT: (-5, "Entity not found"),
    _errno.EBUSY: (-6, "Resource busy"),
    _errno.ETIMEDOUT: (-7, "Operation timed out"),
    _errno.EOVERFLOW: (-8, "Overflow"),
    _errno.EPIPE: (-9, "Pipe error"),
}


def usb_error(err: int) -> usb.core.USBError:
    """The exception pyusb's libusb1 backend raises for errno `err`."""
    code, message = _LIBUSB[err]
    if err == _errno.ETIMEDOUT:
        return usb.core.USBTimeoutError(message, code, err)
    return usb.core.USBError(message, code, err)


class Stall(Exception):
    """Raised by a device hook to STALL a request (the host sees EPIPE)."""


# --------------------------------------------------------------------------- descriptors


@dataclass
class Endpoint:
    address: int
    kind: int = BULK
    max_packet: int = 64
    interval: int = 0
    extra: bytes = b""

    @property
    def is_in(self) -> bool:
        return bool(self.address & 0x80)


@dataclass
class Interface:
    number: int
    cls: int = 0xFF
    subclass: int = 0
    protocol: int = 0
    endpoints: list[Endpoint] = field(default_factory=list)
    extra: bytes = b""
    alt: int = 0
    string_index: int = 0


@dataclass
class Config:
    value: int = 1
    interfaces: list[Interface] = field(default_factory=list)
    attributes: int = 0x80  # bus powered
    max_power: int = 50  # 2 mA units: 100 mA
    extra: bytes = b""

    def numbers(self) -> list[int]:
        return sorted({i.number for i in self.interfaces})

    def alternates(self, number: int) -> list[Interface]:
        return sorted((i for i in self.interfaces if i.number == number), key=lambda i: i.alt)


class _Desc:
    """Attribute bag handed to pyusb (it reads fields with getattr)."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


class Event(NamedTuple):
    kind: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Setup:
    """A control request's setup packet."""

    bmRequestType: int
    bRequest: int
    wValue: int
    wIndex: int
    wLength: int

    @property
    def is_in(self) -> bool:
        return bool(self.bmRequestType & 0x80)

    @property
    def type(self) -> str:
        return ("standard", "class", "vendor", "reserved")[(self.bmRequestType >> 5) & 3]


# --------------------------------------------------------------------------- devices


class FakeDevice:
    """One emulated USB device: descriptors, state, hooks and faults."""

    def __init__(
        self,
        vid: int,
        pid: int,
        configs: Sequence[Config],
        *,
        manufacturer: str | None = None,
        product: str | None = None,
        serial: str | None = None,
        device_class: int = 0,
        device_subclass: int = 0,
        device_protocol: int = 0,
        bcd_usb: int = 0x0200,
        bcd_device: int = 0x0100,
        max_packet0: int = 64,
        speed: int = 2,  # libusb: 2 = full speed
        bus: int | None = None,
        address: int | None = None,
        kernel_drivers: dict[int, str] | None = None,
        open_errno: int | None = None,
        other_claims: Iterable[int] = (),
        unplug_after: int | None = None,
        timeout_after: int | None = None,
        max_transfer: int | None = None,
    ) -> None:
        self.vid, self.pid = vid, pid
        self.configs = list(configs)
        self.device_class, self.device_subclass = device_class, device_subclass
        self.device_protocol = device_protocol
        self.bcd_usb, self.bcd_device, self.max_packet0 = bcd_usb, bcd_device, max_packet0
        self.speed = speed
        self.bus, self.address = bus, address
        self.strings: list[str] = []
        self.i_manufacturer = self._string(manufacturer)
        self.i_product = self._string(product)
        self.i_serial = self._string(serial)
        self.serial = serial
        # state: Linux configures a device with a single configuration on plug-in
        self.configuration = self.configs[0].value if self.configs else 0
        self.altsettings: dict[int, int] = {}
        self.present = True
        self.open_handles = 0
        self.claims: dict[int, int] = {}  # interface -> handle id
        # faults
        self.kernel_drivers: dict[int, str] = dict(kernel_drivers or {})
        self.detached: dict[int, str] = {}  # drivers we detached, for re-attach
        self.open_errno = open_errno
        self.other_claims = set(other_claims)
        self.unplug_after = unplug_after
        self.timeout_after = timeout_after
        self.max_transfer = max_transfer
        # observations
        self.log: list[Event] = []
        self.delivered: dict[int, int] = {}
        self.timeouts: list[int] = []

    # ---- identity helpers
    def _string(self, text: str | None) -> int:
        if text is None:
            return 0
        self.strings.append(text)
        return len(self.strings)

    def __repr__(self) -> str:
        ident = f"{self.vid:04x}:{self.pid:04x}"
        return f"<{type(self).__name__} {ident} bus {self.bus} address {self.address}>"

    # ---- observation helpers
    def events(self, kind: str) -> list[tuple[Any, ...]]:
        return [e.args for e in self.log if e.kind == kind]

    def written(self, ep: int) -> bytes:
        return b"".join(args[1] for args in self.events("bulk_out") if args[0] == ep)

    @property
    def total_delivered(self) -> int:
        return sum(self.delivered.values())

    def unplug(self) -> None:
        """The device goes away now (every later call fails with ENODEV)."""
        self.present = False

    # ---- hooks for subclasses
    def control(self, setup: Setup, data: bytes) -> bytes | None:
        """A class or vendor request. OUT: return None. IN: return up to wLength bytes."""
        raise Stall()

    def bulk_out(self, ep: int, data: bytes) -> None:
        """The host wrote `data` to bulk OUT endpoint `ep`."""

    def bulk_in(self, ep: int, size: int) -> bytes:
        """Up to `size` bytes for bulk IN endpoint `ep`; b"" when nothing is ready."""
        return b""

    def intr_in(self, ep: int, size: int) -> bytes:
        """Up to `size` bytes for interrupt IN endpoint `ep`; b"" when nothing is ready."""
        return b""

    def on_set_configuration(self, value: int) -> None:
        """Called after the configuration changed."""

    # ---- standard requests
    def _standard(self, setup: Setup, data: bytes) -> bytes | None:
        if setup.bRequest == 0x06 and setup.is_in:  # GET_DESCRIPTOR
            dtype, index = setup.wValue >> 8, setup.wValue & 0xFF
            if dtype == 0x03:
                if index == 0:
                    body = (0x0409).to_bytes(2, "little")  # English (US)
                elif index <= len(self.strings):
                    body = self.strings[index - 1].encode("utf-16-le")
                else:
                    raise Stall()
                return bytes([2 + len(body), 0x03]) + body
            raise Stall()
        if setup.bRequest == 0x00 and setup.is_in:  # GET_STATUS
            return b"\x00\x00"
        if setup.bRequest in (0x01, 0x03):  # CLEAR_FEATURE / SET_FEATURE
            return None
        raise Stall()


# --------------------------------------------------------------------------- backend


class _Handle:
    _ids = itertools.count(1)

    def __init__(self, dev: FakeDevice) -> None:
        self.dev = dev
        self.id = next(self._ids)
        self.claimed: set[int] = set()
        self.closed = False


class FakeBackend(usb.backend.IBackend):
    """A pyusb backend serving `FakeDevice`s; pass it as `backend=` to usb.core.find."""

    def __init__(self, devices: Iterable[FakeDevice] = ()) -> None:
        self.devices: list[FakeDevice] = []
        for d in devices:
            self.add(d)

    def add(self, dev: FakeDevice) -> FakeDevice:
        """Plug a device in (bus 1, next free address unless the device set its own)."""
        if dev.bus is None:
            dev.bus = 1
        if dev.address is None:
            used = {d.address for d in self.devices if d.bus == dev.bus}
            dev.address = next(a for a in itertools.count(2) if a not in used)
        self.devices.append(dev)
        return dev

    # ---- helpers
    @staticmethod
    def _alive(dev: FakeDevice) -> None:
        if not dev.present:
            raise usb_error(_errno.ENODEV)

    def _handle(self, handle: _Handle) -> FakeDevice:
        if handle.closed:
            raise usb_error(_errno.EINVAL)
        self._alive(handle.dev)
        return handle.dev

    @staticmethod
    def _config(dev: FakeDevice, index: int) -> Config:
        if not 0 <= index < len(dev.configs):
            raise IndexError(f"Invalid configuration index {index}")
        return dev.configs[index]

    def _interface(self, dev: FakeDevice, intf: int, alt: int, config: int) -> Interface:
        cfg = self._config(dev, config)
        numbers = cfg.numbers()
        if not 0 <= intf < len(numbers):
            raise IndexError(f"Invalid interface index {intf}")
        alts = cfg.alternates(numbers[intf])
        if not 0 <= alt < len(alts):
            raise IndexError(f"Invalid alternate setting index {alt}")
        return alts[alt]

    def _active(self, dev: FakeDevice) -> Config:
        for cfg in dev.configs:
            if cfg.value == dev.configuration:
                return cfg
        raise usb_error(_errno.ENOENT)

    def _endpoint(self, dev: FakeDevice, ep: int) -> tuple[Interface, Endpoint]:
        cfg = self._active(dev)
        for number in cfg.numbers():
            alt = dev.altsettings.get(number, 0)
            for i in cfg.alternates(number):
                if i.alt != alt:
                    continue
                for e in i.endpoints:
                    if e.address == ep:
                        return i, e
        raise usb_error(_errno.ENOENT)

    def _claim(self, handle: _Handle, dev: FakeDevice, intf: int) -> None:
        if intf in handle.claimed:
            return
        if intf in dev.kernel_drivers or intf in dev.other_claims:
            raise usb_error(_errno.EBUSY)
        owner = dev.claims.get(intf)
        if owner is not None and owner != handle.id:
            raise usb_error(_errno.EBUSY)
        if intf not in self._active(dev).numbers():
            raise usb_error(_errno.ENOENT)
        dev.claims[intf] = handle.id
        handle.claimed.add(intf)
        dev.log.append(Event("claim", (intf,)))

    # ---- enumeration and descriptors
    def enumerate_devices(self) -> list[FakeDevice]:
        return [d for d in self.devices if d.present]

    def get_parent(self, dev: FakeDevice) -> None:
        return None

    def get_device_descriptor(self, dev: FakeDevice) -> _Desc:
        return _Desc(
            bLength=18,
            bDescriptorType=0x01,
            bcdUSB=dev.bcd_usb,
            bDeviceClass=dev.device_class,
            bDeviceSubClass=dev.device_subclass,
            bDeviceProtocol=dev.device_protocol,
            bMaxPacketSize0=dev.max_packet0,
            idVendor=dev.vid,
            idProduct=dev.pid,
            bcdDevice=dev.bcd_device,
            iManufacturer=dev.i_manufacturer,
            iProduct=dev.i_product,
            iSerialNumber=dev.i_serial,
            bNumConfigurations=len(dev.configs),
            address=dev.address,
            bus=dev.bus,
            port_number=dev.address,
            port_numbers=(dev.address,),
            speed=dev.speed,
        )

    def get_configuration_descriptor(self, dev: FakeDevice, config: int) -> _Desc:
        cfg = self._config(dev, config)
        total = 9 + len(cfg.extra) + sum(
            9 + len(i.extra) + sum(7 + len(e.extra) for e in i.endpoints) for i in cfg.interfaces
        )
        return _Desc(
            bLength=9,
            bDescriptorType=0x02,
            wTotalLength=total,
            bNumInterfaces=len(cfg.numbers()),
            bConfigurationValue=cfg.value,
            iConfiguration=0,
            bmAttributes=cfg.attributes,
            bMaxPower=cfg.max_power,
            extra_descriptors=list(cfg.extra),
        )

    def get_interface_descriptor(self, dev: FakeDevice, intf: int, alt: int, config: int) -> _Desc:
        i = self._interface(dev, intf, alt, config)
        return _Desc(
            bLength=9,
            bDescriptorType=0x04,
            bInterfaceNumber=i.number,
            bAlternateSetting=i.alt,
            bNumEndpoints=len(i.endpoints),
            bInterfaceClass=i.cls,
            bInterfaceSubClass=i.subclass,
            bInterfaceProtocol=i.protocol,
            iInterface=i.string_index,
            extra_descriptors=list(i.extra),
        )

    def get_endpoint_descriptor(
        self, dev: FakeDevice, ep: int, intf: int, alt: int, config: int
    ) -> _Desc:
        i = self._interface(dev, intf, alt, config)
        if not 0 <= ep < len(i.endpoints):
            raise IndexError(f"Invalid endpoint index {ep}")
        e = i.endpoints[ep]
        return _Desc(
            bLength=7,
            bDescriptorType=0x05,
            bEndpointAddress=e.address,
            bmAttributes=e.kind,
            wMaxPacketSize=e.max_packet,
            bInterval=e.interval,
            bRefresh=0,
            bSynchAddress=0,
            extra_descriptors=list(e.extra),
        )

    # ---- handles, configuration, interfaces
    def open_device(self, dev: FakeDevice) -> _Handle:
        self._alive(dev)
        if dev.open_errno is not None:
            raise usb_error(dev.open_errno)
        dev.open_handles += 1
        dev.log.append(Event("open", ()))
        return _Handle(dev)

    def close_device(self, dev_handle: _Handle) -> None:
        if dev_handle.closed:
            return
        dev = dev_handle.dev
        for intf in list(dev_handle.claimed):
            dev.claims.pop(intf, None)
        dev_handle.claimed.clear()
        dev_handle.closed = True
        dev.open_handles -= 1
        dev.log.append(Event("close", ()))

    def set_configuration(self, dev_handle: _Handle, config_value: int) -> None:
        dev = self._handle(dev_handle)
        # Linux refuses to change the configuration while any interface is bound
        # to a driver or claimed through another handle (libusb: LIBUSB_ERROR_BUSY).
        others = {i for i, h in dev.claims.items() if h != dev_handle.id}
        if dev.kernel_drivers or dev.other_claims or others:
            raise usb_error(_errno.EBUSY)
        if config_value != 0 and config_value not in {c.value for c in dev.configs}:
            raise usb_error(_errno.EINVAL)
        dev.configuration = config_value
        dev.altsettings.clear()
        dev.log.append(Event("set_configuration", (config_value,)))
        dev.on_set_configuration(config_value)

    def get_configuration(self, dev_handle: _Handle) -> int:
        return self._handle(dev_handle).configuration

    def set_interface_altsetting(self, dev_handle: _Handle, intf: int, altsetting: int) -> None:
        dev = self._handle(dev_handle)
        if intf not in dev_handle.claimed:
            raise usb_error(_errno.ENOENT)
        if altsetting not in {i.alt for i in self._active(dev).alternates(intf)}:
            raise usb_error(_errno.EINVAL)
        dev.altsettings[intf] = altsetting
        dev.log.append(Event("set_altsetting", (intf, altsetting)))

    def claim_interface(self, dev_handle: _Handle, intf: int) -> None:
        self._claim(dev_handle, self._handle(dev_handle), intf)

    def release_interface(self, dev_handle: _Handle, intf: int) -> None:
        dev = self._handle(dev_handle)
        if intf not in dev_handle.claimed:
            raise usb_error(_errno.ENOENT)
        dev_handle.claimed.discard(intf)
        dev.claims.pop(intf, None)
        dev.log.append(Event("release", (intf,)))

    # ---- kernel drivers
    def is_kernel_driver_active(self, dev_handle: _Handle, intf: int) -> bool:
        return intf in self._handle(dev_handle).kernel_drivers

    def detach_kernel_driver(self, dev_handle: _Handle, intf: int) -> None:
        dev = self._handle(dev_handle)
        if intf not in dev.kernel_drivers:
            raise usb_error(_errno.ENOENT)
        dev.detached[intf] = dev.kernel_drivers.pop(intf)
        dev.log.append(Event("detach", (intf, dev.detached[intf])))

    def attach_kernel_driver(self, dev_handle: _Handle, intf: int) -> None:
        dev = self._handle(dev_handle)
        if intf in dev.kernel_drivers or intf in dev.claims:
            raise usb_error(_errno.EBUSY)
        driver = dev.detached.pop(intf, None)
        if driver is None:
            raise usb_error(_errno.ENOENT)
        dev.kernel_drivers[intf] = driver
        dev.log.append(Event("attach", (intf, driver)))

    # ---- transfers
    def ctrl_transfer(
        self,
        dev_handle: _Handle,
        bmRequestType: int,
        bRequest: int,
        wValue: int,
        wIndex: int,
        data: array.array[int],
        timeout: int,
    ) -> int:
        dev = self._handle(dev_handle)
        length = len(data) * data.itemsize
        setup = Setup(bmRequestType, bRequest, wValue, wIndex, length)
        out = b"" if setup.is_in else data.tobytes()
        dev.log.append(Event("ctrl", (bmRequestType, bRequest, wValue, wIndex, out)))
        try:
            if setup.type == "standard":
                reply = dev._standard(setup, out)
            else:
                reply = dev.control(setup, out)
        except Stall:
            raise usb_error(_errno.EPIPE) from None
        if not setup.is_in:
            return length
        reply = (reply or b"")[:length]
        raw = memoryview(data).cast("B")
        raw[: len(reply)] = reply
        return len(reply)

    def _deliverable(self, dev: FakeDevice, wanted: int) -> int:
        n = wanted
        if dev.max_transfer is not None:
            n = min(n, dev.max_transfer)
        for limit in (dev.unplug_after, dev.timeout_after):
            if limit is not None:
                n = min(n, max(0, limit - dev.total_delivered))
        return n

    def _read(
        self, kind: str, dev_handle: _Handle, ep: int, buff: array.array[int], timeout: int
    ) -> int:
        dev = self._handle(dev_handle)
        intf, e = self._endpoint(dev, ep)
        if not e.is_in:
            raise usb_error(_errno.EINVAL)
        self._claim(dev_handle, dev, intf.number)  # usbfs claims implicitly
        dev.timeouts.append(timeout)
        if dev.unplug_after is not None and dev.total_delivered >= dev.unplug_after:
            dev.unplug()
            raise usb_error(_errno.ENODEV)
        wanted = len(buff) * buff.itemsize
        n = self._deliverable(dev, wanted)
        chunk = b""
        if n > 0:
            hook = dev.bulk_in if kind == "bulk_in" else dev.intr_in
            chunk = bytes(hook(ep, n))[:n]
        dev.log.append(Event(kind, (ep, len(chunk))))
        if not chunk:
            raise usb_error(_errno.ETIMEDOUT)
        if len(chunk) == wanted and wanted % e.max_packet:
            # The device sends whole packets; a buffer that ends mid-packet while
            # the device still has data overflows (libusb: LIBUSB_ERROR_OVERFLOW).
            raise usb_error(_errno.EOVERFLOW)
        raw = memoryview(buff).cast("B")
        raw[: len(chunk)] = chunk
        dev.delivered[ep] = dev.delivered.get(ep, 0) + len(chunk)
        if dev.unplug_after is not None and dev.total_delivered >= dev.unplug_after:
            dev.unplug()
        return len(chunk)

    def _write(
        self, dev_handle: _Handle, ep: int, data: array.array[int]
    ) -> int:
        dev = self._handle(dev_handle)
        intf, e = self._endpoint(dev, ep)
        if e.is_in:
            raise usb_error(_errno.EINVAL)
        self._claim(dev_handle, dev, intf.number)
        payload = data.tobytes()
        dev.log.append(Event("bulk_out", (ep, payload)))
        dev.bulk_out(ep, payload)
        return len(payload)

    def bulk_read(
        self, dev_handle: _Handle, ep: int, intf: int, buff: array.array[int], timeout: int
    ) -> int:
        return self._read("bulk_in", dev_handle, ep, buff, timeout)

    def bulk_write(
        self, dev_handle: _Handle, ep: int, intf: int, data: array.array[int], timeout: int
    ) -> int:
        return self._write(dev_handle, ep, data)

    def intr_read(
        self, dev_handle: _Handle, ep: int, intf: int, buff: array.array[int], timeout: int
    ) -> int:
        return self._read("intr_in", dev_handle, ep, buff, timeout)

    def intr_write(
        self, dev_handle: _Handle, ep: int, intf: int, data: array.array[int], timeout: int
    ) -> int:
        return self._write(dev_handle, ep, data)

    def clear_halt(self, dev_handle: _Handle, ep: int) -> None:
        dev = self._handle(dev_handle)
        dev.log.append(Event("clear_halt", (ep,)))

    def reset_device(self, dev_handle: _Handle) -> None:
        dev = self._handle(dev_handle)
        dev.log.append(Event("reset", ()))


__all__ = [
    "BULK",
    "CONTROL",
    "INTERRUPT",
    "ISO",
    "Config",
    "Endpoint",
    "Event",
    "FakeBackend",
    "FakeDevice",
    "Interface",
    "Setup",
    "Stall",
    "usb_error",
]
