"""cc_seedtool asking seed servers, run by the REAL cloud-init of each Debian root.

tests/guest/test_cloudinit.py's chroot, with its `seed_servers` keyword: inside the
chroot's private network namespace the driver brings up `lo` and starts TLS seed
servers on 127.0.0.1 (tests/guest/test_netseed.py's `SeedServer`, a CA made for the
run), then bakes their configuration into the image the way `seedtool bake
--seed-server ... --seed-server-identity token:PATH` does (`seed_server_files`).
cloud-init's own module runner then calls cc_seedtool, which asks the servers with the
image's python3 and `ssl`, before `ssh`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from devtools.images import RELEASES
from seedtool.generate import SeedFactory
from seedtool.guest import core
from tests.guest.test_cloudinit import (
    INIT,
    assert_init_clean,
    run_in_chroot,
    seed_needles,
    signer,
    user_data_with,
)

__all__ = ["signer"]  # the fixture, used by name below

#: the token file's path in the image (identity token:PATH)
TOKEN_PATH = "etc/seedtool/seed-token"


class Running:
    """Seed servers started inside the namespace; `files` for install_guest."""

    def __init__(self, files: dict[str, bytes], servers: list[Any]) -> None:
        self.files, self.servers = files, servers

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


def start_seed_servers(work: Path, merged: Path, spec: dict[str, Any]) -> Running:
    """Called by the driver inside the namespace. `spec`: {"modes": ["ok" | "down" |
    "other-ca" | a SeedServer mode, ...], "key": signing key file, "timeout": s}."""
    from seedtool.bake.install import seed_server_files
    from seedtool.keys import load_private_key
    from tests.guest.test_netseed import TOKEN, SeedServer, TestCa, closed_port

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    ca = TestCa()
    factory = SeedFactory(load_private_key(Path(spec["key"])))
    made: list[Any] = []
    urls = []
    for i, mode in enumerate(spec["modes"]):
        if mode == "down":
            urls.append(f"https://127.0.0.1:{closed_port()}")
            continue
        other = TestCa("another CA") if mode == "other-ca" else None
        s = SeedServer(factory, other or ca, work / f"srv{i}",
                       mode="ok" if other else mode)
        made.append(s)
        urls.append(s.url)
    ca.write(work / "seed-ca.pem")
    token = merged / TOKEN_PATH
    token.parent.mkdir(parents=True, exist_ok=True)
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    files = seed_server_files(urls, work / "seed-ca.pem", timeout=spec.get("timeout", 5),
                              identity="token:/" + TOKEN_PATH)
    return Running(files, made)


def servers_of(run: Any) -> list[dict[str, Any]]:
    servers: list[dict[str, Any]] = run.result["status"]["servers"]
    return servers


@pytest.mark.parametrize("release", RELEASES)
def test_two_servers_and_a_user_data_seed_are_credited_once_before_ssh(
        tmp_path: Path, release: str, signer: tuple[Any, Path]) -> None:
    key, pub = signer
    new = SeedFactory(key).new()
    run = run_in_chroot(tmp_path, release, key, pub, user_data=user_data_with(new.text),
                        steps=INIT, needles=seed_needles(new.raw, new.text),
                        seed_servers={"modes": ["ok", "ok"], "key": str(tmp_path / "host.key")})
    assert_init_clean(run)
    (line,) = run.kmsg_lines()
    servers = servers_of(run)
    ids = [s["seed_id"] for s in servers]
    assert [(s["result"], s["credited"]) for s in servers] == [("ok", True), ("ok", True)]
    assert line.startswith(f"<5>seedtool: credited 512 bits from seeds {new.seed_id}, "
                           f"{ids[0]}, {ids[1]} signed by keys "), line
    assert "(user-data + seed-server, crng " in line
    st = run.result["status"]
    assert st["credited_bits"] == 512 and st["verified"] and st["reason"] is None
    assert sorted(x.split()[0] for x in run.result["ledger"].splitlines()) == sorted(
        [new.seed_id, *ids])
    order = run.module_order()
    assert order.index("seedtool") < order.index("ssh") and run.result["host_keys"]
    assert run.result["hits"] == []


@pytest.mark.parametrize("release", RELEASES)
def test_servers_down_or_untrusted_boot_uncredited_with_their_reasons(
        tmp_path: Path, release: str, signer: tuple[Any, Path]) -> None:
    key, pub = signer
    run = run_in_chroot(tmp_path, release, key, pub, user_data="#cloud-config\n{}\n",
                        steps=INIT, needles=[],
                        seed_servers={"modes": ["down", "other-ca"],
                                      "key": str(tmp_path / "host.key")})
    assert_init_clean(run)  # the boot goes on, no error
    (line,) = run.kmsg_lines()
    servers = servers_of(run)
    assert [s["result"] for s in servers] == ["unreachable", "tls: certificate not trusted"]
    assert line.startswith(f"<5>seedtool: mixed seed - uncredited (user-data): "
                           f"{core.NO_SERVER_SEED}; servers: {servers[0]['url']} unreachable, ")
    assert run.result["status"]["credited_bits"] == 0 and run.result["host_keys"]


@pytest.mark.parametrize("release", RELEASES)
def test_fail_closed_with_every_server_failing_is_cloud_inits_error(
        tmp_path: Path, release: str, signer: tuple[Any, Path]) -> None:
    key, pub = signer
    run = run_in_chroot(tmp_path, release, key, pub, user_data="#cloud-config\n{}\n",
                        steps=INIT, needles=[], policy={"fail_closed": True},
                        seed_servers={"modes": ["down"], "key": str(tmp_path / "host.key")})
    (line,) = run.kmsg_lines()
    assert "; servers: https://127.0.0.1:" in line and line.endswith(" unreachable")
    errors = run.result["ci_status"]["v1"]["init"]["errors"]
    assert any("fail_closed" in e and core.NO_SERVER_SEED in e for e in errors), errors
    assert run.result["host_keys"]  # later modules still ran
