"""install_guest: on copies of Debian 12's and 13's real /etc/cloud, and on odd configs.

The real cloud.cfg files come from the cached Debian roots that devtools/images.py builds
(cloud-init 22.4.2 in bookworm, 25.1.4 in trixie).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.images import RELEASES, TABLE, base_root
from seedtool.bake import install
from seedtool.bake.install import install_guest, with_seedtool
from seedtool.guest.policy import PolicyError
from seedtool.keys import generate_keypair
from seedtool.shared.errors import DeliveryError, SigningKeyError, UsageError

SEEDTOOL = ["seedtool", "once-per-instance"]


@pytest.fixture(scope="module", params=RELEASES)
def debian_etc_cloud(request: pytest.FixtureRequest) -> Path:
    """/etc/cloud of a real Debian root (read only: we copy it)."""
    return base_root(request.param) / "etc/cloud"


@pytest.fixture
def pub(tmp_path: Path) -> Path:
    generate_keypair(tmp_path / "host.key", tmp_path / "host.pub", comment="host")
    return tmp_path / "host.pub"


def modules_of(path: Path) -> list[Any]:
    data = yaml.safe_load(path.read_text())
    mods: list[Any] = data["cloud_init_modules"]
    return mods


def test_debian_module_list_is_kept_with_seedtool_after_seed_random(
    tmp_path: Path, debian_etc_cloud: Path, pub: Path
) -> None:
    root = tmp_path / "root"
    shutil.copytree(debian_etc_cloud, root / "etc/cloud", symlinks=True)
    distro = modules_of(root / "etc/cloud/cloud.cfg")
    assert "seed_random" in distro and "ssh" in distro

    written = install_guest(root, [pub])
    dropin = root / "etc/cloud/cloud.cfg.d/90_seedtool.cfg"
    assert "/etc/cloud/cloud.cfg.d/90_seedtool.cfg" in written
    ours = modules_of(dropin)
    assert [m for m in ours if m != SEEDTOOL] == distro  # every module, same form, same order
    assert ours.count(SEEDTOOL) == 1
    at = ours.index(SEEDTOOL)
    assert ours[at - 1] == "seed_random" and at < ours.index("ssh")
    # cloud.cfg itself is untouched
    assert (root / "etc/cloud/cloud.cfg").read_bytes() == (
        debian_etc_cloud / "cloud.cfg"
    ).read_bytes()

    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert install_guest(root, [pub]) == written  # idempotent
    after = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert before == after


def test_files_modes_and_enablement(tmp_path: Path, pub: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/cloud").mkdir(parents=True)
    (root / "etc/cloud/cloud.cfg").write_text("cloud_init_modules:\n - seed_random\n - ssh\n")
    install_guest(root, [pub], {"trusted_platforms": ["openstack"], "credit_datasource": True})
    launcher = root / "usr/lib/seedtool/seedtool-early"
    assert os.stat(launcher).st_mode & 0o777 == 0o755
    assert launcher.read_text().startswith("#!/usr/bin/python3")
    link = root / "etc/systemd/system/sysinit.target.wants/seedtool-early.service"
    assert os.readlink(link) == "/usr/lib/systemd/system/seedtool-early.service"
    assert (root / "usr/lib/systemd/system/seedtool-early.service").is_file()
    cc = root / "usr/lib/python3/dist-packages/cc_seedtool.py"
    assert cc.read_bytes() == (Path(__file__).parents[2] / "cloud_init_modules/cc_seedtool.py"
                               ).read_bytes()
    pol = json.loads((root / "etc/seedtool/policy.json").read_text())
    assert pol == {"trusted_keys": "/etc/seedtool/trusted-keys", "trusted_platforms": ["openstack"],
                   "clock_skew": 300, "fail_closed": False, "credit_datasource": True}
    assert (root / "etc/seedtool/trusted-keys/host.pub").read_text() == pub.read_text()
    code = sorted(str(p.relative_to(root / "usr/lib/seedtool/python"))
                  for p in (root / "usr/lib/seedtool/python").rglob("*.py"))
    assert "seedtool/cli.py" not in code and "seedtool/keys.py" not in code
    assert not any(c.startswith("seedtool/bake/") for c in code)
    assert {"seedtool/shared/envelope.py", "seedtool/shared/pubkeys.py", "seedtool/shared/mix.py",
            "seedtool/guest/core.py", "seedtool/guest/early.py"} <= set(code)
    assert (root / "var/lib/seedtool").is_dir()


def test_installed_code_imports_with_the_standard_library_alone(tmp_path: Path, pub: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    install_guest(root, [pub])  # no /etc/cloud: no drop-in, the rest is there
    assert not (root / "etc/cloud").exists()
    # the private path cc_seedtool inserts in an image, here below the temporary root
    private = str(root / "usr/lib/seedtool/python")
    dist = str(root / "usr/lib/python3/dist-packages")
    code = f"""
