"""A boot that hangs is killed and its serial log shown; an interrupted launcher leaves
no QEMU behind (QEMU runs in its own session, so it never sees our signals).

The hang is real: the test image's kernel with a root device that does not exist
waits in the initramfs for ever. Each test boots at most two VMs, after the
release's other boots have finished.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from seedtool.launch.qemu import BootTimeout, MachineConfig, QemuVM, create_overlay, live_vms

from .conftest import HOST_SIDE_RELEASE, Campaign

pytestmark = pytest.mark.vm

BOOTS = ()


@pytest.fixture(autouse=True)
def _host_side_only(request: pytest.FixtureRequest) -> None:
    campaign: Campaign = request.getfixturevalue("campaign")
    if campaign.release != HOST_SIDE_RELEASE:
        pytest.skip(f"the launcher's cleanup is host code, booted on {HOST_SIDE_RELEASE} only")
HANG_APPEND = "root=/dev/seedtool-no-such-disk console=ttyS0 rootdelay=600"


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"  # a zombie is dead, only not yet reaped
    except FileNotFoundError:
        return True


def test_hanging_boot_is_killed_and_its_serial_log_shown(campaign: Campaign,
                                                           tmp_path: Path) -> None:
    campaign.wait_all()
    img = campaign.image
    overlay = tmp_path / "disk.qcow2"
    create_overlay(img.disk, overlay, "raw")
    config = MachineConfig(image=img.disk, kernel=img.kernel, initrd=img.initrd,
                           append=HANG_APPEND, cpu="max", network=False)
    vm = QemuVM(f"{campaign.release}-hang", tmp_path, overlay, config)
    vm.start()
    pid = vm.pid
    assert pid is not None
    # long enough for the kernel to print to the serial console under a loaded TCG
    deadline = time.monotonic() + 300
    while "Linux version" not in vm.console() and time.monotonic() < deadline:
        time.sleep(1)
    with pytest.raises(BootTimeout) as err:
        vm.wait_exit(2)
    assert _gone(pid), "the hanging VM is still running"
    assert vm not in live_vms()
    msg = str(err.value)
    assert "did not power off within 2 s" in msg
    assert "last serial lines" in msg and msg.strip().splitlines()[-1].strip(), msg


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_launcher_kills_its_vms(campaign: Campaign, vm_keys: dict[str, Any],
                                            tmp_path: Path, sig: signal.Signals) -> None:
    campaign.wait_all()
    img = campaign.image
    argv = [sys.executable, "-m", "seedtool", "launch", "qemu",
            "--key", str(vm_keys["trusted_key_path"]),
            "--image", str(img.disk), "--kernel", str(img.kernel), "--initrd", str(img.initrd),
            "--append", HANG_APPEND, "--count", "2", "--parallel", "2",
            "--workdir", str(tmp_path)]
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        # run in the background (`cmd &`, nohup) the suite inherits SIGINT ignored, and so
        # would the launcher: give it the default a user's terminal gives it
        argv = ["env", "--default-signal=INT", *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pids: list[int] = []
    try:
        pidfiles = [tmp_path / f"vm{i}" / "qemu.pid" for i in (1, 2)]
        deadline = time.monotonic() + 120
        while not all(p.exists() and p.read_text().strip() for p in pidfiles):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the launcher started no VMs"
            time.sleep(0.2)
        pids = [int(p.read_text()) for p in pidfiles]
        assert not any(_gone(pid) for pid in pids)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0
        assert all(_gone(pid) for pid in pids), f"QEMU survived the launcher: {pids}"
        # the CLI says "interrupted" or, where click turned the interrupt into its own
        # Abort, "aborted"
        assert re.search(r"seedtool: (interrupted|aborted)", err.decode(errors="replace")), err
        # the seed ISOs do not stay behind either
        assert not list(tmp_path.rglob("seed.iso"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pid in pids:  # never leave a VM behind, even when the test fails
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
