"""Envelope format version 2, the bound envelope: layout, refusals, signing context.

Version 2 is what the seed server issues: the signed bytes name one instance and the
client's nonce, so the envelope is useless to any other instance or request. Version 1
must stay byte for byte what it was.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seedtool.generate import SeedFactory
from seedtool.keys import public_of
from seedtool.shared import envelope
from seedtool.shared.envelope import BadSignature, MalformedEnvelope
from seedtool.shared.errors import EnvelopeError
from seedtool.shared.pubkeys import PublicKey, key_id, trusted_pairs

NOW = 1_800_000_000
SEED = b"\x11" * 64
SEED_ID = b"\x01" * 16
INSTANCE = "aws:123456789012:us-east-1:i-0abc123def4567890"
NONCE = hashlib.sha256(b"a client nonce").digest()
PROV: dict[str, Any] = {"v": 1}


def make(private_key: Any, binding: tuple[str, bytes] | None = (INSTANCE, NONCE),
         seed: bytes = SEED, provenance: dict[str, Any] | None = None) -> bytes:
    return envelope.build(
        seed, private_key=private_key, key_id=key_id(public_of(private_key).raw),
        seed_id=SEED_ID, provenance=PROV if provenance is None else provenance, ttl=3600,
        now=NOW, binding=binding)


def body_by_hand(kid: bytes, version: int, flags: int, tail: bytes = b"") -> bytes:
    """The signed bytes as docs/envelope.md's table lays them out, written independently."""
    prov = b'{"v":1}'
    return (b"SDTL" + bytes([version, flags]) + SEED_ID + struct.pack(">QQ", NOW, NOW + 3600)
            + kid + struct.pack(">H", len(SEED)) + SEED + struct.pack(">H", len(prov)) + prov
            + tail)


def test_v1_is_unchanged_byte_for_byte(private_key: Any, keypair: Any) -> None:
    pub: PublicKey = keypair[2]
    raw = make(private_key, binding=None)
    assert raw == make(private_key, binding=None)  # deterministic signature (RFC 8032)
    assert raw[:-64] == body_by_hand(pub.key_id, 1, 0)
    # signed over the version 1 context, as before version 2 existed
    pub_key = private_key.public_key()
    pub_key.verify(raw[-64:], b"seedtool envelope v1\x00" + raw[:-64])
    env = envelope.verify(raw, trusted_pairs([pub]), now=NOW)
    assert env.binding is None and envelope.parse(raw).binding is None
    summary = env.summary()
    assert summary["format"] == "seedtool-envelope-v1" and "binding" not in summary


def test_v2_layout_and_round_trip(private_key: Any, keypair: Any) -> None:
    pub: PublicKey = keypair[2]
    raw = make(private_key)
    inst = INSTANCE.encode()
    assert raw[:-64] == body_by_hand(pub.key_id, 2, 1, NONCE + bytes([len(inst)]) + inst)
    private_key.public_key().verify(raw[-64:], b"seedtool envelope v2\x00" + raw[:-64])
    unverified = envelope.parse(envelope.encode_text(raw))
    assert unverified.binding == (INSTANCE, NONCE)
    env = envelope.verify(raw, trusted_pairs([pub]), now=NOW)
    assert env.seed == SEED and env.binding == (INSTANCE, NONCE)
    assert env.creditable_bits == 512


def test_summary_shows_the_binding_never_the_seed(private_key: Any, keypair: Any) -> None:
    env = envelope.verify(make(private_key), trusted_pairs([keypair[2]]), now=NOW)
    summary = env.summary()
    assert summary["format"] == "seedtool-envelope-v2"
    assert summary["binding"] == {"instance": INSTANCE, "nonce": NONCE.hex()}
    for shown in (repr(summary), repr(env), repr(envelope.parse(make(private_key)))):
        assert SEED.hex()[:16] not in shown and "\\x11\\x11" not in shown


