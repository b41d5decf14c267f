"""Seeds the guest must not credit: mixed in, reason recorded, and the boot goes on."""

from __future__ import annotations

import re

import pytest

from .conftest import Campaign

pytestmark = pytest.mark.vm

BOOTS = ("unsigned", "wrong-key", "expired", "replay-a")

#: boot -> (seed id the guest can name, pattern the recorded reason must match)
CASES = {
    "unsigned": ("unsigned", r"signature"),
    "wrong-key": ("wrong_key", r"key|trusted"),
    "expired": ("expired", r"expired"),
    "replay-a": ("good_a", r"already|replay|used|consumed|ledger"),
}


def _seed_id(campaign: Campaign, attr: str) -> str:
    if attr == "unsigned":
        from seedtool.shared.envelope import parse

        return parse(campaign.seeds.unsigned).seed_id.hex()
    return str(getattr(campaign.seeds, attr).seed_id)


@pytest.mark.parametrize("boot_name", list(CASES))
def test_refused_seed_is_mixed_not_credited_and_boot_completes(
    campaign: Campaign, boot_name: str
) -> None:
    attr, reason_pattern = CASES[boot_name]
    b = campaign.get(boot_name)
    seed_id = _seed_id(campaign, attr)
    lines = b.seedtool_lines()
    assert not [ln for ln in lines if ln.credited], f"something was credited{b.context()}"
    ours = [ln for ln in lines if ln.seed_id in (seed_id, "-")]
    assert ours, f"no seedtool line about the seed{b.context()}"
    assert re.search(reason_pattern, ours[-1].reason, re.I), ours[-1].reason
    status = b.status()
    assert status["credited_bits"] == 0
    assert status["verified"] is False
    assert re.search(reason_pattern, str(status["reason"]), re.I), status["reason"]
    report = b.report("status-long.txt")
    assert "exit=0" in report and re.search(r"^status: done$", report, re.M), report
    assert b.report("ssh-active.txt").strip() == "active"
    assert re.search(r":22\s", b.report("listen.txt")), b.report("listen.txt")
