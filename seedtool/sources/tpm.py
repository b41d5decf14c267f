"""A TPM 2.0's random number generator, through TPM2_GetRandom.

Transports:

* the kernel's character device: `/dev/tpmrm0` (the in-kernel resource manager,
  shareable), else `/dev/tpm0` (one user at a time); `device=PATH` picks another.
  A command is one write(2); the reply is read until the size in its header is
  satisfied, so a device that hands the reply over in pieces (a pty) works too.
* a TCP socket, `tcp=HOST:PORT`: `protocol=swtpm` (default) sends bare TPM commands,
  which is what `swtpm socket --tpm2 --server type=tcp,...` speaks on its server port;
  `protocol=mssim` wraps them as the Microsoft/IBM simulator does on port 2321
  (TPM_SEND_COMMAND = 8, locality byte, UINT32 size, command; the reply is UINT32 size,
  response, UINT32 0; ms-tpm-20-ref TPMCmd/Simulator/include/TpmTcpProtocol.h).

The command (TPM 2.0 Library Part 3, TPM2_GetRandom): tag TPM_ST_NO_SESSIONS 0x8001,
UINT32 size 12, command code 0x17B, UINT16 bytesRequested. The reply: tag, UINT32
size, UINT32 response code, then a TPM2B_DIGEST (UINT16 count, bytes). A TPM returns at
most its largest digest size per call (Part 3: "the TPM may return fewer"), so `read`
loops. Warnings that mean "try again" are retried with a short back-off: TPM_RC_RETRY
0x922, TPM_RC_YIELDED 0x908, TPM_RC_CANCELED 0x909 and TPM_RC_TESTING 0x90A (self-test
running; values from TPM 2.0 Part 2 table 16, as in tpm2-tss tss2_tpm2_types.h). A fresh
simulator answers TPM_RC_INITIALIZE 0x100 until TPM2_Startup(TPM_SU_CLEAR) (code 0x144);
this module sends that once and tries again. Any other code is an error that names it.

Every reply is outside input: its size, tag, response code and count are checked
before a byte of it is used, and a reply longer than its header says is refused.

`raw = False` and `min_entropy = 8`: GetRandom returns the output of the TPM's
DRBG (Part 1, "Random Number Generator"), i.e. conditioned data.

Nothing read from the TPM is logged or put into an exception message.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from typing import Any

from ..shared.errors import DeviceError, UsageError
from ._socket import ReadTimeout as _Timeout
from ._socket import recv_exact
from ._socket import remaining as _remaining
from .base import Availability, Source, parse_host_port, positive_number

DEVICES = ("/dev/tpmrm0", "/dev/tpm0")

TPM_ST_NO_SESSIONS = 0x8001
TPM_ST_SESSIONS = 0x8002
#: TPM_TAG_RSP_COMMAND of a TPM 1.2, which answers a 2.0 command with TPM_BADTAG
TPM12_TAG_RSP_COMMAND = 0x00C4
TPM_CC_STARTUP = 0x144
TPM_CC_GET_RANDOM = 0x17B
TPM_SU_CLEAR = 0x0000

RC_SUCCESS = 0x000
RC_INITIALIZE = 0x100
RC_FAILURE = 0x101
RETRY_CODES = {0x922: "TPM_RC_RETRY", 0x908: "TPM_RC_YIELDED", 0x909: "TPM_RC_CANCELED",
               0x90A: "TPM_RC_TESTING"}
RC_NAMES = {
    RC_INITIALIZE: "TPM_RC_INITIALIZE",
    RC_FAILURE: "TPM_RC_FAILURE",
    0x143: "TPM_RC_COMMAND_CODE",
    0x0095: "TPM_RC_SIZE",
    0x0084: "TPM_RC_VALUE",
    0x1E: "TPM_BADTAG (TPM 1.2)",
    **RETRY_CODES,
}

HEADER = struct.Struct(">HII")
#: the kernel's TPM_BUFSIZE; no TPM 2.0 reply to GetRandom comes close
MAX_RESPONSE = 4096
#: bytes asked for per call: the largest digest a TPM implements (SHA-512)
PER_CALL = 64
#: mssim framing (TpmTcpProtocol.h)
MSSIM_SEND_COMMAND = 8

#: overall deadline of one read(n): BASE_TIMEOUT + n / MIN_RATE seconds unless timeout=
BASE_TIMEOUT = 10.0
MIN_RATE = 500.0
CONNECT_TIMEOUT = 5.0
BACKOFF_FIRST, BACKOFF_MAX = 0.01, 0.5

UDEV_HINT = (
    "add your user to the 'tss' group (Debian's tpm-udev rule gives /dev/tpmrm0 to "
    "group tss, mode 0660) or install a rule such as "
    "'KERNEL==\"tpmrm[0-9]*\", GROUP=\"tss\", MODE=\"0660\"'"
)


class TpmError(DeviceError):
    """The TPM answered with a response code other than success, or an invalid reply.

    `rc` is the response code when the TPM sent one (None for malformed replies).
    """

    def __init__(self, message: str, rc: int | None = None) -> None:
        super().__init__(message)
        self.rc = rc


def rc_name(rc: int) -> str:
    name = RC_NAMES.get(rc)
    return f"0x{rc:03X} {name}" if name else f"0x{rc:03X}"


def get_random_command(n: int) -> bytes:
    return struct.pack(">HIIH", TPM_ST_NO_SESSIONS, 12, TPM_CC_GET_RANDOM, n)


def startup_command() -> bytes:
    return struct.pack(">HIIH", TPM_ST_NO_SESSIONS, 12, TPM_CC_STARTUP, TPM_SU_CLEAR)


def parse_header(reply: bytes, where: str) -> int:
    """Check a complete reply's framing and return its response code."""
    if len(reply) < HEADER.size:
        raise TpmError(f"{where} sent a {len(reply)}-byte reply, shorter than a TPM header; "
                       "it is not a TPM 2.0 or the link is broken")
    tag, size, rc = HEADER.unpack_from(reply)
    if tag == TPM12_TAG_RSP_COMMAND:
        raise TpmError(f"{where} is a TPM 1.2, which has no TPM2_GetRandom; "
                       "use a TPM 2.0 or another source", rc)
    if tag not in (TPM_ST_NO_SESSIONS, TPM_ST_SESSIONS):
        raise TpmError(f"{where} sent a reply with unknown tag 0x{tag:04X}; "
                       "it is not a TPM 2.0 or the link is broken")
    if size != len(reply):
        raise TpmError(f"{where} sent {len(reply)} bytes for a reply whose header says {size}; "
                       "the link to the TPM is broken")
    if rc != RC_SUCCESS and size != HEADER.size:
        raise TpmError(f"{where} sent an error reply ({rc_name(rc)}) with a {size}-byte body; "
                       "a TPM 2.0 error reply is a bare header, so the link is broken", rc)
    return int(rc)


