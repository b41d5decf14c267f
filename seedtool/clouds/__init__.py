"""Per-cloud plumbing, one module per cloud: credentials and sessions, endpoints, API
error translation and SDK log quieting, shared by every feature that talks to that
cloud (an entropy source, a launcher). Each module imports its SDK only when used.

What every cloud module shares is here: making a server's message safe to repeat, the
sentences for failures every cloud has (no answer, no connection, throttled, failed on
its side), and reading a random-number service in bounded calls.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..shared.errors import SeedtoolError, UsageError

# runs of base64/hex-like text in a server's message (an echoed user-data or token)
_LONG_TOKEN = re.compile(r"[A-Za-z0-9+/=_-]{32,}")


def redact(message: str) -> str:
    """A server's message made safe to repeat: whitespace collapsed, long runs that
    could be base64 or hex data (an echoed user-data value, a token) cut, at most 200
    characters. A lowercase resource path (with '/', no capitals) stays readable."""

    def cut(m: re.Match[str]) -> str:
        run = m.group(0)
        if "/" in run and not re.search(r"[A-Z+=]", run):
            return run
        return "..."

    text = " ".join(str(message).split())
    text = _LONG_TOKEN.sub(cut, text)
    return text[:200].rstrip(" .")


# --- the sentences every cloud module says the same way ------------------------------------
# `error` is the caller's error class; `tries` reads " through 3 attempts" or " for 30 s of
# retries" (or ""), so each sentence says what was already tried.


def no_answer(error: type[SeedtoolError], service: str, where: str, waited: str,
              retry: str) -> SeedtoolError:
    return error(f"{service} at {where} did not answer {waited}; {retry}")


def no_connection(error: type[SeedtoolError], service: str, where: str, tries: str,
                  check: str) -> SeedtoolError:
    return error(f"could not connect to {service} at {where}{tries}; check {check}")


def throttled(error: type[SeedtoolError], service: str, op: str, detail: str, tries: str,
              fix: str) -> SeedtoolError:
    return error(f"{service} kept throttling {op} ({detail}){tries}; {fix}")


def server_side(error: type[SeedtoolError], service: str, detail: str, tries: str,
                retry: str) -> SeedtoolError:
    return error(f"{service} failed on its side ({detail}){tries}; {retry}")


def read_random(n: int, fetch: Callable[[int], bytes], *, most: int, least: int = 1) -> bytes:
    """`n` bytes from a random-number service that gives `least`..`most` bytes per call
    (KMS GenerateRandom, Cloud KMS generateRandomBytes): `fetch(k)` returns exactly `k`
    bytes or raises; a short last need asks for `least` and keeps what was needed."""
    if n < 0:
        raise UsageError("cannot read a negative number of bytes")
    out = bytearray()
    while len(out) < n:
        need = min(most, n - len(out))
        out += fetch(max(least, need))[:need]
    return bytes(out)
