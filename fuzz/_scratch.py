"""A scratch file for targets that read their input from a real file.

Under `fuzz.run` it lives in the campaign's work directory (libFuzzer ends the
process without running atexit handlers, so a temporary file would be left
behind); elsewhere (replay, pytest) it is a temporary file removed at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import tempfile

#: set by fuzz.run to the campaign's work directory
WORK_ENV = "SEEDTOOL_FUZZ_WORK"


def scratch_path(name: str) -> str:
    work = os.environ.get(WORK_ENV)
    if work:
        os.makedirs(work, exist_ok=True)
        return os.path.join(work, f"scratch-{name}")
    fd, path = tempfile.mkstemp(prefix=f"seedtool-fuzz-{name}-")
    os.close(fd)
    atexit.register(_remove, path)
    return path


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
