"""The `gce-iit` identity check against devtools/fake_gce_metadata.py on 127.0.0.1.

Tokens come from the fake metadata server over HTTP (as a VM gets them) or are signed
with its published keys to forge exactly one flaw; the check fetches the fake's
certificate endpoint with its real urllib path, so every request it makes is counted
there. Time is explicit: tokens are made at T0 by the fake's clock, `verify` is given
`now`, and the certificate cache runs on a `Clock` the test moves.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.fake_gce_metadata import PROJECT, ZONE, FakeGceMetadata, Vm, b64url
from seedtool.identity import EvidenceInvalid, IdentityError, Malformed, NotAllowed
from seedtool.identity.gce_iit import (
    CertificatesUnavailable,
    ComputeUnavailable,
    GceIit,
    freshness,
)
from seedtool.shared.errors import UsageError

AUD = "https://seed.example.test:8443"
T0 = 1_800_000_000.0
IDENTITY_PATH = "/computeMetadata/v1/instance/service-accounts/default/identity"


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def fake() -> Iterator[FakeGceMetadata]:
    vms = [Vm(), Vm(name="vm-2", instance_id="5555555555555555555", zone="europe-west1-b"),
           Vm(name="other", instance_id="77", project_id="other-project")]
    with FakeGceMetadata(vms=vms, clock=lambda: T0) as f:
        yield f


@pytest.fixture
def clock() -> Clock:
    return Clock()


def check(fake: FakeGceMetadata, clock: Clock, **kw: Any) -> GceIit:
    kw.setdefault("projects", frozenset({PROJECT}))
    return GceIit(AUD, certs_url=fake.certs_url, clock=clock, **kw)


def metadata(fake: FakeGceMetadata, path: str, name: str | None = None,
             flavor: bool = True) -> str:
    req = urllib.request.Request(fake.url(name) + path,
                                 headers={"Metadata-Flavor": "Google"} if flavor else {})
    with urllib.request.urlopen(req, timeout=10) as answer:  # noqa: S310 - 127.0.0.1
        assert answer.headers["Metadata-Flavor"] == "Google"
        return str(answer.read().decode())


def vm_token(fake: FakeGceMetadata, name: str | None = None, audience: str = AUD,
             fmt: str = "full") -> str:
    return metadata(fake, f"{IDENTITY_PATH}?audience={audience}&format={fmt}", name)


def ev(token: object) -> dict[str, object]:
    return {"kind": "gce-iit", "token": token}


def refused(c: GceIit, token: str, kind: type[IdentityError], now: float = T0 + 5,
            status: int | None = None) -> IdentityError:
    with pytest.raises(kind) as info:
        c.verify(ev(token), now=now)
    err = info.value
    assert status is None or err.status == status
    assert_no_token_in(err, token)
    return err


def assert_no_token_in(err: BaseException, token: str) -> None:
    """No 12-character window of any part of the token is in the message or detail."""
    text = str(err) + getattr(err, "detail", "")
    for part in token.split("."):
        for i in range(0, max(len(part) - 12, 0) + 1, 4):
            window = part[i:i + 12]
            if len(window) == 12:
                assert window not in text, "the message repeats part of the token"


# --- the metadata server -----------------------------------------------------------------


def test_metadata_server_needs_the_flavor_header(fake: FakeGceMetadata) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        metadata(fake, "/computeMetadata/v1/instance/id", flavor=False)
    assert info.value.code == 403
    assert metadata(fake, "/computeMetadata/v1/instance/id") == "4242424242424242424"
    assert metadata(fake, "/computeMetadata/v1/instance/zone", "vm-2").endswith(
        "/zones/europe-west1-b")
    assert metadata(fake, "/computeMetadata/v1/project/project-id", "other") == "other-project"
    with pytest.raises(urllib.error.HTTPError) as info:
        metadata(fake, IDENTITY_PATH + "?format=full")  # no audience
    assert info.value.code == 400


def test_each_vm_gets_its_own_token(fake: FakeGceMetadata, clock: Clock) -> None:
    c = check(fake, clock, zones=frozenset({ZONE, "europe-west1-b"}))
    one = c.verify(ev(vm_token(fake)), now=T0 + 5)
    two = c.verify(ev(vm_token(fake, "vm-2")), now=T0 + 5)
    assert one.kind == "gce-iit"
    assert one.instance == f"gce:{PROJECT}:{ZONE}:4242424242424242424"
    assert one.boot == f"{one.instance}:{int(T0)}"
    assert dict(one.claims) == {"project": PROJECT, "zone": ZONE, "instance_name": "vm-1",
                                "instance_id": "4242424242424242424"}
    assert two.instance == f"gce:{PROJECT}:europe-west1-b:5555555555555555555"
    assert two.boot != one.boot


def test_projects_are_required(fake: FakeGceMetadata, clock: Clock) -> None:
    with pytest.raises(UsageError):
        check(fake, clock, projects=frozenset())
    with pytest.raises(UsageError):
        GceIit("", frozenset({PROJECT}))
    with pytest.raises(UsageError):
        check(fake, clock, zones=frozenset())
    with pytest.raises(UsageError):
        check(fake, clock, max_age=0)


# --- refusals ----------------------------------------------------------------------------


def forged(fake: FakeGceMetadata, header: dict[str, Any], claims: dict[str, Any],
           sign: Any) -> str:
    """A token with this header and these claims, signed by `sign(signing_input)`."""
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(
        json.dumps(claims).encode())
    return signing_input + "." + b64url(sign(signing_input.encode()))


def good_claims(fake: FakeGceMetadata, **over: Any) -> dict[str, Any]:
    claims = fake.claims(fake.vm(), AUD)
    claims.update(over)
    return claims


def test_alg_none_is_refused(fake: FakeGceMetadata, clock: Clock) -> None:
    c = check(fake, clock)
    header = {"alg": "none", "kid": fake.kids[0], "typ": "JWT"}
    body = b64url(json.dumps(header).encode()) + "." + b64url(
        json.dumps(good_claims(fake)).encode())
    refused(c, body + ".", EvidenceInvalid, status=401)
    refused(c, forged(fake, header, good_claims(fake), lambda m: b"x" * 256), EvidenceInvalid)


def test_hs256_with_the_public_key_as_secret_is_refused(fake: FakeGceMetadata,
                                                       clock: Clock) -> None:
    """The classic key-confusion attack: HMAC keyed with the RSA public key's PEM."""
    c = check(fake, clock)
    pem = fake.private_key().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    token = forged(fake, {"alg": "HS256", "kid": fake.kids[0], "typ": "JWT"},
                   good_claims(fake), lambda m: hmac.new(pem, m, hashlib.sha256).digest())
    err = refused(c, token, EvidenceInvalid, status=401)
    assert "RS256" in str(err)


