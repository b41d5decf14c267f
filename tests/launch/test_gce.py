"""`seedtool launch gce` against a local fake Compute Engine, through the real client.

The client is the real google-cloud-compute one with `transport="rest"`, pointed at
devtools/fake_compute.py on 127.0.0.1: with `AnonymousCredentials()` for the library,
and through Application Default Credentials (a service-account file whose token URI
is the fake's) for the command line.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("google.cloud.compute_v1")

from google.auth.credentials import AnonymousCredentials  # noqa: E402

from devtools.fake_compute import IMAGE, PROJECT, ZONE, FakeCompute, Reply  # noqa: E402
from seedtool.deliver import userdata  # noqa: E402
from seedtool.generate import SeedFactory  # noqa: E402
from seedtool.launch import gce  # noqa: E402
from seedtool.launch.base import (  # noqa: E402
    EXISTING,
    FAILED,
    LAUNCHED,
    NOT_STARTED,
    run_launch,
)
from seedtool.shared import envelope  # noqa: E402
from seedtool.shared.errors import UsageError  # noqa: E402
from seedtool.shared.pubkeys import PublicKey  # noqa: E402

USER_DATA = b"#cloud-config\npackages: [htop]\nruncmd:\n  - [echo, hello]\n"


@pytest.fixture
def fake() -> Iterator[FakeCompute]:
    with FakeCompute() as f:
        yield f


@pytest.fixture
def factory(private_key: Any) -> Iterator[SeedFactory]:
    with SeedFactory(private_key) as f:
        yield f


def make(fake: FakeCompute, factory: SeedFactory, *, launch_id: str = "test-launch",
         **spec: Any) -> gce.GceLauncher:
    spec.setdefault("zone", ZONE)
    spec.setdefault("name", "vm")
    spec.setdefault("image", IMAGE)
    launcher = gce.GceLauncher(
        gce.GceSpec(**spec), launch_id=launch_id, project=PROJECT,
        endpoint=fake.endpoint, credentials=AnonymousCredentials(),
        retry_deadline=3.0, retry_initial=0.01, poll_interval=0.01,
    )
    launcher.prepare()
    return launcher


def trusted(keypair: tuple[Path, Path, PublicKey]) -> list[tuple[bytes, bytes]]:
    return [(keypair[2].key_id, keypair[2].raw)]


def seed_in(fake: FakeCompute, name: str) -> envelope.UnverifiedEnvelope | None:
    md = fake.metadata(name)
    if "user-data" not in md:
        return None
    data = md["user-data"].encode()
    if md.get("user-data-encoding") == "base64":
        data = base64.b64decode(data)
    text = userdata.find_seed(data)
    return envelope.parse(text) if text else None


def user_data_of(fake: FakeCompute, name: str) -> bytes | None:
    md = fake.metadata(name)
    if "user-data" not in md:
        return None
    data = md["user-data"].encode()
    return base64.b64decode(data) if md.get("user-data-encoding") == "base64" else data


def guest_reports_after(polls: int) -> Any:
    """A simulated guest: after `polls` queries it reports the seed id it finds in its
    own metadata, as seedtool.guest.gce does after consuming the seed."""
    seen: dict[tuple[str, str, str], int] = {}

    def guest(fake: FakeCompute, key: tuple[str, str, str]) -> None:
        seen[key] = seen.get(key, 0) + 1
        if seen[key] < polls:
            return
        env = seed_in(fake, key[2])
        if env is not None:
            fake.set_guest_attribute(key, "seedtool", "consumed", env.seed_id_hex)

    return guest


# --- launching --------------------------------------------------------------------------


def test_each_instance_gets_its_own_valid_seed(fake: FakeCompute, factory: SeedFactory,
                                               keypair: tuple[Path, Path, PublicKey]) -> None:
    with make(fake, factory, user_data=USER_DATA, labels={"env": "test"},
              metadata={"startup-note": "x"}) as launcher:
        report = run_launch(launcher, factory, 3, concurrency=3)
    assert report.ok and [r.status for r in report.results] == [LAUNCHED] * 3
    assert [r.instance_id for r in report.results] == ["vm-0", "vm-1", "vm-2"]
    ids = set()
    for r in report.results:
        inst = fake.instances[(PROJECT, ZONE, str(r.instance_id))]
        env = seed_in(fake, str(r.instance_id))
        assert env is not None
        verified = envelope.verify(env, trusted(keypair))
        assert verified.seed_id_hex == r.seed_id
        assert inst["labels"] == {"env": "test", "seedtool-launch-id": "test-launch",
                                  "seedtool-index": str(r.index), "seedtool-seed-id": r.seed_id}
        assert userdata.user_parts(user_data_of(fake, str(r.instance_id))) == \
            userdata.parts(USER_DATA)
        assert fake.metadata(str(r.instance_id))["startup-note"] == "x"
        assert "enable-guest-attributes" not in fake.metadata(str(r.instance_id))
        assert inst["disks"][0]["initializeParams"]["sourceImage"] == IMAGE
        assert inst["machineType"] == f"zones/{ZONE}/machineTypes/e2-medium"
        ids.add(verified.seed)
    assert len(ids) == 3
    inserts = fake.calls("insert")
    rids = [s.query["requestId"] for s in inserts]
    assert len(set(rids)) == 3 and all(uuid.UUID(r).version == 5 for r in rids)
    assert rids == sorted(rids, key=lambda r: rids.index(r))
    # the operations were waited on through the configured endpoint, until DONE
    assert len(fake.calls("operations.wait")) >= 3
    assert all(inst["status"] == "RUNNING" for inst in fake.instances.values())


def test_request_id_is_derived_from_launch_id_and_index() -> None:
    a = gce.request_id(PROJECT, ZONE, "l1", 0, "vm-0")
    assert a == gce.request_id(PROJECT, ZONE, "l1", 0, "vm-0")
    assert len({a, gce.request_id(PROJECT, ZONE, "l1", 1, "vm-1"),
                gce.request_id(PROJECT, ZONE, "l2", 0, "vm-0"),
                gce.request_id(PROJECT, ZONE, "l1", 0, "web-0"),
                gce.request_id(PROJECT, ZONE, "l1", 0, "vm-0", 1)}) == 5
    assert uuid.UUID(a) != uuid.UUID(int=0)


def test_gzip_user_data_travels_base64(fake: FakeCompute, factory: SeedFactory,
                                       keypair: tuple[Path, Path, PublicKey]) -> None:
    original = gzip.compress(USER_DATA, mtime=0)
    with make(fake, factory, user_data=original) as launcher:
        assert run_launch(launcher, factory, 1).ok
    md = fake.metadata("vm-0")
    assert md["user-data-encoding"] == "base64"
    data = base64.b64decode(md["user-data"])
    assert data[:2] == b"\x1f\x8b"
    assert userdata.user_parts(data) == userdata.parts(original)
    env = seed_in(fake, "vm-0")
    assert env is not None
    envelope.verify(env, trusted(keypair))


def test_no_user_data_gives_a_seed_only_document(fake: FakeCompute,
                                                 factory: SeedFactory) -> None:
    with make(fake, factory, name="web-{index}-x") as launcher:
        report = run_launch(launcher, factory, 2)
    assert [r.instance_id for r in report.results] == ["web-0-x", "web-1-x"]
    for r in report.results:
        assert userdata.user_parts(user_data_of(fake, str(r.instance_id))) == []
        env = seed_in(fake, str(r.instance_id))
        assert env is not None and env.seed_id_hex == r.seed_id


def test_lost_response_is_retried_with_the_same_request_id(fake: FakeCompute,
                                                           factory: SeedFactory) -> None:
    fake.push(Reply(503, method="insert", process=True))  # made, but the answer is lost
    with make(fake, factory) as launcher:
        report = run_launch(launcher, factory, 1)
    assert report.ok
    inserts = fake.calls("insert")
    assert [s.status for s in inserts] == [503, 200]
    assert inserts[0].query["requestId"] == inserts[1].query["requestId"]
    assert list(fake.instances) == [(PROJECT, ZONE, "vm-0")]
    assert report.results[0].seed_id == fake.instances[(PROJECT, ZONE, "vm-0")]["labels"][
        "seedtool-seed-id"]


def test_throttling_is_retried_then_reported(fake: FakeCompute, factory: SeedFactory) -> None:
    fake.push(Reply(429, method="insert"), Reply(503, method="operations.wait"))
    with make(fake, factory) as launcher:
        assert run_launch(launcher, factory, 1).ok
    assert len(fake.instances) == 1

    fake2 = FakeCompute().start()
    try:
        fake2.push(*[Reply(429, method="insert") for _ in range(500)])
        with make(fake2, factory) as launcher:
            report = run_launch(launcher, factory, 1)
        r = report.results[0]
        assert r.status == FAILED and not fake2.instances
        assert "HTTP 429" in str(r.error) and "--launch-id test-launch" in str(r.error)
    finally:
        fake2.stop()


def test_quota_failure_in_the_operation_is_reported_per_instance(
        fake: FakeCompute, factory: SeedFactory) -> None:
    fake.fail_next_insert("QUOTA_EXCEEDED",
                          "Quota 'CPUS' exceeded.  Limit: 8.0 in region us-central1.")
    with make(fake, factory) as launcher:
        report = run_launch(launcher, factory, 3, concurrency=1)
    by = {r.index: r for r in report.results}
    assert by[0].status == FAILED and [by[1].status, by[2].status] == [LAUNCHED, LAUNCHED]
    assert "quota" in str(by[0].error) and "QUOTA_EXCEEDED" in str(by[0].error)
    assert "CPUS" in str(by[0].error) and "--launch-id test-launch" in str(by[0].error)
    assert (PROJECT, ZONE, "vm-0") not in fake.instances
    assert not report.ok and report.existing_ids() == ["vm-1", "vm-2"]


def test_resume_launches_only_the_missing_with_new_seeds(fake: FakeCompute,
                                                         factory: SeedFactory) -> None:
    fake.fail_next_insert("QUOTA_EXCEEDED", "Quota 'CPUS' exceeded.")
    with make(fake, factory) as launcher:
        first = run_launch(launcher, factory, 3, concurrency=1)
    failed_seed = first.results[0].seed_id
    fake.page_size = 1  # the listing is paged: every page must be read
    with make(fake, factory) as launcher:
        second = run_launch(launcher, factory, 3, concurrency=1, resume=True)
    by = {r.index: r for r in second.results}
    assert by[0].status == LAUNCHED and by[0].seed_id not in (None, failed_seed)
    assert [by[1].status, by[2].status] == [EXISTING, EXISTING]
    assert by[1].seed_id == first.results[1].seed_id
    assert by[2].seed_id == first.results[2].seed_id
    assert len(fake.instances) == 3
    env = seed_in(fake, "vm-0")
    assert env is not None and env.seed_id_hex == by[0].seed_id
    # index 0's first requestId replayed the failed operation: the next one was used
    rids = [s.query["requestId"] for s in fake.calls("insert")]
    assert rids[3] == rids[0] and rids[4] != rids[0]
    assert rids[4] == gce.request_id(PROJECT, ZONE, "test-launch", 0, "vm-0", 1)


def test_permission_denied_stops_further_launches(fake: FakeCompute,
                                                  factory: SeedFactory) -> None:
    fake.push(Reply(403, method="insert", message="Required 'compute.instances.create' "
                    "permission for 'projects/test-project/zones/us-central1-a/instances/vm-0'"))
    with make(fake, factory) as launcher:
        report = run_launch(launcher, factory, 3, concurrency=1)
    statuses = [r.status for r in report.results]
    assert statuses == [FAILED, NOT_STARTED, NOT_STARTED]
    assert "HTTP 403" in str(report.results[0].error)
    assert "roles/compute.instanceAdmin.v1" in str(report.results[0].error)
    assert not fake.instances


def test_unknown_image_zone_and_project(fake: FakeCompute, factory: SeedFactory) -> None:
    missing = "projects/debian-cloud/global/images/family/debian-99"
    with make(fake, factory, image=missing) as launcher:
        r = run_launch(launcher, factory, 1).results[0]
    assert r.status == FAILED and "HTTP 404" in str(r.error) and missing in str(r.error)
    with make(fake, factory, zone="europe-west9-z") as launcher:
        r = run_launch(launcher, factory, 1).results[0]
    assert "projects/test-project/zones/europe-west9-z" in str(r.error)
    launcher = gce.GceLauncher(gce.GceSpec(zone=ZONE, image=IMAGE), launch_id="x",
                               project="nope", endpoint=fake.endpoint,
                               credentials=AnonymousCredentials())
    launcher.prepare()
    with launcher:
        r = run_launch(launcher, factory, 1).results[0]
    assert "projects/nope" in str(r.error) and "--project" in str(r.error)


def test_name_conflict_gives_resume_advice(fake: FakeCompute, factory: SeedFactory) -> None:
    with make(fake, factory, launch_id="first") as launcher:
        assert run_launch(launcher, factory, 1).ok
    with make(fake, factory, launch_id="second") as launcher:
        r = run_launch(launcher, factory, 1).results[0]
    assert r.status == FAILED and "HTTP 409" in str(r.error)
    assert "vm-0 already exists" in str(r.error) and "--launch-id" in str(r.error)
    assert len(fake.instances) == 1


def test_interrupt_reports_instances_that_exist(fake: FakeCompute, factory: SeedFactory) -> None:
    def on_done(r: Any) -> None:
        raise KeyboardInterrupt  # as if Ctrl-C arrived after the first result

    with make(fake, factory) as launcher:
        report = run_launch(launcher, factory, 4, concurrency=1, on_done=on_done)
    assert report.interrupted and not report.ok
    assert report.results[0].status == LAUNCHED
    assert any(r.status == NOT_STARTED for r in report.results)
    assert sorted(report.existing_ids()) == sorted(n for (_, _, n) in fake.instances)
    assert gce.LaunchInterrupted.exit_code == 130


def test_payload_logging_never_shows_the_seed(fake: FakeCompute, factory: SeedFactory,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """The REST transport logs whole requests and responses at DEBUG (the insert body
    and the instance's metadata hold the seed); those records must not get out."""
    # google-api-core stops the "google" logger propagating to the root logger, where
    # caplog listens: listen on it directly, as a user's handler there would
    google = logging.getLogger("google")
    google.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG, logger="google")
    fake.guest = guest_reports_after(1)
    try:
        with make(fake, factory, user_data=USER_DATA, scrub_after_boot=True) as launcher:
            report = run_launch(launcher, factory, 1)
            env = seed_in(fake, "vm-0")
            launcher.scrub(report, timeout=30)
    finally:
        google.removeHandler(caplog.handler)
    # the transport does log at DEBUG (so this test can fail): just not our calls' records
    assert any(r.name.startswith("google") for r in caplog.records)
    assert env is not None and report.results[0].extra["scrubbed"] is True
    logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    for form in (envelope.encode_text(env.signed_part[len(envelope.SIGNING_CONTEXT):])[:40],
                 env.uncredited_seed.hex(), base64.b64encode(env.uncredited_seed).decode()):
        assert form not in logged


