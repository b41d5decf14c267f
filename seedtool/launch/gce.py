"""Compute Engine: one `instances.insert` per instance, each with its own fresh seed.

Every instance gets its own call, its own `SeedFactory.new()` seed merged into the
user's user-data (metadata `user-data`, plus `user-data-encoding: base64` when gzip
makes it binary), a `requestId` derived from the launch id and its index, and the
labels `seedtool-launch-id`, `seedtool-index` and `seedtool-seed-id` (the seed's public
id, never the seed). bulkInsert, instance templates and managed instance groups are
never used to carry a seed: every instance they make gets the same metadata, and a
shared seed is worse than none (Compute Engine documentation, "About instance templates"
and "bulkInsert").

requestId: the API ignores a second request with the same id and returns the first
one's operation (REST reference, instances.insert `requestId`, kept for at least 60
minutes), so retries of one call cannot make two instances. Names are derived from
the index too, so a second instance for an index would be refused with 409 anyway.
A resumed launch (`resume=True`) first lists the instances labelled with its launch
id and inserts only the missing indices, each with a new seed. If the id of a missing
index replays an earlier, failed operation, the next id in the sequence is used.

Operations are waited on with our own `ZoneOperationsClient` built with the same
endpoint and credentials: the client's `insert()` polls through a zone-operations
client made for the default endpoint (google-cloud-compute 1.x,
`InstancesTransport._zone_operations_client`), so `insert_unary()` is used instead.

`scrub()` (for `--scrub-after-boot`): metadata of a running VM can be changed with
`setMetadata` and its current fingerprint (412 otherwise). Once the guest reports its
seed id in the guest attribute `seedtool/consumed` (seedtool.guest.gce), the metadata
is rewritten with the user's own user-data rebuilt from the original input (or without
`user-data` when the user gave none), only if the current user-data still holds this
instance's seed and exactly the user's parts; a 412 re-reads and retries, bounded.

This module never prints or logs. The REST transport logs whole request and response
payloads at DEBUG level (the metadata holds the seed), so its records are dropped
while our calls run. No message raised here contains seed bytes or user-data.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..clouds import gcp, redact
from ..deliver import userdata
from ..shared import envelope
from ..shared.errors import SeedtoolError, UsageError
from .base import (
    EXISTING,
    LAUNCHED,
    CreateAgain,
    InstanceResult,
    Launcher,
    LaunchError,
    LaunchInterrupted,
    LaunchReport,
    SharedSeedRefused,
    carries_seed,
)
from .base import check_launch_id as _check_launch_id
from .base import new_launch_id as _new_launch_id

COMPUTE_SCOPE = "https://www.googleapis.com/auth/compute"
LABEL_LAUNCH_ID = "seedtool-launch-id"
LABEL_INDEX = "seedtool-index"
LABEL_SEED_ID = "seedtool-seed-id"
OWNED_LABELS = (LABEL_LAUNCH_ID, LABEL_INDEX, LABEL_SEED_ID)
#: metadata keys seedtool writes itself
USER_DATA_KEYS = ("user-data", "user-data-encoding")
GUEST_ATTRIBUTES_KEY = "enable-guest-attributes"
#: guest attribute namespace and key the guest writes (seedtool.guest.gce)
GUEST_NAMESPACE = "seedtool"
GUEST_KEY = "consumed"
DEFAULT_MACHINE_TYPE = "e2-medium"
DEFAULT_OPERATION_TIMEOUT = 600.0
DEFAULT_RETRY_DEADLINE = 60.0
DEFAULT_SCRUB_TIMEOUT = 900.0
#: how many requestIds one index may try when earlier ones replay failed operations
MAX_REQUEST_GENERATIONS = 4
#: setMetadata attempts when another writer changes the metadata in between (412)
MAX_FINGERPRINT_RETRIES = 5
#: the namespace of every requestId (uuid5), so ids are stable across machines
REQUEST_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "seedtool:gce:request-id")

_INSTALL = "pip install 'seedtool[gcp]'"
# GCE resource names (RFC 1035) and label rules (REST reference, "Labels").
_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_LAUNCH_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_ZONE = re.compile(r"[a-z]+-[a-z]+[0-9]+-[a-z]")
_METADATA_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")
_NOT_FOUND = re.compile(r"The resource '([^']{1,300})' was not found")
# Instance fields seedtool sets itself from its own flags, or refuses in --params.
_SHARED_SEED_PARAMS = {
    "count": "bulkInsert",
    "minCount": "bulkInsert",
    "namePattern": "bulkInsert",
    "perInstanceProperties": "bulkInsert",
    "instanceProperties": "bulkInsert or an instance template",
    "sourceMachineImage": "a machine image",
}
_TEMPLATE = re.compile(
    r"(?:https://[^/]+/compute/v1/)?(?:projects/(?P<project>[^/]+)/)?"
    r"(?:global|regions/(?P<region>[^/]+))/instanceTemplates/(?P<name>[^/]+)"
)


class GceLaunchError(LaunchError):
    """Compute Engine refused or failed a request of `seedtool launch gce`."""


class GceRefused(GceLaunchError):
    """A refusal every instance of the launch would get (credentials, permission, a
    missing image or zone, a bad request): no further launches are started."""

    stops_all = True


WORDS = gcp.Words(project="--project", endpoint="--endpoint", error=GceLaunchError,
                  refused=GceRefused, usage=UsageError)


# --- small parsers the command line uses ---------------------------------------------


def new_launch_id() -> str:
    """A fresh launch id that is a valid label value: UTC time plus 32 random bits."""
    return _new_launch_id(lowercase=True)


def check_launch_id(launch_id: str) -> str:
    return _check_launch_id(launch_id, _LAUNCH_ID, "1-63 lowercase letters, digits, '_' or "
                            "'-', as GCE labels require")


def request_id(project: str, zone: str, launch_id: str, index: int, name: str,
               generation: int = 0) -> str:
    """The requestId of one index of one launch (a UUID, as the API requires). The
    instance name is part of it, so reusing a launch id with another --name cannot
    replay the other instance's operation."""
    return str(uuid.uuid5(REQUEST_NAMESPACE,
                          f"{project}/{zone}/{launch_id}/{index}/{name}/{generation}"))


