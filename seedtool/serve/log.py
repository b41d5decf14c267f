"""The daemon's event log: one line per event on stderr, text or JSON.

An event is a name and a few fields (ids, counts, paths, one-sentence reasons). The
callers pass only those: never a byte of output, never a sample. `EventLog` is the
`log(event, fields)` callable the entropy core and the listeners share; it is
thread-safe (the core logs from its source thread) and writes each line whole.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Mapping
from typing import TextIO


class EventLog:
    """`log("client-open", {"client": "c1", "peer": "pid 42"})` -> one line on `stream`."""

    def __init__(self, as_json: bool = False, stream: TextIO | None = None) -> None:
        self.as_json = as_json
        self.stream = stream if stream is not None else sys.stderr
        self._lock = threading.Lock()

    def __call__(self, event: str, fields: Mapping[str, object] | None = None) -> None:
        fields = dict(fields or {})
        if self.as_json:
            line = json.dumps({"ts": round(time.time(), 3), "event": event, **fields},
                              default=str, sort_keys=False)
        else:
            parts = [f"seedtool serve: {event}"]
            parts += [f"{k}={_text(v)}" for k, v in fields.items()]
            line = " ".join(parts)
        with self._lock:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass  # stderr gone (closed pipe): the daemon keeps serving


def _text(value: object) -> str:
    s = str(value)
    return json.dumps(s) if (not s or any(c in s for c in " \"=\n")) else s
