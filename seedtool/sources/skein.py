"""Skein-256 as the Simtec Entropy Key and its daemon `ekeyd` use it: Skein **v1.1**.

The Entropy Key's firmware and ekeyd 1.1.5 were built in 2009 against the Skein
reference code of the SHA-3 round-1 submission (Skein v1.1). Later versions of Skein
changed Threefish: v1.2 changed the rotation constants and v1.3 the key-schedule
parity constant. A current Skein library therefore computes different MACs and
different one-time pads from the ones the device makes, so this module implements
the old constants. Sources, read in ekeyd 1.1.5's `device/skein/skein.h` (the
rotation constants and `SKEIN_KS_PARITY = 0x5555555555555555`), `skein.c` and
`skein_block.c` (UBI chaining, Init/Update/Final/Final_Pad) and in "The Skein Hash
Function Family" v1.1 (Ferguson et al., 2008). Written here from those descriptions.

Only the 256-bit state size is implemented: the Entropy Key protocol uses nothing
else (ekeyd's `doc/README.protocol`: "the 256 bit Skein hash ... set to output at
256 bits").

The context deliberately keeps the reference code's buffering rule, because ekeyd's
key set-up depends on it: `update()` always holds back the last (possibly full)
block until more input or a `final*()` call arrives, and `start_type()` discards
whatever is held back. Feeding 96 bytes and then starting a new type therefore
processes only the first 64 bytes (see `entropykey_protocol.prepare`).

This module never logs and keeps no state outside a context object.
"""

from __future__ import annotations

import struct
from typing import ClassVar

_M = 0xFFFFFFFFFFFFFFFF

#: Threefish-256 rotation constants of Skein v1.0/v1.1 (ekeyd `skein.h`, R_256_d_j).
#: Skein v1.2 and v1.3 use (14,16),(52,57),(23,40),(5,37),(25,33),(46,12),(58,22),(32,32).
ROTATIONS_V1_1: tuple[tuple[int, int], ...] = (
    (5, 56),
    (36, 28),
    (13, 46),
    (58, 44),
    (26, 20),
    (53, 35),
    (11, 42),
    (59, 50),
)
#: Key-schedule parity word of Skein v1.1 (v1.3 uses 0x1BD11BDAA9FC1A22).
KS_PARITY_V1_1 = 0x5555555555555555
ROUNDS = 72

# UBI block types (tweak bits 120..125) and flags, as in the Skein specification.
TYPE_KEY = 0
TYPE_CFG = 4
TYPE_PERS = 8
TYPE_PK = 12
TYPE_KDF = 16
TYPE_NONCE = 20
TYPE_MSG = 48
TYPE_OUT = 63
_FLAG_FIRST = 1 << 62
_FLAG_FINAL = 1 << 63
_TYPE_SHIFT = 56

#: Config "schema" word: version 1 and the ASCII string "SHA3", little-endian.
_SCHEMA_VER = (1 << 32) | 0x33414853
TREE_INFO_SEQUENTIAL = 0

BLOCK_BYTES = 32
_UNPACK4 = struct.Struct("<4Q")


