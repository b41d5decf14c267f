"""SP 800-90B health tests: cutoffs, detection, streaming, and the response to failures."""

from __future__ import annotations

import random
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seedtool.health import (
    BitTester,
    ByteTester,
    HealthMonitor,
    apt_cutoff,
    rct_cutoff,
)
from seedtool.shared.errors import HealthTestFailure


def good_stream(n: int, seed: int = 1) -> bytes:
    # deterministic "random" bytes: known not to trip the tests, so no flaky alarms
    return random.Random(seed).randbytes(n)


def test_cutoffs_match_sp800_90b() -> None:
    # NIST SP 800-90B sections 4.4.1 and 4.4.2, at alpha = 2^-20
    assert [rct_cutoff(h) for h in (8, 4, 1)] == [4, 6, 21]
    assert [apt_cutoff(h, 512) for h in (8, 6, 4, 2, 1)] == [13, 25, 62, 177, 311]
    assert apt_cutoff(1, 1024) == 589


def test_rct_finds_run_even_across_chunks() -> None:
    t = ByteTester(8.0)
    assert t.check(b"\x01\x02\x03") == (0, 0)
    assert t.check(b"\x07\x07") == (0, 0)
    assert t.check(b"\x07\x07\x09")[0] == 1  # 4 x 0x07 spans two chunks


def test_apt_finds_biased_window() -> None:
    data = bytearray(good_stream(512))
    for i in range(0, 512, 40):  # 13 copies of the first sample
        data[i] = data[0]
    assert ByteTester(8.0).check(bytes(data))[1] == 1


def test_good_data_passes() -> None:
    t = ByteTester(8.0)
    data = good_stream(1 << 20)
    assert [t.check(data[i:i + 4096]) for i in range(0, len(data), 4096)].count((0, 0)) == 256


def _reference_byte(stream: bytes, h: float) -> tuple[bool, bool]:
    """Per-sample implementation straight from SP 800-90B 4.4.1/4.4.2."""
    c, ac, w = rct_cutoff(h), apt_cutoff(h, 512), 512
    rct = apt = False
    run, prev = 0, None
    for b in stream:
        run = run + 1 if b == prev else 1
        prev = b
        if run >= c:
            rct = True
    for start in range(0, len(stream) - w + 1, w):
        win = stream[start:start + w]
        if sum(1 for x in win if x == win[0]) >= ac:
            apt = True
    return rct, apt


@settings(max_examples=150, deadline=None)
@given(
    alphabet=st.integers(1, 256),
    n=st.integers(0, 3000),
    cuts=st.lists(st.integers(1, 700), max_size=6),
    h=st.sampled_from([8.0, 4.0, 2.0, 1.0, 0.5]),
    seed=st.integers(0, 2**32),
)
def test_property_streaming_equals_reference(alphabet: int, n: int, cuts: list[int], h: float,
                                             seed: int) -> None:
    rnd = random.Random(seed)
    stream = bytes(rnd.randrange(alphabet) for _ in range(n))
    t = ByteTester(h)
    rct = apt = False
    pos = 0
    for c in [*cuts, n]:
        r, a = t.check(stream[pos:pos + c])
        rct, apt = rct or bool(r), apt or bool(a)
        pos += c
        if pos >= n:
            break
    if pos < n:
        r, a = t.check(stream[pos:])
        rct, apt = rct or bool(r), apt or bool(a)
    assert (rct, apt) == _reference_byte(stream, h)


def _reference_bits(stream: bytes, h: float) -> tuple[bool, bool]:
    bits = [(b >> (7 - i)) & 1 for b in stream for i in range(8)]
    c, ac, w = rct_cutoff(h), apt_cutoff(h, 1024), 1024
    rct = apt = False
    run, prev = 0, None
    for b in bits:
        run = run + 1 if b == prev else 1
        prev = b
        rct = rct or run >= c
    for start in range(0, len(bits) - w + 1, w):
        win = bits[start:start + w]
        apt = apt or win.count(win[0]) >= ac
    return rct, apt


@settings(max_examples=100, deadline=None)
@given(p=st.floats(0.0, 1.0), n=st.integers(0, 400), cut=st.integers(1, 300),
       seed=st.integers(0, 2**32))
