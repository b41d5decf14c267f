"""Mixing source outputs into one seed with HKDF-SHA512 (RFC 5869) and domain separation.

Every contribution enters the extract step length-prefixed and labelled with its
source name, so no arrangement of one source's bytes can imitate another's. HKDF
extract is a randomness extractor/PRF: the output is as unpredictable as the
least-known input, i.e. the seed is at least as strong as its strongest source.
Standard library only.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:  # the guest imports this module at boot
    from collections.abc import Sequence

DOMAIN = b"seedtool mix v1"


def _lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def hkdf_sha512(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    prk = hmac.new(salt, ikm, hashlib.sha512).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha512).digest()
        out += block
        counter += 1
    return out[:length]


def mix(contributions: Sequence[tuple[str, bytes]], length: int, context: bytes) -> bytes:
    """Derive `length` bytes from [(source name, bytes)], bound to `context` (e.g. seed id)."""
    if not contributions:
        raise ValueError("nothing to mix")
    ikm = b"".join(_lp(name.encode()) + _lp(data) for name, data in contributions)
    return hkdf_sha512(ikm, salt=DOMAIN, info=_lp(b"seed") + _lp(context), length=length)
