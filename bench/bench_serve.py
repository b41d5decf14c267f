"""EGD throughput and latency of `seedtool serve`, against a baseline server in the same run.

Bar (issue 10): with 64-byte blocking reads (`0x02 64`) over 1 and over 64 concurrent
connections, the daemon's throughput is at least 0.8x that of a baseline EGD server
that answers with os.urandom and nothing else (no health tests, no DRBG, no rate
limit, no accounting, no timers; written here on the same asyncio.Protocol layer as
the daemon, so the ratio is the cost of what the daemon adds). Prints requests/s, MB/s,
p50/p99 latency of each, the ratio, and the daemon's RSS under the 64-connection load.

The daemon runs as `seedtool serve --rate 0` (no per-connection limit: the limit is a
policy, not a cost) with one health-tested source, `egd:` reading a second baseline
server, so the source thread and the health tests run as in production (the DRBG
reseeds from them every 1 MiB or 30 s). Both servers are subprocesses; the client
(this process, asyncio) is the same for both. Runs alternate and each figure is the
median of --rounds runs, since the machine is shared.

Run: python3 bench/bench_serve.py [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REQUEST = 64
REPO = Path(__file__).resolve().parents[1]


# -- the baseline server ------------------------------------------------------------------


class _BaselineConnection(asyncio.Protocol):
    """The least an EGD server can do: parse, os.urandom, write. Same I/O layer as the
    daemon (an asyncio.Protocol), so the ratio is what the daemon adds on top: the
    DRBG, accounting, the rate check, bounded buffers, timers."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport, self.buf = transport, bytearray()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while buf:
            cmd = buf[0]
            if cmd in (0x01, 0x02):
                if len(buf) < 2:
                    return
                n = buf[1]
                del buf[:2]
                out = os.urandom(n)
                self.transport.write(bytes([n]) + out if cmd == 0x01 else out)
            elif cmd == 0x00:
                del buf[:1]
                self.transport.write((4096 * 8).to_bytes(4, "big"))
            elif cmd == 0x04:
                del buf[:1]
                pid = str(os.getpid()).encode()
                self.transport.write(bytes([len(pid)]) + pid)
            else:
                self.transport.close()
                return


async def _baseline(path: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(_BaselineConnection, path=path)
    async with server:
        await server.serve_forever()


# -- the client ---------------------------------------------------------------------------


async def _one_connection(path: str, until: float, lat: list[float]) -> int:
    reader, writer = await asyncio.open_unix_connection(path)
    request = bytes([0x02, REQUEST])
    got = 0
    try:
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            writer.write(request)
            got += len(await reader.readexactly(REQUEST))
            lat.append(time.perf_counter() - t0)
    finally:
        writer.close()
    return got


async def _load(path: str, conns: int, seconds: float) -> dict[str, float]:
    lat: list[float] = []
    t0 = time.perf_counter()
    until = t0 + seconds
    totals = await asyncio.gather(*(_one_connection(path, until, lat) for _ in range(conns)))
    wall = time.perf_counter() - t0
    lat.sort()
    return {
        "req_s": len(lat) / wall,
        "mb_s": sum(totals) / wall / 1e6,
        "p50_ms": lat[len(lat) // 2] * 1e3,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3,
    }


def load(path: str, conns: int, seconds: float) -> dict[str, float]:
    return asyncio.run(_load(path, conns, seconds))


def rss_kib(pid: int) -> tuple[int, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()[0] if value.split() else "0"
    return int(fields.get("VmRSS", 0)), int(fields.get("VmHWM", 0))


# -- the run ------------------------------------------------------------------------------


def _wait_for(path: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server for {path} did not start")
        time.sleep(0.05)
    time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline-server", metavar="PATH", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline_server:
        asyncio.run(_baseline(args.baseline_server))
        return

    work = tempfile.mkdtemp(prefix="bsrv")
    paths = {k: f"{work}/{k}.sock" for k in ("baseline", "source", "daemon")}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for k in ("baseline", "source"):
            p = subprocess.Popen([sys.executable, __file__, "--baseline-server", paths[k]],
                                 stdout=subprocess.DEVNULL)
            procs.append(p)
            _wait_for(paths[k], p)
        daemon = subprocess.Popen(
            [sys.executable, "-m", "seedtool", "serve", "--egd", f"unix:{paths['daemon']}",
             "--no-control", "--rate", "0", "--source", f"egd:path={paths['source']}",
             "--require", "egd"],
            cwd=REPO, stderr=subprocess.DEVNULL)
        procs.append(daemon)
        _wait_for(paths["daemon"], daemon)
        rss_idle = rss_kib(daemon.pid)

        results: dict[tuple[str, int], list[dict[str, float]]] = {}
        for _ in range(args.rounds):
            for conns in (1, 64):
                for k in ("baseline", "daemon"):
                    results.setdefault((k, conns), []).append(
                        load(paths[k], conns, args.seconds))
                    if k == "daemon" and conns == 64:
                        rss_load = rss_kib(daemon.pid)

        def med(k: str, conns: int, field: str) -> float:
            return statistics.median(r[field] for r in results[(k, conns)])

        print(f"EGD 0x02 {REQUEST}-byte requests, {args.rounds} x {args.seconds:g} s, "
              "median of rounds")
        print(f"{'':>10} {'conns':>5} {'req/s':>9} {'MB/s':>7} {'p50 ms':>7} {'p99 ms':>7}")
        for conns in (1, 64):
            for k in ("baseline", "daemon"):
                print(f"{k:>10} {conns:>5} {med(k, conns, 'req_s'):>9.0f} "
                      f"{med(k, conns, 'mb_s'):>7.2f} {med(k, conns, 'p50_ms'):>7.3f} "
                      f"{med(k, conns, 'p99_ms'):>7.3f}")
            ratio = med("daemon", conns, "req_s") / med("baseline", conns, "req_s")
            verdict = "ok" if ratio >= 0.8 else "BELOW the 0.8x bar"
            print(f"{'ratio':>10} {conns:>5} {ratio:>9.2f}x throughput ({verdict})")
        print(f"daemon RSS: {rss_idle[0] / 1024:.1f} MiB idle, {rss_load[0] / 1024:.1f} MiB "
              f"under 64 connections (peak {rss_load[1] / 1024:.1f} MiB)")
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