@pytest.mark.parametrize("alg", ["RS512", "PS256", "ES256", "rs256", "RS256 "])
def test_other_algorithms_are_refused(fake: FakeGceMetadata, clock: Clock, alg: str) -> None:
    c = check(fake, clock)
    key = fake.private_key()
    token = forged(fake, {"alg": alg, "kid": fake.kids[0]}, good_claims(fake),
                   lambda m: key.sign(m, padding.PKCS1v15(), hashes.SHA512()))
    refused(c, token, EvidenceInvalid, status=401)


def test_genuine_forged_helper_verifies(fake: FakeGceMetadata, clock: Clock) -> None:
    """The forging helper makes a good token when nothing is wrong, so the refusals
    above fail for the flaw planted, not for the helper."""
    key = fake.private_key()
    token = forged(fake, {"alg": "RS256", "kid": fake.kids[0]}, good_claims(fake),
                   lambda m: key.sign(m, padding.PKCS1v15(), hashes.SHA256()))
    assert check(fake, clock).verify(ev(token), now=T0 + 5).claims["instance_name"] == "vm-1"


def test_unknown_kid_is_refused(fake: FakeGceMetadata, clock: Clock) -> None:
    c = check(fake, clock)
    c.verify(ev(vm_token(fake)), now=T0 + 5)
    clock.t += 61
    token = fake.sign(good_claims(fake), {"alg": "RS256", "kid": "0" * 40})
    refused(c, token, EvidenceInvalid, status=401)
    assert fake.cert_requests == 2  # the unknown kid was looked for once more


def test_signature_by_another_key_is_refused(fake: FakeGceMetadata, clock: Clock) -> None:
    c = check(fake, clock)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = forged(fake, {"alg": "RS256", "kid": fake.kids[0]}, good_claims(fake),
                   lambda m: stranger.sign(m, padding.PKCS1v15(), hashes.SHA256()))
    refused(c, token, EvidenceInvalid, status=401)
    short = fake.token(AUD).rsplit(".", 1)[0] + "." + b64url(b"\x01" * 255)
    refused(c, short, EvidenceInvalid, status=401)