def _threefish256(
    k0: int, k1: int, k2: int, k3: int, t0: int, t1: int, w0: int, w1: int, w2: int, w3: int
) -> tuple[int, int, int, int]:
    """Encrypt one block with Threefish-256 (v1.1 constants); all values are 64-bit words."""
    m = _M
    k4 = k0 ^ k1 ^ k2 ^ k3 ^ KS_PARITY_V1_1
    ks = (k0, k1, k2, k3, k4)
    ts = (t0, t1, t0 ^ t1)
    x0 = (w0 + k0) & m
    x1 = (w1 + k1 + t0) & m
    x2 = (w2 + k2 + t1) & m
    x3 = (w3 + k3) & m
    # Nine groups of eight rounds, each followed by two subkey injections. The
    # rotation amounts are spelled out so the hot loop does no table look-ups.
    for s in range(1, 19, 2):
        # rounds 8g+0 .. 8g+3: constants (5,56) (36,28) (13,46) (58,44)
        x0 = (x0 + x1) & m
        x1 = (((x1 << 5) & m) | (x1 >> 59)) ^ x0
        x2 = (x2 + x3) & m
        x3 = (((x3 << 56) & m) | (x3 >> 8)) ^ x2
        x0 = (x0 + x3) & m
        x3 = (((x3 << 36) & m) | (x3 >> 28)) ^ x0
        x2 = (x2 + x1) & m
        x1 = (((x1 << 28) & m) | (x1 >> 36)) ^ x2
        x0 = (x0 + x1) & m
        x1 = (((x1 << 13) & m) | (x1 >> 51)) ^ x0
        x2 = (x2 + x3) & m
        x3 = (((x3 << 46) & m) | (x3 >> 18)) ^ x2
        x0 = (x0 + x3) & m
        x3 = (((x3 << 58) & m) | (x3 >> 6)) ^ x0
        x2 = (x2 + x1) & m
        x1 = (((x1 << 44) & m) | (x1 >> 20)) ^ x2
        # subkey s
        x0 = (x0 + ks[s % 5]) & m
        x1 = (x1 + ks[(s + 1) % 5] + ts[s % 3]) & m
        x2 = (x2 + ks[(s + 2) % 5] + ts[(s + 1) % 3]) & m
        x3 = (x3 + ks[(s + 3) % 5] + s) & m
        # rounds 8g+4 .. 8g+7: constants (26,20) (53,35) (11,42) (59,50)
        x0 = (x0 + x1) & m
        x1 = (((x1 << 26) & m) | (x1 >> 38)) ^ x0
        x2 = (x2 + x3) & m
        x3 = (((x3 << 20) & m) | (x3 >> 44)) ^ x2
        x0 = (x0 + x3) & m
        x3 = (((x3 << 53) & m) | (x3 >> 11)) ^ x0
        x2 = (x2 + x1) & m
        x1 = (((x1 << 35) & m) | (x1 >> 29)) ^ x2
        x0 = (x0 + x1) & m
        x1 = (((x1 << 11) & m) | (x1 >> 53)) ^ x0
        x2 = (x2 + x3) & m
        x3 = (((x3 << 42) & m) | (x3 >> 22)) ^ x2
        x0 = (x0 + x3) & m
        x3 = (((x3 << 59) & m) | (x3 >> 5)) ^ x0
        x2 = (x2 + x1) & m
        x1 = (((x1 << 50) & m) | (x1 >> 14)) ^ x2
        # subkey s + 1
        u = s + 1
        x0 = (x0 + ks[u % 5]) & m
        x1 = (x1 + ks[(u + 1) % 5] + ts[u % 3]) & m
        x2 = (x2 + ks[(u + 2) % 5] + ts[(u + 1) % 3]) & m
        x3 = (x3 + ks[(u + 3) % 5] + u) & m
    return x0, x1, x2, x3


def threefish256_encrypt(key: bytes, tweak: bytes, block: bytes) -> bytes:
    """Threefish-256 (v1.1) encryption of one 32-byte block; key 32 bytes, tweak 16 bytes."""
    if len(key) != 32 or len(tweak) != 16 or len(block) != 32:
        raise ValueError("Threefish-256 needs a 32-byte key, a 16-byte tweak and a 32-byte block")
    k0, k1, k2, k3 = _UNPACK4.unpack(key)
    t0, t1 = struct.unpack("<2Q", tweak)
    w0, w1, w2, w3 = _UNPACK4.unpack(block)
    return _UNPACK4.pack(*_threefish256(k0, k1, k2, k3, t0, t1, w0, w1, w2, w3))


