"""The control socket of `seedtool serve`, read by `seedtool serve status`.

A UNIX stream socket (mode 0600: the daemon's own user, and root) speaking JSON lines:
the client sends `{"cmd": "status"}` and a newline, the daemon answers one JSON object
and a newline: whether it serves, the core's sources and health and DRBG counters, the
listeners and the bytes served per client. Counts and names only, never a byte of
output. Any other request is answered `{"error": "..."}`.

Where it is, unless --control says: /run/seedtool/control.sock for root (systemd's
RuntimeDirectory=seedtool makes /run/seedtool), else $XDG_RUNTIME_DIR/seedtool/
control.sock (the per-user runtime directory of the XDG Base Directory Specification).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Callable
from typing import Any

from ..shared.errors import SeedtoolError, UsageError
from .egd import bind_unix, unlink_if_ours

REQUEST_LIMIT = 4096
QUERY_TIMEOUT = 5.0


def default_control_path() -> str:
    if os.geteuid() == 0:
        return "/run/seedtool/control.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not runtime:
        raise UsageError("XDG_RUNTIME_DIR is not set, so there is no default control "
                         "socket; pass --control PATH")
    return os.path.join(runtime, "seedtool", "control.sock")


class ControlServer:
    """Answers status requests on `path` with `status()`."""

    def __init__(self, path: str, status: Callable[[], dict[str, Any]]) -> None:
        self.path, self.status = path, status
        self._server: asyncio.AbstractServer | None = None
        self._ino = 0

    def bind(self) -> socket.socket:
        parent = os.path.dirname(self.path)
        if parent and not os.path.isdir(parent):
            try:
                os.makedirs(parent, mode=0o700, exist_ok=True)
            except OSError as e:
                raise SeedtoolError(f"cannot create {parent} for the control socket "
                                    f"({e.strerror}); pass --control PATH") from None
        sock = bind_unix(self.path, 0o600)
        self._ino = os.lstat(self.path).st_ino
        return sock

    async def start(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_unix_server(self._handle, sock=sock,
                                                       limit=REQUEST_LIMIT)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            unlink_if_ours(self.path, self._ino)
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), QUERY_TIMEOUT)
            try:
                request = json.loads(line)
                cmd = request.get("cmd") if isinstance(request, dict) else None
            except ValueError:
                cmd = None
            if cmd == "status":
                answer: dict[str, Any] = self.status()
            else:
                answer = {"error": 'send {"cmd": "status"} and a newline'}
            writer.write(json.dumps(answer).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), QUERY_TIMEOUT)
        except (asyncio.TimeoutError, ValueError, ConnectionError, OSError):
            pass  # a broken status client: nothing to answer
        finally:
            writer.close()


def query(path: str, cmd: str = "status", timeout: float = QUERY_TIMEOUT) -> dict[str, Any]:
    """Ask the daemon at `path`; one sentence if it cannot be reached."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise SeedtoolError(f"no seedtool serve is running with the control socket "
                                f"{path}; start it, or pass --control PATH") from None
        except PermissionError:
            raise SeedtoolError(f"permission denied on {path}; run as the daemon's user "
                                "or root") from None
        sock.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        buf = bytearray()
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    except OSError as e:
        raise SeedtoolError(f"the control socket {path} did not answer "
                            f"({e.strerror or 'timed out'}); check the daemon's log") from None
    finally:
        sock.close()
    try:
        answer = json.loads(buf)
    except ValueError:
        raise SeedtoolError(f"the control socket {path} sent something that is not "
                            "JSON; is it a seedtool serve socket?") from None
    if not isinstance(answer, dict):
        raise SeedtoolError(f"the control socket {path} sent an unexpected answer")
    return answer
