"""The guest's seed-server client: ask every configured server for a bound envelope.

An image baked with `seedtool bake --seed-server URL ... --seed-server-ca CA.pem` holds
/etc/seedtool/seed-servers.json (`load_config`) and the CA that signs the servers'
certificates. At boot the guest gets its identity evidence (`seedtool.guest.evidence`)
and `fetch_seeds` asks every server at once, in threads, under one deadline (default
10 s for connect, TLS and response together), over TLS that trusts only that CA (never
the system store) with the host name checked. Each request carries a fresh 32-byte
nonce; a server answers with an envelope bound to (instance, nonce)
(`POST /v1/seed`, docs/serve.md). Each server ends in one reason: "ok", the server's
own error code ("too-many", "not-allowed", ...), "tls: certificate not trusted",
"timeout", "unreachable", "bad response", or "evidence: ..." when no request was sent.

This module verifies nothing and credits nothing: `NetOutcome.envelopes()` gives each
envelope with the (instance, nonce) it must be bound to, for
`decision.check(..., expect=...)` (`check_envelopes`), and `mix_replies` the bytes of
every reply and its receive time stamps, to mix in whatever is credited. Crediting
(at most 512 bits, once per boot, only when one envelope verified) is core's.

What it must never do: put a seed, an envelope, a token or a reply's bytes in a
message, a reason, a repr or the status (ids, codes and counts only); raise out of
`fetch_seeds` (every failure is a reason); import `ssl` or `http.client` when no
server is configured. Standard library only, Python 3.9 (Debian 11).
"""

from __future__ import annotations

import json
import os
import re
import struct
import threading
import time

from ..shared.errors import UsageError
from ..shared.mix import mix
from ..shared.record import Record
from .policy import SEED_SERVERS_PATH

TYPE_CHECKING = False
if TYPE_CHECKING:  # read at boot: no typing at run time (docs/guest.md "Boot time")
    from collections.abc import Mapping, Sequence
    from ssl import SSLContext
    from typing import Any, Union

    from ..shared.envelope import VerifiedEnvelope
    from ..shared.pubkeys import PublicKey
    from .evidence import Evidence
    from .policy import Policy

    EvidenceFor = Union[Evidence, str, dict[str, Union[Evidence, str]]]

CONFIG_PATH = SEED_SERVERS_PATH
CA_PATH = "/etc/seedtool/seed-server-ca.pem"
CONFIG_VERSION = 1
DEFAULT_TIMEOUT = 10.0
MIN_TIMEOUT, MAX_TIMEOUT = 1.0, 60.0
MAX_CONFIG_SIZE = 64 * 1024
MAX_SERVERS = 16
MAX_URL = 1024
#: identity kinds a config may name; "token:/PATH" names the token's file in the image
IDENTITIES = ("aws-iid", "gce-iit")
NONCE_LEN = 32
#: a reply larger than this is not one (a v2 envelope's text is about 2 KiB)
MAX_REPLY = 64 * 1024
SEED_PATH = "/v1/seed"

OK = "ok"
TIMEOUT = "timeout"
UNREACHABLE = "unreachable"
BAD_RESPONSE = "bad response"
NOT_TRUSTED = "tls: certificate not trusted"
WRONG_NAME = "tls: certificate is for another host"
TLS_FAILED = "tls: handshake failed"
NO_CA = "tls: the CA file cannot be loaded"
#: a server's own error code is shown only in this form (it is the server's text)
_CODE = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
_KEYS = {"version", "servers", "ca", "timeout", "identity"}


class ConfigError(UsageError):
    """The seed-server configuration is unreadable or invalid."""


class Config(Record):
    """What the image says about its seed servers (see `config_from_mapping`)."""

    __slots__ = ("servers", "ca", "timeout", "identity")
    FIELDS = __slots__
    DEFAULTS = {"ca": CA_PATH, "timeout": DEFAULT_TIMEOUT, "identity": "aws-iid"}
    #: https URLs, as configured (a GCE token's audience is the URL exactly as here)
    servers: tuple[str, ...]
    #: the CA file (absolute, in the image) the servers' certificates must chain to
    ca: str
    #: seconds for the whole fetch, every server at once
    timeout: float
    #: "aws-iid", "gce-iit" or "token:/PATH"
    identity: str

    def to_json(self) -> dict[str, Any]:
        return {"version": CONFIG_VERSION, "servers": list(self.servers), "ca": self.ca,
                "timeout": self.timeout, "identity": self.identity}


