"""The Simtec Entropy Key's wire protocol, host side: frames, MACs, keys, decryption.

Pure: no I/O, no clocks, no logging. `entropykey.py` moves bytes between a device
and a `HostSession`; this module decides what those bytes mean and what to answer.
It must never put key material, entropy or raw frame contents into an exception.

What the protocol is (ekeyd 1.1.5 `doc/README.protocol`, and ekeyd's host code
`host/packet.c`, `host/connection.c`, `host/keydb.c`, `device/skeinwrap.c`,
`device/frames/pem.c`, read to learn the behaviour and re-written here):

* The device sends 64-byte frames: `* `, a type letter, `>` (text) or `!` (binary),
  50 payload characters, an 8-character MAC, CR LF. Binary payloads are a 2-character
  12-bit "sub-code" (low 6 bits first) and up to 48 characters of base64 ("PEM64",
  the standard alphabet with `=` filler).
* Every Skein state is a Skein-256-256 **v1.1** MAC state keyed with
  `serial (12 bytes) || secret (32 bytes)`, then fed a 96-byte personalisation
  string as a PERS block, then switched to MSG. The reference code's `update()`
  holds back the last block, and starting the MSG type discards it: only the first
  64 bytes of each personalisation string ever reach the state. We reproduce that
  exactly (`prepare`), or no MAC would match.
* A frame's MAC is `Final_Pad` (no output stage) of the PMS state keyed with the
  session key over the 52 characters after `* `; the wire shows bytes 0..2 and
  29..31 of the result, base64-encoded.
* After a reset (^C) the device sends its serial-number frame ('S') and its session
  key is 32 zero bytes. When it has entropy but no session key (or runs out of
  sequence numbers) it sends 'k'. The host answers `K<base64 nonce>.`; the device
  answers 'K!' (sub-code: nonce length; payload: 32 bytes of device entropy), MAC'd
  with the *old* session key, and then switches to
  `session = Skein-Final(RS state keyed with the long-term key; device entropy || nonce)`.
* Entropy frames 'E!' carry 32 bytes XORed with
  `Skein-Final(EES state keyed with the session key; the 2 sub-code characters)`;
  the sub-code is the frame's sequence number (ekeyd re-keys at 4095).
* ekeyd's keyring (`/etc/entropykey/keyring`) has one `SERIAL LONGTERMKEY` pair per
  line, both base64 (16 and 44 characters); other lines are ignored.

Security notes for readers: frames under the all-zero session key (S, k, K!, and
anything before the first re-key) can be forged by anyone who knows the serial
number; only the long-term key makes entropy frames unforgeable. A wrong or altered
K! frame therefore shows up as entropy frames that fail their MAC, which is how a
wrong keyring entry is detected. Because the one-time pad depends only on the
session key and the sequence number, a replayed entropy frame would repeat entropy:
we accept each sequence number once per session.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..shared.errors import DeviceError, SourceError, TamperedFrame
from .skein import TYPE_MSG, TYPE_PERS, Skein256

FRAME_LEN = 64
SOF = b"* "
EOF = b"\r\n"
CONTENT_LEN = 52  # type, encoding and 50 payload characters: what the MAC covers
PAYLOAD_LEN = 50
MAC_LEN = 8
SERIAL_LEN = 12
KEY_LEN = 32
ENTROPY_PER_FRAME = 32
MAX_SEQUENCE = 4095  # the sub-code is 12 bits; ekeyd re-keys when it sees 4095
RESET = b"\x03"  # ^C: always accepted, resets the device's state machines
DEFAULT_KEYRING = "/etc/entropykey/keyring"  # ekeyd.conf `Keyring`, ekey-setkey's default
DEFAULT_NONCE_LEN = 12  # what ekeyd sends (connection.c keyreq_pkt_handler)

# The personalisation strings, 96 characters each (README.protocol, skeinwrap.h).
_PREFIX = b"20090609 support@simtec.co.uk EntropyKey/v1/"
PERS_RS = (_PREFIX + b"ReKeyingState").ljust(96)
PERS_PMS = (_PREFIX + b"MessageAuthenticationCodeState").ljust(96)
PERS_EES = (_PREFIX + b"EntropyEncryptionState").ljust(96)
PERS_LRS = (_PREFIX + b"LongTermReKeyingState").ljust(96)
PERS_LKMS = (_PREFIX + b"MessageAuthenticationCodeStateForLongTermReKeying").ljust(96)

#: the device's failure-mode characters in 'I>S' frames (README.protocol, failmodes.h)
FAILURE_MODES: dict[str, str] = {
    "1": "the left generator is no longer random",
    "2": "the right generator is no longer random",
    "3": "the generators have become correlated",
    "4": "the left generator is strongly biased",
    "5": "the right generator is strongly biased",
    "7": "its temperature is below the threshold",
    "8": "its temperature is above the threshold",
    "9": "too many blocks failed its FIPS 140-2 tests",
    "A": "its supply voltage is too low",
    "B": "its supply voltage is too high",
}

_PEM_QUADS = re.compile(rb"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")
_PEM_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_PEM_VALUE = {c: i for i, c in enumerate(_PEM_CHARS)}


class ProtocolError(SourceError):
    """The device sent something the Entropy Key protocol does not allow."""


class KeyringError(SourceError):
    """ekeyd's keyring is unreadable, malformed, or has no key for this device."""


