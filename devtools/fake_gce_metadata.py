"""A local stand-in for the Compute Engine metadata server and Google's token-signing
certificates, for tests only.

Each VM gets its own metadata server on a 127.0.0.1 port (the real one answers each
VM only about itself), speaking the documented surface (Compute Engine documentation,
"About VM metadata" and "Verify the identity of a VM"):

    GET /computeMetadata/v1/instance/service-accounts/default/identity?audience=A&format=F
    GET /computeMetadata/v1/instance/id
    GET /computeMetadata/v1/instance/zone          projects/NUMBER/zones/ZONE
    GET /computeMetadata/v1/instance/name
    GET /computeMetadata/v1/project/project-id
    GET /computeMetadata/v1/project/numeric-project-id

Every request needs `Metadata-Flavor: Google` and no `X-Forwarded-For` (403
otherwise, as the real server answers); answers carry `Metadata-Flavor: Google`.
The identity token is an RS256 JWT signed by a key made at start; `format=full` adds
the `google.compute_engine` claim, `licenses=TRUE` its `license_id`.

The "Google" server (`certs_url`) serves the x509 map, kid -> PEM certificate, as
https://www.googleapis.com/oauth2/v1/certs does, with Cache-Control max-age, Expires
and Date. `rotate()` adds a new key that signs from then on; `retire(kid)` stops
publishing one; `certs_status` scripts a failure; `cert_requests` counts requests.
`clock` is the time tokens are made at (a test may move it). `sign()` signs any
header and claims with a published key, for tests that forge tokens.
"""

from __future__ import annotations

import base64
import datetime
import functools
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from ._http import serve, stop, url_of

PROJECT = "test-project"
PROJECT_NUMBER = 123456789012
ZONE = "us-central1-a"
ISSUER = "https://accounts.google.com"


@dataclass
class Vm:
    """One instance as its metadata server describes it."""

    name: str = "vm-1"
    instance_id: str = "4242424242424242424"
    project_id: str = PROJECT
    project_number: int = PROJECT_NUMBER
    zone: str = ZONE
    #: unix seconds; None: when the fake starts
    created: int | None = None
    service_account: str = f"default@{PROJECT}.iam.gserviceaccount.com"
    licenses: list[str] = field(default_factory=lambda: ["1000201"])


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class _Key:
    kid: str
    private: rsa.RSAPrivateKey
    pem: str