def parse_pairs(specs: Sequence[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} '{spec[:80]}' is not KEY=VALUE; write e.g. {what} env=prod")
        out[key] = value
    return out


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    for k, v in labels.items():
        if k in OWNED_LABELS or k.startswith("seedtool-"):
            raise UsageError(f"label '{k}' is reserved for seedtool; choose another key")
        if not _LABEL_KEY.fullmatch(k):
            raise UsageError(
                f"label key '{k[:80]}' breaks GCE's label rules; start with a lowercase letter "
                "and use at most 63 lowercase letters, digits, '_' or '-'"
            )
        if not _LABEL_VALUE.fullmatch(v):
            raise UsageError(
                f"label value for '{k}' breaks GCE's label rules; use at most 63 lowercase "
                "letters, digits, '_' or '-'"
            )
    return dict(labels)


def check_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    for k in metadata:
        if k in USER_DATA_KEYS:
            raise UsageError(
                f"metadata key '{k}' is where seedtool puts the seed; give your user-data "
                "with --user-data FILE and it is kept, with the seed added"
            )
        if not _METADATA_KEY.fullmatch(k):
            raise UsageError(
                f"metadata key '{k[:80]}' is not valid; use 1-128 letters, digits, '_' or '-'"
            )
    return dict(metadata)


def instance_names(pattern: str, count: int) -> list[str]:
    """NAME-<index>, or the pattern with {index} filled in; every name checked."""
    names = []
    for i in range(count):
        name = pattern.replace("{index}", str(i)) if "{index}" in pattern else f"{pattern}-{i}"
        if not _NAME.fullmatch(name):
            raise UsageError(
                f"instance name '{name[:80]}' is not a valid GCE name; use 1-63 lowercase "
                "letters, digits and '-', starting with a letter (--name)"
            )
        names.append(name)
    return names


# --- what to launch ------------------------------------------------------------------


@dataclass
class GceSpec:
    """What each instance looks like, from the command line, before any seed exists."""

    zone: str
    name: str = "seedtool"
    #: None: the template's or --params' machine type, else DEFAULT_MACHINE_TYPE
    machine_type: str | None = None
    image: str | None = None
    network: str | None = None
    subnet: str | None = None
    service_account: str | None = None
    scopes: Sequence[str] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    user_data: bytes | None = None
    #: further Instance fields (REST JSON names), merged in; `sourceInstanceTemplate`
    #: is taken out and passed as the insert's query parameter
    params: Mapping[str, Any] = field(default_factory=dict)
    scrub_after_boot: bool = False

    def check(self) -> None:
        """Refuse bad or seed-sharing options before anything is made or sent."""
        if not _ZONE.fullmatch(self.zone):
            raise UsageError(f"--zone '{self.zone[:80]}' is not a zone name such as "
                             "us-central1-a")
        check_labels(self.labels)
        check_metadata(self.metadata)
        if self.scrub_after_boot and str(self.metadata.get(GUEST_ATTRIBUTES_KEY, "TRUE")).upper() \
                != "TRUE":
            raise UsageError(
                "--scrub-after-boot needs guest attributes, but --metadata turns "
                f"{GUEST_ATTRIBUTES_KEY} off; drop that --metadata item"
            )
        p = dict(self.params)
        for key, how in _SHARED_SEED_PARAMS.items():
            if key in p:
                raise SharedSeedRefused(
                    f"--params field '{key}' belongs to {how}, which gives every instance the "
                    "same metadata and so the same seed; seedtool makes one insert per "
                    "instance instead: use --count"
                )
        for key in ("name", "labels", "metadata"):
            if key in p:
                flag = {"name": "--name", "labels": "--label", "metadata": "--metadata or "
                        "--user-data"}[key]
                raise UsageError(f"--params must not set '{key}'; use {flag} for it")
        if self.image and "disks" in p:
            raise UsageError("--image and --params 'disks' both describe the boot disk; "
                             "give only one of them")
        if (self.network or self.subnet) and "networkInterfaces" in p:
            raise UsageError("--network/--subnet and --params 'networkInterfaces' both "
                             "describe the network; give only one of them")
        if (self.service_account or self.scopes) and "serviceAccounts" in p:
            raise UsageError("--service-account/--scopes and --params 'serviceAccounts' both "
                             "describe the service account; give only one of them")
        if "sourceInstanceTemplate" not in p and not self.image and "disks" not in p:
            raise UsageError("no boot disk: give --image (projects/P/global/images/NAME or "
                             ".../images/family/FAMILY), --params 'disks', or a "
                             "sourceInstanceTemplate in --params")
        tpl = p.get("sourceInstanceTemplate")
        if tpl is not None and not (isinstance(tpl, str) and _TEMPLATE.fullmatch(tpl)):
            raise UsageError("--params sourceInstanceTemplate must be a template path such as "
                             "projects/P/global/instanceTemplates/NAME")
        self.instance_body("check", 0, "0" * 32, {"user-data": ""})

    @property

    def region(self) -> str:
        return self.zone.rsplit("-", 1)[0]

    def _image_path(self, project: str | None) -> str:
        image = str(self.image)
        if image.startswith(("projects/", "https://", "global/")):
            return image
        if project is None:
            return image
        if image.startswith("family/"):
            return f"projects/{project}/global/images/{image}"
        return f"projects/{project}/global/images/{image}"

    def instance_body(self, name: str, index: int, seed_id: str, metadata: Mapping[str, str],
                      *, launch_id: str = "check", project: str | None = None,
                      base_labels: Mapping[str, str] | None = None) -> Any:
        """The Instance resource for one index (a compute_v1.Instance when the client
        library is installed, else its JSON dict, as `check()` uses it)."""
        body: dict[str, Any] = {k: v for k, v in self.params.items()
                                if k != "sourceInstanceTemplate"}
        body["name"] = name
        mt = self.machine_type
        if mt is None and "machineType" not in body and "sourceInstanceTemplate" not in \
                self.params:
            mt = DEFAULT_MACHINE_TYPE
        if mt is not None:
            body["machineType"] = mt if "/" in mt else f"zones/{self.zone}/machineTypes/{mt}"
        if self.image:
            body["disks"] = [{
                "boot": True,
                "autoDelete": True,
                "initializeParams": {"sourceImage": self._image_path(project)},
            }]
        if self.network or self.subnet or ("networkInterfaces" not in body
                                           and "sourceInstanceTemplate" not in self.params):
            nic: dict[str, Any] = {
                # an external address, as gcloud gives by default
                "accessConfigs": [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}],
            }
            net = self.network or ("default" if not self.subnet else None)
            if net:
                nic["network"] = net if "/" in net else f"global/networks/{net}"
            if self.subnet:
                s = self.subnet
                nic["subnetwork"] = s if "/" in s else f"regions/{self.region}/subnetworks/{s}"
            body["networkInterfaces"] = [nic]
        if self.service_account or self.scopes:
            scopes = [s if "://" in s else f"https://www.googleapis.com/auth/{s}"
                      for s in (self.scopes or ("cloud-platform",))]
            body["serviceAccounts"] = [{"email": self.service_account or "default",
                                        "scopes": scopes}]
        labels = dict(base_labels or {})
        labels.update(self.labels)
        labels.update({LABEL_LAUNCH_ID: launch_id, LABEL_INDEX: str(index),
                       LABEL_SEED_ID: seed_id})
        body["labels"] = labels
        body["metadata"] = {"items": [{"key": k, "value": v} for k, v in metadata.items()]}
        try:
            from google.cloud import compute_v1
        except ImportError:
            return body
        try:
            return compute_v1.Instance.from_json(json.dumps(body), ignore_unknown_fields=False)
        except Exception as e:  # noqa: BLE001 - protobuf's ParseError and friends
            field_name = re.search(r'field named "([^"]+)"', str(e))
            what = f"field '{field_name.group(1)}'" if field_name else "a field"
            raise UsageError(
                f"--params holds {what} that is not a valid Compute Engine Instance field or "
                "value; use the REST reference's JSON names (e.g. 'scheduling', "
                "'shieldedInstanceConfig')"
            ) from None


