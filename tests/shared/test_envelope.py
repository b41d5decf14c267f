"""The envelope format: round trips, every malformation, signatures, times."""

from __future__ import annotations

import base64
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seedtool.generate import SeedFactory
from seedtool.keys import generate_keypair, load_private_key
from seedtool.shared import envelope
from seedtool.shared.envelope import (
    BadSignature,
    EnvelopeExpired,
    EnvelopeNotYetValid,
    MalformedEnvelope,
    UntrustedKey,
)
from seedtool.shared.errors import EnvelopeError
from seedtool.shared.pubkeys import PublicKey, key_id, trusted_pairs

NOW = 1_800_000_000


def make(private_key: Any, seed: bytes = b"\x11" * 64, ttl: int = 3600,
         now: int = NOW, provenance: dict[str, Any] | None = None) -> bytes:
    from seedtool.keys import public_of

    return envelope.build(
        seed,
        private_key=private_key,
        key_id=key_id(public_of(private_key).raw),
        seed_id=b"\x01" * 16,
        provenance=provenance if provenance is not None else {"v": 1},
        ttl=ttl,
        now=now,
    )


def test_round_trip_and_summary_has_no_seed(private_key: Any, keypair: Any) -> None:
    raw = make(private_key)
    env = envelope.verify(raw, trusted_pairs([keypair[2]]), now=NOW + 10)
    assert env.seed == b"\x11" * 64
    assert env.creditable_bits == 512
    assert env.seed_id_hex == "01" * 16
    summary = env.summary()
    assert "seed" not in summary and "11" * 8 not in repr(summary)
    assert "11111111" not in repr(env)  # seed hidden from repr
    # base64 text form verifies the same
    text = envelope.encode_text(raw)
    assert envelope.verify(text, trusted_pairs([keypair[2]]), now=NOW).seed == env.seed


@pytest.mark.parametrize("size, bits", [
    (envelope.SEED_MIN, 128),  # 16 bytes: 8 bits a byte
    (48, 384),
    (64, 512),  # the default: exactly what HKDF-SHA512 carries
    (65, 512),  # one byte more adds nothing
    (envelope.SEED_MAX, 512),  # 512 bytes from --bytes 512: still 512 bits, never 4096
])
def test_creditable_bits_never_exceed_what_hkdf_sha512_carries(
        private_key: Any, keypair: Any, size: int, bits: int) -> None:
    # real seeds from the mixer, verified: the credit follows the construction, not --bytes
    new = SeedFactory(private_key, nbytes=size).new()
    env = envelope.verify(new.raw, trusted_pairs([keypair[2]]))
    assert len(env.seed) == size and env.creditable_bits == bits
    assert envelope.MAX_CREDIT_BITS == 8 * 64  # the PRK of HKDF-SHA512 (RFC 5869)


def test_fits_cloud_init_random_seed(private_key: Any) -> None:
    prov = {"v": 1, "sources": [{"name": n, "bytes": 64, "health": "pass"}
                                for n in ("os", "hwrng", "tpm", "truerng")]}
    text = envelope.encode_text(make(private_key, provenance=prov))
    assert len(text) < 1024  # a few hundred bytes of base64 in user-data


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r[:10], "truncated"),
        (lambda r: r[:-1], "truncated"),
        (lambda r: r + b"\0", "trailing"),
        (lambda r: b"XXXX" + r[4:], "not a seedtool envelope"),
        (lambda r: r[:4] + b"\x02" + r[5:], "version 2"),
        (lambda r: r[:5] + b"\x01" + r[6:], "reserved flags"),
        (lambda r: r[:46] + struct.pack(">H", 8) + r[48:], "seed length"),
        (lambda r: r[:46] + struct.pack(">H", 600) + r[48:], "seed length"),
        (lambda r: b"SDTL" + b"\0" * 5000, "too large"),
    ],
)
def test_malformed(private_key: Any, mutate: Any, message: str) -> None:
    with pytest.raises(MalformedEnvelope, match=message):
        envelope.parse(mutate(make(private_key)))


def test_not_base64_and_empty() -> None:
    with pytest.raises(MalformedEnvelope, match="base64"):
        envelope.parse("this is not an envelope!")
    with pytest.raises(MalformedEnvelope, match="magic"):
        envelope.parse(base64.b64encode(b"hello world"))
    with pytest.raises(MalformedEnvelope):
        envelope.parse(b"")


