"""OpenStack plumbing: a connection from clouds.yaml / OS_* variables, API errors as one
sentence with a fix, and openstacksdk's request logging kept away from seeds.

Credentials are openstacksdk's own (openstack.config): `--os-cloud NAME` (or
OS_CLOUD) picks a cloud in clouds.yaml (OS_CLIENT_CONFIG_FILE, ./clouds.yaml,
~/.config/openstack/, /etc/openstack/), and with no cloud named the OS_AUTH_URL,
OS_USERNAME, ... variables of an openrc file are used, exactly as the `openstack`
command line does. The token is asked for at once (`connect`), so bad credentials show
up before any seed is made.

keystoneauth logs every request and response body at DEBUG (keystoneauth1/session.py
`_http_log_request`, `_http_log_response`): a server create carries user-data with a
seed, and an admin's server list carries every server's user-data
(OS-EXT-SRV-ATTR:user_data, compute API microversion 2.3+). Those records are dropped
while our calls run. Nova repeats a refused value in its message ("Invalid input for
field/attribute user_data. Value: ..."), so no API message is repeated whole.

openstacksdk is imported only by `connect`. This module never prints.
"""

from __future__ import annotations

import warnings
from typing import Any

from ..quiet import Quieter
from ..shared.errors import CloudError, SeedtoolError, UsageError
from . import redact


class OpenStackError(CloudError):
    """An OpenStack API refused or failed a request."""


#: the loggers keystoneauth writes request and response bodies to (one, or three when
#: clouds.yaml sets split_loggers)
_QUIET_LOGGERS = ("keystoneauth.session", "keystoneauth.session.request",
                  "keystoneauth.session.response", "keystoneauth.session.body",
                  # "Failed to discover available identity versions": the sentence we
                  # raise says it better
                  "keystoneauth.identity.generic.base")
quiet = Quieter(*_QUIET_LOGGERS)

_CREDENTIALS_FIX = ("check the cloud's auth section in clouds.yaml or the OS_* variables "
                    "(openstack token issue shows the same)")


