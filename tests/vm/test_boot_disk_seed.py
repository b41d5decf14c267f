"""A seed written into the disk image is credited by the early-boot unit, and the
kernel's CRNG becomes ready right then, far earlier than without a seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import Campaign
from .harness import lines_for

pytestmark = pytest.mark.vm

BOOTS = ("disk-seed", "no-seed")


def test_disk_seed_makes_the_crng_ready_at_once_and_earlier(
    campaign: Campaign, tmp_path_factory: pytest.TempPathFactory
) -> None:
    seeded, plain = campaign.get("disk-seed"), campaign.get("no-seed")
    seed = campaign.seeds.disk
    ours = lines_for(seeded.seedtool_lines(), seed.seed_id)
    assert len(ours) == 1 and ours[0].credited, f"disk seed not credited{seeded.context()}"
    credit = ours[0]
    assert credit.kernel_time is not None
    t_seeded, t_plain = seeded.crng_init_time(), plain.crng_init_time()
    assert t_seeded is not None and t_plain is not None
    # the credit is what made the CRNG ready: it was not ready before and is after,
    # and the kernel announced it during the credit, before seedtool's own line
    assert credit.crng_before != credit.crng_after, credit
    assert t_seeded <= credit.kernel_time
    dmesg = seeded.dmesg().splitlines()
    i_crng = next(i for i, ln in enumerate(dmesg) if "random: crng init done" in ln)
    i_credit = next(i for i, ln in enumerate(dmesg) if "seedtool: credited" in ln)
    assert i_crng < i_credit
    # nothing but kernel lines of the same moment between the two
    assert all("random:" in ln or "seedtool" in ln or "audit" in ln
               for ln in dmesg[i_crng + 1 : i_credit]), dmesg[i_crng : i_credit + 1]
    assert t_seeded < t_plain
    # the unit deletes the seed file once used
    assert seeded.file("/var/lib/seedtool/seed") is None
    times = {"release": campaign.release, "crng_init_with_disk_seed_s": t_seeded,
             "crng_init_without_seed_s": t_plain, "credit_line_s": credit.kernel_time}
    out = Path(tmp_path_factory.getbasetemp()) / f"crng-times-{campaign.release}.json"
    out.write_text(json.dumps(times, indent=1))
    print(f"\n[{campaign.release}] crng init done: {t_seeded:.3f} s with a disk seed, "
          f"{t_plain:.3f} s without ({out})")
