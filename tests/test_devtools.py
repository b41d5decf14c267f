"""The development tools themselves: the Debian test image is prepared by `seedtool bake`.

devtools/images.py builds the image the VM tests and scripts/quickstart boot; its tree
is what `seedtool bake --root` makes of a copy of a Debian root, so `bake --check`
finds it clean, and any change to bake's code makes a new image. These tests use a
small synthetic root (no debootstrap, no root user needed).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devtools import images
from seedtool.keys import generate_keypair

CLOUD_CFG = """\
cloud_init_modules:
  - seed_random
  - bootcmd
  - ssh
"""


def _host_key(root: Path) -> str:
    """An SSH host key pair, as openssh-server's postinst leaves it; the public line."""
    key = Ed25519PrivateKey.generate()
    ssh = root / "etc/ssh"
    ssh.mkdir(parents=True)
    (ssh / "ssh_host_ed25519_key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    (ssh / "ssh_host_ed25519_key.pub").write_text(public + " root@build\n")
    return public + " root@build"


@pytest.fixture
def debian_like(tmp_path: Path) -> tuple[Path, str]:
    """A root with what debootstrap leaves behind that bake must deal with."""
    root = tmp_path / "root"
    public = _host_key(root)
    (root / "etc/cloud/cloud.cfg.d").mkdir(parents=True)
    (root / "etc/cloud/cloud.cfg").write_text(CLOUD_CFG)
    (root / "etc/machine-id").write_text("d7d277bce9ca4007a7cafac1ba227152\n")
    (root / "etc/hostname").write_text("build-host\n")
    (root / "var/lib/dbus").mkdir(parents=True)
    (root / "var/lib/dbus/machine-id").write_text("d7d277bce9ca4007a7cafac1ba227152\n")
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "var/lib/systemd").mkdir(parents=True)
    (root / "var/lib/systemd/random-seed").write_bytes(b"\x01" * 32)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/python3").write_text("#!/bin/false\n")
    (root / "sbin").mkdir()
    (root / "sbin/init").symlink_to("/lib/systemd/systemd")
    return root, public


@pytest.fixture
def trusted_pub(tmp_path: Path) -> Path:
    generate_keypair(tmp_path / "trusted.key", tmp_path / "trusted.pub", comment="image")
    return tmp_path / "trusted.pub"


def test_the_image_tree_is_what_bake_makes_and_passes_bake_check(
        debian_like: tuple[Path, str], trusted_pub: Path) -> None:
    root, public = debian_like
    prepared = images.prepare_tree(root, [trusted_pub])
    # the build's host keys are known to the tests (new ones must differ), then gone
    assert prepared.build_host_keys == (public,)
    assert sorted(p.name for p in (root / "etc/ssh").iterdir()) == []
    assert (root / "etc/machine-id").read_text() == "uninitialized\n"
    assert not (root / "var/lib/systemd/random-seed").exists()
    removed = {c["path"] for c in prepared.bake_changes if c["action"] == "remove"}
    assert {"/etc/ssh/ssh_host_ed25519_key", "/var/lib/dbus/machine-id",
            "/var/lib/systemd/random-seed"} <= removed
    # the test image's own parts, added before bake ran
    assert (root / "etc/cloud/cloud.cfg.d/90_seedtool_test_image.cfg").read_text() == \
        images.TEST_SYSTEM_CONFIG
    assert (root / "etc/systemd/system/multi-user.target.wants/"
            "seedtool-test-report.service").is_symlink()
    assert (root / "etc/hostname").read_text() == "debian\n"
    # the gate an image pipeline runs after bake
    gate = subprocess.run([sys.executable, "-m", "seedtool", "bake", "--check", "--root",
                           str(root)], capture_output=True, text=True, timeout=120)
    assert gate.returncode == 0, gate.stdout + gate.stderr
    assert gate.stdout.strip().endswith(": clean"), gate.stdout


def test_a_bake_refusal_is_an_image_build_error_and_the_root_keeps_its_state(
        debian_like: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = debian_like
    not_a_key = tmp_path / "not-a-key.pub"
    not_a_key.write_text("ssh-ed25519 AAAA this is an SSH key, not a seedtool one\n")
    with pytest.raises(images.ImageBuildError, match="seedtool bake --root .* failed"):
        images.prepare_tree(root, [not_a_key])
    # bake plans everything before it changes anything
    assert (root / "etc/ssh/ssh_host_ed25519_key").exists()
    assert (root / "var/lib/systemd/random-seed").exists()


def test_the_image_digest_follows_bakes_code(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    bake = repo / "seedtool/bake/__init__.py"
    bake.parent.mkdir(parents=True)
    (repo / "cloud_init_modules").mkdir()
    bake.write_text("def bake(): pass\n")
    monkeypatch.setattr(images, "_repo_root", lambda: repo)
    before = images._image_digest("root", [], None)
    assert images._image_digest("root", [], None) == before
    bake.write_text("def bake(): return 1\n")
    assert images._image_digest("root", [], None) != before


# --- development support stays out of the product, and tests stay out of both -----------------

REPO = Path(__file__).resolve().parents[1]


def _sources(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in (REPO / top).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def test_nothing_outside_tests_names_tests_as_a_module() -> None:
    # issue 9's evidence, `grep -r "tests\." scripts bench fuzz seedtool`, kept true for
    # module paths (tests.guest...), not for the word at the end of a sentence
    module = re.compile(r"\btests\.[A-Za-z_]")
    hits = [f"{p.relative_to(REPO)}:{n}" for p in _sources("seedtool", "scripts", "bench", "fuzz")
            for n, line in enumerate(p.read_text("utf-8", "replace").splitlines(), 1)
            if module.search(line)]
    assert hits == []
    assert module.search("from tests.guest import x") and not module.search("for the tests.")


def test_devtools_and_seedtool_never_import_tests_and_seedtool_never_devtools() -> None:
    import ast

    bad = []
    for p in _sources("devtools", "seedtool", "scripts", "bench", "fuzz"):
        if p.suffix != ".py":
            continue
        for node in ast.walk(ast.parse(p.read_text("utf-8"), str(p))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            forbidden = ("tests", "devtools") if p.is_relative_to(REPO / "seedtool") \
                else ("tests",)
            bad += [f"{p.relative_to(REPO)}: {n}" for n in names
                    if n.split(".")[0] in forbidden]
    assert bad == []
