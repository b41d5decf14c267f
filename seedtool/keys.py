"""Signing keys and trusted public keys.

Public key files hold one key per line, `seedtool-ed25519 <base64 raw key> [comment]`,
so that several keys (rotation) can live in one file or in a directory of `.pub`
files baked into an image. Parsing them needs only the standard library: the guest
reads them at boot. Private keys are PKCS#8 PEM, optionally passphrase-encrypted,
created 0600; a private key readable by group or others is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat

from . import ed25519
from .errors import SigningKeyError
from .record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:  # the guest imports this module at boot: no typing, pathlib, dataclasses
    from collections.abc import Iterable
    from typing import Any

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


def load_public_keys(paths: Iterable[str | os.PathLike[str]]) -> list[PublicKey]:
    """Read keys from files and directories (every `*.pub` in a directory)."""
    keys: list[PublicKey] = []
    for p in paths:
        path = os.fspath(p)
        if os.path.isdir(path):
            files = [os.path.join(path, n) for n in sorted(os.listdir(path)) if n.endswith(".pub")]
        else:
            files = [path]
        for f in files:
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


# --- private keys (trusted host only; needs cryptography) ---------------------------


def generate_keypair(
    private_path: str | os.PathLike[str],
    public_path: str | os.PathLike[str],
    passphrase: bytes | None = None,
    comment: str = "",
    force: bool = False,
) -> PublicKey:
    import contextlib

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from .fileio import atomic_write

    for p in (private_path, public_path):
        if os.path.exists(p) and not force:
            raise SigningKeyError(f"{p} already exists; pass --force to replace it")
    key = Ed25519PrivateKey.generate()
    enc: Any = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    raw_pub = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    pub = PublicKey(raw_pub, comment)
    # both files are written in full beside their targets before either is renamed into
    # place, so a full disk leaves neither (not a lone private key, nor a replaced half)
    staged: list[tuple[str, str]] = []
    try:
        for path, data, mode in ((private_path, pem, 0o600),
                                 (public_path, pub.line().encode(), 0o644)):
            final = os.fspath(path)
            atomic_write(final + ".seedtool-new", data, mode=mode)
            staged.append((final + ".seedtool-new", final))
        for tmp, final in staged:
            os.replace(tmp, final)
    except OSError as e:
        raise SigningKeyError(
            f"cannot write the key files: {e.strerror}; nothing was written"
        ) from None
    finally:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return pub


def load_private_key(path: str | os.PathLike[str], passphrase: bytes | None = None) -> Any:
    """Load an Ed25519 private key; refuse one readable by group or others."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise SigningKeyError(
            f"cannot read signing key {path}: {e.strerror}; create one with 'seedtool keygen'"
        ) from None
    try:
        st = os.fstat(fd)
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SigningKeyError(
                f"signing key {path} is readable by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); run 'chmod 600 {path}'"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(1 << 16)
    finally:
        os.close(fd)
    try:
        key = serialization.load_pem_private_key(data, password=passphrase or None)
    except TypeError:
        if passphrase:
            raise SigningKeyError(
                f"signing key {path} is not encrypted; do not give a passphrase"
            ) from None
        raise SigningKeyError(
            f"signing key {path} is encrypted; give its passphrase (--passphrase-file or "
            "SEEDTOOL_KEY_PASSPHRASE)"
        ) from None
    except ValueError:
        if passphrase:
            raise SigningKeyError(
                f"cannot decrypt signing key {path}: wrong passphrase or not a PEM key"
            ) from None
        raise SigningKeyError(
            f"{path} is not a PEM private key made by 'seedtool keygen'"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} is not an Ed25519 key; make one with 'seedtool keygen'")
    return key


def public_of(private_key: Any) -> PublicKey:
    from cryptography.hazmat.primitives import serialization

    raw = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return PublicKey(raw)