def _tamper_aud(c: dict[str, Any]) -> None:
    c["aud"] = AUD + "/"


def _tamper_project(c: dict[str, Any]) -> None:
    c["google"]["compute_engine"]["project_id"] = "other-project"


def _tamper_instance(c: dict[str, Any]) -> None:
    c["google"]["compute_engine"]["instance_id"] = "1"


def _tamper_created(c: dict[str, Any]) -> None:
    c["google"]["compute_engine"]["instance_creation_timestamp"] += 1


def _tamper_nothing(c: dict[str, Any]) -> None:
    pass


@pytest.mark.parametrize("tamper", [_tamper_aud, _tamper_project, _tamper_instance,
                                    _tamper_created])
def test_tampered_payload_is_refused(fake: FakeGceMetadata, clock: Clock, tamper: Any) -> None:
    c = check(fake, clock, projects=frozenset({PROJECT, "other-project"}))
    head, _, sig = vm_token(fake).split(".")

    def retoken(change: Any) -> str:
        claims = good_claims(fake)
        change(claims)
        return head + "." + b64url(json.dumps(claims).encode()) + "." + sig

    # the same JSON re-encoded verifies (the fake signs json.dumps of the same claims),
    # so the refusal below is the tampering's
    assert c.verify(ev(retoken(_tamper_nothing)), now=T0 + 5)
    refused(c, retoken(tamper), EvidenceInvalid, status=401)


def test_wrong_audience_is_refused(fake: FakeGceMetadata, clock: Clock) -> None:
    c = check(fake, clock)
    err = refused(c, vm_token(fake, audience="https://other-service.example"),
                  EvidenceInvalid, status=401)
    assert AUD in str(err)  # it says which audience to ask for
    refused(c, fake.sign(good_claims(fake, aud=[AUD])), EvidenceInvalid, status=401)


def test_token_times(fake: FakeGceMetadata, clock: Clock) -> None:
    c = check(fake, clock, max_age=10.0**6)
    token = vm_token(fake)  # iat T0, exp T0 + 3600
    assert c.verify(ev(token), now=T0 + 3600 + 59)  # within the leeway
    refused(c, token, EvidenceInvalid, now=T0 + 3600 + 60, status=401)
    assert c.verify(ev(token), now=T0 - 59)
    err = refused(c, token, EvidenceInvalid, now=T0 - 61, status=401)
    assert "future" in str(err)
    long = fake.sign(good_claims(fake, exp=T0 + 7200))
    refused(c, long, EvidenceInvalid, status=401)
    refused(c, fake.sign(good_claims(fake, exp="soon")), EvidenceInvalid, status=401)
    refused(c, fake.sign(good_claims(fake, nbf=T0 + 600)), EvidenceInvalid, status=401)


def test_policy_refusals_are_403(fake: FakeGceMetadata, clock: Clock) -> None:
    c = check(fake, clock, zones=frozenset({ZONE}))
    err = refused(c, vm_token(fake, "other"), NotAllowed, status=403)
    assert "other-project" in str(err)
    err = refused(c, vm_token(fake, "vm-2"), NotAllowed, status=403)
    assert "europe-west1-b" in str(err)
    assert check(fake, clock, projects=frozenset({PROJECT, "other-project"})).verify(
        ev(vm_token(fake, "other")), now=T0 + 5)


def test_too_old_instance_is_refused(fake: FakeGceMetadata, clock: Clock) -> None:
    c = check(fake, clock)  # max_age 900 s
    token = vm_token(fake)
    assert c.verify(ev(token), now=T0 + 900)
    err = refused(c, token, EvidenceInvalid, now=T0 + 901, status=401)
    assert "900" in str(err)
    fake.vm().created = int(T0) + 3600
    refused(c, vm_token(fake), EvidenceInvalid, now=T0 + 5, status=401)  # created later


def test_standard_format_token_is_401_with_the_fix(fake: FakeGceMetadata,
                                                 clock: Clock) -> None:
    """A format=standard token is a genuine Google ID token, but names no instance; so
    is a service account's or a user's. It is well-formed evidence that proves the
    wrong thing: 401, and the message names the fix."""
    c = check(fake, clock)
    err = refused(c, vm_token(fake, fmt="standard"), EvidenceInvalid, status=401)
    assert "format=full" in str(err)


