"""AWS plumbing shared by every part of seedtool that calls AWS (the aws-kms source, the
EC2 launcher): sessions and credentials from boto3's standard chain, clients with
botocore's standard retries, one sentence with a fix for anything boto3 raises, and
quieting botocore's payload logging while our calls run.

boto3 is imported only when a session is made, never at import time. No message made
here holds request or response bodies: botocore.endpoint logs whole requests (our
UserData), botocore.parsers whole responses (KMS random bytes, a launch template's
UserData), botocore.auth the signed request, all at DEBUG level; `quiet()` drops
those records on the threads inside our calls.

Callers name their settings differently (`--region` on the command line, `region=` in
a source spec) and raise their own error classes: `Words` carries both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..quiet import Quieter
from ..shared.errors import SeedtoolError
from . import no_answer, no_connection, redact, server_side, throttled

#: error codes (ClientError.response["Error"]["Code"]) meaning the credentials were refused
BAD_CREDENTIALS = frozenset({
    "AuthFailure",
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "InvalidSignatureException",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "InvalidToken",
})
#: the codes botocore's standard retry mode treats as throttling
THROTTLED = frozenset({
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
})
#: codes meaning the service failed on its side (besides any HTTP 5xx)
SERVER_SIDE = frozenset({"InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable",
                         "KMSInternalException", "DependencyTimeoutException"})
# credential providers that failed to load or refresh (botocore.exceptions names)
_REFRESH_ERRORS = ("SSOTokenLoadError", "UnauthorizedSSOTokenError", "TokenRetrievalError",
                   "CredentialRetrievalError", "RefreshWithMFAUnsupportedError",
                   "InvalidConfigError")

quiet = Quieter("botocore.endpoint", "botocore.parsers", "botocore.auth")


@dataclass(frozen=True)
class Words:
    """How the caller's user names the settings, and which errors the caller raises."""

    feature: str  # "seedtool launch aws", "the aws-kms source"
    profile: str  # "--profile", "profile="
    region: str  # "--region", "region="
    endpoint: str  # "--endpoint-url", "endpoint_url="
    credentials_fix: str
    error: type[SeedtoolError]  # AWS refused or failed
    usage: type[SeedtoolError]  # a setting is wrong

    @property
    def no_region(self) -> str:
        return (f"no AWS region is set; pass {self.region} or set AWS_REGION "
                "(or AWS_DEFAULT_REGION)")


@dataclass(frozen=True)
class Call:
    """What a message says about the call that failed."""

    service: str  # "EC2", "AWS KMS"
    op: str  # "RunInstances"
    where: str  # the endpoint
    retry: str  # what to do after a transient failure, e.g. "retry later"
    #: how long it waited, for a timeout: "within 10 s in 3 attempts"; "RunInstances in
    #: time through all retries"
    patience: str = "in time through all retries"
    #: extra advice when throttled after all retries
    throttled: str = ""
    #: what to do when the service refused the request for another reason
    refused: str = ""


@dataclass(frozen=True)
class ClientErrorInfo:
    code: str
    status: int
    attempts: int
    message: str  # redacted


def session(profile: str | None, region: str | None, words: Words) -> Any:
    """A boto3 session for `profile` (None: the default chain) and `region`."""
    try:
        import boto3
        from botocore.exceptions import ProfileNotFound
    except ImportError:
        raise words.error(f"{words.feature} needs boto3; pip install 'seedtool[aws]'") from None
    try:
        return boto3.session.Session(profile_name=profile, region_name=region)
    except ProfileNotFound:
        raise words.usage(_unknown_profile(profile, words)) from None


def credentials(sess: Any, words: Words, call: Call) -> Any:
    """The session's credentials, found without calling AWS (every provider in the
    chain is local except the instance metadata one, which botocore bounds by
    AWS_METADATA_SERVICE_TIMEOUT); raises when there is no region or none are found."""
    if not sess.region_name:
        raise words.usage(words.no_region)
    try:
        creds = sess.get_credentials()
    except Exception as e:  # noqa: BLE001 - botocore raises many kinds here
        raise translate(e, words, call) from None
    if creds is None:
        raise words.error(f"no AWS credentials were found; {words.credentials_fix}")
    return creds


