"""Ed25519 signature verification (RFC 8032) in pure Python: what the guest checks with.

Why not `cryptography` or OpenSSL at boot: the guest checks one signature per boot,
before the kernel's CRNG is ready, often under emulation, where the cost is in
loading native code, not in arithmetic. Measured in a Debian 12 guest under QEMU
TCG (docs/guest.md "Boot time"): importing `cryptography` 0.4-2.5 s; OpenSSL's
libcrypto through ctypes 70-95 ms (ctypes and libffi, then OpenSSL's first Ed25519
operation); this module 6 ms to import and 13-21 ms per verification. Signing stays
with `cryptography` on the trusted host.

Verification only, so only public data is handled and timing does not matter. It
follows RFC 8032 section 5.1.7 in its cofactorless form, the one OpenSSL (and so
`cryptography`) implements: S must be below the group order L; A must decode
(section 5.1.3: y < p, x recoverable, no "negative zero"); the signature holds when
the encoding of [S]B - [k]A, k = SHA-512(R || A || M) mod L, equals the 32 bytes of
R exactly (so a non-canonical R never matches). tests/shared/test_ed25519.py checks it
against OpenSSL through `cryptography` on RFC 8032's vectors, malleated and
degenerate inputs and random single-bit changes.

Points are in extended twisted Edwards coordinates (X:Y:Z:T), x = X/Z, y = Y/Z,
xy = T/Z, on -x^2 + y^2 = 1 + d x^2 y^2 over GF(2^255 - 19); the addition and
doubling formulas are those of RFC 8032 section 5.1.4.
"""

from __future__ import annotations

import hashlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    _Point = tuple[int, int, int, int]

PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_D2 = 2 * _D % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)

_IDENTITY: _Point = (0, 1, 1, 0)


def _recover_x(y: int, sign: int) -> int | None:
    """x for y with the given low bit, or None when there is none (RFC 8032 5.1.3)."""
    if y >= _P:
        return None
    yy = y * y % _P
    u = (yy - 1) % _P
    v = (_D * yy + 1) % _P
    v3 = v * v % _P * v % _P
    x = u * v3 % _P * pow(u * v3 % _P * v3 % _P * v % _P, (_P - 5) // 8, _P) % _P
    vxx = v * x % _P * x % _P
    if vxx == (-u) % _P:
        x = x * _SQRT_M1 % _P
    elif vxx != u:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return x


def _decode(data: bytes) -> _Point | None:
    n = int.from_bytes(data, "little")
    y = n & ((1 << 255) - 1)
    x = _recover_x(y, n >> 255)
    if x is None:
        return None
    return (x, y, 1, x * y % _P)


def _encode(p: _Point) -> bytes:
    x_, y_, z, _ = p
    zi = pow(z, _P - 2, _P)
    x, y = x_ * zi % _P, y_ * zi % _P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _add(p: _Point, q: _Point) -> _Point:
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % _P
    b = (y1 + x1) * (y2 + x2) % _P
    c = t1 * _D2 % _P * t2 % _P
    d = 2 * z1 * z2 % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _double(p: _Point) -> _Point:
    x1, y1, z1, _ = p
    a = x1 * x1 % _P
    b = y1 * y1 % _P
    c = 2 * z1 * z1 % _P
    h = a + b
    e = h - (x1 + y1) * (x1 + y1) % _P
    g = a - b
    f = c + g
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _multiples(p: _Point) -> list[_Point]:
    """[0]p .. [15]p, for 4-bit windows."""
    table = [_IDENTITY, p]
    for _ in range(14):
        table.append(_add(table[-1], p))
    return table


_BASE_Y = 4 * pow(5, _P - 2, _P) % _P
_BASE_X = _recover_x(_BASE_Y, 0)
assert _BASE_X is not None
_BASE: _Point = (_BASE_X, _BASE_Y, 1, _BASE_X * _BASE_Y % _P)
_base_table: list[_Point] = []


def _combination(s: int, b_table: list[_Point], k: int, a_table: list[_Point]) -> _Point:
    """[s]B + [k]A for 253-bit scalars, both 4 bits at a time (Straus)."""
    acc = _IDENTITY
    for shift in range(252, -1, -4):
        acc = _double(_double(_double(_double(acc))))
        ds, dk = (s >> shift) & 15, (k >> shift) & 15
        if ds:
            acc = _add(acc, b_table[ds])
        if dk:
            acc = _add(acc, a_table[dk])
    return acc


def usable_public_key(public_key: bytes) -> bool:
    """True when `public_key` decodes (RFC 8032 5.1.3) to a point whose order is not
    small. Under a small-order key anyone can forge: under the identity, R = identity
    and S = 0 verify every message. keygen never makes one; a trusted key must not be.
    """
    if len(public_key) != PUBLIC_KEY_LEN:
        return False
    a = _decode(public_key)
    if a is None:
        return False
    eight_a = _double(_double(_double(a)))
    return _encode(eight_a) != _encode(_IDENTITY)


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when `signature` is a valid Ed25519 signature of `message` by `public_key`."""
    if len(public_key) != PUBLIC_KEY_LEN or len(signature) != SIGNATURE_LEN:
        return False
    r, s = signature[:32], int.from_bytes(signature[32:], "little")
    if s >= _L:
        return False
    a = _decode(public_key)
    if a is None:
        return False
    k = int.from_bytes(hashlib.sha512(r + public_key + message).digest(), "little") % _L
    minus_a = ((-a[0]) % _P, a[1], a[2], (-a[3]) % _P)
    if not _base_table:
        _base_table.extend(_multiples(_BASE))
    return _encode(_combination(s, _base_table, k, _multiples(minus_a))) == r