# --- the client ------------------------------------------------------------------------


def _import_compute() -> Any:
    try:
        from google.cloud import compute_v1
    except ImportError:
        raise GceLaunchError(
            f"seedtool launch gce needs google-cloud-compute; {_INSTALL}"
        ) from None
    return compute_v1



@dataclass(frozen=True)
class Timing:
    """How long Compute Engine calls may take: an operation, one call's retries (and
    the first pause between them), the pause between operation polls."""

    operation_timeout: float = DEFAULT_OPERATION_TIMEOUT
    retry_deadline: float = DEFAULT_RETRY_DEADLINE
    poll_interval: float = 2.0
    retry_initial: float = 1.0


class GceLauncher(Launcher):
    """One `instances.insert` and one fresh seed per instance.

    `credentials` is a google-auth credentials object (tests pass
    `AnonymousCredentials()`); None means Application Default Credentials.
    `run_launch` (seedtool.launch.base) calls `prepare()`, then `create()` per index;
    then `scrub()` if asked for.
    """

    name = "gce"
    target = "gce"
    max_attempts = MAX_REQUEST_GENERATIONS

    def __init__(
        self,
        spec: GceSpec,
        *,
        launch_id: str,
        project: str | None = None,
        endpoint: str | None = None,
        credentials: Any = None,
        operation_timeout: float = DEFAULT_OPERATION_TIMEOUT,
        retry_deadline: float = DEFAULT_RETRY_DEADLINE,
        poll_interval: float = 2.0,
        retry_initial: float = 1.0,
    ) -> None:
        spec.check()
        self.spec = spec
        self.launch_id = check_launch_id(launch_id)
        self.user_data = spec.user_data
        self.project = project
        self.endpoint = endpoint
        self.timing = Timing(operation_timeout, retry_deadline, poll_interval, retry_initial)
        self._credentials = credentials
        self._compute: Any = None
        self._local = threading.local()
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()
        self._retry: Any = None
        self._template: str | None = None
        self._base_items: dict[str, str] = {}
        self._base_labels: dict[str, str] = {}
        self._names: dict[int, str] = {}

    # -- set-up ---------------------------------------------------------------------

    @property

    def where(self) -> str:
        return self.endpoint or "compute.googleapis.com"

    def check_request(self, count: int) -> list[str]:
        """Import the client, resolve credentials and project, read a source template
        (refusing one that holds a seed); return notes for the user."""
        instance_names(self.spec.name, count)  # refuse bad names before any call
        self._compute = _import_compute()
        self._credentials, project = gcp.credentials(self._credentials, self.project,
                                                     COMPUTE_SCOPE, WORDS)
        if not project:
            raise UsageError("no Google Cloud project is set; pass --project or set "
                             "GOOGLE_CLOUD_PROJECT (or a quota project in your ADC)")
        self.project = project
        self._retry = gcp.retry(self.timing.retry_deadline, initial=self.timing.retry_initial,
                                maximum=16.0)
        gcp.refresh(self._credentials, WORDS, self._about("authenticate"))
        self.user_data = self.spec.user_data
        tpl = self.spec.params.get("sourceInstanceTemplate")
        return self._read_template(str(tpl)) if tpl else []

    def _client(self, kind: str) -> Any:
        """One client of each kind per thread (each has its own HTTP session)."""
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        if kind not in clients:
            cls = {"instances": self._compute.InstancesClient,
                   "operations": self._compute.ZoneOperationsClient,
                   "templates": self._compute.InstanceTemplatesClient,
                   "region_templates": self._compute.RegionInstanceTemplatesClient}[kind]
            clients[kind] = gcp.client(cls, self._credentials, self.endpoint)
            with self._clients_lock:
                self._clients.append(clients[kind])
        return clients[kind]

    def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = self._clients, []
        gcp.close(clients)

    def __enter__(self) -> GceLauncher:
        return self

    def _call(self, kind: str, method: str, request: Any, what: str,
              name: str | None = None) -> Any:
        # zoneOperations.wait may hold the request for up to 2 minutes (REST reference)
        timeout = 150.0 if method == "wait" else 60.0
        try:
            with gcp.quiet():
                return getattr(self._client(kind), method)(request=request, retry=self._retry,
                                                           timeout=timeout)
        except Exception as e:  # noqa: BLE001 - mapped to one sentence
            raise self.translate(e, what, name) from None

    def _read_template(self, path: str) -> list[str]:
        m = _TEMPLATE.fullmatch(path)
        assert m is not None  # spec.check() refused anything else
        project = m.group("project") or self.project
        if m.group("region"):
            req: Any = self._compute.GetRegionInstanceTemplateRequest(
                project=project, region=m.group("region"), instance_template=m.group("name"))
            tpl = self._call("region_templates", "get", req, "get the instance template")
        else:
            req = self._compute.GetInstanceTemplateRequest(
                project=project, instance_template=m.group("name"))
            tpl = self._call("templates", "get", req, "get the instance template")
        props = tpl.properties
        items = {i.key: i.value for i in props.metadata.items} if props.metadata else {}
        notes: list[str] = []
        template_data = _decode_user_data(items)
        if carries_seed(template_data):
            raise SharedSeedRefused(
                f"instance template {m.group('name')} already holds a seed in its user-data, "
                "and every instance made from it would share that seed; remove the seed "
                "from the template (keep your own user-data there) and launch again"
            )
        if template_data is not None:
            if self.spec.user_data is None:
                self.user_data = template_data
                notes.append(f"using the user-data of instance template {m.group('name')}; "
                             "each instance gets it plus its own seed")
            else:
                notes.append(f"--user-data replaces the user-data of instance template "
                             f"{m.group('name')}")
        # carry the template's other metadata and labels over, so the result is the same
        # whether the API merges or replaces them
        self._base_items = {k: v for k, v in items.items() if k not in USER_DATA_KEYS}
        self._base_labels = {k: v for k, v in dict(props.labels).items()
                             if k not in OWNED_LABELS}
        self._template = f"projects/{project}/" + path[path.index(
            "global/" if not m.group("region") else "regions/"):]
        return notes

    # -- errors -------------------------------------------------------------------------

    def _about(self, what: str) -> gcp.Call:
        resume = f"re-run with --launch-id {self.launch_id} to resume"
        return gcp.Call(
            service="Compute Engine", what=what, where=self.where,
            retry=f"{resume} later (its requestIds make that safe)",
            deadline=self.timing.retry_deadline,
            throttled=f"lower --concurrency and {resume}",
            refused="check --project, --zone and --endpoint",
        )

    def translate(self, e: BaseException, what: str, name: str | None = None) -> SeedtoolError:
        """One actionable sentence for anything the client raised (never its payload)."""
        return gcp.translate(e, WORDS, self._about(what), self._explainer(what, name))

    def _explainer(self, what: str, name: str | None) -> Callable[[BaseException, str],
                                                                  SeedtoolError | None]:
        """What Compute Engine's own answers mean (REST reference, "Errors")."""
        from google.api_core import exceptions as ex

        resume = f"re-run with --launch-id {self.launch_id} to resume"

        def explain(e: BaseException, retried: str) -> SeedtoolError | None:
            reason = gcp.reason(e) if isinstance(e, ex.GoogleAPICallError) else ""
            if isinstance(e, (ex.PermissionDenied, ex.Forbidden)):
                if reason in ("quotaExceeded", *gcp.RATE_LIMIT_REASONS):
                    return GceLaunchError(
                        f"Compute Engine refused to {what} for quota or rate limits "
                        f"(HTTP 403 {reason}){retried}; ask for more quota or lower "
                        f"--concurrency, then {resume}"
                    )
                return GceRefused(
                    f"Compute Engine denied permission to {what} in project {self.project} "
                    "(HTTP 403); grant roles/compute.instanceAdmin.v1 (and "
                    "roles/iam.serviceAccountUser for --service-account) and enable the "
                    "Compute Engine API"
                )
            if isinstance(e, ex.NotFound):
                m = _NOT_FOUND.search(str(getattr(e, "message", "")))
                resource = redact(m.group(1)) if m else "such resource"
                return GceRefused(
                    f"Compute Engine found no {resource} (HTTP 404) trying to {what}; check "
                    "--project, --zone, --image and the names in --params"
                )
            if isinstance(e, ex.Conflict):
                return GceLaunchError(
                    f"an instance named {name or '?'} already exists in {self.project}/"
                    f"{self.spec.zone} (HTTP 409); if an earlier launch made it, resume that "
                    "launch with its --launch-id, else choose another --name"
                )
            if isinstance(e, (ex.BadRequest, ex.InvalidArgument)):
                message = redact(getattr(e, "message", ""))
                message = re.sub(r"^(POST|GET) \S+: ", "", message)
                return GceRefused(
                    f"Compute Engine rejected the request to {what} (HTTP 400: {message}); "
                    "check --machine-type, --image, --params, --label and --metadata"
                )
            return None

        return explain

    def _operation_error(self, op: Any, name: str) -> GceLaunchError:
        errs = list(op.error.errors) if op.error else []
        code = errs[0].code if errs else str(op.http_error_status_code or "unknown")
        message = redact(errs[0].message if errs else op.http_error_message or "")
        resume = f"re-run with --launch-id {self.launch_id} to resume"
        if "QUOTA" in code:
            return GceLaunchError(
                f"Compute Engine refused instance {name} for quota ({code}: {message}); ask "
                f"for more quota or lower --count, then {resume}"
            )
        if code == "RESOURCE_ALREADY_EXISTS":
            return GceLaunchError(
                f"an instance named {name} already exists ({message}); if an earlier launch "
                "made it, resume that launch with its --launch-id, else choose another --name"
            )
        if "RESOURCE_POOL_EXHAUSTED" in code or code == "ZONE_RESOURCE_POOL_EXHAUSTED":
            return GceLaunchError(
                f"zone {self.spec.zone} has no capacity for instance {name} ({code}); try "
                f"another --zone or --machine-type, or {resume} later"
            )
        return GceLaunchError(
            f"the operation creating instance {name} failed ({code}: {message}); fix the "
            f"cause and {resume}"
        )

    # -- operations -----------------------------------------------------------------------

    def _wait(self, op: Any, what: str, name: str) -> Any:
        done = self._compute.Operation.Status.DONE
        deadline = time.monotonic() + self.timing.operation_timeout
        while op.status != done:
            if time.monotonic() > deadline:
                raise GceLaunchError(
                    f"operation {op.name} ({what}) did not finish within "
                    f"{self.timing.operation_timeout:g} s; check it with gcloud compute "
                    f"operations describe {op.name} --zone {self.spec.zone}"
                )
            started = time.monotonic()
            req = self._compute.WaitZoneOperationRequest(
                project=self.project, zone=self.spec.zone, operation=op.name)
            op = self._call("operations", "wait", req, what, name)
            # zoneOperations.wait blocks on the server; never spin if it returns early
            pause = self.timing.poll_interval - (time.monotonic() - started)
            if op.status != done and pause > 0:
                time.sleep(pause)
        return op

    # -- one instance --------------------------------------------------------------------

    def name_of(self, index: int) -> str:
        if index not in self._names:
            self._names[index] = instance_names(self.spec.name, index + 1)[index]
        return self._names[index]

    def create(self, index: int, user_data: bytes, seed_id: str,
               attempt: int = 0) -> InstanceResult:
        """One insert (requestId generation `attempt`) carrying `user_data`; waits for
        its operation. CreateAgain when a resumed launch's requestId replayed an earlier
        run's failed operation and the instance does not exist."""
        name = self.name_of(index)
        items = dict(self._base_items)
        items.update(self.spec.metadata)
        if self.spec.scrub_after_boot:
            items[GUEST_ATTRIBUTES_KEY] = "TRUE"
        items.update(userdata.gce_metadata(user_data))
        body = self.spec.instance_body(
            name, index, seed_id, items, launch_id=self.launch_id,
            project=self.project, base_labels=self._base_labels)
        items.clear()
        request = self._compute.InsertInstanceRequest(
            project=self.project, zone=self.spec.zone, instance_resource=body,
            request_id=request_id(str(self.project), self.spec.zone, self.launch_id,
                                  index, name, attempt))
        if self._template:
            request.source_instance_template = self._template
        del body
        op = self._call("instances", "insert_unary", request, "create instances", name)
        del request
        replayed = op.status == self._compute.Operation.Status.DONE
        op = self._wait(op, f"creating {name}", name)
        if not str(op.target_link).endswith(f"/instances/{name}"):
            raise GceLaunchError(
                f"Compute Engine answered the insert of {name} with an operation on "
                f"another resource ({redact(op.target_link)}); start a new launch "
                "without --launch-id")
        if op.error and op.error.errors:
            if self.resuming and replayed and attempt + 1 < MAX_REQUEST_GENERATIONS \
                    and not self._exists(name):
                raise CreateAgain  # an earlier run's failed operation: the next requestId
            raise self._operation_error(op, name)
        return self._created(index, name, seed_id)

    def _exists(self, name: str) -> bool:
        try:
            self._get(name)
        except GceLaunchError:
            return False
        return True

    def _get(self, name: str) -> Any:
        req = self._compute.GetInstanceRequest(project=self.project, zone=self.spec.zone,
                                               instance=name)
        return self._call("instances", "get", req, f"read instance {name}", name)

    def _created(self, index: int, name: str, seed_id: str | None) -> InstanceResult:
        try:
            inst = self._get(name)
        except SeedtoolError as e:
            return InstanceResult(index, LAUNCHED, seed_id=seed_id, instance_id=name,
                                  extra={"warning": f"created, but reading it back failed: {e}"})
        labels = dict(inst.labels)
        actual = labels.get(LABEL_SEED_ID)
        if labels.get(LABEL_LAUNCH_ID) == self.launch_id and actual and actual != seed_id:
            # an earlier run's request with the same requestId made it, with its own seed
            return InstanceResult(index, EXISTING, seed_id=actual, instance_id=name)
        return InstanceResult(index, LAUNCHED, seed_id=seed_id, instance_id=name)

    # -- resume ------------------------------------------------------------------------

    def existing(self) -> dict[int, InstanceResult]:
        """Instances of this launch id that already exist (for resuming)."""
        req = self._compute.ListInstancesRequest(
            project=self.project, zone=self.spec.zone,
            filter=f'labels.{LABEL_LAUNCH_ID} = "{self.launch_id}"')
        try:
            with gcp.quiet():
                found = list(self._client("instances").list(request=req, retry=self._retry,
                                                             timeout=60.0))
        except Exception as e:  # noqa: BLE001
            raise self.translate(e, "list the instances of this launch") from None
        out: dict[int, InstanceResult] = {}
        for inst in found:
            labels = dict(inst.labels)
            if labels.get(LABEL_LAUNCH_ID) != self.launch_id:
                continue
            try:
                index = int(labels.get(LABEL_INDEX, ""))
            except ValueError:
                continue
            if index not in out:
                out[index] = InstanceResult(index, EXISTING, seed_id=labels.get(LABEL_SEED_ID),
                                            instance_id=inst.name)
        return out

    def report_fields(self) -> dict[str, Any]:
        return {"project": self.project, "zone": self.spec.zone}

    # -- scrubbing ---------------------------------------------------------------------

    def consumed(self, name: str) -> str | None:
        """The seed id the guest reported in `seedtool/consumed`, or None (yet)."""
        from google.api_core import exceptions as ex

        req = self._compute.GetGuestAttributesInstanceRequest(
            project=self.project, zone=self.spec.zone, instance=name,
            query_path=f"{GUEST_NAMESPACE}/")
        try:
            with gcp.quiet():
                attrs = self._client("instances").get_guest_attributes(
                    request=req, retry=self._retry, timeout=60.0)
        except ex.NotFound as e:
            # 404 means nothing published under the path yet, unless the instance is gone
            if self._exists(name):
                return None
            raise self.translate(e, f"read the guest attributes of {name}", name) from None
        except Exception as e:  # noqa: BLE001
            raise self.translate(e, f"read the guest attributes of {name}", name) from None
        for item in attrs.query_value.items if attrs.query_value else []:
            if item.namespace == GUEST_NAMESPACE and item.key == GUEST_KEY:
                return str(item.value).strip()
        return None

    def scrub_one(self, name: str, seed_id: str) -> tuple[bool, str | None]:
        """Remove the seed from one instance's metadata; (scrubbed?, warning)."""
        from google.api_core import exceptions as ex

        original = self.user_data
        want = userdata.gce_metadata(original) if original else {}
        for _attempt in range(MAX_FINGERPRINT_RETRIES):
            inst = self._get(name)
            current = [(i.key, i.value) for i in inst.metadata.items] if inst.metadata else []
            items = dict(current)
            data = _decode_user_data(items)
            found = _seed_id_in(data)
            if found is None:
                return True, None  # no seed there (already scrubbed, maybe by a retry)
            if found != seed_id:
                return False, (f"seed still in metadata: the user-data of {name} holds another "
                               "seed than this launch gave it, so it was left alone")
            try:
                same_parts = userdata.user_parts(data) == userdata.parts(original)
            except SeedtoolError:
                same_parts = False
            if not same_parts:
                return False, (f"seed still in metadata: the user-data of {name} was changed "
                               "since launch, so it was left alone; remove the seed part "
                               "yourself with gcloud compute instances add-metadata")
            new_items = [(k, v) for k, v in current if k not in USER_DATA_KEYS]
            new_items += list(want.items())
            del data, items, current
            metadata = self._compute.Metadata(
                fingerprint=inst.metadata.fingerprint,
                items=[self._compute.Items(key=k, value=v) for k, v in new_items])
            del new_items
            req = self._compute.SetMetadataInstanceRequest(
                project=self.project, zone=self.spec.zone, instance=name,
                metadata_resource=metadata,
                request_id=str(uuid.uuid5(REQUEST_NAMESPACE, f"{self.project}/"
                                          f"{self.spec.zone}/{self.launch_id}/{name}/scrub/"
                                          f"{inst.metadata.fingerprint}")))
            try:
                with gcp.quiet():
                    op = self._client("instances").set_metadata_unary(
                        request=req, retry=self._retry, timeout=60.0)
            except (ex.PreconditionFailed, ex.FailedPrecondition):
                continue  # another writer changed the metadata: read it again
            except Exception as e:  # noqa: BLE001
                raise self.translate(e, f"set the metadata of {name}", name) from None
            op = self._wait(op, f"scrubbing {name}", name)
            if op.error and op.error.errors:
                err = op.error.errors[0]
                return False, (f"seed still in metadata: setMetadata on {name} failed "
                               f"({err.code}: {redact(err.message)})")
            return True, None
        return False, (f"seed still in metadata: the metadata of {name} kept changing under "
                       f"{MAX_FINGERPRINT_RETRIES} attempts (HTTP 412); run the launch again "
                       f"with --launch-id {self.launch_id} --scrub-after-boot")

    def scrub(
        self,
        report: LaunchReport,
        *,
        timeout: float = DEFAULT_SCRUB_TIMEOUT,
        on_done: Callable[[InstanceResult], None] | None = None,
    ) -> bool:
        """Wait for each launched instance's guest to report its seed, then remove the
        seed from its metadata. Sets `extra["scrubbed"]` (and a `warning` when not)
        on each result; returns True when interrupted by Ctrl-C."""
        if "scrubbed" not in report.columns:
            report.columns.append("scrubbed")
        pending = {r.index: r for r in report.results
                   if r.status in (LAUNCHED, EXISTING) and r.instance_id and r.seed_id}
        for r in report.results:
            if r.index not in pending:
                r.extra["scrubbed"] = False
        deadline = time.monotonic() + timeout

        def finish(r: InstanceResult, ok: bool, warning: str | None) -> None:
            r.extra["scrubbed"] = ok
            if warning:
                r.extra["warning"] = warning
            pending.pop(r.index, None)
            if on_done:
                on_done(r)

        try:
            while pending:
                for r in sorted(pending.values(), key=lambda r: r.index):
                    name, seed_id = str(r.instance_id), str(r.seed_id)
                    try:
                        got = self.consumed(name)
                        if got == seed_id:
                            finish(r, *self.scrub_one(name, seed_id))
                    except SeedtoolError as e:
                        finish(r, False, f"seed still in metadata: {e}")
                if not pending:
                    break
                if time.monotonic() > deadline:
                    for r in list(pending.values()):
                        finish(r, False, (
                            f"seed still in metadata: the guest did not report consuming "
                            f"seed {r.seed_id} within {timeout:g} s (is seedtool installed in "
                            "the image?); re-run with --launch-id "
                            f"{self.launch_id} --scrub-after-boot, or remove user-data yourself"
                        ))
                    break
                time.sleep(self.timing.poll_interval)
        except KeyboardInterrupt:
            for r in list(pending.values()):
                r.extra["scrubbed"] = False
                r.extra["warning"] = ("seed still in metadata: scrubbing was interrupted; "
                                      f"re-run with --launch-id {self.launch_id} "
                                      "--scrub-after-boot")
            pending.clear()
            return True
        return False


