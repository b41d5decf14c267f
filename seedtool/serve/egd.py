"""The EGD listener of `seedtool serve`: entropy for QEMU's rng-egd and other EGD clients.

The protocol (ekeyd 1.1.5 `doc/README.egd-protocol`; every multi-byte value big-endian):

    0x00              -> U32 entropy level in bits
    0x01 U8 n         -> U8 k, then k bytes              (non-blocking read, k <= n)
    0x02 U8 n         -> exactly n bytes                 (blocking read)
    0x03 U16 bits U8 n, n bytes                          (add entropy: refused, see below)
    0x04              -> U8 len, then the PID as ASCII

QEMU's rng-egd backend (qemu backends/rng-egd.c, `rng_egd_request_entropy`) sends only
`0x02 n` with 1 <= n <= 255, several back to back on one connection without waiting
for the answers, and matches the bytes it receives to its requests in order; so every
connection is served strictly in order, one request after the other.

What is refused, and how:
- 0x03 (a client adding entropy): the daemon's output comes only from its health-tested
  sources through the DRBG, so written bytes are read (their announced length) and
  dropped, with a log line; the connection stays open, as EGD clients expect no answer.
- an unknown command byte, a read of length 0 (no EGD client asks for nothing; the
  one-byte length cannot exceed 255, which `MAX_REQUEST` allows), a request whose
  argument does not arrive within `ARG_TIMEOUT` or never arrives: a log line and that
  connection closed; no other connection notices.

Many connections at once (one per VM): asyncio, one `asyncio.Protocol` per connection
on one event loop, because the work per request is a few microseconds of DRBG output
and the rest is waiting on sockets; a thread per connection would cost a stack each and
make "thousands of connections" a memory problem (and the GIL would serialise them
anyway), while here a connection costs its buffers only. Buffers are bounded: past
`READ_LIMIT` unparsed bytes the connection stops reading (the kernel's socket buffer
then pushes back on the client), and once its unsent answers pass `WRITE_HIGH` it
parses nothing more until they drain. A client that stops reading holds only itself,
and is closed after `STALL_TIMEOUT`. Each connection has a token bucket (`rate` bytes/s, one
second of burst) and byte accounting; at most `max_clients` connections are served.

While the core is not serving (a --require source unhealthy), blocking reads wait and
non-blocking reads answer 0 bytes, level 0: for virtio-rng, waiting is the safe failure.
Only ids, counts and reasons are logged, never a byte served.
"""

from __future__ import annotations

import asyncio
import errno
import grp
import ipaddress
import os
import socket
import stat
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ..shared.errors import SeedtoolError, UsageError

CMD_LEVEL, CMD_READ_NONBLOCKING, CMD_READ_BLOCKING, CMD_WRITE, CMD_PID = range(5)
MAX_REQUEST = 255  # the request length is one byte
#: what 0x00 reports while serving: the DRBG can always give this much (one MAX_READ)
LEVEL_BITS = 4096 * 8
ARG_TIMEOUT = 10.0  # seconds a started request may take to arrive whole
STALL_TIMEOUT = 30.0  # seconds a client may leave an answer unread before it is closed
READ_LIMIT = 4096
WRITE_HIGH = 16 * 1024
WAIT_POLL = 0.05  # seconds between looks at the core while it is not serving
DEFAULT_MAX_CLIENTS = 1024
BACKLOG = 1024  # a burst of VMs (re)connecting at once; the kernel caps it at somaxconn
DEFAULT_RATE = 1024 * 1024  # bytes/s per connection; virtio-rng at boot wants far less
RECENT_CLOSED = 32  # closed clients kept for `seedtool serve status`
REFUSAL_LOG_EVERY = 100  # past the connection limit, one log line per this many refusals

Log = Callable[[str, Mapping[str, object]], None]


class Core(Protocol):
    """What a listener needs of `seedtool.serve.core.EntropyCore`."""

    @property
    def serving(self) -> bool: ...

    def read(self, n: int, timeout: float | None = None) -> bytes | None: ...


# -- listen addresses -------------------------------------------------------------------