def parse_get_random(reply: bytes, requested: int, where: str) -> bytes:
    """The random bytes of a successful GetRandom reply, after strict checks."""
    tag, size, _ = HEADER.unpack_from(reply)
    if tag != TPM_ST_NO_SESSIONS:
        raise TpmError(f"{where} answered a session-less TPM2_GetRandom with a session tag; "
                       "the link to the TPM is broken")
    if size < HEADER.size + 2:
        raise TpmError(f"{where} sent a {size}-byte TPM2_GetRandom reply with no count field; "
                       "the TPM or the link is broken")
    (count,) = struct.unpack_from(">H", reply, HEADER.size)
    if size != HEADER.size + 2 + count:
        raise TpmError(f"{where} sent a TPM2_GetRandom reply whose count ({count}) does not "
                       f"match its size ({size}); the TPM or the link is broken")
    if count > requested:
        raise TpmError(f"{where} returned {count} random bytes when {requested} were asked for; "
                       "the TPM or the link is broken")
    if count == 0:
        raise TpmError(f"{where} returned no random bytes; the TPM's RNG is not working")
    return reply[HEADER.size + 2:]


class _Transport:
    """Sends one command and returns one complete, length-checked reply."""

    where: str

    def transact(self, command: bytes, deadline: float) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _DeviceTransport(_Transport):
    def __init__(self, path: str) -> None:
        self.path = path
        self.where = path
        try:
            # O_NOCTTY: a pty standing in for a TPM must not become our controlling terminal
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as e:
            raise _device_error(path, e, "open") from None

    def transact(self, command: bytes, deadline: float) -> bytes:
        try:
            view = memoryview(command)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
            return self._read_reply(deadline)
        except OSError as e:
            raise _device_error(self.path, e, "read/write") from None

    def _read_reply(self, deadline: float) -> bytes:
        buf = bytearray()
        expected: int | None = None
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while expected is None or len(buf) < expected:
            left = _remaining(deadline)
            if not poller.poll(max(1, int(left * 1000))):
                continue  # the loop re-checks the deadline
            want = MAX_RESPONSE - len(buf) if expected is None else expected - len(buf)
            chunk = os.read(self.fd, max(want, 1))
            if not chunk:
                raise DeviceError(f"{self.where} closed after {len(buf)} bytes of a reply; "
                               "the TPM went away, check its driver")
            buf += chunk
            if expected is None and len(buf) >= HEADER.size:
                _, expected, _ = HEADER.unpack_from(buf)
                if not HEADER.size <= expected <= MAX_RESPONSE:
                    raise TpmError(f"{self.where} sent a reply header claiming {expected} bytes; "
                                   "it is not a TPM 2.0 or the link is broken")
            if expected is not None and len(buf) > expected:
                raise TpmError(f"{self.where} sent more bytes than its reply header says; "
                               "it is not a TPM 2.0 or the link is broken")
        return bytes(buf)

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


