"""The launch engine (seedtool.launch.base.run_launch) and what every launcher shares,
run through two real launchers: AWS (real boto3 against devtools/fake_ec2.py) and
Compute Engine (the real google-cloud-compute client against devtools/fake_compute.py).

Each test states one behaviour of the contract once, for both clouds: the first call
goes alone (the probe), an error every call would hit stops the others, a resumed
launch makes only the missing indices with new seeds, Ctrl-C reports what exists, and
user-data that already carries a seed is refused before any seed is made.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.fake_ec2 import DEFAULT_IMAGE, FakeEc2
from seedtool.deliver import userdata
from seedtool.generate import SeedFactory
from seedtool.launch.base import (
    EXISTING,
    FAILED,
    LAUNCHED,
    NOT_STARTED,
    InstanceResult,
    Launcher,
    SharedSeedRefused,
    carries_seed,
    render_table,
    run_launch,
)
from seedtool.shared import envelope
from seedtool.shared.pubkeys import PublicKey

pytest_plugins = ["devtools.moto_server"]

USER_DATA = b"#cloud-config\nruncmd:\n  - [echo, hello]\n"


class Cloud:
    """One launcher and its fake cloud, seen the same way for either cloud."""

    name = ""

    def launcher(self, launch_id: str, user_data: bytes | None = USER_DATA) -> Launcher:
        raise NotImplementedError

    def fail_next_create(self) -> None:
        """The next create is refused the way every create would be (HTTP 403)."""
        raise NotImplementedError

    def creates(self) -> int:
        raise NotImplementedError

    def instances(self) -> set[str]:
        raise NotImplementedError

    def user_data(self, instance_id: str) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Aws(Cloud):
    name = "aws"

    def __init__(self) -> None:
        from seedtool.launch import aws

        self.aws = aws
        self.fake = FakeEc2()

    def launcher(self, launch_id: str, user_data: bytes | None = USER_DATA) -> Launcher:
        client = self.aws.make_client(endpoint_url=self.fake.url)
        request = self.aws.LaunchRequest(image_id=DEFAULT_IMAGE, instance_type="t3.micro")
        return self.aws.AwsLauncher(client, request, launch_id=launch_id, user_data=user_data)

    def fail_next_create(self) -> None:
        self.fake.fail("RunInstances", "UnauthorizedOperation", status=403)

    def creates(self) -> int:
        return len(self.fake.run_requests())

    def instances(self) -> set[str]:
        return set(self.fake.instances)

    def user_data(self, instance_id: str) -> bytes:
        return self.fake.instances[instance_id].user_data

    def close(self) -> None:
        self.fake.close()


class Gce(Cloud):
    name = "gce"

    def __init__(self) -> None:
        from devtools.fake_compute import FakeCompute

        self.fake = FakeCompute().start()

    def launcher(self, launch_id: str, user_data: bytes | None = USER_DATA) -> Launcher:
        from google.auth.credentials import AnonymousCredentials

        from devtools.fake_compute import IMAGE, PROJECT, ZONE
        from seedtool.launch import gce

        return gce.GceLauncher(
            gce.GceSpec(zone=ZONE, name="vm", image=IMAGE, user_data=user_data),
            launch_id=launch_id, project=PROJECT, endpoint=self.fake.endpoint,
            credentials=AnonymousCredentials(), retry_deadline=3.0, retry_initial=0.01,
            poll_interval=0.01)

    def fail_next_create(self) -> None:
        from devtools.fake_compute import Reply

        self.fake.push(Reply(403, method="insert"))

    def creates(self) -> int:
        return len(self.fake.calls("insert"))

    def instances(self) -> set[str]:
        return {name for (_, _, name) in self.fake.instances}

    def user_data(self, instance_id: str) -> bytes:
        return self.fake.metadata(instance_id)["user-data"].encode()

    def close(self) -> None:
        self.fake.stop()


@pytest.fixture(params=["aws", "gce"])
def cloud(request: pytest.FixtureRequest, aws_env: dict[str, str]) -> Iterator[Cloud]:
    pytest.importorskip("boto3" if request.param == "aws" else "google.cloud.compute_v1")
    c = Aws() if request.param == "aws" else Gce()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def factory(private_key: Any) -> Iterator[SeedFactory]:
    with SeedFactory(private_key) as f:
        yield f


def _seed_ids(cloud: Cloud, keypair: tuple[Path, Path, PublicKey]) -> dict[str, str]:
    """instance id -> the id of the verified seed in its user-data."""
    trusted = [(keypair[2].key_id, keypair[2].raw)]
    out = {}
    for iid in cloud.instances():
        text = userdata.find_seed(cloud.user_data(iid))
        assert text is not None
        out[iid] = envelope.verify(text, trusted).seed_id_hex
    return out


def test_one_fresh_seed_per_instance_and_the_users_parts_kept(
        cloud: Cloud, factory: SeedFactory, keypair: tuple[Path, Path, PublicKey]) -> None:
    with cloud.launcher("fresh") as la:
        report = run_launch(la, factory, 4, concurrency=4)
    assert report.ok and [r.status for r in report.results] == [LAUNCHED] * 4
    seeds = _seed_ids(cloud, keypair)
    assert sorted(seeds) == sorted(report.existing_ids())
    assert {seeds[str(r.instance_id)] for r in report.results} == \
        {r.seed_id for r in report.results}
    assert len(set(seeds.values())) == 4
    for iid in seeds:
        assert userdata.user_parts(cloud.user_data(iid)) == userdata.parts(USER_DATA)
    assert report.as_dict()["launch_id"] == "fresh"


def test_the_first_call_goes_alone_and_a_refusal_stops_the_rest(
        cloud: Cloud, factory: SeedFactory) -> None:
    cloud.fail_next_create()
    with cloud.launcher("probe") as la:
        report = run_launch(la, factory, 4, concurrency=4)
    assert [r.status for r in report.results] == [FAILED] + [NOT_STARTED] * 3
    assert "403" in str(report.results[0].error) or "Unauthorized" in str(report.results[0].error)
    assert all("index 0 failed in a way every launch would" in str(r.error)
               for r in report.results[1:])
    assert cloud.creates() == 1 and not cloud.instances()


def test_a_refusal_after_the_probe_stops_the_calls_not_yet_started(
        cloud: Cloud, factory: SeedFactory) -> None:
    def after_index_0(r: InstanceResult) -> None:
        if r.index == 0:
            cloud.fail_next_create()  # the next create, index 1's, is refused

    with cloud.launcher("stop") as la:
        report = run_launch(la, factory, 4, concurrency=1, on_done=after_index_0)
    assert [r.status for r in report.results] == [LAUNCHED, FAILED, NOT_STARTED, NOT_STARTED]
    assert "index 1" in str(report.results[2].error)
    assert cloud.creates() == 2 and cloud.instances() == set(report.existing_ids())


def test_resume_makes_only_the_missing_indices_with_new_seeds(
        cloud: Cloud, factory: SeedFactory, keypair: tuple[Path, Path, PublicKey]) -> None:
    with cloud.launcher("again") as la:
        first = run_launch(la, factory, 2)
    seen: list[int] = []
    with cloud.launcher("again") as la:
        second = run_launch(la, factory, 3, resume=True,
                            on_existing=lambda r: seen.append(r.index))
    assert seen == [0, 1]
    assert [r.status for r in second.results] == [EXISTING, EXISTING, LAUNCHED]
    assert [r.seed_id for r in second.results[:2]] == [r.seed_id for r in first.results]
    assert second.results[2].seed_id not in {r.seed_id for r in first.results}
    assert cloud.creates() == 3 and len(cloud.instances()) == 3
    assert set(_seed_ids(cloud, keypair).values()) == {r.seed_id for r in second.results}


def test_ctrl_c_reports_every_instance_that_exists(cloud: Cloud, factory: SeedFactory) -> None:
    def interrupt(r: InstanceResult) -> None:
        raise KeyboardInterrupt  # as if Ctrl-C arrived after the first result

    with cloud.launcher("ctrl-c") as la:
        report = run_launch(la, factory, 4, concurrency=2, on_done=interrupt)
    assert report.interrupted and not report.ok
    assert report.results[0].status == LAUNCHED
    assert any(r.status == NOT_STARTED and r.error == "not started: interrupted"
               for r in report.results)
    assert sorted(report.existing_ids()) == sorted(cloud.instances())


def test_user_data_already_carrying_a_seed_is_refused_before_any_seed(
        cloud: Cloud, factory: SeedFactory) -> None:
    seeded = userdata.add_seed(USER_DATA, factory.new().text)
    assert carries_seed(seeded) and not carries_seed(USER_DATA)
    with cloud.launcher("seeded", user_data=seeded) as la, \
            pytest.raises(SharedSeedRefused, match="already carries a seedtool seed"):
        run_launch(la, factory, 2)
    assert cloud.creates() == 0


def test_render_table() -> None:
    results = [InstanceResult(0, LAUNCHED, seed_id="ab" * 16, instance_id="i-0"),
               InstanceResult(1, FAILED, error="quota exceeded; ask for more quota")]
    lines = render_table(results).splitlines()
    assert lines[0].split() == ["INDEX", "INSTANCE", "SEED", "STATUS"]
    assert "i-0" in lines[1] and "failed: quota exceeded" in lines[2]


def test_every_registered_launcher_names_its_command_and_user_data_target() -> None:
    """One registry line per launcher: `seedtool launch NAME` and `seedtool userdata
    --target NAME` both come from it."""
    import click

    from seedtool.commands.launch import command as launch_group
    from seedtool.commands.userdata import command as userdata_command
    from seedtool.launch import LAUNCHERS

    target_option = next(p for p in userdata_command.params if p.name == "target")
    assert isinstance(target_option.type, click.Choice)
    assert list(target_option.type.choices) == ["raw", *LAUNCHERS]
    ctx = click.Context(launch_group)
    assert launch_group.list_commands(ctx) == sorted(LAUNCHERS)
    for name in LAUNCHERS:
        cls = LAUNCHERS.load(name)
        assert issubclass(cls, Launcher) and cls.name == name
        assert cls.target in userdata.TARGETS
        assert isinstance(launch_group.get_command(ctx, name), click.Command)
