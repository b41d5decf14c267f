"""A tiny EC2 query-API server on 127.0.0.1 for what moto does not model.

moto ignores MaxCount, ClientToken idempotency and the 16 KB user-data limit, and
cannot inject throttling or capacity errors. This fake speaks just enough of EC2's
query protocol (form-encoded POST in, XML out, as botocore's `ec2` protocol parser
reads it) for RunInstances, DescribeInstances and DescribeLaunchTemplateVersions:

* RunInstances launches MaxCount instances; a ClientToken seen before on a
  *successful* request answers with that request's instances when every other
  parameter is equal, and IdempotentParameterMismatch otherwise (the behaviour the
  EC2 developer guide describes in "Ensuring idempotency in Amazon EC2 API requests").
  User-data over 16384 bytes after base64 decoding is refused; DryRun answers
  DryRunOperation; an unknown ImageId answers InvalidAMIID.NotFound.
* `fail(...)` scripts errors (per action, optionally per seedtool:index, a number of
  times, optionally after doing the work, which models a lost reply).
* `hold(indices)` makes RunInstances requests for those indices wait until
  `release()`, so a test can interrupt a client while calls are in flight.

Every request is recorded (`requests`) with its decoded parameters.
"""

from __future__ import annotations

import base64
import itertools
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from ._http import Gate, serve, stop, url_of

NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
USER_DATA_LIMIT = 16384
DEFAULT_IMAGE = "ami-0123456789abcdef0"
_STATE_CODES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48,
                "stopping": 64, "stopped": 80}


@dataclass
class Instance:
    instance_id: str
    image_id: str
    instance_type: str
    tags: dict[str, str]
    user_data: bytes
    metadata: dict[str, str]
    state: str = "pending"


@dataclass
class Rule:
    action: str
    code: str
    status: int = 400
    times: int | None = 1  # None: every matching request
    index: int | None = None  # only requests tagged with this seedtool:index
    after_work: bool = False  # launch first, then answer with the error (a lost reply)
    message: str = "scripted failure"


@dataclass
class Request:
    action: str
    params: dict[str, str]

    @property
    def index(self) -> int | None:
        return _index_of(self.params)

    def tags(self) -> dict[str, str]:
        return _tags_of(self.params, "instance")

    def user_data(self) -> bytes:
        return base64.b64decode(self.params.get("UserData", ""))


def _index_of(params: dict[str, str]) -> int | None:
    value = _tags_of(params, "instance").get("seedtool:index")
    return int(value) if value is not None else None


