"""`seedtool launch openstack`: the real openstacksdk against devtools/fake_openstack.py.

The fake speaks Keystone v3 (password token, catalog), Nova v2.1, Glance v2 and Neutron
v2.0 on 127.0.0.1; a clouds.yaml in the test's directory (OS_CLIENT_CONFIG_FILE) points
the SDK at it, so credentials, discovery and every request go through openstacksdk's
own code. The command is run in-process through click's CliRunner; a SeedtoolError it
raises carries the exit status `seedtool` exits with.
"""

from __future__ import annotations

import _thread
import base64
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from devtools.fake_openstack import IMAGES, NETWORKS, FakeOpenStack
from seedtool.clouds import openstack as cloud
from seedtool.commands.launch_openstack import command
from seedtool.deliver import userdata
from seedtool.generate import SeedFactory
from seedtool.launch import openstack as osl
from seedtool.launch.base import EXISTING, FAILED, LAUNCHED, NOT_STARTED, run_launch
from seedtool.shared import envelope
from seedtool.shared.errors import SeedtoolError
from seedtool.shared.pubkeys import PublicKey, trusted_pairs

pytest.importorskip("openstack")

USER_SCRIPT = b"#!/bin/sh\necho hello from the user's own script\n"
#: the keypair fixture: signing key path, public key path, public key
Keys = tuple[Path, Path, PublicKey]
BASE = ("--name", "web", "--image", "debian-12", "--flavor", "m1.tiny")


