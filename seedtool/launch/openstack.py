"""The OpenStack launcher: one Nova "create server" call per server, each with its own
fresh seed in its user-data (`openstack server create` semantics).

Why one call per server: nova's multi-create (`min_count`/`max_count`, the
`openstack server create --min/--max` options) gives every server of the request the
same user-data, and so do Heat's OS::Heat::ResourceGroup and AutoScalingGroup, which
repeat one server definition; a seed shared by several VMs is worse than none. So
`--min`/`--max` above 1 are refused, and user-data that already carries a seed (copied
from such a template) is refused by the engine. A server group (`--hint group=ID`) is
only a scheduling policy: each member made by its own call has its own user-data, so it
is allowed.

Nova's limit: `user_data` is base64 of at most 65,535 characters (the compute API
reference, "Create Server"), i.e. 49,149 bytes before base64.

Re-running safely. Nova has no client token for "create server", so each server carries
metadata `seedtool:launch-id`, `seedtool:index` and `seedtool:seed-id` (public ids, never
the seed). A re-run with the same launch id lists the project's servers and launches
only the indices that have none (each with a NEW seed). When a create fails on the
cloud's side (HTTP 5xx, a lost connection) the servers are listed again: a server the
failed call made anyway is reported, not made twice; if there is none, one more call
with a new seed is made. A 413/429 with a Retry-After of at most 30 s is waited out and
tried again with a new seed; a longer one stops the launch.

Everything cloud-specific but not launch-specific (the connection, error sentences, log
quieting) is in seedtool/clouds/openstack.py. This module never prints.
"""

from __future__ import annotations

import base64
import gzip
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..clouds import openstack as cloud
from ..shared.errors import UsageError
from .base import (
    EXISTING,
    LAUNCHED,
    CreateAgain,
    InstanceResult,
    Launcher,
    LaunchError,
    SharedSeedRefused,
    check_launch_id,
)

META_SEED_ID = "seedtool:seed-id"
META_LAUNCH_ID = "seedtool:launch-id"
META_INDEX = "seedtool:index"
#: nova's schema for user_data: base64 text of at most this many characters, which is
#: at most this many bytes before base64
USER_DATA_B64_MAX = 65535
USER_DATA_RAW_MAX = USER_DATA_B64_MAX // 4 * 3
#: statuses of a server that does not count as launched (a resume makes the index again)
DEAD_STATUSES = ("ERROR", "DELETED", "SOFT_DELETED")
#: the longest Retry-After waited out before one more try
RETRY_AFTER_MAX = 30


class OpenStackLaunchError(LaunchError):
    """Nova refused or failed a create of `seedtool launch openstack`."""


def parse_pairs(specs: Sequence[str], option: str) -> dict[str, str]:
    """`KEY=VALUE` options (--property, --hint) as a dict; seedtool:* keys are ours."""
    out: dict[str, str] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key:
            raise UsageError(f"{option} '{spec}' is not KEY=VALUE; write e.g. {option} "
                             f"{'group=SERVER_GROUP_ID' if option == '--hint' else 'role=web'}")
        if key.lower().startswith("seedtool:"):
            raise UsageError(f"{option} key '{key}' is reserved; seedtool sets seedtool:* "
                             "metadata itself, so pick another key")
        out[key] = value
    return out


@dataclass
class ServerRequest:
    """What every server of one launch asks for (the options of `openstack server create`)."""

    name: str
    image: str | None = None
    flavor: str | None = None
    networks: Sequence[str] = ()
    no_network: bool = False
    key_name: str | None = None
    security_groups: Sequence[str] = ()
    availability_zone: str | None = None
    config_drive: bool = False
    properties: Mapping[str, str] | None = None
    hints: Mapping[str, str] | None = None
    min_count: int = 1
    max_count: int = 1

    def check(self) -> None:
        """The refusals that need no cloud (raises UsageError / SharedSeedRefused)."""
        if self.min_count > 1 or self.max_count > 1:
            raise SharedSeedRefused(
                "--min/--max above 1 ask nova for one multi-create request, whose servers all "
                "get the same user-data and so the same seed; use --count N instead, which "
                "makes one call with its own seed per server"
            )
        if not self.image:
            raise UsageError("no image given; pass --image NAME|ID (openstack image list)")
        if not self.flavor:
            raise UsageError("no flavor given; pass --flavor NAME|ID (openstack flavor list)")
        if self.no_network and self.networks:
            raise UsageError("--no-network and --network contradict each other; give one")
        if len(self.properties or {}) + 3 > 128:
            raise UsageError("too many --property items: nova's default quota is 128 metadata "
                             "items and seedtool adds 3; give at most 125")
        for key, value in (self.properties or {}).items():
            if len(key) > 255 or len(value) > 255:
                raise UsageError(f"--property '{key[:40]}' is too long: nova allows 255 "
                                 "characters per key and per value")


