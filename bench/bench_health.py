"""Throughput of the SP 800-90B health tests, against baselines measured in the same run.

Bar (issue 2): at least 200 MB/s of byte samples on one core (CPU time of one
thread). Prints MB/s for the byte and bit testers and the ratio to two baselines
on the same data: one pass of `bytes.count` (a floor: memory speed) and SHA-256
(a familiar C-speed yardstick).
Run: python3 bench/bench_health.py [--mb 64]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import time
from typing import Callable

from seedtool.health import BitTester, ByteTester

CHUNK = 64 * 1024


def rate(fn: Callable[[bytes], object], data: bytes, repeats: int) -> float:
    """MB per second of this thread's CPU time: what one core does, whatever the load.

    The machines are shared; wall time would measure the neighbours too. CPU time of
    the calling thread is the "one core" of the bar.
    """
    chunks = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
    times = []
    for _ in range(repeats):
        t0 = time.thread_time()
        for c in chunks:
            fn(c)
        times.append(time.thread_time() - t0)
    return len(data) / statistics.median(times) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    data = random.Random(7).randbytes(args.mb << 20)

    byte_t = ByteTester(8.0)
    bit_t = BitTester(1.0)
    results = {
        "health bytes (H=8)": rate(byte_t.check, data, args.repeats),
        "health bits (H=1)": rate(bit_t.check, data, args.repeats),
        "baseline bytes.count": rate(lambda b: b.count(b"\0"), data, args.repeats),
        "baseline sha256": rate(lambda b: hashlib.sha256(b).digest(), data, args.repeats),
    }
    for name, mbs in results.items():
        print(f"{name:24s} {mbs:9.1f} MB/s")
    hb = results["health bytes (H=8)"]
    print(f"ratio health/sha256      {hb / results['baseline sha256']:9.2f}")
    print(f"ratio health/bytes.count {hb / results['baseline bytes.count']:9.3f}")
    verdict = "PASS" if hb >= 200 else "FAIL"
    print(f"bar: byte health tests >= 200 MB/s on one core: {hb:.0f} MB/s {verdict}")


if __name__ == "__main__":
    main()
