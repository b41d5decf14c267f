"""Trusted public keys (read by the guest at boot; standard library only).

Public key files hold one key per line, `seedtool-ed25519 <base64 raw key> [comment]`,
so that several keys (rotation) can live in one file or in a directory of `.pub`
files baked into an image. Parsing them needs only the standard library: the guest
reads them at boot. The private half lives in seedtool/keys.py, on the trusted host only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from . import ed25519
from .errors import SigningKeyError
from .record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:  # the guest imports this module at boot: no typing, pathlib, dataclasses
    from collections.abc import Iterable

PUBLIC_PREFIX = "seedtool-ed25519"
KEY_ID_CONTEXT = b"seedtool key id\x00"


def key_id(raw_public: bytes) -> bytes:
    """8-byte id of an Ed25519 public key."""
    return hashlib.sha256(KEY_ID_CONTEXT + raw_public).digest()[:8]


class PublicKey(Record):
    __slots__ = ("raw", "comment")
    FIELDS = __slots__
    DEFAULTS = {"comment": ""}
    raw: bytes
    comment: str

    @property
    def key_id(self) -> bytes:
        return key_id(self.raw)

    def line(self) -> str:
        text = f"{PUBLIC_PREFIX} {base64.b64encode(self.raw).decode()}"
        return f"{text} {self.comment}".rstrip() + "\n"


def parse_public_keys(text: str, origin: str = "public key file") -> list[PublicKey]:
    keys: list[PublicKey] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if parts[0] != PUBLIC_PREFIX or len(parts) < 2:
            raise SigningKeyError(
                f"{origin} line {lineno} is not a seedtool public key "
                f"(expected '{PUBLIC_PREFIX} BASE64 [comment]'); "
                "use the .pub file from seedtool keygen"
            )
        try:
            raw = base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise SigningKeyError(f"{origin} line {lineno} does not hold a 32-byte Ed25519 key")
        if not ed25519.usable_public_key(raw):
            raise SigningKeyError(
                f"{origin} line {lineno} holds no usable Ed25519 key (not a curve point, or "
                "of small order, under which anyone could forge signatures); use the .pub "
                "file from seedtool keygen"
            )
        keys.append(PublicKey(raw, parts[2] if len(parts) > 2 else ""))
    return keys


def key_files(path: str) -> list[str]:
    """The key files `path` names: every `*.pub` in it (by name) if a directory, else itself."""
    if os.path.isdir(path):
        return [os.path.join(path, n) for n in sorted(os.listdir(path)) if n.endswith(".pub")]
    return [path]


def load_public_keys(paths: Iterable[str | os.PathLike[str]]) -> list[PublicKey]:
    """Read keys from files and directories (every `*.pub` in a directory)."""
    keys: list[PublicKey] = []
    for p in paths:
        for f in key_files(os.fspath(p)):
            try:
                with open(f, encoding="utf-8") as fh:
                    text = fh.read()
            except (OSError, UnicodeDecodeError) as e:
                reason = e.strerror if isinstance(e, OSError) and e.strerror else "not UTF-8 text"
                raise SigningKeyError(f"cannot read public key file {f}: {reason}") from None
            keys.extend(parse_public_keys(text, str(f)))
    return keys


def trusted_pairs(keys: Iterable[PublicKey]) -> list[tuple[bytes, bytes]]:
    return [(k.key_id, k.raw) for k in keys]
