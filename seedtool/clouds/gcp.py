"""Google Cloud plumbing shared by every part of seedtool that calls Google Cloud (the
gcp-kms source, the Compute Engine launcher): Application Default Credentials and the
project, clients over the REST transport, one retry policy, one sentence with a fix for
anything the client libraries raise, and quieting their payload logging.

The client libraries are imported only when used, never at import time. ADC is
looked for without google-auth's metadata-server probe (up to about 3 x 3 s off Google
Cloud) unless something says it could be there (`adc_may_exist`).

The generated REST transports log whole requests and responses at DEBUG level (an
insert's metadata holds the seed, a KMS reply holds random bytes); `quiet()` drops
those records on the threads inside our calls. No message made here holds a payload.

Callers name their settings differently (`--endpoint` on the command line,
`endpoint=` in a source spec) and raise their own error classes: `Words` carries both.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..quiet import Quieter
from ..shared.errors import SeedtoolError
from . import no_answer, no_connection, server_side, throttled

ADC_FIX = "run gcloud auth application-default login or set GOOGLE_APPLICATION_CREDENTIALS"
#: Compute Engine answers some rate limits with 403 and one of these reasons
RATE_LIMIT_REASONS = ("rateLimitExceeded", "userRateLimitExceeded")

# A logger's filter sees only the records made on that very logger, so each is named.
_QUIET_LOGGERS = (
    *(f"google.cloud.compute_v1.services.{svc}.{part}"
      for svc in ("instances", "zone_operations", "instance_templates",
                  "region_instance_templates")
      for part in ("client", "transports.rest")),
    "google.cloud.kms_v1.services.key_management_service.transports.rest",
    "google.cloud.kms_v1.services.key_management_service.client",
)
quiet = Quieter(*_QUIET_LOGGERS)


@dataclass(frozen=True)
class Words:
    """How the caller's user names the settings, and which errors the caller raises."""

    project: str  # "--project", "project="
    endpoint: str  # "--endpoint", "endpoint="
    error: type[SeedtoolError]  # Google refused or failed
    #: a refusal every further call would get alike (credentials): the launcher stops
    refused: type[SeedtoolError]
    usage: type[SeedtoolError]  # a setting is wrong


@dataclass(frozen=True)
class Call:
    """What a message says about the call that failed."""

    service: str  # "Compute Engine", "Cloud KMS"
    what: str  # "create instances" (after "to")
    where: str  # the endpoint host
    retry: str  # what to do after a transient failure, e.g. "retry later"
    #: how long it waited, for a timeout: "within 10 s"
    patience: str = "in time"
    #: how long it retried, for messages after retries: 30.0
    deadline: float = 0.0
    #: what to do when rate-limited (HTTP 429) after all retries
    throttled: str = ""
    #: what to check when the service refused for another reason
    refused: str = ""


def adc_may_exist() -> bool:
    """True when Application Default Credentials could be found without a slow probe:
    GOOGLE_APPLICATION_CREDENTIALS, gcloud's well-known ADC file, a metadata host
    override, a Cloud Run / Functions environment, or Google's DMI product name."""
    env = os.environ
    if env.get("GOOGLE_APPLICATION_CREDENTIALS"):
        return True
    if any(env.get(v) for v in ("GCE_METADATA_HOST", "GCE_METADATA_IP", "K_SERVICE",
                                "FUNCTION_TARGET")):
        return True
    if os.name == "nt":
        base = Path(env.get("CLOUDSDK_CONFIG") or Path(env.get("APPDATA", "")) / "gcloud")
    else:
        base = Path(env.get("CLOUDSDK_CONFIG") or Path.home() / ".config" / "gcloud")
    if (base / "application_default_credentials.json").is_file():
        return True
    try:
        # What google-auth itself checks on Linux to recognise a Compute Engine VM.
        product = Path("/sys/class/dmi/id/product_name").read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return False
    return product.startswith("Google")


def credentials(given: Any, project: str | None, scope: str,
                words: Words) -> tuple[Any, str | None]:
    """(credentials, project): `given` (a google-auth credentials object, or the string
    "anonymous"), else Application Default Credentials for `scope`. The project is the
    one given, else the ADC's, else GOOGLE_CLOUD_PROJECT, else None."""
    if isinstance(given, str):  # "anonymous", the only string callers let through
        from google.auth.credentials import AnonymousCredentials

        given = AnonymousCredentials()
    if given is None:
        if not adc_may_exist():
            raise words.refused(f"no Google Application Default Credentials found; {ADC_FIX}")
        import google.auth
        from google.auth import exceptions as gax

        try:
            given, adc_project = google.auth.default(scopes=[scope])
        except gax.DefaultCredentialsError:
            raise words.refused(
                f"no usable Google Application Default Credentials found; {ADC_FIX}"
            ) from None
        except gax.GoogleAuthError as e:
            raise words.refused(
                f"the Google Application Default Credentials could not be used "
                f"({type(e).__name__}); {ADC_FIX}, or pass {words.project}"
            ) from None
        project = project or adc_project or None
    return given, project or os.environ.get("GOOGLE_CLOUD_PROJECT") or None


def refresh(creds: Any, words: Words, call: Call) -> None:
    """Refresh once now, so missing or expired credentials give one sentence before
    anything is made, not one failure per call."""
    from google.auth.credentials import AnonymousCredentials

    if isinstance(creds, AnonymousCredentials) or not hasattr(creds, "refresh"):
        return
    if getattr(creds, "valid", False):
        return
    import google.auth.transport.requests

    try:
        creds.refresh(google.auth.transport.requests.Request())
    except Exception as e:  # noqa: BLE001 - mapped to one sentence
        raise translate(e, words, call) from None


