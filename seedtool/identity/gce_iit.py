"""The `gce-iit` identity check: a Compute Engine instance identity token.

A VM asks its metadata server for
``instance/service-accounts/default/identity?audience=<this server's URL>&format=full``
and sends the token it gets. The token is a JWT (RFC 7519) in JWS compact form
(RFC 7515), signed RS256 by Google; with ``format=full`` its ``google.compute_engine``
claim names the project, zone, instance id and name and the instance's creation time
(Compute Engine documentation, "Verify the identity of a VM").

What this check accepts, in order: three strict base64url parts; a header whose
``alg`` is exactly RS256 (never "none", never an HMAC or another RSA hash: RFC 8725
section 3.1) and whose ``kid`` names one of Google's current certificates; an RSA
PKCS#1 v1.5 SHA-256 signature by that certificate's key; then, only once the
signature holds, Google's issuer, this server's audience exactly (a token minted for
another service is useless here), ``exp``/``iat`` within 60 s of leeway, a lifetime of
at most the documented hour, the instance claims, the policy (projects, zones) and the
instance's age.

Google's certificates come from `certs_url` (a JSON map kid -> PEM certificate) and are
cached for as long as the answer's Cache-Control max-age (or Expires) says (RFC 9111
section 4.2.1), or are read once from a file for air-gapped servers (and the tests). However
the traffic looks (expired cache, a flood of made-up kids, Google unreachable), this
check makes at most one certificate request per minute.

It must never put the token, or any part of it, into a message or a log.
"""

from __future__ import annotations

import base64
import binascii
import functools
import http.client
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ..shared.errors import UsageError
from . import EvidenceInvalid, Identity, IdentityError, Malformed, NotAllowed, text_field

if TYPE_CHECKING:  # typing.TypeGuard is Python 3.10+; annotations are not evaluated
    from typing import TypeGuard

#: the issuers of Google's ID tokens (Google Identity, "OpenID Connect": validating an ID token)
ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
#: leeway for clock differences between Google, the VM and this server
LEEWAY = 60.0
#: Compute Engine's identity tokens expire one hour after they are issued
MAX_LIFETIME = 3600
#: the longest token accepted (Google's are about 1 KB; the server also bounds bodies)
TOKEN_LIMIT = 8192
#: at most one certificate request per this many seconds, whatever arrives
MIN_REFETCH = 60.0
#: the longest a certificate answer is trusted, whatever its headers say
MAX_CACHE = 86400.0
#: seconds a certificate request may take
FETCH_TIMEOUT = 10.0
#: the largest certificate answer read (Google's is a few KB)
CERTS_LIMIT = 1 << 20
#: instance statuses during which a VM is booting or up (Compute Engine instance life cycle)
LIVE_STATUSES = frozenset({"PROVISIONING", "STAGING", "RUNNING"})
COMPUTE_READONLY_SCOPE = "https://www.googleapis.com/auth/compute.readonly"

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
# Google signs the claims; these loose patterns only keep our audit strings plain: a
# project id (a domain-scoped one is "example.com:name"), a zone or instance name
# (RFC 1035 labels), an instance id (an unsigned 64-bit number).
_PROJECT = re.compile(r"[a-z0-9][a-z0-9.:-]{0,99}")
_LABEL = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_ID = re.compile(r"[0-9]{1,20}")

Fetch = Callable[[str, float], tuple[bytes, Mapping[str, str]]]


class CertificatesUnavailable(IdentityError):
    """Google's signing certificates could not be had; the fault is not the client's."""

    status = 503
    error = "certs-unavailable"


class ComputeUnavailable(IdentityError):
    """The optional instances.get confirmation could not be made (API, credentials)."""

    status = 503
    error = "compute-unavailable"


@dataclass(frozen=True)
class _Keys:
    """One certificate answer: kid -> RSA public key, trusted until `until` (clock())."""

    keys: Mapping[str, rsa.RSAPublicKey]
    until: float


