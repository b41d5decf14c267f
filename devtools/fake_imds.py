"""A local stand-in for the EC2 instance metadata service (IMDS), for tests only.

It serves on 127.0.0.1 what an instance reads from 169.254.169.254, with IMDSv2's
session tokens ("Use the Instance Metadata Service to access instance metadata",
Amazon EC2 User Guide):

    PUT /latest/api/token   with X-aws-ec2-metadata-token-ttl-seconds: 1..21600
                            -> a token (400 without a valid TTL, 403 with X-Forwarded-For)
    GET /latest/dynamic/instance-identity/document   the instance identity document
    GET /latest/dynamic/instance-identity/rsa2048    its PKCS#7 signature
    GET /latest/meta-data/...                        a small tree (instance-id, ...)
    GET /latest/user-data                            the user-data (404 when there is none)

Every GET needs a live token in X-aws-ec2-metadata-token (401 otherwise), as on an
instance whose metadata options require IMDSv2; `imdsv1=True` also answers without
one. A date instead of `latest` (cloud-init asks for "2021-03-23/...") reads the same.

The signature is what real IMDS serves: base64 in 76-character lines of a BER
SignedData (RFC 5652) with indefinite lengths, the document as encapsulated content in
a constructed OCTET STRING, SHA-256, one signer named by issuer and serial number,
signed attributes content-type, signing-time and message-digest, no certificates (the
shape of IMDS rsa2048 replies; AWS's page "Verify the instance identity document using
the RSA-2048 signature" verifies it with `openssl smime -verify -inform PEM -certfile
certificate -noverify`, the content coming out of the signature). It is made with
`cryptography`'s PKCS7SignatureBuilder (DER) and re-encoded in that BER form; `ber=False`
serves the DER as is. Each Region has its own RSA-2048 key and self-signed certificate,
generated at start-up: `certs_json()` / `write_certs(path)` give the table a verifier
takes (`AwsIid(certs=...)`).

A test makes documents with `document(...)` (any account, Region, instance, image,
pendingTime), signs any bytes with `sign(...)` (also with another Region's key, a
certificate of its own, no signed attributes, or certificates included), and chooses
what the server answers with `launch(...)`. Nothing here is a secret: the keys live
only in this process.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# Served (start/stop/with on a 127.0.0.1 port) is not Google-specific, whatever its module
from ._google import Served

ACCOUNT = "123456789012"  # moto's default account too, so DescribeInstances agrees
IMAGE = "ami-0123456789abcdef0"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
MAX_TTL = 21600  # seconds (IMDSv2: 1 second to 6 hours)
_VERSION = re.compile(r"^/(latest|[0-9]{4}-[0-9]{2}-[0-9]{2})(/.*)?$")


def stamp(when: float) -> str:
    """An IMDS time stamp: "2026-12-02T03:14:15Z"."""
    return datetime.datetime.fromtimestamp(int(when), datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def new_instance_id() -> str:
    return "i-" + os.urandom(9).hex()[:17]


@dataclass
class Instance:
    """What the fake answers for the instance it plays."""

    document: str
    rsa2048: str
    user_data: bytes | None = None
    meta_data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    status: int


class FakeImds(Served):
    """See the module docstring. `with FakeImds() as imds:` or start()/stop()."""

    def __init__(self, regions: Iterable[str] = ("us-east-1", "eu-west-1"), *,
                 imdsv1: bool = False, ber: bool = True) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.imdsv1 = imdsv1
        self.ber = ber
        self._keys: dict[str, Any] = {}
        self._certs: dict[str, Any] = {}
        for region in regions:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self._keys[region] = key
            self._certs[region] = self_signed(key, f"fake IMDS {region}")
        self.instance: Instance | None = None
        self.seen: list[Seen] = []
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()

    # -- the certificate table ------------------------------------------------------

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(self._certs)

    def cert(self, region: str) -> Any:
        return self._certs[region]

    def key(self, region: str) -> Any:
        return self._keys[region]

    def certs_pem(self) -> dict[str, str]:
        from cryptography.hazmat.primitives import serialization

        return {r: c.public_bytes(serialization.Encoding.PEM).decode()
                for r, c in self._certs.items()}

    def certs_json(self) -> str:
        return json.dumps({"_source": "devtools/fake_imds.py, generated at start-up",
                           **self.certs_pem()}, indent=1)

    def write_certs(self, path: Path) -> Path:
        path.write_text(self.certs_json())
        return path

    # -- documents and signatures ---------------------------------------------------

    def document(self, *, region: str = "us-east-1", account: str = ACCOUNT,
                 instance_id: str | None = None, image_id: str = IMAGE,
                 pending_time: float | str | None = None, instance_type: str = "t3.micro",
                 **extra: Any) -> str:
        """An instance identity document in IMDS's layout (version 2017-09-30)."""
        when = time.time() if pending_time is None else pending_time
        fields: dict[str, Any] = {
            "accountId": account,
            "architecture": "x86_64",
            "availabilityZone": f"{region}a",
            "billingProducts": None,
            "devpayProductCodes": None,
            "marketplaceProductCodes": None,
            "imageId": image_id,
            "instanceId": instance_id or new_instance_id(),
            "instanceType": instance_type,
            "kernelId": None,
            "pendingTime": when if isinstance(when, str) else stamp(when),
            "privateIp": "10.0.0.10",
            "ramdiskId": None,
            "region": region,
            "version": "2017-09-30",
        }
        fields.update(extra)
        return json.dumps(fields, indent=2, separators=(",", " : "))

    def sign(self, content: str | bytes, region: str | None = None, *,
             cert: Any = None, key: Any = None, ber: bool | None = None,
             attributes: bool = True, include_cert: bool = False) -> str:
        """The rsa2048 reply for `content`: signed by `region`'s key (default: the
        document's own region), or by `cert`/`key` given; base64 in 76-column lines."""
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.serialization import pkcs7

        data = content.encode() if isinstance(content, str) else content
        if cert is None or key is None:
            region = region or json.loads(data)["region"]
            cert, key = self._certs[region], self._keys[region]
        options = [pkcs7.PKCS7Options.Binary]
        # NoAttributes also drops the capabilities; passing both is refused
        options.append(pkcs7.PKCS7Options.NoCapabilities if attributes
                       else pkcs7.PKCS7Options.NoAttributes)
        if not include_cert:
            options.append(pkcs7.PKCS7Options.NoCerts)
        der = (pkcs7.PKCS7SignatureBuilder().set_data(data)
               .add_signer(cert, key, hashes.SHA256())
               .sign(serialization.Encoding.DER, options))
        if self.ber if ber is None else ber:
            der = imds_ber(der)
        return base64.encodebytes(der).decode().rstrip("\n")

    def launch(self, document: str | None = None, *, user_data: bytes | None = None,
               rsa2048: str | None = None, **fields: Any) -> Instance:
        """Play an instance: its document (made from `fields` if not given), signed
        unless `rsa2048` is given, and its user-data."""
        doc = document if document is not None else self.document(**fields)
        parsed = json.loads(doc)
        meta = {
            "ami-id": parsed.get("imageId", ""),
            "instance-id": parsed.get("instanceId", ""),
            "instance-type": parsed.get("instanceType", ""),
            "local-ipv4": parsed.get("privateIp", ""),
            "local-hostname": "ip-10-0-0-10.ec2.internal",
            "hostname": "ip-10-0-0-10.ec2.internal",
            "placement": {"availability-zone": parsed.get("availabilityZone", ""),
                          "region": parsed.get("region", "")},
        }
        self.instance = Instance(doc, rsa2048 if rsa2048 is not None else self.sign(doc),
                                 user_data, meta)
        return self.instance

    # -- serving (start(), stop(), `with` and `endpoint` come from Served) ----------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = urlsplit(h.path).path
        length = int(h.headers.get("Content-Length") or 0)
        if length:
            h.rfile.read(length)
        status, body = self._answer(h.command, path, h.headers)
        with self._lock:
            self.seen.append(Seen(h.command, path, status))
        h.send_response(status)
        h.send_header("Content-Type", "text/plain")
        h.send_header("Content-Length", str(len(body)))
        if h.command == "PUT" and status == 200:
            h.send_header(TTL_HEADER, str(h.headers.get(TTL_HEADER)))
        h.end_headers()
        h.wfile.write(body)

    def _answer(self, method: str, path: str, headers: Message) -> tuple[int, bytes]:
        if path == "/latest/api/token":
            if method != "PUT":
                return 405, b"Method Not Allowed"
            if headers.get("X-Forwarded-For") is not None:
                return 403, b"Forbidden"
            ttl = str(headers.get(TTL_HEADER) or "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= MAX_TTL:
                return 400, b"Bad Request"
            token = base64.urlsafe_b64encode(os.urandom(42)).decode()
            with self._lock:
                self._tokens[token] = time.monotonic() + int(ttl)
            return 200, token.encode()
        if method != "GET":
            return 405, b"Method Not Allowed"
        if not self._token_ok(headers.get(TOKEN_HEADER)):
            return 401, b"Unauthorized"
        m = _VERSION.match(path)
        if m is None:
            return 404, b"Not Found"
        rest = (m.group(2) or "/").rstrip("/")
        inst = self.instance
        if inst is None:
            return 404, b"Not Found"
        if rest == "/dynamic/instance-identity":
            return 200, b"document\nrsa2048"
        if rest == "/dynamic/instance-identity/document":
            return 200, inst.document.encode()
        if rest == "/dynamic/instance-identity/rsa2048":
            return 200, inst.rsa2048.encode()
        if rest == "/user-data":
            return (200, inst.user_data) if inst.user_data is not None else (404, b"Not Found")
        if rest == "/meta-data" or rest.startswith("/meta-data/"):
            node: Any = inst.meta_data
            for part in rest.split("/")[2:]:
                if not isinstance(node, dict) or part not in node:
                    return 404, b"Not Found"
                node = node[part]
            if isinstance(node, dict):
                listing = [k + "/" if isinstance(v, dict) else k for k, v in node.items()]
                return 200, "\n".join(listing).encode()
            return 200, str(node).encode()
        return 404, b"Not Found"

    def _token_ok(self, token: str | None) -> bool:
        if token is None:
            return self.imdsv1
        with self._lock:
            expires = self._tokens.get(token)
        return expires is not None and time.monotonic() < expires


def self_signed(key: Any, name: str) -> Any:
    """A self-signed certificate for `key`, as AWS's per-Region certificates are."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "seedtool tests"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .sign(key, hashes.SHA256()))


# --- IMDS's BER form of a DER SignedData ----------------------------------------------


def _split(der: bytes) -> list[tuple[int, bytes, bytes]]:
    """The DER elements one after another: (identifier octet, whole encoding, content)."""
    out = []
    pos = 0
    while pos < len(der):
        tag, first = der[pos], der[pos + 1]
        head = 2
        length = first
        if first & 0x80:
            count = first & 0x7F
            length = int.from_bytes(der[pos + 2:pos + 2 + count], "big")
            head += count
        end = pos + head + length
        out.append((tag, der[pos:end], der[pos + head:end]))
        pos = end
    return out


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _indefinite(tag: int, *parts: bytes) -> bytes:
    return bytes([tag, 0x80]) + b"".join(parts) + b"\x00\x00"


def imds_ber(der: bytes) -> bytes:
    """Re-encode a DER ContentInfo/SignedData the way IMDS sends it: ContentInfo, its
    [0], SignedData, encapContentInfo and eContent with indefinite lengths, the content
    as a constructed OCTET STRING of one segment; the rest stays DER."""
    ((_, _, info),) = _split(der)
    oid, (_, _, wrapped) = _split(info)[0][1], _split(info)[1]
    ((_, _, signed),) = _split(wrapped)
    version, digests, encap, *rest = _split(signed)
    e_oid, (_, _, e_wrapped) = _split(encap[2])[0][1], _split(encap[2])[1]
    ((_, _, content),) = _split(e_wrapped)
    segment = b"\x04" + _der_length(len(content)) + content
    new_encap = _indefinite(0x30, e_oid, _indefinite(0xA0, _indefinite(0x24, segment)))
    new_signed = _indefinite(0x30, version[1], digests[1], new_encap, *(r[1] for r in rest))
    return _indefinite(0x30, oid, _indefinite(0xA0, new_signed))
