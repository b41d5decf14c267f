"""A small EGD server for tests, on a UNIX socket or 127.0.0.1 TCP, with scripted faults.

It speaks the protocol of ekeyd's README.egd-protocol (commands 0x00, 0x01, 0x02,
0x04). Script steps apply one per command received, then "ok" forever:

    "ok"                 a correct answer
    "close"              close the connection without answering
    "silent"             never answer (the client must time out)
    ("partial", k)       the first k bytes of the correct answer, then close
    ("stall", k)         the first k bytes of the correct answer, then nothing
    ("raw", data)        exactly these bytes instead of the answer
    ("extra", data)      the correct answer followed by these bytes
    ("trickle", pieces)  the correct answer in `pieces` separate writes
    ("limit", k)         non-blocking read: offer only k bytes (k may exceed the request)

`level` is what command 0x00 reports, `pid` what 0x04 reports; `sent` collects every
entropy byte handed out, in order; `commands` every command byte received.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from typing import Any, Callable, Union

from ._listener import Listener

Step = Union[str, tuple[str, Any]]


class EgdServer(Listener):
    def __init__(
        self,
        path: str | None = None,
        script: list[Step] | None = None,
        level: int = 4096,
        pid: bytes = b"4242",
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.script = list(script or [])
        self.level = level
        self.pid = pid
        self.rng = rng
        self.sent = bytearray()
        self.commands: list[int] = []
        self._lock = threading.Lock()
        if path is not None:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(path)
            listener.listen()
            self.address = path
        else:
            listener = socket.create_server(("127.0.0.1", 0))
            self.address = f"127.0.0.1:{listener.getsockname()[1]}"
        self.path = path
        super().__init__(listener)

    # -- serving -----------------------------------------------------------------------

    def _step(self) -> Step:
        with self._lock:
            return self.script.pop(0) if self.script else "ok"

    def _entropy(self, n: int) -> bytes:
        data = self.rng(n)
        self.sent += data
        return data

    def _answer(self, conn: socket.socket, cmd: int, step: Step) -> bytes | None:
        """The correct answer to `cmd` (reading its argument), or None to hang up."""
        if cmd == 0x00:
            return struct.pack(">I", self.level)
        if cmd == 0x04:
            return bytes([len(self.pid)]) + self.pid
        if cmd in (0x01, 0x02):
            arg = self._recv(conn, 1)
            if arg is None:
                return None
            n = arg[0]
            if cmd == 0x02:
                return self._entropy(n)
            k = n
            if isinstance(step, tuple) and step[0] == "limit":
                k = int(step[1])
            return bytes([k]) + self._entropy(k)
        if cmd == 0x03:
            head = self._recv(conn, 3)
            if head is None or self._recv(conn, head[2]) is None:
                return None
            return b""
        return None  # unknown command: hang up, as a strict daemon would

    def _serve(self, conn: socket.socket) -> None:
        while not self._stop.is_set():
            head = self._recv(conn, 1)
            if head is None:
                return
            cmd = head[0]
            self.commands.append(cmd)
            step = self._step()
            answer = self._answer(conn, cmd, step)
            if answer is None or step == "close":
                return
            writes, then = [answer], "keep"
            if step == "silent":
                writes, then = [], "silent"
            elif isinstance(step, tuple):
                kind, arg = step
                if kind == "partial":
                    writes, then = [answer[:arg]], "close"
                elif kind == "stall":
                    writes, then = [answer[:arg]], "silent"
                elif kind == "raw":
                    writes = [bytes(arg)]
                elif kind == "extra":
                    writes = [answer + bytes(arg)]
                elif kind == "trickle":
                    cut = [len(answer) * i // arg for i in range(arg + 1)]
                    writes = [answer[cut[i]:cut[i + 1]] for i in range(arg)]
            if not self._send(conn, writes, then):
                return

    def close(self) -> None:
        super().close()
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> EgdServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