def test_malformed_tokens_are_400(fake: FakeGceMetadata, clock: Clock) -> None:
    c = check(fake, clock)
    token = vm_token(fake)
    head, body, sig = token.split(".")
    for bad in [head + "." + body, token + ".x", head + "=." + body + "." + sig,
                "+" + head[1:] + "." + body + "." + sig, "a.b.c", "..",
                b64url(b"[1]") + "." + body + "." + sig]:
        refused(c, bad, Malformed, status=400)
    # a non-canonical last character (non-zero unused bits) of the header
    assert len(sig) % 4 == 2  # 256 bytes: the last character carries 4 unused bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    same = [ch for ch in alphabet if ch != sig[-1]
            and base64.urlsafe_b64decode(sig[:-1] + ch + "==") == base64.urlsafe_b64decode(
                sig + "==")]
    assert same
    refused(c, head + "." + body + "." + sig[:-1] + same[0], Malformed, status=400)
    dup = b64url(b'{"alg":"HS256","alg":"RS256","kid":"%s"}' % fake.kids[0].encode())
    refused(c, dup + "." + body + "." + sig, Malformed, status=400)
    for value in [None, 12, "", "x" * 8193, ["a"]]:
        with pytest.raises(Malformed):
            c.verify(ev(value), now=T0)
    crit = fake.sign(good_claims(fake), {"alg": "RS256", "kid": fake.kids[0], "crit": ["x"]})
    refused(c, crit, EvidenceInvalid, status=401)


