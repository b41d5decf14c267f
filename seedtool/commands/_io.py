"""Reading the files commands are given: user-data, envelopes, passphrases.

One reader (`read_input`): '-' is standard input, a file larger than the limit is
refused before it is all in memory, and an unreadable one is one sentence naming it.
"""

from __future__ import annotations

import sys

from ..shared import envelope
from ..shared.errors import DeliveryError, EnvelopeError, SeedtoolError

#: more user-data than any cloud accepts (AWS 16 KB, GCE 256 KB per value, nova 64 KB
#: base64); a larger input is a wrong file
MAX_USER_DATA = 64 * 1024 * 1024


def read_input(path: str, what: str, error: type[SeedtoolError], limit: int) -> bytes:
    """At most `limit` + 1 bytes of `path` ('-' is standard input): more means too large.

    An unreadable file raises `error`, naming `what` and the path.
    """
    try:
        if path == "-":
            return sys.stdin.buffer.read(limit + 1)
        with open(path, "rb") as fh:
            return fh.read(limit + 1)
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror}; check the path") from None


def read_user_data(path: str | None) -> bytes | None:
    """The user's own user-data (any format), or None when no path was given."""
    if path is None:
        return None
    data = read_input(path, "user-data", DeliveryError, MAX_USER_DATA)
    if len(data) > MAX_USER_DATA:
        raise DeliveryError(
            f"user-data {path} is larger than {MAX_USER_DATA} bytes, more than any cloud "
            "accepts; check that the right file was given"
        )
    return data


def read_envelope_file(path: str) -> bytes:
    """An envelope's text or bytes (a longer one is refused by envelope.parse), not empty."""
    data = read_input(path, "envelope", EnvelopeError, envelope.MAX_TEXT)
    if not data.strip():
        raise EnvelopeError(f"envelope {path} is empty")
    return data
