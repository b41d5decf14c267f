"""The Simtec Entropy Key (USB 20df:0001), spoken to natively: no ekeyd needed.

The key encrypts and MACs everything it sends under a session key that only a
host holding its long-term key (from ekeyd's keyring) can derive. This source does
what ekeyd does -- reset the key, answer its re-key request with a fresh nonce,
verify every frame's MAC, decrypt the entropy frames -- with the protocol in
`entropykey_protocol` and one of two transports:

* USB through pyusb (`_usb`): interface 1, bulk IN 0x81 / OUT 0x03, as ekeyd's
  userland USB helper `ekey-ulusbd` uses it (host/ekey-ulusbd.c: EKEY_IFACE 1,
  EP_TOHOST 1, EP_TODEVICE 3). `cdc_acm` is detached while we hold it.
* A tty (`device=/dev/ttyACM0`, `device=/dev/entropykey/<serial>` as ekeyd's udev
  rule names it, or that directory) or a UNIX socket such as the ones ekey-ulusbd
  serves, opened raw the way ekeyd's stream.c opens it.

Options: `keyring=` (default /etc/entropykey/keyring, ekeyd's), `serial=` (the
16-character serial printed on the label and shown by lsusb), `device=`,
`max_bad=` (frames that may fail their MAC or be garbled before the source gives up;
default 8), `timeout=` (seconds without new entropy before giving up; default 10),
and the USB options of `_usb.UsbSource` (`bus=`, `address=`, `timeout_ms=`).

What it yields and how much we trust it: each entropy frame carries 32 bytes the
device has already conditioned (two noise generators, debiased and combined, each
20000-bit block FIPS 140-2 tested on the device, README.protocol), so `raw` is
False. The maker claims a full 8 bits per byte; ekeyd's own default credits 7
("conservatively estimated to contain 7 shannons of entropy per byte",
ekeyd.conf). We use 7 as the min-entropy setting for the health tests: on
conditioned output the health tests can only catch gross failure, and the claim
rests on the device's own monitors (whose failure reports make this source fail).

This source never logs, and never puts frame contents, keys or entropy in a message.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import stat
import termios
import time
from pathlib import Path
from typing import Any, ClassVar, Protocol

from ..shared.errors import DeviceError, SourceError, UsageError
from ._usb import USB_OPTIONS, CdcSource, UsbId, UsbLink, import_pyusb
from .base import Availability, Source, positive_number, positive_whole_number
from .entropykey_protocol import (
    DEFAULT_KEYRING,
    FRAME_LEN,
    HostSession,
    KeyringError,
    ProtocolError,
    parse_keyring,
    pem_decode,
    serial_text,
)

ENTROPY_KEY = UsbId(0x20DF, 0x0001, "Entropy Key")
#: ekeyd's udev rule links each key's tty here as /dev/entropykey/<serial>
UDEV_DIR = "/dev/entropykey"
EKEY_INTERFACE = 1
EKEY_EP_IN = 0x81
EKEY_EP_OUT = 0x03
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_BAD = 8
READ_CHUNK = 16 * FRAME_LEN


class _Transport(Protocol):
    label: str

    def read(self) -> bytes:
        """Some bytes from the device (never empty), or raise DeviceError."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- tty / socket