import sys
sys.path[:0] = [{private!r}, {dist!r}]
import cc_seedtool
import seedtool.guest.early, seedtool.guest.core
assert seedtool.__file__.startswith({str(root)!r}), seedtool.__file__
bad = [m for m in ("click", "boto3", "google", "cryptography", "yaml") if m in sys.modules]
assert not bad, bad
assert cc_seedtool.meta == {{"id": "cc_seedtool", "distros": ["all"],
                            "frequency": "once-per-instance"}}
assert not hasattr(cc_seedtool, "schema")
import inspect
assert len(inspect.signature(cc_seedtool.handle).parameters) == 6
print("ok")
"""
    # -S: no site-packages, so nothing but the standard library and the image's code
    res = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         env={"PATH": os.environ.get("PATH", "")}, check=False)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_keys_replace_the_installed_set(tmp_path: Path, pub: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    install_guest(root, [pub])
    generate_keypair(tmp_path / "b.key", tmp_path / "next")
    install_guest(root, [pub, tmp_path / "next"])
    names = sorted(p.name for p in (root / "etc/seedtool/trusted-keys").iterdir())
    assert names == ["host.pub", "next.pub"]
    install_guest(root, [tmp_path / "next"])
    assert sorted(p.name for p in (root / "etc/seedtool/trusted-keys").iterdir()) == ["next.pub"]


def test_refusals(tmp_path: Path, pub: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(UsageError, match="no trusted public keys"):
        install_guest(root, [])
    bad = tmp_path / "bad.pub"
    bad.write_text("ssh-ed25519 AAAA me\n")
    with pytest.raises(SigningKeyError, match="not a seedtool public key"):
        install_guest(root, [bad])
    with pytest.raises(PolicyError, match="unknown setting"):
        install_guest(root, [pub], {"trust_everything": True})
    with pytest.raises(DeliveryError, match="not a directory"):
        install_guest(tmp_path / "missing", [pub])


def write_cfg(root: Path, text: str, extra: dict[str, str] | None = None) -> None:
    (root / "etc/cloud/cloud.cfg.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/cloud/cloud.cfg").write_text(text)
    for name, body in (extra or {}).items():
        (root / "etc/cloud/cloud.cfg.d" / name).write_text(body)


def test_a_cfg_d_list_that_sorts_earlier_is_the_source(tmp_path: Path, pub: Path) -> None:
    root = tmp_path / "root"
    write_cfg(root, "cloud_init_modules:\n - seed_random\n - ssh\n",
              {"05_site.cfg": "cloud_init_modules:\n  - seed_random\n  - [ssh, always]\n"})
    install_guest(root, [pub])
    ours = modules_of(root / "etc/cloud/cloud.cfg.d/90_seedtool.cfg")
    assert ours == ["seed_random", SEEDTOOL, ["ssh", "always"]]
    assert "from /etc/cloud/cloud.cfg.d/05_site.cfg" in (
        root / "etc/cloud/cloud.cfg.d/90_seedtool.cfg").read_text()


def test_a_cfg_d_list_that_sorts_later_is_refused(tmp_path: Path, pub: Path) -> None:
    root = tmp_path / "root"
    write_cfg(root, "cloud_init_modules:\n - seed_random\n - ssh\n",
              {"99_late.cfg": "cloud_init_modules:\n - ssh\n"})
    with pytest.raises(DeliveryError, match="99_late.cfg sets cloud_init_modules after"):
        install_guest(root, [pub])


def test_flow_style_and_missing_lists_are_refused(tmp_path: Path, pub: Path) -> None:
    root = tmp_path / "root"
    write_cfg(root, "cloud_init_modules: [seed_random, ssh]\n")
    with pytest.raises(DeliveryError, match="flow style"):
        install_guest(root, [pub])
    write_cfg(root, "users: [default]\n")
    with pytest.raises(DeliveryError, match="no cloud_init_modules"):
        install_guest(root, [pub])


ODD = """\
# comment
cloud_init_modules:
# a comment inside
 - migrator
 - "seed-random"   # quoted, dashed
 - [bootcmd, always]
 - name: write_files
   frequency: once-per-instance
 - {name: mounts}

 - ssh
 - cc_final_thing.py

