"""`seedtool bake --seed-server ...` writes the guest's seed-server configuration and CA,
and `bake --check` (seedtool/bake/checks/seedserver.py) finds a broken one.

The end-to-end test bakes a copy of the real Debian 12 root (tests/bake/test_bake.py's
fixtures) and checks it clean; the broken configurations are planted in it and each
must be named by the check. What the guest does with the files is tests/guest/test_netseed.py.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from seedtool.bake import install
from seedtool.bake.checks import run_checks, seedserver
from seedtool.bake.imagescan import ScanBounds
from seedtool.guest import netseed
from seedtool.image.localfs import LocalFS
from tests.bake.test_bake import bake_cli, baked, host_pub, root, run  # noqa: F401 - fixtures
from tests.guest.test_netseed import TestCa

CONFIG = "/" + install.SEED_SERVERS
CA = "/" + install.SEED_SERVER_CA


@pytest.fixture
def ca_pem(tmp_path: Path) -> Path:
    return TestCa().write(tmp_path / "ca.pem")


def only_mine(image: Path) -> list[Any]:
    return run_checks(LocalFS(image), ScanBounds(), (seedserver.seed_servers_valid,))


def test_bake_writes_the_files_and_check_is_clean(root: Path, host_pub: Path,  # noqa: F811
                                                  ca_pem: Path) -> None:
    p = bake_cli(root, host_pub, "--seed-server", "https://seeds-a.example:8443",
                 "--seed-server", "https://seeds-b.example", "--seed-server-ca", str(ca_pem),
                 "--seed-server-timeout", "5", "--seed-server-identity", "gce-iit")
    assert p.returncode == 0, p.stderr
    assert f"write    {CONFIG}  (seed-server configuration)" in p.stdout
    written = json.loads((root / CONFIG.lstrip("/")).read_text())
    assert written == {"version": 1, "servers": ["https://seeds-a.example:8443",
                                                 "https://seeds-b.example"],
                       "ca": CA, "timeout": 5.0, "identity": "gce-iit"}
    assert (root / CA.lstrip("/")).read_bytes() == ca_pem.read_bytes()
    for rel in (CONFIG, CA):
        assert stat.S_IMODE((root / rel.lstrip("/")).stat().st_mode) == 0o644
    # the guest's own loader reads what bake wrote
    config = netseed.load_config(str(root / CONFIG.lstrip("/")))
    assert config is not None and config.identity == "gce-iit"
    check = run("bake", "--check", "--root", str(root))
    assert check.returncode == 0, check.stdout + check.stderr
    # baking again without --seed-server keeps them
    assert bake_cli(root, host_pub).returncode == 0
    assert json.loads((root / CONFIG.lstrip("/")).read_text()) == written


@pytest.mark.parametrize(("args", "says"), [
    (["--seed-server", "http://seeds.example", "--seed-server-ca", "CA"], "not https"),
    (["--seed-server", "https://seeds.example"], "needs --seed-server-ca"),
    (["--seed-server-ca", "CA"], "go with --seed-server URL"),
    (["--seed-server", "https://s.example", "--seed-server-ca", "CA",
      "--seed-server-identity", "password"], "aws-iid, gce-iit or token:/PATH"),
    (["--seed-server", "https://s.example", "--seed-server-ca", "NOTPEM"], "no PEM certificate"),
    (["--seed-server", "https://s.example", "--seed-server-ca", "CA",
      "--seed-server-timeout", "0.5"], "0.5 is not in the range"),
])
def test_bad_options_are_refused_and_nothing_is_written(
        host_pub: Path, ca_pem: Path, tmp_path: Path,  # noqa: F811
        args: list[str], says: str) -> None:
    image = tmp_path / "root"  # refused before the target is opened: an empty one will do
    image.mkdir()
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    args = [str(ca_pem) if a == "CA" else str(not_pem) if a == "NOTPEM" else a for a in args]
    p = bake_cli(image, host_pub, *args)
    assert p.returncode != 0 and says in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert list(image.iterdir()) == []


def test_check_refuses_seed_server_options() -> None:
    p = run("bake", "--check", "--image", "/nonexistent", "--seed-server", "https://a.example")
    assert p.returncode == 2 and "--seed-server" in p.stderr


def plant_config(image: Path, data: Any, ca: bytes | None) -> None:
    (image / "etc/seedtool").mkdir(parents=True, exist_ok=True)
    (image / CONFIG.lstrip("/")).write_text(data if isinstance(data, str) else json.dumps(data))
    if ca is not None:
        (image / CA.lstrip("/")).write_bytes(ca)


GOOD = {"version": 1, "servers": ["https://s.example"], "ca": CA, "timeout": 10,
        "identity": "aws-iid"}


@pytest.mark.parametrize(("data", "ca", "path", "says"), [
    ("{", "good", CONFIG, "not valid JSON"),
    ([1], "good", CONFIG, "must be a JSON object"),
    ({**GOOD, "servers": ["http://s.example"]}, "good", CONFIG, "not https"),
    ({**GOOD, "timeout": 90}, "good", CONFIG, "'timeout' must be"),
    ({**GOOD, "timeout": 0}, "good", CONFIG, "'timeout' must be"),
    ({**GOOD, "surprise": True}, "good", CONFIG, "unknown setting"),
    (GOOD, None, CA, "CA certificate is missing"),
    (GOOD, b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", CA,
     "holds no PEM certificate"),
    (GOOD, b"", CA, "holds no PEM certificate"),
])
def test_check_finds_a_broken_configuration(tmp_path: Path, data: Any, ca: Any, path: str,
                                            says: str) -> None:
    image = tmp_path / "root"
    plant_config(image, data, TestCa().pem() if ca == "good" else ca)
    [finding] = only_mine(image)
    assert finding.path == path and says in finding.problem
    assert finding.severity == "error"


def test_check_passes_a_good_configuration_and_no_configuration(tmp_path: Path) -> None:
    image = tmp_path / "root"
    image.mkdir()
    assert only_mine(image) == []
    plant_config(image, GOOD, TestCa().pem() + TestCa("second").pem())
    assert only_mine(image) == []


def test_seed_server_files_validates_with_the_guests_parser(ca_pem: Path) -> None:
    files = install.seed_server_files(["https://a.example"], ca_pem, identity="token:/etc/t")
    assert set(files) == {install.SEED_SERVERS, install.SEED_SERVER_CA}
    assert netseed.config_from_mapping(json.loads(files[install.SEED_SERVERS])).identity == (
        "token:/etc/t")
