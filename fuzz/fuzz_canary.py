"""A canary target with a planted bug, to show the fuzzing machinery finds one.

Not a parser and not in the campaign: tests/test_fuzz_short.py runs it to check
that instrumentation, mutation, the exception path, the saved input and the CI
report all work, so that a quiet campaign means something.
"""

from __future__ import annotations

from collections.abc import Iterator

INSTRUMENT = ["fuzz.fuzz_canary"]
MAX_LEN = 64


def seeds() -> Iterator[bytes]:
    yield b"canary: bux"


def test_one_input(data: bytes) -> None:
    if data.startswith(b"canary: ") and data[8:11] == b"bug":
        raise IndexError("the planted bug")
