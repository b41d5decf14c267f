"""The guest's decision alone: what to credit, mix and record, with no kernel and no files.

`seedtool.guest.decision` is given envelopes signed here, ledger answers, policies and
datasource seeds, and its `Decision` is checked field by field; the interpreter's
audit events show that deciding opens no file, device or socket. The effects
(`credit_seed` end to end, the ledger, the kernel) are tested in test_core.py and
test_ledger.py.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from seedtool.guest import decision
from seedtool.guest.decision import (
    LEDGER_FRESH,
    LEDGER_INVALID,
    LEDGER_REPLAY,
    LEDGER_UNWRITABLE,
    decide,
)
from seedtool.guest.platform_seed import DatasourceSeed
from seedtool.guest.policy import Policy
from seedtool.keys import public_of
from seedtool.shared import envelope
from seedtool.shared.envelope import UnverifiedEnvelope
from seedtool.shared.pubkeys import PublicKey
from tests.guest.audit import recording

NOW = 1_800_000_000
TTL = 3600
KEY = Ed25519PrivateKey.generate()
PUB = public_of(KEY)
DEFAULT = Policy()
TRUSTS_OPENSTACK = Policy(credit_datasource=True, trusted_platforms=("openstack",))


def make(seed: bytes | None = None, key: Ed25519PrivateKey = KEY, pub: PublicKey = PUB,
         issued: int = NOW) -> UnverifiedEnvelope:
    raw = envelope.build(seed or os.urandom(64), private_key=key, key_id=pub.key_id,
                         seed_id=os.urandom(envelope.SEED_ID_LEN), provenance={}, ttl=TTL,
                         now=issued)
    return envelope.parse(raw)


def ds_seed(platform: str = "openstack", size: int = 512) -> DatasourceSeed:
    return DatasourceSeed(os.urandom(size), platform, min(8 * size, 512))


def verified_inputs(env: UnverifiedEnvelope) -> dict[str, Any]:
    verified, refused = decision.check(env, [PUB], DEFAULT, NOW)
    assert verified is not None and refused == ""
    return {"offered": True, "env": env, "verified": verified}


# ---- an envelope ---------------------------------------------------------------------


def test_a_verified_fresh_envelope_is_credited_for_its_bits() -> None:
    env = make(os.urandom(64))
    d = decide(policy=DEFAULT, ledger=LEDGER_FRESH, **verified_inputs(env))
    assert d.verified and d.reason == ""
    assert d.credit == env.uncredited_seed and d.bits == 512
    assert d.mix == env.uncredited_seed
    assert (d.seed_id, d.key_id) == (env.seed_id_hex, PUB.key_id.hex())
    assert env.uncredited_seed.hex() not in repr(d) and "credit=" not in repr(d)


@pytest.mark.parametrize("size, bits", [(16, 128), (32, 256), (64, 512), (512, 512)])
def test_the_credit_is_capped_at_what_the_seed_holds(size: int, bits: int) -> None:
    d = decide(policy=DEFAULT, ledger=LEDGER_FRESH, **verified_inputs(make(os.urandom(size))))
    assert d.bits == bits and d.credit is not None and len(d.credit) == size


@pytest.mark.parametrize("ledger", [LEDGER_REPLAY, LEDGER_INVALID, LEDGER_UNWRITABLE, ""])
def test_only_a_fresh_ledger_record_lets_a_verified_seed_be_credited(ledger: str) -> None:
    env = make()
    d = decide(policy=DEFAULT, ledger=ledger, **verified_inputs(env))
    assert d.credit is None and d.bits == 0 and not d.verified
    assert d.reason == (ledger or "not recorded in the ledger")
    assert d.mix == env.uncredited_seed  # mixed all the same
    assert d.seed_id == env.seed_id_hex


def test_the_verdicts_of_check() -> None:
    other = Ed25519PrivateKey.generate()
    other_pub = public_of(other)
    env = make()
    assert decision.check(env, [], DEFAULT, NOW) == (None, "no trusted keys installed")
    untrusted = make(key=other, pub=other_pub)
    assert decision.check(untrusted, [PUB], DEFAULT, NOW) == (
        None, f"signed by untrusted key {other_pub.key_id.hex()}")
    # another key claiming the trusted key's id
    impostor = make(key=other, pub=PUB)
    assert decision.check(impostor, [PUB], DEFAULT, NOW) == (None, "signature does not verify")
    skew = DEFAULT.clock_skew
    assert decision.check(env, [PUB], DEFAULT, NOW + TTL + skew + 1) == (None, "expired")
    assert decision.check(env, [PUB], DEFAULT, NOW - skew - 1) == (None, "not yet valid")
    assert decision.check(env, [PUB], DEFAULT, NOW + TTL + skew)[0] is not None
    assert decision.check(env, [PUB], DEFAULT, NOW - skew)[0] is not None
    strict = Policy(clock_skew=0)
    assert decision.check(env, [PUB], strict, NOW - 1) == (None, "not yet valid")


def test_a_refused_envelope_is_mixed_with_the_reason() -> None:
    env = make()
    d = decide(offered=True, policy=DEFAULT, env=env, refused="signature does not verify")
    assert d.credit is None and d.reason == "signature does not verify"
    assert d.mix == env.uncredited_seed and not d.verified


def test_an_uncreditable_form_or_an_invalid_policy_credits_nothing_whatever_else_says() -> None:
    env = make()
    passing = {"ledger": LEDGER_FRESH, **verified_inputs(env)}
    d = decide(policy=DEFAULT, uncreditable="not in the form seedtool writes: x", **passing)
    assert d.credit is None and d.reason == "not in the form seedtool writes: x"
    d = decide(policy=DEFAULT, policy_error="bad json", uncreditable="x", **passing)
    assert d.credit is None and d.reason == "policy invalid" and not d.verified
    assert d.mix == env.uncredited_seed


def test_malformed_and_nothing_offered() -> None:
    env, why = decision.parse("not an envelope")
    assert env is None and why.startswith("malformed: ")
    d = decide(offered=True, policy=DEFAULT, malformed=why)
    assert d.reason == why and d.seed_id is None and d.mix == b"" and d.credit is None
    assert decision.parse(None) == (None, "")
    d = decide(offered=False, policy=DEFAULT)
    assert d.reason == "no seed offered" and d.mix == b"" and d.credit is None
    d = decide(offered=False, policy=DEFAULT, policy_error="bad json")
    assert d.reason == "policy invalid"
    d = decide(offered=True, policy=DEFAULT, malformed=why, policy_error="bad json")
    assert d.reason == "policy invalid"


# ---- a datasource seed ----------------------------------------------------------------


def test_a_trusted_platform_seed_is_credited_when_no_envelope_was_offered() -> None:
    seed = ds_seed(size=64)
    d = decide(offered=False, policy=TRUSTS_OPENSTACK, platform_seed=seed, platform="OpenStack")
    assert d.credit == bytes(seed) and d.bits == 512 and d.reason == ""
    assert d.seed_id is None and not d.verified and d.mix == bytes(seed)


@pytest.mark.parametrize("policy, platform, reason", [
    (DEFAULT, "openstack", "datasource seeds are not credited by policy"),
    (Policy(credit_datasource=True, trusted_platforms=("azure",)), "openstack",
     "platform openstack not trusted"),
    (Policy(credit_datasource=True), "", "platform - not trusted"),
])
def test_an_untrusted_platform_seed_is_mixed_with_the_reason(policy: Policy, platform: str,
                                                             reason: str) -> None:
    seed = ds_seed(platform)
    d = decide(offered=False, policy=policy, platform_seed=seed, platform=platform)
    assert d.credit is None and d.reason == reason and d.mix == bytes(seed)


def test_a_trusted_platform_seed_that_carries_nothing_is_mixed_only() -> None:
    seed = DatasourceSeed(b"\0" * 64, "openstack", 0, "all its bytes are equal")
    d = decide(offered=False, policy=TRUSTS_OPENSTACK, platform_seed=seed, platform="openstack")
    assert d.credit is None and d.mix == bytes(seed)
    assert d.reason == "platform openstack seed not creditable: all its bytes are equal"


def test_an_envelope_wins_over_a_datasource_seed_which_goes_in_uncounted() -> None:
    env, seed = make(os.urandom(32)), ds_seed(size=64)
    d = decide(policy=TRUSTS_OPENSTACK, ledger=LEDGER_FRESH, platform_seed=seed,
               platform="openstack", **verified_inputs(env))
    assert d.credit == env.uncredited_seed + bytes(seed) and d.bits == 256
    assert d.mix == env.uncredited_seed + bytes(seed)
    # a refused envelope does not let the datasource seed be credited instead
    d = decide(offered=True, policy=TRUSTS_OPENSTACK, env=env, refused="expired",
               platform_seed=seed, platform="openstack")
    assert d.credit is None and d.reason == "expired"
    assert d.mix == env.uncredited_seed + bytes(seed)


# ---- rules over every combination -----------------------------------------------------


#: audit events (PEP 578) that mean a file, a device, a process or the network was used
IO_EVENTS = ("open", "fcntl.", "socket.", "subprocess.", "os.", "shutil.", "glob.")


def io_of(seen: list[tuple[str, tuple[object, ...]]]) -> list[str]:
    return [event for event, _ in seen if event.startswith(IO_EVENTS)]


def test_deciding_touches_no_file_or_device_and_keeps_its_rules() -> None:
    env = make(os.urandom(48))
    verified = decision.check(env, [PUB], DEFAULT, NOW)[0]
    envelopes = [(False, None, "", None), (True, None, "malformed: x", None),
                 (True, env, "", None), (True, env, "", verified)]
    seeds = [None, ds_seed(size=16), DatasourceSeed(b"\1" * 32, "openstack", 0, "why")]
    policies = [DEFAULT, TRUSTS_OPENSTACK]
    with recording() as seen:
        open(os.devnull, "rb").close()
    assert io_of(seen) == ["open"]  # the recorder sees I/O
    count = 0
    with recording() as seen:
        decision.check(env, [PUB], DEFAULT, NOW)
        for (offered, e, malformed, ver), ledger, pol, perr, unc, seed in itertools.product(
                envelopes, ["", LEDGER_FRESH, LEDGER_REPLAY], policies, ["", "bad"],
                ["", "wrong form"], seeds):
            refused = "expired" if e is not None and ver is None else ""
            d = decide(offered=offered, policy=pol, env=e, malformed=malformed,
                       policy_error=perr, uncreditable=unc, verified=ver, refused=refused,
                       ledger=ledger, platform_seed=seed, platform="openstack")
            count += 1
            if d.credit is None:
                assert d.bits == 0 and d.reason and not d.verified
            else:
                # credited only from a fully checked envelope or a trusted datasource seed
                assert d.reason == "" and not perr
                assert d.verified == (e is not None)
                if e is not None:
                    assert ver is not None and ledger == LEDGER_FRESH and not unc
                else:
                    assert seed is not None and not offered and pol is TRUSTS_OPENSTACK
                assert 0 < d.bits <= min(8 * len(d.credit), envelope.MAX_CREDIT_BITS)
                assert d.credit == d.mix  # what is credited is exactly what was offered
            # every seed byte offered is mixed, credited or not
            assert d.mix == (e.uncredited_seed if e is not None else b"") + bytes(seed or b"")
    assert io_of(seen) == [] and count == 4 * 3 * 2 * 2 * 2 * 3


# ---- a bound envelope (format version 2, from a seed server) --------------------------


INSTANCE = "gce:my-project:europe-west1-b:1234567890123456789"
NONCE = bytes(range(32))


def make_bound(instance: str = INSTANCE, nonce: bytes = NONCE, key: Ed25519PrivateKey = KEY,
               pub: PublicKey = PUB, issued: int = NOW) -> UnverifiedEnvelope:
    raw = envelope.build(os.urandom(64), private_key=key, key_id=pub.key_id,
                         seed_id=os.urandom(envelope.SEED_ID_LEN), provenance={}, ttl=TTL,
                         now=issued, binding=(instance, nonce))
    return envelope.parse(raw)


def test_a_bound_envelope_passes_only_for_the_request_it_names() -> None:
    env = make_bound()
    verified, refused = decision.check(env, [PUB], DEFAULT, NOW, expect=(INSTANCE, NONCE))
    assert refused == "" and verified is not None and verified.binding == (INSTANCE, NONCE)
    d = decide(offered=True, policy=DEFAULT, env=env, verified=verified, ledger=LEDGER_FRESH)
    assert d.verified and d.credit == env.uncredited_seed and d.bits == 512


@pytest.mark.parametrize("expect, reason", [
    # from user-data or the disk: no request to answer
    (None, "bound to a seed-server request"),
    (("gce:my-project:europe-west1-b:1234567890123456780", NONCE), "bound to another instance"),
    ((INSTANCE[:-1], NONCE), "bound to another instance"),
    ((INSTANCE, NONCE[:31] + b"\xff"), "bound to another request"),
    ((INSTANCE, b"\0" * 32), "bound to another request"),
    # both differ: the instance is named first
    (("token:0123456789abcdef", b"\0" * 32), "bound to another instance"),
])
def test_a_bound_envelope_for_anything_else_is_refused(expect: tuple[str, bytes] | None,
                                                       reason: str) -> None:
    env = make_bound()
    assert decision.check(env, [PUB], DEFAULT, NOW, expect=expect) == (None, reason)
    d = decide(offered=True, policy=DEFAULT, env=env, refused=reason)
    assert d.credit is None and d.bits == 0 and not d.verified and d.reason == reason
    assert d.mix == env.uncredited_seed and d.seed_id == env.seed_id_hex


def test_an_unbound_envelope_never_answers_a_request() -> None:
    env = make()
    assert decision.check(env, [PUB], DEFAULT, NOW, expect=(INSTANCE, NONCE)) == (
        None, "not bound to this request")
    assert decision.check(env, [PUB], DEFAULT, NOW)[0] is not None  # as before


def test_the_signature_and_time_are_judged_before_the_binding() -> None:
    other = Ed25519PrivateKey.generate()
    forged = make_bound(key=other, pub=PUB)  # claims the trusted key's id
    want = (INSTANCE, NONCE)
    assert decision.check(forged, [PUB], DEFAULT, NOW, expect=want) == (
        None, "signature does not verify")
    assert decision.check(forged, [PUB], DEFAULT, NOW) == (None, "signature does not verify")
    skew = DEFAULT.clock_skew
    assert decision.check(make_bound(), [PUB], DEFAULT, NOW + TTL + skew + 1, expect=want) == (
        None, "expired")
    assert decision.check(make_bound(), [], DEFAULT, NOW, expect=want) == (
        None, "no trusted keys installed")


def test_checking_bound_envelopes_touches_no_file_or_device() -> None:
    bound, plain = make_bound(), make()
    expects = [None, (INSTANCE, NONCE), (INSTANCE, b"\0" * 32), ("aws:1:r:i-1", NONCE)]
    with recording() as seen:
        open(os.devnull, "rb").close()
    assert io_of(seen) == ["open"]
    with recording() as seen:
        verdicts = [decision.check(e, [PUB], DEFAULT, NOW, expect=x)
                    for e in (bound, plain) for x in expects]
        decisions = [decide(offered=True, policy=DEFAULT, env=bound, verified=v, refused=r,
                            ledger=LEDGER_FRESH) for v, r in verdicts[:4]]
    assert io_of(seen) == []
    assert [r for _, r in verdicts] == [
        "bound to a seed-server request", "", "bound to another request",
        "bound to another instance", "", "not bound to this request",
        "not bound to this request", "not bound to this request"]
    assert [d.bits for d in decisions] == [0, 512, 0, 0]
