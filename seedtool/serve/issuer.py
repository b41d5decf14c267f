"""One seed request, start to end: parse, verify the identity, make the envelope, record it.

`parse_request` turns the body of ``POST /v1/seed`` into (kind, evidence, nonce) or
raises `Malformed`: a JSON object (no key twice) with only the known keys of its
kind, and a nonce of exactly 32 bytes in base64 (RFC 4648 section 4, padded).

`Issuer.issue` is the one place that orders an issuance, and it blocks (the HTTPS
listener runs it in its bounded worker pool, never on the event loop):

1. the kind's `IdentityCheck.verify` -> `Identity` (or its 400/401/403/503 error);
2. the entropy core must be serving (every required source healthy); it is asked
   without waiting (`read(64, timeout=0)`), else `SourcesUnhealthy` (503);
3. the seed: the core's 64 bytes and 64 of getrandom, mixed with
   `seedtool.shared.mix` bound to a fresh seed id, as `SeedFactory` mixes its sources;
   the envelope (version 2) is signed and bound to (`Identity.instance`, nonce), its
   provenance names the source "seed-server";
4. `Ledger.issue` commits the row (seed id, key id, client address, identity) and
   returns its number 1..K, or raises `TooMany` (409) / `LedgerUnavailable` (503).

Only after step 4 returns does the caller get the envelope to send, so a server
killed at any moment never has sent a seed without its committed row (a row whose
answer was lost is the safe direction: the VM retries within its K).
"""

from __future__ import annotations

import base64
import binascii
import inspect
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..identity import IDENTITY_CHECKS, Identity, IdentityCheck, Malformed, NotAllowed
from ..shared import envelope
from ..shared.errors import SeedtoolError, UsageError
from ..shared.mix import mix
from ..shared.pubkeys import key_id as key_id_of

#: the largest request body, bytes
MAX_BODY = 16 * 1024
NONCE_LEN = 32
SEED_LEN = 64
#: validity of an issued envelope: it is fetched at boot and used at once
DEFAULT_TTL = 600

#: the evidence fields of each kind (Contract 2); any other key is malformed
EVIDENCE_FIELDS: Mapping[str, frozenset[str]] = {
    "aws-iid": frozenset({"document", "rsa2048"}),
    "gce-iit": frozenset({"token"}),
    "token": frozenset({"token"}),
}


class SourcesUnhealthy(SeedtoolError):
    """The entropy core is not serving: a required source is failing its health tests."""

    status = 503
    error = "sources-unhealthy"


@dataclass(frozen=True)
class Issued:
    """What a 200 answer carries, plus the identity for the log line."""

    envelope: str  # base64 text of the signed envelope: holds the seed, never log it
    seed_id: str
    issued: int
    key_id: str
    identity: Identity

    def body(self) -> dict[str, Any]:
        return {"envelope": self.envelope, "seed_id": self.seed_id, "issued": self.issued,
                "key_id": self.key_id}


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise Malformed(f"the request names {k!r} twice")
        out[k] = v
    return out


def parse_request(body: bytes) -> tuple[str, dict[str, object], bytes]:
    """(kind, evidence without the nonce, nonce bytes) or `Malformed`; see the module docstring."""
    if len(body) > MAX_BODY:
        raise Malformed(f"the request body is over {MAX_BODY} bytes")
    try:
        req = json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as e:
        if isinstance(e, Malformed):
            raise
        raise Malformed("the request body is not JSON; send a JSON object") from None
    if not isinstance(req, dict):
        raise Malformed("the request body must be a JSON object")
    kind = req.get("kind")
    if not isinstance(kind, str) or kind not in EVIDENCE_FIELDS:
        raise Malformed("the request needs a kind: one of " + ", ".join(EVIDENCE_FIELDS))
    extra = set(req) - EVIDENCE_FIELDS[kind] - {"kind", "nonce"}
    if extra:
        raise Malformed(f"the request has fields {kind} does not take: "
                        + ", ".join(sorted(repr(k)[:40] for k in extra)[:5]))
    text = req.pop("nonce", None)
    if not isinstance(text, str) or len(text) > 64:
        raise Malformed("the request needs a nonce: 32 random bytes in base64")
    try:
        nonce = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise Malformed("the nonce is not base64; send 32 random bytes in base64") from None
    if len(nonce) != NONCE_LEN:
        raise Malformed(f"the nonce is {len(nonce)} bytes; it must be exactly {NONCE_LEN}")
    return kind, req, nonce


