"""The instance's evidence (seedtool.guest.evidence) from the fake IMDS and the fake GCE
metadata server (devtools/), and the instance string each names; and what the seed
servers see of it through `fetch_seeds`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from devtools.fake_gce_metadata import FakeGceMetadata
from devtools.fake_imds import FakeImds
from seedtool.guest import evidence, netseed
from seedtool.identity.aws_iid import AwsIid
from tests.guest.test_netseed import TOKEN, closed_port, instance_of


def deadline(seconds: float = 10) -> float:
    return time.monotonic() + seconds


def cfg(identity: str, *servers: str) -> netseed.Config:
    return netseed.config_from_mapping({"servers": list(servers) or ["https://a.example"],
                                        "identity": identity})


@pytest.fixture(scope="module")
def imds() -> Any:
    with FakeImds(regions=("eu-west-1",)) as fake:
        yield fake


def test_aws_evidence_is_the_document_and_rsa2048_as_served(imds: FakeImds, tmp_path: Path
                                                            ) -> None:
    inst = imds.launch(region="eu-west-1", instance_id="i-0123456789abcdef0")
    imds.seen.clear()
    ev = evidence.aws_iid(imds.endpoint, deadline=deadline())
    assert ev.fields == {"kind": "aws-iid", "document": inst.document, "rsa2048": inst.rsa2048}
    assert ev.instance == "aws:123456789012:eu-west-1:i-0123456789abcdef0"
    # IMDSv2: the token first (the fake refuses every GET without one)
    assert [(s.method, s.path, s.status) for s in imds.seen] == [
        ("PUT", "/latest/api/token", 200),
        ("GET", "/latest/dynamic/instance-identity/document", 200),
        ("GET", "/latest/dynamic/instance-identity/rsa2048", 200)]
    # the server's own check accepts it and names the same instance
    check = AwsIid(certs=imds.write_certs(tmp_path / "certs.json"))
    assert check.verify(ev.fields, now=time.time()).instance == ev.instance
    assert instance_of(ev.fields) == ev.instance


def test_imds_down_is_a_reason_and_no_request_is_sent(tmp_path: Path) -> None:
    from tests.guest.test_netseed import SeedServer, TestCa

    got = evidence.gather(cfg("aws-iid"), imds=f"http://127.0.0.1:{closed_port()}",
                          deadline=deadline())
    assert got == "evidence: IMDS (token) unreachable"
    ca = TestCa()
    from seedtool.generate import SeedFactory
    from seedtool.keys import generate_keypair, load_private_key

    generate_keypair(tmp_path / "k", tmp_path / "k.pub")
    with SeedFactory(load_private_key(tmp_path / "k")) as factory:
        server = SeedServer(factory, ca, tmp_path / "srv")
        try:
            out = netseed.fetch_seeds(cfg("aws-iid", server.url), got,
                                      cafile=str(ca.write(tmp_path / "ca.pem")))
        finally:
            server.stop()
    assert out.reasons() == {server.url: "evidence: IMDS (token) unreachable"}
    assert server.bodies == []


def test_imds_refusing_is_a_reason(imds: FakeImds) -> None:
    imds.instance = None  # no document: 404
    got = evidence.gather(cfg("aws-iid"), imds=imds.endpoint, deadline=deadline())
    assert got == "evidence: IMDS (document) answered HTTP 404"


def test_a_document_that_is_not_one_is_a_reason(imds: FakeImds) -> None:
    imds.launch(document='{"region": "eu-west-1"}', rsa2048="AAAA")
    assert evidence.gather(cfg("aws-iid"), imds=imds.endpoint, deadline=deadline()) == (
        "evidence: the identity document from IMDS is not one")


def test_no_time_left_asks_nothing(imds: FakeImds) -> None:
    imds.seen.clear()
    got = evidence.gather(cfg("aws-iid"), imds=imds.endpoint, deadline=time.monotonic() - 1)
    assert got == "evidence: no time left to ask IMDS (token)" and imds.seen == []


def test_gce_evidence_is_one_token_per_server_with_its_url_as_audience() -> None:
    a, b = "https://seeds-a.example:8443", "https://seeds-b.example"
    with FakeGceMetadata() as meta:
        got = evidence.gather(cfg("gce-iit", a, b), metadata=meta.url(), deadline=deadline())
        vm = meta.vm()
    assert isinstance(got, dict) and set(got) == {a, b}
    for server, ev in got.items():
        assert isinstance(ev, evidence.Evidence)
        claims = json.loads(evidence.base64.urlsafe_b64decode(
            ev.fields["token"].split(".")[1] + "=="))
        assert claims["aud"] == server
        assert "google" in claims  # format=full
        assert ev.instance == f"gce:{vm.project_id}:{vm.zone}:{vm.instance_id}"
        assert instance_of(ev.fields) == ev.instance


def test_gce_metadata_down_is_a_reason_per_server() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    got = evidence.gather(cfg("gce-iit", "https://a.example"), metadata=url, deadline=deadline())
    assert got == {"https://a.example": "evidence: the metadata server unreachable"}


def test_a_token_without_the_instance_is_refused() -> None:
    with FakeGceMetadata() as meta:
        standard, full = (meta.token("https://a.example", fmt=f) for f in ("standard", "full"))
    assert evidence.gce_token(full).kind == "gce-iit"
    for token in (standard, "not.a.jwt", "x"):
        with pytest.raises(evidence.EvidenceError, match="not a full-format one"):
            evidence.gce_token(token)


def test_token_evidence_and_its_instance(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/token").write_text(f"  {TOKEN}\n")
    got = evidence.gather(cfg("token:/etc/token"), root=str(tmp_path), deadline=deadline())
    assert isinstance(got, evidence.Evidence)
    assert got.fields == {"kind": "token", "token": TOKEN}
    from seedtool.identity.token import token_digest, token_instance

    assert got.instance == token_instance(token_digest(TOKEN))
    assert TOKEN not in repr(got)


@pytest.mark.parametrize("content", [b"", b"two tokens", b"\xff\xfe", b"x" * 5000])
def test_a_token_file_without_one_token_is_a_reason(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "token").write_bytes(content)
    got = evidence.gather(cfg("token:/token"), root=str(tmp_path), deadline=deadline())
    assert got == "evidence: the token file /token does not hold one token".replace(
        "/token", str(tmp_path / "token"))


def test_a_missing_token_file_is_a_reason(tmp_path: Path) -> None:
    got = evidence.gather(cfg("token:/absent"), root=str(tmp_path), deadline=deadline())
    assert isinstance(got, str) and got.startswith("evidence: cannot read the token file")
