"""The AWS launcher: one RunInstances call per instance, each with its own fresh seed.

Why one call per instance: every instance of one RunInstances call (MinCount/MaxCount),
one launch template and one Auto Scaling group gets the same user-data, and a seed
shared by several VMs is worse than none because each guest credits it as secret.
So each index gets its own `SeedFactory.new()` inside its own call with
MinCount = MaxCount = 1, and anything that would hand one seed to several instances
is refused (a MaxCount above 1, a launch template whose user-data already holds a
seed).

Re-running safely. Each launch has a launch id; each instance's ClientToken is a
UUIDv5 of (launch id, index). EC2 answers a repeated token with the same parameters
by returning the instance it already made, and with different parameters by
IdempotentParameterMismatch (EC2 developer guide, "Ensuring idempotency in Amazon EC2
API requests"; tokens are at most 64 ASCII characters). botocore's retries resend
the identical request, so a lost reply never launches twice. A re-run with the same
launch id first finds the instances already tagged with it (DescribeInstances) and
only launches the missing indices, each with a NEW seed; should an earlier instance
be invisible to that search, its token plus our new user-data makes EC2 refuse with
IdempotentParameterMismatch rather than launch it twice.

IMDSv2 is required (HttpTokens=required, hop limit 1) unless the caller allows
IMDSv1: the user-data holds the seed, and anything that can reach the instance
metadata service can read it; a session token and a hop limit of 1 keep out
SSRF-style requests and containers behind an extra network hop.

This module never prints and never puts seed bytes, user-data or envelope text into a
message; botocore's DEBUG records that would carry request or response bodies are
dropped while our calls are in flight. boto3 is imported only when a client is made.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..clouds import aws as cloud
from ..shared.errors import UsageError
from .base import (
    DRY_RUN,
    EXISTING,
    LAUNCHED,
    InstanceResult,
    Launcher,
    LaunchError,
    LaunchInterrupted,
    SharedSeedRefused,
    carries_seed,
)
from .base import check_launch_id as _check_launch_id
from .base import new_launch_id as _new_launch_id

TAG_SEED_ID = "seedtool:seed-id"
TAG_LAUNCH_ID = "seedtool:launch-id"
TAG_INDEX = "seedtool:index"
#: fixed namespace for client tokens: uuid5(namespace, "<launch id>/<index>")
TOKEN_NAMESPACE = uuid.UUID("08fba95f-bfc2-4afb-af08-6a598e32d803")
#: states in which an instance of a launch counts as launched (not shutting down or gone)
LIVE_STATES = ("pending", "running", "stopping", "stopped")
IMDSV2 = {"HttpTokens": "required", "HttpPutResponseHopLimit": 1, "HttpEndpoint": "enabled"}
#: RunInstances parameters seedtool sets itself, per instance
OWNED_PARAMS = ("UserData", "ClientToken", "DryRun")

_TEMPLATE_ID = re.compile(r"lt-[0-9a-f]{8,17}")
_TEMPLATE_VERSION = re.compile(r"[0-9]+|\$Latest|\$Default")

_QUOTA = frozenset({"InstanceLimitExceeded", "VcpuLimitExceeded", "MaxSpotInstanceCountExceeded"})
# Errors that concern one index only; every other error would stop each launch the
# same way, so the launches not yet started are not started.
_PER_INDEX = frozenset(
    {
        "InsufficientInstanceCapacity",
        "IdempotentParameterMismatch",
        "InsufficientAddressCapacity",
        *cloud.SERVER_SIDE,
    }
)


class AwsLaunchError(LaunchError):
    """EC2 refused or failed a request of `seedtool launch aws`."""


WORDS = cloud.Words(
    feature="seedtool launch aws", profile="--profile", region="--region",
    endpoint="--endpoint-url",
    credentials_fix="run aws configure or aws sso login, or pass --profile",
    error=AwsLaunchError, usage=UsageError,
)


# --- small parsers the command line uses ---------------------------------------------


def new_launch_id() -> str:
    """A fresh launch id: UTC time (for humans) plus 32 random bits (for uniqueness)."""
    return _new_launch_id()


def check_launch_id(launch_id: str) -> str:
    return _check_launch_id(launch_id)


def client_token(launch_id: str, index: int) -> str:
    """The ClientToken of one index of one launch: 36 ASCII characters."""
    return str(uuid.uuid5(TOKEN_NAMESPACE, f"{launch_id}/{index}"))


def parse_tags(specs: Sequence[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key:
            raise UsageError(f"--tag '{spec}' is not KEY=VALUE; write e.g. --tag Name=web")
        if key.lower().startswith(("seedtool:", "aws:")):
            raise UsageError(
                f"--tag key '{key}' uses a reserved prefix; seedtool sets seedtool:* tags "
                "itself and AWS reserves aws:*, so pick another key"
            )
        out.append((key, value))
    return out


def parse_security_groups(values: Sequence[str]) -> list[str]:
    return [g.strip() for v in values for g in v.split(",") if g.strip()]


def parse_launch_template(spec: str) -> dict[str, str]:
    """`ID|NAME[:VERSION]` -> RunInstances' LaunchTemplate parameter."""
    ref, _, version = spec.partition(":")
    if not ref:
        raise UsageError(f"--launch-template '{spec}' names no template; give lt-ID or NAME")
    out = {"LaunchTemplateId" if _TEMPLATE_ID.fullmatch(ref) else "LaunchTemplateName": ref}
    if version:
        if not _TEMPLATE_VERSION.fullmatch(version):
            raise UsageError(
                f"launch template version '{version}' is not valid; use a number, "
                "$Latest or $Default"
            )
        out["Version"] = version
    return out


