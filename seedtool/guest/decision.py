"""What to do with the seeds offered at boot: the decision alone, without any I/O.

`decide()` takes what the guest gathered (the envelope as parsed, or why it did not
parse; the signature and validity check's verdict; the ledger's answer; the image's
policy, or why it is invalid; the datasource's own seed) and returns a `Decision`:
the bytes to credit with RNDADDENTROPY and for how many bits, the bytes to mix
uncredited when nothing is credited, and the seed id, key id and reason to record.
`check()` is the signature, validity and binding verdict given the trusted keys. Neither reads
a file, a clock or a device, so every rule can be tested alone; `core.credit_seed`
gathers the inputs and carries the decision out, the ledger's durable record first.

Nothing here may log, print or show seed bytes: a Decision's repr hides them.
Standard library only (it runs at boot).
"""

from __future__ import annotations

import hmac

from ..shared import envelope
from ..shared.envelope import (
    BadSignature,
    EnvelopeExpired,
    EnvelopeNotYetValid,
    MalformedEnvelope,
    UntrustedKey,
)
from ..shared.errors import EnvelopeError
from ..shared.pubkeys import trusted_pairs
from ..shared.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:  # read at boot: no typing at run time (docs/guest.md "Boot time")
    from collections.abc import Sequence

    from ..shared.envelope import UnverifiedEnvelope, VerifiedEnvelope
    from ..shared.pubkeys import PublicKey
    from .platform_seed import DatasourceSeed
    from .policy import Policy

#: the ledger's answers once a verified seed id was recorded: only FRESH may be
#: credited; the others are the reason recorded
LEDGER_FRESH = "fresh"
LEDGER_REPLAY = "already consumed"
LEDGER_INVALID = "ledger invalid"
LEDGER_UNWRITABLE = "ledger not writable"


class Decision(Record):
    """What to credit, what to mix, and what to record (never shows the seed bytes)."""

    __slots__ = ("seed_id", "key_id", "verified", "credit", "bits", "mix", "reason")
    FIELDS = __slots__
    HIDDEN = frozenset({"credit", "mix"})
    #: the envelope's ids (hex) when one parsed, else None
    seed_id: str | None
    key_id: str | None
    #: signature, validity period and ledger all passed
    verified: bool
    #: the bytes to credit (then the local-inputs digest follows them), or None
    credit: bytes | None
    #: the bits to credit for `credit` (0 when None)
    bits: int
    #: every seed byte offered, to write uncredited when nothing is credited
    mix: bytes
    #: why nothing may be credited ('' when `credit` is set)
    reason: str


def short(err: BaseException, limit: int = 120) -> str:
    """The first clause of an error message: stable, short, never data."""
    text = str(err).split(";")[0].strip()
    return text[:limit]


def parse(data: bytes | str | None) -> tuple[UnverifiedEnvelope | None, str]:
    """The envelope `data` holds, or (None, why not); (None, '') when nothing was offered."""
    if data is None:
        return None, ""
    try:
        return envelope.parse(data), ""
    except MalformedEnvelope as e:
        return None, f"malformed: {short(e)}"


#: why a verified envelope's binding (envelope format version 2) refuses it
BOUND_ELSEWHERE = "bound to a seed-server request"
OTHER_INSTANCE = "bound to another instance"
OTHER_REQUEST = "bound to another request"
NOT_BOUND = "not bound to this request"


def check(env: UnverifiedEnvelope, keys: list[PublicKey], policy: Policy,
          now: float, expect: tuple[str, bytes] | None = None
          ) -> tuple[VerifiedEnvelope | None, str]:
    """The verified envelope, or (None, the reason recorded) when its signature or validity
    period does not pass with `keys` and the policy's clock skew at time `now`, or when its
    binding is not `expect`.

    `expect` is (instance, nonce) of the seed-server request this envelope answers; None
    for an envelope from user-data or the disk. A bound envelope (version 2) passes only
    with the `expect` it names: one from user-data or the disk is never credited, so it
    is useless to any instance but the one that asked, and only for that request. An
    unbound one (version 1) never answers a request. The binding is compared after the
    signature, so each reason states what the signing key said.
    """
    verified, refused = _verify(env, keys, policy, now)
    if verified is None:
        return None, refused
    binding = verified.binding
    if expect is None:
        return (None, BOUND_ELSEWHERE) if binding is not None else (verified, "")
    if binding is None:
        return None, NOT_BOUND
    if binding[0] != expect[0]:
        return None, OTHER_INSTANCE
    if not isinstance(expect[1], bytes) or not hmac.compare_digest(binding[1], expect[1]):
        return None, OTHER_REQUEST
    return verified, ""


