"""The pieces of bench/bench_seedserver.py's load generator, against a tiny TLS server here."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_seedserver",
                                                  REPO / "bench" / "bench_seedserver.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _bench()


def _split(request: bytes) -> tuple[str, bytes]:
    head, _, body = request.partition(b"\r\n\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"Connection: close" in head
    return head.decode(), body


def test_requests_are_fresh_and_answers_are_checked() -> None:
    item = json.dumps({"kind": "token", "token": "t"})
    one, two = bench.request_bytes("seedtool", item), bench.request_bytes("seedtool", item)
    head, body = _split(one)
    assert head.startswith("POST /v1/seed HTTP/1.1")
    parsed = json.loads(body)
    assert parsed["kind"] == "token" and len(base64.b64decode(parsed["nonce"])) == 32
    assert one != two  # a new nonce each time
    assert bench.answer_ok("seedtool", one, b'HTTP/1.1 200 OK\r\n\r\n{"envelope": "x"}')
    assert not bench.answer_ok("seedtool", one, b'HTTP/1.1 409 Conflict\r\n\r\n{"error": 1}')
    assert not bench.answer_ok("seedtool", one, b'HTTP/1.1 200 OK\r\n\r\n{"error": 1}')

    req = bench.request_bytes("pollen", "-")
    head, body = _split(req)
    assert head.startswith("POST / HTTP/1.1") and body.startswith(b"challenge=")
    good = hashlib.sha512(body[len(b"challenge="):]).hexdigest().encode()
    assert bench.answer_ok("pollen", req, b"HTTP/1.1 200 OK\r\n\r\n" + good + b"\nrandom\n")
    assert not bench.answer_ok("pollen", req, b"HTTP/1.1 200 OK\r\n\r\n" + b"0" * 128 + b"\n")


class _TlsServer:
    """Answers every connection with `answer` after reading one request, then closes."""

    def __init__(self, cert: Path, key: Path, answer: bytes) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.answer, self.connections = answer, 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(raw,), daemon=True).start()

    def _one(self, raw: socket.socket) -> None:
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as tls:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += tls.recv(4096)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                while len(body) < length:  # read it all: unread data would make a reset
                    body += tls.recv(4096)
                tls.sendall(self.answer)
        except OSError:
            raw.close()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    yield bench.self_signed_p256(tmp_path_factory.mktemp("bench"))


@pytest.mark.parametrize("status,counted", [(b"200 OK", True), (b"409 Conflict", False)])
def test_the_client_opens_a_connection_per_request(pair: tuple[Path, Path], status: bytes,
                                                   counted: bool) -> None:
    cert, key = pair
    server = _TlsServer(cert, key, b"HTTP/1.1 " + status + b"\r\n\r\n{\"envelope\": \"e\"}")
    try:
        item = json.dumps({"kind": "token", "token": "t"})
        got = bench.client_process({"kind": "seedtool", "port": server.port, "ca": str(cert),
                                    "items": [[item], [item]], "until": time.time() + 0.5})
    finally:
        server.sock.close()
    done = len(got["lat"]) + len(got["errors"])
    assert done > 0 and server.connections >= done
    assert (len(got["lat"]) == done) is counted
    assert (got["errors"] == []) is counted


def test_proc_readings_of_this_process() -> None:
    assert bench.rss_kib(os.getpid()) > 0
    before = bench.cpu_seconds(os.getpid())
    end = time.process_time() + 0.05
    while time.process_time() < end:
        pass
    assert bench.cpu_seconds(os.getpid()) > before
