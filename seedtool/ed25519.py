"""Ed25519 signature checks for the envelope, with the cheapest verifier at hand.

The guest checks one signature per boot, before the kernel's CRNG is ready, often
under emulation. Importing `cryptography` for it costs 0.4-2.5 s there (its backend
pulls in x509, email and every algorithm; docs/guest.md "Boot time"), most of the
cloud-init module's time. The verifier `cryptography` calls is OpenSSL's EVP
interface in libcrypto, and libcrypto is already mapped into any CPython that
imported `hashlib` (`_hashlib` links it; cloud-init does). So this module tries, in
order:

1. `libcrypto`: OpenSSL >= 1.1.1 through `ctypes` (`EVP_DigestVerify` with an
   `EVP_PKEY_ED25519` key), the same implementation `cryptography` uses;
2. `cryptography`, when libcrypto cannot be loaded (not Linux, no OpenSSL 1.1.1+);
3. neither: `available()` says why, and `verify` raises `Unavailable`.

A backend is used only after it passed a known-answer test (RFC 8032 section 7.1,
test 1: the valid signature verifies, the same with one bit changed does not), so a
wrong binding can only make it unusable, never make it accept a forgery.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

    Verifier = Callable[[bytes, bytes, bytes], bool]

PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64

_NID_ED25519 = 1087  # EVP_PKEY_ED25519 in OpenSSL 1.1.1 and 3.x
LIBCRYPTO_NAMES = ("libcrypto.so.3", "libcrypto.so.1.1")

# RFC 8032 section 7.1, TEST 1 (empty message)
_KAT_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
_KAT_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
    "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


class Unavailable(Exception):
    """No usable Ed25519 verifier in this process."""


def _libcrypto() -> Verifier:
    if not sys.platform.startswith("linux"):
        raise Unavailable("libcrypto is loaded through ctypes on Linux only")
    try:
        import ctypes
    except ImportError:
        raise Unavailable("this Python has no ctypes") from None

    lib = None
    for name in LIBCRYPTO_NAMES:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        raise Unavailable(f"none of {', '.join(LIBCRYPTO_NAMES)} can be loaded")
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    try:
        new_key = lib.EVP_PKEY_new_raw_public_key
        free_key = lib.EVP_PKEY_free
        new_ctx = lib.EVP_MD_CTX_new
        free_ctx = lib.EVP_MD_CTX_free
        init = lib.EVP_DigestVerifyInit
        check = lib.EVP_DigestVerify
        clear_errors = lib.ERR_clear_error
    except AttributeError as e:
        raise Unavailable(f"libcrypto has no Ed25519 interface (OpenSSL < 1.1.1): {e}") from None
    new_key.argtypes, new_key.restype = [ctypes.c_int, vp, ctypes.c_char_p, sz], vp
    free_key.argtypes, free_key.restype = [vp], None
    new_ctx.argtypes, new_ctx.restype = [], vp
    free_ctx.argtypes, free_ctx.restype = [vp], None
    init.argtypes, init.restype = [vp, vp, vp, vp, vp], ctypes.c_int
    check.argtypes, check.restype = [vp, ctypes.c_char_p, sz, ctypes.c_char_p, sz], ctypes.c_int
    clear_errors.argtypes, clear_errors.restype = [], None

    def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
        if len(public_key) != PUBLIC_KEY_LEN or len(signature) != SIGNATURE_LEN:
            return False
        key = new_key(_NID_ED25519, None, public_key, PUBLIC_KEY_LEN)
        ctx = new_ctx() if key else None
        try:
            if not key or not ctx or init(ctx, None, None, None, key) != 1:
                return False
            return bool(check(ctx, signature, SIGNATURE_LEN, message, len(message)) == 1)
        finally:
            if ctx:
                free_ctx(ctx)
            if key:
                free_key(key)
            clear_errors()  # leave nothing on this thread's queue for ssl or hashlib

    return verify


def _cryptography() -> Verifier:
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        raise Unavailable("the Python 'cryptography' package is not installed") from None

    def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True

    return verify


BACKENDS: dict[str, Callable[[], Verifier]] = {
    "libcrypto": _libcrypto,
    "cryptography": _cryptography,
}

_chosen: tuple[str, Verifier] | None = None


def _passes_known_answer(verify: Verifier) -> bool:
    forged = bytes([_KAT_SIGNATURE[0] ^ 1]) + _KAT_SIGNATURE[1:]
    return verify(_KAT_PUBLIC, _KAT_SIGNATURE, b"") and not verify(_KAT_PUBLIC, forged, b"")


def load(name: str) -> Verifier:
    """The named backend, after its known-answer test; raise Unavailable if unusable."""
    verify = BACKENDS[name]()
    if not _passes_known_answer(verify):
        raise Unavailable(f"{name} failed the Ed25519 known-answer test")
    return verify


def _choose() -> tuple[str, Verifier]:
    global _chosen
    if _chosen is None:
        reasons = []
        for name in BACKENDS:
            try:
                _chosen = (name, load(name))
                break
            except Unavailable as e:
                reasons.append(f"{name}: {e}")
        else:
            raise Unavailable("; ".join(reasons))
    return _chosen


def backend() -> str:
    """The name of the verifier in use; raise Unavailable (with every reason) if none."""
    return _choose()[0]


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when `signature` is a valid Ed25519 signature of `message` by `public_key`."""
    return _choose()[1](public_key, signature, message)


def forget_choice() -> None:
    """Choose again on the next call (for tests that change what is importable)."""
    global _chosen
    _chosen = None