def _verify(env: UnverifiedEnvelope, keys: list[PublicKey], policy: Policy,
            now: float) -> tuple[VerifiedEnvelope | None, str]:
    if not keys:
        return None, "no trusted keys installed"
    try:
        return envelope.verify(env, trusted_pairs(keys), now=now, skew=policy.clock_skew), ""
    except UntrustedKey:
        return None, f"signed by untrusted key {env.key_id_hex}"
    except BadSignature:
        return None, "signature does not verify"
    except EnvelopeExpired:
        return None, "expired"
    except EnvelopeNotYetValid:
        return None, "not yet valid"
    except EnvelopeError as e:
        return None, f"invalid: {short(e)}"


def decide(
    *,
    offered: bool,
    policy: Policy,
    env: UnverifiedEnvelope | None = None,
    malformed: str = "",
    policy_error: str = "",
    uncreditable: str = "",
    verified: VerifiedEnvelope | None = None,
    refused: str = "",
    ledger: str = "",
    platform_seed: DatasourceSeed | None = None,
    platform: str = "",
) -> Decision:
    """Decide what to credit, mix and record.

    `offered`: an envelope was offered (`env` is it parsed, else `malformed` says
    why not). `policy_error`: why the image's policy is invalid (then nothing is
    credited). `uncreditable`: why the envelope may not be credited whatever its
    signature. `verified`/`refused`: `check()`'s verdict (not called when
    `policy_error` or `uncreditable`).
    `ledger`: a LEDGER_* answer once `verified`'s id was recorded. `platform_seed`
    (of `platform`): the datasource's own seed, credited only when no envelope was
    offered and the policy trusts that platform; mixed in every case.
    """
    reason = "policy invalid" if policy_error else ""
    seed_id = key_id = None
    passed = False
    credit: bytes | None = None
    bits = 0
    mix: list[bytes] = []
    if offered and env is None:
        reason = reason or malformed
    elif env is not None:
        seed_id, key_id = env.seed_id_hex, env.key_id_hex
        mix.append(env.uncredited_seed)
        if policy_error:
            pass
        elif uncreditable:
            reason = uncreditable
        elif verified is None:
            reason = refused
        elif ledger == LEDGER_FRESH:
            # the ledger is the last check: signature, time and never seen before
            # all passed, i.e. the seed may be credited
            passed = True
            credit, bits = verified.seed, verified.creditable_bits
        else:
            reason = ledger or "not recorded in the ledger"
    pseed = platform_seed
    if pseed:
        mix.append(bytes(pseed))
        if not offered and not policy_error:
            if policy.trusts_platform(platform):
                if pseed.creditable_bits:
                    # the whole decoded seed goes in; only what its carrying bytes can
                    # hold is credited (an OEM0 header is mixed, never counted)
                    credit, bits = bytes(pseed), pseed.creditable_bits
                else:
                    reason = (f"platform {platform.lower() or '-'} seed not creditable: "
                              f"{pseed.reason}")
            elif not policy.credit_datasource:
                reason = "datasource seeds are not credited by policy"
            else:
                reason = f"platform {platform or '-'} not trusted"
        elif credit is not None:
            # the envelope is credited; the datasource seed still goes in, uncounted
            credit += bytes(pseed)
    if not offered and not pseed and not reason:
        reason = "no seed offered"
    return Decision(seed_id=seed_id, key_id=key_id, verified=passed, credit=credit,
                    bits=bits, mix=b"".join(mix), reason=reason)


def add_network(d: Decision, network: Sequence[VerifiedEnvelope]) -> Decision:
    """`d` with the seed servers' envelopes added: verified, bound to this boot's requests
    and fresh in the ledger. One credit for everything, at most `envelope.MAX_CREDIT_BITS`.

    What `d` credits (a user-data envelope, a trusted platform's seed) stays credited
    beside them; what it could only mix (a refused envelope) goes in with them uncounted.
    Unchanged when `network` is empty.
    """
    if not network:
        return d
    seeds = b"".join(v.seed for v in network)
    bits = sum(v.creditable_bits for v in network)
    if d.credit is not None:
        credit, bits = d.credit + seeds, bits + d.bits
    else:
        credit = d.mix + seeds
    return Decision(seed_id=d.seed_id, key_id=d.key_id, verified=d.verified, credit=credit,
                    bits=min(envelope.MAX_CREDIT_BITS, bits), mix=d.mix + seeds, reason="")