def urllib_fetch(url: str, timeout: float) -> tuple[bytes, Mapping[str, str]]:
    """GET `url` with urllib: (body, headers with lower-case names); OSError on failure."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - the configured URL
        body = answer.read(CERTS_LIMIT + 1)
        headers = {k.lower(): v for k, v in answer.headers.items()}
    if len(body) > CERTS_LIMIT:
        raise OSError("the certificate answer is larger than 1 MiB")
    return body, headers


def parse_certs(body: bytes) -> dict[str, rsa.RSAPublicKey]:
    """Google's x509 map (a JSON object kid -> PEM certificate) as kid -> RSA key of at
    least 2048 bits; entries of another shape are skipped. ValueError if none is usable."""
    try:
        loaded = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the certificate answer is not JSON") from None
    if not isinstance(loaded, dict):
        raise ValueError("the certificate answer is not a JSON object")
    keys: dict[str, rsa.RSAPublicKey] = {}
    for kid, pem in loaded.items():
        if not isinstance(pem, str) or not kid:
            continue
        try:
            key = x509.load_pem_x509_certificate(pem.encode("ascii")).public_key()
        except (ValueError, UnicodeEncodeError):
            continue
        if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
            keys[kid] = key
    if not keys:
        raise ValueError("the certificate answer holds no usable RSA certificate")
    return keys


def freshness(headers: Mapping[str, str], now: float) -> float:
    """Seconds an answer stays fresh (RFC 9111 section 4.2.1): Cache-Control max-age,
    else Expires minus Date (or minus `now`), less Age (section 4.2.3); no-store and
    no-cache give 0. The caller clamps it."""
    directives: dict[str, str] = {}
    for part in headers.get("cache-control", "").split(","):
        name, _, value = part.strip().partition("=")
        directives[name.strip().lower()] = value.strip().strip('"')
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    age = _number(headers.get("age", "")) or 0.0
    max_age = _number(directives.get("max-age", ""))
    if max_age is not None:
        return max_age - age
    expires = _http_date(headers.get("expires", ""))
    if expires is None:
        return 0.0
    date = _http_date(headers.get("date", ""))
    return expires - (date if date is not None else now) - age


def _number(text: str) -> float | None:
    return float(text) if text.isdigit() else None


def _http_date(text: str) -> float | None:
    try:
        return parsedate_to_datetime(text).timestamp() if text else None
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class GoogleCerts:
    """Google's token-signing keys, cached; thread-safe.

    `key(kid, now)` gives the key or raises: EvidenceInvalid for a kid Google does not
    publish, CertificatesUnavailable when the certificates cannot be had. A request is
    made when nothing is cached, when the cache is past its freshness, or when an
    unknown kid arrives (Google publishes a new key before it signs with it), but never
    twice within MIN_REFETCH seconds of `clock()`.
    """

    def __init__(self, url: str, *, file: Path | None = None, fetch: Fetch | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self._fetch = fetch or urllib_fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: _Keys | None = None
        self._attempt: float | None = None  # clock() of the last request
        self._failed = False  # did the last request fail?
        self._from_file = file is not None
        if file is not None:
            try:
                keys = parse_certs(file.read_bytes())
            except OSError as e:
                raise UsageError(f"cannot read the Google certificate file {file} "
                                 f"({e.strerror or type(e).__name__}); check certs=") from None
            except ValueError as e:
                raise UsageError(f"the Google certificate file {file} is not usable: {e}; "
                                 "give a JSON map of kid to PEM certificate, as "
                                 "https://www.googleapis.com/oauth2/v1/certs serves") from None
            self._keys = _Keys(keys, float("inf"))

    def key(self, kid: str, now: float) -> rsa.RSAPublicKey:
        held = self._keys  # one immutable snapshot: no lock on the common path
        if held is not None and kid in held.keys and self._clock() < held.until:
            return held.keys[kid]
        with self._lock:
            held = self._keys
            t = self._clock()
            stale = held is None or t >= held.until
            if (stale or kid not in held.keys) and not self._from_file:  # type: ignore[union-attr]
                if self._attempt is None or t - self._attempt >= MIN_REFETCH:
                    self._refresh(now)
                elif stale:  # a fresh answer lasts MIN_REFETCH at least: the last try failed
                    raise CertificatesUnavailable(
                        f"Google's token-signing certificates could not be fetched from "
                        f"{self.url} a moment ago; retry in a minute") from None
            held = self._keys
            failed = self._failed
        found = held.keys.get(kid) if held is not None else None
        if found is None and failed:
            raise CertificatesUnavailable(
                f"Google's current token-signing certificates could not be fetched from "
                f"{self.url}; retry in a minute") from None
        if found is None:
            raise EvidenceInvalid("the token is signed with a key Google does not publish; "
                                  "get a fresh token from the metadata server") from None
        return found

    def _refresh(self, now: float) -> None:
        """One request (the lock is held)."""
        self._attempt = self._clock()
        self._failed = True
        try:
            body, headers = self._fetch(self.url, FETCH_TIMEOUT)
            keys = parse_certs(body)
        except (OSError, ValueError, http.client.HTTPException) as e:  # URLError, timeouts: OSError
            if self._keys is not None and self._attempt < self._keys.until:
                return  # the cached answer is still fresh: keep using it
            what = e.reason if isinstance(e, urllib.error.URLError) else e
            raise CertificatesUnavailable(
                f"Google's token-signing certificates could not be fetched from {self.url} "
                f"({_short(what)}); check this server's network and certs_url, or give "
                "certs=FILE") from None
        self._failed = False
        lifetime = min(max(freshness(headers, now), MIN_REFETCH), MAX_CACHE)
        self._keys = _Keys(keys, self._attempt + lifetime)


def _short(what: object) -> str:
    text = " ".join(str(what).split()) or type(what).__name__
    return text[:120]


class GceIit:
    """Verifies Compute Engine instance identity tokens.

    `audience`: this server's URL, exactly as the VMs ask for it; `projects` (required)
    and `zones` (None: any): the policy; `max_age`: the oldest instance (seconds since
    its creation) served; `certs`: a file of Google's certificates instead of fetching
    `certs_url`; `confirm`: also ask Compute Engine (instances.get) that the instance
    exists, is booting or running, and is the one the token names, through
    `compute_client_factory()` (a google-cloud-compute InstancesClient, one per thread;
    by default one with Application Default Credentials at `compute_endpoint`);
    `fetch(url, timeout) -> (body, headers)` replaces the urllib request; `clock` is the
    monotonic clock of the certificate cache.
    """

    kind: ClassVar[str] = "gce-iit"

    def __init__(self, audience: str, projects: frozenset[str],
                 zones: frozenset[str] | None = None, max_age: float = 900.0,
                 certs: Path | None = None,
                 certs_url: str = "https://www.googleapis.com/oauth2/v1/certs",
                 confirm: bool = False, compute_client_factory: Callable[[], Any] | None = None,
                 fetch: Fetch | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 compute_endpoint: str | None = None) -> None:
        if not audience:
            raise UsageError("gce-iit needs audience=, this server's URL as the VMs ask for it")
        if not projects:
            raise UsageError("gce-iit needs projects=, the Google Cloud projects whose "
                             "instances this server serves")
        if zones is not None and not zones:
            raise UsageError("gce-iit zones= is empty, which would serve no instance; name "
                             "zones or leave zones= out to serve every zone")
        if max_age <= 0:
            raise UsageError("gce-iit max_age= must be a positive number of seconds")
        if certs is None and not certs_url.startswith(("https://", "http://127.0.0.1",
                                                      "http://localhost")):
            raise UsageError("gce-iit certs_url= must be an https:// URL")
        self.audience = audience
        self.projects = frozenset(projects)
        self.zones = None if zones is None else frozenset(zones)
        self.max_age = float(max_age)
        self.certs = GoogleCerts(certs_url, file=certs, fetch=fetch, clock=clock)
        self.confirm = confirm
        self._factory = compute_client_factory or functools.partial(_default_client,
                                                                    compute_endpoint)
        if confirm and compute_client_factory is None:
            _check_confirm_possible()
        self._local = threading.local()

    # -- the check --------------------------------------------------------------------

    def verify(self, evidence: Mapping[str, object], *, now: float) -> Identity:
        token = text_field(evidence, "token", TOKEN_LIMIT)
        claims = self._verified(token, now)
        google = claims.get("google")
        engine = google.get("compute_engine") if isinstance(google, dict) else None
        if not isinstance(engine, dict):
            # a format=standard token, or a Google ID token of a user or service account
            raise EvidenceInvalid("the token carries no Compute Engine instance claims; "
                                  "ask the metadata server for it with format=full")
        project = _claim(engine, "project_id", _PROJECT)
        zone = _claim(engine, "zone", _LABEL)
        instance_id = _claim(engine, "instance_id", _ID)
        name = _claim(engine, "instance_name", _LABEL)
        created = engine.get("instance_creation_timestamp")
        if not _is_int(created) or created < 0:
            raise EvidenceInvalid("the token's instance_creation_timestamp is not a number "
                                  "of seconds; get a fresh token with format=full")
        if project not in self.projects:
            raise NotAllowed(f"this server does not serve instances of project {project}")
        if self.zones is not None and zone not in self.zones:
            raise NotAllowed(f"this server does not serve instances in zone {zone}")
        age = now - created
        if age > self.max_age:
            raise EvidenceInvalid(
                f"instance {name} was created {age:.0f} s ago, more than the "
                f"{self.max_age:g} s this server allows; a seed is for a booting instance")
        if age < -LEEWAY:
            raise EvidenceInvalid(f"instance {name} has a creation time in the future; "
                                  "check this server's clock")
        if self.confirm:
            self._confirm(project, zone, name, instance_id, created)
        instance = f"gce:{project}:{zone}:{instance_id}"
        return Identity(kind=self.kind, instance=instance, boot=f"{instance}:{created}",
                        claims={"project": project, "zone": zone, "instance_name": name,
                                "instance_id": instance_id})

    def _verified(self, token: str, now: float) -> dict[str, Any]:
        """The claims of a token whose signature, issuer, audience and times hold."""
        parts = token.split(".")
        if len(parts) != 3:
            raise Malformed("the token is not a JWT in compact form (three base64url parts)")
        header = _json_object(_b64url(parts[0]), "header")
        # RFC 8725 section 3.1: accept only the algorithm this kind of token is signed with
        if header.get("alg") != "RS256":
            raise EvidenceInvalid("the token is not signed RS256, the only algorithm "
                                  "accepted for Compute Engine identity tokens")
        if "crit" in header:  # RFC 7515 section 4.1.11: no extension is understood here
            raise EvidenceInvalid("the token's header names critical extensions this server "
                                  "does not understand")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 128:
            raise EvidenceInvalid("the token's header has no key id (kid)")
        payload_b, signature = _b64url(parts[1]), _b64url(parts[2])
        key = self.certs.key(kid, now)
        if len(signature) != (key.key_size + 7) // 8:
            raise EvidenceInvalid("the token's signature does not verify with Google's key")
        signed = (parts[0] + "." + parts[1]).encode("ascii")
        try:
            key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise EvidenceInvalid(
                "the token's signature does not verify with Google's key") from None
        claims = _json_object(payload_b, "payload")
        if claims.get("iss") not in ISSUERS:
            raise EvidenceInvalid("the token was not issued by Google (iss)")
        if claims.get("aud") != self.audience:
            raise EvidenceInvalid(f"the token is for another audience; ask the metadata "
                                  f"server for one with audience={self.audience}")
        exp, iat = claims.get("exp"), claims.get("iat")
        if not _is_number(exp) or not _is_number(iat):
            raise EvidenceInvalid("the token lacks its exp or iat time")
        if now >= exp + LEEWAY:
            raise EvidenceInvalid("the token has expired; get a fresh one from the "
                                  "metadata server")
        if iat > now + LEEWAY:
            raise EvidenceInvalid("the token was issued in the future; check this server's "
                                  "clock")
        if not 0 < exp - iat <= MAX_LIFETIME:
            raise EvidenceInvalid("the token's lifetime is not the hour Compute Engine gives")
        nbf = claims.get("nbf")
        if nbf is not None and (not _is_number(nbf) or nbf > now + LEEWAY):
            raise EvidenceInvalid("the token is not valid yet (nbf)")
        return claims

    # -- instances.get ----------------------------------------------------------------

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._factory()
        return client

    def _confirm(self, project: str, zone: str, name: str, instance_id: str,
                 created: int) -> None:
        """Compute Engine's own view of the instance must match the token (REST
        reference, instances.get)."""
        from ..clouds import gcp

        call = gcp.Call(service="Compute Engine", what="get the instance",
                        where="compute.googleapis.com", retry="retry later", deadline=5.0,
                        refused="grant this server's account compute.instances.get "
                                "(roles/compute.viewer) on the project")
        try:
            from google.api_core import exceptions as ex

            with gcp.quiet():
                inst = self._client().get(project=project, zone=zone, instance=name,
                                          retry=gcp.retry(5.0), timeout=5.0)
        except Exception as e:  # noqa: BLE001 - mapped to one sentence
            if isinstance(e, ex.NotFound):
                raise EvidenceInvalid(f"Compute Engine knows no instance {name} in project "
                                      f"{project}, zone {zone}") from None
            err = gcp.translate(e, _words(), call)
            raise ComputeUnavailable(f"cannot confirm instance {name}: {err}") from None
        if str(inst.id) != instance_id:
            raise EvidenceInvalid(f"instance {name} now has another id than the token names "
                                  "(the name was reused)")
        if inst.status not in LIVE_STATUSES:
            raise EvidenceInvalid(f"instance {name} is {inst.status}, not booting or running")
        try:
            text = str(inst.creation_timestamp)  # RFC 3339; fromisoformat reads "Z" from 3.11
            text = text[:-1] + "+00:00" if text.endswith("Z") else text
            stamp = datetime.fromisoformat(text).timestamp()
        except (TypeError, ValueError):
            raise ComputeUnavailable(f"Compute Engine gave instance {name} a creation time "
                                     "this server cannot read") from None
        if abs(stamp - created) >= 1.0:
            raise EvidenceInvalid(f"instance {name} was created at another time than the "
                                  "token names (the name was reused)")


@functools.cache
def _words() -> Any:
    from ..clouds import gcp

    return gcp.Words(project="GOOGLE_CLOUD_PROJECT", endpoint="compute_endpoint=",
                     error=ComputeUnavailable, refused=ComputeUnavailable, usage=UsageError)


def _check_confirm_possible() -> None:
    """confirm= needs google-cloud-compute and Application Default Credentials: say so
    when the server starts, not on its first request."""
    from ..clouds import gcp

    try:
        import google.cloud.compute_v1  # noqa: F401
    except ImportError:
        raise UsageError("gce-iit confirm= needs google-cloud-compute; install "
                         "seedtool[gcp]") from None
    if not gcp.adc_may_exist():
        raise UsageError(f"gce-iit confirm= needs Google Application Default Credentials "
                         f"with compute.instances.get; {gcp.ADC_FIX}")


def _default_client(endpoint: str | None) -> Any:
    """An InstancesClient with Application Default Credentials (read-only scope), at
    `endpoint` when given (a Private Service Connect endpoint, a test's fake)."""
    from ..clouds import gcp

    try:
        from google.cloud import compute_v1
    except ImportError:
        raise UsageError("gce-iit confirm= needs google-cloud-compute; install "
                         "seedtool[gcp]") from None
    creds, _ = gcp.credentials(None, None, COMPUTE_READONLY_SCOPE, _words())
    return gcp.client(compute_v1.InstancesClient, creds, endpoint)


# -- parsing helpers ---------------------------------------------------------------------


def _b64url(part: str) -> bytes:
    """Strict base64url without padding (RFC 7515 section 2, RFC 4648 section 5): no
    other characters, no padding, no non-zero trailing bits."""
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1 or not part:
        raise Malformed("the token is not a JWT in compact form (three base64url parts)")
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise Malformed("the token is not a JWT in compact form (three base64url parts)") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != part:
        raise Malformed("the token is not canonical base64url")
    return raw


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # RFC 7515 section 4, RFC 7519 section 4: reject duplicates
        raise ValueError("duplicate member")
    return out


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        loaded = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Malformed(f"the token's {what} is not a JSON object with unique names") from None
    if not isinstance(loaded, dict):
        raise Malformed(f"the token's {what} is not a JSON object")
    return loaded


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[float]:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and value == value and abs(value) < 1e12)


def _claim(engine: Mapping[str, object], name: str, pattern: re.Pattern[str]) -> str:
    value = engine.get(name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise EvidenceInvalid(f"the token's Compute Engine claim {name} is missing or not "
                              "in Compute Engine's form; get a fresh token with format=full")
    return value