@dataclass(frozen=True)
class ListenSpec:
    """`unix:PATH[,mode=0660,group=NAME]` or `tcp:HOST:PORT` (HOST a loopback address)."""

    kind: str
    path: str = ""
    mode: int = 0o660
    group: str | None = None
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"tcp:{self.host}:{self.port}"


def parse_listen_spec(text: str, option: str = "--egd") -> ListenSpec:
    kind, _, rest = text.partition(":")
    if kind == "unix" and rest:
        path, *opts = rest.split(",")
        mode, group = 0o660, None
        for opt in opts:
            key, eq, value = opt.partition("=")
            if key == "mode" and eq:
                try:
                    mode = int(value, 8)
                except ValueError:
                    mode = -1
                if not 0 <= mode <= 0o777:
                    raise UsageError(f"{option} {text}: mode= takes an octal file mode "
                                     "such as 0660")
            elif key == "group" and eq and value:
                group = value
            else:
                raise UsageError(f"{option} {text}: unknown option '{opt}'; a unix socket "
                                 "takes mode=OCTAL and group=NAME")
        if not path:
            raise UsageError(f"{option} {text}: give the socket's path, e.g. "
                             "unix:/run/seedtool/egd.sock")
        return ListenSpec("unix", path=path, mode=mode, group=group)
    if kind == "tcp" and rest:
        host, sep, port_text = rest.rpartition(":")
        host = host.strip("[]")
        try:
            port = int(port_text)
        except ValueError:
            port = -1
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False  # a name: what it resolves to may change
        if not sep or not 0 <= port < 65536:
            raise UsageError(f"{option} {text}: write tcp:127.0.0.1:PORT with a port "
                             "number from 1 to 65535 (0: any free port)")
        if not loopback:
            raise UsageError(f"{option} {text}: EGD has no authentication, so TCP listens "
                             "on a loopback address only (127.0.0.1 or ::1); use a unix "
                             "socket with mode= and group= for anything else")
        return ListenSpec("tcp", host=host, port=port)
    raise UsageError(f"{option} '{text}' is not a listen address; write "
                     "unix:PATH[,mode=0660,group=NAME] or tcp:127.0.0.1:PORT")


def group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise UsageError(f"there is no group '{name}' on this host; create it or give "
                         "another group= (e.g. kvm or libvirt-qemu)") from None


