"""The daemon's output generator: HMAC_DRBG with SHA-512, NIST SP 800-90A Rev. 1, 10.1.2.

Why this construction: it is one of the three DRBGs SP 800-90A approves, it needs only
HMAC-SHA-512 (the standard library's `hmac.digest`, in C, no extra package and the same
primitive `seedtool.shared.mix` already uses), and its security rests on HMAC being a
PRF, the weakest assumption of the three. SHA-512 gives the highest security strength,
256 bits (SP 800-90A Rev. 1, 10.1 Table 2). A ChaCha20 generator would be faster but
needs a third-party cipher; the core's figures (see `seedtool.serve.core`) show
HMAC_DRBG is far quicker than any EGD client asks for.

The algorithm is written as the SP writes it: HMAC_DRBG_Update (10.1.2.2), Instantiate
(10.1.2.3), Reseed (10.1.2.4) and Generate (10.1.2.5), with no prediction resistance
(the core reseeds on its own schedule instead). Generate ends with Update, so the state
(Key, V) after a request no longer holds, and cannot be run back to, any byte it returned
(backtracking resistance, SP 800-90A 8.8). Output is built in a bytearray; `generate`
zeroes it before returning, and `OutputBuffer` zeroes each slice as it serves it, so
neither keeps a byte it has handed out. (Python cannot wipe its immutable `bytes`: the
caller's copy and the intermediate HMAC values are freed, not zeroed; the erasure
covers every buffer this module owns.)

This module never logs and never puts state or output into an exception message.
"""

from __future__ import annotations

import hashlib
import hmac

#: SHA-512's output length in bytes (outlen = 512 bits)
OUTLEN = 64
#: security_strength of HMAC_DRBG with SHA-512 (SP 800-90A Rev. 1, 10.1 Table 2), bits
SECURITY_STRENGTH = 256
#: reseed_interval: the SP's maximum number of requests between reseeds, 2^48 (Table 2)
MAX_REQUESTS = 1 << 48
#: max_number_of_bits_per_request, 2^19 bits (Table 2), in bytes
MAX_REQUEST_BYTES = (1 << 19) // 8
#: the SP's limits on entropy input, personalization and additional input: 2^35 bits
MAX_INPUT_BYTES = (1 << 35) // 8
#: minimum entropy input: security_strength bits (8.6.3, 10.1 Table 2)
MIN_ENTROPY_BYTES = SECURITY_STRENGTH // 8
#: minimum nonce: half the security strength (8.6.7)
MIN_NONCE_BYTES = SECURITY_STRENGTH // 16
#: SHA-512's block size in bytes (FIPS 180-4 1), which RFC 2104 pads the key to
_SHA512_BLOCK = 128


class ReseedRequired(Exception):
    """reseed_counter passed reseed_interval (SP 800-90A 10.1.2.5 step 1)."""


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha512")


def _hmac_chain(key: bytes, v: bytes, blocks: int, out: bytearray) -> bytes:
    """V = HMAC(Key, V) `blocks` times, each V appended to `out`; the last V.

    The same HMAC as `_hmac`, computed as RFC 2104 defines it with the key's inner and
    outer pads hashed once for the whole chain (the Key does not change inside one
    Generate loop, 10.1.2.5 step 4): 0.8 us a block here against 2.0 us for
    hmac.digest, which sets the key up anew on every call. Key is OUTLEN (64) bytes,
    shorter than SHA-512's 128-byte block, so it is only zero-padded (RFC 2104 2).
    """
    padded = key.ljust(_SHA512_BLOCK, b"\x00")
    inner = hashlib.sha512(bytes(b ^ 0x36 for b in padded))
    outer = hashlib.sha512(bytes(b ^ 0x5C for b in padded))
    for _ in range(blocks):
        i = inner.copy()
        i.update(v)
        o = outer.copy()
        o.update(i.digest())
        v = o.digest()
        out += v
    return v


