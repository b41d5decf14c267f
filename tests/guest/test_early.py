"""The early-boot entry point and its unit file.

Here against a temporary root (the real kernel RNG through symlinks); the installed
launcher under Debian's own python3 is exercised in tests/guest/test_cloudinit.py.
"""

from __future__ import annotations

import configparser
import json
import os
from pathlib import Path
from typing import Any

import pytest

from seedtool.generate import SeedFactory
from seedtool.guest import early
from seedtool.guest.core import Paths
from seedtool.keys import generate_keypair, load_private_key
from tests.guest.test_core import LINE_CREDITED, LINE_MIXED, assert_no_seed, make_devices, seed_of

DATA = Path(__file__).resolve().parents[2] / "seedtool/guest/data"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="RNDADDENTROPY needs root")


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, Path, Any]:
    root = tmp_path / "root"
    keys = root / "etc/seedtool/trusted-keys"
    keys.mkdir(parents=True)
    generate_keypair(tmp_path / "k.key", keys / "k.pub")
    (root / "var/lib/seedtool").mkdir(parents=True)
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    return root, make_devices(tmp_path / "devices"), load_private_key(tmp_path / "k.key")


def run_main(root: Path, devices: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = early.main(["--root", str(root), "--devices", str(devices)])
    cap = capsys.readouterr()
    return rc, cap.out + cap.err


@needs_root
def test_disk_seed_is_credited_and_deleted(image: tuple[Path, Path, Any],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    root, devices, key = image
    new = SeedFactory(key).new()
    seed_file = root / "var/lib/seedtool/seed"
    seed_file.write_text(new.text + "\n")
    rc, text = run_main(root, devices, capsys)
    assert rc == 0 and not seed_file.exists()
    line = (devices / "dev/kmsg").read_text()
    m = LINE_CREDITED.match(line[3:-1])
    assert m and m.group(2) == new.seed_id and m.group(4) == "disk"
    status = json.loads((root / "var/lib/seedtool/status.json").read_text())
    assert status["stage"] == "early-boot" and status["credited_bits"] == 512
    assert any(i.startswith("instance-id:") for i in status["local_inputs"])
    assert_no_seed(seed_of(new.raw), text, line, json.dumps(status))

    # the same seed put back (an old image copy): consumed, mixed, deleted again
    seed_file.write_text(new.text)
    rc, _ = run_main(root, devices, capsys)
    assert rc == 0 and not seed_file.exists()
    assert (devices / "dev/kmsg").read_text().splitlines()[-1].endswith(
        "uncredited (disk): already consumed"
    )


def test_bad_seed_is_deleted_too(image: tuple[Path, Path, Any],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    root, devices, _ = image
    seed_file = root / "var/lib/seedtool/seed"
    seed_file.write_bytes(b"SDTL\x01\x00garbage")
    rc, _ = run_main(root, devices, capsys)
    assert rc == 0 and not seed_file.exists()
    m = LINE_MIXED.match((devices / "dev/kmsg").read_text()[3:-1])
    assert m and m.group(3).startswith("malformed: ")


def test_no_seed_file_does_nothing(image: tuple[Path, Path, Any],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    root, devices, _ = image
    rc, text = run_main(root, devices, capsys)
    assert rc == 0 and "no seed file" in text
    assert (devices / "dev/kmsg").read_text() == ""
    assert not (root / "var/lib/seedtool/status.json").exists()


def test_fail_closed_exits_1_when_not_credited(image: tuple[Path, Path, Any],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    root, devices, _ = image
    (root / "etc/seedtool/policy.json").write_text(json.dumps({"fail_closed": True}))
    (root / "var/lib/seedtool/seed").write_text("not an envelope")
    rc, text = run_main(root, devices, capsys)
    assert rc == 1 and "fail_closed" in text


@pytest.mark.parametrize("policy", ['{"fail_closed": false, "clock_skew": -1}', "{not json"])
def test_invalid_policy_fails_the_unit_and_credits_nothing(
        image: tuple[Path, Path, Any], capsys: pytest.CaptureFixture[str], policy: str) -> None:
    root, devices, key = image
    policy_file = root / "etc/seedtool/policy.json"
    policy_file.write_text(policy)  # even one that says fail_closed: false
    new = SeedFactory(key).new()
    seed_file = root / "var/lib/seedtool/seed"
    seed_file.write_text(new.text)
    rc, text = run_main(root, devices, capsys)
    assert rc == 1  # systemd shows the unit failed
    assert f"{policy_file}" in text and "the image is misbuilt" in text
    assert "rebuild the image with `seedtool bake` or fix the JSON" in text
    assert not seed_file.exists()  # wiped whatever the outcome
    assert (devices / "dev/kmsg").read_text().endswith("uncredited (disk): policy invalid\n")
    assert not (root / "var/lib/seedtool/ledger").exists()
    assert_no_seed(seed_of(new.raw), text)
    # run by hand without a seed file (the unit itself would not start): still an error
    rc, text = run_main(root, devices, capsys)
    assert rc == 1 and f"{policy_file}" in text and "seedtool bake" in text


def test_internal_error_fails_the_unit_only_when_the_policy_says_so(
        image: tuple[Path, Path, Any], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    root, devices, _ = image
    policy_file = root / "etc/seedtool/policy.json"

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(early.core, "credit_seed", broken)
    for policy, expect in (("{}", 0), ('{"fail_closed": true}', 1), ("{bad", 1)):
        policy_file.write_text(policy)
        (root / "var/lib/seedtool/seed").write_text("not an envelope")
        rc, text = run_main(root, devices, capsys)
        assert rc == expect and "internal error (RuntimeError)" in text, policy


def test_missing_kmsg_prints_the_line_instead(image: tuple[Path, Path, Any],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    root, devices, _ = image
    (devices / "dev/kmsg").unlink()
    (root / "var/lib/seedtool/seed").write_text("not an envelope")
    rc, text = run_main(root, devices, capsys)
    assert rc == 0
    assert "seedtool: mixed seed - uncredited (disk): malformed" in text
    assert "kmsg unavailable" in text


def test_wipe_and_delete_overwrites_before_unlinking(tmp_path: Path) -> None:
    f = tmp_path / "seed"
    f.write_bytes(b"x" * 100)
    fd = os.open(f, os.O_RDONLY)  # keep the inode to look at it after the unlink
    try:
        assert early.wipe_and_delete(f) == ""
        assert not f.exists()
        assert os.pread(fd, 100, 0) == b"\x00" * 100
    finally:
        os.close(fd)
    assert early.wipe_and_delete(f) == ""  # already gone: fine


def test_paths_match_the_unit_file() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    text = (DATA / "seedtool-early.service").read_text()
    unit.read_string(text)
    u, s = unit["Unit"], unit["Service"]
    assert u["DefaultDependencies"] == "no"
    assert u["ConditionPathExists"] == str(Paths.under("/").seed_file)
    assert s["Type"] == "oneshot"
    # no -I/-E: PYTHONHASHSEED must take effect, so python's start-up reads no /dev/urandom
    assert s["ExecStart"].split() == ["/usr/bin/python3", "-s", "-S",
                                      "/usr/lib/seedtool/seedtool-early"]
    assert s["Environment"] == "PYTHONHASHSEED=0"
    befores = " ".join(line.split("=", 1)[1] for line in text.splitlines()
                       if line.startswith("Before="))
    for needed in ("sysinit.target", "cloud-init-local.service", "ssh.service",
                   "systemd-random-seed.service"):
        assert needed in befores.split()
    # not after systemd-remount-fs: the unit waits in-process for a read-only root
    assert "systemd-remount-fs.service" not in u.get("After", "").split()
    assert unit["Install"]["WantedBy"] == "sysinit.target"


WAIT_SCRIPT = """
import json, os, subprocess, sys, threading
sys.path.insert(0, {repo!r})
from seedtool.guest.early import wait_until_writable
d = {d!r}
subprocess.run(["mount", "--bind", d, d], check=True)
subprocess.run(["mount", "-o", "remount,ro,bind", d], check=True)
gave_up = wait_until_writable(d, timeout=0.2)
# systemd-remount-fs's part, from another thread while we wait
threading.Timer(0.3, subprocess.run, (["mount", "-o", "remount,rw,bind", d],),
                {{"check": True}}).start()
waited = wait_until_writable(d, timeout=120)
writable = not os.statvfs(d).f_flag & os.ST_RDONLY
print(json.dumps([gave_up, waited, writable]))
"""


@needs_root
def test_unit_waits_for_a_read_only_root_to_be_remounted(tmp_path: Path) -> None:
    # the unit is not ordered after systemd-remount-fs: on a read-only root it waits
    # in-process; here in a private mount namespace on a read-only bind mount
    import subprocess
    import sys

    d = tmp_path / "state"
    d.mkdir()
    script = WAIT_SCRIPT.format(repo=str(DATA.parents[2]), d=str(d))
    out = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c",
                          script], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [False, True, True]


def test_launcher_puts_the_private_code_and_the_standard_library_on_the_path(
        tmp_path: Path) -> None:
    # the unit runs `python3 -s -S`: the launcher builds sys.path itself
    import subprocess
    import sys

    probe = tmp_path / "probe.py"
    text = (DATA / "seedtool-early").read_text()
    probe.write_text(text.replace("from seedtool.guest.early import main  # noqa: E402\n\n"
                                  "sys.exit(main())",
                                  "print(repr([sys.path, 'site' in sys.modules]))"))
    out = subprocess.run([sys.executable, "-s", "-S", str(probe)], capture_output=True,
                         text=True, check=True)
    path, site = eval(out.stdout)  # noqa: S307 - our own repr of a list of strings
    assert path[0] == "/usr/lib/seedtool/python" and not site
    assert str(tmp_path) not in path  # the launcher's own directory is dropped
    # nothing but the standard library after it: no dist-packages, no site-packages
    assert path[1:] and all(p.startswith(sys.base_prefix) and "-packages" not in p
                            for p in path[1:]), path