class _TcpTransport(_Transport):
    def __init__(self, host: str, port: int, mssim: bool, locality: int) -> None:
        self.where = f"the TPM at {host}:{port}"
        self.mssim = mssim
        self.locality = locality
        try:
            self.sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        except socket.timeout:
            raise DeviceError(f"connecting to {self.where} timed out; check the host, port "
                              "and firewall") from None
        except OSError as e:
            if e.errno == errno.ECONNREFUSED:
                raise DeviceError(
                    f"nothing is listening at {host}:{port}; start the simulator, e.g. "
                    f"'swtpm socket --tpm2 --server type=tcp,port={port} "
                    "--ctrl type=tcp,port=PORT2 --flags not-need-init --tpmstate dir=DIR'"
                ) from None
            raise DeviceError(f"cannot connect to {self.where} "
                              f"({e.strerror or 'error'}); check tcp=HOST:PORT") from None

    def _recv_exact(self, n: int, deadline: float) -> bytes:
        return recv_exact(self.sock, n, deadline, f"{self.where} closed the connection "
                          "mid-reply; check that the simulator is still running")

    def transact(self, command: bytes, deadline: float) -> bytes:
        try:
            self.sock.settimeout(_remaining(deadline))
            if self.mssim:
                self.sock.sendall(struct.pack(">IBI", MSSIM_SEND_COMMAND, self.locality,
                                              len(command)) + command)
                (size,) = struct.unpack(">I", self._recv_exact(4, deadline))
                if not HEADER.size <= size <= MAX_RESPONSE:
                    raise TpmError(f"{self.where} framed a reply of {size} bytes; "
                                   "it does not speak the mssim protocol (try protocol=swtpm)")
                reply = self._recv_exact(size, deadline)
                (ack,) = struct.unpack(">I", self._recv_exact(4, deadline))
                if ack != 0:
                    raise TpmError(f"{self.where} ended a reply with a non-zero mssim "
                                   "acknowledgement; it does not speak the mssim protocol")
                return reply
            self.sock.sendall(command)
            head = self._recv_exact(HEADER.size, deadline)
            _, size, _ = HEADER.unpack(head)
            if not HEADER.size <= size <= MAX_RESPONSE:
                raise TpmError(f"{self.where} sent a reply header claiming {size} bytes; "
                               "it is not a TPM 2.0 (for the MS simulator use protocol=mssim)")
            return head + self._recv_exact(size - HEADER.size, deadline)
        except socket.timeout:
            raise _Timeout from None
        except OSError as e:
            raise DeviceError(
                f"the connection to {self.where} failed ({e.strerror or 'error'}); "
                "check that it is still running"
            ) from None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _device_error(path: str, e: OSError, doing: str) -> DeviceError:
    if e.errno == errno.ENOENT:
        return DeviceError(f"{path} does not exist; load the TPM driver (tpm_tis, tpm_crb) "
                           "or pass device=PATH or tcp=HOST:PORT")
    if e.errno in (errno.EACCES, errno.EPERM):
        return DeviceError(f"permission denied opening {path}; {UDEV_HINT}")
    if e.errno == errno.EBUSY:
        return DeviceError(f"{path} is in use by another program (only one may open /dev/tpm0); "
                           "use /dev/tpmrm0, or stop the other user such as tpm2-abrmd")
    if e.errno in (errno.ENODEV, errno.ENXIO, errno.EIO, errno.EPIPE):
        return DeviceError(f"{path} went away or has no TPM behind it "
                           f"({errno.errorcode[e.errno]} on {doing}); check the TPM driver")
    reason = e.strerror or errno.errorcode.get(e.errno or 0, "error")
    return DeviceError(f"{doing} of {path} failed ({reason}); check the TPM and its driver")