class HmacDrbg:
    """One HMAC_DRBG(SHA-512) instance; not thread-safe (the core holds a lock around it)."""

    def __init__(self, entropy_input: bytes, nonce: bytes, personalization: bytes = b"") -> None:
        """HMAC_DRBG_Instantiate_algorithm (10.1.2.3)."""
        if len(entropy_input) < MIN_ENTROPY_BYTES:
            raise ValueError(f"entropy input must be at least {MIN_ENTROPY_BYTES} bytes")
        if len(nonce) < MIN_NONCE_BYTES:
            raise ValueError(f"nonce must be at least {MIN_NONCE_BYTES} bytes")
        _check_input(entropy_input, personalization)
        self._key = b"\x00" * OUTLEN
        self._v = b"\x01" * OUTLEN
        self._update(entropy_input + nonce + personalization)
        self.reseed_counter = 1

    def _update(self, provided: bytes) -> None:
        """HMAC_DRBG_Update (10.1.2.2)."""
        self._key = _hmac(self._key, self._v + b"\x00" + provided)
        self._v = _hmac(self._key, self._v)
        if not provided:
            return
        self._key = _hmac(self._key, self._v + b"\x01" + provided)
        self._v = _hmac(self._key, self._v)

    def reseed(self, entropy_input: bytes, additional_input: bytes = b"") -> None:
        """HMAC_DRBG_Reseed_algorithm (10.1.2.4)."""
        if len(entropy_input) < MIN_ENTROPY_BYTES:
            raise ValueError(f"entropy input must be at least {MIN_ENTROPY_BYTES} bytes")
        _check_input(entropy_input, additional_input)
        self._update(entropy_input + additional_input)
        self.reseed_counter = 1

    def generate(self, n: int, additional_input: bytes = b"") -> bytes:
        """HMAC_DRBG_Generate_algorithm (10.1.2.5): n bytes, then the state moves on."""
        temp = self.generate_into(n, additional_input)
        out = bytes(temp[:n])
        temp[:] = bytes(len(temp))  # erase the blocks, the unreturned tail included
        return out

    def generate_into(self, n: int, additional_input: bytes = b"") -> bytearray:
        """`generate`, returning the bytearray it built (n bytes); the caller erases it."""
        if not 0 < n <= MAX_REQUEST_BYTES:
            raise ValueError(f"a request must be 1 to {MAX_REQUEST_BYTES} bytes")
        if self.reseed_counter > MAX_REQUESTS:
            raise ReseedRequired("the DRBG must be reseeded")
        _check_input(additional_input)
        if additional_input:
            self._update(additional_input)
        temp = bytearray()
        self._v = _hmac_chain(self._key, self._v, -(-n // OUTLEN), temp)
        tail = len(temp) - n
        if tail:
            temp[n:] = bytes(tail)  # the unreturned end of the last block
            del temp[n:]
        self._update(additional_input)
        self.reseed_counter += 1
        return temp


def _check_input(*inputs: bytes) -> None:
    if any(len(x) > MAX_INPUT_BYTES for x in inputs):
        raise ValueError("DRBG input longer than SP 800-90A allows")


class OutputBuffer:
    """Serves small requests from one larger Generate call, erasing each byte as it goes.

    A Generate call costs two HMACs of Update besides one per 64-byte block, so the
    core asks for `BLOCK` bytes at a time and hands them out in request-sized slices.
    Each slice is zeroed in the buffer as it is returned, so the buffer never holds a
    byte already served; `discard()` zeroes what is left (after a reseed, so that no
    byte generated before it is served after it). The unserved rest is future output,
    no more sensitive than the (Key, V) that would regenerate it.
    """

    BLOCK = 4096

    def __init__(self, drbg: HmacDrbg) -> None:
        self.drbg = drbg
        self._buf = bytearray()
        self._pos = 0

    def read(self, n: int) -> bytes:
        if not 0 < n <= self.BLOCK:
            raise ValueError(f"a request must be 1 to {self.BLOCK} bytes")
        if len(self._buf) - self._pos < n:
            self.discard()
            self._buf = self.drbg.generate_into(self.BLOCK)
        end = self._pos + n
        out = bytes(self._buf[self._pos : end])
        self._buf[self._pos : end] = bytes(n)
        self._pos = end
        return out

    def discard(self) -> None:
        self._buf[:] = bytes(len(self._buf))
        self._buf = bytearray()
        self._pos = 0

    def held(self) -> bytes:
        """The buffer as it is now (for tests: served bytes must be zero here)."""
        return bytes(self._buf)