def _tags_of(params: dict[str, str], rtype: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for n in itertools.count(1):
        kind = params.get(f"TagSpecification.{n}.ResourceType")
        if kind is None:
            break
        if kind != rtype:
            continue
        for m in itertools.count(1):
            key = params.get(f"TagSpecification.{n}.Tag.{m}.Key")
            if key is None:
                break
            out[key] = params.get(f"TagSpecification.{n}.Tag.{m}.Value", "")
    return out


def _listed(params: dict[str, str], prefix: str) -> list[str]:
    out: list[str] = []
    for n in itertools.count(1):
        v = params.get(f"{prefix}.{n}")
        if v is None:
            return out
        out.append(v)
    return out  # pragma: no cover


@dataclass
class FakeEc2:
    images: set[str] = field(default_factory=lambda: {DEFAULT_IMAGE})
    #: launch template name -> (id, user-data as stored: base64 text or None)
    templates: dict[str, tuple[str, str | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.instances: dict[str, Instance] = {}
        self.tokens: dict[str, tuple[dict[str, str], list[str]]] = {}
        self.rules: list[Rule] = []
        self.requests: list[Request] = []
        self.gate = Gate()

        def dispatch(h: BaseHTTPRequestHandler) -> None:
            body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
            params = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
            status, xml = self.handle(params)
            out = xml.encode("utf-8")
            h.send_response(status)
            h.send_header("Content-Type", "text/xml;charset=UTF-8")
            h.send_header("Content-Length", str(len(out)))
            h.end_headers()
            h.wfile.write(out)

        self.server = serve(dispatch)
        self.url = url_of(self.server)

    # -- scripting ----------------------------------------------------------------------

    def fail(self, action: str, code: str, **kw: Any) -> None:
        with self.lock:
            self.rules.append(Rule(action, code, **kw))

    def hold(self, indices: Iterable[int]) -> None:
        self.gate.hold(indices)

    def release(self) -> None:
        self.gate.release()

    def wait_held(self, n: int, timeout: float = 60) -> bool:
        return self.gate.wait_held(n, timeout)

    def add_template(self, name: str, user_data: bytes | None) -> str:
        tid = "lt-" + secrets.token_hex(9)[:17]
        enc = base64.b64encode(user_data).decode() if user_data is not None else None
        self.templates[name] = (tid, enc)
        return tid

    def set_state(self, instance_id: str, state: str) -> None:
        with self.lock:
            self.instances[instance_id].state = state

    def run_requests(self) -> list[Request]:
        return [r for r in self.requests if r.action == "RunInstances"]

    def close(self) -> None:
        self.gate.release()
        stop(self.server)

    # -- the protocol ---------------------------------------------------------------

    def handle(self, params: dict[str, str]) -> tuple[int, str]:
        action = params.get("Action", "")
        req = Request(action, params)
        with self.lock:
            self.requests.append(req)
        if action == "RunInstances":
            self.gate.arrive(req.index)
        rule = self._rule(action, req.index)
        if rule is not None and not rule.after_work:
            return _error(rule.status, rule.code, rule.message)
        if action == "RunInstances":
            status, xml = self._run(params)
        elif action == "DescribeInstances":
            status, xml = self._describe(params)
        elif action == "DescribeLaunchTemplateVersions":
            status, xml = self._templates(params)
        else:
            status, xml = _error(400, "InvalidAction", f"{action} is not in the fake")
        if rule is not None:
            return _error(rule.status, rule.code, rule.message)
        return status, xml

    def _rule(self, action: str, index: int | None) -> Rule | None:
        with self.lock:
            for rule in self.rules:
                if rule.action != action or (rule.index is not None and rule.index != index):
                    continue
                if rule.times is not None:
                    if rule.times <= 0:
                        continue
                    rule.times -= 1
                return rule
        return None

    def _run(self, params: dict[str, str]) -> tuple[int, str]:
        if params.get("DryRun") == "true":
            return _error(412, "DryRunOperation",
                          "Request would have succeeded, but DryRun flag is set.")
        image = params.get("ImageId", "")
        if not image and any(k.startswith("LaunchTemplate.") for k in params):
            image = DEFAULT_IMAGE  # every template of the fake names the default image
        if image not in self.images:
            return _error(400, "InvalidAMIID.NotFound", f"The image id '[{image}]' does not exist")
        try:
            data = base64.b64decode(params.get("UserData", ""), validate=True)
        except ValueError:
            return _error(400, "InvalidParameterValue", "Invalid BASE64 encoding of user data.")
        if len(data) > USER_DATA_LIMIT:
            return _error(400, "InvalidParameterValue",
                          f"User data is limited to {USER_DATA_LIMIT} bytes")
        token = params.get("ClientToken")
        same = {k: v for k, v in params.items() if k != "ClientToken"}
        with self.lock:
            if token and token in self.tokens:
                before, ids = self.tokens[token]
                if before != same:
                    return _error(400, "IdempotentParameterMismatch",
                                  "Arguments on this idempotent request are inconsistent with "
                                  "arguments used in previous request(s).")
                return 200, self._reservation_xml("RunInstancesResponse", ids)
            count = int(params.get("MaxCount", "1"))
            metadata = {k.split(".", 1)[1]: v for k, v in params.items()
                        if k.startswith("MetadataOptions.")}
            ids = []
            for _ in range(count):
                iid = "i-" + secrets.token_hex(9)[:17]
                self.instances[iid] = Instance(iid, image, params.get("InstanceType", "m1.small"),
                                               _tags_of(params, "instance"), data, metadata)
                ids.append(iid)
            if token:
                self.tokens[token] = (same, ids)
            return 200, self._reservation_xml("RunInstancesResponse", ids)

    def _describe(self, params: dict[str, str]) -> tuple[int, str]:
        filters: list[tuple[str, list[str]]] = []
        for n in itertools.count(1):
            name = params.get(f"Filter.{n}.Name")
            if name is None:
                break
            filters.append((name, _listed(params, f"Filter.{n}.Value")))
        with self.lock:
            hits = []
            for inst in self.instances.values():
                ok = True
                for name, values in filters:
                    if name.startswith("tag:"):
                        ok = ok and inst.tags.get(name[4:]) in values
                    elif name == "instance-state-name":
                        ok = ok and inst.state in values
                    else:
                        return _error(400, "InvalidParameterValue", f"filter {name} not in fake")
                if ok:
                    hits.append(inst.instance_id)
            body = "".join(
                f"<item><reservationId>r-{iid[2:]}</reservationId><ownerId>123456789012"
                f"</ownerId><instancesSet>{self._instance_xml(iid)}</instancesSet></item>"
                for iid in hits
            )
        return 200, (f'<DescribeInstancesResponse xmlns="{NS}"><requestId>{_rid()}</requestId>'
                     f"<reservationSet>{body}</reservationSet></DescribeInstancesResponse>")

    def _templates(self, params: dict[str, str]) -> tuple[int, str]:
        name = params.get("LaunchTemplateName")
        tid = params.get("LaunchTemplateId")
        for tname, (t_id, enc) in self.templates.items():
            if tname == name or t_id == tid:
                data = f"<userData>{escape(enc)}</userData>" if enc else ""
                item = (f"<item><launchTemplateId>{t_id}</launchTemplateId><launchTemplateName>"
                        f"{escape(tname)}</launchTemplateName><versionNumber>1</versionNumber>"
                        f"<defaultVersion>true</defaultVersion><launchTemplateData>"
                        f"<imageId>{DEFAULT_IMAGE}</imageId>{data}</launchTemplateData></item>")
                return 200, (f'<DescribeLaunchTemplateVersionsResponse xmlns="{NS}"><requestId>'
                             f"{_rid()}</requestId><launchTemplateVersionSet>{item}"
                             "</launchTemplateVersionSet></DescribeLaunchTemplateVersionsResponse>")
        if tid:
            return _error(400, "InvalidLaunchTemplateId.NotFound", "not found")
        return _error(400, "InvalidLaunchTemplateName.NotFoundException", "not found")

    def _instance_xml(self, iid: str) -> str:
        inst = self.instances[iid]
        tags = "".join(f"<item><key>{escape(k)}</key><value>{escape(v)}</value></item>"
                       for k, v in inst.tags.items())
        meta = "".join(
            f"<{k[0].lower() + k[1:]}>{escape(v)}</{k[0].lower() + k[1:]}>"
            for k, v in inst.metadata.items()
        )
        return (f"<item><instanceId>{iid}</instanceId><imageId>{inst.image_id}</imageId>"
                f"<instanceState><code>{_STATE_CODES[inst.state]}</code><name>{inst.state}</name>"
                f"</instanceState><instanceType>{escape(inst.instance_type)}</instanceType>"
                f"<tagSet>{tags}</tagSet><metadataOptions>{meta}</metadataOptions></item>")

    def _reservation_xml(self, root: str, ids: list[str]) -> str:
        items = "".join(self._instance_xml(i) for i in ids)
        return (f'<{root} xmlns="{NS}"><requestId>{_rid()}</requestId>'
                f"<reservationId>r-{ids[0][2:]}</reservationId><ownerId>123456789012</ownerId>"
                f"<instancesSet>{items}</instancesSet></{root}>")


def _rid() -> str:
    return secrets.token_hex(16)


def _error(status: int, code: str, message: str) -> tuple[int, str]:
    return status, (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>'
                    f"{escape(code)}</Code><Message>{escape(message)}</Message></Error></Errors>"
                    f"<RequestID>{_rid()}</RequestID></Response>")
