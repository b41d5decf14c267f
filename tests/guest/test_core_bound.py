"""A bound envelope (format version 2) delivered where no seed-server request was made.

A seed server's envelope names the instance and the nonce of the request it answers
(docs/envelope.md). Arriving in user-data or on disk, `credit_seed` has no request to
match it against: it is mixed, never credited, never recorded in the ledger, with the
stable reason "bound to a seed-server request". The temporary root, its devices and
`reason_of` are test_core's.
"""

from __future__ import annotations

import hashlib

import pytest

from seedtool.generate import SeedFactory
from seedtool.guest import core
from seedtool.guest.core import credit_seed
from tests.guest.test_core import Guest, all_outputs, assert_no_seed, guest, reason_of, seed_of

__all__ = ["guest"]  # the fixture, used by name below

BINDING = ("aws:123456789012:us-east-1:i-0abc123def4567890",
           hashlib.sha256(b"the nonce of someone else's request").digest())


@pytest.mark.parametrize("form", ["text", "raw"])
def test_a_bound_envelope_in_user_data_is_mixed_uncredited(guest: Guest, form: str) -> None:
    new = SeedFactory(guest.private_key).new(binding=BINDING)
    out = reason_of(guest, new.text if form == "text" else new.raw)
    assert out.reason == "bound to a seed-server request"
    assert not out.verified and out.seed_id == new.seed_id
    assert guest.ledger() == ""  # not consumed: it was never a candidate for credit
    assert_no_seed(seed_of(new.raw), *all_outputs(guest))


def test_a_bound_envelope_on_disk_is_mixed_uncredited(guest: Guest) -> None:
    new = SeedFactory(guest.private_key).new(binding=BINDING)
    out = credit_seed(new.raw, "disk", stage=core.STAGE_EARLY, paths=guest.paths)
    assert not out.credited and out.credited_bits == 0
    assert out.reason == "bound to a seed-server request" and guest.ledger() == ""
    assert guest.status()["reason"] == "bound to a seed-server request"
