"""Shared fixtures: signing keys and a seed factory for tests."""

from __future__ import annotations

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