def iam_profile(value: str) -> dict[str, str]:
    return {"Arn": value} if value.startswith("arn:") else {"Name": value}


# --- what one launch asks for ----------------------------------------------------------


@dataclass
class LaunchRequest:
    """The instance parameters common to every index (from flags and a params file)."""

    image_id: str | None = None
    instance_type: str | None = None
    subnet_id: str | None = None
    security_group_ids: Sequence[str] = ()
    key_name: str | None = None
    iam_instance_profile: str | None = None
    tags: Sequence[tuple[str, str]] = ()
    launch_template: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    allow_imdsv1: bool = False

    def base_params(self) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
        """RunInstances parameters without the per-instance ones, and the tags by
        resource type. Raises UsageError / SharedSeedRefused for what we refuse."""
        params = dict(self.params)
        for key in OWNED_PARAMS:
            if key in params:
                raise UsageError(
                    f"--params must not set {key}: seedtool sets it for each instance "
                    "(user-data goes in --user-data, dry runs are --dry-run)"
                )
        for key in ("MinCount", "MaxCount"):
            if key in params and params.pop(key) != 1:
                raise SharedSeedRefused(
                    f"--params sets {key} above 1, which would give every instance of the "
                    "call the same user-data and so the same seed; use --count N instead, "
                    "which makes one call with its own seed per instance"
                )
        flags: dict[str, Any] = {}
        if self.image_id:
            flags["ImageId"] = self.image_id
        if self.instance_type:
            flags["InstanceType"] = self.instance_type
        if self.subnet_id:
            flags["SubnetId"] = self.subnet_id
        if self.security_group_ids:
            flags["SecurityGroupIds"] = list(self.security_group_ids)
        if self.key_name:
            flags["KeyName"] = self.key_name
        if self.iam_instance_profile:
            flags["IamInstanceProfile"] = iam_profile(self.iam_instance_profile)
        if self.launch_template:
            flags["LaunchTemplate"] = parse_launch_template(self.launch_template)
        for key, value in flags.items():
            if key in params and params[key] != value:
                raise UsageError(
                    f"{key} is given both as an option and in --params with different "
                    "values; give it once"
                )
            params[key] = value
        if "ImageId" not in params and "LaunchTemplate" not in params:
            raise UsageError("no AMI given; pass --image-id ami-... or --launch-template")

        for key, kind in (("MetadataOptions", Mapping), ("TagSpecifications", list)):
            if key in params and not isinstance(params[key], kind):
                raise UsageError(f"--params {key} has the wrong JSON type; see the EC2 API "
                                 "reference for RunInstances")
        metadata = dict(params.pop("MetadataOptions", None) or {})
        if not self.allow_imdsv1:
            metadata = {**IMDSV2, **metadata}
            if metadata["HttpTokens"] != "required":
                raise UsageError(
                    "--params sets MetadataOptions.HttpTokens to optional, which lets IMDSv1 "
                    "requests read the user-data and its seed; remove it or pass "
                    "--allow-imdsv1 if you accept that"
                )
        if metadata.get("HttpEndpoint") == "disabled":
            raise UsageError(
                "--params disables the instance metadata service, so cloud-init could not "
                "read the user-data and the seed would never arrive; remove HttpEndpoint"
            )
        if metadata:
            params["MetadataOptions"] = metadata

        tags: dict[str, dict[str, str]] = {}
        for spec in params.pop("TagSpecifications", None) or []:
            if not isinstance(spec, Mapping):
                raise UsageError("--params TagSpecifications must be a list of objects with "
                                 "ResourceType and Tags")
            rtype = str(spec.get("ResourceType", ""))
            for t in spec.get("Tags") or []:
                tags.setdefault(rtype, {})[str(t.get("Key"))] = str(t.get("Value", ""))
        for key, value in self.tags:
            tags.setdefault("instance", {})[key] = value
        for rtype, kv in tags.items():
            for key in kv:
                if key.lower().startswith("seedtool:"):
                    raise UsageError(
                        f"--params tags {rtype} with '{key}'; seedtool sets seedtool:* tags "
                        "itself, so remove it"
                    )
        tags.setdefault("instance", {})
        return params, tags


