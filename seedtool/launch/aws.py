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
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..deliver import userdata
from ..quiet import Quieter
from ..shared import envelope
from ..shared.errors import CloudError, DeliveryError, EnvelopeError, SeedtoolError, UsageError
from .runner import (
    DRY_RUN,
    EXISTING,
    FAILED,
    LAUNCHED,
    NOT_STARTED,
    InstanceResult,
    run_all,
)

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

_LAUNCH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TEMPLATE_ID = re.compile(r"lt-[0-9a-f]{8,17}")
_TEMPLATE_VERSION = re.compile(r"[0-9]+|\$Latest|\$Default")
# long runs of base64/hex-like text are cut from AWS messages before we repeat them
_LONG_TOKEN = re.compile(r"[A-Za-z0-9+/=_-]{40,}")

_CREDENTIALS_FIX = "run aws configure or aws sso login, or pass --profile"
_NO_REGION = "no AWS region is set; pass --region or set AWS_REGION (or AWS_DEFAULT_REGION)"
_BAD_CREDENTIALS = frozenset(
    {
        "AuthFailure",
        "ExpiredToken",
        "RequestExpired",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "InvalidToken",
    }
)
_QUOTA = frozenset({"InstanceLimitExceeded", "VcpuLimitExceeded", "MaxSpotInstanceCountExceeded"})
# The throttling codes botocore's standard retry mode retries.
_THROTTLED = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "EC2ThrottledException",
        "RequestThrottled",
        "SlowDown",
        "BandwidthLimitExceeded",
        "PriorRequestNotComplete",
    }
)
# Errors that concern one index only; every other error would stop each launch the
# same way, so the launches not yet started are not started.
_PER_INDEX = frozenset(
    {
        "InsufficientInstanceCapacity",
        "IdempotentParameterMismatch",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
        "InsufficientAddressCapacity",
    }
)


class AwsLaunchError(CloudError):
    """EC2 refused or failed a request of `seedtool launch aws`."""


class SharedSeedRefused(UsageError):
    """The request would give several instances one seed."""


class LaunchInterrupted(AwsLaunchError):
    """Ctrl-C stopped a launch; the report lists every instance that exists."""

    exit_code = 130


# --- quiet botocore while our calls run ----------------------------------------------


# botocore.endpoint logs whole requests (our UserData), botocore.parsers whole
# responses (a launch template's UserData), botocore.auth the signed request.
_QUIET_LOGGERS = ("botocore.endpoint", "botocore.parsers", "botocore.auth")
_quiet = Quieter(*_QUIET_LOGGERS)


# --- small parsers the command line uses ---------------------------------------------


def new_launch_id() -> str:
    """A fresh launch id: UTC time (for humans) plus 32 random bits (for uniqueness)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)


def check_launch_id(launch_id: str) -> str:
    if not _LAUNCH_ID.fullmatch(launch_id):
        raise UsageError(
            f"launch id '{launch_id[:80]}' is not valid; use the id an earlier run printed "
            "(1-64 letters, digits, '.', '_' or '-')"
        )
    return launch_id


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


def has_seedtool_seed(data: bytes | None) -> bool:
    """Whether user-data already carries a seedtool seed (a seed part or an envelope
    in its merged random_seed)."""
    if not data:
        return False
    try:
        if len(userdata.parts(data)) != len(userdata.user_parts(data)):
            return True
        found = userdata.find_seed(data)
    except DeliveryError:
        return False
    if found is None:
        return False
    try:
        envelope.parse(found)
    except EnvelopeError:
        return False
    return True


# --- the client -------------------------------------------------------------------------


def make_client(
    *, profile: str | None = None, region: str | None = None, endpoint_url: str | None = None
) -> Any:
    """An EC2 client from boto3's standard credential chain, with standard retries."""
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import ProfileNotFound
    except ImportError:
        raise AwsLaunchError(
            "seedtool launch aws needs boto3; pip install 'seedtool[aws]'"
        ) from None
    try:
        session = boto3.session.Session(profile_name=profile, region_name=region)
    except ProfileNotFound:
        raise UsageError(
            f"AWS profile '{profile}' is not configured; run aws configure --profile "
            f"{profile} or pass another --profile"
        ) from None
    if not session.region_name:
        raise UsageError(_NO_REGION)
    try:
        creds = session.get_credentials()
    except Exception as e:  # noqa: BLE001 - botocore raises many kinds here
        raise translate(e, endpoint_url or "EC2") from None
    if creds is None:
        raise AwsLaunchError(f"no AWS credentials were found; {_CREDENTIALS_FIX}")
    # retries: botocore's standard mode (3 attempts unless AWS_MAX_ATTEMPTS or the
    # profile's max_attempts says otherwise); it resends the same ClientToken.
    config = Config(retries={"mode": "standard"}, user_agent_extra="seedtool")
    return session.client("ec2", endpoint_url=endpoint_url, config=config)


