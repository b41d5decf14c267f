"""`seedtool fetch` end to end: the command as a subprocess against TLS seed servers on
127.0.0.1 (tests/guest/test_netseed.py's SeedServer) and devtools' fake IMDS."""

# ruff: noqa: F811 - the fixtures imported from test_netseed are parameters here
from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devtools.fake_imds import FakeImds
from seedtool.shared import envelope
from tests.guest.test_netseed import (  # noqa: F401 - fixtures
    TOKEN,
    TestCa,
    ca,
    closed_port,
    factory,
    servers,
    token_evidence,
)


def fetch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "seedtool", "fetch", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def token(token_evidence: Any, tmp_path: Path) -> Path:
    return tmp_path / "token"  # where token_evidence wrote it


def test_fetch_writes_the_envelopes_and_prints_each_server(
        servers: Any, ca: TestCa, tmp_path: Path, token: Path, keypair: Any) -> None:
    a, b = servers(), servers("error", status=409, code="too-many")
    out = tmp_path / "out" / "seeds"
    out.parent.mkdir()
    p = fetch("--server", a.url, "--server", b.url, "--ca", str(ca.write(tmp_path / "ca.pem")),
              "--identity", f"token:{token}", "-o", str(out), "--trusted-key", str(keypair[1]))
    assert p.returncode == 0, p.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 1 and stat.S_IMODE(out.stat().st_mode) == 0o600
    env = envelope.parse(lines[0])
    assert env.binding is not None and env.binding[0].startswith("token:")
    assert f"{a.url}: ok (seed {env.seed_id_hex}, issued 1); verified: signed by a trusted " \
        "key, bound to this instance and nonce" in p.stdout
    assert f"{b.url}: too-many (HTTP 409)" in p.stdout
    assert lines[0][:40] not in p.stdout + p.stderr and TOKEN not in p.stdout + p.stderr


