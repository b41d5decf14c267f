"""Fuzz target: the guest's seed policy file (`seedtool.guest.policy.load_policy`).

The input is the file's content, read from a real file as the guest reads it.
Invariants: loading ends in a `Policy` or a `PolicyError`; an accepted policy
survives `to_json` -> JSON -> `policy_from_mapping` unchanged, and every trusted
platform it holds is a lower-case platform name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from seedtool.guest import policy as pol

from ._scratch import scratch_path

INSTRUMENT = ["seedtool"]
MAX_LEN = 1024

_PATH = scratch_path("policy.json")
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


def seeds() -> Iterator[bytes]:
    yield b"{}"
    yield json.dumps(pol.Policy().to_json()).encode()
    yield json.dumps({
        "trusted_keys": "/etc/seedtool/keys.pub",
        "trusted_platforms": ["openstack", "Azure", "openstack"],
        "clock_skew": 86400,
        "fail_closed": True,
        "credit_datasource": True,
    }, indent=2).encode()
    yield b'{"clock_skew": -1}'
    yield b'{"trusted_platforms": "openstack"}'
    yield b'{"unknown": 1}'
    yield b"[1, 2]"


def test_one_input(data: bytes) -> None:
    with open(_PATH, "wb") as f:
        f.write(data)
    try:
        policy = pol.load_policy(_PATH)
    except pol.PolicyError:
        return
    again = pol.policy_from_mapping(json.loads(json.dumps(policy.to_json())))
    assert again == policy
    for name in policy.trusted_platforms:
        assert _NAME.fullmatch(name), "an invalid platform name was accepted"
    assert policy.trusted_keys.startswith("/")
    assert 0 <= policy.clock_skew <= pol.MAX_CLOCK_SKEW
