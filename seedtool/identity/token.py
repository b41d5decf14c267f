"""The ``token`` identity check: bootstrap tokens for machines with no cloud identity.

On premises or under plain QEMU nothing signs who a VM is, so the operator makes
tokens (`make_tokens`, behind ``seedtool serve token create``) and gives each VM
one (baked or delivered as a file). A token names one instance boot: every
request that presents it counts against the same K issuances of the ledger, so a
VM whose response was lost can retry, and a thief who presents a stolen token gets
a seed of their own, never the VM's, and spends the VM's K. A token is valid until
its TTL; "used" (a seed was issued for it) does not refuse it, since the K-per-boot
rule already bounds it.

Tokens are 256 random bits (`secrets`, i.e. the OS CSPRNG) with the prefix
``sdt1_``, so a leaked one is recognisable in logs and secret scanners. The server
stores only their SHA-256 digests: 256-bit random secrets need no salt or slow
hash, and lookups by digest leak nothing about the token by their timing.

What it must never do: store, log or put a token in a message.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Mapping
from typing import ClassVar, Protocol

from . import EvidenceInvalid, Identity, Malformed, text_field

#: what every token starts with (the 1 is the token format's version)
PREFIX = "sdt1_"
#: 32 bytes in unpadded base64url (RFC 4648 section 5) are 43 characters
_TOKEN = re.compile(r"sdt1_[A-Za-z0-9_-]{43}")


def make_tokens(count: int) -> list[str]:
    """`count` fresh tokens, each 256 random bits."""
    if count < 1:
        raise ValueError("make at least one token")
    return [PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
            for _ in range(count)]


def token_digest(token: str) -> bytes:
    """The SHA-256 of the whole token (prefix included): what the store keeps."""
    return hashlib.sha256(token.encode("ascii")).digest()


def token_instance(digest: bytes) -> str:
    """`Identity.instance` (and `.boot`) of the token with this digest."""
    return "token:" + digest[:8].hex()


class TokenStore(Protocol):
    """Where the tokens' digests live: the seed server's ledger."""

    def token_state(self, digest: bytes, now: float) -> str:
        """One of "ok", "unknown", "expired", "used"; see `Ledger.token_state`."""
        ...


class TokenCheck:
    """Verifies ``{"kind": "token", "token": "sdt1_..."}`` against a `TokenStore`.

    "ok" and "used" pass (the ledger's K per boot bounds a token's uses); "unknown"
    and "expired" are `EvidenceInvalid` (401). Thread-safe if the store is.
    """

    kind: ClassVar[str] = "token"

    def __init__(self, store: TokenStore) -> None:
        self._store = store

    def verify(self, evidence: Mapping[str, object], *, now: float) -> Identity:
        token = text_field(evidence, "token", 64)
        if not _TOKEN.fullmatch(token):
            raise Malformed(f"the token is not a seedtool bootstrap token ({PREFIX}...)")
        digest = token_digest(token)
        # the store's own errors (the ledger is down: 503) pass through unchanged
        state = self._store.token_state(digest, now)
        if state == "unknown":
            raise EvidenceInvalid("the token is not one this server issued; "
                                  "make one with `seedtool serve token create`")
        if state == "expired":
            raise EvidenceInvalid("the token has expired; make a new one with "
                                  "`seedtool serve token create`")
        if state not in ("ok", "used"):
            raise EvidenceInvalid("the token store gave no usable answer for this token")
        instance = token_instance(digest)
        return Identity(kind=self.kind, instance=instance, boot=instance, claims={})
