"""Fuzz target: Simtec Entropy Key frames (`seedtool.sources.entropykey_protocol`).

The first input byte picks what the rest is:

0. a byte stream for `Deframer`, fed in pieces whose sizes come from the input;
   every frame's accessors (`subcode`, `payload`, `text`) are called;
1. an ekeyd keyring file for `parse_keyring`;
2. the bytes a device sent, fed to a `HostSession` holding the simulator's key. The
   seeds are recorded conversations with the simulator (devtools/ekey_sim.py), so
   mutations start from streams that re-key and deliver entropy;
3. a tampering script for a live conversation between a `HostSession` and the
   simulator: per frame, pass it, flip a byte, drop it, send it twice, replay an
   older one, put garbage before it, split it, or reset the device.

Invariants: only `SourceError` subclasses (`ProtocolError`, `TamperedFrame`,
`WrongLongTermKey`, `KeyringError`, `DeviceError`) end a call; frames are
64 bytes with `* ` and CR LF and do not depend on how the stream was split;
every 32-byte block of entropy a host accepts is one the simulator sent (a frame
accepted has a valid MAC), and no block is accepted twice; an untouched
conversation does deliver entropy.

Skein is pure Python and slow, so during a call the session-key states and MAC
and pad results are memoised per key (they are pure functions of their inputs,
so nothing the parser sees changes); `seedtool.sources.skein` is not instrumented.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

from devtools import ekey_sim
from seedtool.sources import entropykey_protocol as ekp

from ._script import Script

INSTRUMENT = ["seedtool"]
EXCLUDE = ["seedtool.sources.skein"]
MAX_LEN = 4096

SERIAL = b"fuzz-serial!"
LONG_TERM_KEY = hashlib.sha256(b"seedtool fuzz entropy key, public").digest()
KEYRING = {SERIAL: LONG_TERM_KEY}
#: frames one live conversation may run to
MAX_FRAMES = 48


def _counter_rng(label: bytes) -> Callable[[int], bytes]:
    """Deterministic bytes, so recorded conversations replay exactly."""
    state = {"n": 0}

    def rng(n: int) -> bytes:
        out = b""
        while len(out) < n:
            state["n"] += 1
            out += hashlib.sha256(label + state["n"].to_bytes(8, "big")).digest()
        return out[:n]

    return rng


# -- memoised Skein states (see the module docstring) ----------------------------------

_MEMO_LIMIT = 200_000
_RealKeys = ekp.SessionKeys


class _MemoKeys(_RealKeys):
    _cache: dict[tuple[bytes, bytes], _MemoKeys] = {}
    _macs: dict[bytes, bytes]
    _pads: dict[bytes, bytes]

    def __new__(cls, serial: bytes, session_key: bytes) -> _MemoKeys:
        key = (serial, session_key)
        obj = cls._cache.get(key)
        if obj is None:
            if len(cls._cache) > 1024:
                cls._cache.clear()
            obj = super().__new__(cls)
            _RealKeys.__init__(obj, serial, session_key)
            obj._macs = {}
            obj._pads = {}
            cls._cache[key] = obj
        return obj

    def __init__(self, serial: bytes, session_key: bytes) -> None:
        pass  # initialised once, in __new__

    def mac(self, content: bytes) -> bytes:
        memo = self._macs
        out = memo.get(content)
        if out is None:
            if len(memo) > _MEMO_LIMIT:
                memo.clear()
            out = memo[content] = _RealKeys.mac(self, content)
        return out

    def pad(self, subcode: bytes) -> bytes:
        memo = self._pads
        out = memo.get(subcode)
        if out is None:
            out = memo[subcode] = _RealKeys.pad(self, subcode)
        return out


_derive_memo: dict[tuple[bytes, bytes, bytes, bytes], bytes] = {}
_real_derive = ekp.derive_session_key


def _memo_derive(serial: bytes, ltk: bytes, device_entropy: bytes, nonce: bytes) -> bytes:
    key = (serial, ltk, device_entropy, nonce)
    out = _derive_memo.get(key)
    if out is None:
        if len(_derive_memo) > _MEMO_LIMIT:
            _derive_memo.clear()
        out = _derive_memo[key] = _real_derive(serial, ltk, device_entropy, nonce)
    return out


class _Memoised:
    """Install the memoised Skein helpers in the protocol module and the simulator."""

    def __enter__(self) -> None:
        self.saved = [(m, name, getattr(m, name)) for m in (ekp, ekey_sim)
                      for name in ("SessionKeys", "derive_session_key")]
        for m, name, _ in self.saved:
            setattr(m, name, _MemoKeys if name == "SessionKeys" else _memo_derive)

    def __exit__(self, *exc: object) -> None:
        for m, name, value in self.saved:
            setattr(m, name, value)


# -- the parts of a conversation -------------------------------------------------------


def _sim(info_every: int = 0) -> ekey_sim.EntropyKeySim:
    return ekey_sim.EntropyKeySim(SERIAL, LONG_TERM_KEY, rng=_counter_rng(b"device"),
                                  info_every=info_every)


def _host() -> ekp.HostSession:
    host = ekp.HostSession(KEYRING, _counter_rng(b"host nonce"), serial=None, max_rejected=8)
    host.start()
    return host


def _record(nframes: int, info_every: int = 0) -> tuple[bytes, list[bytes]]:
    """An honest conversation: what the device sent, and the entropy it sent."""
    sim, host = _sim(info_every), _host()
    stream = sim.converse(host, nframes)
    assert host.available == ekp.ENTROPY_PER_FRAME * len(sim.sent_entropy)
    return stream, sim.sent_entropy


with _Memoised():
    _RECORDED = [_record(12), _record(20, info_every=5)]
#: every block the simulator ever sends from its deterministic start
KNOWN_BLOCKS = frozenset(b for _, blocks in _RECORDED for b in blocks)


def seeds() -> Iterator[bytes]:
    for stream, _ in _RECORDED:
        yield b"\x00" + stream
        yield b"\x02" + stream
    yield b"\x01" + ekp.format_keyring_line(SERIAL, LONG_TERM_KEY) + b"# comment\n"
    yield b"\x01" + b"AAAAAAAAAAAAAAAA " + b"A" * 43 + b"=\n"
    yield b"\x03" + bytes(40)
    yield b"\x03" + bytes([0, 0, 0, 4, 5, 9, 0, 0, 5, 0, 6, 0, 7, 3, 8, 10, 0, 0, 9, 30])
    yield b"\x03\x02" + bytes(12) + bytes([6, 0, 7, 1, 11, 40]) + bytes(20)


# -- the modes ---------------------------------------------------------------------------


def _deframe(script: Script) -> None:
    data = script.rest()
    whole = ekp.Deframer()
    frames = whole.feed(data)
    pieces = ekp.Deframer()
    split: list[ekp.Frame] = []
    pos, step = 0, 1
    while pos < len(data):
        step = (step * 7 + data[pos]) % 97 + 1
        split += pieces.feed(data[pos : pos + step])
        pos += step
    assert [f.raw for f in split] == [f.raw for f in frames], "deframing depends on splitting"
    for frame in frames:
        assert len(frame.raw) == ekp.FRAME_LEN and frame.raw[:2] == ekp.SOF
        assert frame.raw[-2:] == ekp.EOF
        frame.text()
        for accessor in (frame.subcode, frame.payload):
            try:
                accessor()
            except ekp.ProtocolError:
                pass


def _keyring(script: Script) -> None:
    try:
        keys = ekp.parse_keyring(script.rest())
    except ekp.KeyringError:
        return
    for serial, key in keys.items():
        assert len(serial) == ekp.SERIAL_LEN and len(key) == ekp.KEY_LEN


def _check_output(out: bytes, allowed: frozenset[bytes] | set[bytes]) -> None:
    assert len(out) % ekp.ENTROPY_PER_FRAME == 0
    blocks = [out[i : i + 32] for i in range(0, len(out), 32)]
    assert all(b in allowed for b in blocks), "the host accepted entropy the device never sent"
    assert len(set(blocks)) == len(blocks), "the host accepted a block twice"


def _replay(script: Script) -> None:
    host = _host()
    data = script.rest()
    got = bytearray()
    try:
        pos = 0
        while pos < len(data):
            n = ekp.FRAME_LEN if data[pos : pos + 1] == b"*" else 1 + data[pos] % 64
            host.receive(data[pos : pos + n])
            pos += n
            got += host.take_entropy(host.available)
    finally:
        _check_output(bytes(got), KNOWN_BLOCKS)


def _tamper(script: Script) -> None:
    sim, host = _sim(info_every=script.u8() % 8), _host()
    sent: list[bytes] = []
    touched = False
    got = bytearray()
    try:
        for _ in range(MAX_FRAMES):
            if not script.remaining:
                break
            sim.host_write(host.take_writes())
            frame = sim.next_frame()
            sent.append(frame)
            op = script.u8() % 12
            if op <= 3:
                host.receive(frame)
            elif op == 4:
                i, x = script.u8() % ekp.FRAME_LEN, script.u8() | 1
                host.receive(frame[:i] + bytes([frame[i] ^ x]) + frame[i + 1 :])
            elif op == 5:
                pass  # dropped
            elif op == 6:
                host.receive(frame + frame)
            elif op == 7:
                host.receive(sent[script.u8() % len(sent)])
            elif op == 8:
                host.receive(script.take(script.u8() % 80) + frame)
            elif op == 9:
                i = script.u8() % ekp.FRAME_LEN
                host.receive(frame[:i])
                host.receive(frame[i:])
            elif op == 10:
                sim.host_write(ekp.RESET)  # a reset from elsewhere
                host.receive(frame)
            else:
                host.receive(frame[: script.u8() % ekp.FRAME_LEN])  # truncated
            touched |= op > 3
            got += host.take_entropy(host.available)
    finally:
        _check_output(bytes(got), set(sim.sent_entropy))
    if not touched and len(sent) >= 8:
        assert host.keyed and got, "an untouched conversation delivered no entropy"


def test_one_input(data: bytes) -> None:
    if not data:
        return
    script = Script(data[1:])
    mode = data[0] % 4
    with _Memoised():
        if mode == 0:
            _deframe(script)
        elif mode == 1:
            _keyring(script)
        elif mode == 2:
            _replay(script)
        else:
            _tamper(script)