class _StreamTransport:
    """A cdc_acm tty or a UNIX stream socket, opened as ekeyd's stream.c opens them."""

    def __init__(self, path: str, timeout_s: float) -> None:
        self.label = f"Entropy Key at {path}"
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._fd = -1
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise DeviceError(
                f"{path} does not exist; plug the Entropy Key in or fix device="
            ) from None
        except PermissionError:
            raise DeviceError(
                f"{path}: permission denied; add your user to the dialout group"
            ) from None
        try:
            if stat.S_ISSOCK(st.st_mode):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.connect(path)
                except OSError:
                    sock.close()
                    raise
                self._sock = sock
                self._fd = sock.fileno()
            elif stat.S_ISCHR(st.st_mode):
                self._fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
                if os.isatty(self._fd):
                    self._make_raw(self._fd)
            else:
                raise DeviceError(
                    f"{path} is neither a tty nor a socket; point device= at the key's ttyACM"
                )
        except OSError as e:
            raise _os_error(e, self.label, "opening it") from None
        os.set_blocking(self._fd, False)

    @staticmethod
    def _make_raw(fd: int) -> None:
        # 8N1 raw, no echo, no flow control, no CR/LF translation (ekeyd stream.c);
        # the speed is irrelevant to a USB CDC device but 115200 is what ekeyd sets.
        attrs = termios.tcgetattr(fd)
        iflag, oflag, cflag, lflag = attrs[0], attrs[1], attrs[2], attrs[3]
        iflag &= ~(
            termios.BRKINT | termios.IGNPAR | termios.PARMRK | termios.INPCK | termios.ISTRIP
            | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON | termios.IXOFF
            | termios.IXANY | termios.IMAXBEL
        )
        iflag |= termios.IGNBRK
        oflag &= ~(termios.OPOST | termios.OCRNL | termios.ONOCR | termios.ONLRET)
        lflag &= ~(
            termios.ISIG | termios.ICANON | termios.IEXTEN | termios.ECHO | termios.ECHOE
            | termios.ECHOK | termios.ECHONL | termios.NOFLSH | termios.TOSTOP
        )
        cflag &= ~(termios.CSIZE | termios.CSTOPB | termios.PARENB | termios.PARODD
                   | termios.CRTSCTS)
        cflag |= termios.CS8 | termios.HUPCL | termios.CREAD | termios.CLOCAL
        attrs[0], attrs[1], attrs[2], attrs[3] = iflag, oflag, cflag, lflag
        attrs[4] = attrs[5] = termios.B115200
        attrs[6][termios.VMIN] = 1
        attrs[6][termios.VTIME] = 0
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        termios.tcflush(fd, termios.TCIOFLUSH)

    def read(self) -> bytes:
        if self._fd < 0:
            raise DeviceError(f"{self.label} is closed")
        try:
            ready, _, _ = select.select([self._fd], [], [], self.timeout_s)
            if not ready:
                raise DeviceError(
                    f"{self.label} sent nothing for {self.timeout_s:g} s; unplug and replug it, "
                    "and stop ekeyd if it is running"
                )
            data = os.read(self._fd, READ_CHUNK)
        except BlockingIOError:
            return self.read()
        except OSError as e:
            raise _os_error(e, self.label, "reading it") from None
        if not data:
            raise DeviceError(
                f"{self.label} was unplugged while reading; plug it back in and retry"
            )
        return data

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + self.timeout_s
        try:
            while view:
                left = max(0.0, deadline - time.monotonic())
                _, ready, _ = select.select([], [self._fd], [], left)
                if not ready:
                    raise DeviceError(f"{self.label} does not accept commands; replug it")
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as e:
            raise _os_error(e, self.label, "sending it a command") from None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        elif self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._sock = None
        self._fd = -1


def _os_error(e: OSError, label: str, doing: str) -> DeviceError:
    if e.errno in (errno.EACCES, errno.EPERM):
        return DeviceError(f"{label}: permission denied; add your user to the dialout group")
    if e.errno == errno.EBUSY:
        return DeviceError(f"{label} is busy; stop ekeyd or whatever else holds it")
    if e.errno in (errno.EIO, errno.ENODEV, errno.ENXIO, errno.ECONNRESET, errno.EPIPE):
        return DeviceError(f"{label} was unplugged while {doing}; plug it back in and retry")
    if e.errno in (errno.ENOENT, errno.ECONNREFUSED):
        return DeviceError(f"{label} is not there; plug the key in or fix device=")
    return DeviceError(f"{label}: {e.strerror or type(e).__name__} while {doing}; replug it")


# --------------------------------------------------------------------------- USB


class _EntropyKeyUsb(CdcSource):
    """pyusb plumbing only: find, detach cdc_acm, claim. Not registered as a source."""

    name = "entropykey-usb"
    description = "Entropy Key USB transport"
    product = "Entropy Key"
    ids: ClassVar[tuple[UsbId, ...]] = (ENTROPY_KEY,)

    def _start(self, link: UsbLink) -> None:
        # ekey-ulusbd sends no CDC requests (no line coding, no DTR): the key streams
        # frames regardless, so we only take the interfaces away from cdc_acm.
        self._open_cdc(link)

    def _stop(self, link: UsbLink) -> None:
        self.cdc = None

    def read(self, n: int) -> bytes:  # pragma: no cover - the Entropy Key source reads frames
        raise NotImplementedError