def check_url(url: object, where: str = "seed-server configuration") -> str:
    """`url` when it is an https URL of a host (no user, query or fragment), else ConfigError."""
    from urllib.parse import urlsplit

    if not isinstance(url, str) or not url or len(url) > MAX_URL or not url.isprintable() \
            or any(c.isspace() for c in url):
        raise ConfigError(f"{where}: a seed server must be an https URL such as "
                          "https://seeds.example.com:8443")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(f"{where}: seed server {url[:80]} is not a valid URL") from None
    if parts.scheme != "https":
        raise ConfigError(f"{where}: seed server {url[:80]} is not https; the guest talks "
                          "to seed servers over TLS only")
    if not parts.hostname or parts.username is not None or parts.query or parts.fragment \
            or "#" in url or "?" in url or (port is not None and port == 0):
        raise ConfigError(f"{where}: seed server {url[:80]} must be https://HOST[:PORT][/PATH] "
                          "with no user, query or fragment")
    return url


def check_identity(identity: object, where: str = "seed-server configuration") -> str:
    if isinstance(identity, str) and identity in IDENTITIES:
        return identity
    if isinstance(identity, str) and identity.startswith("token:/") and "\x00" not in identity \
            and len(identity) <= 4096 + 6:
        return identity
    raise ConfigError(f"{where}: 'identity' must be aws-iid, gce-iit or token:/PATH "
                      "(the bootstrap token's file in the image)")


def config_from_mapping(data: Mapping[str, Any], where: str = "seed-server configuration"
                        ) -> Config:
    """Validate a configuration as JSON gives it (strict: an unknown key is refused)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object; rerun seedtool bake --seed-server")
    unknown = sorted(str(k) for k in data if k not in _KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown setting '{unknown[0][:40]}'; the settings are "
                          f"{', '.join(sorted(_KEYS))}")
    if data.get("version", CONFIG_VERSION) != CONFIG_VERSION:
        raise ConfigError(f"{where}: version must be {CONFIG_VERSION}; rerun seedtool bake "
                          "with this seedtool")
    servers = data.get("servers")
    if not isinstance(servers, list) or not servers or len(servers) > MAX_SERVERS:
        raise ConfigError(f"{where}: 'servers' must be a list of 1 to {MAX_SERVERS} https URLs")
    urls = tuple(dict.fromkeys(check_url(u, where) for u in servers))
    ca = data.get("ca", CA_PATH)
    if not isinstance(ca, str) or not ca.startswith("/") or "\x00" in ca or len(ca) > 4096:
        raise ConfigError(f"{where}: 'ca' must be an absolute path in the image")
    timeout = data.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not MIN_TIMEOUT <= timeout <= MAX_TIMEOUT:
        raise ConfigError(f"{where}: 'timeout' must be a number of seconds from "
                          f"{MIN_TIMEOUT:g} to {MAX_TIMEOUT:g}")
    identity = check_identity(data.get("identity", "aws-iid"), where)
    return Config(servers=urls, ca=ca, timeout=float(timeout), identity=identity)


def load_config(path: str = CONFIG_PATH) -> Config | None:
    """The image's configuration; None when the file does not exist (no servers)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_SIZE + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}; fix its permissions") from None
    if len(raw) > MAX_CONFIG_SIZE:
        raise ConfigError(f"{path} is larger than {MAX_CONFIG_SIZE} bytes; it is not one")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ConfigError(f"{path} is not valid JSON; rerun seedtool bake --seed-server") from None
    return config_from_mapping(data, path)


# --- one request per server ----------------------------------------------------------------


