"""A listening socket served by one daemon thread per connection: the shared part of
the scripted fakes that speak a byte protocol (egd_server, fake_tpm's TcpTpm).

Subclasses implement `_serve(conn)` and reply through `_send`; every wait polls the
stop flag every 50 ms, so `close()` ends all threads promptly.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence

POLL = 0.05


class Listener:
    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.listener.settimeout(POLL)
        self.connections = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            conn.settimeout(POLL)
            t = threading.Thread(target=self._serve_and_close, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve_and_close(self, conn: socket.socket) -> None:
        with conn:
            self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _recv(self, conn: socket.socket, n: int) -> bytes | None:
        """Exactly `n` bytes, or None when the peer closed or the server is closing."""
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

    def _send(self, conn: socket.socket, writes: Sequence[bytes], then: str) -> bool:
        """Write each piece on its own, then "keep" (True), "close" or "silent" (False:
        the caller returns; "silent" first waits until the server closes)."""
        try:
            for w in writes:
                if w:
                    conn.sendall(w)
                    time.sleep(0.01)  # let the client see each piece on its own
        except OSError:
            return False
        if then == "silent":
            self._stop.wait()
        return then == "keep"

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        for t in self._threads:
            t.join(5)