def connect(cloud: str | None = None, *, region: str | None = None) -> Any:
    """An authenticated `openstack.connection.Connection` (raises a SeedtoolError)."""
    try:
        import openstack
        from openstack import warnings as os_warnings
    except ImportError:
        raise OpenStackError(
            "seedtool launch openstack needs openstacksdk; pip install 'seedtool[openstack]'"
        ) from None
    # the SDK's own deprecation and configuration warnings are not the user's business here
    for category in (os_warnings.OpenStackDeprecationWarning, os_warnings.OpenStackWarning,
                     PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(openstack|keystoneauth1)")
    where = f"cloud '{cloud}'" if cloud else "the OS_* environment"
    try:
        with quiet():
            conn = openstack.connect(cloud=cloud, region_name=region)
            conn.session.get_token()  # authenticate now: refuse before any seed is made
    except Exception as e:  # noqa: BLE001 - every SDK failure becomes one sentence
        raise translate(e, op="authenticate", where=where) from e
    return conn


def status_of(e: BaseException) -> int:
    """The HTTP status of an SDK error, 0 when it has none (a connection failure)."""
    for attr in ("status_code", "http_status"):
        value = getattr(e, attr, None)
        if isinstance(value, int):
            return value
    return 0


def retry_after(e: BaseException) -> int | None:
    """The seconds of an error response's Retry-After header (RFC 9110 10.2.3), if any."""
    response = getattr(e, "response", None)
    headers: Any = getattr(response, "headers", None) or {}
    value = str(headers.get("Retry-After") or "")
    return int(value) if value.isdigit() else None


def translate(e: BaseException, *, op: str, where: str = "OpenStack", resume: str = "re-run",
              error: type[CloudError] = OpenStackError) -> SeedtoolError:
    """One sentence with a fix for anything openstacksdk or keystoneauth raised.

    `op` names the call ("create server 3"), `resume` how to go on safely ("re-run with
    --launch-id L"); cloud failures are raised as `error`. A SeedtoolError passes
    through unchanged.
    """
    if isinstance(e, SeedtoolError):
        return e
    try:
        from keystoneauth1 import exceptions as ka
        from openstack import exceptions as ox
    except ImportError:  # pragma: no cover - a connection implies both
        return error(f"OpenStack {op} failed ({type(e).__name__})")
    if isinstance(e, (ox.ConfigException, ka.MissingRequiredOptions, ka.MissingAuthPlugin,
                      ka.NoMatchingPlugin)):
        said = redact(str(e)) if isinstance(e, ox.ConfigException) else type(e).__name__
        return UsageError(
            f"no usable OpenStack configuration in {where} ({said}); pass --os-cloud with a "
            "cloud from clouds.yaml (or set OS_CLOUD), or source the project's openrc file"
        )
    if isinstance(e, ka.Unauthorized) or status_of(e) == 401:
        return error(f"OpenStack did not accept the credentials of {where} (HTTP 401); "
                     f"{_CREDENTIALS_FIX}")
    if isinstance(e, ka.SSLError):
        return error(
            f"the TLS connection to OpenStack for {where} failed ({type(e).__name__}); set "
            "cacert in clouds.yaml (or OS_CACERT) to the cloud's CA bundle"
        )
    if isinstance(e, (ka.ConnectFailure, ka.ConnectTimeout, ka.UnknownConnectionError)):
        return error(
            f"could not connect to OpenStack for {where} during {op}; check the network and "
            f"the auth_url or endpoints, then {resume}"
        )
    if isinstance(e, ka.DiscoveryFailure):
        return error(
            f"could not discover the OpenStack API of {where} during {op} (nothing usable "
            "answered); check the network and auth_url in clouds.yaml (or OS_AUTH_URL), then "
            f"{resume}"
        )
    if isinstance(e, (ka.EndpointNotFound, ox.EndpointNotFound, ox.ServiceDiscoveryException)):
        return error(
            f"the service catalog of {where} has no usable endpoint for {op} "
            f"({type(e).__name__}); check region_name (--os-region-name) and interface "
            "in clouds.yaml"
        )
    status = status_of(e)
    if status:
        return _http_error(e, status, op, resume, error)
    return error(f"OpenStack {op} failed ({type(e).__name__}); check the network and "
                          f"clouds.yaml, then {resume}")


def _http_error(e: BaseException, status: int, op: str, resume: str,
                error: type[CloudError]) -> CloudError:
    detail = redact(str(getattr(e, "details", "") or ""))
    said = f": {detail}" if detail else ""
    wait = retry_after(e)
    if status == 403 and "quota" in detail.lower():
        return error(
            f"the project's quota is used up ({op}, HTTP 403{said}); delete unused servers or "
            f"ask for a higher quota (openstack quota show), then {resume}"
        )
    if status == 403:
        return error(
            f"this OpenStack user may not {op} (HTTP 403{said}); ask the cloud's "
            "administrator for the member role in the project, or use another --os-cloud"
        )
    if status == 404:
        return error(f"OpenStack found nothing for {op} (HTTP 404{said}); check the "
                              "names and ids given and --os-region-name")
    if status == 409:
        return error(
            f"OpenStack refused {op} as conflicting (HTTP 409{said}); name one network with "
            f"--network if several match, or fix what the message names, then {resume}"
        )
    if status in (413, 429):
        later = f"wait {wait} s (the cloud's Retry-After)" if wait else "wait a minute"
        kind = "rate or quota limit" if status == 413 else "rate limit"
        return error(
            f"OpenStack's {kind} refused {op} (HTTP {status}{said}); {later} and {resume}, "
            "with a lower --concurrency"
        )
    if status >= 500:
        return error(f"OpenStack failed on its side during {op} (HTTP {status}{said}); "
                              f"{resume} to retry")
    return error(f"OpenStack refused {op} (HTTP {status}{said}); fix the options "
                          f"named there, then {resume}")


__all__ = ["OpenStackError", "connect", "quiet", "retry_after", "status_of", "translate"]
