"""The guest's seed-server client (seedtool.guest.netseed) against real TLS servers on
127.0.0.1: a small server of this test's own (http.server + ssl, certificates from a CA
generated here) answering `POST /v1/seed` with envelopes SeedFactory binds to the
instance and nonce asked for, or with the errors the contract names.

`SeedServer` and `TestCa` are also used by tests/test_fetch.py.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from seedtool.generate import SeedFactory
from seedtool.guest import decision, netseed
from seedtool.guest.evidence import Evidence, token_file
from seedtool.guest.policy import Policy
from seedtool.shared import envelope

TOKEN = "sdt1_" + "A" * 43


class TestCa:
    """A CA made for one test, and server certificates it signs (EC P-256: fast)."""

    __test__ = False

    def __init__(self, name: str = "seedtool test CA") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(hours=1))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .sign(self.key, hashes.SHA256()))

    def pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.pem())
        return path

    def server_files(self, directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
        """A certificate for `host` (an IP SAN) and its key, written as PEM files."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
                .sign(self.key, hashes.SHA256()))
        directory.mkdir(parents=True, exist_ok=True)
        crt, pem_key = directory / "server.crt", directory / "server.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem_key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        return crt, pem_key


def instance_of(body: dict[str, Any]) -> str:
    """The instance Contract 2 binds to, from the evidence as sent (not verified here)."""
    if body["kind"] == "token":
        return "token:" + hashlib.sha256(body["token"].encode()).hexdigest()[:16]
    if body["kind"] == "aws-iid":
        doc = json.loads(body["document"])
        return f"aws:{doc['accountId']}:{doc['region']}:{doc['instanceId']}"
    payload = body["token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    e = claims["google"]["compute_engine"]
    return f"gce:{e['project_id']}:{e['zone']}:{e['instance_id']}"


class SeedServer:
    """A TLS server answering `POST /v1/seed` as Contract 2 says.

    `mode`: "ok" (a v2 envelope bound to the evidence's instance and the nonce), "slow"
    (holds the request until `release()`), "error" (`status` and `code`), "garbage"
    (200 with no envelope), "other-instance" / "other-nonce" (bound to the wrong thing),
    "unbound" (a version-1 envelope). `bodies` holds every request body received.
    """

    def __init__(self, factory: SeedFactory, ca: TestCa, directory: Path, *,
                 mode: str = "ok", status: int = 409, code: str = "too-many") -> None:
        self.factory, self.mode, self.status, self.code = factory, mode, status, code
        self.bodies: list[dict[str, Any]] = []
        self.released = threading.Event()
        crt, key = ca.server_files(directory)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(crt, key)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.bodies.append(body)
                status, reply = server.answer(self.path, body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.httpd.server_address[1]}"

    def release(self) -> None:
        self.released.set()

    def stop(self) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if path != "/v1/seed":
            return 404, {"error": "not-found", "message": "No such path."}
        if self.mode == "slow":
            self.released.wait(60)
        if self.mode == "error":
            return self.status, {"error": self.code, "message": "Refused by the test."}
        if self.mode == "garbage":
            return 200, {"seed_id": "00"}
        instance, nonce = instance_of(body), base64.b64decode(body["nonce"])
        if self.mode == "other-instance":
            instance = "token:0000000000000000"
        if self.mode == "other-nonce":
            nonce = bytes(32)
        new = (self.factory.new() if self.mode == "unbound"
               else self.factory.new(binding=(instance, nonce)))
        return 200, {"envelope": new.text, "seed_id": new.seed_id,
                     "issued": 1, "key_id": str(new.summary["key_id"])}


@pytest.fixture
def ca(tmp_path: Path) -> TestCa:
    return TestCa()


@pytest.fixture
def factory(private_key: Any) -> Iterator[SeedFactory]:
    with SeedFactory(private_key) as f:
        yield f


@pytest.fixture
def servers(factory: SeedFactory, ca: TestCa, tmp_path: Path) -> Iterator[Any]:
    made: list[SeedServer] = []

    def make(mode: str = "ok", *, other_ca: TestCa | None = None, **kw: Any) -> SeedServer:
        s = SeedServer(factory, other_ca or ca, tmp_path / f"srv{len(made)}", mode=mode, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


@pytest.fixture
def token_evidence(tmp_path: Path) -> Evidence:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return token_file(str(path))


def config(ca_file: Path, *urls: str, timeout: float = 10) -> netseed.Config:
    return netseed.config_from_mapping({"servers": list(urls), "ca": str(ca_file),
                                        "timeout": timeout, "identity": "token:/token"})


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _verify(keypair: Any, out: netseed.NetOutcome, now: float | None = None
            ) -> list[tuple[netseed.ServerResult, Any, str]]:
    import time

    return netseed.check_envelopes(out, [keypair[2]], Policy(), now or time.time())


# --- transport ------------------------------------------------------------------------------


def test_two_good_servers_in_parallel_each_give_a_bound_envelope(
        servers: Any, ca: TestCa, tmp_path: Path, token_evidence: Evidence, keypair: Any
) -> None:
    a, b = servers(), servers()
    out = netseed.fetch_seeds(config(ca.write(tmp_path / "ca.pem"), a.url, b.url),
                              token_evidence)
    assert out.reasons() == {a.url: "ok", b.url: "ok"}
    nonces = [base64.b64decode(s.bodies[0]["nonce"]) for s in (a, b)]
    assert len(set(nonces)) == 2 and all(len(n) == 32 for n in nonces)
    assert [e[1] for e in out.envelopes()] == [(token_evidence.instance, n) for n in nonces]
    checked = _verify(keypair, out)
    assert [(r.server, v is not None, why) for r, v, why in checked] == [
        (a.url, True, ""), (b.url, True, "")]
    seeds = {v.seed_id_hex for _, v, _ in checked}
    assert len(seeds) == 2
    assert all(r.times and r.times[0] <= r.times[1] <= r.times[2] for r in out.results)
    # the evidence went as the contract says, and nothing else
    assert set(a.bodies[0]) == {"kind", "token", "nonce"} and a.bodies[0]["token"] == TOKEN


def test_a_slow_server_is_timeout_and_the_good_one_still_ok(
        servers: Any, ca: TestCa, tmp_path: Path, token_evidence: Evidence) -> None:
    good, slow = servers(), servers("slow")
    out = netseed.fetch_seeds(config(ca.write(tmp_path / "ca.pem"), slow.url, good.url,
                                     timeout=1), token_evidence)
    assert out.reasons() == {slow.url: "timeout", good.url: "ok"}
    assert len(out.envelopes()) == 1


def test_a_certificate_from_another_ca_is_not_trusted(
        servers: Any, ca: TestCa, tmp_path: Path, token_evidence: Evidence) -> None:
    stranger = servers(other_ca=TestCa("another CA"))
    out = netseed.fetch_seeds(config(ca.write(tmp_path / "ca.pem"), stranger.url),
                              token_evidence)
    assert out.reasons() == {stranger.url: "tls: certificate not trusted"}
    assert stranger.bodies == []  # the evidence never went to it


def test_the_system_store_is_not_used(ca: TestCa, tmp_path: Path) -> None:
    ctx = netseed.tls_context(str(ca.write(tmp_path / "ca.pem")))
    assert len(ctx.get_ca_certs()) == 1
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED


def test_a_server_that_is_down_is_unreachable(ca: TestCa, tmp_path: Path,
                                              token_evidence: Evidence) -> None:
    url = f"https://127.0.0.1:{closed_port()}"
    out = netseed.fetch_seeds(config(ca.write(tmp_path / "ca.pem"), url), token_evidence)
    assert out.reasons() == {url: "unreachable"}


@pytest.mark.parametrize(("status", "code"), [(409, "too-many"), (401, "evidence-invalid"),
                                              (503, "ledger-unavailable")])
def test_a_server_error_is_its_code(servers: Any, ca: TestCa, tmp_path: Path,
                                    token_evidence: Evidence, status: int, code: str) -> None:
    s = servers("error", status=status, code=code)
    out = netseed.fetch_seeds(config(ca.write(tmp_path / "ca.pem"), s.url), token_evidence)
    assert out.reasons() == {s.url: code}
    assert out.results[0].status == status and out.envelopes() == []


def test_an_error_code_outside_the_contract_form_is_a_bad_response(
        servers: Any, ca: TestCa, tmp_path: Path, token_evidence: Evidence) -> None:
    s = servers("error", status=403, code="Not Allowed <b>")
    out = netseed.fetch_seeds(config(ca.write(tmp_path / "ca.pem"), s.url), token_evidence)
    assert out.reasons() == {s.url: "bad response"}


def test_200_without_an_envelope_is_a_bad_response(servers: Any, ca: TestCa, tmp_path: Path,
                                                   token_evidence: Evidence) -> None:
    s = servers("garbage")
    out = netseed.fetch_seeds(config(ca.write(tmp_path / "ca.pem"), s.url), token_evidence)
    assert out.reasons() == {s.url: "bad response"}


def test_a_missing_ca_file_sends_nothing(servers: Any, tmp_path: Path,
                                         token_evidence: Evidence) -> None:
    s = servers()
    out = netseed.fetch_seeds(config(tmp_path / "absent.pem", s.url), token_evidence)
    assert out.reasons() == {s.url: "tls: the CA file cannot be loaded"}
    assert s.bodies == []


def test_no_evidence_means_no_request(servers: Any, ca: TestCa, tmp_path: Path) -> None:
    s = servers()
    out = netseed.fetch_seeds(config(ca.write(tmp_path / "ca.pem"), s.url),
                              "evidence: IMDS (token) unreachable")
    assert out.reasons() == {s.url: "evidence: IMDS (token) unreachable"}
    assert s.bodies == []


# --- binding: what core checks with decision.check(..., expect=) ---------------------------


@pytest.mark.parametrize(("mode", "why"), [("other-instance", "bound to another instance"),
                                           ("other-nonce", "bound to another request"),
                                           ("unbound", "not bound to this request")])
def test_an_envelope_bound_to_something_else_is_refused(
        servers: Any, ca: TestCa, tmp_path: Path, token_evidence: Evidence, keypair: Any,
        mode: str, why: str) -> None:
    s = servers(mode)
    out = netseed.fetch_seeds(config(ca.write(tmp_path / "ca.pem"), s.url), token_evidence)
    assert out.reasons() == {s.url: "ok"}  # the transport worked; the binding does not
    [(_, verified, refused)] = _verify(keypair, out)
    assert verified is None and refused == why


def test_a_bound_envelope_is_refused_without_the_expectation(
        servers: Any, ca: TestCa, tmp_path: Path, token_evidence: Evidence, keypair: Any) -> None:
    s = servers()
    out = netseed.fetch_seeds(config(ca.write(tmp_path / "ca.pem"), s.url), token_evidence)
    [(text, _)] = out.envelopes()
    env, _ = decision.parse(text)
    assert env is not None
    verified, refused = decision.check(env, [keypair[2]], Policy(), env.issued_at)
    assert verified is None and refused == "bound to a seed-server request"


# --- what is mixed, and what is shown --------------------------------------------------------


def test_mix_replies_depends_on_every_reply_and_time(
        servers: Any, ca: TestCa, tmp_path: Path, token_evidence: Evidence) -> None:
    a, b = servers(), servers("error")
    out = netseed.fetch_seeds(config(ca.write(tmp_path / "ca.pem"), a.url, b.url),
                              token_evidence)
    first, second = netseed.mix_replies(out), netseed.mix_replies(out)
    assert len(first) == 64 and first != second  # the time of mixing goes in too
    changed = out.replace(results=(out.results[0], out.results[1].replace(reply=b"{}")))
    assert netseed.mix_replies(changed) != first
    assert netseed.mix_replies(netseed.NetOutcome(results=())) == b""


def test_status_repr_and_summary_hold_no_envelope_or_token(
        servers: Any, ca: TestCa, tmp_path: Path, token_evidence: Evidence,
        factory: SeedFactory) -> None:
    s = servers()
    out = netseed.fetch_seeds(config(ca.write(tmp_path / "ca.pem"), s.url), token_evidence)
    [(text, _)] = out.envelopes()
    shown = json.dumps(out.status()) + repr(out) + out.summary() + repr(token_evidence)
    assert text[:40] not in shown and TOKEN not in shown
    assert out.status()[0]["seed_id"] == envelope.parse(text).seed_id_hex
    assert out.summary() == f"{s.url} ok"


# --- the configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "says"), [
    ({"servers": ["http://a.example"]}, "not https"),
    ({"servers": []}, "1 to 16"),
    ({"servers": ["https://user@a.example"]}, "no user"),
    ({"servers": ["https://a.example"], "timeout": 0.5}, "timeout"),
    ({"servers": ["https://a.example"], "timeout": 61}, "timeout"),
    ({"servers": ["https://a.example"], "identity": "token:relative"}, "identity"),
    ({"servers": ["https://a.example"], "extra": 1}, "unknown setting 'extra'"),
    ({"servers": ["https://a.example"], "ca": "relative.pem"}, "absolute"),
])
def test_an_invalid_configuration_is_refused_with_a_sentence(data: dict[str, Any],
                                                              says: str) -> None:
    with pytest.raises(netseed.ConfigError, match=says):
        netseed.config_from_mapping(data)


