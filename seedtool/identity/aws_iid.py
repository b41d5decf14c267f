"""The `aws-iid` identity check: an EC2 instance identity document and its RSA-2048 PKCS#7.

An EC2 instance reads two things from its instance metadata service (IMDS) and sends
them as they came: ``document`` (/latest/dynamic/instance-identity/document, JSON) and
``rsa2048`` (/latest/dynamic/instance-identity/rsa2048: base64, in lines, of a CMS
SignedData whose encapsulated content is that document, signed with SHA-256 and the
RSA-2048 key of the document's Region). The check here:

1. decodes ``rsa2048`` strictly and reads the SignedData (RFC 5652 section 5) with a
   small BER reader of its own (X.690): IMDS sends BER, with indefinite lengths and the
   content as a constructed OCTET STRING, which no public API of `cryptography`
   verifies;
2. requires the encapsulated content to be byte for byte the document presented. A
   server that checks the signature and then reads the request's own document field
   would let any instance's signature vouch for another instance's document (the
   identity substitution issue 11 names, fixed in SPIRE's aws_iid attestor in 2026);
3. picks the certificate of the document's Region from the table (bundled in
   data/aws-rsa2048-certs.json, from AWS's EC2 User Guide, or `certs=FILE`), requires
   the signer to be that certificate (issuer and serial number), checks the signed
   attributes (content-type data, message-digest = SHA-256 of the content) and the
   RSASSA-PKCS1-v1_5 SHA-256 signature over their DER SET OF encoding, or over the
   content itself when there are none (RFC 5652 section 5.4). Certificates carried in
   the SignedData are never used;
4. then reads the signed document: the instance must have started (``pendingTime``, its
   latest start) at most `max_age` seconds ago and not in the future beyond a clock
   skew, because the document has no nonce and never expires; then the server's policy:
   `accounts`, `regions`, `images` (None = any; the server configuration should require
   `accounts`, as any AWS customer can make a genuine document);
5. optionally (`describe=True`) asks EC2 DescribeInstances, with boto3's usual
   credential chain, that the instance exists in that account and is pending or running,
   and optionally that it belongs to an Auto Scaling group (the
   ``aws:autoscaling:groupName`` tag) and carries given tags.

Only IMDS's RSA-2048 form is read; the legacy ``/signature`` (and the DSA ``/pkcs7``)
are not. Errors are `Malformed` (400), `EvidenceInvalid` (401) or `NotAllowed` (403);
an EC2 API that cannot answer under describe=True is `Ec2Unavailable` (503). No
message holds the document or the signature; of a document not yet verified, only a
well-formed Region name is ever repeated (to say which certificate is missing).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from ..clouds import aws
from ..shared.errors import CloudError, UsageError
from . import EvidenceInvalid, Identity, IdentityError, Malformed, NotAllowed, text_field

#: the bundled table: Region -> PEM, plus a "_source" entry (where and when it was read)
BUNDLED_CERTS = "data/aws-rsa2048-certs.json"
DEFAULT_MAX_AGE = 900.0  # seconds since pendingTime: the 15 minutes
DEFAULT_SKEW = 300.0  # seconds a pendingTime may lie in the future (clocks differ)
DOCUMENT_LIMIT = 4096  # characters; IMDS's documents are about 500
RSA2048_LIMIT = 16384  # characters of base64; IMDS's are about 1,500 (no certificates)
#: the Auto Scaling tag EC2 puts on every instance of a group (Amazon EC2 Auto Scaling
#: User Guide, "Tag Auto Scaling groups and instances")
ASG_TAG = "aws:autoscaling:groupName"
_LIVE_STATES = frozenset({"pending", "running"})

# Object identifiers, as the content octets of their DER encoding (X.690 8.19)
_OID_SIGNED_DATA = bytes.fromhex("2a864886f70d010702")  # 1.2.840.113549.1.7.2
_OID_DATA = bytes.fromhex("2a864886f70d010701")  # 1.2.840.113549.1.7.1
_OID_SHA256 = bytes.fromhex("608648016503040201")  # 2.16.840.1.101.3.4.2.1
_OID_RSA = bytes.fromhex("2a864886f70d010101")  # rsaEncryption (RFC 8017 appendix A.1)
_OID_SHA256_RSA = bytes.fromhex("2a864886f70d01010b")  # sha256WithRSAEncryption
_OID_CONTENT_TYPE = bytes.fromhex("2a864886f70d010903")  # RFC 5652 section 11.1
_OID_MESSAGE_DIGEST = bytes.fromhex("2a864886f70d010904")  # RFC 5652 section 11.2

# Identifier octets (X.690 8.1.2): universal primitive, universal constructed, context
_INTEGER, _OCTETS, _NULL, _OID = 0x02, 0x04, 0x05, 0x06
_OCTETS_CONSTRUCTED, _SEQUENCE, _SET = 0x24, 0x30, 0x31
_CTX0, _CTX1 = 0xA0, 0xA1  # [0] and [1], constructed
_MAX_DEPTH = 24  # a SignedData with certificates nests about 12 deep

# the document's fields, checked after its signature (values AWS writes, kept narrow
# because they become ledger keys and log fields)
_ACCOUNT = re.compile(r"[0-9]{12}")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}")
_INSTANCE_ID = re.compile(r"i-[0-9a-f]{8,32}")
_IMAGE_ID = re.compile(r"ami-[0-9a-f]{8,32}")
_PENDING_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_PLAIN = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # instanceType, availabilityZone, architecture

WORDS = aws.Words(
    feature="the aws-iid identity check", profile="profile=",
    region="the document's region", endpoint="endpoint_url=",
    credentials_fix=("give the seed server AWS credentials of the instances' account allowed "
                     "ec2:DescribeInstances (boto3's usual chain: environment, ~/.aws, an "
                     "instance profile), or pass profile="),
    error=CloudError, usage=UsageError,
)




class Ec2Unavailable(IdentityError):
    """describe=True, and EC2 DescribeInstances could not answer (credentials, network,
    throttling, EC2 failing): the server's problem, not the instance's."""

    status = 503
    error = "ec2-unavailable"


# --- a strict BER reader (X.690), enough for RFC 5652 SignedData ---------------------


class _Bad(Exception):
    """The bytes are not the BER/ASN.1 structure expected; `str` says what was wrong."""


class _Tlv(NamedTuple):  # a NamedTuple: a frozen dataclass costs half the parse time
    """One element: identifier octet, where it starts, where its content starts and ends,
    where it ends (after the end-of-contents octets when its length was indefinite)."""

    tag: int
    start: int
    body: int
    body_end: int
    end: int
    definite: bool
    children: tuple[_Tlv, ...]


class _Ber:
    """Reads a whole BER encoding strictly: single-octet tags, minimal definite lengths,
    indefinite lengths only on constructed elements (X.690 8.1.3.6.1), every length
    inside its parent, nothing after the outermost element."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self) -> _Tlv:
        tlv = self._element(0, len(self.data), 0)
        if tlv.end != len(self.data):
            raise _Bad("bytes follow the SignedData")
        return tlv

    def _element(self, pos: int, limit: int, depth: int) -> _Tlv:
        data = self.data
        if depth > _MAX_DEPTH:
            raise _Bad("it nests too deeply")
        if pos + 2 > limit:
            raise _Bad("it is truncated")
        start, tag, first = pos, data[pos], data[pos + 1]
        pos += 2
        if tag & 0x1F == 0x1F:
            raise _Bad("it uses a multi-octet tag")
        if tag == 0:
            raise _Bad("an end-of-contents marker is misplaced")
        constructed = bool(tag & 0x20)
        if first == 0x80:
            if not constructed:
                raise _Bad("a primitive element has an indefinite length")
            children: list[_Tlv] = []
            while True:
                if pos + 2 > limit:
                    raise _Bad("it is truncated")
                if data[pos] == 0:
                    if data[pos + 1] != 0:
                        raise _Bad("an end-of-contents marker is malformed")
                    return _Tlv(tag, start, start + 2, pos, pos + 2, False, tuple(children))
                child = self._element(pos, limit, depth + 1)
                children.append(child)
                pos = child.end
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if count > 4 or pos + count > limit:
                raise _Bad("a length is too long")
            raw = data[pos:pos + count]
            length = int.from_bytes(raw, "big")
            if raw[0] == 0 or length < 0x80:
                raise _Bad("a length is not in its shortest form")
            pos += count
        end = pos + length
        if end > limit:
            raise _Bad("it is truncated")
        kids: tuple[_Tlv, ...] = ()
        if constructed:
            found: list[_Tlv] = []
            at = pos
            while at < end:
                child = self._element(at, end, depth + 1)
                found.append(child)
                at = child.end
            kids = tuple(found)
        return _Tlv(tag, start, pos, end, end, True, kids)

    def value(self, tlv: _Tlv) -> bytes:
        return self.data[tlv.body:tlv.body_end]

    def encoded(self, tlv: _Tlv) -> bytes:
        return self.data[tlv.start:tlv.end]

    def octets(self, tlv: _Tlv) -> bytes:
        """An OCTET STRING's value, primitive or constructed from primitive segments
        (X.690 8.7.3: how IMDS sends the document)."""
        if tlv.tag == _OCTETS:
            return self.value(tlv)
        if tlv.tag == _OCTETS_CONSTRUCTED:
            if any(seg.tag != _OCTETS for seg in tlv.children):
                raise _Bad("a constructed OCTET STRING holds something else")
            return b"".join(self.value(seg) for seg in tlv.children)
        raise _Bad("an OCTET STRING is missing")