def test_instance_body_from_flags() -> None:
    spec = gce.GceSpec(zone=ZONE, image="family/debian-12", machine_type="n2-standard-2",
                       network="prod", subnet="web", service_account="sa@p.iam.gserviceaccount.com",
                       scopes=("compute-ro", "https://www.googleapis.com/auth/logging.write"),
                       params={"scheduling": {"preemptible": True}})
    spec.check()
    body = json.loads(type(spec.instance_body("a-0", 0, "f" * 32, {"k": "v"},
                                              project="p")).to_json(
        spec.instance_body("a-0", 0, "f" * 32, {"k": "v"}, project="p")))
    assert body["machineType"] == f"zones/{ZONE}/machineTypes/n2-standard-2"
    assert body["disks"][0]["initializeParams"]["sourceImage"] == \
        "projects/p/global/images/family/debian-12"
    nic = body["networkInterfaces"][0]
    assert nic["network"] == "global/networks/prod"
    assert nic["subnetwork"] == "regions/us-central1/subnetworks/web"
    assert body["serviceAccounts"] == [{"email": "sa@p.iam.gserviceaccount.com", "scopes": [
        "https://www.googleapis.com/auth/compute-ro",
        "https://www.googleapis.com/auth/logging.write"]}]
    assert body["scheduling"]["preemptible"] is True
    assert body["metadata"]["items"] == [{"key": "k", "value": "v"}]


