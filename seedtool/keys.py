"""Signing keys (trusted host only; needs cryptography).

Private keys are PKCS#8 PEM, optionally passphrase-encrypted, created 0600; a private
key readable by group or others is refused. The public half, which the guest reads
at boot, is seedtool/shared/pubkeys.py.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from .shared.errors import SigningKeyError
from .shared.pubkeys import PublicKey


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

    from .shared.fileio import atomic_write

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
    pub = public_of(key).replace(comment=comment)
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
