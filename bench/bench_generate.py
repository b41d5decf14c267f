"""Wall time of `seedtool generate` (signing included) against a baseline in the same run.

Bar (issue 2): at most 2x the wall time of
`python3 -c "import click, cryptography.hazmat.primitives.asymmetric.ed25519"`,
i.e. generating a seed may cost about one more interpreter start-up's worth of
work. Runs are interleaved so that machine noise hits both sides alike; medians.
Run: python3 bench/bench_generate.py [--runs 21]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=21)
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as d:
        key = os.path.join(d, "k.key")
        subprocess.run([py, "-m", "seedtool", "keygen", "-o", key], check=True,
                       stdout=subprocess.DEVNULL)
        out = os.path.join(d, "s.env")
        baseline_cmd = [py, "-c",
                        "import click, cryptography.hazmat.primitives.asymmetric.ed25519"]
        generate_cmd = [py, "-m", "seedtool", "generate", "--key", key, "-o", out]
        base, gen = [], []
        wall(baseline_cmd)
        wall(generate_cmd)  # warm the page cache for both
        for _ in range(args.runs):
            base.append(wall(baseline_cmd))
            gen.append(wall(generate_cmd))
    b, g = statistics.median(base), statistics.median(gen)
    print(f"baseline import click+ed25519  median {b * 1000:7.1f} ms  (n={len(base)})")
    print(f"seedtool generate              median {g * 1000:7.1f} ms  (n={len(gen)})")
    ratio = g / b
    print(f"ratio generate/baseline {ratio:.2f}  bar <= 2.00  {'PASS' if ratio <= 2 else 'FAIL'}")


if __name__ == "__main__":
    main()
