"""A scripted fake TPM 2.0, served on a pty (standing in for /dev/tpmrm0) or on 127.0.0.1 TCP.

The fake answers TPM2_Startup and TPM2_GetRandom like a TPM with a 32-byte largest
digest, unless the script says otherwise for the next command. Script steps, used
one per received command (then "ok" forever):

    "ok"                 a correct reply
    ("rc", code)         a bare error header with that response code
    ("raw", data)        exactly these bytes
    ("count", k)         a well-formed GetRandom reply carrying k bytes, whatever was asked
    ("split", pieces)    a correct reply written in `pieces` separate writes
    ("partial", nbytes)  the first nbytes of a correct reply, then the link is closed
    "close"              close the link without answering
    "silent"             never answer (the client must time out)

`commands` records every command received, for assertions.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
import tty
from typing import Any, Union

from ._listener import Listener

Step = Union[str, tuple[str, Any]]

DIGEST_MAX = 32
HEADER = struct.Struct(">HII")


class FakeTpm:
    def __init__(self, script: list[Step] | None = None, digest_max: int = DIGEST_MAX) -> None:
        self.script = list(script or [])
        self.digest_max = digest_max
        self.commands: list[bytes] = []
        self.sent_random = bytearray()
        self._lock = threading.Lock()

    def next_step(self) -> Step:
        with self._lock:
            return self.script.pop(0) if self.script else "ok"

    def good_reply(self, command: bytes) -> bytes:
        _, _, cc = HEADER.unpack_from(command)
        if cc == 0x17B and len(command) >= 12:
            (want,) = struct.unpack_from(">H", command, 10)
            data = os.urandom(min(want, self.digest_max))
            self.sent_random += data
            return struct.pack(">HIIH", 0x8001, 12 + len(data), 0, len(data)) + data
        return struct.pack(">HII", 0x8001, 10, 0)

    def replies(self, command: bytes) -> tuple[list[bytes], str]:
        """(writes to perform, then "keep" | "close" | "silent")."""
        self.commands.append(command)
        step = self.next_step()
        if step == "ok":
            return [self.good_reply(command)], "keep"
        if step == "close":
            return [], "close"
        if step == "silent":
            return [], "silent"
        assert isinstance(step, tuple)
        kind, value = step
        arg: Any = value
        if kind == "rc":
            return [struct.pack(">HII", 0x8001, 10, arg)], "keep"
        if kind == "raw":
            return [bytes(arg)], "keep"
        if kind == "count":
            data = os.urandom(arg)
            return [struct.pack(">HIIH", 0x8001, 12 + arg, 0, arg) + data], "keep"
        if kind == "split":
            reply = self.good_reply(command)
            cut = [len(reply) * i // arg for i in range(arg + 1)]
            return [reply[cut[i]:cut[i + 1]] for i in range(arg)], "keep"
        if kind == "partial":
            return [self.good_reply(command)[:arg]], "close"
        raise ValueError(f"unknown fake TPM step {step!r}")


class PtyTpm:
    """The fake on a pty pair: `path` is the slave, to pass as device=."""

    def __init__(self, fake: FakeTpm) -> None:
        self.fake = fake
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # binary-clean: no echo, no line editing, no CR/LF mapping
        self.path = os.ttyname(self.slave)
        self._stop = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _read_command(self) -> bytes | None:
        buf = b""
        need = HEADER.size
        while len(buf) < need:
            r, _, _ = select.select([self.master], [], [], 0.05)
            if self._stop.is_set():
                return None
            if not r:
                continue
            try:
                chunk = os.read(self.master, need - len(buf))
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
            if len(buf) == HEADER.size:
                need = HEADER.unpack(buf)[1]
        return buf

    def _serve(self) -> None:
        while not self._stop.is_set():
            command = self._read_command()
            if command is None:
                return
            writes, then = self.fake.replies(command)
            for w in writes:
                os.write(self.master, w)
                time.sleep(0.01)  # let the client see each piece on its own
            if then == "close":
                self._close_master()
                return
            if then == "silent":
                self._stop.wait()
                return

    def _close_master(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.master)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._close_master()
        os.close(self.slave)


class TcpTpm(Listener):
    """The fake on 127.0.0.1: bare commands (swtpm style) or mssim framing."""

    def __init__(self, fake: FakeTpm, mssim: bool = False) -> None:
        self.fake = fake
        self.mssim = mssim
        super().__init__(socket.create_server(("127.0.0.1", 0)))
        self.port = self.listener.getsockname()[1]
        self.spec = f"127.0.0.1:{self.port}"

    def _serve(self, conn: socket.socket) -> None:
        while not self._stop.is_set():
            if self.mssim:
                head = self._recv(conn, 9)
                if head is None:
                    return
                op, _locality, size = struct.unpack(">IBI", head)
                if op != 8:
                    return
                command = self._recv(conn, size)
            else:
                head = self._recv(conn, HEADER.size)
                if head is None:
                    return
                rest = self._recv(conn, HEADER.unpack(head)[1] - HEADER.size)
                command = None if rest is None else head + rest
            if command is None:
                return
            writes, then = self.fake.replies(command)
            if self.mssim and writes:
                body = b"".join(writes)
                writes = [struct.pack(">I", len(body)) + body + struct.pack(">I", 0)]
            if not self._send(conn, writes, then):
                return