# --- refusals --------------------------------------------------------------------------


@pytest.mark.parametrize("spec,words", [
    ({"params": {"count": 3}}, "bulkInsert"),
    ({"params": {"perInstanceProperties": {}}}, "bulkInsert"),
    ({"params": {"sourceMachineImage": "x"}}, "machine image"),
    ({"metadata": {"user-data": "x"}}, "--user-data"),
    ({"labels": {"seedtool-seed-id": "x"}}, "reserved"),
    ({"labels": {"Env": "x"}}, "label rules"),
    ({"labels": {"env": "Prod"}}, "label rules"),
    ({"params": {"name": "x"}}, "--name"),
    ({"params": {"notAField": 1}}, "notAField"),
    ({"image": None}, "--image"),
    ({"zone": "us-central1"}, "--zone"),
    ({"scrub_after_boot": True, "metadata": {"enable-guest-attributes": "FALSE"}},
     "guest attributes"),
])
def test_bad_options_are_refused_before_any_call(fake: FakeCompute, factory: SeedFactory,
                                                 spec: dict[str, Any], words: str) -> None:
    with pytest.raises(UsageError) as info:
        make(fake, factory, **spec)
    assert words in str(info.value)
    assert not fake.requests


def test_instance_names_are_checked() -> None:
    assert gce.instance_names("db", 2) == ["db-0", "db-1"]
    with pytest.raises(UsageError, match="not a valid GCE name"):
        gce.instance_names("DB", 1)
    assert gce.instance_names("db-{index}-a", 2) == ["db-0-a", "db-1-a"]
    with pytest.raises(UsageError, match="not a valid GCE name"):
        gce.instance_names("a" * 62, 10)  # a-...-9 fits, the index makes it too long
    with pytest.raises(UsageError, match="launch id"):
        gce.check_launch_id("Has Spaces")