def test_the_configuration_round_trips() -> None:
    c = netseed.config_from_mapping({"servers": ["https://a.example:8443/seeds"],
                                     "identity": "gce-iit", "timeout": 5})
    assert c == netseed.config_from_mapping(json.loads(json.dumps(c.to_json())))
    assert (c.ca, c.timeout) == (netseed.CA_PATH, 5.0)


def test_fetch_for_image_reads_the_baked_files(servers: Any, ca: TestCa, tmp_path: Path) -> None:
    s = servers()
    root = tmp_path / "root"
    (root / "etc/seedtool").mkdir(parents=True)
    ca.write(root / "etc/seedtool/seed-server-ca.pem")
    (root / "etc/seedtool/token").write_text(TOKEN)
    (root / "etc/seedtool/seed-servers.json").write_text(json.dumps(
        {"version": 1, "servers": [s.url], "ca": netseed.CA_PATH, "timeout": 10,
         "identity": "token:/etc/seedtool/token"}))
    out = netseed.fetch_for_image(str(root))
    assert out is not None and out.reasons() == {s.url: "ok"}
    (root / "etc/seedtool/seed-servers.json").write_text("{")
    bad = netseed.fetch_for_image(str(root))
    assert bad is not None and bad.results[0].reason == "invalid configuration"
    (root / "etc/seedtool/seed-servers.json").unlink()
    assert netseed.fetch_for_image(str(root)) is None


def test_no_configuration_imports_no_tls(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import sys; from seedtool.guest import netseed; "
            f"assert netseed.fetch_for_image({str(tmp_path)!r}) is None; "
            "print(sorted(m for m in ('ssl', 'http.client') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=str(Path(__file__).resolve().parents[2]))
    assert out.stdout.strip() == "[]"