def _want(tlv: _Tlv, tag: int, what: str) -> _Tlv:
    if tlv.tag != tag:
        raise _Bad(f"{what} is missing")
    return tlv


def _one(items: tuple[_Tlv, ...], what: str) -> _Tlv:
    if len(items) != 1:
        raise _Bad(f"it must hold exactly one {what}")
    return items[0]


@dataclass(frozen=True)
class _SignedData:
    """What the verification needs from a SignedData, all still unverified."""

    content: bytes
    issuer: bytes  # DER of the signer's issuer Name
    serial: int
    signed: bytes  # the bytes the signature covers
    signature: bytes


def _algorithm(ber: _Ber, tlv: _Tlv, allowed: tuple[bytes, ...], what: str) -> None:
    """An AlgorithmIdentifier naming one of `allowed`, with NULL or absent parameters."""
    parts = _want(tlv, _SEQUENCE, what).children
    if not parts or len(parts) > 2 or parts[0].tag != _OID:
        raise _Bad(f"{what} is malformed")
    if ber.value(parts[0]) not in allowed:
        raise _Bad(f"{what} is not SHA-256 with RSA")
    if len(parts) == 2 and (parts[1].tag != _NULL or ber.value(parts[1])):
        raise _Bad(f"{what} has parameters")


def _integer(ber: _Ber, tlv: _Tlv, what: str) -> int:
    raw = ber.value(_want(tlv, _INTEGER, what))
    if not raw:
        raise _Bad(f"{what} is empty")
    return int.from_bytes(raw, "big", signed=True)


