"""Record what the code under test does through the interpreter's audit events (PEP 578).

One hook for the whole test process (a hook cannot be removed); `recording()` arms it
for a block and gives the (event, args) seen there. Real code paths, no patching.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

_log: list[tuple[str, tuple[object, ...]]] | None = None


def _hook(event: str, args: tuple[object, ...]) -> None:
    if _log is not None:
        _log.append((event, args))


sys.addaudithook(_hook)


@contextmanager
def recording() -> Iterator[list[tuple[str, tuple[object, ...]]]]:
    global _log
    seen: list[tuple[str, tuple[object, ...]]] = []
    _log = seen
    try:
        yield seen
    finally:
        _log = None
