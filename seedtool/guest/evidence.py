"""The instance's identity evidence for the seed servers, and the instance it names.

Three kinds, as the server's identity checks take them (docs/serve.md):

* ``aws-iid``: from the EC2 instance metadata service, IMDSv2 only ("Use the Instance
  Metadata Service to access instance metadata", Amazon EC2 User Guide): a session
  token by ``PUT /latest/api/token`` with a short TTL, then
  ``/latest/dynamic/instance-identity/document`` and ``.../rsa2048`` exactly as served;
  the instance is ``aws:{accountId}:{region}:{instanceId}`` from that document;
* ``gce-iit``: the Compute Engine identity token ("Verify the identity of a VM", Compute
  Engine documentation), ``instance/service-accounts/default/identity?audience=URL&
  format=full`` with ``Metadata-Flavor: Google``, one per server (the audience is the
  server's URL as configured); the instance is ``gce:{project_id}:{zone}:{instance_id}``
  from the token's own payload, decoded and not verified (the server verifies it);
* ``token:/PATH``: a bootstrap token read from a file; the instance is ``token:`` and
  the first 16 hex digits of its SHA-256.

Every metadata request has at most 2 s and ends by the caller's deadline. A failure is
a reason ("evidence: ..."), never an exception out of `gather`, and never holds the
document, the token or a reply's text. Standard library only; http.client is imported
only when evidence is gathered.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time

from ..shared.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:  # read at boot: no typing at run time (docs/guest.md "Boot time")
    from typing import Any, Union

    from .netseed import Config

    Gathered = Union["Evidence", str, dict[str, Union["Evidence", str]]]

IMDS_URL = "http://169.254.169.254"
METADATA_URL = "http://metadata.google.internal"
#: seconds per metadata request, at most
REQUEST_TIMEOUT = 2.0
#: IMDSv2 session tokens live 1..21600 s; the fetch needs one for a few seconds
IMDS_TOKEN_TTL = 60
MAX_ANSWER = 64 * 1024
MAX_TOKEN_FILE = 4096
_IDENTITY_PATH = "/computeMetadata/v1/instance/service-accounts/default/identity"


class EvidenceError(Exception):
    """Why no evidence: its message is the reason recorded (no data in it)."""


class Evidence(Record):
    """The JSON fields to send (without the nonce) and the instance they name."""

    __slots__ = ("kind", "fields", "instance")
    FIELDS = __slots__
    HIDDEN = frozenset({"fields"})
    kind: str
    #: {"kind": ..., the kind's fields}: holds the document or token, never shown
    fields: dict[str, str]
    #: what the server's envelope must be bound to (Identity.instance)
    instance: str


def check_instance(instance: str) -> str:
    """`instance` when an envelope can be bound to it (1..255 printable ASCII, no space)."""
    if not 1 <= len(instance) <= 255 or not all(0x21 <= ord(c) <= 0x7E for c in instance):
        raise EvidenceError("evidence: the instance name is not 1 to 255 printable ASCII "
                            "characters")
    return instance


def _get(base: str, method: str, path: str, headers: dict[str, str], deadline: float,
         what: str) -> bytes:
    """One metadata request; the body of a 200, else EvidenceError naming `what`."""
    import http.client
    import socket
    from urllib.parse import urlsplit

    left = min(REQUEST_TIMEOUT, deadline - time.monotonic())
    if left <= 0:
        raise EvidenceError(f"evidence: no time left to ask {what}")
    parts = urlsplit(base)
    if parts.scheme != "http" or not parts.hostname:
        raise EvidenceError(f"evidence: {what} URL must be http://HOST[:PORT]")
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=left)
    try:
        conn.request(method, parts.path.rstrip("/") + path, headers=headers)
        resp = conn.getresponse()
        body = resp.read(MAX_ANSWER + 1)
    except (socket.timeout, TimeoutError):
        raise EvidenceError(f"evidence: {what} timed out") from None
    except (OSError, http.client.HTTPException):
        raise EvidenceError(f"evidence: {what} unreachable") from None
    finally:
        conn.close()
    if resp.status != 200:
        raise EvidenceError(f"evidence: {what} answered HTTP {resp.status}")
    if len(body) > MAX_ANSWER:
        raise EvidenceError(f"evidence: {what} answered more than {MAX_ANSWER} bytes")
    return body


def aws_iid(imds: str = IMDS_URL, *, deadline: float) -> Evidence:
    """The instance identity document and its rsa2048 signature, through IMDSv2."""
    token = _get(imds, "PUT", "/latest/api/token",
                 {"X-aws-ec2-metadata-token-ttl-seconds": str(IMDS_TOKEN_TTL)}, deadline,
                 "IMDS (token)").decode("ascii", "replace").strip()
    auth = {"X-aws-ec2-metadata-token": token}
    doc = _get(imds, "GET", "/latest/dynamic/instance-identity/document", auth, deadline,
               "IMDS (document)")
    sig = _get(imds, "GET", "/latest/dynamic/instance-identity/rsa2048", auth, deadline,
               "IMDS (rsa2048)")
    try:
        text, signature = doc.decode("utf-8"), sig.decode("ascii")
        parsed = json.loads(text)
        instance = f"aws:{parsed['accountId']}:{parsed['region']}:{parsed['instanceId']}"
        if not all(isinstance(parsed[k], str) for k in ("accountId", "region", "instanceId")):
            raise ValueError
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError):
        raise EvidenceError("evidence: the identity document from IMDS is not one") from None
    return Evidence(kind="aws-iid", fields={"kind": "aws-iid", "document": text,
                                            "rsa2048": signature},
                    instance=check_instance(instance))


def _jwt_payload(token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError
    body = parts[1] + "=" * (-len(parts[1]) % 4)
    payload = json.loads(base64.urlsafe_b64decode(body.encode("ascii")))
    if not isinstance(payload, dict):
        raise ValueError
    return payload


def gce_iit(audience: str, metadata: str = METADATA_URL, *, deadline: float) -> Evidence:
    """A full-format identity token for `audience` (the server's URL) from the metadata server."""
    from urllib.parse import quote

    query = f"?audience={quote(audience, safe='')}&format=full"
    raw = _get(metadata, "GET", _IDENTITY_PATH + query, {"Metadata-Flavor": "Google"},
               deadline, "the metadata server")
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        token = ""
    return gce_token(token)


def gce_token(token: str) -> Evidence:
    """The evidence a full-format identity token is, naming the instance in its payload."""
    try:
        engine = _jwt_payload(token)["google"]["compute_engine"]
        values = [engine[k] for k in ("project_id", "zone", "instance_id")]
        if not all(isinstance(v, str) and v for v in values):
            raise ValueError
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError):
        raise EvidenceError("evidence: the identity token from the metadata server is not a "
                            "full-format one") from None
    return Evidence(kind="gce-iit", fields={"kind": "gce-iit", "token": token},
                    instance=check_instance("gce:" + ":".join(values)))


