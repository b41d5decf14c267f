"""A client for the EGD (Entropy Gathering Daemon) socket protocol.

EGD's byte protocol is served over a UNIX or TCP stream socket by ekeyd (Simtec
Entropy Key daemon, `EGDUnixSocket` / `EGDTCPSocket` in ekeyd.conf(5)) and other
daemons. The commands, from ekeyd 1.1.5 `doc/README.egd-protocol` (Debian package
ekeyd, /usr/share/doc/ekeyd/README.egd-protocol); multi-byte values are big-endian:

    0x00                  -> U32 entropy available, in bits
    0x01 U8 n             -> U8 k (k <= n), then k bytes        (non-blocking read)
    0x02 U8 n             -> n bytes, streamed as they come      (blocking read)
    0x03 U16 bits U8 n .. (add entropy; not used here)
    0x04                  -> U8 len, then len bytes: the daemon's PID as text

Every reply is outside input: a non-blocking count larger than asked, a PID that is
not a number, a connection that ends mid-reply, or bytes arriving when no reply is
due are each refused, and the connection is dropped so the next command starts
clean. A blocking read that misses its deadline also drops the connection, because
the daemon may still be streaming the rest of that reply.

Where it connects: `path=SOCKET`, or `tcp=HOST:PORT`; with neither, ekeyd's documented
defaults, the UNIX socket `/etc/entropy` if it exists, else TCP 127.0.0.1:8888
(ekeyd.conf's examples, and ekeyd-egd-linux's default HOST and PORT).

`raw = False`, `min_entropy = 8`: the protocol cannot say how good its bytes are, and
ekeyd documents that its EGD output is meant as 8 shannons per byte (the comment on
EGD output in ekeyd's ekeyd.conf); set min_entropy= for a weaker daemon.

The daemon's output is never logged or put into an exception message.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import stat
import struct
import time
from typing import Any

from ..shared.errors import DeviceError, UsageError
from ._socket import ReadTimeout as _Timeout
from ._socket import recv_exact
from .base import Availability, Source, parse_host_port, positive_number

CMD_LEVEL, CMD_READ_NONBLOCKING, CMD_READ_BLOCKING, CMD_PID = 0x00, 0x01, 0x02, 0x04
MAX_REQUEST = 255  # the request length is one byte
DEFAULT_PATH = "/etc/entropy"
DEFAULT_TCP = ("127.0.0.1", 8888)
CONNECT_TIMEOUT = 5.0
#: overall deadline of one read(n): BASE_TIMEOUT + n / MIN_RATE seconds unless timeout=
BASE_TIMEOUT = 10.0
MIN_RATE = 500.0
BACKOFF_FIRST, BACKOFF_MAX = 0.01, 0.5

SOCKET_PERMISSION_HINT = (
    "ekeyd makes its socket mode 0600 unless told otherwise: give EGDUnixSocket a mode "
    "and group, e.g. EGDUnixSocket(\"/etc/entropy\", \"0660\", \"root\", \"entropyusers\") "
    "in ekeyd.conf, and add your user to that group"
)


class EgdProtocolError(DeviceError):
    """The daemon sent a reply that breaks the EGD protocol."""


class EgdSource(Source):
    name = "egd"
    description = "an EGD socket (ekeyd and other Entropy Gathering Daemons), UNIX or TCP"
    min_entropy = 8.0
    raw = False
    known_options = {
        "path": f"the daemon's UNIX socket (default {DEFAULT_PATH} if it exists)",
        "tcp": f"HOST:PORT of the daemon's TCP socket (default {DEFAULT_TCP[0]}:{DEFAULT_TCP[1]})",
        "mode": "blocking (default) or nonblocking EGD reads",
        "timeout": f"seconds one read may take "
        f"(default {BASE_TIMEOUT:g} + 1 s per {MIN_RATE:g} bytes)",
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        path, tcp = options.get("path"), options.get("tcp")
        if path and tcp:
            raise UsageError("egd takes either path= or tcp=, not both")
        self.path: str | None = str(path) if path else None
        self.tcp: tuple[str, int] | None = (
            parse_host_port(str(tcp), "egd", "127.0.0.1:8888") if tcp else None
        )
        if self.path is None and self.tcp is None:
            if _is_socket(DEFAULT_PATH):
                self.path = DEFAULT_PATH
            else:
                self.tcp = DEFAULT_TCP
        mode = str(options.get("mode") or "blocking")
        if mode not in ("blocking", "nonblocking"):
            raise UsageError(f"egd mode= must be 'blocking' or 'nonblocking', not '{mode}'")
        self.blocking = mode == "blocking"
        self.timeout = positive_number(self.name, options, "timeout", None, "seconds")
        self._sock: socket.socket | None = None

    @property
    def where(self) -> str:
        if self.path is not None:
            return self.path
        assert self.tcp is not None
        return f"{self.tcp[0]}:{self.tcp[1]}"

    # -- connection -------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        where = self.where
        try:
            if self.path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(CONNECT_TIMEOUT)
                try:
                    sock.connect(self.path)
                except BaseException:
                    sock.close()
                    raise
            else:
                assert self.tcp is not None
                sock = socket.create_connection(self.tcp, timeout=CONNECT_TIMEOUT)
        except socket.timeout:
            raise DeviceError(f"connecting to the EGD socket {where} timed out; "
                              "check that the daemon is running and reachable") from None
        except OSError as e:
            raise self._connect_error(e) from None
        self._sock = sock
        return sock

    def _connect_error(self, e: OSError) -> DeviceError:
        where = self.where
        if e.errno == errno.ENOENT:
            return DeviceError(f"there is no EGD socket at {where}; start the daemon "
                               "(e.g. ekeyd with EGDUnixSocket) or pass path= or tcp=")
        if e.errno in (errno.EACCES, errno.EPERM):
            return DeviceError(f"permission denied connecting to {where}; "
                               f"{SOCKET_PERMISSION_HINT}")
        if e.errno == errno.ECONNREFUSED:
            what = "the socket file is stale" if self.path else "nothing is listening there"
            return DeviceError(f"the EGD daemon at {where} refused the connection ({what}); "
                               "start it, or pass path= or tcp= for the right one")
        if e.errno == errno.ENOTSOCK:
            return DeviceError(f"{where} is not a socket; pass path= for the daemon's socket")
        reason = e.strerror or errno.errorcode.get(e.errno or 0, "error")
        return DeviceError(f"cannot connect to the EGD daemon at {where} ({reason}); "
                           "check path= or tcp=")

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def close(self) -> None:
        self._drop()

    # -- one exchange ----------------------------------------------------------------

    def _ensure_idle(self, sock: socket.socket) -> None:
        """No byte may arrive before we ask: if one has, the daemon broke the protocol."""
        sock.settimeout(0.0)  # a poll, not a wait: Python would otherwise wait out the timeout
        try:
            pending = sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            raise DeviceError(f"the connection to the EGD daemon at {self.where} failed "
                              f"({e.strerror or 'error'}); check that it is running") from None
        if pending:
            raise EgdProtocolError(f"the EGD daemon at {self.where} sent bytes nobody asked "
                                   "for; it does not speak the EGD protocol correctly")
        # b"" means the daemon closed the connection; reconnect once before giving up
        raise ConnectionResetError(errno.ECONNRESET, "closed")

    def _recv_exact(self, sock: socket.socket, n: int, deadline: float, got: list[int]) -> bytes:
        return recv_exact(sock, n, deadline, f"the EGD daemon at {self.where} closed the "
                          "connection mid-reply; check that it is still running", got)

    def _exchange(self, request: bytes, reply: Any, deadline: float) -> Any:
        """Send one command and read its reply with `reply(recv)`; drops the link on failure."""
        for attempt in (0, 1):
            sock = self._connect()
            try:
                self._ensure_idle(sock)
            except ConnectionResetError:
                self._drop()  # the daemon closed an idle connection: a fresh one, once
                if attempt:
                    raise DeviceError(f"the EGD daemon at {self.where} keeps closing the "
                                      "connection; check its logs") from None
                continue
            except DeviceError:
                self._drop()
                raise
            got = [0]
            try:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                sock.sendall(request)
                return reply(functools.partial(self._recv_exact, sock, deadline=deadline, got=got))
            except _Timeout as t:
                self._drop()
                t.partial = got[0]
                raise
            except DeviceError:
                self._drop()
                raise
            except OSError as e:
                self._drop()
                raise DeviceError(f"the connection to the EGD daemon at {self.where} failed "
                                  f"({e.strerror or 'error'}); check that it is running") from None
        raise AssertionError("unreachable")

    # -- the protocol's commands -------------------------------------------------------

    def _deadline(self, budget: float | None = None) -> float:
        return time.monotonic() + (budget if budget is not None else self.timeout or BASE_TIMEOUT)

    def entropy_level(self) -> int:
        """Command 0x00: the daemon's own count of available entropy, in bits."""
        try:
            raw = self._exchange(bytes([CMD_LEVEL]), lambda recv: recv(4), self._deadline())
        except _Timeout:
            raise DeviceError(f"the EGD daemon at {self.where} did not answer in time; "
                              "check that it is running") from None
        return int(struct.unpack(">I", raw)[0])

    def daemon_pid(self) -> str:
        """Command 0x04: the daemon's PID as the text it sends (ekeyd sends "-1")."""

        def reply(recv: Any) -> bytes:
            (length,) = recv(1)
            return bytes(recv(length)) if length else b""

        try:
            text = self._exchange(bytes([CMD_PID]), reply, self._deadline())
        except _Timeout:
            raise DeviceError(f"the EGD daemon at {self.where} did not answer in time; "
                              "check that it is running") from None
        s = text.decode("ascii", errors="replace")
        if not s or not (s.isdigit() or (s.startswith("-") and s[1:].isdigit())):
            self._drop()
            raise EgdProtocolError(f"the EGD daemon at {self.where} sent a PID reply that is "
                                   "not a number; it does not speak the EGD protocol")
        return s

    def _read_blocking(self, n: int, deadline: float) -> bytes:
        return bytes(self._exchange(bytes([CMD_READ_BLOCKING, n]),
                                    lambda recv: recv(n), deadline))

    def _read_nonblocking(self, n: int, deadline: float) -> bytes:
        def reply(recv: Any) -> bytes:
            (k,) = recv(1)
            if k > n:
                raise EgdProtocolError(f"the EGD daemon at {self.where} offered {k} bytes when "
                                       f"{n} were asked for; it does not speak the EGD protocol")
            return bytes(recv(k)) if k else b""

        return bytes(self._exchange(bytes([CMD_READ_NONBLOCKING, n]), reply, deadline))

    # -- Source ------------------------------------------------------------------------

    def available(self) -> Availability:
        detail: dict[str, str] = {
            "socket": f"unix:{self.path}" if self.path is not None else f"tcp:{self.where}",
            "mode": "blocking" if self.blocking else "nonblocking",
        }
        try:
            detail["entropy_bits"] = str(self.entropy_level())
            detail["pid"] = self.daemon_pid()
        except DeviceError as e:
            self._drop()
            return Availability.no(str(e), detail)
        return Availability.yes(detail)

    def read(self, n: int) -> bytes:
        if n < 0:
            raise ValueError("n must not be negative")
        budget = self.timeout if self.timeout is not None else BASE_TIMEOUT + n / MIN_RATE
        deadline = time.monotonic() + budget
        out = bytearray()
        backoff = BACKOFF_FIRST
        while len(out) < n:
            want = min(MAX_REQUEST, n - len(out))
            try:
                if self.blocking:
                    chunk = self._read_blocking(want, deadline)
                else:
                    chunk = self._read_nonblocking(want, deadline)
            except _Timeout as t:
                raise DeviceError(
                    f"the EGD daemon at {self.where} delivered {len(out) + t.partial} of {n} "
                    "bytes before "
                    "the deadline; check that it has entropy to give (its level is reported by "
                    "`seedtool sources`), or raise timeout=SECONDS"
                ) from None
            out += chunk
            if chunk:
                backoff = BACKOFF_FIRST
            elif not self.blocking:
                if time.monotonic() + backoff >= deadline:
                    raise DeviceError(
                        f"the EGD daemon at {self.where} had only {len(out)} of {n} bytes "
                        "before the deadline; wait for its pool to fill, use mode=blocking, "
                        "or raise timeout=SECONDS"
                    )
                time.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
        return bytes(out)


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False