class Skein256:
    """An incremental Skein-256 (v1.1) context with the reference code's semantics.

    `Skein256(hash_bits, key)` is the reference `Skein_256_InitExt` with sequential
    tree info: with a key it is Skein-MAC, without one a plain hash. Use `copy()` to
    reuse a prepared state (the Entropy Key protocol prepares one per key).
    """

    __slots__ = ("_x", "_t0", "_t1", "_buf", "hash_bits")

    block_bytes: ClassVar[int] = BLOCK_BYTES

    def __init__(
        self, hash_bits: int = 256, key: bytes = b"", tree_info: int = TREE_INFO_SEQUENTIAL
    ) -> None:
        if hash_bits <= 0:
            raise ValueError("hash_bits must be positive")
        self._x: tuple[int, int, int, int] = (0, 0, 0, 0)
        self._t0 = 0
        self._t1 = 0
        self._buf = b""
        if key:
            # mini-Init: hash the key as a KEY block with a state-sized output, no OUT stage
            self.hash_bits = 256
            self.start_type(TYPE_KEY)
            self.update(key)
            self._x = _UNPACK4.unpack(self.final_pad())
        self.hash_bits = hash_bits
        self._t0, self._t1 = 0, _FLAG_FIRST | _FLAG_FINAL | (TYPE_CFG << _TYPE_SHIFT)
        cfg = _UNPACK4.pack(_SCHEMA_VER, hash_bits & _M, tree_info & _M, 0)
        self._process(cfg, 32)
        self.start_type(TYPE_MSG)

    # -- the reference API -------------------------------------------------

    def start_type(self, block_type: int) -> None:
        """`Skein_Start_New_Type`: new tweak (first block of `block_type`), buffer emptied.

        Anything `update()` was still holding back is discarded, as in the reference code.
        """
        self._t0 = 0
        self._t1 = _FLAG_FIRST | ((block_type & 63) << _TYPE_SHIFT)
        self._buf = b""

    def update(self, data: bytes) -> None:
        """`Skein_256_Update`: process all but the last block; hold the last one back."""
        if not data:
            return
        buf = self._buf + bytes(data)
        if len(buf) <= BLOCK_BYTES:
            self._buf = buf
            return
        # process every full block that is followed by at least one more byte
        n = (len(buf) - 1) // BLOCK_BYTES
        for i in range(n):
            self._process(buf[i * BLOCK_BYTES : (i + 1) * BLOCK_BYTES], BLOCK_BYTES)
        self._buf = buf[n * BLOCK_BYTES :]

    def final_pad(self) -> bytes:
        """`Skein_256_Final_Pad`: finish the current type and return the raw 32-byte state.

        No output stage: this is what the Entropy Key protocol uses for MACs.
        """
        self._t1 |= _FLAG_FINAL
        n = len(self._buf)
        self._process(self._buf + bytes(BLOCK_BYTES - n), n)
        self._buf = b""
        return _UNPACK4.pack(*self._x)

    def final(self) -> bytes:
        """`Skein_256_Final`: finish the message and run the output stage; `hash_bits` long."""
        self._t1 |= _FLAG_FINAL
        n = len(self._buf)
        self._process(self._buf + bytes(BLOCK_BYTES - n), n)
        self._buf = b""
        nbytes = (self.hash_bits + 7) >> 3
        key = self._x
        out = []
        for i in range((nbytes + BLOCK_BYTES - 1) // BLOCK_BYTES):
            t1 = _FLAG_FIRST | _FLAG_FINAL | (TYPE_OUT << _TYPE_SHIFT)
            w = (i, 0, 0, 0)
            y = _threefish256(*key, 8, t1, *w)
            out.append(_UNPACK4.pack(y[0] ^ w[0], y[1], y[2], y[3]))
        return b"".join(out)[:nbytes]

    def copy(self) -> Skein256:
        other = Skein256.__new__(Skein256)
        other._x = self._x
        other._t0 = self._t0
        other._t1 = self._t1
        other._buf = self._buf
        other.hash_bits = self.hash_bits
        return other

    @property
    def chaining_words(self) -> tuple[int, int, int, int]:
        """The chaining value X (for known-answer tests of the IV; not secret-free in MACs)."""
        return self._x

    # -- internals ------------------------------------------------------------

    def _process(self, block: bytes, byte_count_add: int) -> None:
        """UBI step for one 32-byte block: T0 += bytes, X = E(X, T, w) xor w."""
        self._t0 = (self._t0 + byte_count_add) & _M
        w0, w1, w2, w3 = _UNPACK4.unpack(block)
        y0, y1, y2, y3 = _threefish256(*self._x, self._t0, self._t1, w0, w1, w2, w3)
        self._x = (y0 ^ w0, y1 ^ w1, y2 ^ w2, y3 ^ w3)
        self._t1 &= ~_FLAG_FIRST & _M


def skein256(data: bytes, hash_bits: int = 256, key: bytes = b"") -> bytes:
    """One-shot Skein-256-`hash_bits` (v1.1) of `data`, keyed (Skein-MAC) when `key` is given."""
    ctx = Skein256(hash_bits, key)
    ctx.update(data)
    return ctx.final()


__all__ = [
    "KS_PARITY_V1_1",
    "ROTATIONS_V1_1",
    "Skein256",
    "TYPE_CFG",
    "TYPE_KEY",
    "TYPE_MSG",
    "TYPE_OUT",
    "TYPE_PERS",
    "skein256",
    "threefish256_encrypt",
]