def client(sess: Any, service: str, words: Words, *, endpoint_url: str | None = None,
           **config: Any) -> Any:
    """A client of `service` with botocore's standard retry mode (which resends a
    request unchanged, ClientToken included); `config` goes to botocore's Config."""
    from botocore.config import Config

    if not sess.region_name:
        raise words.usage(words.no_region)
    retries = {"mode": "standard", **config.pop("retries", {})}
    cfg = Config(retries=retries, user_agent_extra="seedtool", **config)
    return sess.client(service, endpoint_url=endpoint_url, config=cfg)


def client_error_info(response: Mapping[str, Any]) -> ClientErrorInfo:
    err = response.get("Error", {}) or {}
    meta = response.get("ResponseMetadata", {}) or {}
    status = meta.get("HTTPStatusCode")
    return ClientErrorInfo(
        code=str(err.get("Code") or "unknown"),
        status=status if isinstance(status, int) else 0,
        attempts=int(meta.get("RetryAttempts", 0) or 0) + 1,
        message=redact(str(err.get("Message") or "")),
    )


def translate(
    e: BaseException,
    words: Words,
    call: Call,
    codes: Callable[[ClientErrorInfo], SeedtoolError | None] | None = None,
) -> SeedtoolError:
    """One actionable sentence for anything boto3/botocore raised (never its payload).

    `codes` gives the caller's own meaning of a service's error codes first; the
    ones every service shares (credentials, throttling, server side) follow."""
    try:
        from botocore import exceptions as bx
    except ImportError:  # pragma: no cover - boto3 always brings botocore
        return words.error(f"{call.service} {call.op} failed ({type(e).__name__})")
    if isinstance(e, bx.ClientError):
        info = client_error_info(e.response)
        mine = codes(info) if codes else None
        return mine if mine is not None else _client_error(info, words, call)
    if isinstance(e, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return words.error(f"no usable AWS credentials were found; {words.credentials_fix}")
    refresh = tuple(getattr(bx, n) for n in _REFRESH_ERRORS if hasattr(bx, n))
    if isinstance(e, refresh):
        return words.error(
            f"AWS credentials could not be loaded or refreshed ({type(e).__name__}); "
            f"{words.credentials_fix}"
        )
    if isinstance(e, bx.ProfileNotFound):
        return words.usage(_unknown_profile(getattr(e, "kwargs", {}).get("profile"), words))
    if isinstance(e, bx.NoRegionError):
        return words.usage(words.no_region)
    if isinstance(e, bx.ParamValidationError):
        report = redact(str(getattr(e, "kwargs", {}).get("report", "")))
        return words.usage(f"the {call.op} parameters are not valid ({report})")
    if isinstance(e, bx.ReadTimeoutError):
        return no_answer(words.error, call.service, call.where, call.patience, call.retry)
    if isinstance(e, (bx.ConnectTimeoutError, bx.EndpointConnectionError)):
        return no_connection(words.error, call.service, call.where, "", (
            f"the network, {words.region} or {words.endpoint} (e.g. a VPC endpoint)"))
    return words.error(
        f"{call.service} {call.op} failed ({type(e).__name__}) at {call.where}; check the "
        f"network, {words.region} and {words.endpoint}"
    )


def _client_error(info: ClientErrorInfo, words: Words, call: Call) -> SeedtoolError:
    if info.code in BAD_CREDENTIALS:
        return words.error(
            f"AWS did not accept the credentials ({info.code}); {words.credentials_fix}")
    tries = f" through {info.attempts} attempts"
    if info.code in THROTTLED:
        return throttled(words.error, call.service, call.op, info.code, tries,
                         call.throttled or call.retry)
    if info.code in SERVER_SIDE or info.status >= 500:
        return server_side(words.error, call.service, f"{info.code}, HTTP {info.status}",
                           tries, call.retry)
    detail = f": {info.message}" if info.message else ""
    fix = call.refused or f"check {words.region} and {words.endpoint}"
    return words.error(f"{call.service} refused {call.op} ({info.code}{detail}); {fix}")


def _unknown_profile(profile: str | None, words: Words) -> str:
    return (f"AWS profile '{profile}' is not configured; run aws configure --profile "
            f"{profile} or pass another {words.profile}")
