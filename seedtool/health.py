"""NIST SP 800-90B continuous health tests (section 4.4) for raw source output.

Both tests run on every sample a hardware source yields, at C speed: the
Repetition Count Test looks for a run of C identical samples with a bytes regex,
the Adaptive Proportion Test counts the window's first sample with `bytes.count`.

Alpha = 2^-20 is a per-sample false-alarm rate, so a perfect source still trips
the RCT about once per 2^24 byte samples at H = 8. The response defined here:
a failing block is discarded whole (none of its bytes reach a seed) and counted;
the source then has to pass a fresh start-up test. A second failure during one
`HealthMonitor` lifetime (one seed generation) marks the source failed, because two
false alarms within a few kilobytes have probability below 2^-30.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache

from .shared.errors import HealthTestFailure

ALPHA_LOG2 = -20
STARTUP_SAMPLES = 1024


def rct_cutoff(h: float) -> int:
    """C = 1 + ceil(-log2(alpha) / H)."""
    if h <= 0:
        raise ValueError("min-entropy must be positive")
    return 1 + math.ceil(-ALPHA_LOG2 / h)


@lru_cache(maxsize=64)
def apt_cutoff(h: float, window: int) -> int:
    """1 + CRITBINOM(W, 2^-H, 1 - alpha): the smallest count c with P(X >= c) <= alpha.

    X ~ Binomial(W, p) is the number of samples in a window equal to its first sample
    (SP 800-90B 4.4.2 counts the first sample itself, hence W trials with p = 2^-H).
    """
    p = 2.0 ** (-h)
    alpha = 2.0**ALPHA_LOG2
    # cumulative distribution, summed in log space for stability
    log_p, log_q = math.log(p), math.log1p(-p) if p < 1 else float("-inf")
    cdf = 0.0
    for k in range(window + 1):
        if p >= 1:
            term = 1.0 if k == window else 0.0
        else:
            term = math.exp(
                math.lgamma(window + 1)
                - math.lgamma(k + 1)
                - math.lgamma(window - k + 1)
                + k * log_p
                + (window - k) * log_q
            )
        cdf += term
        if cdf >= 1 - alpha:
            return min(window, k + 1)
    return window


def window_for(sample_bits: int) -> int:
    return 1024 if sample_bits == 1 else 512


@dataclass
class HealthReport:
    """What the tests saw; safe to record in provenance (no sample values)."""

    samples: int = 0
    startup_samples: int = 0
    rct_failures: int = 0
    apt_failures: int = 0
    discarded_blocks: int = 0
    verdict: str = "pass"
    reason: str = ""
    cutoffs: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {
            "verdict": self.verdict,
            "samples": self.samples,
            "rct_failures": self.rct_failures,
            "apt_failures": self.apt_failures,
        }
        if self.reason:
            d["reason"] = self.reason
        return d


class ByteTester:
    """RCT + APT over byte samples (8 bits per sample), streaming across chunks.

    RCT: with x the chunk as one big integer, x ^ (x >> 8) has a zero byte exactly
    where two neighbouring samples are equal, so a run of C equal samples is C - 1
    zero bytes in a row: a substring search, done in C.
    APT: `bytes.count` of each window's first sample within the window.
    """

    def __init__(self, h: float) -> None:
        self.h = h
        self.window = 512
        self.rct_c = rct_cutoff(h)
        self.apt_c = apt_cutoff(h, self.window)
        self._zeros = b"\0" * (self.rct_c - 1)
        self._tail = b""  # last rct_c - 1 samples of the previous chunk
        self._apt_buf = b""  # incomplete APT window carried over

    def reset(self) -> None:
        self._tail = b""
        self._apt_buf = b""

    def check(self, chunk: bytes) -> tuple[int, int]:
        """Return (rct_failures, apt_failures) found in chunk (continuing the stream)."""
        joined = self._tail + chunk if self._tail else chunk
        n = len(joined)
        rct = 0
        if n >= self.rct_c:
            x = int.from_bytes(joined, "big")
            diff = (x ^ (x >> 8)).to_bytes(n, "big")  # diff[k] = joined[k-1] ^ joined[k]
            if diff.find(self._zeros, 1) >= 0:
                rct = 1
        keep = self.rct_c - 1
        self._tail = joined[-keep:] if keep and n else b""
        apt = 0
        data = self._apt_buf + chunk if self._apt_buf else chunk
        w, c = self.window, self.apt_c
        end = len(data) - len(data) % w
        for start in range(0, end, w):
            if data.count(data[start : start + 1], start, start + w) >= c:
                apt = 1
                break
        self._apt_buf = data[end:]
        return rct, apt

    def window_remainder(self) -> int:
        """Bytes still needed to complete the APT window the stream stopped inside."""
        return self.window - len(self._apt_buf) if self._apt_buf else 0


def _leading_zero_bits(byte: int) -> int:
    return 8 - byte.bit_length()


def _trailing_zero_bits(byte: int) -> int:
    return (byte & -byte).bit_length() - 1 if byte else 8


_LZ = bytes(_leading_zero_bits(v) for v in range(256))
_TZ = bytes(_trailing_zero_bits(v) for v in range(256))
_ZERO_BYTES = re.compile(rb"\x00+")
_popcount = getattr(int, "bit_count", None) or (lambda x: bin(x).count("1"))


class BitTester:
    """RCT + APT over single-bit samples (MSB first within each byte).

    RCT: with x the chunk as one big integer, t = x ^ (x >> 1) has a zero bit where
    two neighbouring samples are equal, so a run of C samples is C - 1 zero bits in
    a row. For bits H <= 1, so C >= 21, and 20 zero bits always contain a whole zero
    byte of t: the regex finds those in C and only their neighbours are looked at.
    """

    def __init__(self, h: float) -> None:
        if h > 1:
            raise ValueError("a bit sample carries at most 1 bit of min-entropy")
        self.h = h
        self.window = 1024
        self.rct_c = rct_cutoff(h)
        self.apt_c = apt_cutoff(h, self.window)
        self._run_bit = -1
        self._run_len = 0
        self._apt_buf = b""

    def reset(self) -> None:
        self._run_bit, self._run_len = -1, 0
        self._apt_buf = b""

    def _rct(self, chunk: bytes) -> int:
        n = len(chunk)
        if not n:
            return 0
        c, nbits = self.rct_c, 8 * n
        x = int.from_bytes(chunk, "big")
        top = 1 << (nbits - 1)
        # bit j of t compares samples (nbits-2-j) and (nbits-1-j); the top bit has no
        # partner inside the chunk and is set, so that no run is counted across it
        t = (x ^ (x >> 1)) | top
        inner = t ^ top
        first_bit = x >> (nbits - 1)
        leading = nbits - inner.bit_length()  # samples equal to the first one
        fail = 0
        if first_bit == self._run_bit and self._run_len + leading >= c:
            fail = 1
        if not fail:
            tb = t.to_bytes(n, "big")
            for m in _ZERO_BYTES.finditer(tb):
                s, e = m.span()
                zeros = 8 * (e - s) + _TZ[tb[s - 1]] + (_LZ[tb[e]] if e < n else 0)
                if zeros + 1 >= c:
                    fail = 1
                    break
        last_bit = x & 1
        trailing = (inner & -inner).bit_length() if inner else nbits
        if not inner and last_bit == self._run_bit:
            trailing += self._run_len
        self._run_bit, self._run_len = (-1, 0) if fail else (last_bit, trailing)
        return fail

    def check(self, chunk: bytes) -> tuple[int, int]:
        rct = self._rct(chunk)
        apt = 0
        data = self._apt_buf + chunk if self._apt_buf else chunk
        wb = self.window // 8
        end = len(data) - len(data) % wb
        for start in range(0, end, wb):
            ones = _popcount(int.from_bytes(data[start : start + wb], "big"))
            same = ones if data[start] & 0x80 else self.window - ones
            if same >= self.apt_c:
                apt += 1
                break
        self._apt_buf = data[end:]
        return rct, apt

    def window_remainder(self) -> int:
        """Bytes still needed to complete the APT window the stream stopped inside."""
        return self.window // 8 - len(self._apt_buf) if self._apt_buf else 0


class HealthMonitor:
    """Wraps a source's reads: start-up test, continuous tests, response to failures."""

    def __init__(self, name: str, h: float, sample_bits: int = 8, max_failures: int = 1) -> None:
        self.name = name
        self.tester: ByteTester | BitTester = (
            BitTester(h) if sample_bits == 1 else ByteTester(h)
        )
        self.sample_bits = sample_bits
        self.max_failures = max_failures
        self.report = HealthReport(
            cutoffs={
                "rct": self.tester.rct_c,
                "apt": self.tester.apt_c,
                "window": self.tester.window,
            }
        )
        self._started = False

    def _startup_bytes(self) -> int:
        return STARTUP_SAMPLES if self.sample_bits == 8 else STARTUP_SAMPLES // 8

    def _fail(self, why: str) -> None:
        self.report.verdict = "fail"
        self.report.reason = why
        raise HealthTestFailure(
            f"source '{self.name}' failed its health tests ({why}); it contributes nothing. "
            "Check the device, or lower its assumed min-entropy if it is known to be weaker"
        )

    def _test(self, block: bytes) -> bool:
        rct, apt = self.tester.check(block)
        self.report.samples += len(block) * 8 // self.sample_bits
        self.report.rct_failures += rct
        self.report.apt_failures += apt
        return not (rct or apt)

    def startup(self, read: ReadFn) -> None:
        """Run the start-up test on fresh samples, which are then discarded."""
        n = self._startup_bytes()
        block = read(n)
        self.report.startup_samples += n * 8 // self.sample_bits
        if not self._test(block):
            self._failure("start-up test")
        self._started = True

    def _failure(self, where: str) -> None:
        self.report.discarded_blocks += 1
        failures = self.report.rct_failures + self.report.apt_failures
        if failures > self.max_failures:
            kinds = []
            if self.report.rct_failures:
                kinds.append(f"repetition count test x{self.report.rct_failures}")
            if self.report.apt_failures:
                kinds.append(f"adaptive proportion test x{self.report.apt_failures}")
            self._fail(", ".join(kinds) + f" during {where}")
        self.tester.reset()
        self._started = False

    def read(self, read: ReadFn, n: int) -> bytes:
        """Read n health-tested bytes; a failing block is dropped and re-read once."""
        while True:
            if not self._started:
                self.startup(read)
                if not self._started:
                    continue
            block = read(n)
            if self._test(block) and self._test_rest_of_window(read):
                return block
            self._failure("continuous testing")

    def _test_rest_of_window(self, read: ReadFn) -> bool:
        """Complete the APT window the block ended inside, so no sample is released unjudged.

        A block shorter than the window (a 64-byte seed against W = 512) would otherwise
        leave the APT without a verdict on any of its samples: a source drifting in bias
        right after start-up would pass. The extra samples are tested and discarded.
        """
        missing = self.tester.window_remainder()
        return self._test(read(missing)) if missing else True


from typing import Callable  # noqa: E402

ReadFn = Callable[[int], bytes]
