"""A local stand-in for Cloud KMS's REST `generateRandomBytes`, for tests only.

It speaks just enough of the v1 REST surface for the real google-cloud-kms client
(`transport="rest"`) to talk to it on 127.0.0.1:

    POST /v1/projects/{project}/locations/{location}:generateRandomBytes
    {"lengthBytes": 8..1024, "protectionLevel": "HSM" | 2}
    -> 200 {"data": base64, "dataCrc32c": "decimal string"}

Field names and limits follow the public REST reference
(https://cloud.google.com/kms/docs/reference/rest/v1/projects.locations/generateRandomBytes)
and the `GenerateRandomBytesRequest/Response` messages in google-cloud-kms. Errors use
Google's JSON error shape `{"error": {"code", "message", "status"}}`, which the
client turns into `google.api_core.exceptions` by HTTP status.

Tests script faults with `push()`: each queued `Reply` answers one request, after
which the fake goes back to answering normally.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from ._google import Served, read_json, send_json
from ._google import error as _error

_PATH = re.compile(r"^/v1/projects/([^/]+)/locations/([^/:]+):generateRandomBytes$")
# protectionLevel may arrive as the enum name or, with numeric enums, its number.
_HSM = ("HSM", 2)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), bit by bit: deliberately not the table-driven code under test."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


@dataclass
class Reply:
    """One scripted answer. `status` with no `body` gives a Google-style error body."""

    status: int = 200
    body: bytes | None = None
    hang: bool = False


@dataclass
class Seen:
    """What the fake received, for assertions (never the bytes it sent back)."""

    path: str
    body: dict[str, Any]
    status: int
    authorization: str | None = None


@dataclass
class FakeCloudKms(Served):
    #: when set, requests must carry `Authorization: Bearer <token>` (else 401)
    token: str | None = None
    requests: list[Seen] = field(default_factory=list)
    _script: deque[Reply] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _release: threading.Event = field(default_factory=threading.Event)

    def push(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def stop(self) -> None:
        self._release.set()  # let any hanging handler finish
        super().stop()

    # -- request handling -------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = read_json(h)
        path = h.path.split("?", 1)[0]
        with self._lock:
            scripted = self._script.popleft() if self._script else None
        auth = h.headers.get("Authorization")
        if scripted is not None and scripted.hang:
            self._record(Seen(path, body, 0, auth))
            self._release.wait()
            return
        if scripted is not None:
            status = scripted.status
            out = scripted.body if scripted.body is not None else _error(status, "scripted")
        elif self.token is not None and auth != f"Bearer {self.token}":
            status, out = 401, _error(401, "request had invalid authentication credentials")
        else:
            status, out = self._answer(path, body)
        self._record(Seen(path, body, status, auth))
        send_json(h, status, out)

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)

    @staticmethod
    def _answer(path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        if not _PATH.match(path):
            return 404, _error(404, f"no such method {path}")
        n = body.get("lengthBytes")
        if not isinstance(n, int) or not 8 <= n <= 1024:
            return 400, _error(400, "lengthBytes must be between 8 and 1024")
        if body.get("protectionLevel") not in _HSM:
            return 400, _error(400, "only HSM protection level is supported")
        data = os.urandom(n)
        reply = {"data": base64.b64encode(data).decode(), "dataCrc32c": str(crc32c(data))}
        return 200, json.dumps(reply).encode()


def reply_with(data: bytes, *, crc: int | None = None, status: int = 200) -> Reply:
    """A success reply carrying exactly `data` (and `crc`, default: the right one)."""
    obj = {
        "data": base64.b64encode(data).decode(),
        "dataCrc32c": str(crc32c(data) if crc is None else crc),
    }
    return Reply(status, json.dumps(obj).encode())