# --- helpers --------------------------------------------------------------------------


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenStack]:
    for name in [k for k in os.environ if k.startswith("OS_")]:
        monkeypatch.delenv(name)
    server = FakeOpenStack()
    config = tmp_path / "clouds.yaml"
    text = json.loads(server.clouds_yaml())
    text["clouds"]["wrong"] = json.loads(server.clouds_yaml(password="nope"))["clouds"]["fake"]
    text["clouds"]["down"] = json.loads(
        server.clouds_yaml(auth_url="http://127.0.0.1:9/identity/v3"))["clouds"]["fake"]
    config.write_text(json.dumps(text))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(config))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def seeds_made(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The seed ids SeedFactory.new made during the test, in order."""
    made: list[str] = []
    original = SeedFactory.new

    def counting(self: SeedFactory, now: int | None = None) -> Any:
        seed = original(self, now)
        made.append(seed.seed_id)
        return seed

    monkeypatch.setattr(SeedFactory, "new", counting)
    return made


def run(keys: Keys, *args: str, cloud_name: str = "fake") -> tuple[Result, SeedtoolError | None]:
    """The command's result, and the SeedtoolError it ended with (None on success)."""
    result = CliRunner().invoke(command, ["--key", str(keys[0]), "--os-cloud", cloud_name,
                                          *args])
    err = result.exception
    if err is not None and not isinstance(err, SeedtoolError):
        raise err
    return result, err


def verified(data: bytes | None, keys: Keys) -> envelope.VerifiedEnvelope:
    text = userdata.find_seed(data)
    assert text is not None
    return envelope.verify(text, trusted_pairs([keys[2]]))


def launcher(*, launch_id: str = "L1", user_data: bytes | None = USER_SCRIPT,
             **req: Any) -> osl.OpenStackLauncher:
    fields: dict[str, Any] = {"name": "web", "image": "debian-12", "flavor": "m1.tiny", **req}
    return osl.OpenStackLauncher(cloud.connect("fake"), osl.ServerRequest(**fields),
                                 launch_id=launch_id, user_data=user_data, cloud_name="fake")


def creates_of(fake: FakeOpenStack, index: int) -> list[dict[str, Any]]:
    bodies = [r.body["server"] for r in fake.creates()]
    return [b for b in bodies if b["metadata"].get(osl.META_INDEX) == str(index)]


def launch(fake: FakeOpenStack, private_key: object, count: int = 3, **kw: Any) -> Any:
    with launcher(**kw) as la:
        return run_launch(la, SeedFactory(private_key), count, concurrency=1)


# --- what ends up on the servers ---------------------------------------------------------


def test_each_server_gets_its_own_verified_seed_and_the_users_parts(
    fake: FakeOpenStack, keypair: Keys, tmp_path: Path
) -> None:
    ud = tmp_path / "user-data"
    ud.write_bytes(USER_SCRIPT)
    result, err = run(keypair, *BASE, "--count", "3", "--user-data", str(ud), "--json",
                      "--launch-id", "run-1")
    assert err is None, result.stderr
    report = json.loads(result.stdout)
    assert (report["launch_id"], report["cloud"], report["region"]) == ("run-1", "fake",
                                                                        "RegionOne")
    assert [r["status"] for r in report["instances"]] == [LAUNCHED] * 3
    assert "launch id run-1" in result.stderr

    envs = []
    for row in report["instances"]:
        server = fake.servers[row["instance_id"]]
        env = verified(server.user_data, keypair)
        envs.append(env)
        assert env.seed_id.hex() == row["seed_id"] == server.metadata[osl.META_SEED_ID]
        assert server.metadata[osl.META_LAUNCH_ID] == "run-1"
        assert server.metadata[osl.META_INDEX] == str(row["index"])
        assert server.name == row["name"] == f"web-{row['index']}"
        assert userdata.user_parts(server.user_data) == userdata.parts(USER_SCRIPT)
    assert len({e.seed for e in envs}) == 3 and len({e.seed_id for e in envs}) == 3
    assert len(fake.servers) == 3 and len(fake.creates()) == 3


def test_options_reach_nova_as_openstack_server_create_sends_them(
    fake: FakeOpenStack, private_key: object
) -> None:
    report = launch(fake, private_key, 1, networks=["private"], key_name="ops",
                    security_groups=["web", "ssh"], availability_zone="az1",
                    config_drive=True, properties={"role": "web"},
                    hints={"group": "5b0c6b1e-anti-affinity"})
    assert report.ok and "config drive" in report.notes[0]
    sent = fake.creates()[0].body["server"]
    assert sent["name"] == "web"  # a single server keeps its name
    assert sent["imageRef"] in IMAGES and sent["flavorRef"] == "1"
    assert sent["networks"] == [{"uuid": next(iter(NETWORKS))}]
    assert (sent["key_name"], sent["availability_zone"], sent["config_drive"]) == \
        ("ops", "az1", True)
    assert sent["security_groups"] == [{"name": "web"}, {"name": "ssh"}]
    body = fake.creates()[0].body  # nova reads hints under either name, beside "server"
    hints = body.get("os:scheduler_hints") or body.get("OS-SCH-HNT:scheduler_hints")
    assert hints == {"group": "5b0c6b1e-anti-affinity"}
    assert sent["metadata"]["role"] == "web"
    assert "min_count" not in sent and "max_count" not in sent
    assert launch(fake, private_key, 1, launch_id="L2").ok
    assert fake.creates()[1].body["server"]["networks"] == "auto"
    assert launch(fake, private_key, 1, launch_id="L3", no_network=True).ok
    assert fake.creates()[2].body["server"]["networks"] == "none"


def test_resume_launches_only_the_missing_indices_with_new_seeds(
    fake: FakeOpenStack, keypair: Keys
) -> None:
    common = (*BASE, "--launch-id", "resume-me", "--json")
    first, err = run(keypair, *common, "--count", "2")
    assert err is None, first.stderr
    fake.page_size = 2  # the listing follows nova's next links
    again, err = run(keypair, *common, "--count", "4")
    assert err is None, again.stderr
    rows = json.loads(again.stdout)["instances"]
    assert [r["status"] for r in rows] == [EXISTING, EXISTING, LAUNCHED, LAUNCHED]
    before = {r["instance_id"]: r["seed_id"] for r in json.loads(first.stdout)["instances"]}
    assert {r["instance_id"]: r["seed_id"] for r in rows[:2]} == before
    assert len(fake.servers) == 4
    new_ids = {r["seed_id"] for r in rows[2:]}
    assert len(new_ids) == 2 and not new_ids & set(before.values())
    for r in rows:
        assert verified(fake.servers[r["instance_id"]].user_data, keypair).seed_id.hex() == \
            r["seed_id"]


def test_a_server_in_error_or_deleted_is_made_again_on_resume(
    fake: FakeOpenStack, private_key: object
) -> None:
    first = launch(fake, private_key, 3)
    ids = [str(r.instance_id) for r in first.results]
    conn = cloud.connect("fake")
    assert conn.compute.get_server(ids[0]).metadata[osl.META_INDEX] == "0"
    fake.set_status(ids[1], "ERROR")
    conn.compute.delete_server(ids[2])
    with launcher() as la:
        again = run_launch(la, SeedFactory(private_key), 3, resume=True)
    assert [r.status for r in again.results] == [EXISTING, LAUNCHED, LAUNCHED]
    assert again.results[0].instance_id == ids[0]
    assert not {str(r.instance_id) for r in again.results[1:]} & set(ids)


# --- retries that never make a server twice ------------------------------------------------


def test_a_lost_reply_is_found_and_not_made_twice(fake: FakeOpenStack, private_key: object
                                                  ) -> None:
    fake.fail("create", 500, index=1, after_work=True)
    report = launch(fake, private_key, 3)
    assert [r.status for r in report.results] == [LAUNCHED] * 3
    assert len(fake.servers) == 3 and len(creates_of(fake, 1)) == 1
    made = fake.servers[str(report.results[1].instance_id)]
    assert made.metadata[osl.META_SEED_ID] == report.results[1].seed_id


def test_a_failure_on_the_clouds_side_is_tried_again_with_a_new_seed(
    fake: FakeOpenStack, private_key: object, keypair: Keys
) -> None:
    fake.fail("create", 500, index=1)
    report = launch(fake, private_key, 3)
    assert report.ok and len(fake.servers) == 3
    tries = creates_of(fake, 1)
    assert len(tries) == 2
    assert tries[0]["metadata"][osl.META_SEED_ID] != tries[1]["metadata"][osl.META_SEED_ID]
    server = fake.servers[str(report.results[1].instance_id)]
    assert verified(server.user_data, keypair).seed_id.hex() == report.results[1].seed_id


def test_a_cloud_that_keeps_failing_fails_each_index_alone(
    fake: FakeOpenStack, private_key: object
) -> None:
    fake.fail("create", 500, times=None, message="Unexpected API Error")
    report = launch(fake, private_key, 2)
    assert [r.status for r in report.results] == [FAILED, FAILED]
    assert "failed on its side" in str(report.results[1].error)
    assert len(creates_of(fake, 0)) == osl.OpenStackLauncher.max_attempts
    assert not fake.servers


def test_retry_after_is_waited_out_and_a_long_one_stops_the_launch(
    fake: FakeOpenStack, private_key: object
) -> None:
    fake.fail("create", 429, index=0, retry_after=0)
    assert launch(fake, private_key, 2).ok
    assert len(creates_of(fake, 0)) == 2
    fake.fail("create", 429, index=0, retry_after=3600, times=None)
    report = launch(fake, private_key, 3, launch_id="L2")
    assert [r.status for r in report.results] == [FAILED, NOT_STARTED, NOT_STARTED]
    assert "wait 3600 s (the cloud's Retry-After)" in str(report.results[0].error)


# --- errors: one sentence with a fix, and the exit status ---------------------------------


@pytest.mark.parametrize(("status", "message", "words"), [
    (400, "Invalid key_name provided.", ["HTTP 400: Invalid key_name provided",
                                         "fix the options"]),
    (403, "Policy doesn't allow os_compute_api:servers:create to be performed.",
     ["may not create server 0", "member role"]),
    (403, "Quota exceeded for instances: Requested 1, but already used 10 of 10 instances",
     ["quota is used up", "openstack quota show", "--launch-id L"]),
    (409, "Multiple possible networks found, use a Network ID to be more specific.",
     ["HTTP 409", "--network"]),
    (413, "Maximum number of ports exceeded", ["HTTP 413", "wait a minute"]),
    (429, "Rate limit exceeded", ["HTTP 429", "--concurrency"]),
])
def test_each_refusal_is_one_sentence_with_a_fix_and_stops_the_rest(
    fake: FakeOpenStack, keypair: Keys, status: int, message: str, words: list[str]
) -> None:
    fake.fail("create", status, message=message, times=None)
    result, err = run(keypair, *BASE, "--count", "3", "--launch-id", "L")
    assert isinstance(err, SeedtoolError) and err.exit_code == 1
    assert "0 of 3" not in str(err) and "no instance exists" in str(err)
    rows = result.stdout.splitlines()[1:]
    assert "failed:" in rows[0] and all("not-started" in r for r in rows[1:])
    for w in words:
        assert w in rows[0]
    assert len(fake.creates()) == 1


def test_a_nova_message_repeating_the_user_data_is_cut(
    fake: FakeOpenStack, private_key: object
) -> None:
    fake.fail("create", 400, echo_user_data=True)
    report = launch(fake, private_key, 1)
    err = str(report.results[0].error)
    sent = fake.creates()[0].body["server"]["user_data"]
    assert "Invalid input for field/attribute user_data" in err
    assert sent[:32] not in err and "..." in err


@pytest.mark.parametrize(("cloud_name", "code", "words"), [
    ("wrong", 1, "did not accept the credentials of cloud 'wrong' (HTTP 401)"),
    ("down", 1, "could not discover the OpenStack API of cloud 'down'"),
    ("nowhere", 2, "pass --os-cloud with a cloud from clouds.yaml"),
])
def test_credential_and_config_errors_come_before_any_seed(
    fake: FakeOpenStack, keypair: Keys, seeds_made: list[str], cloud_name: str, code: int,
    words: str
) -> None:
    result, err = run(keypair, *BASE, cloud_name=cloud_name)
    assert isinstance(err, SeedtoolError) and err.exit_code == code
    assert words in str(err) and "\n" not in str(err)
    assert not seeds_made and not fake.creates()


@pytest.mark.parametrize(("args", "words"), [
    (("--image", "debian-13"), "has no image 'debian-13'"),
    (("--flavor", "m9.huge"), "has no flavor 'm9.huge'"),
    (("--network", "public"), "has no network 'public'"),
    (("--max", "3"), "use --count N instead"),
    (("--min", "2", "--max", "2"), "same seed"),
    (("--property", "seedtool:index=7"), "reserved"),
    (("--hint", "group"), "KEY=VALUE"),
    (("--network", "private", "--no-network"), "contradict"),
    (("--launch-id", "bad id!"), "launch id"),
])
def test_refused_requests_exit_2_before_any_seed(
    fake: FakeOpenStack, keypair: Keys, seeds_made: list[str], args: tuple[str, ...], words: str
) -> None:
    result, err = run(keypair, *BASE, *args)
    assert isinstance(err, SeedtoolError) and err.exit_code == 2, result.stderr
    assert words in str(err)
    assert not seeds_made and not fake.creates()


def test_oversize_user_data_is_refused_before_any_seed(
    fake: FakeOpenStack, keypair: Keys, seeds_made: list[str], tmp_path: Path
) -> None:
    ud = tmp_path / "big"
    ud.write_bytes(b"#!/bin/sh\n: " + base64.b64encode(os.urandom(60000)) + b"\n")
    result, err = run(keypair, *BASE, "--count", "3", "--user-data", str(ud))
    assert isinstance(err, SeedtoolError) and err.exit_code == 2
    assert "over nova's limit of 65535 bytes of base64" in str(err)
    assert not seeds_made and not fake.creates()


def test_big_user_data_is_gzipped_to_fit_nova(
    fake: FakeOpenStack, private_key: object, keypair: Keys
) -> None:
    # nova's line in deliver/userdata.py TARGETS: 49,149 bytes are 65,532 characters of base64
    assert userdata.TARGETS["openstack"][0] == 49149 and osl.OpenStackLauncher.target == "openstack"
    big = b"#!/bin/sh\n" + b"echo the same line again and again\n" * 2000  # ~70 KB
    report = launch(fake, private_key, 2, user_data=big)
    assert report.ok
    for server in fake.servers.values():
        assert server.user_data is not None and server.user_data[:2] == b"\x1f\x8b"
        assert userdata.user_parts(server.user_data) == userdata.parts(big)
        verified(server.user_data, keypair)


def test_user_data_already_holding_a_seed_is_refused(fake: FakeOpenStack, keypair: Keys,
                                                     private_key: object, tmp_path: Path,
                                                     seeds_made: list[str]) -> None:
    ud = tmp_path / "from-a-heat-template"
    ud.write_bytes(userdata.add_seed(USER_SCRIPT, SeedFactory(private_key).new().text))
    seeds_made.clear()
    result, err = run(keypair, *BASE, "--user-data", str(ud))
    assert isinstance(err, SeedtoolError) and err.exit_code == 2
    assert "already carries a seedtool seed" in str(err)
    assert not seeds_made and not fake.creates()


def test_missing_openstacksdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openstack", None)
    with pytest.raises(cloud.OpenStackError, match=r"pip install 'seedtool\[openstack\]'"):
        cloud.connect("fake")


# --- secret hygiene in the SDK's logs ------------------------------------------------------


def test_sdk_debug_logs_never_carry_the_seed(
    fake: FakeOpenStack, private_key: object, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert launch(fake, private_key, 2).ok
    with launcher() as la:  # an admin's listing would carry user-data too
        assert len(la.existing()) == 2
    text = "\n".join(r.getMessage() for r in caplog.records)
    for r in fake.creates():
        assert r.body["server"]["user_data"][:24] not in text


# --- Ctrl-C ----------------------------------------------------------------------------------


def test_ctrl_c_reports_every_server_that_exists_and_a_rerun_launches_the_rest(
    fake: FakeOpenStack, keypair: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    noticed = threading.Event()
    monkeypatch.setattr(osl.OpenStackLauncher, "interrupt", lambda self: noticed.set())
    fake.gate.hold({1, 2})

    def press_ctrl_c() -> None:
        # index 0 finished (so 1 and 2 started), 1 and 2 are in flight, 3 waits
        if fake.gate.wait_held(2):
            _thread.interrupt_main()  # SIGINT in the main thread, as a terminal sends it
            noticed.wait(60)
        fake.gate.release()

    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    presser.start()
    args = (*BASE, "--count", "4", "--concurrency", "2", "--launch-id", "ctrl-c")
    try:
        result, err = run(keypair, *args)
    finally:
        fake.gate.release()
        presser.join(60)
    assert noticed.is_set() and isinstance(err, SeedtoolError) and err.exit_code == 130
    assert "interrupted; waiting for the calls in flight" in result.stderr
    rows = {int(ln.split()[0]): ln for ln in result.stdout.splitlines()[1:]}
    assert all(" launched" in rows[i] for i in (0, 1, 2)) and "not-started" in rows[3]
    first_ids = {rows[i].split()[1] for i in (0, 1, 2)}
    assert first_ids == set(fake.servers)
    assert "interrupted: 1 of 4 instances not launched (indices 3)" in str(err)
    assert all(i in str(err) for i in first_ids)

    again, err = run(keypair, *args, "--json")
    assert err is None, again.stderr
    rows2 = json.loads(again.stdout)["instances"]
    assert [r["status"] for r in rows2] == [EXISTING] * 3 + [LAUNCHED]
    assert len(fake.servers) == 4 and len(creates_of(fake, 3)) == 1
    envs = [verified(s.user_data, keypair) for s in fake.servers.values()]
    assert len({e.seed for e in envs}) == 4
