"""Fuzz target: the seed envelope (`seedtool.shared.envelope.parse` and `verify`), raw and base64.

Every input is tried three ways: as raw or base64 bytes, as text, and through
`verify` with the fuzz key trusted. Invariants checked on every accepted input:

* `parse` raises only `MalformedEnvelope`; `verify` only `EnvelopeError` subclasses;
* a parsed envelope re-serialises to exactly the bytes it was parsed from, and its
  base64 form parses to the same envelope;
* an envelope that verifies is byte for byte one the fuzz key signed (the seeds):
  no mutation may produce a new envelope that verifies.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

from seedtool.shared import envelope
from seedtool.shared.envelope import MalformedEnvelope
from seedtool.shared.errors import EnvelopeError

from ._keys import NOW, TRUSTED, make_envelope

INSTRUMENT = ["seedtool"]
MAX_LEN = 4096

_SIGNED = [
    make_envelope(b"\x11" * 16, {}),
    make_envelope(bytes(range(64)), {"v": 1, "sources": [{"name": "os", "bytes": 64}]}),
    make_envelope(b"\xa5" * 512, {"v": 1, "note": "x" * 300}, ttl=366 * 86400),
    make_envelope(b"\x00" * 32, {"v": 1, "nested": {"a": [1, 2.5, None, True, "\u00e9"]}}),
    make_envelope(bytes(range(64)), {"v": 1, "via": "seed-server"},
                  binding=("aws:123456789012:us-east-1:i-0123456789abcdef0", b"\x42" * 32)),
    make_envelope(b"\x33" * 64, {}, binding=("t", bytes(32))),
]
SIGNED = frozenset(_SIGNED)


def seeds() -> Iterator[bytes]:
    for raw in _SIGNED:
        yield raw
        text = base64.b64encode(raw)
        yield text
        yield b"\n".join(text[i : i + 76] for i in range(0, len(text), 76)) + b"\n"
    yield b"SDTL\x01\x00" + b"\x00" * 48
    yield b"SDTL\x02\x01" + b"\x00" * 48
    yield b"U0RUTA=="


def test_one_input(data: bytes) -> None:
    raw: bytes | None = None
    try:
        env = envelope.parse(data)
    except MalformedEnvelope:
        env = None
    if env is not None:
        raw = envelope.decode_text(data)
        context = (envelope.SIGNING_CONTEXT if env.binding is None
                   else envelope.SIGNING_CONTEXT_BOUND)
        body = env.signed_part[len(context) :]
        assert env.signed_part.startswith(context)
        assert body + env.signature == raw, "parse does not account for every byte"
        assert envelope.SEED_MIN <= env.seed_len <= envelope.SEED_MAX
        assert env.issued_at <= env.not_after
        assert isinstance(env.provenance, dict)
        assert envelope.parse(envelope.encode_text(raw)) == env

    try:
        as_text = envelope.parse(data.decode("latin-1"))
    except MalformedEnvelope:
        as_text = None
    if as_text is not None and env is not None and data.isascii():
        assert as_text == env

    try:
        verified = envelope.verify(data, TRUSTED, now=NOW)
    except EnvelopeError:
        return
    assert env is not None and raw is not None
    assert raw in SIGNED, "an envelope the fuzz key never signed verified"
    assert verified.seed == env.uncredited_seed
