"""Fuzz target: the guest's scrub (`seedtool.guest.scrub.Scrubber.scrub_bytes`).

The first byte picks how the rest is used:

* even: the bytes as they are, scrubbed for the planted envelope and for another
  envelope that no input ever holds;
* odd: a recipe. The real envelope is planted between fuzzer bytes (prefix and
  suffix, each ended by a separator that no encoding continues), in a form built
  from the recipe: the raw envelope or its base64 text (wrapped at any width, with
  any line break, indentation, quoting or quoted-printable soft breaks), inside up
  to three layers of base64 (any width and line break, JSON `\\n` escapes), gzip
  (any level) and Python bytes literals, the encodings cloud-init's copies hold.

Invariants: only `SeedtoolError` may escape (none is expected); the output has the
input's length; scrubbing the output again changes nothing; scrubbing for an
envelope that is not there changes nothing at all; and where an envelope was
planted, neither its raw bytes nor its base64 text (layout removed) is left
anywhere, in the output or in the planted region decoded layer by layer, and every
layer of that region still decodes (the scrub keeps each container valid).
"""

from __future__ import annotations

import ast
import base64
import gzip
import json
from collections.abc import Iterator

from seedtool.guest import scrub

from ._keys import make_envelope

INSTRUMENT = ["seedtool"]
MAX_LEN = 4096

PLANTED = make_envelope(bytes(range(64)), {"v": 1, "sources": [{"name": "os", "bytes": 64}]})
ABSENT = make_envelope(b"\x42" * 32, {"v": 1}, seed_id=b"\xab" * 16)
_NEEDLES = scrub.needles_for(PLANTED)
_ABSENT = scrub.needles_for(ABSENT)
_TEXT = base64.b64encode(PLANTED)
_CORE = _TEXT.rstrip(b"=")
_LAYOUT = b" \t\r\n\f\v\"'\\"
_SEPS = (b"\n", b"\r\n", b"\\n", b"\n    ", b" ", b"\n  ")
_LAYERS = ("b64", "gz", "repr", "json")


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def chunk(self) -> bytes:
        n = self.byte() % 64
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out


def _wrap(text: bytes, width: int, sep: bytes) -> bytes:
    return sep.join(text[i:i + width] for i in range(0, len(text), width))


def _encode(layer: str, data: bytes, r: _Reader) -> bytes | None:
    if layer == "b64":
        return _wrap(base64.b64encode(data), 4 * (1 + r.byte() % 40), _SEPS[r.byte() % 3])
    if layer == "gz":
        return gzip.compress(data, compresslevel=r.byte() % 10, mtime=r.byte())
    if layer == "repr":
        return repr(data).encode("ascii")  # b'...' or b"..."
    if not data.isascii():
        return None  # JSON of binary would be \\u escapes, which no cloud-init copy holds
    return json.dumps(data.decode("ascii")).encode("ascii")


def _decode(layer: str, data: bytes) -> bytes:
    if layer == "b64":
        return base64.b64decode(data.replace(b"\\n", b"").translate(None, b" \r\n"))
    if layer == "gz":
        return gzip.decompress(data)
    if layer == "repr":
        value = ast.literal_eval(data.decode("ascii"))
        assert isinstance(value, bytes)
        return value
    value = json.loads(data)
    assert isinstance(value, str)
    return value.encode("ascii")


def _plant(r: _Reader) -> tuple[bytes, int, int, list[str]]:
    """(blob, start, end of the planted form, layers from the outside in)."""
    prefix, suffix = r.chunk(), r.chunk()
    mode = r.byte()
    if mode % 2:
        form = PLANTED
    else:
        width = 1 + r.byte() % 90
        sep = _SEPS[r.byte() % len(_SEPS)]
        form = _wrap(_TEXT, width, sep)
        if mode & 2:
            form = b'"' + form + b'"'
        if mode & 4 and b"\\" not in sep:  # quoted-printable soft line breaks (RFC 2045
            # 6.7) of text, not of JSON-escaped text: a break inside an escape is not a form
            form = _wrap(form, 1 + r.byte() % 75, b"=\n")
    layers: list[str] = []
    for _ in range(r.byte() % 4):
        layer = _LAYERS[r.byte() % len(_LAYERS)]
        encoded = _encode(layer, form, r)
        if encoded is not None:
            form = encoded
            layers.insert(0, layer)
    head = prefix + b"\x00\n"
    return head + form + b"\n\x00" + suffix, len(head), len(head) + len(form), layers


def _left(blob: bytes) -> bool:
    """Whether the planted envelope is still in `blob`, raw or as base64 text."""
    if PLANTED in blob:
        return True
    view = blob.replace(b"\\n", b"  ").replace(b"=\r\n", b"").replace(b"=\n", b"")
    return _CORE in view.translate(None, _LAYOUT)


def seeds() -> Iterator[bytes]:
    yield b"\x00" + b"plain text with nothing of ours"
    yield b"\x00" + _TEXT
    yield b"\x00" + gzip.compress(b"random_seed: {data: " + _TEXT + b"}", mtime=0)
    yield from (
        b"\x01\x00\x00\x00\x10\x00\x00",  # the text, 16 wide, plain
        b"\x01\x03ab:\x02yz\x01\x00",  # raw envelope
        b"\x01\x00\x00\x06\x30\x03\x00",  # quoted text, indented lines
        b"\x01\x00\x00\x04\x20\x00\x20\x00",  # quoted-printable
        b"\x01\x00\x00\x00\x4c\x00\x02\x01\x06\x00\x00\x12\x00",  # gzip then base64
        b"\x01\x00\x00\x01\x03\x02\x02",  # raw envelope as a bytes literal, in JSON
        b"\x01\x00\x00\x01\x03\x01\x09\x00\x02\x03",  # gzip, bytes literal, JSON
        b"\x01\x00\x00\x00\x4c\x01\x03\x00\x13\x00\x01\x09\x00\x00\x12\x01",
    )


def test_one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] % 2:
        blob, start, end, layers = _plant(_Reader(data[1:]))
        planted = True
    else:
        blob, start, end, layers = data[1:], 0, 0, []
        planted = False
    untouched, n = scrub.Scrubber(_ABSENT).scrub_bytes(blob)
    assert untouched == blob and n == 0, "changed what holds none of the envelope"
    out, n = scrub.Scrubber(_NEEDLES).scrub_bytes(blob)
    assert len(out) == len(blob), "the scrub changed the length"
    again, n2 = scrub.Scrubber(_NEEDLES).scrub_bytes(out)
    assert again == out and n2 == 0, "a second scrub found more"
    if not planted:
        return
    assert n >= 1 and not _left(out), f"a planted envelope survived ({layers})"
    # every layer still decodes (a replaced gzip member or bytes literal is a valid one
    # holding a marker) and none holds the envelope any more
    region = out[start:end]
    for layer in layers:
        if region.startswith(b"[seedtool: "):
            break  # a container replaced whole by a marker: nothing inside it is left
        region = _decode(layer, region)
    assert not _left(region), f"the decoded layers still hold the envelope ({layers})"
