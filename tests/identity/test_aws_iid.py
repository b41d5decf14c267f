"""The aws-iid identity check against genuine AWS signatures, the fake IMDS and moto.

A genuine IMDS reply (published in gravitational/teleport's lib/auth EC2 join tests)
verifies with the bundled certificate table. Everything else is signed by
devtools/fake_imds.py, whose per-Region test certificates are passed as certs=; each
refusal is one test, with the status the seed server will answer. DescribeInstances
runs against a real moto server on 127.0.0.1. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.fake_imds import TOKEN_HEADER, TTL_HEADER, FakeImds, new_instance_id, self_signed
from seedtool.identity import (
    IDENTITY_CHECKS,
    EvidenceInvalid,
    Identity,
    IdentityError,
    Malformed,
    NotAllowed,
)
from seedtool.identity.aws_iid import AwsIid, Ec2Unavailable, load_certs
from seedtool.shared.errors import CloudError, UsageError

if TYPE_CHECKING:
    from devtools.moto_server import MotoServer

pytest_plugins = ["devtools.moto_server"]

# A genuine rsa2048 reply of an EC2 instance in us-west-2 (2021), as IMDS served it, and
# its document (the signed content, byte for byte).
REAL_RSA2048 = """\
MIAGCSqGSIb3DQEHAqCAMIACAQExDzANBglghkgBZQMEAgEFADCABgkqhkiG9w0BBwGggCSABIIB
23sKICAiYWNjb3VudElkIiA6ICIyNzg1NzYyMjA0NTMiLAogICJhcmNoaXRlY3R1cmUiIDogIng4
Nl82NCIsCiAgImF2YWlsYWJpbGl0eVpvbmUiIDogInVzLXdlc3QtMmEiLAogICJiaWxsaW5nUHJv
ZHVjdHMiIDogbnVsbCwKICAiZGV2cGF5UHJvZHVjdENvZGVzIiA6IG51bGwsCiAgIm1hcmtldHBs
YWNlUHJvZHVjdENvZGVzIiA6IG51bGwsCiAgImltYWdlSWQiIDogImFtaS0wZmE5ZTFmNjQxNDJj
ZGUxNyIsCiAgImluc3RhbmNlSWQiIDogImktMDc4NTE3Y2E4YTcwYTFkZGUiLAogICJpbnN0YW5j
ZVR5cGUiIDogInQyLm1lZGl1bSIsCiAgImtlcm5lbElkIiA6IG51bGwsCiAgInBlbmRpbmdUaW1l
IiA6ICIyMDIxLTA5LTAzVDIxOjI1OjQ0WiIsCiAgInByaXZhdGVJcCIgOiAiMTAuMC4wLjIwOSIs
CiAgInJhbWRpc2tJZCIgOiBudWxsLAogICJyZWdpb24iIDogInVzLXdlc3QtMiIsCiAgInZlcnNp
b24iIDogIjIwMTctMDktMzAiCn0AAAAAAAAxggIvMIICKwIBATBpMFwxCzAJBgNVBAYTAlVTMRkw
FwYDVQQIExBXYXNoaW5ndG9uIFN0YXRlMRAwDgYDVQQHEwdTZWF0dGxlMSAwHgYDVQQKExdBbWF6
b24gV2ViIFNlcnZpY2VzIExMQwIJALZL3lrQCSTMMA0GCWCGSAFlAwQCAQUAoIGYMBgGCSqGSIb3
DQEJAzELBgkqhkiG9w0BBwEwHAYJKoZIhvcNAQkFMQ8XDTIxMDkwMzIxMjU0N1owLQYJKoZIhvcN
AQk0MSAwHjANBglghkgBZQMEAgEFAKENBgkqhkiG9w0BAQsFADAvBgkqhkiG9w0BCQQxIgQgCH2d
JiKmdx9uhxlm8ObWAvFOhqJb7k79+DW/T3ezwVUwDQYJKoZIhvcNAQELBQAEggEANWautigs/qZ6
w8g5/EfWsAFj8kHgUD+xqsQ1HDrBUx3IQ498NMBZ78379B8RBfuzeVjbaf+yugov0fYrDbGvSRRw
myy49TfZ9gdlpWQXzwSg3OPMDNToRoKw00/LQjSxcTCaPP4vMDEIjYMUqZ3i4uWYJJJ0Lb7fDMDk
Anu7yHolVfbnvIAuZe8lGpc7ofCSBG5wulm+/pqzO25YPMH1cLEvOadE+3N2GxK6gRTLJoE98rsm
LDp6OuU/b2QfaxU0ec6OogdtSJto/URI0/ygHmNAzBis470A29yh5nVwm6AkY4krjPsK7uiBIRhs
lr5x0X6+ggQfF2BKAJ/BRcAHNgAAAAAAAA=="""
REAL_DOCUMENT = (
    '{\n  "accountId" : "278576220453",\n  "architecture" : "x86_64",\n'
    '  "availabilityZone" : "us-west-2a",\n  "billingProducts" : null,\n'
    '  "devpayProductCodes" : null,\n  "marketplaceProductCodes" : null,\n'
    '  "imageId" : "ami-0fa9e1f64142cde17",\n  "instanceId" : "i-078517ca8a70a1dde",\n'
    '  "instanceType" : "t2.medium",\n  "kernelId" : null,\n'
    '  "pendingTime" : "2021-09-03T21:25:44Z",\n  "privateIp" : "10.0.0.209",\n'
    '  "ramdiskId" : null,\n  "region" : "us-west-2",\n  "version" : "2017-09-30"\n}'
)
REAL_PENDING = 1630704344.0  # 2021-09-03T21:25:44Z
ACCOUNT = "123456789012"
NOW = 1_800_000_000.0  # a fixed "now" for documents made here


# --- fixtures and helpers -------------------------------------------------------------


@pytest.fixture(scope="module")
def imds() -> Iterator[FakeImds]:
    with FakeImds(regions=("us-east-1", "eu-west-1")) as fake:
        yield fake


@pytest.fixture(scope="module")
def certs(imds: FakeImds, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return imds.write_certs(tmp_path_factory.mktemp("certs") / "certs.json")


@pytest.fixture(scope="module")
def check(certs: Path) -> AwsIid:
    return AwsIid(certs=certs)


def evidence(document: str, rsa2048: str) -> dict[str, object]:
    return {"kind": "aws-iid", "document": document, "rsa2048": rsa2048}


def make(imds: FakeImds, **fields: Any) -> tuple[str, str]:
    """A genuine (document, rsa2048) pair of a new instance started 60 s before NOW."""
    fields.setdefault("pending_time", NOW - 60)
    doc = imds.document(**fields)
    return doc, imds.sign(doc)


def refused(check: AwsIid, ev: dict[str, object], error: type[IdentityError],
            now: float = NOW) -> str:
    """The refusal's message, checked: the expected class and status, one sentence,
    nothing of the evidence in it."""
    with pytest.raises(IdentityError) as info:
        check.verify(ev, now=now)
    err = info.value
    assert type(err) is error, f"{type(err).__name__}: {err}"
    message = str(err)
    assert "\n" not in message and message.count(". ") == 0
    for key, value in ev.items():
        text = str(value)
        if key == "kind" or len(text) < 8:
            continue
        assert text not in message
        for line in text.splitlines():
            if len(line.strip()) > 12:  # a line of the document or of the base64
                assert line.strip() not in message
    return message


def der_of(rsa2048: str) -> bytes:
    return base64.b64decode(rsa2048.replace("\n", ""))


def b64(der: bytes) -> str:
    return base64.b64encode(der).decode()


# --- genuine documents ----------------------------------------------------------------


def test_a_genuine_imds_reply_verifies_with_the_bundled_certificates() -> None:
    got = AwsIid().verify(evidence(REAL_DOCUMENT, REAL_RSA2048), now=REAL_PENDING + 60)
    instance = "aws:278576220453:us-west-2:i-078517ca8a70a1dde"
    assert got == Identity(
        kind="aws-iid", instance=instance, boot=instance + ":2021-09-03T21:25:44Z",
        claims={"account": "278576220453", "region": "us-west-2",
                "image": "ami-0fa9e1f64142cde17", "instance_id": "i-078517ca8a70a1dde",
                "pending_time": "2021-09-03T21:25:44Z", "instance_type": "t2.medium",
                "availability_zone": "us-west-2a", "architecture": "x86_64"})


def test_a_genuine_imds_reply_with_one_byte_of_its_document_changed_is_refused() -> None:
    forged = REAL_DOCUMENT.replace("278576220453", "278576220454")
    refused(AwsIid(), evidence(forged, REAL_RSA2048), EvidenceInvalid, REAL_PENDING + 60)
    # and the same change made inside the signed content breaks its message digest
    der = der_of(REAL_RSA2048).replace(b"278576220453", b"278576220454")
    message = refused(AwsIid(), evidence(forged, b64(der)), EvidenceInvalid,
                      REAL_PENDING + 60)
    assert "digest" in message


def test_the_bundled_table_holds_rsa2048_certificates_of_the_aws_regions() -> None:
    table = load_certs()
    assert {"us-east-1", "us-west-2", "eu-west-1", "ap-northeast-1", "cn-north-1",
            "us-gov-west-1"} <= set(table)
    assert len(table) == 31
    assert all(s.key.key_size == 2048 for signers in table.values() for s in signers)
    raw = json.loads((Path(__file__).parents[2] / "seedtool/identity/data"
                      / "aws-rsa2048-certs.json").read_text())
    assert raw["_source"]["url"].startswith("https://github.com/awsdocs/")


def test_a_document_from_the_fake_imds_verifies(imds: FakeImds, check: AwsIid) -> None:
    doc, sig = make(imds, region="eu-west-1", instance_id="i-0123456789abcdef0",
                    instance_type="m5.large")
    got = check.verify(evidence(doc, sig), now=NOW)
    instance = f"aws:{ACCOUNT}:eu-west-1:i-0123456789abcdef0"
    assert got.kind == "aws-iid"
    assert got.instance == instance
    assert got.boot == instance + ":" + json.loads(doc)["pendingTime"]
    assert got.claims["account"] == ACCOUNT
    assert got.claims["region"] == "eu-west-1"
    assert got.claims["image"] == "ami-0123456789abcdef0"
    assert got.claims["instance_type"] == "m5.large"


@pytest.mark.parametrize("form", [
    {"ber": False}, {"attributes": False}, {"attributes": False, "ber": False},
    {"include_cert": True},
], ids=["der", "no-signed-attributes", "der-no-signed-attributes", "certificates-included"])
def test_other_encodings_of_a_valid_signature_verify(imds: FakeImds, check: AwsIid,
                                                     form: dict[str, bool]) -> None:
    doc, _ = make(imds)
    assert check.verify(evidence(doc, imds.sign(doc, **form)), now=NOW).claims[
        "region"] == "us-east-1"


def test_the_base64_may_come_in_one_line_or_in_crlf_lines(imds: FakeImds,
                                                          check: AwsIid) -> None:
    doc, sig = make(imds)
    assert "\n" in sig
    for form in (sig.replace("\n", ""), sig.replace("\n", "\r\n")):
        check.verify(evidence(doc, form), now=NOW)


def test_a_restart_is_a_new_boot_of_the_same_instance(imds: FakeImds, check: AwsIid) -> None:
    iid = new_instance_id()
    first = check.verify(evidence(*make(imds, instance_id=iid, pending_time=NOW - 600)),
                         now=NOW)
    second = check.verify(evidence(*make(imds, instance_id=iid, pending_time=NOW - 30)),
                          now=NOW)
    assert first.instance == second.instance
    assert first.boot != second.boot


def test_the_check_is_registered() -> None:
    assert IDENTITY_CHECKS.find("aws-iid") is AwsIid


def test_threads_verify_at_once(imds: FakeImds, check: AwsIid) -> None:
    pairs = [make(imds) for _ in range(8)]
    results: dict[int, str] = {}

    def run(i: int) -> None:
        results[i] = check.verify(evidence(*pairs[i]), now=NOW).instance

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i].split(":")[-1] for i in range(8)] == [
        json.loads(doc)["instanceId"] for doc, _ in pairs]


# --- refusals: the signature ----------------------------------------------------------


def test_the_signed_content_must_be_the_document_presented(imds: FakeImds,
                                                           check: AwsIid) -> None:
    """The identity substitution: instance B's valid signature with instance A's
    genuine document must not identify either."""
    doc_a, sig_a = make(imds, instance_id="i-0aaaaaaaaaaaaaaaa")
    doc_b, sig_b = make(imds, instance_id="i-0bbbbbbbbbbbbbbbb")
    check.verify(evidence(doc_a, sig_a), now=NOW)
    check.verify(evidence(doc_b, sig_b), now=NOW)
    message = refused(check, evidence(doc_a, sig_b), EvidenceInvalid)
    assert "not the content" in message
    refused(check, evidence(doc_b, sig_a), EvidenceInvalid)


def test_one_byte_changed_in_the_document_presented(imds: FakeImds, check: AwsIid) -> None:
    doc, sig = make(imds)
    for i in (0, len(doc) // 2, len(doc) - 1):
        changed = doc[:i] + ("X" if doc[i] != "X" else "Y") + doc[i + 1:]
        refused(check, evidence(changed, sig), EvidenceInvalid)
    refused(check, evidence(doc + "\n", sig), EvidenceInvalid)


def test_one_byte_changed_in_the_signed_content_and_the_document(imds: FakeImds,
                                                                 check: AwsIid) -> None:
    doc, sig = make(imds, instance_type="t3.micro")
    forged = doc.replace("t3.micro", "t3.large")
    for form in ({}, {"attributes": False}):
        der = der_of(imds.sign(doc, **form))
        assert der.count(b"t3.micro") == 1
        refused(check, evidence(forged, b64(der.replace(b"t3.micro", b"t3.large"))),
                EvidenceInvalid)


def test_a_signature_by_another_certificate(imds: FakeImds, check: AwsIid) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = self_signed(key, "an impostor")
    doc, _ = make(imds)
    message = refused(check, evidence(doc, imds.sign(doc, cert=cert, key=key)),
                      EvidenceInvalid)
    assert "not by the AWS certificate of us-east-1" in message
    # with its own certificate inside the SignedData: that is never trusted either
    refused(check, evidence(doc, imds.sign(doc, cert=cert, key=key, include_cert=True)),
            EvidenceInvalid)


def test_a_certificate_that_copies_the_regions_issuer_and_serial(imds: FakeImds,
                                                                  check: AwsIid) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa

    real = imds.cert("us-east-1")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    twin = (x509.CertificateBuilder().subject_name(real.subject).issuer_name(real.issuer)
            .public_key(key.public_key()).serial_number(real.serial_number)
            .not_valid_before(real.not_valid_before_utc)
            .not_valid_after(real.not_valid_after_utc).sign(key, hashes.SHA256()))
    doc, _ = make(imds)
    for form in ({}, {"attributes": False}, {"include_cert": True}):
        message = refused(check, evidence(doc, imds.sign(doc, cert=twin, key=key, **form)),
                          EvidenceInvalid)
        assert "does not verify" in message


def test_a_signature_by_another_regions_certificate(imds: FakeImds, check: AwsIid) -> None:
    doc, _ = make(imds, region="us-east-1")
    message = refused(check, evidence(doc, imds.sign(doc, "eu-west-1")), EvidenceInvalid)
    assert "us-east-1" in message


def test_a_region_with_no_certificate(imds: FakeImds, check: AwsIid) -> None:
    doc = imds.document(region="sa-east-1", pending_time=NOW - 60)
    message = refused(check, evidence(doc, imds.sign(doc, "us-east-1")), EvidenceInvalid)
    assert "no AWS RSA-2048 certificate for sa-east-1" in message and "certs=" in message


def built(imds: FakeImds, doc: str, digest: Any, *options: Any) -> str:
    """`cryptography`'s own PKCS#7 of `doc` by us-east-1's key, with `options`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs7

    der = (pkcs7.PKCS7SignatureBuilder().set_data(doc.encode())
           .add_signer(imds.cert("us-east-1"), imds.key("us-east-1"), digest)
           .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary, *options]))
    return b64(der)


