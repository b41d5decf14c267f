"""Silencing a client library's payload logging while our own calls run.

botocore and the google-cloud REST transports log whole requests and responses at
DEBUG level; ours carry user-data with seeds, and KMS replies carry random bytes.
A `Quieter` drops those loggers' records, but only on a thread that is inside one
of our calls, so an application's own use of the same library keeps its logs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class _DropOnActiveThreads(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.active = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.active, "depth", 0)


class Quieter:
    """`with quieter():` drops the named loggers' records made on this thread."""

    def __init__(self, *loggers: str) -> None:
        self.loggers = loggers
        self._filter = _DropOnActiveThreads()
        self._lock = threading.Lock()
        self._installed = False

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if not self._installed:
                for name in self.loggers:
                    logging.getLogger(name).addFilter(self._filter)
                self._installed = True
        active = self._filter.active
        active.depth = getattr(active, "depth", 0) + 1
        try:
            yield
        finally:
            active.depth -= 1