class WrongLongTermKey(SourceError):
    """The keyring's long-term key does not match the device's."""


# -- encodings --------------------------------------------------------------


def pem_encode(data: bytes) -> bytes:
    """The Entropy Key's "PEM64" is standard base64 with `=` filler (pem.c)."""
    return base64.b64encode(data)


def pem_decode(text: bytes) -> bytes:
    """Strict base64 decoding; raises `ProtocolError` (no content in the message)."""
    if not _PEM_QUADS.match(text):
        raise ProtocolError("a frame carried malformed base64; the device or its cable is faulty")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ProtocolError(
            "a frame carried malformed base64; the device or its cable is faulty"
        ) from None


def encode_subcode(value: int) -> bytes:
    """A 12-bit sub-code as two base64 characters, low 6 bits first (pem64_encode_12bits)."""
    if not 0 <= value <= 0xFFF:
        raise ValueError("a sub-code is 12 bits")
    return bytes((_PEM_CHARS[value & 63], _PEM_CHARS[(value >> 6) & 63]))


def decode_subcode(text: bytes) -> int:
    if len(text) != 2 or text[0] not in _PEM_VALUE or text[1] not in _PEM_VALUE:
        raise ProtocolError("a binary frame had an invalid sub-code; the device is faulty")
    return _PEM_VALUE[text[0]] | (_PEM_VALUE[text[1]] << 6)


# -- Skein states and keys ---------------------------------------------------


def prepare(serial: bytes, secret: bytes, personalisation: bytes) -> Skein256:
    """ekeyd's PrepareSkein: MAC state keyed with serial||secret, personalised, in MSG mode.

    The reference `update()` holds back the last 32 bytes of the 96-byte string and
    `start_type(MSG)` discards them; `Skein256` has the same semantics, so the
    device's quirk is reproduced rather than special-cased.
    """
    if len(serial) != SERIAL_LEN or len(secret) != KEY_LEN or len(personalisation) != 96:
        raise ValueError("prepare() needs a 12-byte serial, a 32-byte secret, a 96-byte string")
    ctx = Skein256(256, serial + secret)
    ctx.start_type(TYPE_PERS)
    ctx.update(personalisation)
    ctx.start_type(TYPE_MSG)
    return ctx


def derive_session_key(
    serial: bytes, long_term_key: bytes, device_entropy: bytes, nonce: bytes
) -> bytes:
    """Session key: RS state keyed with the long-term key, over device entropy then nonce."""
    return _derive(serial, long_term_key, PERS_RS, device_entropy, nonce)


def derive_long_term_key(
    serial: bytes, master_key: bytes, device_entropy: bytes, nonce: bytes
) -> bytes:
    """Long-term key after a long-term re-key: LRS state keyed with the master key."""
    return _derive(serial, master_key, PERS_LRS, device_entropy, nonce)


def _derive(serial: bytes, key: bytes, pers: bytes, device_entropy: bytes,
            nonce: bytes) -> bytes:
    ctx = prepare(serial, key, pers)
    ctx.update(device_entropy)
    ctx.update(nonce)
    return ctx.final()


def nonce_mac(serial: bytes, master_key: bytes, nonce: bytes) -> bytes:
    """The 8-character MAC of a long-term re-key nonce (LKMS state, Final_Pad)."""
    ctx = prepare(serial, master_key, PERS_LKMS)
    ctx.update(nonce)
    out = ctx.final_pad()
    return pem_encode(out[:3]) + pem_encode(out[29:])