def test_a_detached_signature(imds: FakeImds, check: AwsIid) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import pkcs7

    doc, _ = make(imds)
    sig = built(imds, doc, hashes.SHA256(), pkcs7.PKCS7Options.DetachedSignature)
    assert "detached" in refused(check, evidence(doc, sig), Malformed)


def test_a_digest_other_than_sha256(imds: FakeImds, check: AwsIid) -> None:
    from cryptography.hazmat.primitives import hashes

    doc, _ = make(imds)
    refused(check, evidence(doc, built(imds, doc, hashes.SHA512())), Malformed)
    assert check.verify(evidence(doc, built(imds, doc, hashes.SHA256())), now=NOW)


@pytest.mark.parametrize("rsa2048", [
    "not base64 at all!", "QUJD", "QUJDRA", "QUJD RA==", "QUJD\tRA==",
], ids=["not-base64", "not-der", "bad-padding", "space", "tab"])
def test_bad_base64_or_not_der(imds: FakeImds, check: AwsIid, rsa2048: str) -> None:
    doc, _ = make(imds)
    refused(check, evidence(doc, rsa2048), Malformed)


def test_der_that_is_not_a_signed_data(imds: FakeImds, check: AwsIid) -> None:
    from cryptography.hazmat.primitives import serialization

    doc, _ = make(imds)
    cert_der = imds.cert("us-east-1").public_bytes(serialization.Encoding.DER)
    refused(check, evidence(doc, b64(cert_der)), Malformed)
    # a ContentInfo of type data (1.2.840.113549.1.7.1) instead of signedData
    data_info = bytes.fromhex("3011" "06092a864886f70d010701" "a004" "0402" "7b7d")
    assert "not a SignedData" in refused(check, evidence(doc, b64(data_info)), Malformed)


