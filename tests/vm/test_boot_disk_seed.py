"""A seed written into the disk image is credited by the early-boot unit, and the
kernel's CRNG becomes ready right then, during the credit.

How much earlier that is than an unseeded boot depends on the host (a fast host's
jitter entropy readies the CRNG almost as soon), so the two times are reported, not
compared: comparing two boots' timings is a timing threshold in disguise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devtools.vm import lines_for

from .conftest import Campaign

pytestmark = pytest.mark.vm

BOOTS = ("disk-seed", "no-seed")


def test_disk_seed_makes_the_crng_ready_at_once(
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
    # the credit is what made the CRNG ready: the guest read the kernel's state just
    # before and just after RNDADDENTROPY, and the kernel announced it in between
    assert (credit.crng_before, credit.crng_after) == ("not-ready", "ready"), credit
    assert t_seeded <= credit.kernel_time
    dmesg = seeded.dmesg().splitlines()
    i_crng = next(i for i, ln in enumerate(dmesg) if "random: crng init done" in ln)
    i_credit = next(i for i, ln in enumerate(dmesg) if "seedtool: credited" in ln)
    assert i_crng < i_credit
    # the unit deletes the seed file once used
    assert seeded.file("/var/lib/seedtool/seed") is None
    times = {"release": campaign.release, "crng_init_with_disk_seed_s": t_seeded,
             "crng_init_without_seed_s": t_plain, "credit_line_s": credit.kernel_time}
    out = Path(tmp_path_factory.getbasetemp()) / f"crng-times-{campaign.release}.json"
    out.write_text(json.dumps(times, indent=1))
    print(f"\n[{campaign.release}] crng init done: {t_seeded:.3f} s with a disk seed, "
          f"{t_plain:.3f} s without ({out})")