def test_template_holding_a_seed_is_refused(fake: FakeCompute, factory: SeedFactory) -> None:
    seed = factory.new()
    shared = userdata.add_seed(USER_DATA, seed.text, target="gce")
    tpl = fake.add_template("shared", {"metadata": {"items": [
        {"key": "user-data", "value": shared.decode()}]}})
    with pytest.raises(gce.SharedSeedRefused, match="share that seed"):
        make(fake, factory, image=None, params={"sourceInstanceTemplate": tpl})
    assert not fake.calls("insert")


def test_template_user_data_gets_a_fresh_seed(fake: FakeCompute, factory: SeedFactory) -> None:
    tpl = fake.add_template("web", {
        "machineType": "e2-small",
        "labels": {"team": "a"},
        "disks": [{"boot": True, "initializeParams": {"sourceImage": IMAGE}}],
        "metadata": {"items": [{"key": "user-data", "value": USER_DATA.decode()},
                               {"key": "ssh-keys", "value": "u:ssh-ed25519 AAAA u"}]},
    })
    launcher = make(fake, factory, image=None, params={"sourceInstanceTemplate": tpl})
    with launcher:
        report = run_launch(launcher, factory, 2)
    assert report.ok
    assert fake.calls("insert")[0].query["sourceInstanceTemplate"] == tpl
    seeds = set()
    for r in report.results:
        name = str(r.instance_id)
        assert userdata.user_parts(user_data_of(fake, name)) == userdata.parts(USER_DATA)
        assert fake.metadata(name)["ssh-keys"] == "u:ssh-ed25519 AAAA u"
        assert fake.instances[(PROJECT, ZONE, name)]["labels"]["team"] == "a"
        assert fake.instances[(PROJECT, ZONE, name)]["machineType"] == "e2-small"
        env = seed_in(fake, name)
        assert env is not None
        seeds.add(env.seed_id_hex)
    assert len(seeds) == 2