# --- errors ---------------------------------------------------------------------------


def _redact(message: str) -> str:
    text = " ".join(message.split())
    text = _LONG_TOKEN.sub("...", text)
    return text[:200].rstrip(" .")


def translate(e: BaseException, what: str, *, op: str = "RunInstances",
              context: Mapping[str, Any] | None = None) -> SeedtoolError:
    """One actionable sentence for anything boto3/botocore raised."""
    ctx = dict(context or {})
    try:
        from botocore import exceptions as bx
    except ImportError:  # pragma: no cover - boto3 always brings botocore
        return AwsLaunchError(f"EC2 {op} failed ({type(e).__name__})")
    if isinstance(e, bx.ClientError):
        return explain_client_error(e.response, op=op, **ctx)
    if isinstance(e, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return AwsLaunchError(f"no usable AWS credentials were found; {_CREDENTIALS_FIX}")
    refresh = tuple(
        getattr(bx, n)
        for n in ("SSOTokenLoadError", "UnauthorizedSSOTokenError", "TokenRetrievalError",
                  "CredentialRetrievalError", "RefreshWithMFAUnsupportedError",
                  "InvalidConfigError")
        if hasattr(bx, n)
    )
    if isinstance(e, refresh):
        return AwsLaunchError(
            f"AWS credentials could not be loaded or refreshed ({type(e).__name__}); "
            f"{_CREDENTIALS_FIX}"
        )
    if isinstance(e, bx.NoRegionError):
        return UsageError(_NO_REGION)
    if isinstance(e, bx.ParamValidationError):
        report = _redact(str(getattr(e, "kwargs", {}).get("report", "")))
        return UsageError(f"the RunInstances parameters are not valid ({report}); fix --params")
    if isinstance(e, bx.ReadTimeoutError):
        return AwsLaunchError(
            f"EC2 at {what} did not answer {op} in time through all retries; re-run with the "
            "same --launch-id (its client tokens make that safe)"
        )
    if isinstance(e, (bx.ConnectTimeoutError, bx.EndpointConnectionError)):
        return AwsLaunchError(
            f"could not connect to EC2 at {what}; check the network, --region or "
            "--endpoint-url (e.g. a VPC endpoint)"
        )
    return AwsLaunchError(
        f"EC2 {op} failed ({type(e).__name__}) at {what}; check the network, --region and "
        "--endpoint-url"
    )


def explain_client_error(response: Mapping[str, Any], *, op: str = "RunInstances",
                         index: int | None = None, launch_id: str | None = None,
                         image: str | None = None, instance_type: str | None = None,
                         region: str | None = None) -> AwsLaunchError:
    err = response.get("Error", {}) or {}
    meta = response.get("ResponseMetadata", {}) or {}
    code = str(err.get("Code") or "unknown")
    status = meta.get("HTTPStatusCode")
    attempts = int(meta.get("RetryAttempts", 0) or 0) + 1
    where = f" in {region}" if region else ""
    resume = f"re-run with --launch-id {launch_id}" if launch_id else "re-run"
    if code in _BAD_CREDENTIALS:
        return AwsLaunchError(
            f"AWS did not accept the credentials ({code}); {_CREDENTIALS_FIX}"
        )
    if code == "UnauthorizedOperation":
        return AwsLaunchError(
            f"this AWS identity may not call {op} (UnauthorizedOperation); allow "
            "ec2:RunInstances, ec2:CreateTags, ec2:DescribeInstances, "
            "ec2:DescribeLaunchTemplateVersions (and iam:PassRole for an instance profile) "
            "in its IAM policy; aws sts decode-authorization-message shows what was denied"
        )
    if code.startswith("InvalidAMIID"):
        return AwsLaunchError(
            f"EC2 has no usable AMI {image or '(from the launch template)'}{where} ({code}); "
            "check --image-id and --region, since AMI ids differ per region"
        )
    if code in _QUOTA:
        return AwsLaunchError(
            f"the account's EC2 quota is used up ({code}); terminate unused instances or "
            "request a higher limit in Service Quotas, then "
            f"{resume} to launch the rest"
        )
    if code in _THROTTLED:
        return AwsLaunchError(
            f"EC2 kept throttling {op} ({code}) through {attempts} attempts; wait a minute "
            f"and {resume}, with a lower --concurrency or a higher AWS_MAX_ATTEMPTS"
        )
    if code == "InsufficientInstanceCapacity":
        return AwsLaunchError(
            f"AWS has no spare capacity for {instance_type or 'this instance type'} in this "
            f"Availability Zone right now ({code}); {resume} later, or choose another "
            "--subnet-id (zone) or --instance-type"
        )
    if code == "IdempotentParameterMismatch":
        return AwsLaunchError(
            f"an earlier run with launch id {launch_id} used different parameters for index "
            f"{index} ({code}: EC2 keeps each client token with its first request), so EC2 "
            "refused to launch it again; that instance may be terminated or not yet visible, "
            "so check aws ec2 describe-instances --filters "
            f"Name=tag:{TAG_LAUNCH_ID},Values={launch_id}, or start a new launch without "
            "--launch-id"
        )
    if code.startswith(("InvalidLaunchTemplateName", "InvalidLaunchTemplateId")):
        return AwsLaunchError(
            f"EC2 has no such launch template{where} ({code}); check --launch-template "
            "and --region"
        )
    if code in _PER_INDEX or (isinstance(status, int) and status >= 500):
        return AwsLaunchError(
            f"EC2 failed on its side ({code}, HTTP {status}) through {attempts} attempts; "
            f"{resume} to retry (its client token makes that safe)"
        )
    message = _redact(str(err.get("Message") or ""))
    detail = f": {message}" if message else ""
    return AwsLaunchError(f"EC2 refused {op} ({code}{detail}); fix the parameters and {resume}")


# --- the launcher ---------------------------------------------------------------------


@dataclass
class LaunchReport:
    launch_id: str
    results: list[InstanceResult]
    interrupted: bool
    dry_run: bool
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(r.ok for r in self.results)

    def existing_ids(self) -> list[str]:
        return [r.instance_id for r in self.results
                if r.instance_id and r.status in (LAUNCHED, EXISTING)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "launch_id": self.launch_id,
            "dry_run": self.dry_run,
            "interrupted": self.interrupted,
            "instances": [r.as_dict() for r in self.results],
        }


class AwsLauncher:
    """Launches `count` instances, one RunInstances call and one fresh seed each.

    `factory` is a `SeedFactory` (anything with `new()` returning a `NewSeed`).
    Call `prepare()` once (it reads the launch template and refuses what would share
    a seed, before any seed is made), then `launch()`.
    """

    def __init__(
        self,
        client: Any,
        request: LaunchRequest,
        factory: Any,
        *,
        launch_id: str,
        user_data: bytes | None = None,
        dry_run: bool = False,
    ) -> None:
        self.client = client
        self.request = request
        self.factory = factory
        self.launch_id = check_launch_id(launch_id)
        self.user_data = user_data
        self.dry_run = dry_run
        self.notes: list[str] = []
        self._base: dict[str, Any] | None = None
        self._tags: dict[str, dict[str, str]] = {}
        self._seed_lock = threading.Lock()
        self._stop_lock = threading.Lock()
        self._stopped_by: tuple[int, str] | None = None
        self._region = str(getattr(getattr(client, "meta", None), "region_name", "") or "")
        self._endpoint = str(getattr(getattr(client, "meta", None), "endpoint_url", "") or "EC2")

    # -- before any seed is made --------------------------------------------------------

    def prepare(self) -> list[str]:
        """Check everything that does not need a seed; return notes for the user."""
        params, tags = self.request.base_params()
        self._validate_shape(params, tags)
        if self.user_data is not None and has_seedtool_seed(self.user_data):
            raise SharedSeedRefused(
                "the --user-data file already carries a seedtool seed, which every instance "
                "would share; give your user-data without it and seedtool adds a fresh seed "
                "per instance"
            )
        template = params.get("LaunchTemplate")
        if template:
            self._check_template(template)
        userdata.check(self.user_data)  # refuse bad input before reading any entropy source
        self._base, self._tags = params, tags
        return self.notes

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
            raise translate(e, self._endpoint) from None

    def _check_template(self, template: Mapping[str, str]) -> None:
        ref = {k: v for k, v in template.items() if k != "Version"}
        version = template.get("Version", "$Default")
        name = next(iter(ref.values()))
        try:
            with _quiet():
                reply = self.client.describe_launch_template_versions(
                    **ref, Versions=[version]
                )
        except Exception as e:  # noqa: BLE001 - mapped to one sentence
            raise translate(e, self._endpoint, op="DescribeLaunchTemplateVersions",
                            context={"region": self._region}) from None
        versions = reply.get("LaunchTemplateVersions") or []
        if not versions:
            raise AwsLaunchError(
                f"launch template {name} has no version {version}; check --launch-template"
            )
        data = versions[0].get("LaunchTemplateData") or {}
        number = versions[0].get("VersionNumber", version)
        encoded = data.get("UserData")
        if not encoded:
            return
        try:
            # launch templates store user-data base64-encoded (botocore does not encode it)
            tpl_data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            tpl_data = str(encoded).encode("utf-8", "replace")
        if has_seedtool_seed(tpl_data):
            raise SharedSeedRefused(
                f"launch template {name} version {number} carries a seedtool seed in its "
                "user-data, and every instance launched from it (by hand, by an Auto Scaling "
                "group or by a fleet) would share that one seed; make a template version "
                "without the seed and launch with seedtool launch aws --launch-template, "
                "which gives each instance its own"
            )
        if self.user_data is None:
            self.user_data = tpl_data
            self.notes.append(
                f"using launch template {name} version {number}'s user-data "
                f"({len(tpl_data)} bytes) with a fresh seed added for each instance"
            )
        else:
            self.notes.append(
                f"--user-data replaces launch template {name}'s own user-data for these "
                "instances"
            )

    # -- resume -------------------------------------------------------------------------

    def existing(self) -> dict[int, InstanceResult]:
        """Instances already launched under this launch id (not shutting down or gone)."""
        found: dict[int, InstanceResult] = {}
        filters = [
            {"Name": f"tag:{TAG_LAUNCH_ID}", "Values": [self.launch_id]},
            {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
        ]
        try:
            with _quiet():
                pages = list(self.client.get_paginator("describe_instances").paginate(
                    Filters=filters))
        except Exception as e:  # noqa: BLE001 - mapped to one sentence
            raise translate(e, self._endpoint, op="DescribeInstances",
                            context={"region": self._region}) from None
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

    def _stop_others(self, index: int, reason: str) -> None:
        with self._stop_lock:
            if self._stopped_by is None:
                self._stopped_by = (index, reason)

    def launch_one(self, index: int) -> InstanceResult:
        """Launch one instance with one fresh seed; never raises a SeedtoolError."""
        stopped = self._stopped_by
        if stopped is not None:
            return InstanceResult(
                index, NOT_STARTED,
                error=f"not started: index {stopped[0]} failed in a way every launch would",
            )
        try:
            with self._seed_lock:  # sources are read by one thread at a time
                seed = self.factory.new()
        except SeedtoolError as e:  # e.g. a required source failed: it would fail them all
            self._stop_others(index, str(e))
            return InstanceResult(index, FAILED, error=str(e))
        seed_id = seed.seed_id
        try:
            data = userdata.add_seed(self.user_data, seed.text, target="aws")
        except SeedtoolError as e:
            self._stop_others(index, str(e))
            return InstanceResult(index, FAILED, seed_id=seed_id, error=str(e))
        params = self.run_instances_params(index, seed_id, data)
        del data
        try:
            with _quiet():
                reply = self.client.run_instances(**params)
        except Exception as e:  # noqa: BLE001 - every failure becomes a reported result
            return self._failed(index, seed_id, e)
        finally:
            params.clear()
        instances = reply.get("Instances") or []
        if len(instances) != 1:
            return InstanceResult(
                index, FAILED, seed_id=seed_id,
                error=f"EC2 answered RunInstances with {len(instances)} instances where one "
                      "was asked; check --endpoint-url points at EC2",
            )
        inst = instances[0]
        return InstanceResult(index, LAUNCHED, seed_id=seed_id,
                              instance_id=inst.get("InstanceId"))

    def _failed(self, index: int, seed_id: str, e: Exception) -> InstanceResult:
        code = ""
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            code = str((response.get("Error") or {}).get("Code") or "")
        if self.dry_run and code == "DryRunOperation":
            return InstanceResult(index, DRY_RUN, seed_id=seed_id)
        err = translate(e, self._endpoint, context={
            "index": index, "launch_id": self.launch_id, "region": self._region,
            "image": (self._base or {}).get("ImageId"),
            "instance_type": (self._base or {}).get("InstanceType"),
        })
        if _stops_all(code, _status(response)):
            self._stop_others(index, str(err))
        return InstanceResult(index, FAILED, seed_id=seed_id, error=str(err))

    # -- all of them ------------------------------------------------------------------

    def launch(
        self,
        count: int,
        *,
        concurrency: int = 4,
        resume: bool = False,
        on_existing: Callable[[InstanceResult], None] | None = None,
        on_done: Callable[[InstanceResult], None] | None = None,
    ) -> LaunchReport:
        """Launch indices 0..count-1 that do not exist yet; report every index."""
        if self._base is None:
            self.prepare()
        existing = self.existing() if resume else {}
        for r in sorted(existing.values(), key=lambda r: r.index):
            if on_existing:
                on_existing(r)
        todo = [i for i in range(count) if i not in existing]
        # The first call goes alone: a problem every call would hit (an unknown AMI, a
        # missing permission, a used-up quota, user-data over the limit) then shows up
        # once, and the others are not started, instead of N identical failures.
        results, interrupted = run_all(todo[:1], self.launch_one, concurrency=1,
                                       on_done=on_done)
        if interrupted:
            results += [InstanceResult(i, NOT_STARTED, error="not started: interrupted")
                        for i in todo[1:]]
        elif todo[1:]:
            rest, interrupted = run_all(todo[1:], self.launch_one, concurrency=concurrency,
                                        on_done=on_done)
            results += rest
        merged = {r.index: r for r in results}
        merged.update(existing)
        return LaunchReport(self.launch_id, [merged[i] for i in sorted(merged)],
                            interrupted, self.dry_run, list(self.notes))


def _stops_all(code: str, status: int) -> bool:
    """Whether a failure would hit every further launch alike (so none is started)."""
    if code in _PER_INDEX:
        return False
    if code in _THROTTLED or code in _QUOTA:
        return True
    return not (code and status >= 500)


def _status(response: Any) -> int:
    if not isinstance(response, dict):
        return 0
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return status if isinstance(status, int) else 0


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
    "LaunchReport",
    "LaunchRequest",
    "SharedSeedRefused",
    "check_launch_id",
    "client_token",
    "explain_client_error",
    "has_seedtool_seed",
    "make_client",
    "new_launch_id",
    "parse_launch_template",
    "parse_security_groups",
    "parse_tags",
    "translate",
]