class SessionKeys:
    """The MAC and one-time-pad states for one session key (prepared once, copied per frame)."""

    __slots__ = ("_mac", "_ees")

    def __init__(self, serial: bytes, session_key: bytes) -> None:
        self._mac = prepare(serial, session_key, PERS_PMS)
        self._ees = prepare(serial, session_key, PERS_EES)

    def mac(self, content: bytes) -> bytes:
        """The 8 MAC characters for 52 characters of frame content."""
        ctx = self._mac.copy()
        ctx.update(content)
        out = ctx.final_pad()
        return pem_encode(out[:3]) + pem_encode(out[29:])

    def verify(self, frame: bytes) -> bool:
        """Constant-time check of a 64-byte frame's MAC."""
        return hmac.compare_digest(self.mac(frame[2:54]), frame[54:62])

    def pad(self, subcode: bytes) -> bytes:
        """The 32-byte one-time pad for the entropy frame with these 2 sub-code characters."""
        ctx = self._ees.copy()
        ctx.update(subcode)
        return ctx.final()


def rekey_command(nonce: bytes) -> bytes:
    """What the host sends to start a session re-key: `K`, the base64 nonce, `.`."""
    if not 1 <= len(nonce) <= 36:
        raise ValueError("the nonce must be 1..36 bytes")
    return b"K" + pem_encode(nonce) + b"."


# -- frames ------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One 64-byte frame as received (its MAC not yet checked)."""

    raw: bytes

    @property
    def kind(self) -> str:
        return chr(self.raw[2])

    @property
    def binary(self) -> bool:
        return self.raw[3:4] == b"!"

    @property
    def content(self) -> bytes:
        return self.raw[2:54]

    @property
    def subcode_text(self) -> bytes:
        return self.raw[4:6]

    def subcode(self) -> int:
        return decode_subcode(self.raw[4:6])

    def payload(self) -> bytes:
        """A binary frame's decoded payload (trailing spaces are padding)."""
        return pem_decode(self.raw[6:54].rstrip(b" "))

    def text(self) -> str:
        """A text frame's payload without its padding."""
        return self.raw[4:54].rstrip(b" ").decode("ascii", "replace")


def build_frame(keys: SessionKeys, kind: bytes, encoding: bytes, body: bytes) -> bytes:
    """A complete MAC'd frame (for simulators and tests; the host never sends frames)."""
    if len(kind) != 1 or encoding not in (b">", b"!") or len(body) > PAYLOAD_LEN:
        raise ValueError("a frame is one type letter, '>' or '!', and at most 50 characters")
    content = kind + encoding + body.ljust(PAYLOAD_LEN)
    return SOF + content + keys.mac(content) + EOF


class Deframer:
    """Finds 64-byte frames in a byte stream, resynchronising as ekeyd's frame.c does.

    `skipped` counts bytes thrown away while looking for a frame boundary and
    `framing_errors` the garbled stretches (one per run of skipped bytes).
    """

    def __init__(self) -> None:
        self._buf = b""
        self.skipped = 0
        self.framing_errors = 0
        self._skipping = False

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf + data
        frames: list[Frame] = []
        pos = 0
        while len(buf) - pos >= FRAME_LEN:
            if buf[pos : pos + 2] == SOF and buf[pos + 62 : pos + 64] == EOF:
                frames.append(Frame(buf[pos : pos + FRAME_LEN]))
                pos += FRAME_LEN
                self._skipping = False
                continue
            # not a frame here: resume at the next '*' after this position
            nxt = buf.find(b"*", pos + 1)
            if nxt < 0:
                nxt = len(buf)
            self.skipped += nxt - pos
            if not self._skipping:
                self.framing_errors += 1
                self._skipping = True
            pos = nxt
        self._buf = buf[pos:]
        return frames

    def reset(self) -> None:
        self._buf = b""
        self._skipping = False


# -- keyring -------------------------------------------------------------------

_KEYRING_LINE = re.compile(rb"^\s*([A-Za-z0-9+/=]{16})\s+([A-Za-z0-9+/=]{44})")


def parse_keyring(text: bytes) -> dict[bytes, bytes]:
    """ekeyd's keyring: `SERIAL LONGTERMKEY` per line (base64), '#' comments; serial -> key."""
    keys: dict[bytes, bytes] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        m = _KEYRING_LINE.match(line)
        if m is None:
            continue
        try:
            serial = pem_decode(m.group(1))
            key = pem_decode(m.group(2))
        except ProtocolError:
            raise KeyringError(
                f"keyring line {lineno} is not valid base64; rewrite it with ekey-setkey"
            ) from None
        if len(serial) != SERIAL_LEN or len(key) != KEY_LEN:
            raise KeyringError(
                f"keyring line {lineno} does not hold a 12-byte serial and a 32-byte key; "
                "rewrite it with ekey-setkey"
            )
        keys[serial] = key
    return keys


