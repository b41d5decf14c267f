"""A seeded boot credits before any host key exists, leaves no seed behind, and a
reboot of the same disk credits nothing. (Two VMs from one image: test_boot_launch.)"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import pytest

from devtools.images import TABLE
from devtools.vm import files_containing, lines_for
from seedtool.shared.envelope import parse

from .conftest import Campaign

pytestmark = pytest.mark.vm

BOOTS = ("seeded-a", "reboot-a")


def test_seed_is_credited_by_key_before_host_keys_are_made(campaign: Campaign) -> None:
    b = campaign.get("seeded-a")
    seed = campaign.seeds.good_a
    ours = lines_for(b.seedtool_lines(), seed.seed_id)
    assert len(ours) == 1, f"expected one seedtool line for the seed{b.context()}"
    line = ours[0]
    assert line.credited, f"seed not credited: {line.reason}{b.context()}"
    assert line.key_id == seed.summary["key_id"]
    assert line.bits == 8 * seed.summary["bytes"]
    status = b.status()
    assert status["seed_id"] == seed.seed_id
    assert status["verified"] is True
    assert status["credited_bits"] == line.bits
    # the generation of the kernel's RNG, as the guest saw it in /proc: the 256-bit
    # BLAKE2s pool from Linux 5.18 on; before, a 4096-bit input pool, unless the stable
    # kernel carries the 5.18 rewrite (Debian 11's 5.10.223 does: the guest sees 256)
    kernel = TABLE[campaign.release].kernel_version
    assert status["pool_bits"] in (256, 4096), status
    if kernel >= (5, 18):
        assert status["pool_bits"] == 256, status
    assert isinstance(status["entropy_avail_after"], int), status
    # cloud-init runs its modules one after the other in one process and logs each
    # command it runs: our module must have finished before cc_ssh's first ssh-keygen
    log = b.text("/var/log/cloud-init.log").splitlines()
    done = [i for i, ln in enumerate(log) if re.search(r"config-seedtool ran successfully", ln)]
    keygen = [i for i, ln in enumerate(log) if "ssh-keygen" in ln and "Running command" in ln]
    assert done, "cloud-init.log does not show the seedtool module finishing"
    assert keygen, "cloud-init.log shows no ssh-keygen: were the host keys made at all?"
    assert done[0] < keygen[0]
    # and by the files' own times, whoever made them (cc_ssh, or openssh-server's
    # sshd-keygen.service where it exists): every host key was created after the status
    # file that the module writes right after the credit
    credited_at = b.times("/var/lib/seedtool/status-cloud-init.json")
    assert credited_at is not None
    ssh = b.tree("/etc/ssh")
    assert ssh is not None
    keys = sorted(p.name for p in ssh.glob("ssh_host_*_key"))
    assert keys, "no host keys in /etc/ssh"
    for name in keys:
        made = b.times(f"/etc/ssh/{name}")
        assert made is not None and made["crtime"] > credited_at["mtime"], (name, made)


def test_cloud_init_reports_no_errors(campaign: Campaign) -> None:
    b = campaign.get("seeded-a")
    report = b.report("status-long.txt")
    assert "exit=0" in report, report
    assert re.search(r"^status: done$", report, re.M), report
    # 23.4+ lists errors and recoverable errors; 22.4 would show status: error instead
    assert not re.search(r"^errors: \[.+\]", report, re.M), report
    assert not re.search(r"^recoverable_errors: \{[^}]", report, re.M), report


def test_no_seed_bytes_remain_in_cloud_init_state_or_logs(campaign: Campaign) -> None:
    b = campaign.get("seeded-a")
    seed = parse(campaign.seeds.good_a.raw).uncredited_seed
    trees = [b.tree("/var/lib/cloud"), b.tree("/var/log"),
             b.tree("/var/tmp/seedtool-test/run-cloud-init")]
    assert all(t is not None for t in trees), "a directory to check is missing"
    hits = files_containing([t for t in trees if t is not None], seed)
    assert hits == [], f"seed bytes remain in: {hits}"


def test_needle_search_finds_a_planted_seed(tmp_path: Path) -> None:
    # the search above must be able to fail: plant a seed's base64, cut at an odd
    # offset as in a longer envelope, and its hex in two files
    seed = os.urandom(64)
    (tmp_path / "user-data.txt").write_bytes(b"data: " + base64.b64encode(b"xy" + seed))
    (tmp_path / "log").write_bytes(b"seed=" + seed.hex().encode())
    (tmp_path / "clean").write_bytes(os.urandom(4096))
    hits = files_containing([tmp_path], seed)
    names = [h.split()[0] for h in hits]
    assert names == [f"{tmp_path.name}/log", f"{tmp_path.name}/user-data.txt"]


def test_reboot_of_the_same_disk_credits_nothing(campaign: Campaign) -> None:
    first, again = campaign.get("seeded-a"), campaign.get("reboot-a")
    assert any(ln.credited for ln in first.seedtool_lines())
    credited_again = [ln for ln in again.seedtool_lines() if ln.credited]
    assert credited_again == [], f"credited again on reboot{again.context()}"
    assert "exit=0" in again.report("status-long.txt")
