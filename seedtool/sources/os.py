"""The kernel CSPRNG through getrandom(2). Always mixed into every seed."""

from __future__ import annotations

import os

from ..shared.errors import SourceError
from .base import Availability, Source


class OsSource(Source):
    name = "os"
    description = "kernel CSPRNG via getrandom(2); always mixed in"
    min_entropy = 8.0
    raw = False
    # Mixed in as it is, never health-tested, so no option (min_entropy= included) could
    # change anything: it takes none.
    inherit_options = False

    def available(self) -> Availability:
        if not hasattr(os, "getrandom"):
            return Availability.yes({"interface": "os.urandom"})
        try:
            os.getrandom(1, os.GRND_NONBLOCK)
        except BlockingIOError:
            return Availability.no(
                "the kernel CSPRNG is not initialised yet; wait for 'random: crng init done'"
            )
        return Availability.yes({"interface": "getrandom"})

    def read(self, n: int) -> bytes:
        if hasattr(os, "getrandom"):
            out = b""
            while len(out) < n:
                try:
                    out += os.getrandom(n - len(out))
                except InterruptedError:
                    continue
                except OSError as e:  # pragma: no cover - kernel without getrandom
                    raise SourceError(f"getrandom failed: {e.strerror}") from None
            return out
        return os.urandom(n)