def test_duplicate_claims_are_refused(fake: FakeGceMetadata, clock: Clock) -> None:
    c = check(fake, clock)
    key = fake.private_key()
    claims = json.dumps(good_claims(fake))
    twice = claims[:-1] + ', "aud": "https://other.example"}'
    signing_input = b64url(json.dumps({"alg": "RS256", "kid": fake.kids[0]}).encode()) + \
        "." + b64url(twice.encode())
    token = signing_input + "." + b64url(key.sign(signing_input.encode(), padding.PKCS1v15(),
                                                  hashes.SHA256()))
    refused(c, token, Malformed, status=400)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.one_of(
    st.text(max_size=300),
    st.lists(st.text(alphabet="ABCxyz019-_=+/.", max_size=60), min_size=1, max_size=5)
    .map(".".join),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.integers(), st.none(), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.text(min_size=8190, max_size=9000, alphabet="a."),
))
def test_garbage_only_ever_raises_identity_errors(fake: FakeGceMetadata, clock: Clock,
                                                  garbage: Any) -> None:
    c = _shared_check(fake, clock)
    with pytest.raises(IdentityError) as info:
        c.verify(ev(garbage), now=T0 + 5)
    if isinstance(garbage, str) and len(garbage) >= 12:
        assert garbage not in str(info.value)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_one_character_change_is_refused(fake: FakeGceMetadata, clock: Clock,
                                             data: st.DataObject) -> None:
    c = _shared_check(fake, clock)
    token = _shared_token(fake, clock)
    i = data.draw(st.integers(0, len(token) - 1))
    ch = data.draw(st.sampled_from(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ "))
    mutated = token[:i] + ch + token[i + 1:]
    if mutated == token:
        return
    with pytest.raises(IdentityError) as info:
        c.verify(ev(mutated), now=T0 + 5)
    assert_no_token_in(info.value, mutated)


_SHARED: dict[int, tuple[FakeGceMetadata, GceIit, str]] = {}


def _shared(fake: FakeGceMetadata, clock: Clock) -> tuple[GceIit, str]:
    """One check and one token per fake: hypothesis runs many examples inside one test
    function, with its fixtures made once."""
    held = _SHARED.get(id(fake))
    if held is None or held[0] is not fake:
        held = _SHARED[id(fake)] = (fake, check(fake, clock), vm_token(fake))
    return held[1], held[2]


def _shared_check(fake: FakeGceMetadata, clock: Clock) -> GceIit:
    return _shared(fake, clock)[0]


def _shared_token(fake: FakeGceMetadata, clock: Clock) -> str:
    return _shared(fake, clock)[1]


def test_the_mutation_test_can_fail(fake: FakeGceMetadata, clock: Clock) -> None:
    """The unmutated token verifies with the same check the property uses."""
    assert _shared_check(fake, clock).verify(ev(_shared_token(fake, clock)), now=T0 + 5)


# --- Google's certificates ---------------------------------------------------------------


def test_one_fetch_serves_many_verifications(fake: FakeGceMetadata, clock: Clock) -> None:
    tokens = [vm_token(fake), vm_token(fake, "vm-2")]
    c = check(fake, clock, zones=frozenset({ZONE, "europe-west1-b"}))
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                for t in tokens:
                    c.verify(ev(t), now=T0 + 5)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert fake.cert_requests == 1
    clock.t += 3599
    c.verify(ev(tokens[0]), now=T0 + 5)
    assert fake.cert_requests == 1  # still within max-age=3600


@pytest.mark.parametrize("max_age,expires_in,lifetime", [
    (120, 3600, 120),  # Cache-Control max-age wins over Expires (RFC 9111 section 4.2.1)
    (None, 300, 300),  # Expires minus Date without max-age
])
def test_refetch_after_expiry(fake: FakeGceMetadata, clock: Clock, max_age: int | None,
                              expires_in: int, lifetime: int) -> None:
    fake.certs_max_age, fake.certs_expires_in = max_age, expires_in
    c = check(fake, clock)
    token = vm_token(fake)
    c.verify(ev(token), now=T0 + 5)
    clock.t += lifetime - 1
    c.verify(ev(token), now=T0 + 5)
    assert fake.cert_requests == 1
    clock.t += 1
    c.verify(ev(token), now=T0 + 5)
    assert fake.cert_requests == 2


def test_freshness_follows_rfc_9111() -> None:
    date = formatdate(T0, usegmt=True)
    assert freshness({"cache-control": "public, max-age=19000, must-revalidate"}, T0) == 19000
    assert freshness({"cache-control": "max-age=100", "age": "30"}, T0) == 70
    assert freshness({"cache-control": "max-age=100",
                      "expires": formatdate(T0 + 9, usegmt=True), "date": date}, T0) == 100
    assert freshness({"expires": formatdate(T0 + 500, usegmt=True), "date": date}, 0) == 500
    assert freshness({"expires": formatdate(T0 + 500, usegmt=True)}, T0) == 500
    assert freshness({"cache-control": "no-store, max-age=100"}, T0) == 0
    assert freshness({"expires": "0", "date": date}, T0) == 0
    assert freshness({}, T0) == 0


def test_short_or_missing_lifetimes_still_fetch_at_most_once_a_minute(
        fake: FakeGceMetadata, clock: Clock) -> None:
    fake.certs_max_age, fake.certs_expires_in = 0, None
    c = check(fake, clock)
    token = vm_token(fake)
    for _ in range(10):
        c.verify(ev(token), now=T0 + 5)
        clock.t += 5
    assert fake.cert_requests == 1  # 45 s
    clock.t += 15
    c.verify(ev(token), now=T0 + 5)
    assert fake.cert_requests == 2


def test_key_rotation(fake: FakeGceMetadata, clock: Clock) -> None:
    c = check(fake, clock, max_age=10.0**6)
    old_kid = fake.kids[0]
    old = vm_token(fake)
    c.verify(ev(old), now=T0 + 5)
    new_kid = fake.rotate()  # a second key appears and signs from now on
    new = vm_token(fake)
    assert json.loads(base64.urlsafe_b64decode(new.split(".")[0] + "==")) ["kid"] == new_kid
    refused(c, new, EvidenceInvalid)  # within a minute of the last fetch: not yet known
    assert fake.cert_requests == 1
    clock.t += 60
    assert c.verify(ev(new), now=T0 + 5)  # the unknown kid makes one fetch
    assert fake.cert_requests == 2
    assert c.verify(ev(old), now=T0 + 5)  # both are published
    fake.retire(old_kid)  # the old one disappears
    clock.t += 3600
    assert c.verify(ev(new), now=T0 + 5)  # expiry refetch
    assert fake.cert_requests == 3
    refused(c, old, EvidenceInvalid, status=401)
    assert fake.cert_requests == 3  # the old kid was looked for within the minute: no fetch


def test_unknown_kid_flood_fetches_at_most_once_a_minute(fake: FakeGceMetadata,
                                                         clock: Clock) -> None:
    c = check(fake, clock)
    c.verify(ev(vm_token(fake)), now=T0 + 5)
    assert fake.cert_requests == 1
    for minute in range(3):
        clock.t += 60
        for _ in range(200):
            token = fake.sign(good_claims(fake), {"alg": "RS256", "kid": os.urandom(8).hex()})
            refused(c, token, EvidenceInvalid, status=401)
            clock.t += 0.1
        assert fake.cert_requests == 2 + minute


def test_fetch_failure_is_503_and_not_retried_at_once(fake: FakeGceMetadata,
                                                      clock: Clock) -> None:
    fake.certs_status = 503
    c = check(fake, clock)
    token = vm_token(fake)
    err = refused(c, token, CertificatesUnavailable, status=503)
    assert err.error == "certs-unavailable"
    assert fake.cert_requests == 1
    for _ in range(50):
        refused(c, token, CertificatesUnavailable, status=503)
    assert fake.cert_requests == 1
    fake.certs_status = None
    clock.t += 60
    assert c.verify(ev(token), now=T0 + 5)
    assert fake.cert_requests == 2


def test_failure_after_expiry_and_after_rotation(fake: FakeGceMetadata, clock: Clock) -> None:
    fake.certs_max_age = 300
    c = check(fake, clock)
    token = vm_token(fake)
    c.verify(ev(token), now=T0 + 5)
    fake.certs_status = 500
    clock.t += 60
    fake.rotate()
    # an unknown kid while Google cannot be reached: not the client's fault
    refused(c, vm_token(fake), CertificatesUnavailable, status=503)
    assert c.verify(ev(token), now=T0 + 5)  # the cached answer is still fresh
    clock.t += 300
    refused(c, token, CertificatesUnavailable, status=503)  # expired, and no new answer


def test_unreachable_or_garbage_certificates(fake: FakeGceMetadata, clock: Clock,
                                             tmp_path: Path) -> None:
    token = vm_token(fake)
    gone = GceIit(AUD, frozenset({PROJECT}), certs_url="http://127.0.0.1:9/certs", clock=clock)
    refused(gone, token, CertificatesUnavailable, status=503)

    def garbage(url: str, timeout: float) -> tuple[bytes, dict[str, str]]:
        return b"<html>not json</html>", {}

    refused(check(fake, clock, fetch=garbage), token, CertificatesUnavailable, status=503)

    def no_keys(url: str, timeout: float) -> tuple[bytes, dict[str, str]]:
        return json.dumps({fake.kids[0]: "not a certificate"}).encode(), {}

    refused(check(fake, clock, fetch=no_keys), token, CertificatesUnavailable, status=503)


def test_certificates_from_a_file(fake: FakeGceMetadata, clock: Clock, tmp_path: Path) -> None:
    path = tmp_path / "google-certs.json"
    path.write_bytes(fake.certs_json())
    c = GceIit(AUD, frozenset({PROJECT}), certs=path, certs_url="http://127.0.0.1:9/x",
               clock=clock)
    token = vm_token(fake)
    assert c.verify(ev(token), now=T0 + 5)
    fake.rotate()
    clock.t += 3600
    refused(c, vm_token(fake), EvidenceInvalid, status=401)  # not in the file: no fetch
    assert fake.cert_requests == 0
    (tmp_path / "bad.json").write_text("[]")
    for bad in (tmp_path / "bad.json", tmp_path / "missing.json"):
        with pytest.raises(UsageError):
            GceIit(AUD, frozenset({PROJECT}), certs=bad)


# --- instances.get -----------------------------------------------------------------------


@pytest.fixture
def compute() -> Iterator[Any]:
    pytest.importorskip("google.cloud.compute_v1")
    from devtools.fake_compute import FakeCompute

    with FakeCompute() as f:
        yield f


def test_confirm_with_instances_get(compute: Any, clock: Clock) -> None:
    from datetime import datetime

    from google.auth.credentials import AnonymousCredentials
    from google.cloud import compute_v1

    from devtools.fake_compute import Reply
    from seedtool.clouds import gcp

    client = gcp.client(compute_v1.InstancesClient, AnonymousCredentials(), compute.endpoint)
    client.insert_unary(project=PROJECT, zone=ZONE, instance_resource=compute_v1.Instance(
        name="vm-1", machine_type="e2-small"))
    inst = compute.instances[(PROJECT, ZONE, "vm-1")]
    created = int(datetime.fromisoformat(inst["creationTimestamp"]).timestamp())
    vm = Vm(name="vm-1", instance_id=inst["id"], created=created)
    with FakeGceMetadata(vms=[vm], clock=lambda: created + 30.0) as meta:
        made: list[int] = []

        def factory() -> Any:
            made.append(1)
            return gcp.client(compute_v1.InstancesClient, AnonymousCredentials(),
                              compute.endpoint)

        c = GceIit(AUD, frozenset({PROJECT}), certs_url=meta.certs_url, confirm=True,
                   compute_client_factory=factory, clock=clock)
        token = vm_token(meta)
        now = created + 40.0
        assert inst["status"] == "PROVISIONING"
        assert c.verify(ev(token), now=now).instance.endswith(":" + inst["id"])
        assert compute.calls("get")[-1].path.endswith("/instances/vm-1")
        inst["status"] = "RUNNING"
        assert c.verify(ev(token), now=now)
        assert made == [1]  # one client per thread

        for status in ("STOPPING", "TERMINATED", "SUSPENDED"):
            inst["status"] = status
            err = refused(c, token, EvidenceInvalid, now=now, status=401)
            assert status in str(err)
        inst["status"] = "RUNNING"

        inst["id"] = str(int(inst["id"]) + 1)  # the name now belongs to another instance
        refused(c, token, EvidenceInvalid, now=now, status=401)
        inst["id"] = vm.instance_id

        real_stamp = inst["creationTimestamp"]
        inst["creationTimestamp"] = "2020-01-01T00:00:00.000-08:00"
        refused(c, token, EvidenceInvalid, now=now, status=401)
        inst["creationTimestamp"] = real_stamp

        compute.push(Reply(403, method="get", reason="forbidden"))
        err = refused(c, token, ComputeUnavailable, now=now, status=503)
        assert "compute.instances.get" in str(err)

        del compute.instances[(PROJECT, ZONE, "vm-1")]
        refused(c, token, EvidenceInvalid, now=now, status=401)


def _no_adc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("GOOGLE_APPLICATION_CREDENTIALS", "GCE_METADATA_HOST", "GCE_METADATA_IP",
                "K_SERVICE", "FUNCTION_TARGET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))


def test_confirm_without_credentials_is_refused_at_start(
        fake: FakeGceMetadata, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("google.cloud.compute_v1")
    from seedtool.clouds import gcp

    _no_adc(monkeypatch, tmp_path)
    if gcp.adc_may_exist():  # a Google VM (DMI product name): ADC may come from metadata
        pytest.skip("this machine looks like a Compute Engine VM")
    with pytest.raises(UsageError) as info:
        GceIit(AUD, frozenset({PROJECT}), certs_url=fake.certs_url, confirm=True)
    assert "Application Default Credentials" in str(info.value)


def test_confirm_with_application_default_credentials(
        compute: Any, clock: Clock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The default client: ADC (identity federation, whose token exchange is the fake's
    /token) and `compute_endpoint`; the fake then requires the bearer token."""
    from datetime import datetime

    from google.cloud import compute_v1

    from seedtool.clouds import gcp

    _no_adc(monkeypatch, tmp_path)
    subject = tmp_path / "subject-token"
    subject.write_text("subject-token")
    adc = tmp_path / "adc.json"
    adc.write_text(json.dumps({
        "type": "external_account",
        # a workforce pool: no project number, so google-auth asks Resource Manager
        # for no project id (which it would, off this machine's network)
        "audience": "//iam.googleapis.com/locations/global/workforcePools/ci/providers/ci",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": f"{compute.endpoint}/token",
        "credential_source": {"file": str(subject)},
    }))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    from google.auth.credentials import AnonymousCredentials

    gcp.client(compute_v1.InstancesClient, AnonymousCredentials(), compute.endpoint).insert_unary(
        project=PROJECT, zone=ZONE, instance_resource=compute_v1.Instance(name="vm-1"))
    compute.token = "access-token-for-tests"
    inst = compute.instances[(PROJECT, ZONE, "vm-1")]
    created = int(datetime.fromisoformat(inst["creationTimestamp"]).timestamp())
    with FakeGceMetadata(vms=[Vm(instance_id=inst["id"], created=created)],
                         clock=lambda: created + 1.0) as meta:
        c = GceIit(AUD, frozenset({PROJECT}), certs_url=meta.certs_url, confirm=True,
                   compute_endpoint=compute.endpoint, clock=clock)
        assert c.verify(ev(vm_token(meta)), now=created + 2.0)
    gets = compute.calls("get")
    assert gets and gets[-1].authorization == "Bearer access-token-for-tests"
    assert gets[-1].status == 200
