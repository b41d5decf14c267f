"""Issuance throughput of `seedtool serve --https`, against Debian's `pollen` in the same run.

Bar (issue 11, "Performance"): with a fresh TCP + TLS connection per request (as booting
VMs make them) at 64 concurrent clients, a SQLite ledger and the `token` and `aws-iid`
identities, seedtool's throughput is at least 1.0x pollen's and its p99 latency at most
1.5x pollen's; a PostgreSQL ledger gives at least 0.7x the SQLite throughput. This prints
the figures and the ratios; it asserts nothing.

pollen (Debian package `pollen`, Ubuntu's entropy server) answers `POST /` with
`challenge=<hex>` by the SHA-512 of the challenge and random bytes from `-device`; it checks
no identity, signs nothing, records nothing: it is the floor of "TLS + HTTP + random
bytes". It runs on 127.0.0.1 with the same ECDSA P-256 certificate as seedtool and reads
/dev/urandom. It exits at start without a syslog socket at /dev/log, so when /dev/log does
not exist this script listens there (a UNIX datagram socket that drops what it gets) for
the run and removes it after; an existing /dev/log is left alone.

seedtool runs as `seedtool serve --https 127.0.0.1:PORT,rate=0` (no per-address rate limit:
it is a policy, and every client here has the same address), its default sources, a fresh
SQLite ledger (WAL, synchronous=FULL: one fsync per issuance) or a throwaway PostgreSQL
cluster (devtools/postgres.py, fsync on). Each client thread cycles over tokens (or signed
identity documents from devtools/fake_imds.py) of its own, so the issue limit is set high
(`--issue-limit 1000000`): every request is a full issuance with its ledger row.

The load generator is the same for every server: subprocesses (--procs) of threads
(together 64 clients), each loop opening a TCP connection, a TLS 1.3 handshake verifying the
server certificate, one HTTP/1.1 request with `Connection: close`, reading to EOF, checking
the answer (status 200, and the envelope field or pollen's challenge hash). The client
shares the machine's cores with the server, as it does for pollen: read ratios, not
absolute figures. Server CPU per request comes from /proc/PID/stat (all threads).

Run: python3 bench/bench_seedserver.py [--seconds 10] [--clients 64] [--procs 4]
     [--cases pollen,token,aws-iid,postgres]
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")
ISSUE_LIMIT = 1_000_000
PER_THREAD = 8  # tokens / documents per client thread


# -- the load generator (also run as `--client SPEC` in its own process) -------------------


def request_bytes(kind: str, item: str) -> bytes:
    """One whole HTTP/1.1 request with a fresh nonce (seedtool) or challenge (pollen)."""
    if kind == "pollen":
        body = ("challenge=" + hashlib.sha512(os.urandom(64)).hexdigest()).encode()
        ctype, path = "application/x-www-form-urlencoded", "/"
    else:
        nonce = base64.b64encode(os.urandom(32)).decode()
        evidence = json.loads(item)
        body = json.dumps({**evidence, "nonce": nonce}).encode()
        ctype, path = "application/json", "/v1/seed"
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


def answer_ok(kind: str, request: bytes, answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        return False
    if kind == "pollen":
        challenge = request.rsplit(b"challenge=", 1)[1]
        return body.split(b"\n", 1)[0].strip() == hashlib.sha512(challenge).hexdigest().encode()
    return b'"envelope"' in body


def one_request(ctx: ssl.SSLContext, port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(request)
            chunks = []
            while chunk := tls.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def client_process(spec: dict[str, Any]) -> dict[str, Any]:
    """Threads of fresh-connection requests until spec["until"] (a time.time())."""
    ctx = ssl.create_default_context(cafile=spec["ca"])
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def run(items: list[str]) -> None:
        mine, bad, i = [], [], 0
        while time.time() < spec["until"]:
            req = request_bytes(spec["kind"], items[i % len(items)])
            i += 1
            t0 = time.perf_counter()
            try:
                ans = one_request(ctx, spec["port"], req)
            except OSError as e:
                bad.append(type(e).__name__)
                continue
            if answer_ok(spec["kind"], req, ans):
                mine.append(time.perf_counter() - t0)
            else:
                bad.append(ans.split(b"\r\n", 1)[0].decode(errors="replace")[:40])
        with lock:
            lat.extend(mine)
            errors.extend(bad)

    threads = [threading.Thread(target=run, args=(items,)) for items in spec["items"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"lat": lat, "errors": errors}


def load(kind: str, port: int, ca: Path, items: list[list[str]], seconds: float,
         procs: int, pid: int) -> dict[str, Any]:
    """Run the clients (one list of items per client thread) against `port`; figures."""
    start = time.time() + 1.0  # let every process get ready first
    until = start + seconds
    per = [items[i::procs] for i in range(procs)]
    children = []
    for part in per:
        spec = {"kind": kind, "port": port, "ca": str(ca), "items": part, "until": until}
        p = subprocess.Popen([sys.executable, __file__, "--client"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, cwd=REPO)
        assert p.stdin is not None
        p.stdin.write(json.dumps(spec).encode())
        p.stdin.close()
        children.append(p)
    load_before = os.getloadavg()[0]
    time.sleep(max(0.0, start - time.time()))
    cpu0 = cpu_seconds(pid)
    rss_peak = 0
    while time.time() < until:
        time.sleep(0.5)
        rss_peak = max(rss_peak, rss_kib(pid))
    cpu1 = cpu_seconds(pid)
    lat: list[float] = []
    errors: list[str] = []
    for p in children:
        assert p.stdout is not None
        got = json.loads(p.stdout.read())
        p.wait(60)
        lat += got["lat"]
        errors += got["errors"]
    lat.sort()
    n = len(lat)
    return {
        "n": n, "errors": len(errors), "error_kinds": sorted(set(errors))[:4],
        "req_s": n / seconds,
        "p50_ms": lat[n // 2] * 1e3 if n else float("nan"),
        "p99_ms": lat[min(n - 1, int(n * 0.99))] * 1e3 if n else float("nan"),
        "cpu_ms": (cpu1 - cpu0) * 1e3 / n if n else float("nan"),
        "rss_mib": rss_peak / 1024, "load": load_before,
    }


# -- /proc --------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (proc(5): fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# -- fixtures: certificate, tokens, documents, servers ------------------------------------


def self_signed_p256(d: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1 (it is its own trust anchor)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "seedtool bench 127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    cert_path, key_path = d / "cert.pem", d / "key.pem"
    cert_path.write_bytes(cert.public_bytes(pem))
    key_path.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{what} did not start listening on 127.0.0.1:{port}") from None
            time.sleep(0.1)


def seedtool(*args: str) -> list[str]:
    return [sys.executable, "-m", "seedtool", *args]


def tokens(ledger: str, count: int) -> list[str]:
    out = subprocess.run(seedtool("serve", "token", "create", "--count", str(count), "--ttl",
                                  "2h", "--ledger", ledger),
                         capture_output=True, text=True, cwd=REPO, check=True)
    return out.stdout.split()


def per_thread(evidence: list[str], clients: int) -> list[list[str]]:
    return [evidence[i * PER_THREAD:(i + 1) * PER_THREAD] for i in range(clients)]


class DevLog:
    """A UNIX datagram socket at /dev/log dropping what it gets, only if none exists."""

    PATH = "/dev/log"

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        if os.path.exists(self.PATH) or os.path.islink(self.PATH):
            return
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.PATH)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.sock is not None
        try:
            while self.sock.recv(65536):
                pass
        except OSError:
            pass

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            os.unlink(self.PATH)
            self.sock = None


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--procs", type=int, default=4, help="load generator processes")
    ap.add_argument("--cases", default="pollen,token,aws-iid,postgres")
    ap.add_argument("--sqlite-dir", type=Path, default=None,
                    help="where the SQLite ledgers go (default: a temporary directory); "
                         "a tmpfs here shows what the fsync of each commit costs")
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="run each seedtool server under cProfile (its main thread: the "
                         "event loop, TLS, HTTP) and write DIR/CASE.prof")
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        print(json.dumps(client_process(json.load(sys.stdin))))
        return
    cases = args.cases.split(",")
    sys.path.insert(0, str(REPO))
    from devtools.fake_imds import ACCOUNT, FakeImds
    from seedtool.keys import generate_keypair

    work = Path(tempfile.mkdtemp(prefix="bss"))
    results: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        cert, key = self_signed_p256(work)
        generate_keypair(work / "signing.key", work / "signing.pub")
        imds = FakeImds(regions=("us-east-1",))
        certs = imds.write_certs(work / "aws-certs.json")
        n_items = args.clients * PER_THREAD

        sqlite_dir = args.sqlite_dir or work

        def serve(case: str, ledger: str, identity: str, evidence: list[str]) -> None:
            port = free_port()
            python = [sys.executable]
            if args.profile:
                python += ["-m", "cProfile", "-o", str(args.profile / f"{case}.prof")]
            proc = subprocess.Popen(
                [*python, "-m", "seedtool", "serve", "--https", f"127.0.0.1:{port},rate=0",
                 "--cert", str(cert), "--key", str(key),
                 "--signing-key", str(work / "signing.key"), "--identity", identity,
                 "--ledger", ledger, "--issue-limit", str(ISSUE_LIMIT), "--no-control"],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
            try:
                wait_port(port, proc, "seedtool serve")
                results[case] = load("seedtool", port, cert, per_thread(evidence, args.clients),
                                     args.seconds, args.procs, proc.pid)
            finally:
                stop(proc)

        if "pollen" in cases:
            pollen = shutil.which("pollen") or "/usr/bin/pollen"
            if not os.path.exists(pollen):
                raise SystemExit("pollen is not installed: apt-get install -y "
                                 "--no-install-recommends pollen")
            devlog = DevLog()
            stack.callback(devlog.close)
            port = free_port()
            proc = subprocess.Popen([pollen, "-https-port", str(port), "-http-port", "",
                                     "-cert", str(cert), "-key", str(key),
                                     "-device", "/dev/urandom"],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                wait_port(port, proc, "pollen")
                results["pollen"] = load("pollen", port, cert, [["-"]] * args.clients,
                                         args.seconds, args.procs, proc.pid)
            finally:
                stop(proc)
        token_ev = None
        if "token" in cases:
            ledger = f"sqlite:{sqlite_dir / 'token.sqlite'}"
            token_ev = [json.dumps({"kind": "token", "token": t})
                        for t in tokens(ledger, n_items)]
            serve("token", ledger, "token", token_ev)
        if "aws-iid" in cases:
            docs = [imds.document() for _ in range(n_items)]
            aws_ev = [json.dumps({"kind": "aws-iid", "document": d, "rsa2048": imds.sign(d)})
                      for d in docs]
            serve("aws-iid", f"sqlite:{sqlite_dir / 'aws.sqlite'}",
                  f"aws-iid:accounts={ACCOUNT},regions=us-east-1,certs={certs}", aws_ev)
        if "postgres" in cases:
            from devtools.postgres import throwaway_cluster

            cluster = stack.enter_context(throwaway_cluster())
            pg_ev = [json.dumps({"kind": "token", "token": t})
                     for t in tokens(cluster.dsn, n_items)]
            serve("postgres", cluster.dsn, "token", pg_ev)

    report(results, args)


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"fresh TCP+TLS 1.3 connection per request, {args.clients} clients "
          f"({args.procs} processes), {args.seconds:g} s per case, ECDSA P-256 certificate; "
          f"{os.cpu_count()} CPUs")
    print(f"{'case':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'srv CPU ms/req':>15} "
          f"{'srv RSS MiB':>12} {'errors':>7} {'load1':>6}")
    for case, r in results.items():
        print(f"{case:>9} {r['req_s']:>8.0f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
              f"{r['cpu_ms']:>15.2f} {r['rss_mib']:>12.1f} {r['errors']:>7} {r['load']:>6.2f}"
              + (f"  {r['error_kinds']}" if r["errors"] else ""))
    base = results.get("pollen")
    for case in ("token", "aws-iid"):
        if base and case in results and base["req_s"]:
            r = results[case]
            print(f"ratio {case}/pollen: {r['req_s'] / base['req_s']:.2f}x throughput, "
                  f"{r['p99_ms'] / base['p99_ms']:.2f}x p99")
    if "token" in results and "postgres" in results and results["token"]["req_s"]:
        print(f"ratio postgres/sqlite (token): "
              f"{results['postgres']['req_s'] / results['token']['req_s']:.2f}x throughput")


if __name__ == "__main__":
    main()
