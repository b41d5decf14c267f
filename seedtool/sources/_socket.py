"""Reading exact replies from a stream socket before a deadline: what the sources that
talk to a daemon or simulator over a socket (egd, tpm tcp=) share."""

from __future__ import annotations

import socket
import time

from ..shared.errors import DeviceError


class ReadTimeout(Exception):
    """The deadline passed before the whole reply arrived."""

    #: bytes of the unfinished reply that had arrived (they are discarded)
    partial = 0


def remaining(deadline: float) -> float:
    """Seconds left before `deadline` (time.monotonic), or ReadTimeout when none are."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise ReadTimeout
    return left


def recv_exact(sock: socket.socket, n: int, deadline: float, closed: str,
               received: list[int] | None = None) -> bytes:
    """Exactly `n` bytes from `sock` before `deadline`; DeviceError(`closed`) if the peer
    closes first. `received[0]` counts every byte that arrived, for a caller that reports
    how much of a reply it discarded."""
    buf = bytearray()
    while len(buf) < n:
        sock.settimeout(remaining(deadline))
        try:
            chunk = sock.recv(n - len(buf))
        except socket.timeout:
            raise ReadTimeout from None
        if not chunk:
            raise DeviceError(closed)
        buf += chunk
        if received is not None:
            received[0] += len(chunk)
    return bytes(buf)
