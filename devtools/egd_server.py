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
import time
from typing import Any, Callable, Union

Step = Union[str, tuple[str, Any]]


class EgdServer:
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
        self.connections = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        if path is not None:
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(path)
            self.listener.listen()
            self.address = path
        else:
            self.listener = socket.create_server(("127.0.0.1", 0))
            self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.path = path
        self.listener.settimeout(0.05)
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    # -- serving -----------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _recv(self, conn: socket.socket, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            try:
                chunk = conn.recv(n - len(buf))
            except socket.timeout:
                if self._stop.is_set():
                    return None
                continue
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

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
        conn.settimeout(0.05)
        with conn:
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
                try:
                    for w in writes:
                        if w:
                            conn.sendall(w)
                            time.sleep(0.01)
                except OSError:
                    return
                if then == "close":
                    return
                if then == "silent":
                    self._stop.wait()
                    return

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        for t in self._threads:
            t.join(5)
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> EgdServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