def test_oversized_text_is_refused_before_decoding() -> None:
    with pytest.raises(MalformedEnvelope, match="too large"):
        envelope.parse("A" * (envelope.MAX_TEXT + 4))


def test_times(private_key: Any, keypair: Any) -> None:
    trusted = trusted_pairs([keypair[2]])
    raw = make(private_key, ttl=3600)
    with pytest.raises(EnvelopeExpired, match="expired"):
        envelope.verify(raw, trusted, now=NOW + 3600 + 301, skew=300)
    assert envelope.verify(raw, trusted, now=NOW + 3600 + 299, skew=300)
    with pytest.raises(EnvelopeNotYetValid, match="not valid until"):
        envelope.verify(raw, trusted, now=NOW - 301, skew=300)
    assert envelope.verify(raw, trusted, now=NOW - 299, skew=300)


def test_wrong_and_untrusted_keys(tmp_path: Path, private_key: Any, keypair: Any) -> None:
    other = generate_keypair(tmp_path / "o.key", tmp_path / "o.pub")
    raw = make(private_key)
    with pytest.raises(UntrustedKey, match="not among the trusted"):
        envelope.verify(raw, trusted_pairs([other]), now=NOW)
    # a key that claims the right id but is a different key: signature check fails
    impostor = [(keypair[2].key_id, other.raw)]
    with pytest.raises(BadSignature, match="does not verify"):
        envelope.verify(raw, impostor, now=NOW)


def test_rotation_accepts_any_trusted_key(tmp_path: Path, keypair: Any) -> None:
    new = generate_keypair(tmp_path / "n.key", tmp_path / "n.pub")
    newkey = load_private_key(tmp_path / "n.key")
    trusted = trusted_pairs([keypair[2], new])
    assert envelope.verify(make(newkey), trusted, now=NOW).key_id == new.key_id


def test_factory_envelopes_are_unique(private_key: Any, keypair: Any) -> None:
    with SeedFactory(private_key) as f:
        a, b = f.new(), f.new()
    ea = envelope.verify(a.raw, trusted_pairs([keypair[2]]))
    eb = envelope.verify(b.raw, trusted_pairs([keypair[2]]))
    assert ea.seed != eb.seed and ea.seed_id != eb.seed_id
    assert a.summary["provenance"]["sources"][0]["name"] == "os"


_KEYS: dict[str, Any] = {}


def _shared_key() -> tuple[Any, PublicKey]:
    if not _KEYS:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from seedtool.keys import public_of

        k = Ed25519PrivateKey.generate()
        _KEYS["k"] = (k, public_of(k))
    return _KEYS["k"]  # type: ignore[no-any-return]


@settings(max_examples=200, deadline=None)
@given(seed=st.binary(min_size=16, max_size=512), ttl=st.integers(1, envelope.TTL_MAX),
       prov=st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=20),
                            max_size=5))
def test_property_sign_then_verify(seed: bytes, ttl: int, prov: dict[str, Any]) -> None:
    k, pub = _shared_key()
    raw = envelope.build(seed, private_key=k, key_id=pub.key_id, seed_id=b"\x07" * 16,
                         provenance=prov, ttl=ttl, now=NOW)
    env = envelope.verify(raw, trusted_pairs([pub]), now=NOW)
    assert env.seed == seed and dict(env.provenance) == prov


@settings(max_examples=300, deadline=None)
@given(bit=st.integers(min_value=0))
def test_property_any_single_bit_flip_fails(bit: int) -> None:
    k, pub = _shared_key()
    raw = envelope.build(b"\x42" * 64, private_key=k, key_id=pub.key_id, seed_id=b"\x07" * 16,
                         provenance={"v": 1}, ttl=3600, now=NOW)
    bit %= 8 * len(raw)
    flipped = bytearray(raw)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(EnvelopeError):
        envelope.verify(bytes(flipped), trusted_pairs([pub]), now=NOW)


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=2000))
def test_property_parse_raises_only_typed_errors(data: bytes) -> None:
    try:
        envelope.parse(b"SDTL" + data)
    except MalformedEnvelope:
        pass