class _UsbTransport:
    def __init__(self, usb_source: _EntropyKeyUsb) -> None:
        self._src = usb_source
        link = usb_source._ensure_open()
        self.label = link.label
        cdc = usb_source.cdc
        assert cdc is not None
        # Use what the descriptors say; the real key has IN 0x81 and OUT 0x03.
        self._cdc = cdc

    def read(self) -> bytes:
        return self._cdc.read(FRAME_LEN, self._src.timeout_ms)

    def write(self, data: bytes) -> None:
        self._cdc.write(data)

    def close(self) -> None:
        self._src.close()


# --------------------------------------------------------------------------- the source


class EntropyKeySource(Source):
    name = "entropykey"
    description = "Simtec Entropy Key (USB 20df:0001): MAC-verified, decrypted frames"
    # Conditioned by the device; 7 bits/byte is ekeyd's own conservative default.
    min_entropy = 7.0
    sample_bits = 8
    raw = False
    extra = "usb"
    known_options = {
        "keyring": f"ekeyd's keyring file with the key's long-term key (default {DEFAULT_KEYRING})",
        "device": f"a tty or UNIX socket of the key, or {UDEV_DIR} (default: USB via pyusb)",
        "timeout": f"seconds without new entropy before giving up (default {DEFAULT_TIMEOUT_S:g})",
        "max_bad": f"frames that may fail their MAC or be garbled (default {DEFAULT_MAX_BAD})",
        **USB_OPTIONS,
        "serial": "the 16-character serial printed on the key's label",
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.keyring_path = str(options.get("keyring") or DEFAULT_KEYRING)
        self.device = options.get("device") or None
        self.timeout_s = positive_number(self.name, options, "timeout", DEFAULT_TIMEOUT_S,
                                         "seconds")
        self.max_bad = positive_whole_number(self.name, options, "max_bad", DEFAULT_MAX_BAD)
        serial = options.get("serial") or None
        self._serial: bytes | None = None
        if serial is not None:
            try:
                self._serial = pem_decode(str(serial).encode("ascii"))
            except (ProtocolError, UnicodeEncodeError):
                self._serial = None
            if self._serial is None or len(self._serial) != 12:
                raise UsageError(
                    f"serial={serial!r} is not an Entropy Key serial; use the 16 characters "
                    "printed on its label (also shown by lsusb -v)"
                )
        # The USB transport's own options, by name, so each read is visible where it is made.
        self._usb_options = {
            "serial": serial,
            "bus": options.get("bus"),
            "address": options.get("address"),
            "timeout_ms": options.get("timeout_ms"),
            "backend": options.get("backend"),
        }
        usb_only = [k for k in ("bus", "address", "timeout_ms", "backend")
                    if self._usb_options[k] not in (None, "")]
        if self.device is not None and usb_only:
            raise UsageError(
                f"entropykey option {usb_only[0]}= applies to the USB transport only and "
                "would be ignored with device=; remove one of them"
            )
        _EntropyKeyUsb(**self._usb_options)  # refuse a bad bus= or timeout_ms= now
        self._transport: _Transport | None = None
        self._session: HostSession | None = None
        self._failed: SourceError | None = None

    # ---- configuration
    def _keyring(self) -> dict[bytes, bytes]:
        try:
            text = Path(self.keyring_path).read_bytes()
        except FileNotFoundError:
            raise KeyringError(
                f"no keyring at {self.keyring_path}; install ekeyd and run ekey-rekey for "
                "this key, or point keyring= at the file"
            ) from None
        except PermissionError:
            raise KeyringError(
                f"cannot read the keyring {self.keyring_path} (it holds secret keys and is "
                "root-only); run as root or give this user read access"
            ) from None
        except OSError as e:
            raise KeyringError(
                f"cannot read the keyring {self.keyring_path} ({e.strerror}); check the path"
            ) from None
        keys = parse_keyring(text)
        if not keys:
            raise KeyringError(
                f"the keyring {self.keyring_path} holds no keys; run ekey-rekey for this key"
            )
        if self._serial is not None and self._serial not in keys:
            raise KeyringError(
                f"the keyring {self.keyring_path} has no key for serial "
                f"{serial_text(self._serial)}; run ekey-rekey for it"
            )
        return keys

    def _tty_path(self) -> str | None:
        """The tty/socket to use, or None for USB."""
        path = self.device
        if path is None:
            return None
        if os.path.isdir(path):
            entries = sorted(os.listdir(path))
            if self._serial is not None:
                name = serial_text(self._serial)
                if name not in entries:
                    raise DeviceError(f"no Entropy Key {name} in {path}; plug it in")
                return os.path.join(path, name)
            if len(entries) != 1:
                raise DeviceError(
                    f"{path} holds {len(entries)} Entropy Keys; choose one with serial="
                )
            return os.path.join(path, entries[0])
        return str(path)

    # ---- Source interface
    def available(self) -> Availability:
        try:
            keys = self._keyring()
        except SourceError as e:
            return Availability.no(str(e))
        detail = {"keyring": self.keyring_path, "keys": str(len(keys))}
        try:
            path = self._tty_path()
        except SourceError as e:
            return Availability.no(str(e), detail)
        if path is not None:
            detail["device"] = path
            if not os.path.exists(path):
                return Availability.no(f"{path} does not exist; plug the Entropy Key in", detail)
            if not os.access(path, os.R_OK | os.W_OK):
                return Availability.no(
                    f"{path}: permission denied; add your user to the dialout group", detail
                )
            return Availability.yes(detail)
        if import_pyusb() is None:
            return Availability.no(
                "no device= given and pyusb is missing; install the usb extra "
                "(pip install 'seedtool[usb]') or give device=/dev/ttyACMn",
                detail,
            )
        usb_avail = _EntropyKeyUsb(**self._usb_options).available()
        merged = dict(detail)
        merged.update(usb_avail.detail or {})
        if not usb_avail.ok:
            return Availability.no(usb_avail.reason, merged)
        return Availability.yes(merged)

    def _open(self) -> HostSession:
        if self._failed is not None:
            raise self._failed
        if self._session is not None:
            return self._session
        keys = self._keyring()
        path = self._tty_path()
        transport: _Transport
        if path is not None:
            transport = _StreamTransport(path, self.timeout_s)
        else:
            if import_pyusb() is None:
                raise SourceError(
                    "source 'entropykey' needs pyusb for USB, or device=/dev/ttyACMn; "
                    "install the usb extra: pip install 'seedtool[usb]'"
                )
            transport = _UsbTransport(_EntropyKeyUsb(**self._usb_options))
        session = HostSession(keys, os.urandom, serial=self._serial, max_rejected=self.max_bad)
        self._transport = transport
        self._session = session
        session.start()
        try:
            transport.write(session.take_writes())
        except BaseException:
            self.close()
            raise
        return session

    def read(self, n: int) -> bytes:
        if n < 0:
            raise ValueError("n must be >= 0")
        session = self._open()
        transport = self._transport
        assert transport is not None
        try:
            deadline = time.monotonic() + self.timeout_s
            have = session.available
            while session.available < n:
                session.receive(transport.read())
                out = session.take_writes()
                if out:
                    transport.write(out)
                if session.available > have:
                    have = session.available
                    deadline = time.monotonic() + self.timeout_s
                elif time.monotonic() > deadline:
                    raise DeviceError(
                        f"{transport.label} sent no entropy for {self.timeout_s:g} s "
                        f"({session.stats.frames_ok} good frames, {session.stats.rekeys} re-keys); "
                        "unplug and replug it and check it with ekeydctl"
                    )
        except SourceError as e:
            # a device that failed, was tampered with or went away is not used again
            self._failed = e
            self.close()
            raise
        return session.take_entropy(n)

    @property
    def stats(self) -> dict[str, int | str]:
        """Counts and device health readings only (safe to show)."""
        if self._session is None:
            return {}
        s = self._session.stats
        out: dict[str, int | str] = {
            "frames_ok": s.frames_ok,
            "frames_rejected": s.frames_rejected,
            "framing_errors": s.framing_errors,
            "entropy_frames": s.entropy_frames,
            "rekeys": s.rekeys,
        }
        out.update(s.info)
        if self._session.serial is not None:
            out["serial"] = serial_text(self._session.serial)
        return out

    def close(self) -> None:
        transport, self._transport = self._transport, None
        self._session = None
        if transport is not None:
            transport.close()
