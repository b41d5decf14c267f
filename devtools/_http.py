"""What the HTTP fakes of cloud APIs share: a threaded server on 127.0.0.1 whose every
request goes to one function, and a gate that keeps chosen calls waiting so a test can
interrupt a client while they are in flight.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def serve(dispatch: Callable[[BaseHTTPRequestHandler], None]) -> ThreadingHTTPServer:
    """Start a threaded HTTP/1.1 server on a free 127.0.0.1 port; every GET, POST, PUT
    and DELETE is handed to `dispatch(handler)`. Stop it with `stop(server)`."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            dispatch(self)

        do_POST = do_PUT = do_DELETE = do_GET  # noqa: N815

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    return server


def url_of(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}"


def stop(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


class Gate:
    """`hold(keys)`: calls that `arrive(key)` with one of those keys wait until
    `release()`; `wait_held(n)` waits until n of them are waiting."""

    def __init__(self) -> None:
        self._held: set[Any] = set()
        self._open = threading.Event()
        self._open.set()
        self._arrived = threading.Condition()
        self.waiting = 0

    def hold(self, keys: Iterable[Any]) -> None:
        self._held = set(keys)
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def wait_held(self, n: int, timeout: float = 60) -> bool:
        with self._arrived:
            return self._arrived.wait_for(lambda: self.waiting >= n, timeout)

    def arrive(self, key: Any) -> None:
        if key not in self._held:
            return
        with self._arrived:
            self.waiting += 1
            self._arrived.notify_all()
        self._open.wait()
