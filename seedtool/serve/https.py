"""The HTTPS listener of `seedtool serve`: the seed API (``POST /v1/seed``), /healthz, /metrics.

Stack: a bare ASGI 3 application (`SeedApp`, the ASGI specification's HTTP
connection scope) served by uvicorn with the httptools parser, on the daemon's own
asyncio loop, in the daemon's one process. Three fixed routes need no framework
(Starlette's routing, requests and middleware would be code between us and the
bytes, to review for a 16 KiB limit we enforce ourselves); uvicorn is the maintained
server with which a socket bound by the daemon can be served on a running loop
(`uvicorn.Server.serve(sockets=...)`). TLS is the standard library's `ssl`:
TLS 1.3 only (``minimum_version = TLSVersion.TLSv1_3``, RFC 8446), certificate
and key from files. SIGHUP reloads them: a new `SSLContext` is loaded and checked
in full, then the listener's SNI callback (`SSLContext.sni_callback`, which may
set the connection's ``context``) hands it to every new handshake; a bad new pair
is logged and the old one stays in use.

One process: the entropy core must be opened by one process only (a USB TRNG).
Blocking work (identity verification, the core, signing, the ledger's commit)
runs in a bounded `ThreadPoolExecutor`, never on the event loop.

Request rules: the headers must arrive within `HEADER_SECONDS` of the connection
(or of the request's first byte; the connection is closed otherwise: a slow client
holds no connection for long), the body at most 16 KiB (a larger Content-Length or body is answered
400 "malformed", not 413: the API has one code for a request it will not read);
it must arrive within `BODY_SECONDS`; per client address a token bucket limits
requests (429 "rate-limited" with Retry-After, RFC 9110 section 10.2.3). Every error
is ``{"error": code, "message": one sentence}`` with the status of the exception's
``.status``/``.error`` (identity checks, ledger, `issuer.SourcesUnhealthy`).

One log line per request through `EventLog`: kind, instance, client, result, ms;
never the token, the evidence or the envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..identity import Malformed
from ..shared.errors import SeedtoolError, UsageError
from .issuer import MAX_BODY, Issuer, parse_request
from .metrics import Metrics

#: a request body must have arrived this long after its headers
BODY_SECONDS = 10.0
#: a request's headers must have arrived this long after the connection (or the
#: request's first byte); uvicorn itself bounds only the idle time between requests
HEADER_SECONDS = 10.0
#: default per-address rate: requests per second and burst
DEFAULT_RATE = 20.0
DEFAULT_BURST = 100
#: worker threads for verification, signing and ledger commits
DEFAULT_WORKERS = 8
#: addresses whose buckets are remembered (least recently used dropped first)
MAX_BUCKETS = 65536

Send = Callable[[dict[str, Any]], Any]
Receive = Callable[[], Any]
LogFn = Callable[[str, dict[str, object]], None]


@dataclass(frozen=True)
class HttpsSpec:
    """``--https HOST:PORT[,rate=R,burst=B]`` (rate 0 = no limit)."""

    host: str
    port: int
    rate: float = DEFAULT_RATE
    burst: int = DEFAULT_BURST


def parse_https_spec(text: str) -> HttpsSpec:
    addr, *opts = text.split(",")
    host, sep, port = addr.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(f"--https {text!r} is not HOST:PORT, e.g. 0.0.0.0:8443")
    rate, burst = DEFAULT_RATE, DEFAULT_BURST
    for opt in opts:
        key, _, value = opt.partition("=")
        try:
            if key == "rate":
                rate = float(value)
                if not (math.isfinite(rate) and rate >= 0):
                    raise ValueError
            elif key == "burst":
                burst = int(value)
                if burst < 1:
                    raise ValueError
            else:
                raise UsageError(f"--https: {opt!r} is not an option (rate=R per second, "
                                 "burst=N)")
        except ValueError:
            raise UsageError(f"--https: {opt!r} needs a positive number") from None
    return HttpsSpec(host, int(port), rate, burst)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context, TLS 1.3 only, with the pair loaded; UsageError in one sentence."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError as e:
        raise UsageError(f"cannot read {e.filename or cert}: no such file; check --cert "
                         "and --key") from None
    except (OSError, ssl.SSLError) as e:
        why = getattr(e, "reason", None) or getattr(e, "strerror", None) or type(e).__name__
        raise UsageError(f"cannot load the TLS certificate {cert} with key {key} ({why}); "
                         "give a PEM certificate chain and its PEM private key") from None
    return ctx


class RateLimiter:
    """A token bucket per client address (thread-safe; used from the event loop)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self._clock = rate, burst, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, address: str) -> float:
        """0.0 when the request may go on, else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(address, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[address] = (tokens, now)
            while len(self._buckets) > MAX_BUCKETS:
                self._buckets.popitem(last=False)
            return wait


class SeedApp:
    """The ASGI application; see the module docstring."""

    def __init__(self, issuer: Issuer, *, core: Any, ledger: Any, log: LogFn,
                 metrics: Metrics | None = None, limiter: RateLimiter | None = None,
                 workers: int = DEFAULT_WORKERS) -> None:
        self.issuer, self.core, self.ledger, self.log = issuer, core, ledger, log
        self.metrics = metrics or Metrics()
        self.limiter = limiter or RateLimiter(DEFAULT_RATE, DEFAULT_BURST)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="seedtool-https")

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not served
        path, method = scope.get("path", ""), scope.get("method", "")
        if path == "/v1/seed":
            if method != "POST":
                await _json(send, 405, _err("malformed", "use POST for /v1/seed"),
                            [(b"allow", b"POST")])
                return
            await self._seed(scope, receive, send)
        elif path in ("/healthz", "/metrics") and method in ("GET", "HEAD"):
            await (self._healthz(send) if path == "/healthz" else self._metrics(send))
        else:
            await _json(send, 404, _err("not-found", "the seed server serves POST /v1/seed, "
                                        "GET /healthz and GET /metrics"))

    # ---- POST /v1/seed
    async def _seed(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        client = (scope.get("client") or ("-", 0))[0]
        fields: dict[str, object] = {"kind": "-", "instance": "-", "client": client}
        wait = self.limiter.take(client)
        if wait:
            retry = str(max(1, math.ceil(wait)))
            self.metrics.refused("rate-limited")
            self._log_request(fields, "rate-limited", start)
            message = f"too many requests from {client}; retry after {retry} s"
            await _json(send, 429, _err("rate-limited", message),
                        [(b"retry-after", retry.encode())])
            return
        status, body = 200, {}
        try:
            raw = await self._body(scope, receive)
            kind, evidence, nonce = parse_request(raw)
            fields["kind"] = kind
            loop = asyncio.get_running_loop()

            def note(identity: Any) -> None:
                fields["instance"] = identity.instance

            issued = await loop.run_in_executor(
                self.pool, lambda: self.issuer.issue(kind, evidence, nonce, client=client,
                                                     verified=note))
        except Exception as e:  # every answer is JSON, one sentence
            status, code, message = _error_of(e)
            self.metrics.refused(code)
            body = _err(code, message)
            result = code
        else:
            fields["instance"] = issued.identity.instance
            fields["issued"] = issued.issued
            self.metrics.issued(issued.identity.kind)
            body = issued.body()
            result = "issued"
        if fields["kind"] != "-":
            self.metrics.observe(str(fields["kind"]), time.perf_counter() - start)
        self._log_request(fields, result, start)
        await _json(send, status, body)

    async def _body(self, scope: dict[str, Any], receive: Receive) -> bytes:
        headers = dict(scope.get("headers") or [])
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype != b"application/json":
            raise Malformed("send the request as Content-Type: application/json")
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            raise Malformed(f"the request body is over {MAX_BODY} bytes")
        chunks: list[bytes] = []
        size = 0
        async with asyncio.timeout(BODY_SECONDS):
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    raise Malformed("the client went away before its request arrived")
                chunk = msg.get("body", b"")
                size += len(chunk)
                if size > MAX_BODY:
                    raise Malformed(f"the request body is over {MAX_BODY} bytes")
                chunks.append(chunk)
                if not msg.get("more_body"):
                    return b"".join(chunks)

    def _log_request(self, fields: dict[str, object], result: str, start: float) -> None:
        self.log("seed-request", {**fields, "result": result,
                                  "ms": round((time.perf_counter() - start) * 1000, 1)})

    # ---- GET /healthz, /metrics
    async def _probe(self) -> tuple[bool, bool]:
        serving = bool(self.core.serving)
        loop = asyncio.get_running_loop()
        try:
            writable = bool(await loop.run_in_executor(self.pool, self.ledger.writable))
        except Exception:  # a probe that cannot run is a ledger that cannot write
            writable = False
        return serving, writable

    async def _healthz(self, send: Send) -> None:
        serving, writable = await self._probe()
        reasons = []
        if not serving:
            reasons.append("sources-unhealthy")
        if not writable:
            reasons.append("ledger-unavailable")
        if reasons:
            await _json(send, 503, {"ready": False, "reasons": reasons})
        else:
            await _json(send, 200, {"ready": True, "identities": sorted(self.issuer.checks)})

    async def _metrics(self, send: Send) -> None:
        serving, writable = await self._probe()
        sources = [(s["name"], bool(s["healthy"])) for s in self.core.status()["sources"]]
        text = self.metrics.render(sources=sources, serving=serving, ledger=writable)
        await _send(send, 200, text.encode(), b"text/plain; version=0.0.4; charset=utf-8")


def _err(code: str, message: str) -> dict[str, Any]:
    return {"error": code, "message": message}


def _error_of(e: BaseException) -> tuple[int, str, str]:
    """(status, code, message) of an exception: its own .status/.error, else 500."""
    status, code = getattr(e, "status", None), getattr(e, "error", None)
    if isinstance(e, SeedtoolError) and isinstance(status, int) and isinstance(code, str):
        return status, code, str(e)
    if isinstance(e, TimeoutError):
        return 400, "malformed", f"the request body did not arrive within {BODY_SECONDS:g} s"
    return 500, "internal", f"the server failed ({type(e).__name__}); see its log"


async def _json(send: Send, status: int, body: dict[str, Any],
                extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await _send(send, status, json.dumps(body).encode(), b"application/json", extra)


async def _send(send: Send, status: int, body: bytes, ctype: bytes,
                extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class HttpsServer:
    """The listener: binds early, serves on the running loop, reloads its TLS pair."""

    def __init__(self, app: SeedApp, spec: HttpsSpec, cert: str, key: str, log: LogFn) -> None:
        self.app, self.spec, self.cert, self.key, self.log = app, spec, cert, key, log
        self._current = tls_context(cert, key)  # errors now, before anything opens
        self._outer = tls_context(cert, key)
        self._outer.sni_callback = self._pick
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None
        self.sock: socket.socket | None = None

    def _pick(self, conn: Any, _name: str | None, _ctx: ssl.SSLContext) -> None:
        conn.context = self._current  # the pair loaded last (SIGHUP)

    def bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.spec.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.spec.host, self.spec.port))
            sock.listen(1024)
        except OSError as e:
            sock.close()
            raise UsageError(f"cannot listen on {self.spec.host}:{self.spec.port} for "
                             f"--https: {e.strerror}") from None
        sock.setblocking(False)
        self.sock = sock
        return sock

    @property
    def address(self) -> tuple[str, int]:
        assert self.sock is not None
        host, port = self.sock.getsockname()[:2]
        return host, port

    async def start(self) -> None:
        import uvicorn

        config = uvicorn.Config(self.app, lifespan="off", log_config=None, access_log=False,
                                server_header=False, http=_protocol_class(), timeout_keep_alive=5,
                                timeout_graceful_shutdown=5,
                                backlog=1024)
        config.load()
        config.ssl = self._outer
        self._server = _server_class()(config)
        sock = self.sock if self.sock is not None else self.bind()
        self._task = asyncio.ensure_future(self._server.serve(sockets=[sock]))
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()
        self.log("https", {"listen": "{}:{}".format(*self.address), "tls": "1.3",
                           "identities": ",".join(self.app.issuer.checks)})

    def reload(self) -> None:
        """SIGHUP: load the pair again; keep the old one if the new one does not load."""
        try:
            ctx = tls_context(self.cert, self.key)
        except UsageError as e:
            self.log("tls-reload-failed", {"error": str(e), "action": "kept the old pair"})
            return
        self._current = ctx
        self.log("tls-reloaded", {"cert": self.cert})

    async def close(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await self._task
        if self.sock is not None:
            self.sock.close()
        self.app.pool.shutdown(wait=False, cancel_futures=True)


def _protocol_class() -> Any:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class Protocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with a deadline for each request's headers."""

        _deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(HEADER_SECONDS, self._late)

        def _late(self) -> None:
            if not self.transport.is_closing():
                self.transport.close()  # headers too slow: no answer, the client retries

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

    return Protocol


def _server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server without its signal handlers: the daemon owns SIGTERM/SIGHUP."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server