# --- scrub after boot ---------------------------------------------------------------------


def test_scrub_after_boot_removes_the_seed(fake: FakeCompute, factory: SeedFactory) -> None:
    fake.guest = guest_reports_after(3)
    with make(fake, factory, user_data=USER_DATA, scrub_after_boot=True) as launcher:
        report = run_launch(launcher, factory, 2)
        for r in report.results:  # before the guest reports, the seed is there
            assert seed_in(fake, str(r.instance_id)) is not None
            assert fake.metadata(str(r.instance_id))["enable-guest-attributes"] == "TRUE"
        assert launcher.scrub(report, timeout=30) is False
    for r in report.results:
        name = str(r.instance_id)
        assert r.extra["scrubbed"] is True and "warning" not in r.extra
        assert seed_in(fake, name) is None
        assert fake.metadata(name)["user-data"] == USER_DATA.decode()
        assert "user-data-encoding" not in fake.metadata(name)
    assert len(fake.calls("setMetadata")) == 2
    assert all(s.query.get("requestId") for s in fake.calls("setMetadata"))


def test_scrub_rebuilds_gzip_user_data_and_drops_it_when_there_was_none(
        fake: FakeCompute, factory: SeedFactory) -> None:
    fake.guest = guest_reports_after(1)
    original = gzip.compress(USER_DATA, mtime=0)
    with make(fake, factory, user_data=original, scrub_after_boot=True) as launcher:
        report = run_launch(launcher, factory, 1)
        launcher.scrub(report, timeout=30)
    md = fake.metadata("vm-0")
    assert md["user-data-encoding"] == "base64" and base64.b64decode(md["user-data"]) == original
    with make(fake, factory, name="bare", scrub_after_boot=True) as launcher:
        report = run_launch(launcher, factory, 1)
        launcher.scrub(report, timeout=30)
    assert report.results[0].extra["scrubbed"] is True, report.results[0].extra
    md = fake.metadata("bare-0")
    assert "user-data" not in md and "user-data-encoding" not in md
    assert md["enable-guest-attributes"] == "TRUE"