def take_over_stale(path: str) -> None:
    """Remove a socket file nobody listens on; refuse a live one or any other file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SeedtoolError(f"{path} exists and is not a socket; remove it or choose "
                            "another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # stale: the daemon that made it is gone
    except OSError:
        pass  # not connectable for another reason (e.g. permissions): unlink decides
    else:
        raise SeedtoolError(f"another process is already listening on {path}; stop it "
                            "or choose another path")
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise SeedtoolError(f"cannot remove the stale socket {path} "
                            f"({e.strerror}); remove it by hand") from None


def bind_unix(path: str, mode: int, gid: int | None = None) -> socket.socket:
    """A listening UNIX socket at `path` with `mode` and group `gid`; a stale one replaced."""
    take_over_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # no moment where the socket is wider open than asked
    try:
        sock.bind(path)
    except OSError as e:
        sock.close()
        parent = os.path.dirname(path) or "."
        if e.errno == errno.ENOENT:
            raise SeedtoolError(f"the directory {parent} does not exist; create it "
                                "(systemd: RuntimeDirectory=seedtool)") from None
        raise SeedtoolError(f"cannot create the socket {path} ({e.strerror}); check "
                            f"that {parent} is writable by this user") from None
    finally:
        os.umask(old)
    try:
        if gid is not None:
            os.chown(path, -1, gid)
        os.chmod(path, mode)
    except OSError as e:
        sock.close()
        os.unlink(path)
        raise SeedtoolError(f"cannot set the group or mode of {path} ({e.strerror}); run "
                            "as root or as a member of that group") from None
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def bind_tcp(host: str, port: int) -> socket.socket:
    try:
        sock = socket.create_server((host, port), backlog=BACKLOG)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise SeedtoolError(f"port {port} on {host} is already in use; stop the other "
                                "daemon or choose another port") from None
        raise SeedtoolError(f"cannot listen on {host}:{port} ({e.strerror})") from None
    sock.setblocking(False)
    return sock


def unlink_if_ours(path: str, ino: int) -> None:
    """Remove our socket file, unless another process has since put its own there."""
    try:
        if os.lstat(path).st_ino == ino:
            os.unlink(path)
    except OSError:
        pass


# -- one connection ---------------------------------------------------------------------


@dataclass
class Client:
    id: str
    listener: str
    peer: str
    opened: float = field(default_factory=time.time)
    bytes: int = 0
    requests: int = 0
    written_ignored: int = 0
    closed: str = ""

    def as_dict(self) -> dict[str, object]:
        row: dict[str, object] = {
            "id": self.id, "listener": self.listener, "peer": self.peer,
            "age_s": round(time.time() - self.opened, 1), "bytes": self.bytes,
            "requests": self.requests,
        }
        if self.written_ignored:
            row["written_ignored"] = self.written_ignored
        if self.closed:
            row["closed"] = self.closed
        return row


class TokenBucket:
    """`rate` bytes per second with one second of burst (at least one whole request)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(float(MAX_REQUEST), rate)
        self.tokens = self.burst
        self.stamp = time.monotonic()

    def take(self, n: int) -> float:
        """Take `n` bytes' worth; the seconds to wait before sending them (0: at once)."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        return -self.tokens / self.rate if self.tokens < 0 else 0.0


def _peer(sock: socket.socket | None) -> str:
    if sock is None:
        return "?"
    if sock.family == socket.AF_UNIX:
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
            pid, uid, _gid = struct.unpack("3i", creds)
            return f"pid={pid},uid={uid}"
        except OSError:
            return "unix"
    try:
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"


class _Connection(asyncio.Protocol):
    """One client: requests parsed from a bounded buffer and answered strictly in order.

    A Protocol rather than a stream coroutine: a request costs one callback, not two
    awaits and two timers, which is what keeps the daemon near a bare os.urandom server.
    `_hold` names what the connection waits for ("rate" or "core"), `_write_paused`
    whether the transport's buffer is above WRITE_HIGH; in either case nothing more is
    parsed, and reading pauses (as it does past READ_LIMIT unparsed bytes).
    """

    def __init__(self, server: EgdServer, listener: str) -> None:
        self.server, self.listener = server, listener
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.client: Client | None = None
        self.inbuf = bytearray()
        self.bucket = TokenBucket(server.rate)
        self._hold = ""  # "", "rate" or "core"
        self._write_paused = False
        self._arg_timer: asyncio.TimerHandle | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        self._later: asyncio.TimerHandle | None = None  # rate or core wait
        self._pending: tuple[int, int] | None = None  # (command, n) held by rate/core
        self._reading_paused = False
        self._waiting_logged = False
        self._reason, self._bad = "client closed", False

    # -- transport callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        srv = self.server
        if len(srv.clients) >= srv.max_clients:
            srv.refused += 1
            if srv.refused % REFUSAL_LOG_EVERY == 1:
                srv.log("client-refused", {"listener": self.listener,
                                           "reason": "connection limit",
                                           "limit": srv.max_clients, "refused": srv.refused})
            transport.close()
            return
        srv._count += 1
        srv.total_connections += 1
        self.client = Client(f"c{srv._count}", self.listener,
                             _peer(transport.get_extra_info("socket")))
        srv.clients[self.client.id] = self.client
        srv._connections.add(self)
        transport.set_write_buffer_limits(high=WRITE_HIGH)
        srv.log("client-open", {"client": self.client.id, "listener": self.listener,
                                "peer": self.client.peer})

    def data_received(self, data: bytes) -> None:
        if self.client is None:
            return
        self.inbuf += data
        self._process()

    def eof_received(self) -> bool:
        if self.inbuf and self._pending is None and not self._hold:
            self._drop(self._half_what(), "vanished in the middle of a")
        return False  # close our side too

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._stall_timer is None:
            self._stall_timer = self.loop.call_later(self.server.stall_timeout, self._stalled)
        self._flow()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._arg_timer, self._stall_timer, self._later):
            if timer is not None:
                timer.cancel()
        if self._later is not None:
            self._later.cancel()
        self.inbuf[:] = b""
        client, srv = self.client, self.server
        if client is None:
            return
        if exc is not None and not self._bad:
            self._reason = f"connection error ({type(exc).__name__})"
        client.closed = self._reason
        srv.clients.pop(client.id, None)
        srv.recent.append(client)
        srv._connections.discard(self)
        srv.log("client-bad" if self._bad else "client-close",
                {"client": client.id, "reason": self._reason, "bytes": client.bytes,
                 "requests": client.requests})

    # -- requests -------------------------------------------------------------------------

    def _process(self) -> None:
        """Answer every whole request in the buffer, in order, until something holds."""
        buf = self.inbuf
        before = len(buf)
        while buf and not self._hold and not self._write_paused \
                and self.transport is not None and not self.transport.is_closing():
            cmd = buf[0]
            if cmd == CMD_READ_BLOCKING or cmd == CMD_READ_NONBLOCKING:
                if len(buf) < 2:
                    break
                n = buf[1]
                del buf[:2]
                if n == 0:
                    self._drop("asked for a read of 0 bytes")
                    return
                self._read(cmd, n)
            elif cmd == CMD_LEVEL:
                del buf[:1]
                self._answer(struct.pack(">I", LEVEL_BITS if self.server.core.serving else 0))
            elif cmd == CMD_PID:
                del buf[:1]
                pid = str(os.getpid()).encode("ascii")
                self._answer(bytes([len(pid)]) + pid)
            elif cmd == CMD_WRITE:
                if len(buf) < 4 or len(buf) < 4 + buf[3]:
                    break
                n = buf[3]
                del buf[:4 + n]
                assert self.client is not None
                self.client.written_ignored += n
                self.server.log("write-refused", {
                    "client": self.client.id, "bytes": n,
                    "reason": "the daemon serves only its own sources"})
            else:
                self._drop(f"sent an unknown command byte 0x{cmd:02x}")
                return
        if buf and not self._hold and not self._write_paused:
            if self._arg_timer is not None and len(buf) != before:
                self._arg_timer.cancel()  # progress: the deadline is for this request
                self._arg_timer = None
            if self._arg_timer is None:  # a request begun: the rest must follow
                self._arg_timer = self.loop.call_later(self.server.arg_timeout, self._half)
        elif self._arg_timer is not None:
            self._arg_timer.cancel()
            self._arg_timer = None
        self._flow()

    def _read(self, cmd: int, n: int) -> None:
        delay = self.bucket.take(n)
        if delay > 0:
            self._hold, self._pending = "rate", (cmd, n)
            self._later = self.loop.call_later(delay, self._retry)
            return
        self._serve_read(cmd, n)

    def _serve_read(self, cmd: int, n: int) -> None:
        data = self.server.core.read(n, timeout=0)
        if data is None and cmd == CMD_READ_BLOCKING:
            if not self._waiting_logged:
                assert self.client is not None
                self.server.log("client-waiting", {"client": self.client.id,
                                                   "reason": "a required source is unhealthy"})
                self._waiting_logged = True
            self._hold, self._pending = "core", (cmd, n)
            self._later = self.loop.call_later(WAIT_POLL, self._retry)
            return
        data = data or b""
        assert self.client is not None
        self.client.bytes += len(data)
        self.server.total_bytes += len(data)
        self._answer(bytes([len(data)]) + data if cmd == CMD_READ_NONBLOCKING else data)

    def _retry(self) -> None:
        self._later = None
        pending, self._pending = self._pending, None
        self._hold = ""
        if pending is None or self.transport is None or self.transport.is_closing():
            return
        self._serve_read(*pending)
        self._process()

    def _answer(self, data: bytes) -> None:
        assert self.transport is not None and self.client is not None
        self.client.requests += 1
        self.transport.write(data)

    def _flow(self) -> None:
        """Bound the input: stop reading a client that sends faster than it is answered."""
        if self.transport is None or self.transport.is_closing():
            return
        want_pause = len(self.inbuf) >= READ_LIMIT or self._write_paused
        if want_pause and not self._reading_paused:
            self.transport.pause_reading()
            self._reading_paused = True
        elif not want_pause and self._reading_paused:
            self.transport.resume_reading()
            self._reading_paused = False

    # -- ending ---------------------------------------------------------------------------

    def _half_what(self) -> str:
        return "write request" if self.inbuf[:1] == bytes([CMD_WRITE]) else "read request"

    def _half(self) -> None:
        self._arg_timer = None
        self._drop(f"sent half a {self._half_what()} and nothing for "
                   f"{self.server.arg_timeout:g} s")

    def _stalled(self) -> None:
        self._stall_timer = None
        self._drop(f"left its answers unread for {self.server.stall_timeout:g} s")

    def _drop(self, reason: str, prefix: str = "") -> None:
        self._reason, self._bad = (f"{prefix} {reason}" if prefix else reason), True
        self.inbuf[:] = b""
        if self.transport is not None:
            if self._write_paused:
                self.transport.abort()  # its unread answers would never drain
            else:
                self.transport.close()

    def stop(self) -> None:
        if not self._bad:
            self._reason = "daemon stopping"
        if self.transport is not None:
            self.transport.abort()


class EgdServer:
    """Every `--egd` listener of one daemon, sharing one core, one log, one client table."""

    def __init__(self, core: Core, log: Log, *, rate: float = DEFAULT_RATE,
                 max_clients: int = DEFAULT_MAX_CLIENTS,
                 stall_timeout: float = STALL_TIMEOUT,
                 arg_timeout: float = ARG_TIMEOUT) -> None:
        self.core, self.log = core, log
        self.rate, self.max_clients = rate, max_clients
        self.stall_timeout, self.arg_timeout = stall_timeout, arg_timeout
        self.clients: dict[str, Client] = {}
        self.recent: deque[Client] = deque(maxlen=RECENT_CLOSED)
        self.total_bytes = 0
        self.total_connections = 0
        self.refused = 0
        self._count = 0
        self._servers: list[tuple[asyncio.Server, ListenSpec, int]] = []
        self._connections: set[_Connection] = set()

    # -- listeners ------------------------------------------------------------------------

    @staticmethod
    def bind(spec: ListenSpec) -> socket.socket:
        """The listening socket for `spec` (synchronous: errors before anything starts)."""
        if spec.kind == "unix":
            gid = group_id(spec.group) if spec.group else None
            return bind_unix(spec.path, spec.mode, gid)
        return bind_tcp(spec.host, spec.port)

    async def add(self, spec: ListenSpec, sock: socket.socket) -> None:
        """Serve on `sock` (from `bind`); nothing is accepted before `start_serving`."""
        loop = asyncio.get_running_loop()
        name = str(spec)
        if spec.kind == "unix":
            ino = os.lstat(spec.path).st_ino
            server = await loop.create_unix_server(lambda: _Connection(self, name), sock=sock,
                                                   start_serving=False)
        else:
            name = f"tcp:{spec.host}:{sock.getsockname()[1]}"
            ino = 0
            server = await loop.create_server(lambda: _Connection(self, name), sock=sock,
                                              start_serving=False)
        self._servers.append((server, spec, ino))

    async def start_serving(self) -> None:
        for server, spec, _ in self._servers:
            await server.start_serving()
            self.log("listening", {"listener": self._name(server, spec)})

    @staticmethod
    def _name(server: asyncio.Server, spec: ListenSpec) -> str:
        if spec.kind == "tcp":
            for s in server.sockets:
                return f"tcp:{spec.host}:{s.getsockname()[1]}"
        return str(spec)

    def listeners(self) -> list[str]:
        return [self._name(server, spec) for server, spec, _ in self._servers]

    async def close(self) -> None:
        for server, spec, ino in self._servers:
            server.close()
            if spec.kind == "unix":
                unlink_if_ours(spec.path, ino)
        for conn in list(self._connections):
            conn.stop()
        for _ in range(100):  # connection_lost runs on the next turns of the loop
            if not self._connections:
                break
            await asyncio.sleep(0.01)
        for server, _, _ in self._servers:
            await server.wait_closed()
        self._servers.clear()

    def status(self) -> dict[str, object]:
        return {
            "listeners": self.listeners(),
            "rate_bytes_per_s": self.rate,
            "max_clients": self.max_clients,
            "connections_total": self.total_connections,
            "connections_refused": self.refused,
            "bytes_total": self.total_bytes,
            "clients": [c.as_dict() for c in self.clients.values()],
            "recently_closed": [c.as_dict() for c in self.recent],
        }
