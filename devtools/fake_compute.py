"""A local stand-in for the Compute Engine v1 REST API, for tests only.

There is no official Compute Engine emulator. This fake speaks just enough of the
REST surface for the real google-cloud-compute client (`transport="rest"`) on
127.0.0.1, with the resource shapes of the public REST reference
(https://cloud.google.com/compute/docs/reference/rest/v1/instances):

    POST /compute/v1/projects/P/zones/Z/instances?requestId=&sourceInstanceTemplate=
    GET  /compute/v1/projects/P/zones/Z/instances[?filter=&maxResults=&pageToken=]
    GET  /compute/v1/projects/P/zones/Z/instances/NAME
    POST /compute/v1/projects/P/zones/Z/instances/NAME/setMetadata?requestId=
    GET  /compute/v1/projects/P/zones/Z/instances/NAME/getGuestAttributes?queryPath=
    GET  /compute/v1/projects/P/zones/Z/operations/OP
    POST /compute/v1/projects/P/zones/Z/operations/OP/wait
    GET  /compute/v1/projects/P/global/instanceTemplates/T
    POST /token                        (an OAuth token endpoint for service-account JSON)

Behaviour the launcher relies on, modelled on the documented API:

* an insert returns a zone operation that goes PENDING -> RUNNING -> DONE over
  `polls_to_done` polls (get or wait); `fail_next_insert()` makes an operation end
  DONE with `error.errors[]` (e.g. QUOTA_EXCEEDED) and no instance;
* the same `requestId` returns the same operation and never makes a second instance;
* an existing instance name is refused with 409, an unknown project, zone or image
  with 404, a metadata value over 256 KB (or all metadata over 512 KB) with 400;
* `setMetadata` needs the current metadata fingerprint (412 otherwise), and a new
  fingerprint is made on every change;
* guest attributes are answered only when metadata `enable-guest-attributes` is
  TRUE; tests set them with `set_guest_attribute()` or a `guest` callback that
  runs on every `getGuestAttributes` call (a simulated guest).

Tests script HTTP faults with `push(Reply(...))`, matched by method name; a reply
with `process=True` performs the request and then answers with the fault (the
"lost response" case a retry with the same requestId must survive). Errors use the
Google JSON error shape, which the client turns into `google.api_core.exceptions`.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ._google import Served, read_json, send_json
from ._google import error as _error
from ._google import error_obj as _error_obj

PROJECT = "test-project"
ZONE = "us-central1-a"
IMAGE = "projects/debian-cloud/global/images/family/debian-12"
METADATA_VALUE_MAX = 256 * 1024
METADATA_TOTAL_MAX = 512 * 1024

_BASE = "/compute/v1/projects/"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"^/token$"), "token"),
    ("GET", re.compile(r"^/compute/v1/projects/([^/]+)/zones/([^/]+)/instances$"), "list"),
    ("POST", re.compile(r"^/compute/v1/projects/([^/]+)/zones/([^/]+)/instances$"), "insert"),
    ("GET", re.compile(r"^/compute/v1/projects/([^/]+)/zones/([^/]+)/instances/([^/]+)$"), "get"),
    ("POST", re.compile(r"^/compute/v1/projects/([^/]+)/zones/([^/]+)/instances/([^/]+)"
                        r"/setMetadata$"), "setMetadata"),
    ("GET", re.compile(r"^/compute/v1/projects/([^/]+)/zones/([^/]+)/instances/([^/]+)"
                       r"/getGuestAttributes$"), "getGuestAttributes"),
    ("GET", re.compile(r"^/compute/v1/projects/([^/]+)/zones/([^/]+)/operations/([^/]+)$"),
     "operations.get"),
    ("POST", re.compile(r"^/compute/v1/projects/([^/]+)/zones/([^/]+)/operations/([^/]+)/wait$"),
     "operations.wait"),
    ("GET", re.compile(r"^/compute/v1/projects/([^/]+)/global/instanceTemplates/([^/]+)$"),
     "instanceTemplates.get"),
]
_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_FILTER_TERM = re.compile(r'\s*labels\.([a-z0-9_-]+)\s*(=|eq)\s*"?([a-z0-9_-]*)"?\s*')


@dataclass
class Reply:
    """One scripted answer to the next request of `method` (None: any method).

    `status` with no `body` gives a Google-style error body; `process=True` first
    handles the request normally (so its effects happen) and then answers `status`.
    """

    status: int = 503
    method: str | None = None
    body: bytes | None = None
    message: str = "scripted"
    reason: str | None = None
    process: bool = False


@dataclass
class Seen:
    """What the fake received, for assertions."""

    method: str
    path: str
    query: dict[str, str]
    body: dict[str, Any]
    status: int
    authorization: str | None = None


@dataclass
class _Op:
    name: str
    project: str
    zone: str
    kind: str
    target: str
    polls: int = 0
    error: tuple[str, str] | None = None
    on_done: Callable[[], None] | None = None
    status: str = "PENDING"
    inserted: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S+00:00",
                                                                time.gmtime()))


@dataclass
class FakeCompute(Served):
    projects: set[str] = field(default_factory=lambda: {PROJECT})
    zones: set[str] = field(default_factory=lambda: {ZONE})
    images: set[str] = field(default_factory=lambda: {IMAGE})
    #: polls (get or wait) an operation takes to go PENDING -> RUNNING -> DONE
    polls_to_done: int = 2
    #: False: `wait` runs the operation to DONE before answering, as the real one does
    #: within its 2-minute hold; True: it answers after one step, as after that hold
    wait_returns_early: bool = True
    #: when set, API calls must carry `Authorization: Bearer <token>` (else 401)
    token: str | None = None
    #: what POST /token answers: an access token, or an OAuth error code
    token_error: str | None = None
    #: items per page of instances.list
    page_size: int = 500
    #: a simulated guest: called with (fake, instance key) on every getGuestAttributes
    guest: Callable[[FakeCompute, tuple[str, str, str]], None] | None = None
    requests: list[Seen] = field(default_factory=list)
    instances: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    operations: dict[tuple[str, str, str], _Op] = field(default_factory=dict)
    request_ids: dict[tuple[str, str, str], str] = field(default_factory=dict)
    guest_attributes: dict[tuple[str, str, str], dict[tuple[str, str], str]] = field(
        default_factory=dict
    )
    templates: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    insert_failures: deque[tuple[str, str]] = field(default_factory=deque)
    #: called once, just before the next setMetadata is checked (another writer)
    metadata_races: deque[Callable[[dict[str, Any]], None]] = field(default_factory=deque)
    _script: deque[Reply] = field(default_factory=deque)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))

    # -- test controls ----------------------------------------------------------

    def push(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def fail_next_insert(self, code: str, message: str) -> None:
        """The next insert's operation ends DONE with this error and makes no instance."""
        with self._lock:
            self.insert_failures.append((code, message))

    def race_next_set_metadata(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Before the next setMetadata is checked, another writer applies `change` to the
        instance's metadata items (a dict key -> value) and the fingerprint changes."""
        with self._lock:
            self.metadata_races.append(change)

    def set_guest_attribute(self, key: tuple[str, str, str], namespace: str, name: str,
                            value: str) -> None:
        with self._lock:
            self.guest_attributes.setdefault(key, {})[(namespace, name)] = value

    def metadata(self, name: str, project: str = PROJECT, zone: str = ZONE) -> dict[str, str]:
        """An instance's metadata items as a dict."""
        with self._lock:
            inst = self.instances[(project, zone, name)]
            return {i["key"]: i["value"] for i in inst["metadata"].get("items", [])}

    def calls(self, method: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.requests if s.method == method]

    def add_template(self, name: str, properties: dict[str, Any],
                     project: str = PROJECT) -> str:
        with self._lock:
            self.templates[(project, name)] = {
                "kind": "compute#instanceTemplate",
                "name": name,
                "id": str(next(self._ids)),
                "selfLink": f"https://compute.googleapis.com{_BASE}{project}"
                            f"/global/instanceTemplates/{name}",
                "properties": properties,
            }
        return f"projects/{project}/global/instanceTemplates/{name}"

    # -- dispatch ---------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        verb = h.command
        body = read_json(h)
        split = urlsplit(h.path)
        query = {k: v[0] for k, v in parse_qs(split.query).items()}
        method = "unknown"
        args: tuple[str | Any, ...] = ()
        for v, pattern, name in _ROUTES:
            m = pattern.match(split.path)
            if v == verb and m:
                method, args = name, m.groups()
                break
        auth = h.headers.get("Authorization")
        with self._lock:
            scripted = None
            for r in self._script:
                if r.method is None or r.method == method:
                    scripted = r
                    break
            if scripted is not None:
                self._script.remove(scripted)
            if scripted is not None and not scripted.process:
                status = scripted.status
                out = scripted.body if scripted.body is not None else _error(
                    status, scripted.message, scripted.reason)
            elif method == "unknown":
                status, out = 404, _error(404, f"no such method {verb} {split.path}")
            elif (method != "token" and self.token is not None
                  and auth != f"Bearer {self.token}"):
                status, out = 401, _error(401, "Request had invalid authentication credentials.")
            else:
                status, obj = getattr(self, "_" + method.replace(".", "_"))(*args, query=query,
                                                                           body=body)
                out = json.dumps(obj).encode()
                if scripted is not None:  # processed, then the answer is lost
                    status = scripted.status
                    out = scripted.body if scripted.body is not None else _error(
                        status, scripted.message, scripted.reason)
            self.requests.append(Seen(method, split.path, query, body, status, auth))
        send_json(h, status, out)

    # -- methods (called with the lock held) -----------------------------------------

    def _token(self, *, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        if self.token_error:
            return 400, {"error": self.token_error, "error_description": "scripted"}
        return 200, {"access_token": self.token or "fake-token", "expires_in": 3600,
                     "token_type": "Bearer"}

    def _where(self, project: str, zone: str) -> tuple[int, Any] | None:
        if project not in self.projects:
            return 404, _error_obj(404, f"The resource 'projects/{project}' was not found")
        if zone not in self.zones:
            return 404, _error_obj(
                404, f"The resource 'projects/{project}/zones/{zone}' was not found")
        return None

    def _insert(self, project: str, zone: str, *, query: dict[str, str],
                body: dict[str, Any]) -> tuple[int, Any]:
        bad = self._where(project, zone)
        if bad:
            return bad
        rid = query.get("requestId")
        if rid and (project, zone, rid) in self.request_ids:
            return 200, self._op_json(self.operations[(project, zone,
                                                       self.request_ids[(project, zone, rid)])])
        resource = dict(body)
        template = query.get("sourceInstanceTemplate")
        if template:
            m = re.search(r"projects/([^/]+)/global/instanceTemplates/([^/]+)$", template)
            tpl = self.templates.get((m.group(1), m.group(2))) if m else None
            if tpl is None:
                return 404, _error_obj(404, f"The resource '{template}' was not found")
            merged = json.loads(json.dumps(tpl["properties"]))
            merged.update(resource)  # the request's fields override the template's
            resource = merged
        name = str(resource.get("name", ""))
        if not _NAME.fullmatch(name):
            return 400, _error_obj(400, f"Invalid value for field 'resource.name': '{name}'.")
        key = (project, zone, name)
        if key in self.instances:
            return 409, _error_obj(
                409, f"The resource 'projects/{project}/zones/{zone}/instances/{name}' "
                "already exists")
        for disk in resource.get("disks", []):
            image = (disk.get("initializeParams") or {}).get("sourceImage")
            if image and _image_path(image) not in self.images:
                return 404, _error_obj(404, f"The resource '{_image_path(image)}' was not found")
        problem = _check_labels(resource.get("labels", {})) or _check_metadata(
            resource.get("metadata", {}))
        if problem:
            return 400, _error_obj(400, problem)
        op = self._new_op(project, zone, "insert", name)
        if self.insert_failures:
            op.error = self.insert_failures.popleft()
        else:
            inst = self._make_instance(project, zone, resource)
            self.instances[key] = inst

            def running() -> None:
                inst["status"] = "RUNNING"

            op.on_done = running
        if rid:
            self.request_ids[(project, zone, rid)] = op.name
        return 200, self._op_json(op)

    def _make_instance(self, project: str, zone: str, resource: dict[str, Any]) -> dict[str, Any]:
        inst = json.loads(json.dumps(resource))
        name = inst["name"]
        inst.update({
            "kind": "compute#instance",
            "id": str(next(self._ids)),
            "status": "PROVISIONING",
            "zone": f"https://compute.googleapis.com{_BASE}{project}/zones/{zone}",
            "selfLink": f"https://compute.googleapis.com{_BASE}{project}/zones/{zone}"
                        f"/instances/{name}",
            "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        })
        md = inst.setdefault("metadata", {})
        md.setdefault("items", [])
        md["kind"] = "compute#metadata"
        md["fingerprint"] = _fingerprint()
        inst["labelFingerprint"] = _fingerprint()
        return inst

    def _get(self, project: str, zone: str, name: str, *, query: dict[str, str],
             body: dict[str, Any]) -> tuple[int, Any]:
        bad = self._where(project, zone)
        if bad:
            return bad
        inst = self.instances.get((project, zone, name))
        if inst is None:
            return 404, _error_obj(
                404, f"The resource 'projects/{project}/zones/{zone}/instances/{name}' "
                "was not found")
        return 200, inst

    def _list(self, project: str, zone: str, *, query: dict[str, str],
              body: dict[str, Any]) -> tuple[int, Any]:
        bad = self._where(project, zone)
        if bad:
            return bad
        wanted: list[tuple[str, str]] = []
        flt = query.get("filter", "")
        for term in re.split(r"\s+AND\s+", flt.strip()) if flt.strip() else []:
            m = _FILTER_TERM.fullmatch(term)
            if not m:
                return 400, _error_obj(400, f"Invalid list filter expression '{flt}'.")
            wanted.append((m.group(1), m.group(3)))
        found = [inst for (p, z, _), inst in sorted(self.instances.items())
                 if p == project and z == zone
                 and all(inst.get("labels", {}).get(k) == v for k, v in wanted)]
        size = min(self.page_size, int(query.get("maxResults") or 500))
        start = int(query.get("pageToken") or 0)
        page = found[start:start + size]
        out: dict[str, Any] = {"kind": "compute#instanceList", "items": page}
        if start + size < len(found):
            out["nextPageToken"] = str(start + size)
        return 200, out

    def _setMetadata(self, project: str, zone: str, name: str, *,  # noqa: N802
                     query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        status, inst = self._get(project, zone, name, query=query, body=body)
        if status != 200:
            return status, inst
        rid = query.get("requestId")
        if rid and (project, zone, rid) in self.request_ids:
            return 200, self._op_json(self.operations[(project, zone,
                                                       self.request_ids[(project, zone, rid)])])
        if self.metadata_races:
            change = self.metadata_races.popleft()
            items = {i["key"]: i["value"] for i in inst["metadata"].get("items", [])}
            change(items)
            inst["metadata"]["items"] = [{"key": k, "value": v} for k, v in items.items()]
            inst["metadata"]["fingerprint"] = _fingerprint()
        if body.get("fingerprint") != inst["metadata"]["fingerprint"]:
            return 412, _error_obj(
                412, "Supplied fingerprint does not match current metadata fingerprint.")
        problem = _check_metadata(body)
        if problem:
            return 400, _error_obj(400, problem)
        inst["metadata"]["items"] = [dict(i) for i in body.get("items", [])]
        inst["metadata"]["fingerprint"] = _fingerprint()
        op = self._new_op(project, zone, "setMetadata", name)
        if rid:
            self.request_ids[(project, zone, rid)] = op.name
        return 200, self._op_json(op)

    def _getGuestAttributes(self, project: str, zone: str, name: str, *,  # noqa: N802
                            query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        status, inst = self._get(project, zone, name, query=query, body=body)
        if status != 200:
            return status, inst
        items = {i["key"]: i["value"] for i in inst["metadata"].get("items", [])}
        if str(items.get("enable-guest-attributes", "")).upper() != "TRUE":
            return 400, _error_obj(400, "Guest attributes are disabled for this instance.")
        key = (project, zone, name)
        if self.guest is not None:
            self.guest(self, key)
        path = query.get("queryPath", "")
        namespace = path.split("/", 1)[0]
        found = [
            {"namespace": ns, "key": k, "value": v}
            for (ns, k), v in sorted(self.guest_attributes.get(key, {}).items())
            if ns == namespace
        ]
        if not found:
            return 404, _error_obj(
                404, f"The resource 'projects/{project}/zones/{zone}/instances/{name}"
                f"/guestAttributes/{path}' was not found")
        return 200, {"kind": "compute#guestAttributes", "queryPath": path,
                     "queryValue": {"items": found},
                     "selfLink": inst["selfLink"] + "/guestAttributes"}

    def _operations_get(self, project: str, zone: str, name: str, *,
                        query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        op = self.operations.get((project, zone, name))
        if op is None:
            return 404, _error_obj(
                404, f"The resource 'projects/{project}/zones/{zone}/operations/{name}' "
                "was not found")
        self._advance(op)
        return 200, self._op_json(op)

    def _operations_wait(self, project: str, zone: str, name: str, *,
                         query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        op = self.operations.get((project, zone, name))
        while op is not None and not self.wait_returns_early and op.status != "DONE":
            self._advance(op)
        return self._operations_get(project, zone, name, query=query, body=body)

    def _instanceTemplates_get(self, project: str, name: str, *,  # noqa: N802
                               query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        tpl = self.templates.get((project, name))
        if tpl is None:
            return 404, _error_obj(
                404, f"The resource 'projects/{project}/global/instanceTemplates/{name}' "
                "was not found")
        return 200, tpl

    # -- operations ----------------------------------------------------------------

    def _new_op(self, project: str, zone: str, kind: str, target: str) -> _Op:
        op = _Op(f"operation-{next(self._ids)}-{os.urandom(4).hex()}", project, zone, kind,
                 target)
        self.operations[(project, zone, op.name)] = op
        return op

    def _advance(self, op: _Op) -> None:
        if op.status == "DONE":
            return
        op.polls += 1
        if op.polls >= self.polls_to_done:
            op.status = "DONE"
            if op.on_done is not None and op.error is None:
                op.on_done()
        else:
            op.status = "RUNNING"

    def _op_json(self, op: _Op) -> dict[str, Any]:
        zone_url = f"https://compute.googleapis.com{_BASE}{op.project}/zones/{op.zone}"
        out: dict[str, Any] = {
            "kind": "compute#operation",
            "id": str(abs(hash(op.name)) % 10**12),
            "name": op.name,
            "zone": zone_url,
            "operationType": op.kind,
            "targetLink": f"{zone_url}/instances/{op.target}",
            "status": op.status,
            "progress": 100 if op.status == "DONE" else 0,
            "insertTime": op.inserted,
            "selfLink": f"{zone_url}/operations/{op.name}",
        }
        if op.status == "DONE" and op.error is not None:
            code, message = op.error
            out["error"] = {"errors": [{"code": code, "message": message}]}
            out["httpErrorStatusCode"] = 403 if "QUOTA" in code else 400
            out["httpErrorMessage"] = "FORBIDDEN" if "QUOTA" in code else "BAD REQUEST"
        return out


# -- helpers ------------------------------------------------------------------------


def _fingerprint() -> str:
    return base64.b64encode(os.urandom(8)).decode()


def _image_path(image: str) -> str:
    return re.sub(r"^https://[^/]+/compute/v1/", "", image)


def _check_labels(labels: dict[str, Any]) -> str | None:
    for k, v in labels.items():
        if not _LABEL_KEY.fullmatch(str(k)) or not _LABEL_VALUE.fullmatch(str(v)):
            return f"Invalid value for field 'resource.labels': label '{k}' breaks the label rules."
    return None


def _check_metadata(md: dict[str, Any]) -> str | None:
    total = 0
    for item in md.get("items", []):
        size = len(str(item.get("value", "")).encode())
        total += size
        if size > METADATA_VALUE_MAX:
            return (f"Invalid value for field 'resource.metadata': metadata value for key "
                    f"'{item.get('key')}' is larger than 256 KB.")
    if total > METADATA_TOTAL_MAX:
        return "Invalid value for field 'resource.metadata': metadata is larger than 512 KB."
    return None
