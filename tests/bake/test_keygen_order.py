"""bake --check's keygen rule on the systemd units of the four real Debian roots:
their own orderings pass, and a key maker planted before the credit is found."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from devtools.images import RELEASES, base_root
from seedtool import bake as lib
from seedtool.bake.checks import Context, keygen
from seedtool.image.localfs import LocalFS

REPO = Path(__file__).resolve().parents[2]
EARLY_UNIT = REPO / "seedtool/guest/data/seedtool-early.service"


def units_of(release: str, dest: Path) -> Path:
    """The unit directories of a real root (what the rule reads), copied into `dest`."""
    root = base_root(release)
    for rel in ("etc/systemd", "usr/lib/systemd"):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", "--", str(root / rel), str(dest / rel)], check=True)
    (dest / "usr/sbin").mkdir(parents=True, exist_ok=True)
    for link in ("lib", "sbin"):  # merged /usr: relative links into usr/
        if (root / link).is_symlink():
            os.symlink(os.readlink(root / link), dest / link)
    (dest / "sbin").mkdir(exist_ok=True)
    os.symlink(os.readlink(root / "sbin/init"), dest / "sbin/init")
    return dest


def findings(root: Path) -> list[lib.Finding]:
    return keygen.keygen_after_credit(Context(LocalFS(root), lib.SCAN_BOUNDS))


def plant(root: Path, name: str, text: str) -> None:
    path = root / "etc/systemd/system" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


EARLY_KEYS = """\
[Unit]
DefaultDependencies=no
Before=cloud-init-network.service cloud-init.service
[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
"""


@pytest.mark.parametrize("release", RELEASES)
def test_the_real_orderings_pass(tmp_path: Path, release: str) -> None:
    root = units_of(release, tmp_path)
    assert findings(root) == []
    # the rule looked at something: openssh-server's own key maker where it has one
    makers = keygen._key_makers(LocalFS(root))
    assert makers in ([], ["sshd-keygen.service"])


@pytest.mark.parametrize("release", RELEASES)
def test_a_key_maker_before_cloud_init_is_found_and_a_drop_in_settles_it(
        tmp_path: Path, release: str) -> None:
    root = units_of(release, tmp_path)
    plant(root, "image-keys.service", EARLY_KEYS)
    (found,) = findings(root)
    assert found.path == "/etc/systemd/system/image-keys.service"
    assert "image-keys.service makes SSH host keys and is not ordered after" in found.problem
    credit = found.fix.rsplit("After=", 1)[1]
    assert credit in ("cloud-init.service", "cloud-init-network.service")
    assert (root / "usr/lib/systemd/system" / credit).exists() or \
        (root / "lib/systemd/system" / credit).exists()
    # the fix the finding gives, as a drop-in, is enough
    plant(root, "image-keys.service.d/seedtool.conf", f"[Unit]\nAfter={credit}\n")
    assert findings(root) == []
    # and a masked unit never runs
    shutil.rmtree(root / "etc/systemd/system/image-keys.service.d")
    os.unlink(root / "etc/systemd/system/image-keys.service")
    os.symlink("/dev/null", root / "etc/systemd/system/image-keys.service")
    assert findings(root) == []


def test_a_drop_in_that_removes_default_dependencies_is_found(tmp_path: Path) -> None:
    root = units_of("sid", tmp_path)
    # sshd-keygen.service is safe only through its default After=sysinit.target ... and
    # cloud-init-network's own Before=sshd-keygen.service; drop both and it is found
    net = root / "usr/lib/systemd/system/cloud-init-network.service"
    net.write_text(net.read_text().replace("Before=sshd-keygen.service\n", ""))
    assert findings(root) == []
    plant(root, "sshd-keygen.service.d/early.conf", "[Unit]\nDefaultDependencies=no\n")
    (found,) = findings(root)
    assert found.path == "/usr/lib/systemd/system/sshd-keygen.service"


def test_without_cloud_init_the_early_unit_is_the_credit(tmp_path: Path) -> None:
    root = units_of("sid", tmp_path)
    for name in os.listdir(root / "usr/lib/systemd/system"):
        if name.startswith("cloud-"):
            os.unlink(root / "usr/lib/systemd/system" / name)
    shutil.copy(EARLY_UNIT, root / "usr/lib/systemd/system/seedtool-early.service")
    assert findings(root) == []  # sshd-keygen keeps After=sysinit.target
    plant(root, "image-keys.service", EARLY_KEYS)
    (found,) = findings(root)
    assert found.fix.endswith("After=seedtool-early.service")
