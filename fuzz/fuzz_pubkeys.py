"""Fuzz target: trusted public key files (`seedtool.shared.pubkeys.load_public_keys`).

The input is a `.pub` file's content, read from a real file as the guest reads it
(so bytes that are not UTF-8 are part of the test). Invariants: loading ends in a
list of keys or a `SigningKeyError`; every key is 32 bytes, and writing the keys
back with `PublicKey.line` and parsing that gives the same keys.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

from seedtool.shared.errors import SigningKeyError
from seedtool.shared.pubkeys import PUBLIC_PREFIX, PublicKey, load_public_keys, parse_public_keys

from ._scratch import scratch_path

INSTRUMENT = ["seedtool"]
MAX_LEN = 2048

_PATH = scratch_path("keys.pub")


def seeds() -> Iterator[bytes]:
    one = PublicKey(bytes(range(32)), "host-a 2025").line().encode()
    two = PublicKey(b"\xff" * 32).line().encode()
    yield one
    yield b"# trusted keys\n\n" + one + two
    yield f"{PUBLIC_PREFIX} {base64.b64encode(b'x' * 31).decode()}\n".encode()
    yield f"  {PUBLIC_PREFIX}\t{base64.b64encode(b'y' * 32).decode()}\tc\u00e9\r\n".encode()
    yield b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA test\n"


def test_one_input(data: bytes) -> None:
    with open(_PATH, "wb") as f:
        f.write(data)
    try:
        keys = load_public_keys([_PATH])
    except SigningKeyError:
        return
    for k in keys:
        assert len(k.raw) == 32
    text = "".join(k.line() for k in keys)
    assert parse_public_keys(text) == keys, "keys do not survive being written back"
