"""seedtool.shared.ed25519, the guest's pure-Python verifier, against OpenSSL (via cryptography).

RFC 8032's vectors; then the verdicts of both on malleated signatures, degenerate
and non-canonical keys and signatures, wrong lengths, and random keys, messages and
single-bit changes; and what the guest's boot path imports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.fuzz_ed25519 import openssl_verify as openssl
from seedtool.shared import ed25519

REPO = Path(__file__).resolve().parents[2]
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493  # the group order

# RFC 8032 section 7.1: (secret key, public key, message, signature)
RFC8032 = [
    ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
     "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
     "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
     "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
     "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
    ("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
     "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
     "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
     "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"),
]


def _pub(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def both(public: bytes, signature: bytes, message: bytes) -> bool:
    ours, theirs = (ed25519.verify(public, signature, message),
                    openssl(public, signature, message))
    assert ours == theirs, (public.hex(), signature.hex(), message.hex(), ours, theirs)
    return ours


@pytest.mark.parametrize("secret,public,message,signature", RFC8032)
def test_rfc8032_vectors(secret: str, public: str, message: str, signature: str) -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret))
    pub, sig, msg = bytes.fromhex(public), bytes.fromhex(signature), bytes.fromhex(message)
    assert _pub(key) == pub and key.sign(msg) == sig
    assert both(pub, sig, msg)
    assert not both(pub, sig, msg + b"x")
    assert not both(pub, sig[:32] + bytes(32), msg)


def test_a_malleated_signature_is_refused() -> None:
    """S + L satisfies the same equation; RFC 8032 requires S < L, and both refuse it."""
    key = Ed25519PrivateKey.generate()
    sig = key.sign(b"seed")
    s = int.from_bytes(sig[32:], "little") + L
    assert s < 2**256
    assert both(_pub(key), sig, b"seed")
    assert not both(_pub(key), sig[:32] + s.to_bytes(32, "little"), b"seed")


# small-order points (0, the identity, the order-2 point), a y with no x, all ones
DEGENERATE_KEYS = [bytes(32), b"\x01" + bytes(31), (P - 1).to_bytes(32, "little"),
                   (2).to_bytes(32, "little"), b"\xff" * 32]
# encodings RFC 8032 5.1.3 says do not decode, which OpenSSL decodes anyway: y = p and
# y = p + 1 (0 and 1 again), and x = 0 with the sign bit set ("negative zero")
NON_CANONICAL_KEYS = [P.to_bytes(32, "little"), (P + 1).to_bytes(32, "little"),
                      (1 | 1 << 255).to_bytes(32, "little")]
TRIVIAL = b"\x01" + bytes(31) + bytes(32)  # R = identity, S = 0


def _ids(b: bytes) -> str:
    return b.hex()[:8] + b.hex()[-4:]


@pytest.mark.parametrize("public", DEGENERATE_KEYS, ids=_ids)
def test_degenerate_public_keys_get_openssls_verdict(public: bytes) -> None:
    # under the identity key the trivial signature verifies every message in both:
    # Ed25519 allows it, which is why trusted-keys holds only keys made by keygen
    for signature in (Ed25519PrivateKey.generate().sign(b"seed"), TRIVIAL, bytes(64)):
        both(public, signature, b"seed")


@pytest.mark.parametrize("public", NON_CANONICAL_KEYS, ids=_ids)
def test_non_canonical_public_keys_are_refused_where_openssl_is_lenient(public: bytes) -> None:
    assert openssl(public, TRIVIAL, b"seed")  # OpenSSL reads them as the identity
    for signature in (Ed25519PrivateKey.generate().sign(b"seed"), TRIVIAL, bytes(64)):
        assert not ed25519.verify(public, signature, b"seed")


def test_a_non_canonical_r_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    sig = key.sign(b"m")
    r = int.from_bytes(sig[:32], "little")
    y = r & ((1 << 255) - 1)
    if y + P < 2**255:  # the same point, y encoded as y + p
        bad = ((y + P) | (r >> 255) << 255).to_bytes(32, "little") + sig[32:]
        assert not both(_pub(key), bad, b"m")


def test_wrong_lengths_verify_nothing() -> None:
    key = Ed25519PrivateKey.generate()
    sig, pub = key.sign(b"m"), _pub(key)
    for public, signature in ((pub, sig[:63]), (pub, sig + b"\0"), (pub, b""),
                              (pub[:31], sig), (pub + b"\0", sig)):
        assert not ed25519.verify(public, signature, b"m")


@settings(max_examples=150, deadline=None)
@given(message=st.binary(max_size=600), where=st.integers(min_value=0), bit=st.integers(0, 7),
       part=st.sampled_from(["signature", "message", "public"]))
def test_agrees_with_openssl_on_valid_and_altered_signatures(message: bytes, where: int,
                                                             bit: int, part: str) -> None:
    key = Ed25519PrivateKey.generate()
    public, sig = _pub(key), key.sign(message)
    assert both(public, sig, message)
    fields = {"signature": bytearray(sig), "message": bytearray(message + b"!"),
              "public": bytearray(public)}
    target = fields[part]
    target[where % len(target)] ^= 1 << bit
    altered = (bytes(fields["public"]), bytes(fields["signature"]),
               bytes(fields["message"]) if part == "message" else message)
    assert not both(*altered)


@settings(max_examples=150, deadline=None)
@given(public=st.binary(min_size=32, max_size=32), signature=st.binary(min_size=64, max_size=64),
       message=st.binary(max_size=64))
def test_never_accepts_what_openssl_refuses_on_arbitrary_bytes(public: bytes, signature: bytes,
                                                               message: bytes) -> None:
    if ed25519.verify(public, signature, message):
        assert openssl(public, signature, message)


def test_the_guest_boot_path_imports_no_native_crypto() -> None:
    code = f"""
import json, sys
sys.path.insert(0, {str(REPO)!r})
from seedtool.shared import envelope, ed25519
from seedtool.guest import core
print(json.dumps(sorted({{"cryptography", "ctypes", "_cffi_backend", "tempfile", "random"}}
                        & set(sys.modules))))
"""
    p = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                       check=True)
    assert json.loads(p.stdout) == []


def _times(scalar: int, point: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    acc = ed25519._IDENTITY
    for bit in bin(scalar)[2:]:
        acc = ed25519._double(acc)
        if bit == "1":
            acc = ed25519._add(acc, point)
    return acc


def test_small_order_keys_are_not_usable_and_keygen_keys_are() -> None:
    # every point of order dividing 8 is [L]P for some curve point P
    torsion = set()
    for y in range(2, 40):
        p = ed25519._decode(y.to_bytes(32, "little"))
        if p is not None:
            torsion.add(ed25519._encode(_times(L, p)))
    assert len(torsion) == 8  # the whole 8-torsion subgroup, identity included
    for key in torsion:
        assert not ed25519.usable_public_key(key), key.hex()
    for public in NON_CANONICAL_KEYS + [(2).to_bytes(32, "little"), bytes(31)]:
        assert not ed25519.usable_public_key(public)
    real = _pub(Ed25519PrivateKey.generate())
    assert ed25519.usable_public_key(real)
    # a key with a small-order component is still of large order: usable
    a, t = ed25519._decode(real), ed25519._decode(sorted(torsion)[1])
    assert a is not None and t is not None
    assert ed25519.usable_public_key(ed25519._encode(ed25519._add(a, t)))
