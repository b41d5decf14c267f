"""The HTTPS seed API of `seedtool serve`, as a real subprocess on 127.0.0.1.

Clients are http.client + ssl pinned to a test CA made here (cryptography); the
identities are `token` (tokens from `seedtool serve token create`) and `aws-iid`
(documents signed by devtools/fake_imds.py, its certificate table through certs=).
"""

from __future__ import annotations

import base64
import datetime
import http.client
import ipaddress
import json
import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools.fake_imds import ACCOUNT, FakeImds
from seedtool.identity.token import token_digest, token_instance
from seedtool.keys import generate_keypair
from seedtool.shared import envelope

from .test_serve_cli import REPO, WAIT, Daemon


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path


def make_pki(d: Path, name: str) -> Pki:
    """A test CA and a server certificate for 127.0.0.1 (EC P-256), written as PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"seedtool test CA {name}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    pki = Pki(d / f"ca-{name}.pem", d / f"server-{name}.pem", d / f"server-{name}.key")
    pki.ca.write_bytes(ca.public_bytes(pem))
    pki.cert.write_bytes(cert.public_bytes(pem))
    pki.key.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    pki.key.chmod(0o600)
    return pki


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "seedtool", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=WAIT, stdin=subprocess.DEVNULL)


@dataclass
class World:
    dir: Path
    pki: Pki
    pki2: Pki
    signing_key: Path
    public: Any
    imds: FakeImds
    certs: Path

    def tokens(self, ledger: Path | str, count: int) -> list[str]:
        spec = ledger if isinstance(ledger, str) else f"sqlite:{ledger}"
        out = cli("serve", "token", "create", "--count", str(count), "--ttl", "1h",
                  "--ledger", spec)
        assert out.returncode == 0, out.stderr
        tokens = out.stdout.split()
        assert len(tokens) == count and all(t.startswith("sdt1_") for t in tokens)
        return tokens


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    d = tmp_path_factory.mktemp("https")
    pub = generate_keypair(d / "signing.key", d / "signing.pub")
    imds = FakeImds(regions=("us-east-1", "eu-west-1"))
    return World(d, make_pki(d, "one"), make_pki(d, "two"), d / "signing.key", pub, imds,
                 imds.write_certs(d / "aws-certs.json"))


class Server:
    """`seedtool serve --https 127.0.0.1:0 ...` with its ledger and its port."""

    def __init__(self, world: World, name: str, *extra: str, rate: str = "rate=0",
                 limit: int = 3, pki: Pki | None = None, ledger: str | None = None,
                 identities: tuple[str, ...] | None = None) -> None:
        self.world = world
        self.pki = pki or world.pki
        self.ledger = world.dir / f"ledger-{name}.sqlite"
        self.ledger_spec = ledger or f"sqlite:{self.ledger}"
        if identities is None:
            identities = ("token",
                          f"aws-iid:accounts={ACCOUNT},regions=us-east-1,certs={world.certs}")
        self.daemon = Daemon(
            "--https", f"127.0.0.1:0,{rate}", "--cert", str(self.pki.cert),
            "--key", str(self.pki.key), "--signing-key", str(world.signing_key),
            *(a for i in identities for a in ("--identity", i)),
            "--ledger", self.ledger_spec, "--issue-limit", str(limit),
            "--no-control", *extra)
        line = self.daemon.wait_for("seedtool serve: https listen=")
        self.port = int(line.split("listen=")[1].split()[0].rsplit(":", 1)[1])

    def conn(self, ca: Path | None = None, tls: ssl.TLSVersion | None = None
             ) -> http.client.HTTPSConnection:
        ctx = ssl.create_default_context(cafile=str(ca or self.pki.ca))
        if tls is not None:
            ctx.minimum_version = ctx.maximum_version = tls
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=WAIT)

    def call(self, method: str, path: str, body: bytes | None = None,
             ctype: str = "application/json", ca: Path | None = None
             ) -> tuple[int, dict[str, str], bytes]:
        c = self.conn(ca)
        try:
            c.request(method, path, body=body, headers={"Content-Type": ctype} if body else {})
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()

    def seed(self, evidence: dict[str, Any], nonce: bytes | None = None
             ) -> tuple[int, dict[str, Any], bytes]:
        nonce = os.urandom(32) if nonce is None else nonce
        body = json.dumps({**evidence, "nonce": base64.b64encode(nonce).decode()}).encode()
        status, _, raw = self.call("POST", "/v1/seed", body)
        return status, json.loads(raw), nonce

    def show(self, instance: str) -> list[dict[str, Any]]:
        out = cli("serve", "ledger", "show", instance, "--ledger", self.ledger_spec, "--json")
        assert out.returncode == 0, out.stderr
        rows: list[dict[str, Any]] = json.loads(out.stdout)
        return rows

    def stop(self, sig: int = signal.SIGTERM) -> int:
        return self.daemon.stop(sig)


@pytest.fixture(scope="module")
def server(world: World) -> Iterator[Server]:
    s = Server(world, "main")
    yield s
    assert s.stop() == 0
    log = "\n".join(s.daemon.lines)
    assert "sdt1_" not in log  # never a token in the log


def verify_bound(world: World, answer: dict[str, Any]) -> envelope.VerifiedEnvelope:
    env = envelope.verify(answer["envelope"], [(world.public.key_id, world.public.raw)])
    assert env.seed_id.hex() == answer["seed_id"] and env.key_id.hex() == answer["key_id"]
    assert env.summary()["format"] == "seedtool-envelope-v2"
    return env


def test_a_token_gets_k_bound_envelopes_then_409(world: World, server: Server) -> None:
    (token,) = world.tokens(server.ledger, 1)
    instance = token_instance(token_digest(token))
    seen = set()
    for n in (1, 2, 3):
        status, answer, nonce = server.seed({"kind": "token", "token": token})
        assert status == 200, answer
        assert answer["issued"] == n
        env = verify_bound(world, answer)
        assert env.binding == (instance, nonce)
        assert [s["name"] for s in env.provenance["sources"]][0] == "seed-server"
        seen.add(answer["seed_id"])
    assert len(seen) == 3
    status, answer, _ = server.seed({"kind": "token", "token": token})
    assert (status, answer["error"]) == (409, "too-many")
    assert token not in answer["message"]
    rows = server.show(instance)
    assert [(r["event"], r["number"]) for r in rows] == [
        ("issued", 1), ("issued", 2), ("issued", 3), ("refused", None)]
    assert {r["seed_id"] for r in rows if r["event"] == "issued"} == seen
    assert {r["client"] for r in rows} == {"127.0.0.1"} and {r["kind"] for r in rows} == {"token"}
    line = server.daemon.wait_for(f"instance={instance} client=127.0.0.1 result=too-many")
    assert "kind=token" in line and "ms=" in line


def test_aws_iid_document_gets_an_envelope_bound_to_its_instance(
        world: World, server: Server) -> None:
    doc = world.imds.document(region="us-east-1")
    fields = json.loads(doc)
    status, answer, nonce = server.seed(
        {"kind": "aws-iid", "document": doc, "rsa2048": world.imds.sign(doc)})
    assert status == 200, answer
    instance = f"aws:{ACCOUNT}:us-east-1:{fields['instanceId']}"
    assert verify_bound(world, answer).binding == (instance, nonce)
    assert [r["seed_id"] for r in server.show(instance)] == [answer["seed_id"]]
    # signed by another Region's key: 401; another account: 403; another Region: 403
    bad = world.imds.sign(doc, region="eu-west-1")
    status, answer, _ = server.seed({"kind": "aws-iid", "document": doc, "rsa2048": bad})
    assert (status, answer["error"]) == (401, "evidence-invalid")
    for other in (world.imds.document(account="210987654321"),
                  world.imds.document(region="eu-west-1")):
        status, answer, _ = server.seed(
            {"kind": "aws-iid", "document": other, "rsa2048": world.imds.sign(other)})
        assert (status, answer["error"]) == (403, "not-allowed")


def test_each_malformed_request_has_its_status(world: World, server: Server) -> None:
    (token,) = world.tokens(server.ledger, 1)
    nonce = base64.b64encode(os.urandom(32)).decode()

    def post(body: Any, ctype: str = "application/json") -> tuple[int, dict[str, Any]]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        status, headers, data = server.call("POST", "/v1/seed", raw, ctype)
        assert headers["content-type"] == "application/json"
        answer = json.loads(data)
        if status != 200:
            assert set(answer) == {"error", "message"} and answer["message"]
        assert token not in data.decode()
        return status, answer

    good = {"kind": "token", "token": token, "nonce": nonce}
    cases: list[tuple[Any, int, str]] = [
        (b"not json", 400, "malformed"),
        ([good], 400, "malformed"),
        ({**good, "extra": 1}, 400, "malformed"),
        ({k: v for k, v in good.items() if k != "nonce"}, 400, "malformed"),
        ({**good, "nonce": base64.b64encode(os.urandom(31)).decode()}, 400, "malformed"),
        ({**good, "nonce": base64.b64encode(os.urandom(33)).decode()}, 400, "malformed"),
        ({**good, "nonce": "*" * 44}, 400, "malformed"),
        ({**good, "kind": "nfs"}, 400, "malformed"),
        ({**good, "token": "sdt1_" + "A" * 43}, 401, "evidence-invalid"),
        ({"kind": "gce-iit", "token": "a.b.c", "nonce": nonce}, 403, "not-allowed"),
        (b'{"kind": "token", "kind": "token"}', 400, "malformed"),
        (json.dumps({**good, "token": "x" * 20000}).encode(), 400, "malformed"),
    ]
    for body, want_status, want_error in cases:
        status, answer = post(body)
        assert (status, answer["error"]) == (want_status, want_error), (body, answer)
    assert post(good, "text/plain")[0] == 400
    status, _, data = server.call("GET", "/v1/seed")
    assert status == 405
    status, _, data = server.call("GET", "/nothing")
    assert status == 404 and json.loads(data)["error"] == "not-found"
    assert post(good)[0] == 200  # the same token still works: nothing above counted


def test_tls_1_2_is_refused(server: Server) -> None:
    c = server.conn(tls=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(ssl.SSLError):
        c.request("GET", "/healthz")
    c.close()
    c = server.conn(tls=ssl.TLSVersion.TLSv1_3)
    c.request("GET", "/healthz")
    assert c.getresponse().status == 200
    c.close()


def test_healthz_and_metrics(world: World, server: Server) -> None:
    status, _, data = server.call("GET", "/healthz")
    assert status == 200 and json.loads(data)["ready"] is True
    assert server.call("POST", "/v1/seed", b"[]")[0] == 400
    (token,) = world.tokens(server.ledger, 1)
    assert server.seed({"kind": "token", "token": token})[0] == 200
    status, headers, data = server.call("GET", "/metrics")
    text = data.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    assert values['seedtool_seeds_issued_total{kind="token"}'] >= 1
    assert values['seedtool_issue_seconds_count{kind="token"}'] >= 1
    assert values['seedtool_issue_seconds_bucket{kind="token",le="+Inf"}'] >= 1
    assert values['seedtool_source_healthy{source="os"}'] == 1
    assert values["seedtool_core_serving"] == 1 and values["seedtool_ledger_writable"] == 1
    assert "# TYPE seedtool_requests_refused_total counter" in text
    assert values['seedtool_requests_refused_total{reason="malformed"}'] >= 1
    assert token not in text


def test_rate_limit_and_certificate_reload(world: World, tmp_path: Path) -> None:
    pki = Pki(tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
    for src, dst in ((world.pki.ca, pki.ca), (world.pki.cert, pki.cert),
                     (world.pki.key, pki.key)):
        dst.write_bytes(src.read_bytes())
    pki.key.chmod(0o600)
    s = Server(world, "limited", rate="rate=0.001,burst=2", pki=pki)
    try:
        for _ in range(2):
            assert s.call("POST", "/v1/seed", b"{}")[0] == 400
        status, headers, data = s.call("POST", "/v1/seed", b"{}")
        assert status == 429 and json.loads(data)["error"] == "rate-limited"
        assert int(headers["retry-after"]) >= 1
        # SIGHUP: a new pair from another CA; new connections present it
        pki.cert.write_bytes(world.pki2.cert.read_bytes())
        pki.key.write_bytes(world.pki2.key.read_bytes())
        s.daemon.proc.send_signal(signal.SIGHUP)
        s.daemon.wait_for("tls-reloaded")
        assert s.call("GET", "/healthz", ca=world.pki2.ca)[0] == 200
        with pytest.raises(ssl.SSLCertVerificationError):
            s.call("GET", "/healthz", ca=world.pki.ca)
        # a broken pair is refused and the last good one stays
        pki.key.write_bytes(world.pki.key.read_bytes())
        s.daemon.proc.send_signal(signal.SIGHUP)
        s.daemon.wait_for("tls-reload-failed")
        assert s.call("GET", "/healthz", ca=world.pki2.ca)[0] == 200
    finally:
        assert s.stop() == 0


def test_sigkill_right_after_a_200_leaves_no_200_without_its_row(world: World) -> None:
    s = Server(world, "killed", limit=1000)
    tokens = world.tokens(s.ledger, 8)
    got: list[str] = []
    lock = threading.Lock()
    done = threading.Event()

    def client(token: str) -> None:
        while not done.is_set():
            try:
                status, answer, _ = s.seed({"kind": "token", "token": token})
            except (OSError, http.client.HTTPException, ValueError):
                return  # the server died under this request
            if status == 200:
                with lock:
                    got.append(answer["seed_id"])
                    if len(got) >= 20:
                        done.set()

    threads = [threading.Thread(target=client, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    assert done.wait(WAIT)
    s.daemon.proc.kill()
    for t in threads:
        t.join(WAIT)
    s.daemon.stop(signal.SIGKILL)
    db = sqlite3.connect(s.ledger)
    try:
        rows = {r[0] for r in db.execute("SELECT seed_id FROM seedtool_issuance")}
    finally:
        db.close()
    assert len(got) >= 20 and set(got) <= rows


def test_slow_clients_do_not_stop_others(world: World, server: Server) -> None:
    holders: list[socket.socket] = []
    try:
        for _ in range(20):  # connected, no TLS handshake
            holders.append(socket.create_connection(("127.0.0.1", server.port)))
        ctx = ssl.create_default_context(cafile=str(server.pki.ca))
        for _ in range(20):  # handshake done, half a request, then silence
            raw = socket.create_connection(("127.0.0.1", server.port))
            tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            tls.sendall(b"POST /v1/seed HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Content-Type: application/json\r\nContent-Length: 400\r\n\r\n{\"ki")
            holders.append(tls)
        half = ctx.wrap_socket(socket.create_connection(("127.0.0.1", server.port)),
                               server_hostname="127.0.0.1")
        half.sendall(b"POST /v1/seed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")
        holders.append(half)
        (token,) = world.tokens(server.ledger, 1)
        status, answer, _ = server.seed({"kind": "token", "token": token})
        assert status == 200, answer
        assert server.call("GET", "/healthz")[0] == 200
        # and the server lets go of them: headers too slow -> closed, body too slow -> 400
        half.settimeout(WAIT)
        assert half.recv(100) == b""
        holders[-2].settimeout(WAIT)
        assert holders[-2].recv(100).startswith(b"HTTP/1.1 400 ")
    finally:
        for h in holders:
            h.close()


def test_unhealthy_required_source_is_503(world: World, sockdir: Path) -> None:
    upstream = Daemon("--egd", "tcp:127.0.0.1:0", "--no-control")
    tcp = upstream.wait_for("listening listener=tcp:").split("listener=tcp:")[1].split()[0]
    s = Server(world, "required", "--require", f"egd:tcp={tcp}", limit=10000)
    try:
        (token,) = world.tokens(s.ledger, 1)
        assert s.call("GET", "/healthz")[0] == 200
        upstream.stop(signal.SIGKILL)
        # the source is read again when a reseed takes its ready chunk: the core
        # reseeds before a read at most 30 s after the last one, so keep asking
        deadline = time.monotonic() + WAIT  # an upper bound on the wait, not a measurement
        while s.call("GET", "/healthz")[0] == 200 and time.monotonic() < deadline:
            assert s.seed({"kind": "token", "token": token})[0] in (200, 503)
            time.sleep(0.5)
        status, _, data = s.call("GET", "/healthz")
        assert status == 503 and json.loads(data) == {"ready": False,
                                                      "reasons": ["sources-unhealthy"]}
        status, answer, _ = s.seed({"kind": "token", "token": token})
        assert (status, answer["error"]) == (503, "sources-unhealthy")
        before = len(s.show(token_instance(token_digest(token))))
        assert s.seed({"kind": "token", "token": token})[0] == 503
        assert len(s.show(token_instance(token_digest(token)))) == before  # no row for a 503
    finally:
        assert s.stop() == 0
        upstream.stop(signal.SIGKILL)


def test_ledger_list_prints_ids_times_and_addresses_never_seeds(
        world: World, server: Server) -> None:
    (token,) = world.tokens(server.ledger, 1)
    status, answer, _ = server.seed({"kind": "token", "token": token})
    assert status == 200
    out = cli("serve", "ledger", "list", "--since", "1h", "--ledger", f"sqlite:{server.ledger}")
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if answer["seed_id"] in ln)
    instance = token_instance(token_digest(token))
    assert f"{instance} issued 1 kind=token client=127.0.0.1" in line
    assert answer["envelope"][:40] not in out.stdout and token not in out.stdout
    later = cli("serve", "ledger", "list", "--since", str(time.time() + 3600), "--json",
                "--ledger", f"sqlite:{server.ledger}")
    assert later.returncode == 0 and json.loads(later.stdout) == []
    bad = cli("serve", "ledger", "list", "--since", "yesterday-ish",
              "--ledger", f"sqlite:{server.ledger}")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "--since" in bad.stderr


def test_option_syntax() -> None:
    from seedtool.serve.https import parse_https_spec
    from seedtool.serve.issuer import parse_identity_spec
    from seedtool.shared.errors import UsageError

    assert parse_https_spec("0.0.0.0:8443") == parse_https_spec("0.0.0.0:8443,rate=20,burst=100")
    assert parse_https_spec("[::1]:443,rate=0").host == "::1"
    assert parse_identity_spec("aws-iid:accounts=111111111111,222222222222,regions=us-east-1") \
        == ("aws-iid", {"accounts": "111111111111,222222222222", "regions": "us-east-1"})
    assert parse_identity_spec("gce-iit:projects=p1,audience=https://seeds.example") == (
        "gce-iit", {"projects": "p1", "audience": "https://seeds.example"})
    assert parse_identity_spec("token") == ("token", {})
    for bad in ("8443", "host:", "h:99999", "h:1,rate=-1", "h:1,burst=0", "h:1,speed=3"):
        with pytest.raises(UsageError):
            parse_https_spec(bad)
    for bad in ("nfs", "token:x=1", "aws-iid:colour=red", "aws-iid:regions=a,regions=b",
                "gce-iit:audience=x,y"):
        with pytest.raises(UsageError):
            parse_identity_spec(bad)


def test_start_up_errors_are_one_sentence(world: World) -> None:
    base = ["serve", "--https", "127.0.0.1:0", "--no-control", "--ledger",
            f"sqlite:{world.dir / 'ledger-errors.sqlite'}"]
    full = [*base, "--cert", str(world.pki.cert), "--key", str(world.pki.key),
            "--signing-key", str(world.signing_key)]
    for args, words in (
            (base + ["--identity", "token"], "--cert"),
            ([*full, "--identity", "aws-iid:colour=red"], "colour"),
            ([*full, "--identity", "aws-iid:regions=us-east-1"], "accounts="),
            ([*full, "--identity", "gce-iit"], "needs audience= and projects="),
            ([*full, "--identity", "gce-iit:projects=p1"], "needs audience="),
            ([*full[:-2], "--signing-key", str(world.pki.ca), "--identity", "token"], "key"),
            ([*base, "--cert", str(world.pki.cert), "--key", str(world.pki2.key),
              "--signing-key", str(world.signing_key), "--identity", "token"], "certificate"),
            (full, "--identity")):
        out = cli(*args)
        assert out.returncode != 0 and words in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_a_ledger_that_cannot_commit_is_503_and_not_ready(world: World, server: Server) -> None:
    (token,) = world.tokens(server.ledger, 1)
    instance = token_instance(token_digest(token))
    holder = sqlite3.connect(server.ledger, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock past the timeout
        status, answer, _ = server.seed({"kind": "token", "token": token})
        assert (status, answer["error"]) == (503, "ledger-unavailable")
        status, _, data = server.call("GET", "/healthz")
        assert status == 503 and json.loads(data)["reasons"] == ["ledger-unavailable"]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert server.show(instance) == []  # the 503 sent nothing and recorded nothing
    status, answer, _ = server.seed({"kind": "token", "token": token})
    assert status == 200 and answer["issued"] == 1
    assert server.call("GET", "/healthz")[0] == 200


def test_gce_iit_with_a_postgresql_ledger(world: World) -> None:
    from devtools.fake_gce_metadata import PROJECT, ZONE, FakeGceMetadata, Vm
    from devtools.postgres import throwaway_cluster

    audience = "https://seeds.example"
    with FakeGceMetadata(vms=[Vm(name="vm-1", instance_id="1111111111111111111"),
                              Vm(name="vm-2", instance_id="2222222222222222222")]) as meta, \
            throwaway_cluster() as pg:
        s = Server(world, "gce", ledger=pg.dsn, identities=(
            f"gce-iit:projects={PROJECT},audience={audience},certs_url={meta.certs_url}",
            "token"))
        try:
            seen = {}
            for name in ("vm-1", "vm-2"):
                vm = meta.vm(name)
                status, answer, nonce = s.seed({"kind": "gce-iit",
                                                "token": meta.token(audience, name)})
                assert status == 200, answer
                instance = f"gce:{PROJECT}:{ZONE}:{vm.instance_id}"
                assert verify_bound(world, answer).binding == (instance, nonce)
                seen[instance] = answer["seed_id"]
            for instance, seed_id in seen.items():
                assert [r["seed_id"] for r in s.show(instance)] == [seed_id]
            status, answer, _ = s.seed({"kind": "gce-iit",
                                        "token": meta.token("https://other.example")})
            assert (status, answer["error"]) == (401, "evidence-invalid")
            (token,) = world.tokens(pg.dsn, 1)  # tokens live in the PostgreSQL ledger too
            assert s.seed({"kind": "token", "token": token})[0] == 200
        finally:
            assert s.stop() == 0