# --- the client -------------------------------------------------------------------------


def make_client(
    *, profile: str | None = None, region: str | None = None, endpoint_url: str | None = None
) -> Any:
    """An EC2 client from boto3's standard credential chain, with standard retries
    (3 attempts unless AWS_MAX_ATTEMPTS or the profile's max_attempts says otherwise)."""
    session = cloud.session(profile, region, WORDS)
    cloud.credentials(session, WORDS, _call(endpoint_url or "EC2", "RunInstances", None))
    return cloud.client(session, "ec2", WORDS, endpoint_url=endpoint_url)


# --- errors ---------------------------------------------------------------------------


def _call(where: str, op: str, launch_id: str | None) -> cloud.Call:
    resume = f"re-run with --launch-id {launch_id}" if launch_id else "re-run"
    return cloud.Call(
        service="EC2", op=op, where=where,
        patience=f"{op} in time through all retries",
        retry=f"{resume} to retry (its client tokens make that safe)",
        throttled=f"wait a minute and {resume}, with a lower --concurrency or a higher "
                  "AWS_MAX_ATTEMPTS",
        refused=f"fix the parameters and {resume}",
    )


def _explainer(op: str, *, index: int | None = None, launch_id: str | None = None,
               image: str | None = None, instance_type: str | None = None,
               region: str | None = None) -> Any:
    """EC2's own error codes (EC2 API reference, "Error codes"), with what to do."""
    where = f" in {region}" if region else ""
    resume = f"re-run with --launch-id {launch_id}" if launch_id else "re-run"

    def explain(info: cloud.ClientErrorInfo) -> AwsLaunchError | None:
        code = info.code
        if code == "UnauthorizedOperation":
            return AwsLaunchError(
                f"this AWS identity may not call {op} (UnauthorizedOperation); "
                "allow ec2:RunInstances, ec2:CreateTags, ec2:DescribeInstances, "
                "ec2:DescribeLaunchTemplateVersions (and iam:PassRole for an instance "
                "profile) in its IAM policy; aws sts decode-authorization-message shows "
                "what was denied"
            )
        if code.startswith("InvalidAMIID"):
            return AwsLaunchError(
                f"EC2 has no usable AMI {image or '(from the launch template)'}{where} "
                f"({code}); check --image-id and --region, since AMI ids differ per region"
            )
        if code in _QUOTA:
            return AwsLaunchError(
                f"the account's EC2 quota is used up ({code}); terminate unused instances or "
                f"request a higher limit in Service Quotas, then {resume} to launch the rest"
            )
        if code == "InsufficientInstanceCapacity":
            return AwsLaunchError(
                f"AWS has no spare capacity for {instance_type or 'this instance type'} in "
                f"this Availability Zone right now ({code}); {resume} later, or choose "
                "another --subnet-id (zone) or --instance-type"
            )
        if code == "IdempotentParameterMismatch":
            return AwsLaunchError(
                f"an earlier run with launch id {launch_id} used different parameters for "
                f"index {index} ({code}: EC2 keeps each client token with its first "
                "request), so EC2 refused to launch it again; that instance may be "
                "terminated or not yet visible, so check aws ec2 describe-instances "
                f"--filters Name=tag:{TAG_LAUNCH_ID},Values={launch_id}, or start a new "
                "launch without --launch-id"
            )
        if code.startswith(("InvalidLaunchTemplateName", "InvalidLaunchTemplateId")):
            return AwsLaunchError(
                f"EC2 has no such launch template{where} ({code}); check --launch-template "
                "and --region"
            )
        if code == "InsufficientAddressCapacity":
            return AwsLaunchError(
                f"EC2 has no free addresses in this subnet right now ({code}); {resume} "
                "later, or choose another --subnet-id"
            )
        return None

    return explain


