"""The seed envelope: the one definition of the format, used by both sides.

Layout (all integers big-endian; see docs/envelope.md):

    magic      4   b"SDTL"
    version    1   1 (unbound) or 2 (bound to one seed-server request)
    flags      1   0 in version 1; 1 (BOUND) in version 2; any other value is refused
    seed_id   16   random
    issued_at  8   unix seconds; also the not-before time
    not_after  8   unix seconds
    key_id     8   id of the signing key (see seedtool.shared.pubkeys.key_id)
    seed_len   2   16..512
    seed       seed_len
    prov_len   2   0..1024
    provenance prov_len   canonical JSON object (UTF-8, sorted keys, no spaces)
    -- version 2 only (the binding):
    nonce     32   the client's nonce, as the client sent it
    inst_len   1   1..255
    instance   inst_len   printable ASCII (0x21..0x7e): the requesting instance's name
    --
    signature 64   Ed25519 over the version's signing context + every byte above
                   (b"seedtool envelope v1\0" or b"seedtool envelope v2\0")

Version 2 exists for the seed server (docs/serve.md): its envelope names the one
instance and the one request (the client's nonce) it was issued for, under the
signature and a signing context of its own, so it is useless to any other instance
or request. Version 1 is unchanged, byte for byte.

On disk and in user-data an envelope travels as standard base64 text.

This module must import with the standard library alone: the guest runs it at
boot. Signatures are checked by `seedtool.shared.ed25519` (pure Python, RFC 8032);
`cryptography` is imported only to sign. It keeps its
imports few and cheap (no dataclasses, typing or pathlib): under emulation every
module costs time before the seed is credited (docs/guest.md "Boot time"). Nothing here
may log, print or put seed bytes into an exception message, and there is no way
to get a `VerifiedEnvelope` from bytes whose signature did not check out.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import struct
import time

from . import ed25519
from .errors import EnvelopeError
from .record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any, ClassVar

MAGIC = b"SDTL"
VERSION = 1
SIGNING_CONTEXT = b"seedtool envelope v1\x00"
#: version 2: bound to one instance and one client nonce (seed-server envelopes)
VERSION_BOUND = 2
FLAG_BOUND = 1
SIGNING_CONTEXT_BOUND = b"seedtool envelope v2\x00"
NONCE_LEN = 32
INSTANCE_MAX = 255
SEED_MIN, SEED_MAX, SEED_DEFAULT = 16, 512, 64
#: the most any seed is credited for: the size of HKDF-SHA512's pseudorandom key
#: (RFC 5869 section 2.2; HashLen = 64 bytes), through which every seed is derived
MAX_CREDIT_BITS = 512
PROVENANCE_MAX = 1024
SIGNATURE_LEN = 64
KEY_ID_LEN = 8
SEED_ID_LEN = 16
#: the largest envelope, raw; anything longer is refused before it is parsed
MAX_SIZE = (4 + 1 + 1 + SEED_ID_LEN + 8 + 8 + KEY_ID_LEN + 2 + SEED_MAX + 2 + PROVENANCE_MAX
            + NONCE_LEN + 1 + INSTANCE_MAX + 64)
#: the largest base64 text we accept (generous for line breaks)
MAX_TEXT = 2 * MAX_SIZE
TTL_MAX = 366 * 86400

_HEAD = struct.Struct(">4sBB16sQQ8sH")


class EnvelopeExpired(EnvelopeError):
    pass


class EnvelopeNotYetValid(EnvelopeError):
    pass


class UntrustedKey(EnvelopeError):
    pass


class BadSignature(EnvelopeError):
    pass


class MalformedEnvelope(EnvelopeError):
    pass


class _Fields(Record):
    __slots__ = ("seed_id", "issued_at", "not_after", "key_id", "provenance", "binding")
    FIELDS: ClassVar[tuple[str, ...]] = __slots__
    DEFAULTS: ClassVar[dict[str, Any]] = {"binding": None}
    seed_id: bytes
    issued_at: int
    not_after: int
    key_id: bytes
    provenance: Mapping[str, Any]
    #: version 2: (instance, nonce) the envelope was issued for; None in version 1
    binding: tuple[str, bytes] | None

    @property
    def seed_id_hex(self) -> str:
        return self.seed_id.hex()

    @property
    def key_id_hex(self) -> str:
        return self.key_id.hex()

    def summary(self) -> dict[str, Any]:
        """Everything about the envelope except the seed bytes.

        A bound envelope's nonce is shown too: it is the client's own challenge, sent in
        the clear in its request, and says nothing about the seed.
        """
        out: dict[str, Any] = {
            "format": f"seedtool-envelope-v{VERSION if self.binding is None else VERSION_BOUND}",
            "seed_id": self.seed_id.hex(),
            "key_id": self.key_id.hex(),
            "issued_at": self.issued_at,
            "not_after": self.not_after,
            "provenance": dict(self.provenance),
        }
        if self.binding is not None:
            out["binding"] = {"instance": self.binding[0], "nonce": self.binding[1].hex()}
        return out


class UnverifiedEnvelope(_Fields):
    """A structurally valid envelope whose signature has not been checked.

    Its seed may be mixed into a pool but never credited: hence the name.
    """

    __slots__ = ("uncredited_seed", "signed_part", "signature")
    FIELDS = _Fields.FIELDS + __slots__
    HIDDEN = frozenset(__slots__)
    uncredited_seed: bytes
    signed_part: bytes
    signature: bytes

    @property
    def seed_len(self) -> int:
        return len(self.uncredited_seed)


class VerifiedEnvelope(_Fields):
    """An envelope whose signature checked against a trusted key and whose time is valid."""

    __slots__ = ("seed",)
    FIELDS = _Fields.FIELDS + __slots__
    HIDDEN = frozenset(__slots__)
    seed: bytes

    @property
    def creditable_bits(self) -> int:
        """What the seed can be credited for: 8 bits a byte, never more than it can hold.

        A seed is HKDF-SHA512 output of the mixed sources (seedtool.shared.mix): everything
        passes through a 64-byte pseudorandom key (RFC 5869, section 2.2), so however
        many bytes `--bytes` asks for, the seed holds at most 512 bits.
        """
        return min(8 * len(self.seed), MAX_CREDIT_BITS)


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def decode_text(data: bytes | str) -> bytes:
    """Raw envelope bytes from base64 text or from raw bytes (which start with MAGIC)."""
    if isinstance(data, str):
        data = data.encode("ascii", "replace")
    if data.startswith(MAGIC):
        return data
    if len(data) > MAX_TEXT:
        raise MalformedEnvelope(
            f"envelope is too large ({len(data)} bytes); a seedtool envelope is at most "
            f"{MAX_TEXT} bytes of base64: check that the right file was given"
        )
    try:
        compact = b"".join(data.split())
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedEnvelope(
            "not a seedtool envelope: neither raw envelope bytes nor valid base64"
        ) from None
    if not raw.startswith(MAGIC):
        raise MalformedEnvelope("not a seedtool envelope: the magic bytes are missing")
    return raw


def encode_text(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def length_at(raw: bytes) -> int:
    """How many bytes the envelope starting at `raw[0]` would take, from its length
    fields alone (0 when the header is too short to say): for scanners looking for an
    envelope inside a longer buffer, which then `parse` exactly that many bytes."""
    if len(raw) < _HEAD.size:
        return 0
    version, seed_len = raw[4], _HEAD.unpack_from(raw)[7]
    at = _HEAD.size + seed_len
    if len(raw) < at + 2:
        return 0
    at += 2 + struct.unpack_from(">H", raw, at)[0]
    if version == VERSION_BOUND:
        if len(raw) < at + NONCE_LEN + 1:
            return 0
        at += NONCE_LEN + 1 + raw[at + NONCE_LEN]
    return at + SIGNATURE_LEN


def parse(data: bytes | str) -> UnverifiedEnvelope:
    """Check the structure of an envelope (raw or base64); raise MalformedEnvelope."""
    raw = decode_text(data)
    if len(raw) > MAX_SIZE:
        raise MalformedEnvelope(
            f"envelope is too large ({len(raw)} bytes, at most {MAX_SIZE}); "
            "it was not made by seedtool"
        )
    if len(raw) < _HEAD.size:
        raise MalformedEnvelope("envelope is truncated: its header is incomplete")
    magic, version, flags, seed_id, issued_at, not_after, key_id, seed_len = _HEAD.unpack_from(raw)
    if magic != MAGIC:
        raise MalformedEnvelope("not a seedtool envelope: the magic bytes are missing")
    if version not in (VERSION, VERSION_BOUND):
        raise MalformedEnvelope(
            f"envelope format version {version} is not supported (this seedtool reads versions "
            f"{VERSION} and {VERSION_BOUND}); upgrade seedtool on this side"
        )
    bound = version == VERSION_BOUND
    if bound and not flags & FLAG_BOUND:
        raise MalformedEnvelope(
            "envelope version 2 lacks its BOUND flag; it was not made by this seedtool"
        )
    if flags & ~(FLAG_BOUND if bound else 0):
        raise MalformedEnvelope("envelope has reserved flags set; it was not made by this seedtool")
    if not SEED_MIN <= seed_len <= SEED_MAX:
        raise MalformedEnvelope(
            f"envelope seed length {seed_len} is outside {SEED_MIN}..{SEED_MAX} bytes"
        )
    pos = _HEAD.size
    if len(raw) < pos + seed_len + 2:
        raise MalformedEnvelope("envelope is truncated inside its seed")
    seed = raw[pos : pos + seed_len]
    pos += seed_len
    (prov_len,) = struct.unpack_from(">H", raw, pos)
    pos += 2
    if prov_len > PROVENANCE_MAX:
        raise MalformedEnvelope(f"envelope provenance is too long ({prov_len} bytes)")
    if len(raw) < pos + prov_len + SIGNATURE_LEN:
        raise MalformedEnvelope("envelope is truncated: provenance or signature is incomplete")
    prov_bytes = raw[pos : pos + prov_len]
    pos += prov_len
    binding: tuple[str, bytes] | None = None
    if bound:
        binding, pos = _parse_binding(raw, pos)
    signature = raw[pos : pos + SIGNATURE_LEN]
    pos += SIGNATURE_LEN
    if pos != len(raw):
        raise MalformedEnvelope(f"envelope has {len(raw) - pos} unexpected trailing bytes")
    provenance: Any = {}
    if prov_len:
        try:
            provenance = json.loads(prov_bytes.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise MalformedEnvelope("envelope provenance is not valid JSON") from None
        if not isinstance(provenance, dict):
            raise MalformedEnvelope("envelope provenance is not a JSON object")
    if not_after < issued_at:
        raise MalformedEnvelope("envelope not-after is earlier than its issue time")
    return UnverifiedEnvelope(
        seed_id=seed_id,
        issued_at=issued_at,
        not_after=not_after,
        key_id=key_id,
        provenance=provenance,
        binding=binding,
        uncredited_seed=seed,
        signed_part=(SIGNING_CONTEXT_BOUND if bound else SIGNING_CONTEXT)
        + raw[: pos - SIGNATURE_LEN],
        signature=signature,
    )


def _parse_binding(raw: bytes, pos: int) -> tuple[tuple[str, bytes], int]:
    """The (instance, nonce) of a version 2 envelope at `pos`, and the offset after it."""
    if len(raw) < pos + NONCE_LEN + 1 + SIGNATURE_LEN:
        raise MalformedEnvelope("envelope is truncated: its binding or signature is incomplete")
    nonce = raw[pos : pos + NONCE_LEN]
    inst_len = raw[pos + NONCE_LEN]
    pos += NONCE_LEN + 1
    if inst_len == 0:
        raise MalformedEnvelope("bound envelope names no instance (instance length 0)")
    if len(raw) < pos + inst_len + SIGNATURE_LEN:
        raise MalformedEnvelope("envelope is truncated: its instance or signature is incomplete")
    inst = raw[pos : pos + inst_len]
    if not _printable(inst):
        raise MalformedEnvelope(
            "bound envelope's instance is not printable ASCII; it was not made by seedtool"
        )
    return (inst.decode("ascii"), nonce), pos + inst_len


def _printable(b: bytes) -> bool:
    # ASCII 0x21..0x7e: no spaces, controls or bytes above 0x7e, so an instance name
    # can go into a log line or a ledger row as it is
    return bool(b) and min(b) >= 0x21 and max(b) <= 0x7E


def _binding_bytes(binding: tuple[str, bytes]) -> bytes:
    try:
        instance, nonce = binding
        inst = instance.encode("ascii")
    except (TypeError, ValueError, AttributeError):
        raise EnvelopeError(
            "internal error: a binding is (instance string, nonce bytes)"
        ) from None
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_LEN:
        raise EnvelopeError(f"the request nonce must be {NONCE_LEN} bytes")
    if not 1 <= len(inst) <= INSTANCE_MAX or not _printable(inst):
        raise EnvelopeError(
            f"the instance name must be 1..{INSTANCE_MAX} printable ASCII characters "
            "without spaces"
        )
    return nonce + bytes([len(inst)]) + inst


def build(
    seed: bytes,
    *,
    private_key: Any,
    key_id: bytes,
    seed_id: bytes,
    provenance: Mapping[str, Any],
    ttl: int,
    now: int | None = None,
    binding: tuple[str, bytes] | None = None,
) -> bytes:
    """Make a signed raw envelope. `private_key` is a cryptography Ed25519PrivateKey.

    Without `binding`, a version 1 envelope (the same bytes as before version 2
    existed); with `binding` = (instance, nonce), a version 2 envelope bound to them.
    """
    if not SEED_MIN <= len(seed) <= SEED_MAX:
        raise EnvelopeError(f"seed size must be {SEED_MIN}..{SEED_MAX} bytes, not {len(seed)}")
    if not 0 < ttl <= TTL_MAX:
        raise EnvelopeError(f"--ttl must be between 1 second and {TTL_MAX // 86400} days")
    if len(seed_id) != SEED_ID_LEN or len(key_id) != KEY_ID_LEN:
        raise EnvelopeError("internal error: bad seed id or key id length")
    prov = canonical_json(provenance)
    if len(prov) > PROVENANCE_MAX:
        raise EnvelopeError(
            f"provenance record is {len(prov)} bytes, over the {PROVENANCE_MAX}-byte limit; "
            "use fewer sources"
        )
    tail = b"" if binding is None else _binding_bytes(binding)
    issued = int(time.time()) if now is None else int(now)
    if binding is None:
        version, flags, context = VERSION, 0, SIGNING_CONTEXT
    else:
        version, flags, context = VERSION_BOUND, FLAG_BOUND, SIGNING_CONTEXT_BOUND
    body = (
        _HEAD.pack(MAGIC, version, flags, seed_id, issued, issued + ttl, key_id, len(seed))
        + seed
        + struct.pack(">H", len(prov))
        + prov
        + tail
    )
    signature = private_key.sign(context + body)
    return body + signature


def check_signature(env: UnverifiedEnvelope, trusted: Iterable[tuple[bytes, bytes]]) -> None:
    """Raise unless env is signed by one of `trusted` = [(key_id, raw_public_key)]."""
    candidates = [pub for kid, pub in trusted if hmac.compare_digest(kid, env.key_id)]
    if not candidates:
        raise UntrustedKey(
            f"envelope is signed by key {env.key_id.hex()}, which is not among the trusted "
            "public keys; install that key's .pub file or re-sign with a trusted key"
        )
    for pub in candidates:
        if ed25519.verify(pub, env.signature, env.signed_part):
            return
    raise BadSignature(
        f"envelope signature does not verify with key {env.key_id.hex()}: it was altered "
        "or signed by another key"
    )


def check_time(env: _Fields, now: float, skew: int) -> None:
    if now + skew < env.issued_at:
        raise EnvelopeNotYetValid(
            f"envelope is not valid until {env.issued_at} (now {int(now)}, allowed clock skew "
            f"{skew} s); check the clocks of the issuing host and this machine"
        )
    if now - skew > env.not_after:
        raise EnvelopeExpired(
            f"envelope expired at {env.not_after} (now {int(now)}, allowed clock skew {skew} s); "
            "generate a fresh seed"
        )


def verify(
    data: bytes | str | UnverifiedEnvelope,
    trusted: Iterable[tuple[bytes, bytes]],
    *,
    now: float | None = None,
    skew: int = 300,
) -> VerifiedEnvelope:
    """Parse, check the signature, then the validity period; raise EnvelopeError on any fault."""
    env = data if isinstance(data, UnverifiedEnvelope) else parse(data)
    check_signature(env, trusted)
    check_time(env, time.time() if now is None else now, skew)
    return VerifiedEnvelope(
        seed_id=env.seed_id,
        issued_at=env.issued_at,
        not_after=env.not_after,
        key_id=env.key_id,
        provenance=env.provenance,
        binding=env.binding,
        seed=env.uncredited_seed,
    )
