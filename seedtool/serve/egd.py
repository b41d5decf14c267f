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

Many connections at once (one per VM): asyncio, one coroutine per connection, because
the work per request is a few microseconds of DRBG output and the rest is waiting on
sockets; a thread per connection would cost a stack each and make "thousands of
connections" a memory problem, while here a connection costs its buffers only.
Buffers are bounded: the reader's limit (`READ_LIMIT`) stops reading a client that
sends faster than it reads answers (the kernel's socket buffer then pushes back on it),
and each answer waits for the previous to drain below `WRITE_HIGH` before the next
request is read. A client that stops reading only blocks its own coroutine, and is
closed after `STALL_TIMEOUT`. Each connection has a token bucket (`rate` bytes/s, one
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
from typing import Any, Protocol

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
    sock.listen(128)
    sock.setblocking(False)
    return sock


def bind_tcp(host: str, port: int) -> socket.socket:
    try:
        sock = socket.create_server((host, port), backlog=128)
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

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / self.rate)


class _Drop(Exception):
    """End this connection: `reason` goes to the log."""

    def __init__(self, reason: str, bad: bool = True) -> None:
        super().__init__(reason)
        self.reason, self.bad = reason, bad


def _peer(sock: socket.socket | None) -> str:
    if sock is None:
        return "?"
    if sock.family == socket.AF_UNIX:
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
            pid, uid, gid = struct.unpack("3i", creds)
            return f"pid={pid},uid={uid}"
        except OSError:
            return "unix"
    try:
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"


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
        self._tasks: set[asyncio.Task[Any]] = set()

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
        name = str(spec)
        if spec.kind == "tcp" and spec.port != sock.getsockname()[1]:
            name = f"tcp:{spec.host}:{sock.getsockname()[1]}"

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._connection(name, reader, writer)

        if spec.kind == "unix":
            server = await asyncio.start_unix_server(handle, sock=sock, limit=READ_LIMIT,
                                                     start_serving=False)
            ino = os.lstat(spec.path).st_ino
        else:
            server = await asyncio.start_server(handle, sock=sock, limit=READ_LIMIT,
                                                start_serving=False)
            ino = 0
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
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
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

    # -- one connection -------------------------------------------------------------------

    async def _connection(self, listener: str, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self.clients) >= self.max_clients:
            self.refused += 1
            if self.refused % REFUSAL_LOG_EVERY == 1:
                self.log("client-refused", {"listener": listener, "reason": "connection limit",
                                            "limit": self.max_clients, "refused": self.refused})
            writer.close()
            return
        self._count += 1
        self.total_connections += 1
        client = Client(f"c{self._count}", listener, _peer(writer.get_extra_info("socket")))
        self.clients[client.id] = client
        if task is not None:
            self._tasks.add(task)
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH)
        self.log("client-open", {"client": client.id, "listener": listener,
                                 "peer": client.peer})
        reason, bad = "client closed", False
        try:
            await self._serve(client, reader, writer, TokenBucket(self.rate))
        except _Drop as d:
            reason, bad = d.reason, d.bad
        except (ConnectionError, OSError) as e:
            reason = f"connection error ({e.strerror or type(e).__name__})"
        except asyncio.CancelledError:
            reason = "daemon stopping"
        finally:
            client.closed = reason
            self.clients.pop(client.id, None)
            self.recent.append(client)
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            self.log("client-bad" if bad else "client-close",
                     {"client": client.id, "reason": reason, "bytes": client.bytes,
                      "requests": client.requests})

    async def _arg(self, reader: asyncio.StreamReader, n: int, what: str) -> bytes:
        try:
            return await asyncio.wait_for(reader.readexactly(n), self.arg_timeout)
        except asyncio.IncompleteReadError:
            raise _Drop(f"vanished in the middle of a {what}") from None
        except asyncio.TimeoutError:
            raise _Drop(f"sent half a {what} and nothing for {self.arg_timeout:g} s") from None

    async def _serve(self, client: Client, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter, bucket: TokenBucket) -> None:
        waiting_logged = False
        while True:
            try:
                head = await reader.readexactly(1)
            except asyncio.IncompleteReadError:
                return  # the client hung up between requests: the normal end
            cmd = head[0]
            if cmd == CMD_LEVEL:
                answer = struct.pack(">I", LEVEL_BITS if self.core.serving else 0)
            elif cmd == CMD_PID:
                pid = str(os.getpid()).encode("ascii")
                answer = bytes([len(pid)]) + pid
            elif cmd == CMD_WRITE:
                bits_len = await self._arg(reader, 3, "write request")
                n = bits_len[2]
                if n:
                    await self._arg(reader, n, "write request")
                client.written_ignored += n
                self.log("write-refused", {"client": client.id, "bytes": n,
                                           "reason": "the daemon serves only its own sources"})
                continue
            elif cmd in (CMD_READ_NONBLOCKING, CMD_READ_BLOCKING):
                (n,) = await self._arg(reader, 1, "read request")
                if n == 0:
                    raise _Drop("asked for a read of 0 bytes")
                await bucket.take(n)
                data = self.core.read(n, timeout=0)
                if data is None and cmd == CMD_READ_BLOCKING:
                    if not waiting_logged:
                        self.log("client-waiting", {"client": client.id,
                                                    "reason": "a required source is unhealthy"})
                        waiting_logged = True
                    while data is None:
                        await asyncio.sleep(WAIT_POLL)
                        data = self.core.read(n, timeout=0)
                data = data or b""
                if cmd == CMD_READ_NONBLOCKING:
                    answer = bytes([len(data)]) + data
                else:
                    answer = data
                client.bytes += len(data)
                self.total_bytes += len(data)
            else:
                raise _Drop(f"sent an unknown command byte 0x{cmd:02x}")
            client.requests += 1
            writer.write(answer)
            del answer
            try:
                await asyncio.wait_for(writer.drain(), self.stall_timeout)
            except asyncio.TimeoutError:
                raise _Drop(f"left its answers unread for {self.stall_timeout:g} s") from None