def test_scrub_survives_a_fingerprint_race(fake: FakeCompute, factory: SeedFactory) -> None:
    fake.guest = guest_reports_after(1)

    def other_writer(items: dict[str, Any]) -> None:
        items["other-writer"] = "was here"

    fake.race_next_set_metadata(other_writer)
    with make(fake, factory, user_data=USER_DATA, scrub_after_boot=True) as launcher:
        report = run_launch(launcher, factory, 1)
        launcher.scrub(report, timeout=30)
    assert report.results[0].extra["scrubbed"] is True
    assert [s.status for s in fake.calls("setMetadata")] == [412, 200]
    md = fake.metadata("vm-0")
    assert md["other-writer"] == "was here" and md["user-data"] == USER_DATA.decode()
    assert seed_in(fake, "vm-0") is None


def test_scrub_leaves_changed_user_data_alone(fake: FakeCompute, factory: SeedFactory) -> None:
    fake.guest = guest_reports_after(1)

    def rewrite(items: dict[str, Any]) -> None:  # someone edits the user's part
        items["user-data"] = items["user-data"].replace("htop", "vim")

    fake.race_next_set_metadata(rewrite)
    with make(fake, factory, user_data=USER_DATA, scrub_after_boot=True) as launcher:
        report = run_launch(launcher, factory, 1)
        launcher.scrub(report, timeout=30)
    r = report.results[0]
    assert r.extra["scrubbed"] is False and "changed since launch" in r.extra["warning"]
    assert "vim" in fake.metadata("vm-0")["user-data"]


