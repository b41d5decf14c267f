"""`seedtool launch aws`: real boto3 against moto's server and against devtools/fake_ec2.py.

moto checks what ends up on the instances (user-data read back with
DescribeInstanceAttribute, tags, metadata options, launch templates); the fake covers
what moto does not model: ClientToken idempotency, MaxCount, the 16 KB limit, and
injected throttling, capacity, quota and credential errors. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from devtools.fake_ec2 import DEFAULT_IMAGE, FakeEc2
from seedtool.deliver import userdata
from seedtool.generate import SeedFactory
from seedtool.launch import aws
from seedtool.launch.base import (
    DRY_RUN,
    EXISTING,
    FAILED,
    LAUNCHED,
    NOT_STARTED,
    LaunchReport,
    run_launch,
)
from seedtool.shared import envelope
from seedtool.shared.errors import UsageError
from seedtool.shared.pubkeys import PublicKey, trusted_pairs

if TYPE_CHECKING:
    from devtools.moto_server import MotoServer

pytest_plugins = ["devtools.moto_server"]
pytest.importorskip("boto3")

REPO = Path(__file__).resolve().parents[2]
USER_SCRIPT = b"#!/bin/sh\necho hello from the user's own script\n"


# --- helpers --------------------------------------------------------------------------


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "seedtool", "launch", "aws", *args],
                          cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True,
                          timeout=180)


def one_line_error(p: subprocess.CompletedProcess[bytes]) -> str:
    lines = [ln for ln in p.stderr.decode().splitlines() if ln.startswith("seedtool: error: ")]
    assert len(lines) == 1, p.stderr.decode()
    return lines[0]


def trusted(key: PublicKey) -> list[tuple[bytes, bytes]]:
    return trusted_pairs([key])


def verified(data: bytes, key: PublicKey) -> envelope.VerifiedEnvelope:
    text = userdata.find_seed(data)
    assert text is not None
    return envelope.verify(text, trusted(key))


def assert_no_secret(envs: list[envelope.VerifiedEnvelope], texts: list[str],
                     *outputs: bytes) -> None:
    for out in outputs:
        for env in envs:
            for form in (env.seed, env.seed.hex().encode(), base64.b64encode(env.seed),
                         env.seed[:16].hex().encode()):
                assert form not in out
        for t in texts:
            assert t.encode()[:48] not in out


def ec2(endpoint: str) -> Any:
    import boto3

    return boto3.client("ec2", endpoint_url=endpoint, region_name="us-east-1")


def moto_image(endpoint: str) -> str:
    return str(ec2(endpoint).describe_images(Owners=["amazon"])["Images"][0]["ImageId"])


def tags_of(inst: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in inst.get("Tags", [])}


def moto_instances(endpoint: str, launch_id: str) -> list[dict[str, Any]]:
    pages = ec2(endpoint).get_paginator("describe_instances").paginate(
        Filters=[{"Name": f"tag:{aws.TAG_LAUNCH_ID}", "Values": [launch_id]}])
    return [i for p in pages for r in p["Reservations"] for i in r["Instances"]]


def moto_user_data(endpoint: str, instance_id: str) -> bytes:
    attr = ec2(endpoint).describe_instance_attribute(InstanceId=instance_id,
                                                      Attribute="userData")
    return base64.b64decode(attr["UserData"]["Value"])


@pytest.fixture
def fake(aws_env: dict[str, str]) -> Iterator[FakeEc2]:
    server = FakeEc2()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def key(keypair: tuple[Path, Path, PublicKey]) -> Path:
    return keypair[0]


@pytest.fixture
def pub(keypair: tuple[Path, Path, PublicKey]) -> PublicKey:
    return keypair[2]


def launcher(fake: FakeEc2, *, launch_id: str = "L1", user_data: bytes | None = USER_SCRIPT,
             dry_run: bool = False, **req: Any) -> aws.AwsLauncher:
    req.setdefault("image_id", DEFAULT_IMAGE)
    req.setdefault("instance_type", "t3.micro")
    client = aws.make_client(endpoint_url=fake.url)
    return aws.AwsLauncher(client, aws.LaunchRequest(**req), launch_id=launch_id,
                           user_data=user_data, dry_run=dry_run)


def go(la: aws.AwsLauncher, private_key: object, count: int, **kw: Any) -> LaunchReport:
    """The launch engine with a fresh factory, as the command runs it."""
    return run_launch(la, SeedFactory(private_key), count, **kw)


# --- against moto: what ends up on the instances ----------------------------------------


def test_each_instance_gets_its_own_verified_seed_and_the_users_parts(
    moto_server: MotoServer, aws_env: dict[str, str], key: Path, pub: PublicKey, tmp_path: Path
) -> None:
    url = moto_server.endpoint_url
    ud = tmp_path / "user-data"
    ud.write_bytes(USER_SCRIPT)
    p = cli("--key", str(key), "--endpoint-url", url, "--image-id", moto_image(url),
            "--instance-type", "t3.micro", "--count", "3", "--user-data", str(ud),
            "--tag", "Name=web", "--tag", "team=infra", "--json", "--launch-id", "run-1")
    assert p.returncode == 0, p.stderr.decode()
    report = json.loads(p.stdout)
    assert report["launch_id"] == "run-1" and not report["interrupted"]
    assert [r["status"] for r in report["instances"]] == [LAUNCHED] * 3
    assert "launch id run-1" in p.stderr.decode()

    envs, texts = [], []
    for row in report["instances"]:
        data = moto_user_data(url, row["instance_id"])
        env = verified(data, pub)
        envs.append(env)
        texts.append(str(userdata.find_seed(data)))
        assert env.seed_id.hex() == row["seed_id"]
        assert userdata.user_parts(data) == userdata.parts(USER_SCRIPT)
    assert len({e.seed for e in envs}) == 3 and len({e.seed_id for e in envs}) == 3

    insts = {i["InstanceId"]: i for i in moto_instances(url, "run-1")}
    assert len(insts) == 3
    for row in report["instances"]:
        inst = insts[row["instance_id"]]
        tags = tags_of(inst)
        assert tags[aws.TAG_SEED_ID] == row["seed_id"]
        assert tags[aws.TAG_INDEX] == str(row["index"])
        assert tags["Name"] == "web" and tags["team"] == "infra"
        md = inst["MetadataOptions"]
        assert (md["HttpTokens"], md["HttpPutResponseHopLimit"], md["HttpEndpoint"]) == \
            ("required", 1, "enabled")
        tag_text = json.dumps(inst.get("Tags")).encode()
        assert_no_secret(envs, texts, tag_text)
    assert_no_secret(envs, texts, p.stdout, p.stderr)


def test_resume_launches_only_the_missing_indices_with_new_seeds(
    moto_server: MotoServer, aws_env: dict[str, str], key: Path, pub: PublicKey
) -> None:
    url = moto_server.endpoint_url
    common = ["--key", str(key), "--endpoint-url", url, "--image-id", moto_image(url),
              "--launch-id", "resume-me", "--json"]
    first = cli(*common, "--count", "2")
    assert first.returncode == 0, first.stderr.decode()
    again = cli(*common, "--count", "4")
    assert again.returncode == 0, again.stderr.decode()
    rows = json.loads(again.stdout)["instances"]
    assert [r["status"] for r in rows] == [EXISTING, EXISTING, LAUNCHED, LAUNCHED]
    before = {r["instance_id"]: r["seed_id"] for r in json.loads(first.stdout)["instances"]}
    assert {r["instance_id"]: r["seed_id"] for r in rows[:2]} == before
    assert len(moto_instances(url, "resume-me")) == 4
    new_ids = {r["seed_id"] for r in rows[2:]}
    assert len(new_ids) == 2 and not new_ids & set(before.values())
    for r in rows:
        assert verified(moto_user_data(url, r["instance_id"]), pub).seed_id.hex() == r["seed_id"]


def test_launch_template_user_data_gets_a_seed_per_instance(
    moto_server: MotoServer, aws_env: dict[str, str], key: Path, pub: PublicKey
) -> None:
    url = moto_server.endpoint_url
    tpl_ud = b"#cloud-config\npackages: [nginx]\n"
    tid = ec2(url).create_launch_template(
        LaunchTemplateName="web-tpl",
        LaunchTemplateData={"ImageId": moto_image(url), "InstanceType": "t3.small",
                            "UserData": base64.b64encode(tpl_ud).decode()},
    )["LaunchTemplate"]["LaunchTemplateId"]
    p = cli("--key", str(key), "--endpoint-url", url, "--launch-template", "web-tpl:$Default",
            "--count", "2", "--json")
    assert p.returncode == 0, p.stderr.decode()
    assert "launch template web-tpl version 1's user-data" in p.stderr.decode()
    rows = json.loads(p.stdout)["instances"]
    seeds = set()
    for r in rows:
        data = moto_user_data(url, r["instance_id"])
        assert userdata.user_parts(data) == userdata.parts(tpl_ud)
        seeds.add(verified(data, pub).seed)
    assert len(seeds) == 2
    insts = moto_instances(url, json.loads(p.stdout)["launch_id"])
    assert {tags_of(i).get("aws:ec2launchtemplate:id") for i in insts} == {tid}


def test_launch_template_holding_a_seed_is_refused(
    moto_server: MotoServer, aws_env: dict[str, str], key: Path, private_key: object
) -> None:
    url = moto_server.endpoint_url
    baked = userdata.add_seed(b"#cloud-config\n{}\n", SeedFactory(private_key).new().text)
    tid = ec2(url).create_launch_template(
        LaunchTemplateName="baked",
        LaunchTemplateData={"ImageId": moto_image(url),
                            "UserData": base64.b64encode(baked).decode()},
    )["LaunchTemplate"]["LaunchTemplateId"]
    p = cli("--key", str(key), "--endpoint-url", url, "--launch-template", tid, "--count", "2")
    assert p.returncode == 2
    err = one_line_error(p)
    assert "carries a seedtool seed" in err and "every instance" in err
    assert "--launch-template" in err
    assert ec2(url).describe_instances()["Reservations"] == []


# --- against the fake: idempotency, limits, faults ------------------------------------


def test_every_call_is_one_instance_with_its_own_token_seed_and_imdsv2(
    fake: FakeEc2, private_key: object, pub: PublicKey
) -> None:
    la = launcher(fake, launch_id="calls")
    report = go(la, private_key, 5, concurrency=3)
    assert report.ok and [r.status for r in report.results] == [LAUNCHED] * 5
    reqs = fake.run_requests()
    assert len(reqs) == 5
    assert all(r.params["MinCount"] == r.params["MaxCount"] == "1" for r in reqs)
    tokens = {r.params["ClientToken"] for r in reqs}
    assert tokens == {aws.client_token("calls", i) for i in range(5)}
    assert all(len(t) <= 64 and t.isascii() for t in tokens)
    assert len({r.params["UserData"] for r in reqs}) == 5
    for r in reqs:
        assert r.params["MetadataOptions.HttpTokens"] == "required"
        assert r.params["MetadataOptions.HttpPutResponseHopLimit"] == "1"
        assert r.params["MetadataOptions.HttpEndpoint"] == "enabled"
        assert verified(r.user_data(), pub).seed_id.hex() == r.tags()[aws.TAG_SEED_ID]


def test_allow_imdsv1_sends_no_metadata_options(fake: FakeEc2, private_key: object) -> None:
    la = launcher(fake, allow_imdsv1=True)
    assert go(la, private_key, 1).ok
    assert not any(k.startswith("MetadataOptions") for k in fake.run_requests()[0].params)


def test_client_token_is_stable_and_distinct() -> None:
    assert aws.client_token("a", 0) == aws.client_token("a", 0)
    assert len({aws.client_token(lid, i) for lid in ("a", "b") for i in range(3)}) == 6


def test_a_lost_reply_is_retried_with_the_same_token_and_launches_once(
    fake: FakeEc2, private_key: object
) -> None:
    fake.fail("RunInstances", "InternalError", status=500, after_work=True)
    report = go(launcher(fake), private_key, 1)
    assert report.ok
    reqs = fake.run_requests()
    assert len(reqs) == 2 and reqs[0].params == reqs[1].params
    assert list(fake.instances) == [report.results[0].instance_id]


def test_throttling_is_retried_then_succeeds(fake: FakeEc2, private_key: object) -> None:
    fake.fail("RunInstances", "RequestLimitExceeded", status=503, times=2)
    report = go(launcher(fake), private_key, 1)
    assert report.ok and len(fake.run_requests()) == 3 and len(fake.instances) == 1


def test_throttling_after_all_retries_stops_the_launch(
    fake: FakeEc2, private_key: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    fake.fail("RunInstances", "RequestLimitExceeded", status=503, times=None)
    report = go(launcher(fake), private_key, 3, concurrency=1)
    assert [r.status for r in report.results] == [FAILED, NOT_STARTED, NOT_STARTED]
    err = report.results[0].error or ""
    assert "throttling" in err and "2 attempts" in err and "--launch-id L1" in err
    assert len(fake.run_requests()) == 2 and not fake.instances


def test_capacity_failure_of_one_index_is_reported_and_a_rerun_uses_a_new_seed(
    fake: FakeEc2, aws_env: dict[str, str], key: Path, pub: PublicKey
) -> None:
    fake.fail("RunInstances", "InsufficientInstanceCapacity", status=500, index=1, times=None)
    args = ["--key", str(key), "--endpoint-url", fake.url, "--image-id", DEFAULT_IMAGE,
            "--instance-type", "p5.48xlarge", "--count", "3", "--launch-id", "cap"]
    p = cli(*args, env={"AWS_MAX_ATTEMPTS": "1"})
    assert p.returncode == 1
    lines = p.stdout.decode().splitlines()
    assert lines[0].split() == ["INDEX", "INSTANCE", "SEED", "STATUS"]
    rows = {int(ln.split()[0]): ln for ln in lines[1:]}
    launched = {i: rows[i].split()[1] for i in (0, 2)}
    assert all(" launched" in rows[i] for i in (0, 2))
    assert "failed: AWS has no spare capacity for p5.48xlarge" in rows[1]
    err = one_line_error(p)
    assert "indices 1" in err and "--launch-id cap" in err
    assert sorted(launched.values()) == sorted(fake.instances)
    assert all(iid in err for iid in launched.values())
    failed_seed = rows[1].split()[2]
    assert len(failed_seed) == 32  # the seed the refused call carried, never used again

    fake.rules.clear()
    again = cli(*args, "--json")
    assert again.returncode == 0, again.stderr.decode()
    out = json.loads(again.stdout)["instances"]
    assert [r["status"] for r in out] == [EXISTING, LAUNCHED, EXISTING]
    seeds_before = {fake.instances[i].tags[aws.TAG_SEED_ID] for i in launched.values()}
    assert out[1]["seed_id"] not in seeds_before | {failed_seed}
    assert len(fake.instances) == 3
    envs = [verified(i.user_data, pub) for i in fake.instances.values()]
    texts = [str(userdata.find_seed(i.user_data)) for i in fake.instances.values()]
    assert_no_secret(envs, texts, p.stdout, p.stderr, again.stdout, again.stderr)


def test_rerun_after_the_instance_was_terminated_gets_idempotent_mismatch(
    fake: FakeEc2, private_key: object
) -> None:
    first = go(launcher(fake, launch_id="gone"), private_key, 1)
    fake.set_state(str(first.results[0].instance_id), "terminated")
    again = go(launcher(fake, launch_id="gone"), private_key, 1, resume=True)
    r = again.results[0]
    assert r.status == FAILED and len(fake.instances) == 1
    assert "earlier run with launch id gone used different parameters" in (r.error or "")
    assert r.seed_id != first.results[0].seed_id


def test_user_data_near_the_limit_is_gzipped_and_accepted(
    fake: FakeEc2, private_key: object, pub: PublicKey
) -> None:
    big = b"#!/bin/sh\n" + b"echo the same line again and again\n" * 600  # ~21 KB
    report = go(launcher(fake, user_data=big), private_key, 2)
    assert report.ok
    for inst in fake.instances.values():
        assert len(inst.user_data) <= 16384 and inst.user_data[:2] == b"\x1f\x8b"
        assert userdata.user_parts(inst.user_data) == userdata.parts(big)
        verified(inst.user_data, pub)


def test_user_data_too_large_is_refused_before_any_call(
    fake: FakeEc2, aws_env: dict[str, str], key: Path, tmp_path: Path
) -> None:
    ud = tmp_path / "big"
    ud.write_bytes(b"#!/bin/sh\n: " + base64.b64encode(os.urandom(20000)) + b"\n")
    p = cli("--key", str(key), "--endpoint-url", fake.url, "--image-id", DEFAULT_IMAGE,
            "--count", "3", "--user-data", str(ud))
    assert p.returncode == 1
    out = p.stdout.decode()
    assert "AWS user-data limit of 16384 bytes" in out and out.count("not-started") == 2
    assert not fake.run_requests()
    one_line_error(p)


@pytest.mark.parametrize(("content", "words"), [
    (b"\x1f\x8b\x08\x00 not really gzip", "does not decompress"),
    (b"MIME-Version: 1.0\nContent-Type: multipart/mixed\n\nno boundary here\n", "boundary"),
])
def test_user_data_that_is_not_what_its_header_says_is_refused(
    fake: FakeEc2, aws_env: dict[str, str], key: Path, tmp_path: Path, content: bytes,
    words: str,
) -> None:
    ud = tmp_path / "ud"
    ud.write_bytes(content)
    p = cli("--key", str(key), "--endpoint-url", fake.url, "--image-id", DEFAULT_IMAGE,
            "--user-data", str(ud))
    assert p.returncode == 1
    assert words in one_line_error(p)
    assert not fake.requests


def test_user_data_already_holding_a_seed_is_refused(
    fake: FakeEc2, private_key: object
) -> None:
    once = userdata.add_seed(USER_SCRIPT, SeedFactory(private_key).new().text)
    with pytest.raises(aws.SharedSeedRefused, match="already carries a seedtool seed"):
        launcher(fake, user_data=once).prepare()


@pytest.mark.parametrize(("code", "status", "words"), [
    ("InvalidAMIID.NotFound", 400, ["no usable AMI", "--image-id", "--region"]),
    ("InstanceLimitExceeded", 400, ["quota", "Service Quotas", "--launch-id L1"]),
    ("VcpuLimitExceeded", 400, ["quota", "Service Quotas"]),
    ("UnauthorizedOperation", 403, ["ec2:RunInstances", "decode-authorization-message"]),
    ("ExpiredToken", 400, ["credentials", "aws sso login"]),
    ("AuthFailure", 401, ["credentials", "--profile"]),
    ("InvalidParameterCombination", 400, ["InvalidParameterCombination", "scripted failure"]),
])
def test_errors_that_every_launch_would_hit_stop_the_rest(
    fake: FakeEc2, private_key: object, code: str, status: int, words: list[str]
) -> None:
    fake.fail("RunInstances", code, status=status, index=1, times=None)
    report = go(launcher(fake), private_key, 4, concurrency=1)
    assert [r.status for r in report.results] == [LAUNCHED, FAILED, NOT_STARTED, NOT_STARTED]
    err = report.results[1].error or ""
    for w in words:
        assert w in err
    assert "\n" not in err
    assert "index 1" in (report.results[2].error or "")


def test_unknown_ami_from_the_fake_itself(fake: FakeEc2, private_key: object) -> None:
    report = go(launcher(fake, image_id="ami-00000000deadbeef0"), private_key, 1)
    assert "no usable AMI ami-00000000deadbeef0 in us-east-1" in (report.results[0].error or "")


def test_dry_run_reports_success_and_unauthorized(fake: FakeEc2, private_key: object) -> None:
    report = go(launcher(fake, dry_run=True), private_key, 2)
    assert [r.status for r in report.results] == [DRY_RUN, DRY_RUN] and report.ok
    assert all(r.params.get("DryRun") == "true" for r in fake.run_requests())
    assert not fake.instances
    fake.fail("RunInstances", "UnauthorizedOperation", status=403, times=None)
    denied = go(launcher(fake, dry_run=True), private_key, 2)
    assert denied.results[0].status == FAILED and not denied.ok
    assert "UnauthorizedOperation" in (denied.results[0].error or "")


def test_missing_credentials(aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                             key: Path) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    p = cli("--key", str(key), "--endpoint-url", "http://127.0.0.1:9", "--image-id",
            DEFAULT_IMAGE)
    assert p.returncode == 1
    assert "no AWS credentials were found; run aws configure" in one_line_error(p)


def test_missing_boto3_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(aws.AwsLaunchError, match=r"pip install 'seedtool\[aws\]'"):
        aws.make_client(region="us-east-1")


def test_unknown_launch_template_in_the_fake(fake: FakeEc2, private_key: object) -> None:
    with pytest.raises(aws.AwsLaunchError, match="no such launch template"):
        launcher(fake, image_id=None, launch_template="nope").prepare()
    fake.add_template("plain", USER_SCRIPT)
    la = launcher(fake, image_id=None, launch_template="plain:1", user_data=None)
    assert go(la, private_key, 1).ok
    sent = fake.run_requests()[0].params
    assert sent["LaunchTemplate.LaunchTemplateName"] == "plain"
    assert sent["LaunchTemplate.Version"] == "1"
    assert userdata.user_parts(fake.run_requests()[0].user_data()) == userdata.parts(USER_SCRIPT)


# --- refusals of what would share a seed, and bad options ------------------------------


@pytest.mark.parametrize(("params", "words"), [
    ({"MaxCount": 5}, "same seed"),
    ({"MinCount": 2, "MaxCount": 2}, "same seed"),
    ({"UserData": "x"}, "must not set UserData"),
    ({"ClientToken": "x"}, "must not set ClientToken"),
    ({"DryRun": True}, "must not set DryRun"),
    ({"MetadataOptions": {"HttpTokens": "optional"}}, "--allow-imdsv1"),
    ({"MetadataOptions": {"HttpEndpoint": "disabled"}}, "never arrive"),
    ({"ImageId": "ami-other"}, "both as an option and in --params"),
    ({"TagSpecifications": [{"ResourceType": "instance",
                             "Tags": [{"Key": "seedtool:index", "Value": "9"}]}]},
     "seedtool:* tags"),
])
def test_request_refusals(params: dict[str, Any], words: str) -> None:
    with pytest.raises(UsageError, match=words.replace("*", r"\*")):
        aws.LaunchRequest(image_id=DEFAULT_IMAGE, params=params).base_params()


def test_params_are_merged_and_checked_against_the_api_model(
    fake: FakeEc2, private_key: object
) -> None:
    la = launcher(fake, params={"EbsOptimized": True, "MinCount": 1,
                                             "MetadataOptions": {"HttpPutResponseHopLimit": 2}},
                  security_group_ids=aws.parse_security_groups(["sg-1,sg-2", "sg-3"]),
                  iam_instance_profile="arn:aws:iam::123456789012:instance-profile/web",
                  tags=aws.parse_tags(["Name=x=y"]))
    assert go(la, private_key, 1).ok
    sent = fake.run_requests()[0].params
    assert sent["EbsOptimized"] == "true"
    assert sent["MetadataOptions.HttpPutResponseHopLimit"] == "2"
    assert sent["MetadataOptions.HttpTokens"] == "required"
    assert [sent[f"SecurityGroupId.{i}"] for i in (1, 2, 3)] == ["sg-1", "sg-2", "sg-3"]
    assert sent["IamInstanceProfile.Arn"].endswith("instance-profile/web")
    assert fake.run_requests()[0].tags()["Name"] == "x=y"
    with pytest.raises(UsageError, match="'EbsOptimised', which is not a RunInstances"):
        launcher(fake, params={"EbsOptimised": True}).prepare()
    with pytest.raises(UsageError, match="not valid"):
        launcher(fake, params={"EbsOptimized": "very"}).prepare()


def test_cli_refusals_exit_2_before_any_call(
    fake: FakeEc2, aws_env: dict[str, str], key: Path, tmp_path: Path
) -> None:
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"MaxCount": 10}))
    p = cli("--key", str(key), "--endpoint-url", fake.url, "--image-id", DEFAULT_IMAGE,
            "--params", str(params))
    assert p.returncode == 2 and "--count N" in one_line_error(p)
    p = cli("--key", str(key), "--endpoint-url", fake.url, "--image-id", DEFAULT_IMAGE,
            "--tag", "novalue")
    assert p.returncode == 2 and "KEY=VALUE" in one_line_error(p)
    p = cli("--key", str(key), "--endpoint-url", fake.url)
    assert p.returncode == 2 and "--image-id" in one_line_error(p)
    p = cli("--key", str(key), "--endpoint-url", fake.url, "--image-id", DEFAULT_IMAGE,
            "--launch-id", "bad id!")
    assert p.returncode == 2 and "launch id" in one_line_error(p)
    assert fake.requests == []


# --- secret hygiene in logs -------------------------------------------------------------


def test_botocore_debug_logs_never_carry_the_seed(
    fake: FakeEc2, private_key: object, pub: PublicKey, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert go(launcher(fake), private_key, 2).ok
    text = "\n".join(r.getMessage() for r in caplog.records).encode()
    envs = [verified(i.user_data, pub) for i in fake.instances.values()]
    texts = [str(userdata.find_seed(i.user_data)) for i in fake.instances.values()]
    assert_no_secret(envs, texts, text)
    sent = [r.params["UserData"].encode() for r in fake.run_requests()]
    assert not any(s[:64] in text for s in sent)


# --- Ctrl-C -----------------------------------------------------------------------------


def test_sigint_reports_every_launched_instance_and_a_rerun_launches_the_rest(
    fake: FakeEc2, aws_env: dict[str, str], key: Path, pub: PublicKey
) -> None:
    args = ["--key", str(key), "--endpoint-url", fake.url, "--image-id", DEFAULT_IMAGE,
            "--count", "4", "--concurrency", "2", "--launch-id", "ctrl-c"]
    fake.hold({1, 2})
    proc = subprocess.Popen([sys.executable, "-m", "seedtool", "launch", "aws", *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err_lines: list[bytes] = []
    noticed = threading.Event()

    def read_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err_lines.append(line)
            if b"interrupted; waiting" in line:
                noticed.set()

    out_chunks: list[bytes] = []

    def read_out() -> None:
        assert proc.stdout is not None
        out_chunks.append(proc.stdout.read())

    # one reader per pipe: communicate() would race the stderr reader for lines
    reader = threading.Thread(target=read_err, daemon=True)
    out_reader = threading.Thread(target=read_out, daemon=True)
    reader.start()
    out_reader.start()
    try:
        # index 0 finished (so index 2 started), 1 and 2 are in flight, 3 waits
        assert fake.wait_held(2), b"".join(err_lines).decode()
        proc.send_signal(signal.SIGINT)
        assert noticed.wait(60), b"".join(err_lines).decode()
        fake.release()
        proc.wait(timeout=120)
    finally:
        fake.release()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(30)
    out_reader.join(30)
    out = b"".join(out_chunks)
    stderr = b"".join(err_lines)
    assert proc.returncode == 130, stderr.decode()
    rows = {int(ln.split()[0]): ln for ln in out.decode().splitlines()[1:]}
    assert all(" launched" in rows[i] for i in (0, 1, 2)) and "not-started" in rows[3]
    first_ids = {rows[i].split()[1] for i in (0, 1, 2)}
    assert first_ids == set(fake.instances)
    assert "interrupted: 1 of 4 instances not launched (indices 3)" in stderr.decode()
    assert all(i in stderr.decode() for i in first_ids)

    again = cli(*args, "--json")
    assert again.returncode == 0, again.stderr.decode()
    rows2 = json.loads(again.stdout)["instances"]
    assert [r["status"] for r in rows2] == [EXISTING] * 3 + [LAUNCHED]
    old_seeds = {fake.instances[i].tags[aws.TAG_SEED_ID] for i in first_ids}
    assert rows2[3]["seed_id"] not in old_seeds and len(fake.instances) == 4
    assert [r.index for r in fake.run_requests()].count(3) == 1
    envs = [verified(i.user_data, pub) for i in fake.instances.values()]
    assert len({e.seed for e in envs}) == 4
    texts = [str(userdata.find_seed(i.user_data)) for i in fake.instances.values()]
    assert_no_secret(envs, texts, out, stderr, again.stdout, again.stderr)
