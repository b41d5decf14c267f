"""Identity checks for the seed server: who is asking for a seed, proven how.

A VM of a fleet that shares user-data cannot carry a seed of its own, so it asks a
seed server and proves who it is with evidence its cloud signed (or a one-time
bootstrap token where there is no cloud). Each kind of evidence is one module
behind one interface, `IdentityCheck`, and one line of `IDENTITY_CHECKS`:

* ``verify(evidence, now=...)`` takes the request's JSON object (``kind`` plus the
  kind's fields, the client nonce already removed) and returns an `Identity`, or
  raises `Malformed` (HTTP 400), `EvidenceInvalid` (401) or `NotAllowed` (403).
  It may block (certificate fetches, cloud API calls): the server calls it in a
  worker thread, so every check is thread-safe.

`Identity.boot` is what the ledger counts issuances against: one instance boot.
Messages never carry the evidence itself (a token, a whole document).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from ..registry import Registry
from ..shared.errors import SeedtoolError


@dataclass(frozen=True)
class Identity:
    """A verified requester."""

    #: the check that verified it: "aws-iid", "gce-iit", "token"
    kind: str
    #: stable name for audits: "aws:<account>:<region>:<instance-id>",
    #: "gce:<project>:<zone>:<instance-id>", "token:<16 hex digits of its hash>"
    instance: str
    #: one boot of that instance; the ledger allows at most K issuances per boot
    boot: str
    #: non-secret facts for logs, metrics and policy (account, region, image, zone...)
    claims: Mapping[str, str] = field(default_factory=dict)


class IdentityError(SeedtoolError):
    """The evidence did not identify an instance this server serves."""

    #: the HTTP status the seed server answers with
    status = 400
    #: the machine-readable `error` field of the JSON answer
    error = "malformed"


class Malformed(IdentityError):
    """The evidence is not in the form its kind requires."""

    status = 400
    error = "malformed"


class EvidenceInvalid(IdentityError):
    """The evidence is well-formed but not valid: bad signature, expired, wrong audience."""

    status = 401
    error = "evidence-invalid"


class NotAllowed(IdentityError):
    """Valid evidence of an instance the server's policy does not serve."""

    status = 403
    error = "not-allowed"


class IdentityCheck(Protocol):
    """One kind of identity evidence; see the module docstring."""

    kind: ClassVar[str]

    def verify(self, evidence: Mapping[str, object], *, now: float) -> Identity: ...


def text_field(evidence: Mapping[str, object], name: str, limit: int) -> str:
    """A required string field of at most `limit` characters, or Malformed."""
    value = evidence.get(name)
    if not isinstance(value, str) or not value:
        raise Malformed(f"the evidence needs a non-empty string field {name!r}")
    if len(value) > limit:
        raise Malformed(f"the evidence field {name!r} is longer than {limit} characters")
    return value


IDENTITY_CHECKS: Registry[type[IdentityCheck]] = Registry("identity check", {
    "aws-iid": ("seedtool.identity.aws_iid:AwsIid",
                "AWS instance identity document with its rsa2048 PKCS#7 signature"),
    "gce-iit": ("seedtool.identity.gce_iit:GceIit",
                "Google Compute Engine instance identity token (RS256 JWT)"),
    "token": ("seedtool.identity.token:TokenCheck",
              "one-time bootstrap token from `seedtool serve token create`"),
})