class TpmSource(Source):
    name = "tpm"
    description = "TPM 2.0 TPM2_GetRandom via /dev/tpmrm0 or a swtpm/MS-simulator socket"
    min_entropy = 8.0
    raw = False
    known_options = {
        "device": f"the TPM character device (default the first of {', '.join(DEVICES)})",
        "tcp": "HOST:PORT of a swtpm or MS TPM simulator command socket",
        "protocol": "swtpm (default) or mssim, the simulator's framing on tcp=",
        "locality": "TPM locality 0..4 sent with protocol=mssim (default 0)",
        "timeout": f"seconds one read may take "
        f"(default {BASE_TIMEOUT:g} + 1 s per {MIN_RATE:g} bytes)",
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.device: str | None = options.get("device") or None
        tcp = options.get("tcp")
        self.tcp = parse_host_port(str(tcp), "tpm", "127.0.0.1:2321") if tcp else None
        if self.device and self.tcp:
            raise UsageError("tpm takes either device= or tcp=, not both")
        protocol = str(options.get("protocol") or "swtpm")
        if protocol not in ("swtpm", "mssim"):
            raise UsageError(f"tpm protocol= must be 'swtpm' or 'mssim', not '{protocol}'")
        if protocol == "mssim" and not self.tcp:
            raise UsageError("tpm protocol=mssim needs tcp=HOST:PORT")
        self.mssim = protocol == "mssim"
        locality = str(options.get("locality") or "0")
        # isdigit() alone also takes digits int() cannot read, such as '²'
        if not (locality.isascii() and locality.isdigit()) or int(locality) > 4:
            raise UsageError(f"tpm locality= must be 0..4, not '{locality}'")
        if options.get("locality") not in (None, "") and not self.mssim:
            # only the mssim framing carries a locality; anywhere else it would be ignored
            raise UsageError("tpm locality= is sent only with protocol=mssim; remove it or "
                             "add protocol=mssim,tcp=HOST:PORT")
        self.locality = int(locality)
        self.timeout = positive_number(self.name, options, "timeout", None, "seconds")
        self._t: _Transport | None = None
        self._startup_sent = False
        #: how often the TPM asked us to come back (RETRY/YIELDED/CANCELED/TESTING)
        self.retries = 0

    @property
    def where(self) -> str:
        if self.tcp:
            return f"{self.tcp[0]}:{self.tcp[1]}"
        return self._device_path() or " or ".join(DEVICES)

    def _device_path(self) -> str | None:
        if self.device:
            return str(self.device)
        for path in DEVICES:
            if os.path.exists(path):
                return path
        return None

    def _transport(self) -> _Transport:
        if self._t is None:
            if self.tcp:
                self._t = _TcpTransport(self.tcp[0], self.tcp[1], self.mssim, self.locality)
            else:
                path = self._device_path()
                if path is None:
                    raise DeviceError(
                        "no TPM device (/dev/tpmrm0 or /dev/tpm0); load the TPM driver "
                        "(tpm_tis, tpm_crb), enable the TPM in firmware, or use tcp=HOST:PORT "
                        "for swtpm"
                    )
                self._t = _DeviceTransport(path)
        return self._t

    def available(self) -> Availability:
        detail = {"transport": "tcp" if self.tcp else "device", "where": self.where}
        if self.tcp:
            detail["protocol"] = "mssim" if self.mssim else "swtpm"
        try:
            # A real probe: one small GetRandom, discarded. A TPM that cannot answer it
            # cannot serve a seed, and asking is cheap (well under a millisecond of TPM time).
            self._get_random(1, time.monotonic() + (self.timeout or BASE_TIMEOUT))
        except DeviceError as e:
            self.close()
            return Availability.no(str(e), detail)
        return Availability.yes(detail)

    def _command(self, command: bytes, deadline: float, what: str) -> bytes:
        """One command, retried while the TPM asks for that; returns a success reply."""
        t = self._transport()
        backoff = BACKOFF_FIRST
        while True:
            try:
                reply = t.transact(command, deadline)
            except _Timeout:
                self.close()
                raise DeviceError(f"{t.where} did not answer {what} in time; check that the TPM "
                                  "is working, or raise timeout=SECONDS") from None
            except DeviceError:
                self.close()
                raise
            try:
                rc = parse_header(reply, t.where)
            except TpmError:
                self.close()  # framing is lost: the next command starts on a fresh link
                raise
            if rc == RC_SUCCESS:
                return reply
            if rc in RETRY_CODES:
                self.retries += 1
                if time.monotonic() + backoff >= deadline:
                    raise TpmError(f"{t.where} kept answering {what} with {rc_name(rc)} until "
                                   "the deadline; the TPM is busy, try again later", rc)
                time.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            raise TpmError(self._rc_message(t.where, what, rc), rc)

    @staticmethod
    def _rc_message(where: str, what: str, rc: int) -> str:
        if rc == RC_FAILURE:
            return (f"{where} is in failure mode ({rc_name(rc)}) and refused {what}; reboot, or "
                    "for swtpm start it with --flags not-need-init (without it, a socket swtpm "
                    "refuses everything until it receives CMD_INIT on its control port)")
        if rc == RC_INITIALIZE:
            return (f"{where} still answers {rc_name(rc)} after TPM2_Startup; the TPM was not "
                    "started, restart it or its simulator")
        return (f"{where} refused {what} with response code {rc_name(rc)}; check the TPM's "
                "state with tpm2_getcap, or use another source")

    def _get_random(self, n: int, deadline: float) -> bytes:
        command = get_random_command(n)
        try:
            reply = self._command(command, deadline, "TPM2_GetRandom")
        except TpmError as e:
            if e.rc != RC_INITIALIZE or self._startup_sent:
                raise
            # A fresh simulator (or a TPM the firmware did not start): start it, once per
            # source. A TPM that is already started answers Startup with TPM_RC_INITIALIZE.
            self._startup_sent = True
            try:
                self._command(startup_command(), deadline, "TPM2_Startup")
            except TpmError as e2:
                if e2.rc != RC_INITIALIZE:
                    raise
            reply = self._command(command, deadline, "TPM2_GetRandom")
        try:
            return parse_get_random(reply, n, self._transport().where)
        except TpmError:
            self.close()  # a TPM (or link) that lies about its reply is not trusted further
            raise

    def read(self, n: int) -> bytes:
        if n < 0:
            raise ValueError("n must not be negative")
        budget = self.timeout if self.timeout is not None else BASE_TIMEOUT + n / MIN_RATE
        deadline = time.monotonic() + budget
        out = bytearray()
        while len(out) < n:
            out += self._get_random(min(PER_CALL, n - len(out)), deadline)
        return bytes(out)

    def close(self) -> None:
        t, self._t = self._t, None
        if t is not None:
            t.close()