def test_v2_signed_with_the_v1_context_does_not_verify(private_key: Any, keypair: Any) -> None:
    trusted = trusted_pairs([keypair[2]])
    raw = make(private_key)
    body = raw[:-64]
    forged = body + private_key.sign(envelope.SIGNING_CONTEXT + body)
    assert envelope.parse(forged).binding == (INSTANCE, NONCE)  # well formed...
    with pytest.raises(BadSignature):  # ...but the context is part of what is signed
        envelope.verify(forged, trusted, now=NOW)
    # and the other way round: a v1 body signed with the v2 context
    v1 = make(private_key, binding=None)[:-64]
    with pytest.raises(BadSignature):
        envelope.verify(v1 + private_key.sign(envelope.SIGNING_CONTEXT_BOUND + v1), trusted,
                        now=NOW)
    # the genuine one verifies (so the refusals above are the context's doing)
    assert envelope.verify(raw, trusted, now=NOW).binding == (INSTANCE, NONCE)


def _with_instance(raw: bytes, inst: bytes) -> bytes:
    """`raw` (a v2 envelope) with its instance replaced, signature kept."""
    n = raw[-64 - len(INSTANCE) - 1]
    assert n == len(INSTANCE)
    head = raw[: -64 - len(INSTANCE) - 1]
    return head + bytes([len(inst)]) + inst + raw[-64:]


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r[:5] + b"\x03" + r[6:], "reserved flags"),
    (lambda r: r[:5] + b"\x02" + r[6:], "BOUND flag"),
    (lambda r: r[:5] + b"\x80" + r[6:], "BOUND flag"),
    (lambda r: r[:5] + b"\x00" + r[6:], "BOUND flag"),
    (lambda r: r[:4] + b"\x03" + r[5:], "version 3 is not supported"),
    (lambda r: r + b"\0", "trailing"),
    (lambda r: r[:-1], "truncated"),
    (lambda r: _with_instance(r, b""), "instance length 0"),
    (lambda r: _with_instance(r, b"aws:1 2"), "not printable ASCII"),
    (lambda r: _with_instance(r, b"aws:\x00"), "not printable ASCII"),
    (lambda r: _with_instance(r, b"aws:\x7f"), "not printable ASCII"),
    (lambda r: _with_instance(r, "aws:é".encode()), "not printable ASCII"),
    (lambda r: _with_instance(r, b"\x80"), "not printable ASCII"),
])
def test_malformed_v2(private_key: Any, mutate: Any, message: str) -> None:
    with pytest.raises(MalformedEnvelope, match=message):
        envelope.parse(mutate(make(private_key)))


def test_v1_with_the_bound_flag_is_refused(private_key: Any) -> None:
    raw = make(private_key, binding=None)
    with pytest.raises(MalformedEnvelope, match="reserved flags"):
        envelope.parse(raw[:5] + b"\x01" + raw[6:])


def test_v2_without_a_binding_is_refused(private_key: Any) -> None:
    # a version 1 envelope relabelled as version 2: where the binding should be there is
    # only the signature
    raw = make(private_key, binding=None)
    with pytest.raises(MalformedEnvelope, match="binding or signature is incomplete"):
        envelope.parse(raw[:4] + b"\x02\x01" + raw[6:])
    # a binding whose instance length runs past the end
    raw2 = make(private_key)
    cut = raw2[: -64 - len(INSTANCE) - 1] + bytes([200]) + INSTANCE.encode() + raw2[-64:]
    with pytest.raises(MalformedEnvelope, match="instance or signature is incomplete"):
        envelope.parse(cut)


@pytest.mark.parametrize("binding, message", [
    ((INSTANCE, NONCE[:31]), "nonce must be 32 bytes"),
    ((INSTANCE, NONCE + b"\0"), "nonce must be 32 bytes"),
    ((INSTANCE, NONCE.hex()), "nonce must be 32 bytes"),
    (("", NONCE), "instance name"),
    (("a" * 256, NONCE), "instance name"),
    (("aws:1 2", NONCE), "instance name"),
    (("aws:\n", NONCE), "instance name"),
    (("aws:é", NONCE), "binding is"),
    ((b"aws:1", NONCE), "binding is"),
    ((INSTANCE,), "binding is"),
])
def test_build_refuses_bad_bindings(private_key: Any, binding: Any, message: str) -> None:
    with pytest.raises(EnvelopeError, match=message):
        make(private_key, binding=binding)


