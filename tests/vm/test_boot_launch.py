"""`seedtool launch qemu --count 2`, the README's main job, end to end: each VM gets its
own seed, credits it, and ends up with host keys no other VM and no image build has."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Campaign

pytestmark = pytest.mark.vm

BOOTS = ("seeded-a",)


def _fingerprint(public_key_line: str) -> str:
    # what ssh-keygen -l prints: SHA256 of the key blob, base64 without padding
    blob = base64.b64decode(public_key_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def test_launch_qemu_two_vms_each_credit_their_own_seed(
    campaign: Campaign, vm_keys: dict[str, object], tmp_path: object
) -> None:
    campaign.wait_all()  # never more than two VMs at once on CI's two cores
    img = campaign.image
    argv = [sys.executable, "-m", "seedtool", "launch", "qemu",
            "--key", str(vm_keys["trusted_key_path"]),
            "--image", str(img.disk), "--kernel", str(img.kernel), "--initrd", str(img.initrd),
            "--append", img.append, "--count", "2", "--parallel", "2", "--json",
            "--workdir", str(tmp_path)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=3600, check=False)
    assert out.returncode == 0, out.stderr + out.stdout
    # an envelope's base64 starts with the magic "SDTL": never on the terminal
    assert "U0RUT" not in out.stdout + out.stderr
    reports = json.loads(out.stdout)
    assert [r["name"] for r in reports] == ["vm1", "vm2"]
    assert len({r["seed_id"] for r in reports}) == 2
    for r in reports:
        assert r["error"] == "", r
        assert r["verdict"] == "credited", r
        assert r["credited_bits"] == 512
        assert r["key_id"] == campaign.seeds.good_a.summary["key_id"]
        assert r["pid"] is None  # powered off after reporting
    fps = [{k["fingerprint"] for k in r["host_keys"]} for r in reports]
    assert all(fps), reports
    assert not fps[0] & fps[1]
    built = {_fingerprint(k) for k in img.build_host_keys}
    assert len(built) >= 2, "the image build recorded no host keys to compare with"
    assert not (fps[0] | fps[1]) & built
    # nor with a VM booted earlier from the same image
    seeded = campaign.get("seeded-a")
    earlier = set()
    for kind in ("ed25519", "ecdsa"):
        pub = seeded.file(f"/etc/ssh/ssh_host_{kind}_key.pub")
        assert pub is not None
        earlier.add(_fingerprint(pub.decode()))
    assert not (fps[0] | fps[1]) & earlier
    # the seed ISOs are gone from the host once the VMs reported
    assert not list(Path(str(tmp_path)).rglob("seed.iso"))
