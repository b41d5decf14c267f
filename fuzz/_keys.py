"""A fixed, public signing key for fuzz seeds, so saved corpora stay valid across runs.

It is derived from a published string: it signs nothing but fuzz inputs and must
never be trusted anywhere else.
"""

from __future__ import annotations

import hashlib
from typing import Any

from seedtool.keys import public_of
from seedtool.shared import envelope
from seedtool.shared.pubkeys import PublicKey, trusted_pairs

#: a moment inside the validity period of every seed envelope made here
NOW = 1_800_000_000


def private_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(b"seedtool fuzz test key, public, never trusted").digest()
    )


KEY = private_key()
PUBLIC: PublicKey = public_of(KEY)
TRUSTED = trusted_pairs([PUBLIC])


def make_envelope(seed: bytes, provenance: dict[str, Any] | None = None, ttl: int = 3600,
                  seed_id: bytes = b"\x5e" * 16,
                  binding: tuple[str, bytes] | None = None) -> bytes:
    """A raw envelope signed with the fuzz key, valid at NOW (bound: format version 2)."""
    return envelope.build(
        seed,
        private_key=KEY,
        key_id=PUBLIC.key_id,
        seed_id=seed_id,
        provenance={"v": 1} if provenance is None else provenance,
        ttl=ttl,
        now=NOW - 60,
        binding=binding,
    )