def _signed_data(data: bytes) -> _SignedData:
    """Reads ContentInfo / SignedData / SignerInfo (RFC 5652 sections 3, 5.1-5.3)."""
    ber = _Ber(data)
    outer = _want(ber.read(), _SEQUENCE, "the ContentInfo")
    if len(outer.children) != 2 or outer.children[0].tag != _OID:
        raise _Bad("the ContentInfo is malformed")
    if ber.value(outer.children[0]) != _OID_SIGNED_DATA:
        raise _Bad("it is not a SignedData")
    wrapper = _want(outer.children[1], _CTX0, "the SignedData")
    sd = _want(_one(wrapper.children, "SignedData"), _SEQUENCE, "the SignedData")
    fields = list(sd.children)
    if len(fields) < 4:
        raise _Bad("the SignedData is incomplete")
    # version 1: data content, signers named by issuer and serial (RFC 5652 5.1)
    if _integer(ber, fields[0], "the SignedData version") != 1:
        raise _Bad("the SignedData version is not 1")
    digests = _want(fields[1], _SET, "the digest algorithms")
    if not digests.children:
        raise _Bad("it names no digest algorithm")
    for alg in digests.children:
        _algorithm(ber, alg, (_OID_SHA256,), "a digest algorithm")
    encap = _want(fields[2], _SEQUENCE, "the encapsulated content")
    if len(encap.children) != 2 or encap.children[0].tag != _OID:
        raise _Bad("the encapsulated content is missing (a detached signature)")
    if ber.value(encap.children[0]) != _OID_DATA:
        raise _Bad("the encapsulated content is not of type data")
    econtent = _want(encap.children[1], _CTX0, "the encapsulated content")
    content = ber.octets(_one(econtent.children, "content"))
    rest = fields[3:]
    # certificates [0] and crls [1] may be there; they are never trusted, so skipped
    for tag in (_CTX0, _CTX1):
        if rest and rest[0].tag == tag:
            rest = rest[1:]
    if len(rest) != 1:
        raise _Bad("the SignedData has unexpected fields")
    signers = _want(rest[0], _SET, "the signer infos")
    info = _want(_one(signers.children, "signer"), _SEQUENCE, "the signer info").children
    if len(info) < 5:
        raise _Bad("the signer info is incomplete")
    if _integer(ber, info[0], "the signer info version") != 1:
        raise _Bad("the signer is not named by issuer and serial number")
    sid = _want(info[1], _SEQUENCE, "the signer's issuer and serial number").children
    if len(sid) != 2 or sid[0].tag != _SEQUENCE:
        raise _Bad("the signer's issuer and serial number are malformed")
    issuer = ber.encoded(sid[0])
    serial = _integer(ber, sid[1], "the signer's serial number")
    _algorithm(ber, info[2], (_OID_SHA256,), "the signer's digest algorithm")
    at = 3
    signed = content
    if info[at].tag == _CTX0:
        signed = _signed_attributes(ber, info[at], content)
        at += 1
    if len(info) < at + 2:
        raise _Bad("the signer info is incomplete")
    _algorithm(ber, info[at], (_OID_RSA, _OID_SHA256_RSA), "the signature algorithm")
    signature = ber.value(_want(info[at + 1], _OCTETS, "the signature"))
    tail = info[at + 2:]
    if len(tail) > 1 or (tail and tail[0].tag != _CTX1):
        raise _Bad("the signer info has unexpected fields")
    return _SignedData(content, issuer, serial, signed, signature)