def test_scrub_timeout_is_a_warning_not_a_silent_success(fake: FakeCompute,
                                                         factory: SeedFactory) -> None:
    with make(fake, factory, scrub_after_boot=True) as launcher:
        report = run_launch(launcher, factory, 1)
        launcher.scrub(report, timeout=0.2)
    r = report.results[0]
    assert r.status == LAUNCHED and r.extra["scrubbed"] is False
    assert r.extra["warning"].startswith("seed still in metadata")
    assert seed_in(fake, "vm-0") is not None
    assert report.warnings() == [(r, r.extra["warning"])]


# --- the command line -------------------------------------------------------------------


def _adc_file(tmp_path: Path, fake: FakeCompute) -> Path:
    """Application Default Credentials for workload identity federation (what CI
    systems use): google-auth exchanges a subject token at `token_url`, here the
    fake's. (gcloud's authorized_user file always refreshes at Google's endpoint, and
    service-account keys sign their own JWTs, so neither can reach a local fake.)"""
    subject = tmp_path / "subject-token"
    subject.write_text("subject-token")
    path = tmp_path / "adc.json"
    path.write_text(json.dumps({
        "type": "external_account",
        "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/"
                    "ci/providers/ci",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": f"{fake.endpoint}/token",
        "credential_source": {"file": str(subject)},
    }))
    return path


def _env(tmp_path: Path, adc: Path | None = None, **extra: str) -> dict[str, str]:
    gcloud = tmp_path / "gcloud"
    gcloud.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in (
        "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "GCE_METADATA_HOST",
        "GCE_METADATA_IP", "SEEDTOOL_KEY_PASSPHRASE")}
    env.update({"HOME": str(tmp_path), "CLOUDSDK_CONFIG": str(gcloud),
                "PATH": os.path.dirname(sys.executable),  # no gcloud to ask for a project
                "GOOGLE_CLOUD_PROJECT": PROJECT})
    if adc is not None:
        env["GOOGLE_APPLICATION_CREDENTIALS"] = str(adc)
    env.update(extra)
    return env


class Run:
    def __init__(self, p: subprocess.CompletedProcess[str]) -> None:
        self.exit_code, self.stdout, self.stderr = p.returncode, p.stdout, p.stderr
        self.output = p.stdout + p.stderr


def _run(args: list[str], env: dict[str, str]) -> Run:
    """The real command in its own process: real exit codes and error handling. (The
    fake's `wait` should then hold until DONE, as the real one does: the command
    pauses between polls that return early.)"""
    return Run(subprocess.run([sys.executable, "-m", "seedtool", "launch", "gce", *args],
                              env=env, capture_output=True, text=True, timeout=120,
                              cwd=Path(__file__).resolve().parents[2]))


def test_cli_launches_with_adc_and_prints_no_seed(tmp_path: Path, fake: FakeCompute,
                                                  keypair: tuple[Path, Path, PublicKey]) -> None:
    fake.wait_returns_early = False
    fake.token = "token-from-adc"  # every API call must carry the ADC token
    adc = _adc_file(tmp_path, fake)
    ud = tmp_path / "user-data"
    ud.write_bytes(USER_DATA)
    args = ["--key", str(keypair[0]), "--zone", ZONE, "--image", IMAGE, "--name", "cli",
            "--count", "2", "--user-data", str(ud), "--label", "env=ci", "--endpoint",
            fake.endpoint]
    env = _env(tmp_path, adc)
    res = _run([*args, "--json"], env)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["project"] == PROJECT and out["zone"] == ZONE
    assert [i["instance_id"] for i in out["instances"]] == ["cli-0", "cli-1"]
    assert all(s.authorization == "Bearer token-from-adc" for s in fake.requests
               if s.method != "token")
    lid = out["launch_id"]
    assert f"launch id {lid}" in res.stderr
    secrets = []
    for i in out["instances"]:
        env_ = seed_in(fake, i["instance_id"])
        assert env_ is not None and env_.seed_id_hex == i["seed_id"]
        seed = env_.uncredited_seed
        secrets += [seed.hex(), base64.b64encode(seed).decode(), userdata.find_seed(
            user_data_of(fake, i["instance_id"])) or "?", seed.decode("latin-1")]
    # the table form of a resumed run: everything exists already, nothing launched
    res2 = _run([*args, "--launch-id", lid], env)
    assert res2.exit_code == 0, res2.output
    assert re.search(r"cli-0\s+\S+\s+already-launched", res2.stdout)
    assert len(fake.calls("insert")) == 2
    for text in (res.output, res.stderr, res2.output, res2.stderr):
        for s in secrets:
            assert s not in text