def test_property_bit_tester_equals_reference(p: float, n: int, cut: int, seed: int) -> None:
    rnd = random.Random(seed)
    stream = bytes(sum((rnd.random() < p) << i for i in range(8)) for _ in range(n))
    t = BitTester(1.0)
    r1, a1 = t.check(stream[:cut])
    r2, a2 = t.check(stream[cut:])
    assert (bool(r1 or r2), bool(a1 or a2)) == _reference_bits(stream, 1.0)


def _bits(text: str) -> bytes:
    return int(text, 2).to_bytes(len(text) // 8, "big")


def test_bit_rct_exact_cutoff_across_chunks() -> None:
    # H = 1 gives C = 21: a run of 20 equal bits passes, 21 fails, wherever the cut is
    for run, expect in ((20, 0), (21, 1)):
        stream = "10" * 20 + "1" + "0" * run + "1" + "01" * 19
        stream += "0" * (-len(stream) % 8)
        data = _bits(stream)
        for cut in range(1, len(data)):
            t = BitTester(1.0)
            assert max(t.check(data[:cut])[0], t.check(data[cut:])[0]) == expect, (run, cut)


@settings(max_examples=100, deadline=None)
@given(p=st.sampled_from([0.5, 0.9, 0.95, 0.97, 0.99]), n=st.integers(1, 64),
       cuts=st.lists(st.integers(1, 16), min_size=1, max_size=8), seed=st.integers(0, 2**32))
def test_property_bit_rct_with_long_runs(p: float, n: int, cuts: list[int], seed: int) -> None:
    rnd = random.Random(seed)
    bits = []
    b = 0
    while len(bits) < 8 * n:
        bits.append(b)
        if rnd.random() > p:
            b ^= 1
    stream = _bits("".join(map(str, bits)))
    t = BitTester(1.0)
    got, pos = 0, 0
    for c in [*cuts, len(stream)]:
        got |= t.check(stream[pos:pos + c])[0]
        pos += c
    assert bool(got) == _reference_bits(stream, 1.0)[0]


class Scripted:
    """A source whose reads come from a function of the byte offset."""

    def __init__(self, fn: Callable[[int, int], bytes]) -> None:
        self.fn, self.pos = fn, 0

    def read(self, n: int) -> bytes:
        out = self.fn(self.pos, n)
        self.pos += n
        return out


def test_stuck_source_fails_at_startup() -> None:
    src = Scripted(lambda pos, n: b"\xaa" * n)
    mon = HealthMonitor("stuck", 8.0)
    with pytest.raises(HealthTestFailure, match="'stuck' failed its health tests"):
        mon.read(src.read, 64)
    assert mon.report.verdict == "fail"


def test_bias_drift_mid_stream_is_caught_by_apt() -> None:
    good = good_stream(1 << 16)

    def fn(pos: int, n: int) -> bytes:
        if pos < 4096:
            return good[pos:pos + n]
        # drifts: every other sample is 0x00 — no long runs, so only the APT sees it
        rnd = random.Random(pos)
        return bytes(0 if i % 2 == 0 else rnd.randrange(1, 256) for i in range(n))

    mon = HealthMonitor("drifty", 8.0)
    assert len(mon.read(Scripted(fn).read, 2048)) == 2048
    with pytest.raises(HealthTestFailure, match="adaptive proportion"):
        mon.read(Scripted(lambda p, n: fn(p + 4096, n)).read, 2048)


def test_isolated_failure_discards_block_and_recovers() -> None:
    data = bytearray(good_stream(1 << 16))
    data[1024 + 100:1024 + 104] = b"\x55" * 4  # one RCT alarm inside the first real block
    src = Scripted(lambda pos, n: bytes(data[pos:pos + n]))
    mon = HealthMonitor("hiccup", 8.0)
    out = mon.read(src.read, 512)
    assert b"\x55" * 4 not in out
    assert mon.report.rct_failures == 1 and mon.report.discarded_blocks == 1
    assert mon.report.verdict == "pass"
    # a fresh start-up test ran after the failure: 2 x 1024 start-up samples in all
    assert mon.report.startup_samples == 2048


def test_report_never_contains_sample_values() -> None:
    mon = HealthMonitor("x", 8.0)
    mon.read(Scripted(lambda p, n: good_stream(p + n)[p:]).read, 256)
    assert set(mon.report.as_dict()) <= {"verdict", "samples", "rct_failures", "apt_failures",
                                         "reason"}