def _new_key() -> _Key:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-googleapis-certs")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(private.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=14))
            .sign(private, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return _Key(os.urandom(20).hex(), private, pem)


@dataclass
class FakeGceMetadata:
    vms: list[Vm] = field(default_factory=lambda: [Vm()])
    #: max-age of the certificate answer (None: no Cache-Control)
    certs_max_age: int | None = 3600
    #: also send Expires (Date + this many seconds) when set
    certs_expires_in: int | None = 3600
    #: when set, the certificate endpoint answers this status and no body
    certs_status: int | None = None
    clock: Callable[[], float] = time.time
    cert_requests: int = 0
    token_requests: int = 0
    _keys: list[_Key] = field(default_factory=list)  # published; the last one signs
    _servers: dict[str, ThreadingHTTPServer] = field(default_factory=dict)
    _google: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- life ---------------------------------------------------------------------------

    def start(self) -> FakeGceMetadata:
        self._keys.append(_new_key())
        started = int(self.clock())
        for vm in self.vms:
            if vm.created is None:
                vm.created = started
        self._google = serve(self._handle_google)
        for vm in self.vms:
            self._servers[vm.name] = serve(functools.partial(self._handle_vm, vm=vm))
        return self

    def stop(self) -> None:
        for server in [*self._servers.values(), *([self._google] if self._google else [])]:
            stop(server)
        self._servers.clear()
        self._google = None

    def __enter__(self) -> FakeGceMetadata:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests use -----------------------------------------------------------------

    def url(self, name: str | None = None) -> str:
        """The metadata server's base URL for VM `name` (the first by default)."""
        return url_of(self._servers[name or self.vms[0].name])

    @property
    def certs_url(self) -> str:
        assert self._google is not None, "start() the fake first"
        return url_of(self._google) + "/oauth2/v1/certs"

    def vm(self, name: str | None = None) -> Vm:
        return next(v for v in self.vms if v.name == (name or self.vms[0].name))

    @property
    def kids(self) -> list[str]:
        with self._lock:
            return [k.kid for k in self._keys]

    def certs_json(self) -> bytes:
        """The x509 map as the certificate endpoint serves it now."""
        with self._lock:
            return json.dumps({k.kid: k.pem for k in self._keys}).encode()

    def rotate(self) -> str:
        """Publish a new key, which signs every token from now on; return its kid."""
        key = _new_key()
        with self._lock:
            self._keys.append(key)
        return key.kid

    def retire(self, kid: str) -> None:
        """Stop publishing (and signing with) the key `kid`."""
        with self._lock:
            self._keys = [k for k in self._keys if k.kid != kid]

    def private_key(self, kid: str | None = None) -> rsa.RSAPrivateKey:
        with self._lock:
            return next(k for k in reversed(self._keys) if kid in (None, k.kid)).private

    def claims(self, vm: Vm, audience: str, fmt: str = "full",
               licenses: bool = False) -> dict[str, Any]:
        """The claims the metadata server puts in an identity token now."""
        iat = int(self.clock())
        claims: dict[str, Any] = {
            "aud": audience, "azp": "101" + vm.instance_id[:18], "exp": iat + 3600,
            "iat": iat, "iss": ISSUER, "sub": "101" + vm.instance_id[:18],
        }
        if fmt == "full":
            engine: dict[str, Any] = {
                "instance_creation_timestamp": vm.created,
                "instance_id": vm.instance_id,
                "instance_name": vm.name,
                "project_id": vm.project_id,
                "project_number": vm.project_number,
                "zone": vm.zone,
            }
            if licenses:
                engine["license_id"] = list(vm.licenses)
            claims["email"] = vm.service_account
            claims["email_verified"] = True
            claims["google"] = {"compute_engine": engine}
        return claims

    def sign(self, claims: dict[str, Any], header: dict[str, Any] | None = None,
             kid: str | None = None) -> str:
        """A compact JWS over `claims`, RS256 with the signing key (or `kid`'s);
        `header` replaces the default header {"alg", "kid", "typ"}."""
        with self._lock:
            key = next(k for k in reversed(self._keys) if kid in (None, k.kid))
        head = header if header is not None else {"alg": "RS256", "kid": key.kid,
                                                   "typ": "JWT"}
        signing_input = (b64url(json.dumps(head).encode()) + "."
                         + b64url(json.dumps(claims).encode()))
        signature = key.private.sign(signing_input.encode(), padding.PKCS1v15(),
                                     hashes.SHA256())
        return signing_input + "." + b64url(signature)

    def token(self, audience: str, name: str | None = None, fmt: str = "full") -> str:
        """The identity token VM `name` would get now."""
        return self.sign(self.claims(self.vm(name), audience, fmt))

    # -- HTTP ---------------------------------------------------------------------------

    def _handle_google(self, h: BaseHTTPRequestHandler) -> None:
        if urlsplit(h.path).path != "/oauth2/v1/certs":
            _send(h, 404, b"Not Found")
            return
        with self._lock:
            self.cert_requests += 1
            status = self.certs_status
        if status is not None:
            _send(h, status, b"scripted failure")
            return
        now = self.clock()
        headers = {"Content-Type": "application/json; charset=UTF-8",
                   "Date": formatdate(now, usegmt=True)}
        if self.certs_max_age is not None:
            headers["Cache-Control"] = (f"public, max-age={self.certs_max_age}, "
                                        "must-revalidate, no-transform")
        if self.certs_expires_in is not None:
            headers["Expires"] = formatdate(now + self.certs_expires_in, usegmt=True)
        _send(h, 200, self.certs_json(), headers)

    def _handle_vm(self, h: BaseHTTPRequestHandler, *, vm: Vm) -> None:
        if h.headers.get("Metadata-Flavor") != "Google" or h.headers.get("X-Forwarded-For"):
            _send(h, 403, b"Missing required header: Metadata-Flavor\n")
            return
        split = urlsplit(h.path)
        query = {k: v[0] for k, v in parse_qs(split.query).items()}
        base = "/computeMetadata/v1/"
        path = split.path[len(base):] if split.path.startswith(base) else None
        answers = {
            "instance/id": vm.instance_id,
            "instance/name": vm.name,
            "instance/zone": f"projects/{vm.project_number}/zones/{vm.zone}",
            "project/project-id": vm.project_id,
            "project/numeric-project-id": str(vm.project_number),
        }
        if path == "instance/service-accounts/default/identity":
            audience = query.get("audience", "")
            if not audience:
                _send(h, 400, b"non-empty audience parameter required\n")
                return
            fmt = query.get("format", "standard")
            if fmt not in ("standard", "full"):
                _send(h, 400, b"format must be 'standard' or 'full'\n")
                return
            with self._lock:
                self.token_requests += 1
            claims = self.claims(vm, audience, fmt, query.get("licenses", "").upper() == "TRUE")
            _send(h, 200, self.sign(claims).encode())
        elif path in answers:
            _send(h, 200, answers[path].encode())
        else:
            _send(h, 404, b"Not Found\n")


def _send(h: BaseHTTPRequestHandler, status: int, body: bytes,
          headers: dict[str, str] | None = None) -> None:
    h.send_response(status)
    for k, v in (headers or {"Content-Type": "application/text"}).items():
        h.send_header(k, v)
    h.send_header("Metadata-Flavor", "Google")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)