def test_cli_partial_failure_exits_1_and_lists_what_exists(
        tmp_path: Path, fake: FakeCompute, keypair: tuple[Path, Path, PublicKey]) -> None:
    fake.wait_returns_early = False
    adc = _adc_file(tmp_path, fake)
    fake.fail_next_insert("QUOTA_EXCEEDED", "Quota 'CPUS' exceeded.")
    res = _run(["--key", str(keypair[0]), "--zone", ZONE, "--image", IMAGE, "--count", "2",
                "--concurrency", "1", "--endpoint", fake.endpoint],
               _env(tmp_path, adc))
    assert res.exit_code == 1
    assert re.search(r"^0\s+-\s+[0-9a-f]{32}\s+failed: Compute Engine refused instance "
                     r"seedtool-0 for quota \(QUOTA_EXCEEDED", res.stdout, re.M)
    assert "seedtool-1" in res.stdout and "1 of 2 instances failed" in res.stderr
    assert "instances that exist: seedtool-1" in res.stderr


def test_cli_scrub_after_boot_reports_per_instance(
        tmp_path: Path, fake: FakeCompute, keypair: tuple[Path, Path, PublicKey]) -> None:
    fake.wait_returns_early = False
    adc = _adc_file(tmp_path, fake)
    fake.guest = guest_reports_after(1)
    res = _run(["--key", str(keypair[0]), "--zone", ZONE, "--image", IMAGE, "--count", "1",
                "--scrub-after-boot", "--endpoint", fake.endpoint],
               _env(tmp_path, adc))
    assert res.exit_code == 0, res.output
    assert "SCRUBBED" in res.stdout and re.search(r"launched\s+yes", res.stdout)
    assert seed_in(fake, "seedtool-0") is None


def test_cli_missing_and_expired_credentials(tmp_path: Path, fake: FakeCompute,
                                             keypair: tuple[Path, Path, PublicKey]) -> None:
    fake.wait_returns_early = False
    args = ["--key", str(keypair[0]), "--zone", ZONE, "--image", IMAGE,
            "--endpoint", fake.endpoint]
    res = _run(args, _env(tmp_path))
    assert res.exit_code == 1
    assert "gcloud auth application-default login" in res.stderr
    assert "GOOGLE_APPLICATION_CREDENTIALS" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1

    fake.token_error = "invalid_grant"  # the refresh token expired or was revoked
    adc = _adc_file(tmp_path, fake)
    res = _run(args, _env(tmp_path, adc))
    assert res.exit_code == 1
    assert "could not be refreshed" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert fake.calls("token") and not fake.instances and not fake.calls("insert")


def test_cli_refuses_user_data_in_metadata(tmp_path: Path, fake: FakeCompute,
                                           keypair: tuple[Path, Path, PublicKey]) -> None:
    fake.wait_returns_early = False
    res = _run(["--key", str(keypair[0]), "--zone", ZONE, "--image", IMAGE,
                "--metadata", "user-data=#cloud-config", "--endpoint", fake.endpoint],
               _env(tmp_path))
    assert res.exit_code == 2 and "--user-data FILE" in res.stderr
    assert not fake.requests
