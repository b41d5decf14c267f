"""What the local fakes of Google Cloud REST APIs share (devtools/fake_compute.py,
devtools/fake_gcp_kms.py): Google's JSON error shape, which google-api-core turns into
its exception classes by HTTP status (and `errors[].reason`), and JSON in and out of a
request handler, and serving it.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from ._http import serve, stop, url_of

S = TypeVar("S", bound="Served")

#: HTTP status -> the canonical status name Google's error bodies carry
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
#: HTTP status -> the usual `errors[].reason` of Compute Engine's error bodies
REASONS = {400: "invalid", 403: "forbidden", 404: "notFound", 409: "alreadyExists",
           412: "conditionNotMet", 429: "rateLimitExceeded", 503: "backendError"}


class Served:
    """start(), stop() and `with` for a fake whose `_handle(handler)` answers every
    request on a 127.0.0.1 port; `endpoint` is its URL."""

    _server: ThreadingHTTPServer | None = None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "start() the fake first"
        return url_of(self._server)

    def start(self: S) -> S:
        self._server = serve(self._handle)
        return self

    def stop(self) -> None:
        if self._server is not None:
            stop(self._server)
        self._server = None

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def error_obj(status: int, message: str, reason: str | None = None) -> dict[str, Any]:
    """`{"error": {code, message, errors: [{reason}], status}}`."""
    return {"error": {"code": status, "message": message,
                      "errors": [{"message": message, "domain": "global",
                                  "reason": reason or REASONS.get(status, "unknown")}],
                      "status": STATUS_NAMES.get(status, "UNKNOWN")}}


def error(status: int, message: str, reason: str | None = None) -> bytes:
    return json.dumps(error_obj(status, message, reason)).encode()


def read_json(h: BaseHTTPRequestHandler) -> dict[str, Any]:
    """The request's JSON object body ({} for none, a form body, or anything else)."""
    length = int(h.headers.get("Content-Length") or 0)
    raw = h.rfile.read(length) if length else b""
    if not raw or h.headers.get("Content-Type", "").startswith(
            "application/x-www-form-urlencoded"):
        return {}
    try:
        loaded = json.loads(raw)
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def send_json(h: BaseHTTPRequestHandler, status: int, out: bytes) -> None:
    h.send_response(status)
    h.send_header("Content-Type", "application/json; charset=UTF-8")
    h.send_header("Content-Length", str(len(out)))
    h.end_headers()
    h.wfile.write(out)