class ServerResult(Record):
    """How one server answered. The envelope and the reply's bytes are hidden from repr
    and never in `status()`."""

    __slots__ = ("server", "reason", "detail", "status", "envelope", "expect", "reply",
                 "seed_id", "issued", "key_id", "times", "seconds")
    FIELDS = __slots__
    HIDDEN = frozenset({"envelope", "reply", "expect"})
    DEFAULTS = {"detail": "", "status": None, "envelope": None, "expect": None, "reply": b"",
                "seed_id": None, "issued": None, "key_id": None, "times": (), "seconds": None}
    server: str
    #: "ok" or why not (see the module docstring)
    reason: str
    #: a few more words for a person ("HTTP 502", "not JSON"); never the server's text
    detail: str
    #: the HTTP status, when one came
    status: int | None
    #: the envelope's base64 text (reason "ok" only)
    envelope: str | None
    #: (instance, nonce) the envelope must be bound to: what was asked
    expect: tuple[str, bytes] | None
    #: the reply's raw bytes, for `mix_replies` only
    reply: bytes
    seed_id: str | None
    issued: int | None
    key_id: str | None
    #: perf_counter_ns() when sending, at the response's headers and at its last byte
    times: tuple[int, ...]
    seconds: float | None

    @property
    def ok(self) -> bool:
        return self.reason == OK

    def status_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"server": self.server, "result": self.reason}
        for name in ("detail", "status", "seed_id", "issued", "key_id", "seconds"):
            value = getattr(self, name)
            if value not in (None, ""):
                out[name] = value
        return out


class NetOutcome(Record):
    """Every configured server's result, in the configuration's order."""

    __slots__ = ("results", "seconds")
    FIELDS = __slots__
    DEFAULTS = {"seconds": 0.0}
    results: tuple[ServerResult, ...]
    seconds: float

    def envelopes(self) -> list[tuple[str, tuple[str, bytes]]]:
        """(envelope text, (instance, nonce) it must be bound to) of every server that gave one."""
        return [(r.envelope, r.expect) for r in self.results
                if r.ok and r.envelope is not None and r.expect is not None]

    def reasons(self) -> dict[str, str]:
        return {r.server: r.reason for r in self.results}

    def status(self) -> list[dict[str, Any]]:
        """For status.json: one object per server (ids, codes, times; never data)."""
        return [r.status_json() for r in self.results]

    def summary(self) -> str:
        """For the kmsg line: "SERVER ok, SERVER timeout"."""
        return ", ".join(f"{r.server} {r.reason}" for r in self.results) or "no seed servers"


def new_nonce() -> bytes:
    """32 fresh bytes that never block: the kernel's when its CRNG is ready, else
    /dev/urandom's (which does not wait) hashed with the clocks.

    The nonce is not secret (the server signs it back); it must only never repeat, so
    that a recorded reply cannot be replayed to this request.
    """
    try:
        return os.getrandom(NONCE_LEN, os.GRND_NONBLOCK)
    except (BlockingIOError, AttributeError, OSError):
        pass
    import hashlib

    try:
        with open("/dev/urandom", "rb") as f:
            extra = f.read(NONCE_LEN)
    except OSError:
        extra = b""
    clocks = struct.pack(">QQQI", time.time_ns(), time.monotonic_ns(), time.perf_counter_ns(),
                         os.getpid())
    return hashlib.sha256(b"seedtool nonce\x00" + extra + clocks).digest()