def test_truncated_or_extended_signatures(imds: FakeImds, check: AwsIid) -> None:
    doc, sig = make(imds)
    der = der_of(sig)
    for cut in (1, 2, 7, len(der) // 2, len(der) - 2, len(der) - 1):
        refused(check, evidence(doc, b64(der[:cut])), Malformed)
    refused(check, evidence(doc, b64(der + b"\x00")), Malformed)
    refused(check, evidence(doc, b64(der + der)), Malformed)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=600))
def test_fuzz_garbage_is_refused_as_identity_error(imds: FakeImds, check: AwsIid,
                                                   junk: bytes) -> None:
    doc = imds.document(pending_time=NOW - 60, instance_id="i-0cccccccccccccccc")
    with pytest.raises(IdentityError):
        check.verify(evidence(doc, b64(junk)), now=NOW)


_FUZZ_DOC: dict[str, tuple[str, bytes, Identity]] = {}


def _genuine(imds: FakeImds, check: AwsIid) -> tuple[str, bytes, Identity]:
    if "pair" not in _FUZZ_DOC:
        doc, sig = make(imds, instance_id="i-0dddddddddddddddd")
        _FUZZ_DOC["pair"] = (doc, der_of(sig), check.verify(evidence(doc, sig), now=NOW))
    return _FUZZ_DOC["pair"]


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_a_mutated_signature_verifies_to_the_same_identity_or_is_refused(
        imds: FakeImds, check: AwsIid, data: st.DataObject) -> None:
    doc, der, identity = _genuine(imds, check)
    mutated = bytearray(der)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "set", "cut", "insert"]))
        at = data.draw(st.integers(0, max(0, len(mutated) - 1)))
        if kind == "flip" and mutated:
            mutated[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set" and mutated:
            mutated[at] = data.draw(st.sampled_from([0x00, 0x80, 0x81, 0x84, 0xFF, 0x30]))
        elif kind == "cut":
            del mutated[at:at + data.draw(st.integers(1, 40))]
        else:
            mutated[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        got = check.verify(evidence(doc, b64(bytes(mutated))), now=NOW)
    except IdentityError:
        return
    assert got == identity  # e.g. an unsigned algorithm identifier changed for its twin


_BUNDLED: list[AwsIid] = []


@settings(max_examples=300, deadline=None)
@given(at=st.integers(0, 10**6), bit=st.integers(0, 7))
def test_fuzz_a_genuine_imds_reply_with_one_bit_flipped(at: int, bit: int) -> None:
    if not _BUNDLED:
        _BUNDLED.append(AwsIid())
    der = bytearray(der_of(REAL_RSA2048))
    der[at % len(der)] ^= 1 << bit
    try:
        got = _BUNDLED[0].verify(evidence(REAL_DOCUMENT, b64(bytes(der))),
                                 now=REAL_PENDING + 60)
    except IdentityError:
        return
    assert got.instance == "aws:278576220453:us-west-2:i-078517ca8a70a1dde"


# --- refusals: the document -----------------------------------------------------------


def test_too_old(imds: FakeImds, check: AwsIid, certs: Path) -> None:
    doc, sig = make(imds, pending_time=NOW - 901)
    assert "max_age" in refused(check, evidence(doc, sig), EvidenceInvalid)
    doc, sig = make(imds, pending_time=NOW - 900)
    check.verify(evidence(doc, sig), now=NOW)
    doc, sig = make(imds, pending_time=NOW - 3000)
    AwsIid(certs=certs, max_age=3600).verify(evidence(doc, sig), now=NOW)


def test_pending_time_in_the_future(imds: FakeImds, check: AwsIid) -> None:
    doc, sig = make(imds, pending_time=NOW + 301)
    assert "future" in refused(check, evidence(doc, sig), EvidenceInvalid)
    doc, sig = make(imds, pending_time=NOW + 299)
    check.verify(evidence(doc, sig), now=NOW)


@pytest.mark.parametrize("option, value, field", [
    ("accounts", ["210987654321"], {"account": ACCOUNT}),
    ("regions", ["eu-west-1"], {"region": "us-east-1"}),
    ("images", ["ami-0fffffffffffffff0"], {"image_id": "ami-0123456789abcdef0"}),
])
def test_policy_refuses_with_403(imds: FakeImds, certs: Path, option: str, value: list[str],
                                 field: dict[str, str]) -> None:
    doc, sig = make(imds, **field)
    strict = AwsIid(certs=certs, **{option: value})
    refused(strict, evidence(doc, sig), NotAllowed)
    allowed = AwsIid(certs=certs, **{option: value + list(field.values())})
    allowed.verify(evidence(doc, sig), now=NOW)


def test_policy_is_checked_only_after_the_signature(imds: FakeImds, certs: Path) -> None:
    doc, sig = make(imds, account="210987654321")
    strict = AwsIid(certs=certs, accounts=[ACCOUNT])
    refused(strict, evidence(doc, sig), NotAllowed)
    other, _ = make(imds, account="210987654321")
    refused(strict, evidence(other, sig), EvidenceInvalid)


@pytest.mark.parametrize("change", [
    {"accountId": 123456789012}, {"accountId": "12345"}, {"instanceId": "../../etc"},
    {"imageId": None}, {"pendingTime": "2026-12-02 03:14:15"},
    {"pendingTime": "2026-02-30T03:14:15Z"}, {"region": "US-EAST-1"},
], ids=lambda c: next(iter(c)))
def test_a_signed_document_with_a_malformed_field(imds: FakeImds, check: AwsIid,
                                                  change: dict[str, object]) -> None:
    fields = json.loads(imds.document(pending_time=NOW - 60))
    fields.update(change)
    doc = json.dumps(fields, indent=2, separators=(",", " : "))
    refused(check, evidence(doc, imds.sign(doc, "us-east-1")), (
        EvidenceInvalid if "region" in change else Malformed))


def test_a_signed_content_that_is_not_json(imds: FakeImds, check: AwsIid) -> None:
    doc = "not json"
    refused(check, evidence(doc, imds.sign(doc, "us-east-1")), EvidenceInvalid)


def test_a_signed_document_with_a_key_twice(imds: FakeImds, check: AwsIid) -> None:
    doc = imds.document(pending_time=NOW - 60)
    twice = doc.replace('"accountId" : "123456789012",',
                        '"accountId" : "123456789012",\n  "accountId" : "210987654321",')
    assert twice != doc
    refused(check, evidence(twice, imds.sign(twice, "us-east-1")), EvidenceInvalid)


def test_an_unverified_odd_region_is_not_repeated(imds: FakeImds, check: AwsIid) -> None:
    odd = "<b>" + "x" * 30
    doc = imds.document(region=odd, pending_time=NOW - 60)
    message = refused(check, evidence(doc, imds.sign(doc, "us-east-1")), EvidenceInvalid)
    assert odd not in message and "no recognisable region" in message


@pytest.mark.parametrize("ev", [
    {"kind": "aws-iid"}, {"kind": "aws-iid", "document": "{}"},
    {"kind": "aws-iid", "document": 7, "rsa2048": "QUJD"},
    {"kind": "aws-iid", "document": "{}", "rsa2048": ["QUJD"]},
    {"kind": "aws-iid", "document": "", "rsa2048": "QUJD"},
    {"kind": "gce-iit", "document": "{}", "rsa2048": "QUJD"},
    {"kind": "aws-iid", "document": "x" * 4097, "rsa2048": "QUJD"},
    {"kind": "aws-iid", "document": "{}", "rsa2048": "A" * 16388},
], ids=["nothing", "no-rsa2048", "document-not-text", "rsa2048-not-text", "empty",
        "other-kind", "document-too-long", "rsa2048-too-long"])
def test_malformed_evidence(check: AwsIid, ev: dict[str, object]) -> None:
    refused(check, ev, Malformed)


def test_statuses() -> None:
    assert (Malformed.status, EvidenceInvalid.status, NotAllowed.status) == (400, 401, 403)


# --- the certificate table and the options --------------------------------------------


def test_certs_as_a_pem_bundle_with_region_names(imds: FakeImds, tmp_path: Path) -> None:
    pems = imds.certs_pem()
    bundle = tmp_path / "certs.pem"
    bundle.write_text(f"# us-east-1\n{pems['us-east-1']}\neu-west-1:\n{pems['eu-west-1']}")
    check = AwsIid(certs=bundle)
    assert check.cert_regions == {"us-east-1", "eu-west-1"}
    for region in ("us-east-1", "eu-west-1"):
        check.verify(evidence(*make(imds, region=region)), now=NOW)


def test_a_region_may_list_several_certificates(imds: FakeImds, tmp_path: Path) -> None:
    pems = imds.certs_pem()
    table = tmp_path / "certs.json"
    table.write_text(json.dumps({"us-east-1": pems["eu-west-1"] + pems["us-east-1"]}))
    AwsIid(certs=table).verify(evidence(*make(imds)), now=NOW)


@pytest.mark.parametrize("text", [
    "", "{", "[]", '{"us-east-1": 5}', '{"us-east-1": "no pem here"}', '{"_c": "x"}',
    '{"US East": "-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\\n"}',
    "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
], ids=["empty", "bad-json", "a-list", "not-text", "not-pem", "only-comments",
        "not-a-region", "pem-without-region"])
def test_a_bad_certificate_table_is_a_usage_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "certs"
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        AwsIid(certs=path)
    assert str(path) in str(info.value)


def test_a_certificate_that_is_not_rsa2048_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    cert = self_signed(ec.generate_private_key(ec.SECP256R1()), "not rsa")
    path = tmp_path / "certs.json"
    path.write_text(json.dumps({"us-east-1": cert.public_bytes(
        serialization.Encoding.PEM).decode()}))
    with pytest.raises(UsageError, match="RSA-2048"):
        AwsIid(certs=path)


def test_a_missing_certificate_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="certs="):
        AwsIid(certs=tmp_path / "absent.json")


@pytest.mark.parametrize("kwargs", [
    {"accounts": ["12345"]}, {"accounts": []}, {"regions": ["Virginia"]},
    {"images": ["ubuntu"]}, {"max_age": 0}, {"max_age": float("inf")}, {"skew": -1},
    {"asg": "web"}, {"tags": {"a": "b"}},
], ids=lambda k: next(iter(k)))
def test_bad_options_are_usage_errors(certs: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        AwsIid(certs=certs, **kwargs)


# --- DescribeInstances against moto -----------------------------------------------------


def _moto_ec2(moto: MotoServer) -> Any:
    import boto3

    return boto3.client("ec2", endpoint_url=moto.endpoint_url, region_name="us-east-1")


def _moto_instance(moto: MotoServer) -> tuple[str, str]:
    ec2 = _moto_ec2(moto)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    run = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.micro")
    return run["Instances"][0]["InstanceId"], image


def _described(moto: MotoServer, certs: Path, **kwargs: Any) -> AwsIid:
    pytest.importorskip("boto3")
    return AwsIid(certs=certs, describe=True, endpoint_url=moto.endpoint_url, **kwargs)


def test_describe_accepts_a_running_instance(imds: FakeImds, certs: Path,
                                             moto_server: MotoServer,
                                             aws_env: dict[str, str]) -> None:
    iid, image = _moto_instance(moto_server)
    got = _described(moto_server, certs).verify(
        evidence(*make(imds, instance_id=iid, image_id=image)), now=NOW)
    assert got.instance == f"aws:{ACCOUNT}:us-east-1:{iid}"


def test_describe_refuses_a_terminated_instance(imds: FakeImds, certs: Path,
                                                moto_server: MotoServer,
                                                aws_env: dict[str, str]) -> None:
    iid, image = _moto_instance(moto_server)
    _moto_ec2(moto_server).terminate_instances(InstanceIds=[iid])
    message = refused(_described(moto_server, certs),
                      evidence(*make(imds, instance_id=iid, image_id=image)), NotAllowed)
    assert "terminated" in message


def test_describe_refuses_an_instance_ec2_does_not_know(imds: FakeImds, certs: Path,
                                                        moto_server: MotoServer,
                                                        aws_env: dict[str, str]) -> None:
    message = refused(_described(moto_server, certs),
                      evidence(*make(imds, instance_id="i-0eeeeeeeeeeeeeeee")), NotAllowed)
    assert "does not know" in message


def test_describe_refuses_an_instance_of_another_account(imds: FakeImds, certs: Path,
                                                         moto_server: MotoServer,
                                                         aws_env: dict[str, str]) -> None:
    iid, image = _moto_instance(moto_server)
    refused(_described(moto_server, certs),
            evidence(*make(imds, instance_id=iid, image_id=image, account="210987654321")),
            NotAllowed)


def test_describe_checks_the_auto_scaling_group(imds: FakeImds, certs: Path,
                                                moto_server: MotoServer,
                                                aws_env: dict[str, str]) -> None:
    import boto3

    ec2 = _moto_ec2(moto_server)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    asg = boto3.client("autoscaling", endpoint_url=moto_server.endpoint_url,
                       region_name="us-east-1")
    asg.create_launch_configuration(LaunchConfigurationName="lc", ImageId=image,
                                    InstanceType="t3.micro")
    asg.create_auto_scaling_group(AutoScalingGroupName="web", LaunchConfigurationName="lc",
                                  MinSize=1, MaxSize=1, AvailabilityZones=["us-east-1a"])
    iid = asg.describe_auto_scaling_groups(AutoScalingGroupNames=["web"])[
        "AutoScalingGroups"][0]["Instances"][0]["InstanceId"]
    ev = evidence(*make(imds, instance_id=iid, image_id=image))
    _described(moto_server, certs, asg="web").verify(ev, now=NOW)
    refused(_described(moto_server, certs, asg="db"), ev, NotAllowed)
    loner, _ = _moto_instance(moto_server)
    refused(_described(moto_server, certs, asg="web"),
            evidence(*make(imds, instance_id=loner, image_id=image)), NotAllowed)


def test_describe_checks_tags(imds: FakeImds, certs: Path, moto_server: MotoServer,
                              aws_env: dict[str, str]) -> None:
    iid, image = _moto_instance(moto_server)
    _moto_ec2(moto_server).create_tags(Resources=[iid], Tags=[{"Key": "role",
                                                               "Value": "web"}])
    ev = evidence(*make(imds, instance_id=iid, image_id=image))
    _described(moto_server, certs, tags={"role": "web"}).verify(ev, now=NOW)
    message = refused(_described(moto_server, certs, tags={"role": "db"}), ev, NotAllowed)
    assert "role=db" in message


def test_describe_when_ec2_cannot_be_reached_is_503(
        imds: FakeImds, certs: Path, aws_env: dict[str, str]) -> None:
    """Not the instance's fault: the server answers 503, not 401/403."""
    import socket

    pytest.importorskip("boto3")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    check = AwsIid(certs=certs, describe=True, endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(Ec2Unavailable) as info:
        check.verify(evidence(*make(imds)), now=NOW)
    assert info.value.status == 503
    assert "could not connect to EC2" in str(info.value)
    assert isinstance(info.value.__cause__, CloudError)


def test_describe_with_an_unknown_profile_fails_at_start(certs: Path,
                                                         aws_env: dict[str, str]) -> None:
    pytest.importorskip("boto3")
    with pytest.raises(UsageError, match="profile"):
        AwsIid(certs=certs, describe=True, profile="no-such-profile")


def test_describe_runs_only_after_the_signature(imds: FakeImds, certs: Path) -> None:
    calls: list[str] = []

    def factory(region: str) -> Any:
        calls.append(region)
        raise AssertionError("no EC2 call for evidence that does not verify")

    check = AwsIid(certs=certs, describe=True, ec2_client_factory=factory)
    doc_a, _ = make(imds)
    _, sig_b = make(imds)
    refused(check, evidence(doc_a, sig_b), EvidenceInvalid)
    assert calls == []


# --- the fake IMDS itself -----------------------------------------------------------------


def _http(imds: FakeImds, method: str, path: str,
          headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(imds.endpoint + path, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - 127.0.0.1
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_fake_imds_needs_an_imdsv2_token(imds: FakeImds, check: AwsIid) -> None:
    imds.launch(pending_time=NOW - 60, user_data=b"#cloud-config\n{}\n")
    doc_path = "/latest/dynamic/instance-identity/document"
    assert _http(imds, "GET", doc_path)[0] == 401
    assert _http(imds, "GET", doc_path, {TOKEN_HEADER: "made-up"})[0] == 401
    assert _http(imds, "PUT", "/latest/api/token")[0] == 400
    assert _http(imds, "PUT", "/latest/api/token", {TTL_HEADER: "21601"})[0] == 400
    assert _http(imds, "PUT", "/latest/api/token",
                 {TTL_HEADER: "60", "X-Forwarded-For": "10.0.0.1"})[0] == 403
    assert _http(imds, "GET", "/latest/api/token")[0] == 405
    status, token = _http(imds, "PUT", "/latest/api/token", {TTL_HEADER: "21600"})
    assert status == 200 and len(token) >= 32
    auth = {TOKEN_HEADER: token.decode()}
    status, doc = _http(imds, "GET", doc_path, auth)
    assert status == 200
    status, sig = _http(imds, "GET", "/latest/dynamic/instance-identity/rsa2048", auth)
    assert status == 200
    got = check.verify(evidence(doc.decode(), sig.decode()), now=NOW)
    assert _http(imds, "GET", "/latest/meta-data/instance-id", auth) == (
        200, got.claims["instance_id"].encode())
    assert _http(imds, "GET", "/2021-03-23/meta-data/placement/region", auth) == (
        200, b"us-east-1")
    assert b"placement/" in _http(imds, "GET", "/latest/meta-data/", auth)[1].split(b"\n")
    assert _http(imds, "GET", "/latest/user-data", auth) == (200, b"#cloud-config\n{}\n")
    assert _http(imds, "GET", "/latest/meta-data/absent", auth)[0] == 404
    assert [s.status for s in imds.seen[-3:]] == [200, 200, 404]


def test_fake_imds_without_user_data_answers_404(imds: FakeImds) -> None:
    imds.launch(pending_time=NOW - 60)
    _, token = _http(imds, "PUT", "/latest/api/token", {TTL_HEADER: "60"})
    assert _http(imds, "GET", "/latest/user-data", {TOKEN_HEADER: token.decode()})[0] == 404


def test_fake_imds_signature_has_the_shape_of_real_imds(imds: FakeImds) -> None:
    """BER with indefinite lengths down to the content, as the genuine reply above."""
    doc, sig = make(imds)
    real, fake = der_of(REAL_RSA2048), der_of(sig)
    assert fake[:54] == real[:54]  # ContentInfo .. constructed OCTET STRING headers
    assert fake[54:56] == b"\x04\x82" and fake.count(doc.encode()) == 1
    assert all(len(line) <= 76 for line in sig.splitlines())


def test_fake_imds_version_one_mode_answers_without_a_token() -> None:
    with FakeImds(regions=("us-east-1",), imdsv1=True) as old:
        old.launch(pending_time=NOW - 60)
        status, _ = _http(old, "GET", "/latest/dynamic/instance-identity/document")
        assert status == 200


def test_the_time_now_is_not_used_by_the_check(imds: FakeImds, check: AwsIid) -> None:
    """verify() takes the server's `now`: a document checked at another time gives the
    same answer whatever the wall clock says."""
    doc, sig = make(imds, pending_time=time.time() - 10**6)
    check.verify(evidence(doc, sig), now=time.time() - 10**6 + 5)


def test_fake_imds_signature_passes_the_aws_documented_openssl_check(
        imds: FakeImds, tmp_path: Path) -> None:
    """AWS's page "Verify the instance identity document using the RSA-2048 signature":
    armour the reply as PKCS7 PEM, then `openssl smime -verify -inform PEM -certfile
    certificate -noverify` prints the document out of the signature."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("no openssl command")
    doc, sig = make(imds, region="eu-west-1")
    (tmp_path / "rsa2048").write_text(f"-----BEGIN PKCS7-----\n{sig}\n-----END PKCS7-----\n")
    (tmp_path / "certificate").write_text(imds.certs_pem()["eu-west-1"])
    done = subprocess.run(["openssl", "smime", "-verify", "-in", "rsa2048", "-inform", "PEM",
                           "-certfile", "certificate", "-noverify"], cwd=tmp_path,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == doc.encode()
    assert b"Verification successful" in done.stderr