class Issuer:
    """Thread-safe if its checks, core and ledger are (they are)."""

    def __init__(self, *, core: Any, ledger: Any, checks: Mapping[str, IdentityCheck],
                 private_key: Any, limit: int, ttl: int = DEFAULT_TTL) -> None:
        from ..keys import public_of

        self.core, self.ledger, self.checks = core, ledger, dict(checks)
        self.private_key = private_key
        self.key_id = key_id_of(public_of(private_key).raw)
        self.limit, self.ttl = limit, ttl

    def issue(self, kind: str, evidence: Mapping[str, object], nonce: bytes, *,
              client: str, now: float | None = None,
              verified: Callable[[Identity], None] | None = None) -> Issued:
        """The envelope to send, its ledger row committed; `verified` hears the identity
        as soon as it is known (so a refusal after it can be logged with the instance)."""
        now = time.time() if now is None else now
        check = self.checks.get(kind)
        if check is None:
            raise NotAllowed(f"this server does not accept {kind} identities; it accepts "
                             + (", ".join(self.checks) or "none"))
        identity = check.verify(evidence, now=now)
        if verified is not None:
            verified(identity)
        if not self.core.serving:
            raise SourcesUnhealthy("the server's entropy sources are failing their health "
                                   "tests; try another server or again later")
        data = self.core.read(SEED_LEN, timeout=0)
        if data is None:
            raise SourcesUnhealthy("the server's entropy sources are failing their health "
                                   "tests; try another server or again later")
        seed_id = os.urandom(envelope.SEED_ID_LEN)
        seed = mix([("seed-server", data), ("os", os.urandom(SEED_LEN))], SEED_LEN, seed_id)
        raw = _build(seed, self, seed_id, int(now), (identity.instance, nonce))
        number = self.ledger.issue(identity=identity, seed_id=seed_id.hex(),
                                   key_id=self.key_id.hex(), client=client, now=now,
                                   limit=self.limit)
        return Issued(envelope.encode_text(raw), seed_id.hex(), number, self.key_id.hex(),
                      identity)


def _build(seed: bytes, issuer: Issuer, seed_id: bytes, now: int,
           binding: tuple[str, bytes]) -> bytes:
    """The bound (version 2) envelope; the one call of envelope.build with a binding."""
    provenance = {"v": 1, "mix": "hkdf-sha512",
                  "sources": [{"name": "seed-server", "bytes": SEED_LEN},
                              {"name": "os", "bytes": SEED_LEN}]}
    return envelope.build(seed, private_key=issuer.private_key, key_id=issuer.key_id,
                          seed_id=seed_id, provenance=provenance, ttl=issuer.ttl, now=now,
                          binding=binding)


# ---- --identity KIND[:k=v,...]

_LISTS = {"accounts", "regions", "images", "projects", "zones"}
_FLOATS = {"max_age", "skew"}
_BOOLS = {"describe", "confirm"}
_PATHS = {"certs"}
_OPTIONS: Mapping[str, frozenset[str]] = {
    "aws-iid": frozenset({"accounts", "regions", "images", "max_age", "certs", "describe",
                          "asg", "profile", "endpoint_url", "skew"}),
    "gce-iit": frozenset({"audience", "projects", "zones", "max_age", "certs", "confirm",
                          "certs_url", "compute_endpoint"}),
    "token": frozenset(),
}


def parse_identity_spec(text: str) -> tuple[str, dict[str, str]]:
    """``aws-iid:accounts=1,2,regions=us-east-1`` -> ("aws-iid", {"accounts": "1,2", ...}).

    Options are separated by commas; a piece without ``=`` continues the list value
    before it, so list options take comma-separated names.
    """
    kind, _, rest = text.partition(":")
    if kind not in _OPTIONS:
        raise UsageError(f"unknown --identity kind {kind!r}; known kinds are: "
                         + ", ".join(IDENTITY_CHECKS))
    opts: dict[str, str] = {}
    last: str | None = None
    for piece in rest.split(",") if rest else []:
        key, eq, value = piece.partition("=")
        key = key.strip().replace("-", "_")
        if eq and key in _OPTIONS[kind]:
            if key in opts:
                raise UsageError(f"--identity {kind}: {key}= is given twice")
            opts[key], last = value, key
        elif not eq and last in _LISTS and piece:
            opts[last] += "," + piece
        else:
            known = ", ".join(sorted(_OPTIONS[kind])) or "none"
            raise UsageError(f"--identity {kind}: {piece!r} is not an option of it "
                             f"(options: {known})")
    return kind, opts


def _convert(kind: str, opts: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in opts.items():
        if key in _LISTS:
            out[key] = frozenset(v.strip() for v in value.split(",") if v.strip())
        elif key in _FLOATS:
            try:
                out[key] = float(value)
            except ValueError:
                raise UsageError(f"--identity {kind}: {key}= must be a number of seconds") \
                    from None
        elif key in _BOOLS:
            if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
                raise UsageError(f"--identity {kind}: {key}= is true or false")
            out[key] = value.lower() in ("true", "yes", "1")
        elif key in _PATHS:
            out[key] = Path(value)
        else:
            out[key] = value
    return out


def build_checks(specs: Sequence[str], *, ledger: Any) -> dict[str, IdentityCheck]:
    """The identity checks `--identity` names, constructed (their option errors now)."""
    checks: dict[str, IdentityCheck] = {}
    for text in specs:
        kind, opts = parse_identity_spec(text)
        if kind in checks:
            raise UsageError(f"--identity {kind} is given twice; give each kind once")
        cls: Any = IDENTITY_CHECKS.load(kind)
        if kind == "aws-iid" and not opts.get("accounts"):
            # any AWS customer can make a genuine document: name whose instances to serve
            raise UsageError("--identity aws-iid needs accounts=, the AWS accounts whose "
                             "instances this server serves (e.g. accounts=123456789012)")
        if kind == "token":
            checks[kind] = cls(ledger)
            continue
        missing = [name for name, param in inspect.signature(cls).parameters.items()
                   if param.default is inspect.Parameter.empty
                   and param.kind is not inspect.Parameter.VAR_KEYWORD and name not in opts]
        if missing:
            raise UsageError(f"--identity {kind} needs " + " and ".join(f"{m}=" for m in missing)
                             + f" (e.g. --identity {kind}:"
                             + ",".join(f"{m}=..." for m in missing) + ")")
        checks[kind] = cls(**_convert(kind, opts))
    return checks