def tls_context(cafile: str) -> SSLContext:
    """A client context that trusts exactly the CAs in `cafile`: no system store, the
    host name checked, TLS 1.2 at least (Python `ssl` docs, "Security considerations":
    PROTOCOL_TLS_CLIENT enables CERT_REQUIRED and check_hostname). Raises OSError or
    ssl.SSLError when the file cannot be loaded."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=cafile)
    return ctx


def _split(url: str) -> tuple[str, int | None, str]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    return host, parts.port, parts.path.rstrip("/") + SEED_PATH


class _Request:
    """One server's request in its own thread; the first result set wins."""

    def __init__(self, server: str, evidence: Evidence, ctx: SSLContext, deadline: float
                 ) -> None:
        self.server = server
        self.evidence = evidence
        self.ctx = ctx
        self.deadline = deadline
        self.nonce = new_nonce()
        self.result: ServerResult | None = None
        self.conn: Any = None
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, name=f"seedtool-fetch {server}",
                                       daemon=True)

    def finish(self, reason: str, **facts: Any) -> None:
        with self.lock:
            if self.result is None:
                self.result = ServerResult(
                    server=self.server, reason=reason,
                    seconds=round(time.monotonic() - self.started, 4), **facts)

    def abandon(self) -> None:
        """The deadline passed: record "timeout" and unblock the thread's socket."""
        self.finish(TIMEOUT, detail="no complete answer before the deadline")
        conn = self.conn
        sock = getattr(conn, "sock", None)
        if sock is not None:
            import socket

            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _run(self) -> None:
        try:
            self._ask()
        except Exception as e:  # never out of the thread: a reason, with the kind of error
            reason, detail = _failure(e)
            self.finish(reason, detail=detail)

    def _ask(self) -> None:
        import http.client

        left = self.deadline - time.monotonic()
        if left <= 0:
            self.finish(TIMEOUT)
            return
        host, port, path = _split(self.server)
        body = dict(self.evidence.fields)
        body["nonce"] = _b64(self.nonce)
        data = json.dumps(body, separators=(",", ":")).encode()
        self.conn = conn = http.client.HTTPSConnection(host, port, timeout=left,
                                                       context=self.ctx)
        sent = time.perf_counter_ns()
        try:
            conn.request("POST", path, body=data, headers={
                "Content-Type": "application/json", "Accept": "application/json",
                "Connection": "close", "User-Agent": "seedtool-guest"})
            resp = conn.getresponse()
            head = time.perf_counter_ns()
            raw = resp.read(MAX_REPLY + 1)
            done = time.perf_counter_ns()
        finally:
            conn.close()
        if time.monotonic() > self.deadline:
            self.finish(TIMEOUT, detail="answered after the deadline")
            return
        self._judge(resp.status, raw, (sent, head, done))

    def _judge(self, status: int, raw: bytes, times: tuple[int, ...]) -> None:
        facts: dict[str, Any] = {"status": status, "reply": raw[:MAX_REPLY], "times": times}
        if len(raw) > MAX_REPLY:
            self.finish(BAD_RESPONSE, detail=f"reply larger than {MAX_REPLY} bytes", **facts)
            return
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            doc = None
        if not isinstance(doc, dict):
            self.finish(BAD_RESPONSE, detail=f"HTTP {status}, not a JSON object", **facts)
            return
        if status != 200:
            code = doc.get("error")
            if isinstance(code, str) and _CODE.fullmatch(code):
                self.finish(code, detail=f"HTTP {status}", **facts)
            else:
                self.finish(BAD_RESPONSE, detail=f"HTTP {status} without an error code", **facts)
            return
        text = doc.get("envelope")
        from ..shared import envelope

        try:
            if not isinstance(text, str):
                raise ValueError("no envelope")
            env = envelope.parse(text)
        except (ValueError, envelope.EnvelopeError):
            self.finish(BAD_RESPONSE, detail="HTTP 200 without an envelope", **facts)
            return
        issued = doc.get("issued")
        self.finish(OK, envelope=text, expect=(self.evidence.instance, self.nonce),
                    seed_id=env.seed_id_hex, key_id=env.key_id_hex,
                    issued=issued if isinstance(issued, int) and not isinstance(issued, bool)
                    else None, **facts)


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


def _failure(e: BaseException) -> tuple[str, str]:
    """(reason, detail) for an exception of a request: never its message (it may quote
    the server), only what kind of failure it was."""
    import socket
    import ssl

    if isinstance(e, ssl.SSLCertVerificationError):
        # OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH is 62 (x509_vfy.h)
        if getattr(e, "verify_code", None) == 62:
            return WRONG_NAME, "the certificate does not name this server"
        return NOT_TRUSTED, "the certificate does not chain to the configured CA"
    if isinstance(e, ssl.SSLError):
        return TLS_FAILED, type(e).__name__
    if isinstance(e, (socket.timeout, TimeoutError)):
        return TIMEOUT, ""
    if isinstance(e, socket.gaierror):
        return UNREACHABLE, "the name does not resolve"
    if isinstance(e, (ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError,
                      BrokenPipeError)):
        return UNREACHABLE, type(e).__name__
    if isinstance(e, OSError):
        return UNREACHABLE, e.strerror or type(e).__name__
    if type(e).__module__ == "http.client":
        return BAD_RESPONSE, type(e).__name__
    return BAD_RESPONSE, f"internal error ({type(e).__name__})"


def _evidence_for(evidence: EvidenceFor, server: str) -> Evidence | str:
    if isinstance(evidence, dict):
        got = evidence.get(server)
        return got if got is not None else "evidence: none gathered for this server"
    return evidence