def test_the_largest_v2_envelope_is_max_size(private_key: Any, keypair: Any) -> None:
    prov = {"p": "x" * (envelope.PROVENANCE_MAX - len('{"p":""}'))}
    raw = make(private_key, binding=("i" * envelope.INSTANCE_MAX, NONCE),
               seed=b"\x22" * envelope.SEED_MAX, provenance=prov)
    assert len(raw) == envelope.MAX_SIZE == 1650 + 32 + 1 + 255
    text = envelope.encode_text(raw)
    assert len(text) <= envelope.MAX_TEXT
    env = envelope.verify(text, trusted_pairs([keypair[2]]), now=NOW)
    assert env.binding == ("i" * 255, NONCE)
    with pytest.raises(MalformedEnvelope, match="too large"):
        envelope.parse(raw + b"\0")


def test_factory_binds_when_asked(private_key: Any, keypair: Any) -> None:
    trusted = trusted_pairs([keypair[2]])
    with SeedFactory(private_key) as f:
        bound, plain = f.new(binding=(INSTANCE, NONCE)), f.new()
    assert envelope.verify(bound.raw, trusted).binding == (INSTANCE, NONCE)
    assert bound.summary["binding"] == {"instance": INSTANCE, "nonce": NONCE.hex()}
    assert envelope.verify(plain.raw, trusted).binding is None
    assert "binding" not in plain.summary and plain.raw[4:6] == b"\x01\x00"


_KEYS: dict[str, Any] = {}


def _shared_key() -> tuple[Any, PublicKey]:
    if not _KEYS:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        k = Ed25519PrivateKey.generate()
        _KEYS["k"] = (k, public_of(k))
    return _KEYS["k"]


_INSTANCES = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E),
                     min_size=1, max_size=255)


@settings(max_examples=200, deadline=None)
@given(instance=_INSTANCES, nonce=st.binary(min_size=32, max_size=32),
       seed=st.binary(min_size=16, max_size=512))
def test_property_bound_round_trip(instance: str, nonce: bytes, seed: bytes) -> None:
    k, pub = _shared_key()
    raw = envelope.build(seed, private_key=k, key_id=pub.key_id, seed_id=SEED_ID,
                         provenance=PROV, ttl=3600, now=NOW, binding=(instance, nonce))
    env = envelope.verify(raw, trusted_pairs([pub]), now=NOW)
    assert env.seed == seed and env.binding == (instance, nonce)


@settings(max_examples=400, deadline=None)
@given(bit=st.integers(min_value=0))
def test_property_any_single_bit_flip_of_v2_fails(bit: int) -> None:
    k, pub = _shared_key()
    raw = envelope.build(SEED, private_key=k, key_id=pub.key_id, seed_id=SEED_ID,
                         provenance=PROV, ttl=3600, now=NOW, binding=(INSTANCE, NONCE))
    bit %= 8 * len(raw)
    flipped = bytearray(raw)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(EnvelopeError):
        envelope.verify(bytes(flipped), trusted_pairs([pub]), now=NOW)


def test_every_bit_of_the_version_flags_and_binding_is_signed(private_key: Any,
                                                              keypair: Any) -> None:
    # exhaustive where the bits are new in version 2 (the property test above samples all)
    trusted = trusted_pairs([keypair[2]])
    raw = make(private_key)
    start = len(raw) - 64 - len(INSTANCE) - 1 - envelope.NONCE_LEN
    positions = [4, 5, *range(start, len(raw) - 64)]
    assert len(positions) == 2 + 32 + 1 + len(INSTANCE)
    for pos in positions:
        for bit in range(8):
            flipped = bytearray(raw)
            flipped[pos] ^= 1 << bit
            with pytest.raises(EnvelopeError):
                envelope.verify(bytes(flipped), trusted, now=NOW)
