"""cc_seedtool and the early launcher run by the REAL code of Debian 12 and 13.

Each test takes the cached debootstrap root of tests/vm (cloud-init 22.4.2 in
bookworm, 25.1.4 in trixie, Debian's own python3 and python3-cryptography), lays
a writable overlay on it, installs the guest with `install_guest`, gives it a
NoCloud seed directory, and runs `cloud-init init --local` and `cloud-init init`
in a chroot: cloud-init's own `Modules.run_section` loads cc_seedtool from
dist-packages and calls `handle` the way that version does. The chroot lives in
private mount, UTS and network namespaces (so cloud-init's hostname, mounts and
network steps touch nothing of this machine), with a /dev holding the real
urandom and a plain file as /dev/kmsg. The base roots are never modified.

This file is also the driver run inside those namespaces (`python3 THIS driver`).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # when run as the driver
    sys.path.insert(0, str(REPO))

from seedtool import envelope  # noqa: E402
from seedtool.generate import SeedFactory  # noqa: E402
from seedtool.keys import generate_keypair, load_private_key  # noqa: E402

LOCAL_CFG = """\
# test harness: no network, no disk resizing inside a chroot; NoCloud seed dir only
datasource_list: [NoCloud, None]
network: {config: disabled}
growpart: {mode: "off"}
resize_rootfs: false
"""

# runs inside the chroot with the image's own python3
CHECK = r'''
import base64, glob, gzip, json, os, subprocess, sys
res = {"steps": []}
spec = json.load(open("/root/spec.json"))
for argv in spec["steps"]:
    p = subprocess.run(argv, capture_output=True, text=True)
    res["steps"].append({"argv": argv, "rc": p.returncode, "out": p.stdout[-3000:],
                         "err": p.stderr[-3000:]})
def read(path, binary=False):
    try:
        with open(path, "rb" if binary else "r") as f:
            return f.read()
    except OSError:
        return None
res["kmsg"] = read("/dev/kmsg")
res["status"] = json.loads(read("/var/lib/seedtool/status.json") or "null")
res["ci_status"] = json.loads(read("/run/cloud-init/status.json") or "null")
log = read("/var/log/cloud-init.log") or ""
res["log_lines"] = [l for l in log.splitlines()
                    if "Running module" in l or "cc_seedtool" in l
                    or "WARNING" in l or "Invalid" in l or "eprecat" in l]
res["host_keys"] = sorted(glob.glob("/etc/ssh/ssh_host_*_key.pub"))
res["seed_file_exists"] = os.path.exists("/var/lib/seedtool/seed")
res["ledger"] = read("/var/lib/seedtool/ledger")
needles = [base64.b64decode(n) for n in spec["needles"]]
hits = []
for top in ("/var/lib/cloud", "/run/cloud-init", "/var/log", "/var/lib/seedtool", "/etc"):
    for d, dirs, files in os.walk(top):
        dirs[:] = [x for x in dirs if x != "journal"]
        for name in files:
            p = os.path.join(d, name)
            if os.path.islink(p):
                continue
            data = read(p, True) or b""
            if data.startswith(b"\x1f\x8b"):
                try:
                    data = gzip.decompress(data)
                except Exception:
                    pass
            if any(n in data for n in needles):
                hits.append(p)
res["hits"] = hits
print("RESULT " + json.dumps(res))
'''


def _mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True)


def driver(work: Path) -> int:
    """Inside fresh mount/UTS/net namespaces: overlay, install, chroot, run the checks."""
    from seedtool.guest.install import install_guest

    spec = json.loads((work / "driver.json").read_text())
    lower = Path(spec["lower"])
    merged, upper, scratch = work / "merged", work / "upper", work / "scratch"
    for d in (merged, upper, scratch):
        d.mkdir(exist_ok=True)
    _mount("--make-rprivate", "/")
    _mount("-t", "overlay", "overlay", "-o",
           f"lowerdir={lower},upperdir={upper},workdir={scratch}", str(merged))
    install_guest(merged, [work / "trusted.pub"], spec.get("policy"))
    (merged / "etc/cloud/cloud.cfg.d/05_seedtool_test.cfg").write_text(LOCAL_CFG)
    seed_dir = merged / "var/lib/cloud/seed/nocloud"
    seed_dir.mkdir(parents=True, exist_ok=True)
    (seed_dir / "meta-data").write_text(spec["meta_data"])
    (seed_dir / "user-data").write_text(spec["user_data"])
    if spec.get("disk_seed"):
        (merged / "var/lib/seedtool/seed").write_text(spec["disk_seed"])
    _mount("-t", "proc", "proc", str(merged / "proc"))
    _mount("-t", "sysfs", "sysfs", str(merged / "sys"))
    for d in ("dev", "run", "tmp"):
        _mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(merged / d))
    dev = merged / "dev"
    for name, minor in (("null", 3), ("zero", 5), ("random", 8), ("urandom", 9)):
        os.mknod(dev / name, 0o20666, os.makedev(1, minor))
        os.chmod(dev / name, 0o666)
    (dev / "kmsg").touch()
    (dev / "fd").symlink_to("/proc/self/fd")
    (merged / "root/check.py").write_text(CHECK)
    (merged / "root/spec.json").write_text(json.dumps(spec["check"]))
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
    res = subprocess.run(["chroot", str(merged), "/usr/bin/python3", "/root/check.py"],
                         env=env, capture_output=True, text=True, check=False)
    sys.stdout.write(res.stdout)
    sys.stderr.write(res.stderr)
    return res.returncode


@dataclass
class Run:
    result: dict[str, Any]
    seed_id: str | None

    def step(self, i: int) -> dict[str, Any]:
        step: dict[str, Any] = self.result["steps"][i]
        return step

    def kmsg_lines(self) -> list[str]:
        return [line for line in (self.result["kmsg"] or "").splitlines() if line]

    def module_order(self) -> list[str]:
        order = []
        for line in self.result["log_lines"]:
            if "Running module " in line:
                order.append(line.split("Running module ", 1)[1].split(" ", 1)[0])
        return order


def run_in_chroot(tmp_path: Path, release: str, private_key: Any, pub: Path, *,
                  user_data: str, steps: list[list[str]], needles: list[bytes],
                  disk_seed: str | None = None, policy: dict[str, Any] | None = None,
                  seed_id: str | None = None, meta_extra: str = "") -> Run:
    from tests.vm.images import base_root

    lower = base_root(release)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(pub, work / "trusted.pub")
    spec = {
        "lower": str(lower),
        "meta_data": f"instance-id: iid-seedtool-{release}\nlocal-hostname: seedtest\n"
                     + meta_extra,
        "user_data": user_data,
        "disk_seed": disk_seed,
        "policy": policy,
        "check": {"steps": steps,
                  "needles": [base64.b64encode(n).decode() for n in needles]},
    }
    (work / "driver.json").write_text(json.dumps(spec))
    res = subprocess.run(
        ["unshare", "--mount", "--uts", "--net", "--propagation", "private",
         sys.executable, __file__, "driver", str(work)],
        capture_output=True, text=True, check=False, timeout=600,
    )
    out = [line for line in res.stdout.splitlines() if line.startswith("RESULT ")]
    assert res.returncode == 0 and out, (
        f"driver failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    )
    return Run(json.loads(out[-1][len("RESULT "):]), seed_id)


def seed_needles(raw: bytes, text: str) -> list[bytes]:
    seed = envelope.parse(raw).uncredited_seed
    return [text.encode(), raw, seed, seed.hex().encode(), base64.b64encode(seed)]


RELEASES = ["bookworm", "trixie"]
INIT = [["cloud-init", "init", "--local"], ["cloud-init", "init"]]


@pytest.fixture
def signer(tmp_path: Path) -> tuple[Any, Path]:
    generate_keypair(tmp_path / "host.key", tmp_path / "host.pub")
    return load_private_key(tmp_path / "host.key"), tmp_path / "host.pub"


def user_data_with(text: str, encoding: str = "b64") -> str:
    return f"#cloud-config\nrandom_seed:\n  data: {text}\n  encoding: {encoding}\n"


def assert_init_clean(run: Run) -> None:
    for step in run.result["steps"]:
        assert step["rc"] == 0, step
    st = run.result["ci_status"]["v1"]["init"]
    assert st["errors"] == [], st
    assert st.get("recoverable_errors", {}) == {}, st["recoverable_errors"]
    bad = [line for line in run.result["log_lines"]
           if "Invalid cloud-config" in line or "eprecat" in line or "seedtool" in line
           and "WARNING" in line]
    assert bad == []


@pytest.mark.parametrize("release", RELEASES)
def test_cloud_init_credits_a_signed_seed_before_ssh(tmp_path: Path, release: str,
                                                     signer: tuple[Any, Path]) -> None:
    key, pub = signer
    new = SeedFactory(key).new()
    run = run_in_chroot(
        tmp_path, release, key, pub, user_data=user_data_with(new.text),
        steps=[*INIT, ["rm", "-rf", "/run/cloud-init"], *INIT],  # then a "reboot"
        needles=seed_needles(new.raw, new.text),
    )
    assert_init_clean(run)
    lines = run.kmsg_lines()
    assert len(lines) == 1, lines  # once per instance: not again on the second boot
    assert lines[0].startswith(f"<5>seedtool: credited 512 bits from seed {new.seed_id} "
                               "signed by key ")
    assert "(user-data, crng ready->ready)" in lines[0]
    st = run.result["status"]
    assert st["credited_bits"] == 512 and st["stage"] == "cloud-init" and st["verified"]
    order = run.module_order()
    assert order.index("seed_random") < order.index("seedtool") < order.index("ssh")
    assert order.count("seedtool") == 2  # looked at on both boots, ran on the first only
    assert run.result["host_keys"], "cc_ssh made no host keys"
    assert run.result["ledger"].startswith(new.seed_id)
    # no copy of the envelope or the seed left anywhere cloud-init or seedtool writes,
    # even after the second boot rebuilt user-data.txt & co. from obj.pkl
    assert run.result["hits"] == []
    # obj.pkl was cleaned by re-pickling the scrubbed in-memory datasource, not only by
    # the file pass (which cannot reach a gzip userdata_raw inside a pickle)
    (scrubbed,) = [line for line in run.result["log_lines"] if "scrubbed the seed" in line]
    assert "cloud-config.txt" in scrubbed and "obj.pkl" not in scrubbed


@pytest.mark.parametrize("release", RELEASES)
def test_cloud_init_mixes_a_bad_seed_and_boots_on(tmp_path: Path, release: str,
                                                  signer: tuple[Any, Path]) -> None:
    key, pub = signer
    raw = bytearray(SeedFactory(key).new().raw)
    raw[-1] ^= 1
    text = base64.b64encode(bytes(raw)).decode()
    run = run_in_chroot(tmp_path, release, key, pub, user_data=user_data_with(text),
                        steps=INIT, needles=seed_needles(bytes(raw), text))
    assert_init_clean(run)
    (line,) = run.kmsg_lines()
    assert line.endswith("uncredited (user-data): signature does not verify")
    assert run.result["status"]["credited_bits"] == 0
    assert run.result["host_keys"] and run.result["hits"] == []


@pytest.mark.parametrize("release", RELEASES)
def test_a_trusted_platform_seed_is_credited(tmp_path: Path, release: str,
                                             signer: tuple[Any, Path]) -> None:
    """NoCloud meta-data may carry `random_seed` like OpenStack's meta_data.json."""
    key, pub = signer
    seed = os.urandom(64)
    b64 = base64.b64encode(seed).decode()
    run = run_in_chroot(
        tmp_path, release, key, pub, user_data="#cloud-config\n{}\n", steps=INIT,
        needles=[seed, b64.encode(), seed.hex().encode()], meta_extra=f"random_seed: {b64}\n",
        policy={"credit_datasource": True, "trusted_platforms": ["nocloud"]},
    )
    assert_init_clean(run)
    (line,) = run.kmsg_lines()
    assert line.startswith("<5>seedtool: credited 512 bits from seed - signed by key - "
                           "(datasource:nocloud, crng ")
    assert run.result["hits"] == []