def token_file(path: str) -> Evidence:
    """A bootstrap token from `path` (surrounding white space ignored)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TOKEN_FILE + 1)
    except OSError as e:
        raise EvidenceError(f"evidence: cannot read the token file {path}: "
                            f"{e.strerror}") from None
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        token = ""
    if len(raw) > MAX_TOKEN_FILE or not token or not token.isprintable() or " " in token:
        raise EvidenceError(f"evidence: the token file {path} does not hold one token")
    digest = hashlib.sha256(token.encode("ascii")).hexdigest()
    return Evidence(kind="token", fields={"kind": "token", "token": token},
                    instance="token:" + digest[:16])


def gather(config: Config, *, root: str = "/", imds: str | None = None,
           metadata: str | None = None, deadline: float) -> Gathered:
    """The evidence for `config`'s identity: one Evidence for every server (aws-iid,
    token), {server: Evidence or reason} (gce-iit: a token per audience), or the reason
    there is none. Never raises."""
    identity = config.identity
    try:
        if identity == "aws-iid":
            return aws_iid(imds or IMDS_URL, deadline=deadline)
        if identity.startswith("token:"):
            return token_file(os.path.join(root, identity[len("token:"):].lstrip("/")))
        if identity == "gce-iit":
            per: dict[str, Evidence | str] = {}
            for server in config.servers:
                try:
                    per[server] = gce_iit(server, metadata or METADATA_URL, deadline=deadline)
                except EvidenceError as e:
                    per[server] = str(e)
            return per
    except EvidenceError as e:
        return str(e)
    except Exception as e:  # a bug must not stop the boot: the kind of error only
        return f"evidence: internal error ({type(e).__name__})"
    return f"evidence: unknown identity {identity[:40]}"