# The modules that run in the 'config' stage
cloud_config_modules:
 - runcmd
"""


@pytest.mark.parametrize(
    "text, expect_after",
    [
        (ODD, "seed-random"),
        ("cloud_init_modules:\n- ssh\n- seed_random\n", None),  # seed_random after ssh
        ("cloud_init_modules:\n  - bootcmd\n  - ssh\n", None),  # no seed_random
        ("cloud_init_modules:\n  - bootcmd\n", "bootcmd"),  # neither: at the end
    ],
)
def test_odd_lists_keep_their_form(tmp_path: Path, pub: Path, text: str,
                                   expect_after: str | None) -> None:
    root = tmp_path / "root"
    write_cfg(root, text)
    install_guest(root, [pub])
    original = yaml.safe_load(text)["cloud_init_modules"]
    ours = modules_of(root / "etc/cloud/cloud.cfg.d/90_seedtool.cfg")
    assert [m for m in ours if m != SEEDTOOL] == original
    at = ours.index(SEEDTOOL)
    if expect_after is not None:
        assert ours[at - 1] == expect_after
    if "ssh" in original:
        assert ours[at + 1] == "ssh" or at < ours.index("ssh")
    assert "cloud_config_modules" not in (root / "etc/cloud/cloud.cfg.d/90_seedtool.cfg"
                                          ).read_text()


def test_with_seedtool_is_idempotent_on_its_own_output() -> None:
    block = [" - seed_random", f" - {install.MODULE_ENTRY}", " - ssh"]
    assert with_seedtool(block) == block


BOOT_IMPORT = """
import sys
sys.path[:0] = ["/usr/lib/seedtool/python"]
import seedtool.guest.early
heavy = sorted(m for m in ("dataclasses", "typing", "pathlib", "argparse", "tempfile",
                           "random", "inspect") if m in sys.modules)
print(",".join(heavy) or "none")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
@pytest.mark.parametrize("release", RELEASES)
def test_byte_code_is_made_for_the_image_python(tmp_path: Path, pub: Path, release: str) -> None:
    # an image python with this python's magic number is compiled for here (bookworm's
    # 3.11 on a Debian 12 host); any other by the image's own python3 under chroot
    root = tmp_path / "root"
    # cp -a keeps the root's device nodes as nodes: shutil.copytree would read
    # /dev/full and /dev/zero as files, forever, and fill the disk
    subprocess.run(["cp", "-a", "--", str(base_root(release)), str(root)], check=True)
    written = install_guest(root, [pub])
    tag = TABLE[release].python_tag
    pycs = [p for p in written if p.endswith(".pyc")]
    assert f"/usr/lib/seedtool/python/seedtool/guest/__pycache__/core.{tag}.pyc" in pycs
    assert f"/usr/lib/python3/dist-packages/__pycache__/cc_seedtool.{tag}.pyc" in pycs
    sources = [p for p in written if p.endswith(".py") and "/seedtool/python/" in p]
    assert len([p for p in pycs if "/seedtool/python/" in p]) == len(sources)
    # the image's python uses them as they are (no source compiled, nothing written),
    # and the early unit's imports stay free of the heavy modules
    before = {p: (root / p.lstrip("/")).read_bytes() for p in pycs}
    out = subprocess.run([shutil.which("chroot") or "chroot", str(root), "/usr/bin/python3",
                          "-s", "-S", "-c", BOOT_IMPORT], capture_output=True, text=True,
                         check=False, env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "none"
    assert {p: (root / p.lstrip("/")).read_bytes() for p in pycs} == before
    assert not list((root / "usr/lib/seedtool/python").rglob("*.pyc.*"))  # no temp files


def test_no_byte_code_without_an_image_python(tmp_path: Path, pub: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    written = install_guest(root, [pub])
    assert not [p for p in written if p.endswith(".pyc")]
    assert not list(root.rglob("__pycache__"))