@pytest.mark.parametrize("release", RELEASES)
def test_fail_closed_policy_makes_cloud_init_report_the_error(tmp_path: Path, release: str,
                                                              signer: tuple[Any, Path]) -> None:
    key, pub = signer
    run = run_in_chroot(tmp_path, release, key, pub, user_data="#cloud-config\n{}\n",
                        steps=INIT, needles=[], policy={"fail_closed": True})
    (line,) = run.kmsg_lines()
    assert line.endswith("uncredited (user-data): no seed offered")
    errors = run.result["ci_status"]["v1"]["init"]["errors"]
    assert any("fail_closed" in e for e in errors), errors


@pytest.mark.parametrize("release", RELEASES)
def test_early_launcher_credits_a_disk_seed(tmp_path: Path, release: str,
                                            signer: tuple[Any, Path]) -> None:
    """The unit's own ExecStart, under the image's python3, before cloud-init runs."""
    key, pub = signer
    new = SeedFactory(key).new()
    unit = (REPO / "seedtool/guest/data/seedtool-early.service").read_text()
    exec_start = next(line.split("=", 1)[1] for line in unit.splitlines()
                      if line.startswith("ExecStart="))
    run = run_in_chroot(
        tmp_path, release, key, pub, user_data="#cloud-config\n{}\n", disk_seed=new.text,
        steps=[["systemd-analyze", "verify", "/usr/lib/systemd/system/seedtool-early.service"],
               ["systemctl", "is-enabled", "seedtool-early.service"],
               exec_start.split(), *INIT],
        needles=seed_needles(new.raw, new.text),
    )
    verify, enabled, launched = run.step(0), run.step(1), run.step(2)
    assert verify["rc"] == 0 and verify["err"] == "", verify  # systemd accepts the unit
    assert enabled["rc"] == 0 and enabled["out"].strip() == "enabled", enabled
    assert launched["rc"] == 0, launched
    lines = run.kmsg_lines()
    assert lines[0].startswith(f"<5>seedtool: credited 512 bits from seed {new.seed_id} ")
    assert "(disk, crng " in lines[0]
    assert lines[1] == "<5>seedtool: mixed seed - uncredited (user-data): no seed offered"
    assert not run.result["seed_file_exists"]
    # cloud-init's "no seed" must not hide the early credit in status.json
    assert run.result["status"]["stage"] == "early-boot"
    assert run.result["status"]["seed_id"] == new.seed_id
    assert run.result["hits"] == []


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "driver":
    sys.exit(driver(Path(sys.argv[2])))
