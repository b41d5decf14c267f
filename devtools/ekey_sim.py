"""A Simtec Entropy Key simulator: the device side of the protocol, for tests.

`EntropyKeySim` is the device's state machine as README.protocol describes it
(ekeyd 1.1.5 `doc/README.protocol`): it answers ^C / R with a serial-number frame
under the all-zero session key, asks to be re-keyed with 'k' frames, answers
`K<nonce>.` with a 'K!' frame and switches keys, then sends 'E!' frames with
sequence numbers 0..4095 whose 32-byte payloads are real entropy XORed with the
one-time pad, plus an 'I' information frame every `info_every` frames. It records
every plaintext entropy block it sends, so tests can compare what a host decoded.

`PtySimulator` runs one on the master side of a pseudo-terminal, so anything that
opens the slave (`/dev/pts/N`) sees an Entropy Key as `cdc_acm` presents it:
our own tty transport, and the real `ekeyd` daemon.
"""

from __future__ import annotations

import os
import pty
import select
import threading
import time
import tty
from typing import Callable

from seedtool.sources.entropykey_protocol import (
    ENTROPY_PER_FRAME,
    MAX_SEQUENCE,
    HostSession,
    SessionKeys,
    build_frame,
    derive_session_key,
    encode_subcode,
    pem_decode,
    pem_encode,
)

KEY_LEN = 32


class EntropyKeySim:
    """The device: feed it host bytes with `host_write`, pull frames with `next_frame`."""

    def __init__(
        self,
        serial: bytes,
        long_term_key: bytes,
        rng: Callable[[int], bytes] = os.urandom,
        info_every: int = 0,
        failure_mode: str = "0",
    ) -> None:
        assert len(serial) == 12 and len(long_term_key) == KEY_LEN
        self.serial = serial
        self.long_term_key = long_term_key
        self.rng = rng
        self.info_every = info_every
        self.failure_mode = failure_mode
        self.sent_entropy: list[bytes] = []  # plaintext of every E frame, in order
        self.nonces: list[bytes] = []  # nonces the host sent
        self.unknown_input: list[int] = []
        self._queue: list[bytes] = []
        self._cmd: bytearray | None = None  # collecting a K command's base64
        self._frames_since_info = 0
        self.reset()

    # -- host -> device -----------------------------------------------------------

    def reset(self) -> None:
        self._keys = SessionKeys(self.serial, bytes(KEY_LEN))
        self._keyed = False
        self._seq = 0
        self._cmd = None
        self._queue = [self._frame(b"S", b"!", b"AA" + pem_encode(self.serial))]

    def host_write(self, data: bytes) -> None:
        for byte in data:
            if byte == 3:  # ^C: always accepted
                self.reset()
                continue
            if self._cmd is not None:
                if byte == ord("."):
                    self._rekey(bytes(self._cmd))
                    self._cmd = None
                else:
                    self._cmd.append(byte)
                continue
            if byte in b"Kk":
                self._cmd = bytearray()
            elif byte in b"Rr":
                self.reset()
            else:
                self.unknown_input.append(byte)
                self._queue.append(
                    self._frame(b"W", b">", b"Unknown Input Character 0x%02x" % byte)
                )

    def _rekey(self, text: bytes) -> None:
        try:
            nonce = pem_decode(text)
        except Exception:
            self._queue.append(self._frame(b"W", b">", b"Bad nonce"))
            return
        self.nonces.append(nonce)
        device_entropy = self.rng(ENTROPY_PER_FRAME)
        # the K! frame goes out under the old session key; then the key changes
        body = encode_subcode(len(nonce)) + pem_encode(device_entropy)
        self._queue.append(self._frame(b"K", b"!", body))
        session = derive_session_key(self.serial, self.long_term_key, device_entropy, nonce)
        self._keys = SessionKeys(self.serial, session)
        self._keyed = True
        self._seq = 0

    # -- device -> host ---------------------------------------------------------

    def _frame(self, kind: bytes, encoding: bytes, body: bytes) -> bytes:
        return build_frame(self._keys, kind, encoding, body)

    def next_frame(self) -> bytes:
        """The next 64 bytes the device would send."""
        if self._queue:
            return self._queue.pop(0)
        if self.info_every and self._frames_since_info >= self.info_every:
            self._frames_since_info = 0
            return self._frame(
                b"I",
                b">",
                b"S08052:23751:23792:23584:07112:20876:08063:24150:" + self.failure_mode.encode(),
            )
        self._frames_since_info += 1
        if not self._keyed or self._seq > MAX_SEQUENCE:
            return self._frame(b"k", b">", b"Unable to send entropy. Please re-key session.")
        plain = self.rng(ENTROPY_PER_FRAME)
        sub = encode_subcode(self._seq)
        pad = self._keys.pad(sub)
        cipher = bytes(a ^ b for a, b in zip(plain, pad))
        self._seq += 1
        self.sent_entropy.append(plain)
        return self._frame(b"E", b"!", sub + pem_encode(cipher))

    def stream(self, nframes: int) -> bytes:
        return b"".join(self.next_frame() for _ in range(nframes))

    def converse(self, host: HostSession, nframes: int) -> bytes:
        """`nframes` frames of a conversation with `host` (a started HostSession): each
        turn hands the host's writes to the device and its next frame to the host; the
        bytes the device sent."""
        stream = bytearray()
        for _ in range(nframes):
            self.host_write(host.take_writes())
            frame = self.next_frame()
            stream += frame
            host.receive(frame)
        return bytes(stream)


class PtySimulator:
    """An `EntropyKeySim` behind a pseudo-terminal; `path` is the tty a host opens.

    A background thread answers host commands and writes frames whenever the host
    side can take them (at most `rate_frames` frames per second if given). Like the
    real key, it sends "re-key me" frames only now and then (every `idle_interval`
    seconds), not as a flood. `unplug()` closes the master side, which is what a
    host sees when a key is pulled out.
    """

    def __init__(
        self, sim: EntropyKeySim, rate_frames: float | None = None, idle_interval: float = 0.02
    ) -> None:
        self.sim = sim
        self.interval = 1.0 / rate_frames if rate_frames else 0.0
        self.idle_interval = idle_interval
        self.master, self.slave = pty.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.tamper: Callable[[bytes], bytes] | None = None
        self.frames_written = 0
        self._thread = threading.Thread(target=self._run, name="ekey-sim", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pending = b""
        hold_until = 0.0
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if not pending and now >= hold_until:
                    with self._lock:
                        frame = self.sim.next_frame()
                    if self.tamper is not None:
                        frame = self.tamper(frame)
                    pending = frame
                    self.frames_written += 1
                    gap = self.idle_interval if frame[2:3] == b"k" else self.interval
                    hold_until = now + gap
                timeout = 0.05 if pending else max(0.0, hold_until - time.monotonic())
                writers = [self.master] if pending else []
                r, w, _ = select.select([self.master], writers, [], timeout)
                if r:
                    data = os.read(self.master, 4096)
                    if not data:
                        return
                    with self._lock:
                        self.sim.host_write(data)
                if w and pending:
                    n = os.write(self.master, pending)
                    pending = pending[n:]
            except OSError:
                return

    def unplug(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            os.close(self.master)
        except OSError:
            pass
        self.master = -1

    def close(self) -> None:
        if self.master >= 0:
            self.unplug()
        try:
            os.close(self.slave)
        except OSError:
            pass

    def __enter__(self) -> PtySimulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