# --- helpers ------------------------------------------------------------------------------


def _decode_user_data(items: Mapping[str, str]) -> bytes | None:
    """The user-data bytes of metadata items, as cloud-init's GCE datasource reads them."""
    import base64
    import binascii

    value = items.get("user-data")
    if value is None:
        return None
    if str(items.get("user-data-encoding", "")).lower() == "base64":
        try:
            return base64.b64decode(value, validate=False)
        except (binascii.Error, ValueError):
            return value.encode("utf-8")
    return value.encode("utf-8")


def _seed_id_in(data: bytes | None) -> str | None:
    """The id of the seedtool seed in `data`, or None when there is none."""
    if not data:
        return None
    try:
        text = userdata.find_seed(data)
    except SeedtoolError:
        return None
    if text is None:
        return None
    try:
        return envelope.parse(text).seed_id_hex
    except envelope.EnvelopeError:
        return None


__all__ = [
    "COMPUTE_SCOPE",
    "LABEL_INDEX",
    "LABEL_LAUNCH_ID",
    "LABEL_SEED_ID",
    "GceLaunchError",
    "GceLauncher",
    "GceRefused",
    "GceSpec",
    "LaunchInterrupted",
    "LaunchReport",
    "SharedSeedRefused",
    "check_labels",
    "check_launch_id",
    "check_metadata",
    "instance_names",
    "new_launch_id",
    "parse_pairs",
    "request_id",
]