def _stops_all(code: str, status: int) -> bool:
    """Whether a failure would hit every further launch alike (so none is started)."""
    if code in _PER_INDEX:
        return False
    if code in cloud.THROTTLED or code in _QUOTA:
        return True
    return not (code and status >= 500)


# --- the launcher ---------------------------------------------------------------------


class AwsLauncher(Launcher):
    """One RunInstances call (MinCount = MaxCount = 1) and one fresh seed per instance.

    `client` is an EC2 client (`make_client`). `run_launch` (seedtool.launch.base)
    calls `prepare()`, which reads the launch template and refuses what would share a
    seed before any seed is made, then `create()` per index.
    """

    name = "aws"
    target = "aws"

    def __init__(
        self,
        client: Any,
        request: LaunchRequest,
        *,
        launch_id: str,
        user_data: bytes | None = None,
        dry_run: bool = False,
    ) -> None:
        self.client = client
        self.request = request
        self.launch_id = check_launch_id(launch_id)
        self.user_data = self._given_user_data = user_data
        self.dry_run = dry_run
        self._base: dict[str, Any] | None = None
        self._tags: dict[str, dict[str, str]] = {}
        self._region = str(getattr(getattr(client, "meta", None), "region_name", "") or "")
        self._endpoint = str(getattr(getattr(client, "meta", None), "endpoint_url", "") or "EC2")

    # -- before any seed is made --------------------------------------------------------

    def check_request(self, count: int) -> list[str]:
        """Check everything that does not need a seed; return notes for the user."""
        params, tags = self.request.base_params()
        self._validate_shape(params, tags)
        notes: list[str] = []
        self.user_data = self._given_user_data
        template = params.get("LaunchTemplate")
        if template:
            notes += self._check_template(template)
        self._base, self._tags = params, tags
        return notes

    def _translate(self, e: BaseException, op: str, **context: Any) -> AwsLaunchError:
        err = cloud.translate(e, WORDS, _call(self._endpoint, op, context.get("launch_id")),
                              _explainer(op, region=self._region, **context))
        return err if isinstance(err, AwsLaunchError) else AwsLaunchError(str(err))

    def _validate_shape(self, params: dict[str, Any], tags: dict[str, dict[str, str]]) -> None:
        try:
            from botocore.exceptions import ParamValidationError
            from botocore.validate import validate_parameters
        except ImportError:  # pragma: no cover - a client implies botocore
            return
        model = self.client.meta.service_model.operation_model("RunInstances")
        unknown = sorted(set(params) - set(model.input_shape.members))
        if unknown:
            raise UsageError(
                f"--params has '{unknown[0]}', which is not a RunInstances parameter; "
                "check its spelling against the EC2 API reference"
            )
        probe = {**params, "MinCount": 1, "MaxCount": 1,
                 "TagSpecifications": self._tag_specs(tags, {})}
        try:
            validate_parameters(probe, model.input_shape)
        except ParamValidationError as e:
            what = cloud.translate(e, WORDS, _call(self._endpoint, "RunInstances", None))
            raise UsageError(f"{what}; fix --params") from None

    def _check_template(self, template: Mapping[str, str]) -> list[str]:
        ref = {k: v for k, v in template.items() if k != "Version"}
        version = template.get("Version", "$Default")
        name = next(iter(ref.values()))
        try:
            with cloud.quiet():
                reply = self.client.describe_launch_template_versions(
                    **ref, Versions=[version]
                )
        except Exception as e:  # noqa: BLE001 - mapped to one sentence
            raise self._translate(e, "DescribeLaunchTemplateVersions") from None
        versions = reply.get("LaunchTemplateVersions") or []
        if not versions:
            raise AwsLaunchError(
                f"launch template {name} has no version {version}; check --launch-template"
            )
        data = versions[0].get("LaunchTemplateData") or {}
        number = versions[0].get("VersionNumber", version)
        encoded = data.get("UserData")
        if not encoded:
            return []
        try:
            # launch templates store user-data base64-encoded (botocore does not encode it)
            tpl_data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            tpl_data = str(encoded).encode("utf-8", "replace")
        if carries_seed(tpl_data):
            raise SharedSeedRefused(
                f"launch template {name} version {number} carries a seedtool seed in its "
                "user-data, and every instance launched from it (by hand, by an Auto Scaling "
                "group or by a fleet) would share that one seed; make a template version "
                "without the seed and launch with seedtool launch aws --launch-template, "
                "which gives each instance its own"
            )
        if self.user_data is None:
            self.user_data = tpl_data
            return [f"using launch template {name} version {number}'s user-data "
                    f"({len(tpl_data)} bytes) with a fresh seed added for each instance"]
        return [f"--user-data replaces launch template {name}'s own user-data for these "
                "instances"]

    # -- resume -------------------------------------------------------------------------

    def existing(self) -> dict[int, InstanceResult]:
        """Instances already launched under this launch id (not shutting down or gone)."""
        found: dict[int, InstanceResult] = {}
        filters = [
            {"Name": f"tag:{TAG_LAUNCH_ID}", "Values": [self.launch_id]},
            {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
        ]
        try:
            with cloud.quiet():
                pages = list(self.client.get_paginator("describe_instances").paginate(
                    Filters=filters))
        except Exception as e:  # noqa: BLE001 - mapped to one sentence
            raise self._translate(e, "DescribeInstances") from None
        for page in pages:
            for reservation in page.get("Reservations") or []:
                for inst in reservation.get("Instances") or []:
                    tags = {t.get("Key"): t.get("Value") for t in inst.get("Tags") or []}
                    try:
                        index = int(str(tags.get(TAG_INDEX)))
                    except ValueError:
                        continue
                    if index in found:
                        continue
                    found[index] = InstanceResult(
                        index, EXISTING, seed_id=tags.get(TAG_SEED_ID),
                        instance_id=inst.get("InstanceId"),
                    )
        return found

    # -- one index --------------------------------------------------------------------

    def _tag_specs(self, tags: Mapping[str, Mapping[str, str]],
                   ours: Mapping[str, str]) -> list[dict[str, Any]]:
        specs = []
        for rtype, kv in tags.items():
            merged = {**kv, **ours} if rtype == "instance" else dict(kv)
            specs.append({"ResourceType": rtype,
                          "Tags": [{"Key": k, "Value": v} for k, v in merged.items()]})
        return specs

    def run_instances_params(self, index: int, seed_id: str, data: bytes) -> dict[str, Any]:
        """The complete RunInstances parameters for one index (holds the seed)."""
        if self._base is None:
            raise RuntimeError("prepare() must be called before launching")
        ours = {TAG_LAUNCH_ID: self.launch_id, TAG_INDEX: str(index), TAG_SEED_ID: seed_id}
        params = {
            **self._base,
            "MinCount": 1,
            "MaxCount": 1,
            "UserData": data,
            "TagSpecifications": self._tag_specs(self._tags, ours),
        }
        if self.dry_run:
            params["DryRun"] = True
        else:
            params["ClientToken"] = client_token(self.launch_id, index)
        return params

    def create(self, index: int, user_data: bytes, seed_id: str,
               attempt: int = 0) -> InstanceResult:
        """One RunInstances call for one instance."""
        params = self.run_instances_params(index, seed_id, user_data)
        try:
            with cloud.quiet():
                reply = self.client.run_instances(**params)
        except Exception as e:  # noqa: BLE001 - every failure becomes one sentence
            info = cloud.client_error_info(getattr(e, "response", None) or {})
            if self.dry_run and info.code == "DryRunOperation":
                return InstanceResult(index, DRY_RUN, seed_id=seed_id)
            err = self._translate(
                e, "RunInstances", index=index, launch_id=self.launch_id,
                image=(self._base or {}).get("ImageId"),
                instance_type=(self._base or {}).get("InstanceType"))
            err.stops_all = _stops_all(info.code, info.status)
            raise err from None
        finally:
            params.clear()
        instances = reply.get("Instances") or []
        if len(instances) != 1:
            raise AwsLaunchError(
                f"EC2 answered RunInstances with {len(instances)} instances where one was "
                "asked; check --endpoint-url points at EC2"
            )
        return InstanceResult(index, LAUNCHED, seed_id=seed_id,
                              instance_id=instances[0].get("InstanceId"))

    def report_fields(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run}


__all__ = [
    "IMDSV2",
    "LIVE_STATES",
    "OWNED_PARAMS",
    "TAG_INDEX",
    "TAG_LAUNCH_ID",
    "TAG_SEED_ID",
    "AwsLaunchError",
    "AwsLauncher",
    "LaunchInterrupted",
    "LaunchRequest",
    "SharedSeedRefused",
    "check_launch_id",
    "client_token",
    "make_client",
    "new_launch_id",
    "parse_launch_template",
    "parse_security_groups",
    "parse_tags",
]
