"""Fixtures of the daemon's tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for sockets: a UNIX socket path must fit in 108 bytes."""
    d = Path(tempfile.mkdtemp(prefix="srv"))
    yield d
    shutil.rmtree(d, ignore_errors=True)
