"""Shared fixtures: signing keys, and the cached Debian roots for the chroot tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from seedtool.keys import generate_keypair, load_private_key
from seedtool.shared.pubkeys import PublicKey

pytest_plugins = ["tests.hygiene"]  # the seed hygiene check on every test


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Path, Path, PublicKey]:
    priv, pub = tmp_path / "signing.key", tmp_path / "signing.pub"
    key = generate_keypair(priv, pub, comment="test")
    return priv, pub, key


@pytest.fixture
def private_key(keypair: tuple[Path, Path, PublicKey]) -> object:
    return load_private_key(keypair[0])


@pytest.fixture(scope="session")
def debian_roots() -> None:
    """The cached Debian roots (devtools.images), built first if missing: debootstrap,
    about 90 s per release and once per machine, so a test that runs cloud-init in a
    chroot never skips for want of a root (CI builds them for the VM tests anyway)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap, namespaces and chroot)")
    from devtools.images import build_roots

    build_roots()
