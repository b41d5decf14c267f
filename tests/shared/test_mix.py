"""Mixing: HKDF-SHA512 matches an independent implementation; contributions are separated."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from seedtool.shared.mix import DOMAIN, hkdf_sha512, mix


def test_hkdf_matches_cryptography() -> None:
    for length in (16, 64, 65, 512):
        ikm, salt, info = b"\x0b" * 22, b"salt-bytes", b"info"
        ref = HKDF(algorithm=hashes.SHA512(), length=length, salt=salt, info=info).derive(ikm)
        assert hkdf_sha512(ikm, salt, info, length) == ref


def test_domain_separation_between_contributions() -> None:
    a = mix([("os", b"ab"), ("hwrng", b"c")], 64, b"ctx")
    b = mix([("os", b"a"), ("hwrng", b"bc")], 64, b"ctx")
    c = mix([("hwrng", b"ab"), ("os", b"c")], 64, b"ctx")
    assert len({a, b, c}) == 3
    assert mix([("os", b"ab")], 64, b"ctx") != mix([("os", b"ab")], 64, b"ctx2")
    assert DOMAIN == b"seedtool mix v1"


@settings(max_examples=100, deadline=None)
@given(parts=st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=5),
       which=st.integers(0), bit=st.integers(0))
def test_property_every_contribution_matters(parts: list[bytes], which: int, bit: int) -> None:
    named = [(f"s{i}", p) for i, p in enumerate(parts)]
    base = mix(named, 64, b"id")
    i = which % len(parts)
    flipped = bytearray(parts[i])
    flipped[(bit // 8) % len(flipped)] ^= 1 << (bit % 8)
    changed = list(named)
    changed[i] = (named[i][0], bytes(flipped))
    assert mix(changed, 64, b"id") != base
