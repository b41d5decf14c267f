"""Fuzz target: `seedtool.shared.ed25519.verify`, the guest's verifier, against OpenSSL.

An input is a public key (32 bytes), a signature (64) and a message (the rest). The
seeds are valid triples signed with the fuzz key, so the fuzzer mostly explores
near-valid inputs. Invariants on every input:

* `verify` returns a bool and raises nothing;
* it never accepts what OpenSSL (through `cryptography`) refuses;
* it refuses what OpenSSL accepts only for a public key RFC 8032 says does not
  decode (y >= p, or x = 0 with the sign bit set), where OpenSSL is lenient.
"""

from __future__ import annotations

from collections.abc import Iterator

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from seedtool.shared import ed25519

from ._keys import KEY, PUBLIC

INSTRUMENT = ["seedtool.shared.ed25519"]
MAX_LEN = 512
_P = 2**255 - 19


def seeds() -> Iterator[bytes]:
    for message in (b"", b"seed", bytes(range(200))):
        yield PUBLIC.raw + KEY.sign(message) + message
    yield bytes(32) + b"\x01" + bytes(63)  # the identity key, R = identity, S = 0


def openssl_verify(public: bytes, signature: bytes, message: bytes) -> bool:
    """OpenSSL's verdict, through `cryptography` (also used by tests/shared/test_ed25519.py)."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _decodes_per_rfc8032(public: bytes) -> bool:
    n = int.from_bytes(public, "little")
    y = n & ((1 << 255) - 1)
    return y < _P and not (n >> 255 and y in (1, _P - 1))


def test_one_input(data: bytes) -> None:
    if len(data) < 96:
        return
    public, signature, message = data[:32], data[32:96], data[96:]
    ours = ed25519.verify(public, signature, message)
    assert isinstance(ours, bool)
    theirs = openssl_verify(public, signature, message)
    if ours:
        assert theirs, "accepted a signature OpenSSL refuses"
    elif theirs:
        assert not _decodes_per_rfc8032(public), "refused a signature OpenSSL accepts"