def format_keyring_line(serial: bytes, long_term_key: bytes) -> bytes:
    """One keyring line as ekey-setkey writes it."""
    return pem_encode(serial) + b" " + pem_encode(long_term_key) + b"\n"


def serial_text(serial: bytes) -> str:
    """The serial as printed on the label, in lsusb, and in the keyring (16 characters)."""
    return pem_encode(serial).decode("ascii")


# -- the host's state machine ---------------------------------------------------


@dataclass
class SessionStats:
    """Counts only; safe to show or record."""

    frames_ok: int = 0
    frames_rejected: int = 0  # MAC failures, replays, malformed payloads after sync
    framing_errors: int = 0  # resynchronisations after the first good frame
    entropy_frames: int = 0
    rekeys: int = 0
    resets: int = 0
    info: dict[str, str] = field(default_factory=dict)  # temperature, voltage, failure mode


class HostSession:
    """What ekeyd's connection.c does for one device, minus the I/O.

    Feed it the bytes the device sent (`receive`), send whatever `take_writes()`
    returns, and take decrypted entropy with `take_entropy()`. It raises:
    `TamperedFrame` once more than `max_rejected` frames failed their checks,
    `WrongLongTermKey` when no frame under a newly derived session key ever verifies,
    `KeyringError` when the keyring has no key for the device's serial, and
    `DeviceError` when the device reports a failure.
    """

    #: consecutive failed frames right after a re-key that mean "wrong long-term key"
    WRONG_KEY_AFTER = 3
    #: 'k' frames tolerated after our re-key command before we reset (ekeyd: 5)
    MAX_KEY_REQUESTS = 5
    #: frames ignored while waiting for the serial-number frame before resetting again
    RESET_AFTER_IGNORED = 8
    #: nonces written and not yet answered that a 'K!' frame may still answer
    MAX_OUTSTANDING_NONCES = 8

    def __init__(
        self,
        keyring: Mapping[bytes, bytes],
        nonce: Callable[[int], bytes],
        serial: bytes | None = None,
        max_rejected: int = 8,
    ) -> None:
        self._keyring = keyring
        self._nonce = nonce
        self._want_serial = serial
        self.max_rejected = max_rejected
        self.stats = SessionStats()
        self._deframer = Deframer()
        self._tx = bytearray()
        self._out = bytearray()
        self.serial: bytes | None = None
        self._ltk: bytes | None = None
        self._keys: SessionKeys | None = None  # current MAC/pad states
        self._state = "init"
        self._seen: set[int] = set()
        # Nonces written and not yet answered, oldest first. Which serial frame answers
        # which of our resets cannot be told (stale ones may still be in the pipe), so a
        # serial frame does not cancel them: a 'K!' frame answers one of them, and the
        # first frame that verifies under one of the keys they give says which.
        self._nonces: list[bytes] = []
        self._candidates: list[tuple[bytes, SessionKeys]] | None = None
        self._unverified_after_rekey = 0  # frames failed since the last K! (no success yet)
        self._key_requests = 0
        self._ignored = 0
        self._has_session = False
        self._synced = False

    # -- interface for the transport ---------------------------------------

    def start(self) -> None:
        """Reset the device: it answers with its serial-number frame."""
        self._tx += RESET
        self._state = "init"
        self._keys = None
        self._candidates = None
        self._has_session = False
        self._deframer.reset()
        self._synced = False

    def take_writes(self) -> bytes:
        out = bytes(self._tx)
        self._tx.clear()
        return out

    def take_entropy(self, n: int) -> bytes:
        out = bytes(self._out[:n])
        del self._out[:n]
        return out

    @property
    def available(self) -> int:
        return len(self._out)

    @property
    def keyed(self) -> bool:
        """True once a session key derived from the long-term key is in use."""
        return self._has_session

    def receive(self, data: bytes) -> None:
        before = self._deframer.framing_errors
        frames = self._deframer.feed(data)
        if self._synced:
            self.stats.framing_errors += self._deframer.framing_errors - before
            self._check_threshold()
        for frame in frames:
            self._handle(frame)

    # -- frame handling -----------------------------------------------------

    def _reject(self) -> None:
        self.stats.frames_rejected += 1
        if self._state == "keyed_first":
            self._unverified_after_rekey += 1
            if self._unverified_after_rekey >= self.WRONG_KEY_AFTER:
                raise WrongLongTermKey(
                    f"no frame from Entropy Key {serial_text(self.serial or bytes(12))} verifies "
                    "under the session key derived from the keyring; the keyring's long-term "
                    "key for it is wrong (re-key it with ekey-rekey) or every frame is altered"
                )
        self._check_threshold()

    def _check_threshold(self) -> None:
        bad = self.stats.frames_rejected + self.stats.framing_errors
        if bad > self.max_rejected:
            raise TamperedFrame(
                f"{self.stats.frames_rejected} frames from the Entropy Key failed their MAC or "
                f"replay check and {self.stats.framing_errors} were garbled; the device or its "
                "cable may be compromised, so it contributes nothing: replace the cable or key"
            )

    def _handle(self, frame: Frame) -> None:
        if self._state == "init":
            # Before the serial-number frame nothing is known; stale frames are ignored.
            if frame.kind == "S" and frame.binary:
                self._on_serial(frame)
            if self._state == "init":
                self._ignored += 1
                if self._ignored % self.RESET_AFTER_IGNORED == 0:
                    self._tx += RESET  # the serial frame was lost: ask for another
            return
        if self._candidates is not None:
            # after a K! only the keys it may have given count: the old key is over
            verified = self._adopt_candidate(frame)
        else:
            verified = self._keys is not None and self._keys.verify(frame.raw)
        keys = self._keys
        assert keys is not None
        if not verified:
            if frame.kind == "S" and frame.binary and self._is_serial_frame(frame):
                # the device was reset (by a ^C from elsewhere, or power): start over
                self._state = "init"
                self._on_serial(frame)
                return
            self._reject()
            return
        self._synced = True
        kind = frame.kind
        if kind == "S":
            self._state = "init"
            self._on_serial(frame)
            return
        if self._state == "keyed_first":
            self._state = "keyed"
            self._unverified_after_rekey = 0
        if kind == "E" and frame.binary and self.keyed:
            self._on_entropy(frame, keys)
            return
        self.stats.frames_ok += 1
        if kind == "k":
            self._on_key_request()
        elif kind == "K" and frame.binary and self._nonces:
            self._on_rekeyed(frame)
        elif kind == "I":
            self._on_info(frame.text())
        elif kind == "B":
            raise DeviceError(
                "the Entropy Key reports its generators have gone bad and abandoned re-keying; "
                "unplug it, let it cool, and check its failure mode with ekeydctl"
            )
        # 'W' (unknown input), 'M'/'L'/'l' (long-term re-key) and unknown types: nothing to do

    def _is_serial_frame(self, frame: Frame) -> bool:
        """True when `frame` is a genuine-looking serial frame of the current device."""
        try:
            serial = frame.payload()
        except ProtocolError:
            return False
        return serial == self.serial and SessionKeys(serial, bytes(KEY_LEN)).verify(frame.raw)

    def _on_serial(self, frame: Frame) -> None:
        try:
            serial = frame.payload()
        except ProtocolError:
            return
        if len(serial) != SERIAL_LEN:
            return
        zero = SessionKeys(serial, bytes(KEY_LEN))
        if not zero.verify(frame.raw):
            # A corrupted serial frame: wait for the next one (the device resends on reset).
            return
        if self.serial is not None and serial != self.serial:
            raise DeviceError(
                f"the device changed its serial number from {serial_text(self.serial)} to "
                f"{serial_text(serial)} mid-session; another key was plugged in or it is forged"
            )
        if self._want_serial is not None and serial != self._want_serial:
            raise KeyringError(
                f"the Entropy Key found has serial {serial_text(serial)}, not the requested "
                f"{serial_text(self._want_serial)}; pick the right device or serial= option"
            )
        ltk = self._keyring.get(serial)
        if ltk is None:
            raise KeyringError(
                f"the keyring has no long-term key for Entropy Key {serial_text(serial)}; "
                "set one with ekey-rekey (needs the device's master key) or point keyring= "
                "at ekeyd's keyring"
            )
        self.serial = serial
        self._ltk = ltk
        self._keys = zero
        self._has_session = False
        self._candidates = None
        self._seen.clear()
        self._state = "session"
        self._synced = True
        self.stats.frames_ok += 1
        self.stats.resets += 1
        # ekeyd waits for the device's 'k' request; so do we.

    def _on_key_request(self) -> None:
        if self._state == "session_sent":
            self._key_requests += 1
            if self._key_requests > self.MAX_KEY_REQUESTS:
                self.start()  # the device ignored our nonce: reset it, as ekeyd does
            return
        nonce = self._nonce(DEFAULT_NONCE_LEN)
        if len(nonce) != DEFAULT_NONCE_LEN:
            raise SourceError("the nonce source returned the wrong length; this is a bug")
        self._nonces = [*self._nonces, nonce][-self.MAX_OUTSTANDING_NONCES :]
        self._tx += rekey_command(nonce)
        self._key_requests = 0
        self._state = "session_sent"

    def _on_rekeyed(self, frame: Frame) -> None:
        assert self.serial is not None and self._ltk is not None
        try:
            received = frame.subcode()
            device_entropy = frame.payload()
        except ProtocolError:
            self._reject()
            return
        nonces = [n for n in self._nonces if len(n) == received]
        if not nonces or len(device_entropy) != ENTROPY_PER_FRAME:
            # The device read a nonce we never sent: reset and retry.
            self.start()
            return
        serial, ltk = self.serial, self._ltk
        self._candidates = [
            (n, SessionKeys(serial, derive_session_key(serial, ltk, device_entropy, n)))
            for n in nonces
        ]
        self._seen.clear()
        self._unverified_after_rekey = 0
        self._state = "keyed_first"
        self.stats.rekeys += 1
        if len(self._candidates) == 1:
            self._adopt(0)  # the usual case: only one nonce can be answered

    def _adopt_candidate(self, frame: Frame) -> bool:
        """Take the re-key candidate `frame` verifies under, if any."""
        assert self._candidates is not None
        for i, (_, keys) in enumerate(self._candidates):
            if keys.verify(frame.raw):
                self._adopt(i)
                return True
        return False

    def _adopt(self, i: int) -> None:
        assert self._candidates is not None
        nonce, keys = self._candidates[i]
        self._keys = keys
        self._has_session = True
        self._candidates = None
        # The device reads our bytes in order: the nonces before this one are spent too.
        self._nonces = self._nonces[self._nonces.index(nonce) + 1 :]

    def _on_entropy(self, frame: Frame, keys: SessionKeys) -> None:
        try:
            seq = frame.subcode()
            data = frame.payload()
        except ProtocolError:
            self._reject()
            return
        if len(data) != ENTROPY_PER_FRAME or seq in self._seen:
            # a replayed sequence number would repeat entropy: it contributes nothing
            self._reject()
            return
        self._seen.add(seq)
        self.stats.frames_ok += 1
        pad = keys.pad(frame.subcode_text)
        self._out += bytes(a ^ b for a, b in zip(data, pad))
        self.stats.entropy_frames += 1
        if seq == MAX_SEQUENCE and self._state != "session_sent":
            # the last sequence number: re-key now rather than wait for 'k' (as ekeyd does)
            self._on_key_request()

    def _on_info(self, text: str) -> None:
        for item in text.split(" "):
            if not item:
                continue
            tag, value = item[0], item[1:]
            if tag == "T" and value.isdigit():
                self.stats.info["temperature_dK"] = value
            elif tag == "V" and value.isdigit():
                self.stats.info["voltage_mV"] = value
            elif tag == "S":
                mode = value.rsplit(":", 1)[-1][:1]
                self.stats.info["failure_mode"] = mode
                if mode and mode != "0":
                    why = FAILURE_MODES.get(mode, f"failure mode {mode!r}")
                    raise DeviceError(
                        f"the Entropy Key reports that {why} and has stopped producing "
                        "entropy; unplug it and check it before using it again"
                    )
                break  # an S block fills the frame
            elif tag == "F":
                self.stats.info["fips_blocks"] = value.split(":", 1)[0]
                break


__all__ = [
    "DEFAULT_KEYRING",
    "FRAME_LEN",
    "RESET",
    "Deframer",
    "Frame",
    "HostSession",
    "KeyringError",
    "ProtocolError",
    "SessionKeys",
    "SessionStats",
    "WrongLongTermKey",
    "build_frame",
    "decode_subcode",
    "derive_session_key",
    "encode_subcode",
    "parse_keyring",
    "pem_decode",
    "pem_encode",
    "prepare",
    "rekey_command",
    "serial_text",
]
