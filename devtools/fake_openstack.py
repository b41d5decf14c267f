"""A local stand-in for OpenStack's Keystone v3, Nova v2.1, Glance v2 and Neutron v2.0
REST APIs on 127.0.0.1, for tests only.

There is no official OpenStack emulator that runs without a whole DevStack. This fake
speaks just enough for the real `openstacksdk` (and its keystoneauth sessions) to
authenticate, discover the services and launch servers, with the request and response
shapes of the public API references (docs.openstack.org/api-ref/identity/v3,
/api-ref/compute, /api-ref/image/v2, /api-ref/network/v2):

    GET    /identity, /identity/v3                version discovery
    POST   /identity/v3/auth/tokens               password auth -> X-Subject-Token + catalog
    GET    /compute, /compute/v2.1                version discovery (microversions 2.1-2.96)
    POST   /compute/v2.1/servers                  create (user_data base64, metadata, ...)
    GET    /compute/v2.1/servers[/detail]         list (?name= regex, ?status=, limit/marker)
    GET    /compute/v2.1/servers/{id}             show
    DELETE /compute/v2.1/servers/{id}             delete
    GET    /compute/v2.1/flavors[/detail|/{id}]   flavors
    GET    /image, /image/v2/images[/{id}]         images (?name=)
    GET    /network, /network/v2.0/networks[/{id}] networks (?name=)

Behaviour modelled on the documented API:

* every call but discovery and token issue needs `X-Auth-Token` of an issued token
  (401 otherwise); wrong credentials get 401 from the token call;
* `user_data` must be base64 of at most 65,535 characters (nova's schema), else 400 with
  nova's kind of message, which repeats the value it refused (so a client must never
  show such a message whole); metadata keys and values are 1-255 characters;
* `min_count`/`max_count` make that many servers from the one request, all with the
  same user-data, as nova's multi-create does; an unknown image, flavor or network
  answers 400, as nova does;
* servers are BUILD when made and ACTIVE from the next read; `set_status()` changes it.

Tests script failures with `fail(op, status, ...)` (op: "token", "create", "list",
"show", "delete"; optionally only for the server whose metadata `seedtool:index` is
`index`, `times` times, after doing the work to model a lost reply, with a
`Retry-After`, or repeating the request's user_data as nova's schema errors do).
`gate.hold(indices)` / `gate.wait_held(n)` / `gate.release()` keep creates of those
indices waiting so a client can be interrupted with calls in flight. Every request is recorded in
`requests`; every server keeps its decoded user-data for assertions.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ._http import Gate, serve, stop, url_of

USERNAME, PASSWORD, PROJECT, DOMAIN = "demo", "secret", "demo", "Default"
REGION = "RegionOne"
MAX_MICROVERSION = "2.96"
USER_DATA_MAX = 65535
INDEX_KEY = "seedtool:index"

#: names and ids of what exists from the start
IMAGES = {"6f1e4b1c-0000-4000-8000-00000000d12a": "debian-12"}
FLAVORS = {"1": "m1.tiny", "2": "m1.small"}
NETWORKS = {"3c7f0a6e-0000-4000-8000-0000000000aa": "private"}

_ERROR_KEYS = {400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound",
               409: "conflictingRequest", 413: "overLimit", 429: "overLimit",
               500: "computeFault", 503: "serviceUnavailable"}
_DEAD = ("DELETED", "SOFT_DELETED")


@dataclass
class Rule:
    op: str
    status: int
    times: int | None = 1  # None: every matching call
    index: int | None = None  # only creates whose metadata seedtool:index is this
    after_work: bool = False  # do the work, then answer the error (a lost reply)
    retry_after: int | None = None
    message: str = "scripted failure"
    echo_user_data: bool = False  # answer as nova's schema check does, repeating user_data


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    headers: dict[str, str]
    status: int = 0


@dataclass
class Server:
    id: str
    name: str
    request: dict[str, Any]
    user_data: bytes | None
    metadata: dict[str, str]
    status: str = "BUILD"
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                               time.gmtime()))


class _Answer(Exception):
    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None):
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


def _error(status: int, message: str, retry_after: int | None = None) -> _Answer:
    body: dict[str, Any] = {"code": status, "message": message}
    headers = {}
    if retry_after is not None:
        body["retryAfter"] = str(retry_after)
        headers["Retry-After"] = str(retry_after)
    return _Answer(status, {_ERROR_KEYS.get(status, "computeFault"): body}, headers)


def _rule_error(rule: Rule, spec: dict[str, Any] | None) -> _Answer:
    message = rule.message
    if rule.echo_user_data:
        value = (spec or {}).get("user_data")
        message = f"Invalid input for field/attribute user_data. Value: {value}. '{value}' is " \
                  "too long"
    return _error(rule.status, message, rule.retry_after)


class FakeOpenStack:
    def __init__(self, *, page_size: int = 1000) -> None:
        self.page_size = page_size
        self.requests: list[Seen] = []
        self.servers: dict[str, Server] = {}
        self.tokens: set[str] = set()
        self.rules: list[Rule] = []
        self.lock = threading.RLock()
        self._ids = itertools.count(1)
        #: `gate.hold(indices)` / `gate.wait_held(n)` / `gate.release()`: creates of
        #: those indices wait (a client can be interrupted with calls in flight)
        self.gate = Gate()
        self.http = serve(self._serve)
        self.url = url_of(self.http)

    # -- test controls --------------------------------------------------------------

    @property
    def auth_url(self) -> str:
        return f"{self.url}/identity/v3"

    def clouds_yaml(self, cloud: str = "fake", **auth: str) -> str:
        """A clouds.yaml text naming this fake as `cloud` (auth fields overridable)."""
        fields = {"auth_url": self.auth_url, "username": USERNAME, "password": PASSWORD,
                  "project_name": PROJECT, "user_domain_name": DOMAIN,
                  "project_domain_name": DOMAIN, **auth}
        return json.dumps({"clouds": {cloud: {"auth": fields, "region_name": REGION,
                                              "identity_api_version": 3}}}, indent=2)

    def fail(self, op: str, status: int, **kw: Any) -> None:
        with self.lock:
            self.rules.append(Rule(op, status, **kw))

    def set_status(self, server_id: str, status: str) -> None:
        with self.lock:
            self.servers[server_id].status = status

    def creates(self) -> list[Seen]:
        with self.lock:
            return [r for r in self.requests if r.method == "POST" and r.path.endswith("/servers")]

    def close(self) -> None:
        self.gate.release()
        stop(self.http)

    # -- HTTP -----------------------------------------------------------------------

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        split = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        seen = Seen(h.command, split.path.rstrip("/") or "/", parse_qs(split.query), body,
                    {k.lower(): v for k, v in h.headers.items()})
        with self.lock:
            self.requests.append(seen)
        try:
            answer = self._route(seen)
        except _Answer as a:
            answer = a
        seen.status = answer.status
        data = b"" if answer.body is None else json.dumps(answer.body).encode()
        h.send_response(answer.status)
        for k, v in answer.headers.items():
            h.send_header(k, v)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.send_header("x-openstack-request-id", f"req-{uuid.uuid4()}")
        h.end_headers()
        h.wfile.write(data)

    def _route(self, r: Seen) -> _Answer:
        p, m = r.path, r.method
        if m == "GET" and p in ("/identity", "/identity/v3", "/compute", "/compute/v2.1",
                                "/image", "/network"):
            return _Answer(200, self._discovery(p))
        if m == "POST" and p == "/identity/v3/auth/tokens":
            return self._issue_token(r)
        if r.headers.get("x-auth-token") not in self.tokens:
            raise _Answer(401, {"error": {"code": 401, "title": "Unauthorized",
                                          "message": "The request you have made requires "
                                                     "authentication."}})
        for pattern, method, handler in self._routes():
            match = re.fullmatch(pattern, p)
            if match and m == method:
                return handler(r, *match.groups())
        raise _error(404, f"no route for {m} {p} in the fake")

    def _routes(self) -> list[tuple[str, str, Any]]:
        return [
            (r"/compute/v2\.1/servers", "POST", self._create),
            (r"/compute/v2\.1/servers(?:/detail)?", "GET", self._list),
            (r"/compute/v2\.1/servers/([^/]+)", "GET", self._show),
            (r"/compute/v2\.1/servers/([^/]+)", "DELETE", self._delete),
            (r"/compute/v2\.1/flavors(?:/detail)?", "GET", self._flavors),
            (r"/compute/v2\.1/flavors/([^/]+)", "GET", self._flavor),
            (r"/image/v2/images", "GET", self._images),
            (r"/image/v2/images/([^/]+)", "GET", self._image),
            (r"/network/v2\.0/networks", "GET", self._networks),
            (r"/network/v2\.0/networks/([^/]+)", "GET", self._network),
        ]

    def _rule(self, op: str, index: int | None = None) -> Rule | None:
        with self.lock:
            for rule in self.rules:
                if rule.op == op and rule.times != 0 and rule.index in (None, index):
                    if rule.times is not None:
                        rule.times -= 1
                    return rule
        return None

    def _scripted(self, op: str, index: int | None = None,
                  spec: dict[str, Any] | None = None) -> Rule | None:
        """Raise a scripted error now, or return a rule to raise after the work."""
        rule = self._rule(op, index)
        if rule is not None and not rule.after_work:
            raise _rule_error(rule, spec)
        return rule

    # -- discovery and tokens -------------------------------------------------------

    def _discovery(self, path: str) -> dict[str, Any]:
        def version(vid: str, href: str, **extra: str) -> dict[str, Any]:
            return {"id": vid, "status": "CURRENT", "updated": "2024-01-01T00:00:00Z",
                    "links": [{"rel": "self", "href": f"{self.url}{href}/"}], **extra}

        nova = version("v2.1", "/compute/v2.1", version=MAX_MICROVERSION, min_version="2.1")
        keystone = {**version("v3.14", "/identity/v3"), "status": "stable"}
        docs: dict[str, dict[str, Any]] = {
            "/identity": {"versions": {"values": [keystone]}},
            "/identity/v3": {"version": keystone},
            "/compute": {"versions": [nova]},
            "/compute/v2.1": {"version": nova},
            "/image": {"versions": [version("v2.15", "/image/v2")]},
            "/network": {"versions": [version("v2.0", "/network/v2.0")]},
        }
        return docs[path]

    def _issue_token(self, r: Seen) -> _Answer:
        self._scripted("token")
        ident = ((r.body or {}).get("auth") or {}).get("identity") or {}
        user = (ident.get("password") or {}).get("user") or {}
        if "password" not in (ident.get("methods") or []) or \
                (user.get("name"), user.get("password")) != (USERNAME, PASSWORD):
            raise _Answer(401, {"error": {"code": 401, "title": "Unauthorized",
                                          "message": "The request you have made requires "
                                                     "authentication."}})
        token = f"gAAAA-fake-{next(self._ids)}"
        with self.lock:
            self.tokens.add(token)

        def service(kind: str, name: str, path: str) -> dict[str, Any]:
            return {"type": kind, "name": name, "id": uuid.uuid4().hex, "endpoints": [
                {"id": uuid.uuid4().hex, "interface": iface, "region": REGION,
                 "region_id": REGION, "url": f"{self.url}{path}"}
                for iface in ("public", "internal")]}

        now = time.time()
        stamp = "%Y-%m-%dT%H:%M:%S.000000Z"
        domain = {"id": "default", "name": DOMAIN}
        body = {"token": {
            "methods": ["password"],
            "issued_at": time.strftime(stamp, time.gmtime(now)),
            "expires_at": time.strftime(stamp, time.gmtime(now + 3600)),
            "user": {"id": "u-demo", "name": USERNAME, "domain": domain},
            "project": {"id": "p-demo", "name": PROJECT, "domain": domain},
            "roles": [{"id": "r-member", "name": "member"}],
            "catalog": [service("identity", "keystone", "/identity"),
                        service("compute", "nova", "/compute/v2.1"),
                        service("image", "glance", "/image"),
                        service("network", "neutron", "/network")],
        }}
        return _Answer(201, body, {"X-Subject-Token": token})

    # -- servers ----------------------------------------------------------------------

    def _create(self, r: Seen) -> _Answer:
        spec = (r.body or {}).get("server") if isinstance(r.body, dict) else None
        if not isinstance(spec, dict):
            raise _error(400, "Invalid input: 'server' is a required property")
        metadata = spec.get("metadata") or {}
        try:
            index: int | None = int(str(metadata.get(INDEX_KEY)))
        except (TypeError, ValueError):
            index = None
        rule = self._scripted("create", index, spec)
        self.gate.arrive(index)
        user_data = self._check_server(spec, metadata)
        count = int(spec.get("max_count") or spec.get("min_count") or 1)
        made = []
        with self.lock:
            for k in range(count):
                name = spec["name"] if count == 1 else f"{spec['name']}-{k + 1}"
                sid = str(uuid.uuid4())
                self.servers[sid] = Server(sid, name, spec, user_data, dict(metadata))
                made.append(sid)
        if rule is not None:
            raise _rule_error(rule, spec)
        if spec.get("return_reservation_id"):
            return _Answer(202, {"reservation_id": f"r-{next(self._ids)}"})
        return _Answer(202, {"server": {
            "id": made[0], "links": self._links("servers", made[0]),
            "OS-DCF:diskConfig": "MANUAL", "adminPass": "not-a-real-password",
            "security_groups": spec.get("security_groups") or [{"name": "default"}]}})

    def _check_server(self, spec: dict[str, Any], metadata: Any) -> bytes | None:
        if not spec.get("name"):
            raise _error(400, "Invalid input for field/attribute name. Value: None.")
        if spec.get("imageRef") not in IMAGES and not spec.get("block_device_mapping_v2"):
            raise _error(400, f"Can not find requested image ({spec.get('imageRef')})")
        if str(spec.get("flavorRef")) not in FLAVORS:
            raise _error(400, f"Flavor {spec.get('flavorRef')} could not be found.")
        nets = spec.get("networks")
        if isinstance(nets, str) and nets not in ("auto", "none"):
            raise _error(400, f"Invalid input for field/attribute networks. Value: {nets}.")
        for net in nets if isinstance(nets, list) else []:
            if not isinstance(net, dict) or net.get("uuid") not in NETWORKS:
                raise _error(400, f"Network {net} could not be found.")
        if not isinstance(metadata, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 255
                and len(v) <= 255 for k, v in metadata.items()):
            raise _error(400, "Invalid input for field/attribute metadata.")
        encoded = spec.get("user_data")
        if encoded is None:
            return None
        if not isinstance(encoded, str) or len(encoded) > USER_DATA_MAX:
            # nova's schema error repeats the value it refuses
            raise _error(400, f"Invalid input for field/attribute user_data. Value: {encoded}. "
                              f"'{encoded}' is too long")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise _error(400, f"Invalid input for field/attribute user_data. Value: "
                              f"{encoded}. '{encoded}' is not a 'base64'") from None

    def _view(self, s: Server) -> dict[str, Any]:
        if s.status == "BUILD":
            s.status = "ACTIVE"  # the next read sees it built
        spec = s.request
        return {
            "id": s.id, "name": s.name, "status": s.status, "metadata": dict(s.metadata),
            "tenant_id": "p-demo", "user_id": "u-demo", "created": s.created,
            "updated": s.created, "links": self._links("servers", s.id),
            "image": {"id": spec.get("imageRef")} if spec.get("imageRef") else "",
            "flavor": {"original_name": FLAVORS.get(str(spec.get("flavorRef")), "?")},
            "key_name": spec.get("key_name"), "config_drive": "True" if
            spec.get("config_drive") else "", "addresses": {},
            "security_groups": spec.get("security_groups") or [{"name": "default"}],
            "OS-EXT-AZ:availability_zone": spec.get("availability_zone") or "nova",
            "OS-EXT-STS:vm_state": s.status.lower(),
        }

    def _links(self, kind: str, rid: str) -> list[dict[str, str]]:
        return [{"rel": "self", "href": f"{self.url}/compute/v2.1/{kind}/{rid}"}]

    def _list(self, r: Seen) -> _Answer:
        self._scripted("list")
        q = {k: v[-1] for k, v in r.query.items()}
        with self.lock:
            found = [s for s in self.servers.values() if s.status not in _DEAD]
        if "name" in q:
            found = [s for s in found if re.search(q["name"], s.name)]
        if "status" in q:
            found = [s for s in found if s.status == q["status"].upper()]
        found.sort(key=lambda s: s.id)
        if "marker" in q:
            found = [s for s in found if s.id > q["marker"]]
        limit = min(int(q.get("limit", self.page_size)), self.page_size)
        page = found[:limit]
        body: dict[str, Any] = {"servers": [self._view(s) for s in page]}
        if len(found) > limit:
            body["servers_links"] = [{"rel": "next", "href": f"{self.url}/compute/v2.1/"
                                      f"servers/detail?limit={limit}&marker={page[-1].id}"}]
        return _Answer(200, body)

    def _server(self, sid: str) -> Server:
        with self.lock:
            s = self.servers.get(sid)
        if s is None or s.status in _DEAD:
            raise _error(404, f"Instance {sid} could not be found.")
        return s

    def _show(self, r: Seen, sid: str) -> _Answer:
        self._scripted("show")
        return _Answer(200, {"server": self._view(self._server(sid))})

    def _delete(self, r: Seen, sid: str) -> _Answer:
        self._scripted("delete")
        self._server(sid).status = "DELETED"
        return _Answer(204)

    # -- flavors, images, networks ---------------------------------------------------

    def _named(self, table: dict[str, str], r: Seen, key: str, extra: dict[str, Any]) -> _Answer:
        name = r.query["name"][-1] if "name" in r.query else None
        items = [{"id": i, "name": n, **extra} for i, n in table.items()
                 if name is None or n == name]
        return _Answer(200, {key: items})

    def _flavors(self, r: Seen) -> _Answer:
        return self._named(FLAVORS, r, "flavors",
                           {"ram": 512, "vcpus": 1, "disk": 1, "os-flavor-access:is_public": True})

    def _flavor(self, r: Seen, fid: str) -> _Answer:
        if fid not in FLAVORS:
            raise _error(404, f"Flavor {fid} could not be found.")
        return _Answer(200, {"flavor": {"id": fid, "name": FLAVORS[fid], "ram": 512,
                                        "vcpus": 1, "disk": 1}})

    def _images(self, r: Seen) -> _Answer:
        return self._named(IMAGES, r, "images", {"status": "active"})

    def _image(self, r: Seen, iid: str) -> _Answer:
        if iid not in IMAGES:
            raise _Answer(404, {"message": f"No image found with ID {iid}", "code": 404})
        return _Answer(200, {"id": iid, "name": IMAGES[iid], "status": "active"})

    def _networks(self, r: Seen) -> _Answer:
        return self._named(NETWORKS, r, "networks", {"status": "ACTIVE"})

    def _network(self, r: Seen, nid: str) -> _Answer:
        if nid not in NETWORKS:
            raise _Answer(404, {"NeutronError": {"type": "NetworkNotFound",
                                                 "message": f"Network {nid} could not be "
                                                            "found.", "detail": ""}})
        return _Answer(200, {"network": {"id": nid, "name": NETWORKS[nid], "status": "ACTIVE"}})


__all__ = ["FLAVORS", "IMAGES", "NETWORKS", "FakeOpenStack", "Rule", "Seen", "Server"]