def test_fetch_json(servers: Any, ca: TestCa, tmp_path: Path, token: Path) -> None:
    a = servers()
    p = fetch("--server", a.url, "--ca", str(ca.write(tmp_path / "ca.pem")), "--identity",
              f"token:{token}", "-o", str(tmp_path / "e"), "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["envelopes"] == 1 and doc["servers"][0]["result"] == "ok"
    assert doc["servers"][0]["instance"].startswith("token:")


def test_no_envelope_is_one_sentence_and_nothing_written(
        servers: Any, ca: TestCa, tmp_path: Path, token: Path) -> None:
    stranger = servers(other_ca=TestCa("another CA"))
    down = f"https://127.0.0.1:{closed_port()}"
    out = tmp_path / "e"
    p = fetch("--server", stranger.url, "--server", down, "--ca",
              str(ca.write(tmp_path / "ca.pem")), "--identity", f"token:{token}", "-o", str(out))
    assert p.returncode == 1
    assert p.stderr.strip() == (f"seedtool: error: no seed server gave an envelope "
                                f"({stranger.url} tls: certificate not trusted, {down} "
                                "unreachable); nothing was written")
    assert not out.exists()


def test_an_envelope_that_does_not_verify_is_not_written(
        servers: Any, ca: TestCa, tmp_path: Path, token: Path) -> None:
    from seedtool.keys import generate_keypair

    other = generate_keypair(tmp_path / "o.key", tmp_path / "o.pub")
    assert other is not None
    a = servers("other-nonce")
    out = tmp_path / "e"
    p = fetch("--server", a.url, "--ca", str(ca.write(tmp_path / "ca.pem")), "--identity",
              f"token:{token}", "-o", str(out), "--trusted-key", str(tmp_path / "o.pub"))
    assert p.returncode == 1 and "no seed server gave a verified envelope" in p.stderr
    assert "not verified: signed by untrusted key" in p.stdout
    assert not out.exists()


def test_fetch_with_the_aws_identity_from_imds(servers: Any, ca: TestCa, tmp_path: Path) -> None:
    a = servers()
    with FakeImds(regions=("us-east-1",)) as imds:
        imds.launch(instance_id="i-0fedcba9876543210")
        p = fetch("--server", a.url, "--ca", str(ca.write(tmp_path / "ca.pem")), "--identity",
                  "aws-iid", "--imds", imds.endpoint, "-o", str(tmp_path / "e"), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["servers"][0]["instance"] == (
        "aws:123456789012:us-east-1:i-0fedcba9876543210")
    assert a.bodies[0]["kind"] == "aws-iid" and set(a.bodies[0]) == {
        "kind", "document", "rsa2048", "nonce"}


@pytest.mark.parametrize(("args", "says"), [
    (["--server", "http://a.example"], "not https"),
    (["--server", "https://a.example", "--identity", "password"], "--identity must be"),
    (["--server", "https://a.example", "--ca", "NOTPEM"], "no PEM certificate"),
])
def test_bad_arguments_are_one_sentence(tmp_path: Path, ca: TestCa, args: list[str],
                                        says: str) -> None:
    not_pem = tmp_path / "x.pem"
    not_pem.write_text("x\n")
    full = ["--ca", str(ca.write(tmp_path / "ca.pem")), "--identity", "aws-iid", "-o",
            str(tmp_path / "e"), *args]
    full = [str(not_pem) if a == "NOTPEM" else a for a in full]
    p = fetch(*full)
    assert p.returncode == 2 and says in p.stderr and "Traceback" not in p.stderr, p.stderr


# --- against the real server: `seedtool serve --https` (Contract 2 from both sides) -------------


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from seedtool.keys import generate_keypair
    from tests.serve.test_https import Server, World, make_pki

    d = tmp_path_factory.mktemp("real")
    pub = generate_keypair(d / "signing.key", d / "signing.pub")
    imds = FakeImds(regions=("us-east-1", "eu-west-1"))
    world = World(d, make_pki(d, "one"), make_pki(d, "two"), d / "signing.key", pub, imds,
                  imds.write_certs(d / "aws-certs.json"))
    server = Server(world, "main")
    with imds:
        yield world, server
    assert server.stop() == 0


def test_fetch_from_the_real_server_with_a_token_then_too_many(real_server: Any,
                                                               tmp_path: Path) -> None:
    world, server = real_server
    (tok,) = world.tokens(server.ledger, 1)
    (tmp_path / "token").write_text(tok + "\n")
    url = f"https://127.0.0.1:{server.port}"
    args = ["--server", url, "--ca", str(world.pki.ca), "--identity",
            f"token:{tmp_path / 'token'}", "--trusted-key", str(world.dir / "signing.pub")]
    for n in (1, 2, 3):
        p = fetch(*args, "-o", str(tmp_path / f"e{n}"))
        assert p.returncode == 0, p.stderr
        assert f", issued {n}); verified: signed by a trusted key, bound to this instance " \
            "and nonce" in p.stdout
    p = fetch(*args, "-o", str(tmp_path / "e4"))
    assert p.returncode == 1 and f"{url}: too-many (HTTP 409)" in p.stdout
    assert tok not in p.stdout + p.stderr
    # another CA's pin: refused before any evidence is sent
    p = fetch(*args[:2], "--ca", str(world.pki2.ca), *args[4:], "-o", str(tmp_path / "e5"))
    assert p.returncode == 1 and f"{url}: tls: certificate not trusted" in p.stdout


def test_fetch_from_the_real_server_with_the_aws_identity(real_server: Any,
                                                          tmp_path: Path) -> None:
    world, server = real_server
    world.imds.launch(region="us-east-1")
    p = fetch("--server", f"https://127.0.0.1:{server.port}", "--ca", str(world.pki.ca),
              "--identity", "aws-iid", "--imds", world.imds.endpoint, "--trusted-key",
              str(world.dir / "signing.pub"), "-o", str(tmp_path / "e"), "--json")
    assert p.returncode == 0, p.stderr
    [s] = json.loads(p.stdout)["servers"]
    assert s["result"] == "ok" and s["verdict"].startswith("verified")
    assert s["instance"].startswith("aws:") and s["instance"].endswith(
        json.loads(world.imds.instance.document)["instanceId"])