def _signed_attributes(ber: _Ber, attrs: _Tlv, content: bytes) -> bytes:
    """Checks content-type and message-digest (RFC 5652 sections 5.3, 11.1, 11.2) and
    returns what the signature covers: the DER of the attributes as a SET OF, i.e. the
    [0] IMPLICIT encoding with its identifier octet made SET (section 5.4)."""
    if not attrs.definite:
        raise _Bad("the signed attributes are not DER")
    seen: dict[bytes, tuple[_Tlv, ...]] = {}
    for attr in attrs.children:
        parts = _want(attr, _SEQUENCE, "a signed attribute").children
        if len(parts) != 2 or parts[0].tag != _OID or parts[1].tag != _SET:
            raise _Bad("a signed attribute is malformed")
        oid = ber.value(parts[0])
        if oid in seen:
            raise _Bad("a signed attribute appears twice")
        seen[oid] = parts[1].children
    ctype = seen.get(_OID_CONTENT_TYPE)
    digest = seen.get(_OID_MESSAGE_DIGEST)
    if ctype is None or digest is None:
        raise _Bad("the signed attributes lack content-type or message-digest")
    value = _want(_one(ctype, "content type"), _OID, "the content type")
    if ber.value(value) != _OID_DATA:
        raise _Bad("the signed content type is not data")
    md = ber.value(_want(_one(digest, "message digest"), _OCTETS, "the message digest"))
    if md != hashlib.sha256(content).digest():
        raise _Mismatch("the signed message digest is not the SHA-256 of the content")
    return b"\x31" + ber.encoded(attrs)[1:]


