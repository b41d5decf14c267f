"""Per-cloud plumbing, one module per cloud: credentials and sessions, endpoints, API
error translation and SDK log quieting, shared by every feature that talks to that
cloud (an entropy source, a launcher). Each module imports its SDK only when used.

What every cloud module shares is here: making a server's message safe to repeat.
"""

from __future__ import annotations

import re

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
