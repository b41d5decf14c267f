"""seedtool.ed25519: the guest's signature check, libcrypto through ctypes or cryptography.

Both backends are checked against RFC 8032's vectors and against each other on
random keys, messages and single-bit changes; the choice between them is checked
in child interpreters where ctypes or cryptography cannot be imported.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from seedtool import ed25519

REPO = Path(__file__).resolve().parents[1]

BACKENDS = sorted(ed25519.BACKENDS)
# RFC 8032 section 7.1: (secret key, public key, message, signature); TEST 1 is the KAT
RFC8032 = [
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
L = 2**252 + 27742317777372353535851937790883648493  # the group order


def _pub(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@pytest.fixture(scope="module", params=BACKENDS)
def verify(request: pytest.FixtureRequest) -> ed25519.Verifier:
    return ed25519.load(request.param)


def test_both_backends_load_here_and_libcrypto_is_preferred() -> None:
    ed25519.forget_choice()
    assert ed25519.backend() == "libcrypto"
    for name in BACKENDS:
        assert callable(ed25519.load(name))


@pytest.mark.parametrize("secret,public,message,signature", RFC8032)
def test_rfc8032_vectors(verify: ed25519.Verifier, secret: str, public: str, message: str,
                         signature: str) -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret))
    assert _pub(key).hex() == public and key.sign(bytes.fromhex(message)).hex() == signature
    pub, sig, msg = bytes.fromhex(public), bytes.fromhex(signature), bytes.fromhex(message)
    assert verify(pub, sig, msg)
    assert not verify(pub, sig, msg + b"x")


def test_a_malleated_signature_is_refused(verify: ed25519.Verifier) -> None:
    """S + L verifies the same equation; RFC 8032 says reject S >= L, and both do."""
    key = Ed25519PrivateKey.generate()
    sig = key.sign(b"seed")
    s = int.from_bytes(sig[32:], "little") + L
    assert s < 2**256
    assert verify(_pub(key), sig, b"seed")
    assert not verify(_pub(key), sig[:32] + s.to_bytes(32, "little"), b"seed")


@pytest.mark.parametrize("public", [bytes(32), b"\x01" + bytes(31), b"\xff" * 32,
                                    bytes(31), bytes(33)])
def test_backends_agree_on_degenerate_public_keys(public: bytes) -> None:
    # small-order points (zero, the identity), a non-point, wrong lengths. Under the
    # identity key (R = identity, S = 0) verifies every message in both: Ed25519
    # allows it, which is why only keys made by keygen belong in trusted-keys
    trivial = b"\x01" + bytes(31) + bytes(32)
    sig = Ed25519PrivateKey.generate().sign(b"seed")
    for signature in (sig, trivial):
        got = {name: ed25519.load(name)(public, signature, b"seed") for name in BACKENDS}
        assert len(set(got.values())) == 1, got
    assert not ed25519.load("libcrypto")(public, sig, b"seed")


def test_wrong_signature_lengths_verify_nothing(verify: ed25519.Verifier) -> None:
    key = Ed25519PrivateKey.generate()
    sig = key.sign(b"m")
    assert not verify(_pub(key), sig[:63], b"m")
    assert not verify(_pub(key), sig + b"\0", b"m")
    assert not verify(_pub(key), b"", b"m")


@settings(max_examples=60, deadline=None)
@given(message=st.binary(max_size=600), where=st.integers(min_value=0), bit=st.integers(0, 7),
       part=st.sampled_from(["signature", "message", "public"]))
def test_backends_agree_on_valid_and_altered_signatures(message: bytes, where: int, bit: int,
                                                         part: str) -> None:
    key = Ed25519PrivateKey.generate()
    public, sig = _pub(key), key.sign(message)
    verifiers = [ed25519.load(name) for name in BACKENDS]
    assert all(v(public, sig, message) for v in verifiers)
    fields = {"signature": bytearray(sig), "message": bytearray(message + b"!"),
              "public": bytearray(public)}
    target = fields[part]
    target[where % len(target)] ^= 1 << bit
    altered = (bytes(fields["public"]), bytes(fields["signature"]),
               bytes(fields["message"]) if part == "message" else message)
    assert [v(*altered) for v in verifiers] == [False] * len(verifiers)


def test_libcrypto_leaves_no_error_on_the_openssl_queue() -> None:
    verify = ed25519.load("libcrypto")
    assert not verify(bytes(32), bytes(64), b"")  # fails inside OpenSSL
    lib = ctypes.CDLL(ed25519.LIBCRYPTO_NAMES[0])
    lib.ERR_peek_error.restype = ctypes.c_ulong
    assert lib.ERR_peek_error() == 0


def test_a_backend_failing_its_known_answer_test_is_not_used(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ed25519.BACKENDS, "libcrypto", lambda: lambda *a: True)
    ed25519.forget_choice()
    try:
        with pytest.raises(ed25519.Unavailable, match="known-answer"):
            ed25519.load("libcrypto")
        assert ed25519.backend() == "cryptography"
    finally:
        ed25519.forget_choice()


CHILD = """
import json, sys
{block}
from seedtool import ed25519
try:
    name = ed25519.backend()
except ed25519.Unavailable as e:
    name = "unavailable: " + str(e)
print(json.dumps({{"backend": name, "cryptography": "cryptography" in sys.modules}}))
"""


def _child(block: str) -> dict[str, object]:
    p = subprocess.run([sys.executable, "-c", CHILD.format(block=block)], cwd=REPO,
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout)  # type: ignore[no-any-return]


def test_the_boot_path_does_not_import_cryptography() -> None:
    assert _child("") == {"backend": "libcrypto", "cryptography": False}


def test_without_ctypes_cryptography_is_used() -> None:
    assert _child("sys.modules['ctypes'] = None") == {"backend": "cryptography",
                                                      "cryptography": True}


def test_with_neither_the_reason_names_both() -> None:
    got = _child("sys.modules['ctypes'] = None; sys.modules['cryptography'] = None")
    assert isinstance(got["backend"], str) and got["backend"].startswith("unavailable: ")
    assert "libcrypto:" in got["backend"] and "cryptography:" in got["backend"]