class _Mismatch(Exception):
    """Well-formed, but the digest does not match: evidence invalid, not malformed."""


# --- the certificate table -------------------------------------------------------------


@dataclass(frozen=True)
class _Signer:
    issuer: bytes
    serial: int
    key: Any  # cryptography RSAPublicKey


def _signers_of(pem: str, where: str) -> tuple[_Signer, ...]:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

    blocks = _PEM_BLOCK.findall(pem)
    try:
        if not blocks:
            raise ValueError("no PEM block")
        # one block at a time: load_pem_x509_certificates needs cryptography 39
        certs = [x509.load_pem_x509_certificate(b.encode("ascii")) for b in blocks]
    except (ValueError, UnicodeEncodeError):
        raise UsageError(f"{where} is not a PEM certificate; copy it again from AWS's "
                         "'AWS public certificates' page") from None
    out = []
    for cert in certs:
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey) or key.key_size != 2048:
            raise UsageError(f"{where} is not an RSA-2048 certificate; use the RSA-2048 one "
                             "of AWS's 'AWS public certificates' page")
        out.append(_Signer(cert.issuer.public_bytes(), cert.serial_number, key))
    return tuple(out)


_PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_NAMED_PEM = re.compile(
    r"^[ \t]*(?:#[ \t]*)?(?P<region>[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2})[ \t]*:?[ \t]*$"
    r"|(?P<pem>-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----)",
    re.M | re.S,
)


def load_certs(path: Path | None = None) -> dict[str, tuple[_Signer, ...]]:
    """The Region -> certificates table: the bundled one, or `path` holding either JSON
    (``{"us-east-1": "-----BEGIN CERTIFICATE-----...", ...}``; keys starting with "_"
    are comments; a value may hold several certificates, e.g. during a rotation) or a PEM
    bundle in which each certificate follows a line naming its Region (``us-east-1``,
    ``# us-east-1`` or ``us-east-1:``)."""
    if path is None:
        text = resources.files("seedtool.identity").joinpath(BUNDLED_CERTS).read_text("utf-8")
        where = f"the bundled {BUNDLED_CERTS}"
    else:
        where = str(path)
        try:
            text = Path(path).read_text("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read the AWS certificate table {where} "
                             f"({type(e).__name__}); check certs=") from None
    table: dict[str, list[_Signer]] = {}
    if text.lstrip().startswith("{"):
        try:
            raw = json.loads(text)
        except ValueError:
            raise UsageError(f"{where} is not valid JSON; it should map each Region to "
                             "its PEM certificate") from None
        if not isinstance(raw, dict):
            raise UsageError(f"{where} should map each Region to its PEM certificate")
        for region, pem in raw.items():
            if str(region).startswith("_"):
                continue
            if not isinstance(pem, str) or not _REGION.fullmatch(str(region)):
                raise UsageError(f"{where} has an entry that is not Region -> PEM text")
            table.setdefault(region, []).extend(_signers_of(pem, f"{where} [{region}]"))
    else:
        region_now: str | None = None
        for m in _NAMED_PEM.finditer(text):
            if m.group("region"):
                region_now = m.group("region")
                continue
            if region_now is None:
                raise UsageError(f"a certificate in {where} follows no line naming its "
                                 "Region (e.g. '# us-east-1')")
            table.setdefault(region_now, []).extend(
                _signers_of(m.group("pem"), f"{where} [{region_now}]"))
    if not table:
        raise UsageError(f"{where} holds no certificate")
    return {region: tuple(signers) for region, signers in table.items()}