def client(cls: Any, creds: Any, endpoint: str | None) -> Any:
    """A client of `cls` over the REST transport, at `endpoint` when given."""
    options = {"api_endpoint": endpoint} if endpoint else None
    return cls(credentials=creds, transport="rest", client_options=options)


def close(clients: Any) -> None:
    """Close each client's HTTP session (best effort)."""
    for c in clients:
        try:
            c.transport.close()
        except Exception:  # noqa: BLE001,S110 - closing is best effort
            pass


def retry(deadline: float, *, initial: float = 0.2, maximum: float = 5.0) -> Any:
    """google-api-core's Retry over the transient answers: rate limits (429, and
    Compute Engine's 403 rateLimitExceeded), server trouble (5xx, deadline) and
    network trouble. Callers retry only calls that are safe to repeat (a requestId,
    or a read that spends nothing)."""
    import requests
    from google.api_core import exceptions as ex
    from google.api_core import retry as retries

    def transient(e: BaseException) -> bool:
        if isinstance(e, (ex.TooManyRequests, ex.ResourceExhausted, ex.InternalServerError,
                          ex.BadGateway, ex.ServiceUnavailable, ex.GatewayTimeout,
                          ex.DeadlineExceeded, requests.exceptions.ConnectionError,
                          requests.exceptions.Timeout)):
            return True
        return isinstance(e, ex.Forbidden) and reason(e) in RATE_LIMIT_REASONS

    kwargs: dict[str, Any] = {"predicate": transient, "initial": initial,
                              "maximum": maximum, "multiplier": 2.0}
    try:
        return retries.Retry(timeout=deadline, **kwargs)
    except TypeError:  # google-api-core before 2.16 calls it `deadline`
        return retries.Retry(deadline=deadline, **kwargs)


def reason(e: Any) -> str:
    """The `reason` of a Google API error (e.g. rateLimitExceeded), or ""."""
    try:
        errors = list(getattr(e, "errors", None) or [])
    except TypeError:
        return ""
    for err in errors:
        if isinstance(err, dict) and err.get("reason"):
            return str(err["reason"])
    return str(getattr(e, "reason", "") or "")


def translate(
    e: BaseException,
    words: Words,
    call: Call,
    codes: Callable[[BaseException, str], SeedtoolError | None] | None = None,
) -> SeedtoolError:
    """One actionable sentence for anything the client raised (never its payload).

    `codes(error, retried)` gives the caller's own meaning first (a 403, a 404, a 400
    of its API); what every Google API shares follows."""
    import requests
    from google.api_core import exceptions as ex
    from google.auth import exceptions as gax

    if isinstance(e, SeedtoolError):
        return e
    retried = ""
    if isinstance(e, ex.RetryError):
        retried = f" for {call.deadline:g} s of retries"
        if e.cause is None:
            return words.error(f"{call.service} at {call.where} gave no good answer to "
                               f"{call.what}{retried}; {call.retry}")
        e = e.cause
    mine = codes(e, retried) if codes else None
    if mine is not None:
        return mine
    if isinstance(e, gax.DefaultCredentialsError):
        return words.refused(f"no usable Google Application Default Credentials; {ADC_FIX}")
    if isinstance(e, (gax.RefreshError, getattr(gax, "OAuthError", gax.RefreshError))):
        return words.refused(
            f"the Google credentials could not be refreshed (expired or revoked); {ADC_FIX}")
    if isinstance(e, gax.GoogleAuthError):
        return words.refused(
            f"the Google credentials could not be used ({type(e).__name__}); {ADC_FIX}")
    # The REST transport raises the HTTP-named classes (Unauthorized, Forbidden),
    # gRPC the status-named ones; both mean the same here.
    if isinstance(e, (ex.Unauthenticated, ex.Unauthorized)):
        return words.refused(
            f"{call.service} did not accept the credentials (HTTP 401); {ADC_FIX}")
    if isinstance(e, (ex.TooManyRequests, ex.ResourceExhausted)):
        return throttled(words.error, call.service, f"the calls to {call.what}",
                         "HTTP 429: rate limit or quota", retried, call.throttled or call.retry)
    if isinstance(e, (ex.ServerError, ex.DeadlineExceeded)):
        return server_side(words.error, call.service, f"HTTP {getattr(e, 'code', None)}",
                           f" to {call.what}{retried}", call.retry)
    if isinstance(e, ex.GoogleAPICallError):
        fix = call.refused or f"check {words.project} and {words.endpoint}"
        return words.error(f"{call.service} refused to {call.what} "
                           f"(HTTP {getattr(e, 'code', None)}); {fix}")
    if isinstance(e, requests.exceptions.Timeout) and not isinstance(
            e, requests.exceptions.ConnectTimeout):
        return no_answer(words.error, call.service, call.where,
                         f"{call.patience} to {call.what}{retried}", call.retry)
    if isinstance(e, requests.exceptions.ConnectionError):
        return no_connection(words.error, call.service, call.where, retried,
                             f"the network or {words.endpoint}")
    return words.error(f"{call.service} call to {call.what} failed ({type(e).__name__}) at "
                       f"{call.where}; check the network and {words.endpoint}")