def fetch_seeds(config: Config, evidence: EvidenceFor, *, deadline: float | None = None,
                cafile: str | None = None) -> NetOutcome:
    """Ask every server of `config` at once; never raises.

    `evidence`: one `Evidence` for every server, or {server: Evidence or why there is
    none} (a GCE token names its server as audience); a reason string instead of
    evidence means that server is not asked. `deadline`: time.monotonic() by which every
    answer must be in (default now + config.timeout); a server not done by then is
    "timeout" and its connection is shut. `cafile` overrides config.ca (a test root).
    """
    start = time.monotonic()
    if deadline is None:
        deadline = start + config.timeout
    try:
        ctx = tls_context(cafile or config.ca)
    except Exception:  # OSError, ssl.SSLError: no request may go out without the pin
        return NetOutcome(results=tuple(ServerResult(server=s, reason=NO_CA, detail=cafile or
                                                     config.ca) for s in config.servers))
    jobs: list[_Request | ServerResult] = []
    job: _Request | ServerResult
    for server in config.servers:
        ev = _evidence_for(evidence, server)
        if isinstance(ev, str):
            jobs.append(ServerResult(server=server, reason=ev))
            continue
        job = _Request(server, ev, ctx, deadline)
        job.thread.start()
        jobs.append(job)
    for job in jobs:
        if isinstance(job, _Request):
            job.thread.join(max(0.0, deadline - time.monotonic()))
    results: list[ServerResult] = []
    for job in jobs:
        if isinstance(job, _Request):
            if job.thread.is_alive():
                job.abandon()
            if job.result is None:  # the thread ended without a word: cannot happen
                job.finish(BAD_RESPONSE, detail="internal error")
            results.append(job.result or ServerResult(server=job.server, reason=BAD_RESPONSE))
        else:
            results.append(job)
    return NetOutcome(results=tuple(results), seconds=round(time.monotonic() - start, 4))


def mix_replies(outcome: NetOutcome, length: int = 64) -> bytes:
    """`length` bytes derived (seedtool.shared.mix, HKDF-SHA512) from every server's
    reply (its raw bytes, the nonce sent) and the perf_counter_ns() times it was sent
    and received: what an observer of the network cannot time exactly. b'' when no
    server was asked. Mixed in beside the credited seed; itself worth no credit."""
    parts: list[tuple[str, bytes]] = []
    for r in outcome.results:
        parts.append(("server", r.server.encode()))
        if r.expect is not None:
            parts.append(("nonce", r.expect[1]))
        parts.append(("reply", r.reply))
        parts.append(("times", struct.pack(f">{len(r.times)}Q", *r.times)))
    parts.append(("now", struct.pack(">QQ", time.perf_counter_ns(), time.monotonic_ns())))
    if len(parts) == 1:
        return b""
    return mix(parts, length, b"seedtool seed-server replies")


def check_envelopes(outcome: NetOutcome, keys: Sequence[PublicKey], policy: Policy,
                    now: float) -> list[tuple[ServerResult, VerifiedEnvelope | None, str]]:
    """Each "ok" server's envelope checked by `decision.check` against the trusted keys,
    the validity period and its binding to what was asked: (result, verified or None,
    why not). The ledger is the caller's next step, before any credit."""
    from . import decision

    checked: list[tuple[ServerResult, VerifiedEnvelope | None, str]] = []
    for r in outcome.results:
        if not r.ok or r.envelope is None or r.expect is None:
            continue
        env, malformed = decision.parse(r.envelope)
        if env is None:
            checked.append((r, None, malformed))
            continue
        verified, refused = decision.check(env, list(keys), policy, now, expect=r.expect)
        checked.append((r, verified, refused))
    return checked


def fetch_for_image(root: str = "/", *, imds: str | None = None, metadata: str | None = None
                    ) -> NetOutcome | None:
    """What core calls at boot: None when the image has no seed servers (then neither
    ssl nor http.client is imported), else every server's result, evidence and fetch
    together under the configuration's one timeout. Never raises: an invalid
    configuration is a NetOutcome with one result, named after the file, saying why.
    `root`: the image root (a test's); `imds`/`metadata`: base URLs for tests."""
    path = os.path.join(root, CONFIG_PATH.lstrip("/"))
    if not os.path.exists(path):
        return None
    start = time.monotonic()
    try:
        config = load_config(path)
    except ConfigError as e:
        return NetOutcome(results=(ServerResult(server=CONFIG_PATH, reason="invalid configuration",
                                                detail=str(e).split(";")[0][:200]),))
    if config is None:
        return None
    deadline = start + config.timeout
    from . import evidence

    ev = evidence.gather(config, root=root, imds=imds, metadata=metadata, deadline=deadline)
    return fetch_seeds(config, ev, deadline=deadline,
                       cafile=os.path.join(root, config.ca.lstrip("/")))