# --- the check ----------------------------------------------------------------------------


def _names(values: Collection[str] | None, pattern: re.Pattern[str], what: str,
           example: str) -> frozenset[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    out = frozenset(values)
    bad = sorted(v for v in out if not pattern.fullmatch(str(v)))
    if bad or not out:
        raise UsageError(f"aws-iid {what}= needs names like {example}"
                         + (f", not {bad[0]!r}" if bad else ""))
    return out


def _epoch(stamp: str) -> float:
    """Seconds since the epoch of an IMDS time stamp ("2026-12-02T03:14:15Z", already
    matched by _PENDING_TIME); ValueError for a date that does not exist."""
    day, clock = stamp[:-1].split("T")
    y, mo, d = (int(x) for x in day.split("-"))
    h, mi, s = (int(x) for x in clock.split(":"))
    return datetime(y, mo, d, h, mi, s, tzinfo=timezone.utc).timestamp()


class AwsIid:
    """Verifies aws-iid evidence; see the module docstring.

    accounts, regions, images: the allowed AWS account ids, Regions, AMI ids (None: any;
    the server should insist on accounts). max_age: the longest time since pendingTime,
    in seconds. skew: how far in the future a pendingTime may be. certs: a certificate
    table file instead of the bundled one. describe: confirm with EC2 DescribeInstances,
    also checking asg (an Auto Scaling group name) and tags (each key must have that
    value); profile and endpoint_url choose its credentials and endpoint, and
    ec2_client_factory(region), if given, makes the EC2 client instead.
    """

    kind: ClassVar[str] = "aws-iid"

    def __init__(
        self,
        *,
        accounts: Collection[str] | None = None,
        regions: Collection[str] | None = None,
        images: Collection[str] | None = None,
        max_age: float = DEFAULT_MAX_AGE,
        certs: Path | None = None,
        describe: bool = False,
        asg: str | None = None,
        tags: Mapping[str, str] | None = None,
        ec2_client_factory: Callable[[str], Any] | None = None,
        profile: str | None = None,
        endpoint_url: str | None = None,
        skew: float = DEFAULT_SKEW,
    ) -> None:
        self.accounts = _names(accounts, _ACCOUNT, "accounts", "123456789012")
        self.regions = _names(regions, _REGION, "regions", "us-east-1")
        self.images = _names(images, _IMAGE_ID, "images", "ami-0123456789abcdef0")
        for name, value in (("max_age", max_age), ("skew", skew)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise UsageError(f"aws-iid {name}= must be a positive number of seconds")
        self.max_age = float(max_age)
        self.skew = float(skew)
        if (asg is not None or tags) and not describe:
            raise UsageError("aws-iid asg= and tags= are checked with DescribeInstances; "
                             "add describe=true")
        self.describe = describe
        self.asg = asg
        self.tags = dict(tags or {})
        self.profile = profile
        self.endpoint_url = endpoint_url
        self._factory = ec2_client_factory
        if describe and ec2_client_factory is None:
            aws.session(profile, None, WORDS)  # boto3 there, the profile known: now, not later
        self._certs = load_certs(certs)
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def cert_regions(self) -> frozenset[str]:
        """The Regions whose documents this check can verify."""
        return frozenset(self._certs)

    def verify(self, evidence: Mapping[str, object], *, now: float) -> Identity:
        if evidence.get("kind", self.kind) != self.kind:
            raise Malformed("the evidence is not of kind aws-iid")
        document = text_field(evidence, "document", DOCUMENT_LIMIT)
        encoded = text_field(evidence, "rsa2048", RSA2048_LIMIT)
        signed = self._verified_content(document, encoded)
        doc = _fields(signed)
        pending = _epoch(doc["pendingTime"])
        if now - pending > self.max_age:
            raise EvidenceInvalid(
                f"the instance identity document is from a start {now - pending:.0f} s ago, "
                f"more than the {self.max_age:.0f} s allowed (max_age=); a seed is served "
                "only right after an instance starts")
        if pending - now > self.skew:
            raise EvidenceInvalid(
                f"the instance identity document's pendingTime is {pending - now:.0f} s in "
                "the future; check this server's clock")
        for allowed, value, what in ((self.accounts, doc["accountId"], "account"),
                                     (self.regions, doc["region"], "region"),
                                     (self.images, doc["imageId"], "image")):
            if allowed is not None and value not in allowed:
                raise NotAllowed(f"this server does not serve instances of {what} {value}")
        instance = f"aws:{doc['accountId']}:{doc['region']}:{doc['instanceId']}"
        if self.describe:
            self._check_described(doc)
        claims = {"account": doc["accountId"], "region": doc["region"],
                  "image": doc["imageId"], "instance_id": doc["instanceId"],
                  "pending_time": doc["pendingTime"]}
        for key, name in (("instanceType", "instance_type"),
                          ("availabilityZone", "availability_zone"),
                          ("architecture", "architecture")):
            if key in doc:
                claims[name] = doc[key]
        return Identity(kind=self.kind, instance=instance,
                        boot=f"{instance}:{doc['pendingTime']}", claims=claims)

    # -- the signature ---------------------------------------------------------------

    def _verified_content(self, document: str, encoded: str) -> bytes:
        try:
            der = base64.b64decode(encoded.replace("\r", "").replace("\n", ""), validate=True)
        except (binascii.Error, ValueError):
            raise Malformed("the rsa2048 field is not base64; send "
                            "/latest/dynamic/instance-identity/rsa2048 as IMDS served it"
                            ) from None
        try:
            sd = _signed_data(der)
        except _Bad as e:
            raise Malformed(f"the rsa2048 field is not a usable PKCS#7 SignedData ({e}); "
                            "send /latest/dynamic/instance-identity/rsa2048 as IMDS "
                            "served it") from None
        except _Mismatch as e:
            raise EvidenceInvalid(f"the rsa2048 signature does not verify ({e})") from None
        try:
            presented = document.encode("utf-8")
        except UnicodeEncodeError:
            raise Malformed("the document field is not valid text") from None
        if sd.content != presented:
            raise EvidenceInvalid(
                "the document presented is not the content the rsa2048 signature covers; "
                "send the document and rsa2048 of the same instance, exactly as IMDS "
                "served them")
        region = _region_of(sd.content)
        signers = self._certs.get(region) if region else None
        if not signers:
            shown = region if region else "no recognisable region"
            raise EvidenceInvalid(
                f"there is no AWS RSA-2048 certificate for {shown}; add the Region's "
                "certificate from AWS's 'AWS public certificates' page with certs=")
        signer = next((s for s in signers if s.serial == sd.serial and s.issuer == sd.issuer),
                      None)
        if signer is None:
            raise EvidenceInvalid(
                f"the rsa2048 signature is not by the AWS certificate of {region}")
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        try:
            signer.key.verify(sd.signature, sd.signed, padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            raise EvidenceInvalid(
                f"the rsa2048 signature does not verify with the AWS certificate of {region}"
            ) from None
        return sd.content

    # -- DescribeInstances -----------------------------------------------------------

    def _client(self, region: str) -> Any:
        with self._lock:
            client = self._clients.get(region)
            if client is None:
                if self._factory is not None:
                    client = self._factory(region)
                else:
                    try:
                        session = aws.session(self.profile, region, WORDS)
                        client = aws.client(session, "ec2", WORDS,
                                            endpoint_url=self.endpoint_url,
                                            retries={"total_max_attempts": 3},
                                            connect_timeout=5, read_timeout=10)
                    except (CloudError, UsageError) as e:
                        raise Ec2Unavailable(str(e)) from e
                    except Exception as e:  # noqa: BLE001 - one sentence below
                        err = aws.translate(e, WORDS, self._call(region))
                        raise Ec2Unavailable(str(err)) from err
                self._clients[region] = client
            return client

    def _call(self, region: str) -> aws.Call:
        return aws.Call(service="EC2", op="DescribeInstances",
                        where=self.endpoint_url or f"EC2 in {region}",
                        patience="within 10 s in 3 attempts",
                        retry="the instance can ask again",
                        refused="check the seed server's IAM policy allows "
                                "ec2:DescribeInstances")

    def _check_described(self, doc: Mapping[str, str]) -> None:
        region, instance_id = doc["region"], doc["instanceId"]
        client = self._client(region)
        call = self._call(region)

        def codes(info: aws.ClientErrorInfo) -> NotAllowed | None:
            if info.code.startswith("InvalidInstanceID"):
                return NotAllowed(f"EC2 does not know instance {instance_id} in {region}; "
                                  "it may be terminated, or in an account these "
                                  "credentials cannot see")
            return None

        try:
            with aws.quiet():
                reply = client.describe_instances(InstanceIds=[instance_id])
        except Exception as e:  # noqa: BLE001 - botocore raises many kinds
            err = aws.translate(e, WORDS, call, codes)
            if isinstance(err, NotAllowed):
                raise err from None
            raise Ec2Unavailable(str(err)) from err
        found = [(res, inst) for res in reply.get("Reservations", []) or []
                 for inst in res.get("Instances", []) or []
                 if inst.get("InstanceId") == instance_id]
        if len(found) != 1:
            raise NotAllowed(f"EC2 does not know instance {instance_id} in {region}; it may "
                             "be terminated, or in an account these credentials cannot see")
        reservation, inst = found[0]
        owner = reservation.get("OwnerId")
        if owner is not None and owner != doc["accountId"]:
            raise NotAllowed(f"EC2 reports instance {instance_id} in another account")
        state = str((inst.get("State") or {}).get("Name", "unknown"))
        if state not in _LIVE_STATES:
            raise NotAllowed(f"instance {instance_id} is {_shown(state)}, not pending or "
                             "running")
        tags = {str(t.get("Key")): str(t.get("Value")) for t in inst.get("Tags", []) or []}
        if self.asg is not None and tags.get(ASG_TAG) != self.asg:
            raise NotAllowed(f"instance {instance_id} is not in the Auto Scaling group "
                             f"{self.asg}")
        for key, value in self.tags.items():
            if tags.get(key) != value:
                raise NotAllowed(f"instance {instance_id} lacks the tag {key}={value}")


def _shown(state: str) -> str:
    return state if _PLAIN.fullmatch(state) else "in another state"


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a key appears twice")
    return out


def _json_object(content: bytes) -> dict[str, Any] | None:
    """The document as a JSON object with no key twice (so every reader of it agrees
    on its fields), or None."""
    try:
        doc = json.loads(content, object_pairs_hook=_unique)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _region_of(content: bytes) -> str | None:
    """The region an unverified document names, only to pick its certificate; None
    unless it is a JSON object with a well-formed region."""
    doc = _json_object(content)
    region = doc.get("region") if doc is not None else None
    return region if isinstance(region, str) and _REGION.fullmatch(region) else None


def _fields(content: bytes) -> dict[str, str]:
    """The signed document's fields this check uses, each well-formed, or Malformed."""
    doc = _json_object(content)
    if doc is None:
        raise Malformed("the signed document is not a JSON object with distinct keys")
    out: dict[str, str] = {}
    for key, pattern in (("accountId", _ACCOUNT), ("region", _REGION),
                         ("instanceId", _INSTANCE_ID), ("imageId", _IMAGE_ID),
                         ("pendingTime", _PENDING_TIME)):
        value = doc.get(key)
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise Malformed(f"the signed document has no well-formed {key}")
        out[key] = value
    try:
        _epoch(out["pendingTime"])
    except ValueError:
        raise Malformed("the signed document has no well-formed pendingTime") from None
    for key in ("instanceType", "availabilityZone", "architecture"):
        value = doc.get(key)
        if isinstance(value, str) and _PLAIN.fullmatch(value):
            out[key] = value
    return out