def _fits(data: bytes) -> bool:
    return len(base64.b64encode(data)) <= USER_DATA_B64_MAX


class OpenStackLauncher(Launcher):
    """Launches `count` servers through an openstacksdk connection, one call and one
    fresh seed each. `conn` is what `seedtool.clouds.openstack.connect` returns."""

    name = "openstack"
    # nova's size limit (deliver/userdata.py TARGETS): the engine gzips to fit it; the
    # user's part alone is checked in check_request, before any seed is made (`_fits`)
    target = "openstack"
    columns = ("name",)
    max_attempts = 3

    def __init__(self, conn: Any, request: ServerRequest, *, launch_id: str,
                 user_data: bytes | None = None, cloud_name: str | None = None) -> None:
        self.conn = conn
        self.request = request
        self.launch_id = check_launch_id(launch_id)
        self.user_data = user_data
        self.count = 1  # set by check_request: names get an index when it is above 1
        self.cloud_name = cloud_name
        self._attrs: dict[str, Any] | None = None
        self._resume = f"re-run with --launch-id {self.launch_id}"

    # -- before any seed is made --------------------------------------------------------

    def check_request(self, count: int) -> list[str]:
        self.count = count
        self.request.check()
        if self.user_data and not (_fits(self.user_data) or
                                   _fits(gzip.compress(self.user_data, mtime=0))):
            raise UsageError(
                f"the --user-data file is {len(self.user_data)} bytes, over nova's limit of "
                f"{USER_DATA_B64_MAX} bytes of base64 ({USER_DATA_RAW_MAX} bytes) even gzipped "
                "and before the seed is added; shorten it or move large parts behind an "
                "#include URL"
            )
        req = self.request
        image = self._find("image", req.image, self.conn.image.find_image)
        flavor = self._find("flavor", req.flavor, self.conn.compute.find_flavor)
        attrs: dict[str, Any] = {"image_id": image.id, "flavor_id": flavor.id}
        if req.networks:
            attrs["networks"] = [
                {"uuid": self._find("network", n, self.conn.network.find_network).id}
                for n in req.networks]
        else:
            # compute API 2.37+ needs a choice; "auto" is what `openstack server create` sends
            attrs["networks"] = "none" if req.no_network else "auto"
        if req.key_name:
            attrs["key_name"] = req.key_name
        if req.security_groups:
            attrs["security_groups"] = [{"name": g} for g in req.security_groups]
        if req.availability_zone:
            attrs["availability_zone"] = req.availability_zone
        if req.config_drive:
            attrs["config_drive"] = True
        if req.hints:
            attrs["scheduler_hints"] = dict(req.hints)
        self._attrs = attrs
        notes = []
        if req.config_drive:
            notes.append("--config-drive: each server's config drive keeps its user-data "
                         "(and so its seed envelope) for the server's life, readable by root "
                         "in the guest, as the metadata service does")
        return notes

    def _find(self, kind: str, name_or_id: str | None, find: Any) -> Any:
        try:
            with cloud.quiet():
                found = find(name_or_id, ignore_missing=True)
        except Exception as e:  # noqa: BLE001 - every SDK failure becomes one sentence
            raise cloud.translate(e, op=f"look up {kind} '{name_or_id}'",
                                  where=self._where()) from None
        if found is None:
            raise UsageError(f"{self._where()} has no {kind} '{name_or_id}'; check --{kind} "
                             f"(openstack {kind} list) and --os-region-name")
        return found

    def _where(self) -> str:
        return f"cloud '{self.cloud_name}'" if self.cloud_name else "the OpenStack cloud"

    # -- resume -------------------------------------------------------------------------

    def existing(self) -> dict[int, InstanceResult]:
        found: dict[int, InstanceResult] = {}
        for index, server in self._ours():
            found.setdefault(index, self._result(index, EXISTING, server))
        return found

    def _ours(self, only: int | None = None) -> list[tuple[int, Any]]:
        """(index, server) of this launch's live servers, by listing the project's."""
        try:
            with cloud.quiet():
                servers = list(self.conn.compute.servers(details=True))
        except Exception as e:  # noqa: BLE001 - every SDK failure becomes one sentence
            raise cloud.translate(e, op="list servers", where=self._where(),
                                  resume=self._resume) from None
        out = []
        for server in servers:
            meta = server.metadata or {}
            if meta.get(META_LAUNCH_ID) != self.launch_id or server.status in DEAD_STATUSES:
                continue
            try:
                index = int(str(meta.get(META_INDEX)))
            except ValueError:
                continue
            if only is None or index == only:
                out.append((index, server))
        return sorted(out, key=lambda pair: (pair[0], str(pair[1].created_at or "")))

    def _result(self, index: int, status: str, server: Any) -> InstanceResult:
        return InstanceResult(index, status, seed_id=(server.metadata or {}).get(META_SEED_ID),
                              instance_id=server.id, extra={"name": server.name})

    # -- one server -----------------------------------------------------------------------

    def server_name(self, index: int) -> str:
        return self.request.name if self.count == 1 else f"{self.request.name}-{index}"

    def create(self, index: int, user_data: bytes, seed_id: str,
               attempt: int = 0) -> InstanceResult:
        if self._attrs is None:
            raise RuntimeError("prepare() must be called before create()")
        # within nova's limit: the engine's add_seed kept it to TARGETS["openstack"]
        encoded = base64.b64encode(user_data).decode("ascii")
        name = self.server_name(index)
        metadata = {**(self.request.properties or {}), META_LAUNCH_ID: self.launch_id,
                    META_INDEX: str(index), META_SEED_ID: seed_id}
        try:
            with cloud.quiet():
                server = self.conn.compute.create_server(
                    name=name, user_data=encoded, metadata=metadata, **self._attrs)
        except Exception as e:  # noqa: BLE001 - every SDK failure becomes a reported result
            return self._failed(index, seed_id, e, attempt)
        finally:
            del encoded
        return InstanceResult(index, LAUNCHED, seed_id=seed_id, instance_id=server.id,
                              extra={"name": name})

    def _failed(self, index: int, seed_id: str, e: Exception, attempt: int) -> InstanceResult:
        status = cloud.status_of(e)
        err = cloud.translate(e, op=f"create server {index}", where=self._where(),
                              resume=self._resume, error=OpenStackLaunchError)
        again = attempt + 1 < self.max_attempts
        wait = cloud.retry_after(e)
        if status in (413, 429) and again and wait is not None and wait <= RETRY_AFTER_MAX:
            time.sleep(wait)  # the request was refused, so nothing exists: try once more
            raise CreateAgain
        if status >= 500 or (not status and isinstance(err, OpenStackLaunchError)):
            # a lost reply may have made the server anyway: find it rather than make two
            made = [s for _, s in self._ours(only=index)
                    if (s.metadata or {}).get(META_SEED_ID) == seed_id]
            if made:
                return self._result(index, LAUNCHED, made[0])
            if again:
                raise CreateAgain
            raise err  # the cloud's own trouble: other indices may still succeed
        if isinstance(err, OpenStackLaunchError):
            err.stops_all = True  # a refused request: every index would be refused alike
        raise err

    def report_fields(self) -> dict[str, Any]:
        region = getattr(getattr(self.conn, "config", None), "region_name", None)
        return {"cloud": self.cloud_name, "region": region}

    def close(self) -> None:
        close = getattr(self.conn, "close", None)
        if callable(close):
            close()


__all__ = [
    "META_INDEX",
    "META_LAUNCH_ID",
    "META_SEED_ID",
    "USER_DATA_B64_MAX",
    "USER_DATA_RAW_MAX",
    "OpenStackLaunchError",
    "OpenStackLauncher",
    "ServerRequest",
    "parse_pairs",
]
