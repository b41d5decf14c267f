"""EntropyCore through real sources: `os` here; fake USB TRNGs further down."""

from __future__ import annotations

import json

import pytest

from seedtool.serve.core import MAX_READ, EntropyCore


def test_os_only_core_serves_distinct_bytes() -> None:
    with EntropyCore(["os"], log=lambda e, f: None) as core:
        assert core.serving
        a, b = core.read(64), core.read(64)
        assert a is not None and b is not None
        assert len(a) == len(b) == 64 and a != b
        st = core.status()
        json.dumps(st)
        assert st["serving"] is True and st["drbg"]["reseeds"] == 1
        assert [s["name"] for s in st["sources"]] == ["os"]
    assert core.read(1) is None  # stopped


@pytest.mark.parametrize("n", [0, MAX_READ + 1])
def test_read_size_is_checked(n: int) -> None:
    with EntropyCore([], log=lambda e, f: None) as core, pytest.raises(ValueError):
        core.read(n)
