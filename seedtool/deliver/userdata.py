"""Put a fresh seed into a user's cloud-init user-data without changing the user's parts.

The seed travels as cloud-init's own cloud-config `random_seed: {data: <base64
envelope>, encoding: b64}`: valid for cloud-init's schema on 22.4 and 25.x, and on an
image without seedtool cloud-init's `seed_random` still mixes it in (uncredited).

How each kind of user-data is handled (cloud-init's rules, read in cloudinit/user_data.py
and cloudinit/handlers/ of 22.4.2 and 25.1.4, which agree on all of this):

* nothing: the output is a plain `#cloud-config` document holding only the seed.
* anything else is first gunzipped when it is gzip (cloud-init gunzips raw user-data),
  then read as MIME when `mime-version:` appears in its first 4096 bytes, in any case.
* MIME multipart: one `text/cloud-config` part is inserted just before the closing
  delimiter; every byte before and after it (headers, preamble, every part, epilogue)
  is kept.
* any other single document (`#cloud-config`, `#!` script, `#include`,
  `#cloud-boothook`, `## template: jinja`, `#cloud-config-archive`, `#part-handler`,
  `#cloud-config-jsonp`, or a one-part MIME message): wrapped, unchanged, as the first
  part of a new multipart message whose second part is the seed. The user's part is
  labelled `text/x-not-multipart`, the label cloud-init itself gives raw user-data, so
  cloud-init sniffs its type from its first line exactly as it would have; it is carried
  as plain text when that round-trips exactly through the MIME parser, else in base64.

Merging. cloud-init merges cloud-config parts in order, by default with
`dict(replace)+list()+str()`, under which a later part replaces whole top-level keys.
The seed part is last and says `Merge-Type: dict(no_replace,recurse_str)+list()+str()`:
it adds `random_seed` when the user has none and otherwise descends into the user's
`random_seed`, where our `data` and `encoding` replace the user's (strings are
replaced, not appended, by `str()`), and the user's `file`, `command` and
`command_required` stay as they were. The user's own `data` is therefore dropped: one
seed, ours, reaches `seed_random`. All other keys of the user's cloud-config are
untouched. A user `random_seed` that is not a mapping, or whose `data` is not a
string, would make cloud-init keep the user's value and drop ours, so such input is
refused; that check, and refusing `#cloud-config` that is not a YAML mapping, is why
PyYAML is needed (imported only when the user-data holds cloud-config).

Every output is checked before it is returned: read back the way cloud-init reads it,
each user part must come out with the same type, payload bytes, file name and merge and
launch-index headers as from the input, and `find_seed` must return the new envelope.

The output is deterministic: the MIME boundary is derived from the seed id, which is
public. This module never logs or prints; no message it raises contains seed bytes or
user content.
"""

from __future__ import annotations

import base64
import contextvars
import copy
import email
import email.message
import gzip
import json
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..shared import envelope
from ..shared.errors import DeliveryError

#: target -> (limit in bytes or None, how the limit is counted)
TARGETS: dict[str, tuple[int | None, str]] = {
    "raw": (None, "no limit"),
    # AWS EC2 User Guide, "Run commands when you launch an EC2 instance with user data
    # input": user data is limited to 16 KB in raw form, before it is base64-encoded.
    "aws": (16 * 1024, "AWS user-data limit of 16384 bytes before base64"),
    # Compute Engine docs, "About VM metadata", limits: 256 KB per metadata value.
    "gce": (256 * 1024, "GCE limit of 262144 bytes per metadata value"),
    # OpenStack Compute API reference, "Create Server": user_data must be base64 encoded
    # and is restricted to 65535 bytes; 65535 base64 characters carry 49149 bytes.
    "openstack": (65535 // 4 * 3, "nova limit of 65535 bytes of base64, 49149 before base64"),
}

#: file name of the seed part; cloud-init lists it in cloud-config.txt
SEED_PART_NAME = "seedtool-seed.cfg"
#: see the module docstring: descend into random_seed, our strings win
SEED_MERGE_TYPE = "dict(no_replace,recurse_str)+list()+str()"

#: the only random_seed.file values accepted: cloud-init writes the seed there and
#: nothing of it stays (see _check_cloud_config)
SEED_DEVICES = ("/dev/urandom", "/dev/random")

#: refuse to gunzip more than this (a gzip bomb would otherwise fill the memory)
MAX_DECOMPRESSED = 32 * 1024 * 1024
#: cloud-init treats user-data as MIME when this appears in its first 4096 bytes
_MIME_MARK = b"mime-version:"
_MIME_WINDOW = 4096
_GZIP_MAGIC = b"\x1f\x8b"

# First-line markers cloud-init recognises (cloudinit/handlers/__init__.py
# INCLUSION_TYPES_MAP); matched case-insensitively after leading whitespace,
# longest first.
_STARTS_WITH: dict[str, str] = {
    "#include": "text/x-include-url",
    "#include-once": "text/x-include-once-url",
    "#!": "text/x-shellscript",
    "#cloud-config": "text/cloud-config",
    "#part-handler": "text/part-handler",
    "#cloud-boothook": "text/cloud-boothook",
    "#cloud-config-archive": "text/cloud-config-archive",
    "#cloud-config-jsonp": "text/cloud-config-jsonp",
    "## template: jinja": "text/jinja2",
    "text/x-shellscript-per-boot": "text/x-shellscript-per-boot",
    "text/x-shellscript-per-instance": "text/x-shellscript-per-instance",
    "text/x-shellscript-per-once": "text/x-shellscript-per-once",
}
_STARTS_WITH_ORDER = sorted(_STARTS_WITH, key=len, reverse=True)
# cloudinit/user_data.py: parts whose type is sniffed from their first line
_SNIFFED = ("text/plain", "text/x-not-multipart", "text/x-shellscript")
_NOT_MULTIPART = "text/x-not-multipart"
# cloudinit/user_data.py DECOMP_TYPES: parts cloud-init gunzips
_GZIP_TYPES = frozenset(
    {
        "application/gzip",
        "application/gzip-compressed",
        "application/gzipped",
        "application/x-compress",
        "application/x-compressed",
        "application/x-gunzip",
        "application/x-gzip",
        "application/x-gzip-compressed",
    }
)
_CLOUD_CONFIG = "text/cloud-config"
_B64_TEXT = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")


_YAML_CACHE: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "seedtool_userdata_yaml_cache", default=None
)


class UserDataRefused(DeliveryError):
    """The user-data is not what its header says, or cloud-init would not read it."""


class UserDataTooLarge(DeliveryError):
    """The user-data with the seed does not fit the target's limit, even gzipped."""


@dataclass(frozen=True)
class Part:
    """One part of user-data as cloud-init's handlers receive it."""

    content_type: str
    payload: bytes
    filename: str | None = None
    merge_type: str | None = None
    launch_index: str | None = None


@dataclass(frozen=True)
class Result:
    """What `build` made; `data` holds the seed: treat it as secret."""

    data: bytes
    input_format: str
    gzipped: bool
    target: str
    limit: int | None
    user_parts: int

    @property
    def size(self) -> int:
        """The size that counts against the target's limit."""
        return _counted_size(self.data, self.target)

    def summary(self) -> dict[str, Any]:
        """Everything about the result except its content."""
        return {
            "input_format": self.input_format,
            "user_parts": self.user_parts,
            "gzipped": self.gzipped,
            "target": self.target,
            "limit": self.limit,
            "size": self.size,
        }


# --- public API ---------------------------------------------------------------------


def add_seed(user_data: bytes | None, envelope_b64: str, *, target: str = "raw",
             compress: str = "auto") -> bytes:
    """Return `user_data` with the seed envelope added, ready to hand to the cloud.

    `target` is "raw" (no limit), "aws" (16 KB before base64) or "gce" (256 KB per
    metadata value; see `gce_metadata`). `compress` is "auto" (gzip when the input
    was gzip or when only gzip fits the limit), "always" or "never".
    Raises `UserDataRefused`, `UserDataTooLarge` or `EnvelopeError`.
    """
    return build(user_data, envelope_b64, target=target, compress=compress).data


def build(user_data: bytes | None, envelope_b64: str, *, target: str = "raw",
          compress: str = "auto") -> Result:
    """Like `add_seed`, but also say what was done (for the command's summary)."""
    token = _YAML_CACHE.set({})
    try:
        return _build(user_data, envelope_b64, target, compress)
    finally:
        _YAML_CACHE.reset(token)


def _build(user_data: bytes | None, envelope_b64: str, target: str, compress: str) -> Result:
    if target not in TARGETS:
        raise DeliveryError(f"unknown target '{target}'; use one of: {', '.join(TARGETS)}")
    if compress not in ("auto", "always", "never"):
        raise DeliveryError(f"unknown compress mode '{compress}'; use auto, always or never")
    seed_text = _checked_envelope(envelope_b64)
    seed_id = envelope.parse(seed_text).seed_id_hex

    raw = b"" if user_data is None else bytes(user_data)
    body, was_gzip = _gunzip_if_gzip(raw, "the user-data")
    originals: list[Part] = []
    if not body.strip():
        fmt = "none"
        out = _seed_document(seed_text, "\n").encode("ascii")
        _check_result(out, originals, seed_text)
    else:
        fmt, originals = _inspect(body)
        out = _with_seed(body, fmt, seed_text, seed_id, originals)  # checked there

    limit, what = TARGETS[target]
    gz = compress == "always" or (compress == "auto" and was_gzip)
    data = _gzip(out) if gz else out
    if limit is not None and _counted_size(data, target) > limit:
        if compress == "auto" and not gz:
            data, gz = _gzip(out), True
        if _counted_size(data, target) > limit:
            raise UserDataTooLarge(
                f"user-data with the seed is {len(out)} bytes "
                f"({_counted_size(_gzip(out), target)} gzipped), over the {what}; "
                "shorten the user-data or move large parts behind an #include URL"
            )
    return Result(data, fmt, gz, target, limit, len(originals))


def check(user_data: bytes | None) -> str:
    """Check `user_data` as `add_seed` would, without a seed; return its format name
    ("none", "mime-multipart", "mime" or the cloud-init content type)."""
    body, _ = _gunzip_if_gzip(b"" if user_data is None else bytes(user_data), "the user-data")
    if not body.strip():
        return "none"
    return _inspect(body)[0]


def find_seed(user_data: bytes | None) -> str | None:
    """The `random_seed.data` cloud-init's merged cloud-config would hold, or None.

    Reads user-data the way cloud-init does (gzip, MIME, transfer encodings, gzip
    parts, type sniffing, `#cloud-config-archive`) and merges its cloud-config parts
    with cloud-init's merge rules. Parts that only exist at boot are not evaluated:
    `#include` URLs are not fetched, jinja templates not rendered, JSON patches not
    applied.
    """
    merged = merged_cloud_config(user_data)
    rs = merged.get("random_seed") if merged is not None else None
    if not isinstance(rs, dict) or not isinstance(rs.get("data"), str):
        return None
    return str(rs["data"])


def merged_cloud_config(user_data: bytes | None) -> dict[str, Any] | None:
    """The cloud-config cloud-init would merge from `user_data` (its cloud-config.txt),
    or None when there is no cloud-config; with the limits `find_seed` states."""
    if not user_data:
        return None
    body, _ = _gunzip_if_gzip(bytes(user_data), "the user-data")
    merged: dict[str, Any] | None = None
    budget = [MAX_MERGE_STEPS]
    for part in _expand_archives(_parts(body)):
        if part.content_type != _CLOUD_CONFIG:
            continue
        cfg = _yaml_mapping(part.payload)
        if cfg is None:
            continue
        try:
            how = _mergers_of(cfg, part.merge_type)
        except ValueError:
            continue  # cloud-init logs the failure and skips this part
        merged = _Merger(how, budget).merge({} if merged is None else merged, cfg)
    return merged


def parts(user_data: bytes | None) -> list[Part]:
    """Every part cloud-init's handlers would receive, in order (before boot-time
    expansion of includes and archives)."""
    if not user_data:
        return []
    body, _ = _gunzip_if_gzip(bytes(user_data), "the user-data")
    return _parts(body)


def user_parts(user_data: bytes | None) -> list[Part]:
    """`parts` without seedtool's own seed part."""
    return [p for p in parts(user_data) if not _is_seed_part(p)]


def _is_seed_part(p: Part) -> bool:
    # The name alone is not enough: a user's own part may be called that, and
    # user_parts must give it back (fuzz finding U1, fuzz/README.md).
    if p.content_type != _CLOUD_CONFIG or p.filename not in (None, SEED_PART_NAME):
        return False
    cfg = _yaml_mapping(p.payload)
    rs = cfg.get("random_seed") if cfg is not None and set(cfg) == {"random_seed"} else None
    return isinstance(rs, dict) and isinstance(rs.get("data"), str) and _is_envelope(rs["data"])


def gce_metadata(user_data: bytes) -> dict[str, str]:
    """GCE metadata items for `user_data`: text as is, anything else (gzip) base64
    with `user-data-encoding: base64`, which cloud-init's GCE datasource decodes
    (DataSourceGCE.py, 22.4 and 25.1)."""
    try:
        return {"user-data": user_data.decode("utf-8")}
    except UnicodeDecodeError:
        return {
            "user-data": base64.b64encode(user_data).decode("ascii"),
            "user-data-encoding": "base64",
        }


# --- reading user-data as cloud-init does -------------------------------------------


def _gunzip_if_gzip(data: bytes, what: str) -> tuple[bytes, bool]:
    if not data.startswith(_GZIP_MAGIC):
        return data, False
    out = bytearray()
    rest = data
    try:
        while rest:
            d = zlib.decompressobj(wbits=31)
            out += d.decompress(rest, MAX_DECOMPRESSED + 1 - len(out))
            if len(out) > MAX_DECOMPRESSED or d.unconsumed_tail:
                raise UserDataRefused(
                    f"{what} decompresses to more than {MAX_DECOMPRESSED} bytes; "
                    "no cloud accepts that much user-data"
                )
            if not d.eof:
                raise zlib.error("truncated")
            rest = d.unused_data
            if rest and not rest.startswith(_GZIP_MAGIC):
                raise zlib.error("trailing data")
    except zlib.error:
        raise UserDataRefused(
            f"{what} starts like gzip but does not decompress, so cloud-init could not "
            "read it; give the uncompressed user-data or a complete .gz file"
        ) from None
    return bytes(out), True


def _is_mime(body: bytes) -> bool:
    return _MIME_MARK in body[:_MIME_WINDOW].lower()


def _sniff(payload: bytes) -> str | None:
    try:
        head = payload.decode("utf-8").lower().lstrip()
    except UnicodeDecodeError:
        return None
    for marker in _STARTS_WITH_ORDER:
        if head.startswith(marker):
            return _STARTS_WITH[marker]
    return None


def _message(body: bytes) -> email.message.Message:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise UserDataRefused(
            "the user-data looks like MIME (it says 'MIME-Version:' in its first 4096 "
            "bytes) but is not UTF-8 text, which cloud-init cannot parse; encode binary "
            "parts with Content-Transfer-Encoding: base64"
        ) from None
    return email.message_from_string(text)


def _parts(body: bytes) -> list[Part]:
    if not _is_mime(body):
        ctype = _sniff(body) or _NOT_MULTIPART
        return [Part(ctype, body)]
    out: list[Part] = []
    for msg in _message(body).walk():
        if msg.get_content_maintype() == "multipart":
            continue
        ctype = msg.get_content_type()
        payload = msg.get_payload(decode=True)
        if not isinstance(payload, bytes):  # pragma: no cover - non-multipart always bytes
            payload = b""
        # cloud-init hands its handlers dict(part): original-case names, first value
        headers = {k: str(msg[k]) for k in msg.keys()}
        merge = headers.get("Merge-Type") or headers.get("X-Merge-Type") or None
        if ctype in _GZIP_TYPES:
            where = f"part {len(out) + 1} (labelled {ctype})"
            if not payload.startswith(_GZIP_MAGIC):
                raise UserDataRefused(
                    f"{where} is not gzip data, so cloud-init would skip it; fix its "
                    "Content-Type"
                )
            payload, _ = _gunzip_if_gzip(payload, where)
            # cloud-init rebuilds a gunzipped part keeping only its file name and
            # Launch-Index: a Merge-Type header on it is lost
            ctype, merge = "text/plain", None
        if ctype in _SNIFFED:
            ctype = _sniff(payload) or ctype
        out.append(
            Part(ctype, payload, msg.get_filename(), merge, headers.get("Launch-Index"))
        )
    return out


def _expand_archives(items: Iterable[Part]) -> list[Part]:
    """Replace `#cloud-config-archive` parts by their entries, as cloud-init does."""
    out: list[Part] = []
    for p in items:
        if p.content_type != "text/cloud-config-archive":
            out.append(p)
            continue
        entries = _yaml_load(p.payload, "a #cloud-config-archive part")
        for ent in entries if isinstance(entries, list) else []:
            if isinstance(ent, str):
                ent = {"content": ent}
            if not isinstance(ent, dict) or not _archive_entry_ok(ent):
                continue  # cloud-init fails on it; check() refuses it
            content = ent.get("content", "")
            blob = content.encode("utf-8") if isinstance(content, str) else content
            ctype = ent.get("type") or _sniff(blob) or _CLOUD_CONFIG
            out.append(Part(str(ctype), blob, ent.get("filename")))
    return out


def _archive_entry_ok(ent: dict[Any, Any]) -> bool:
    """Whether cloud-init's _explode_archive can make a part of this entry: it fails on
    content that is not UTF-8 text or bytes, a type that is not "maintype/subtype", a
    file name or header name that is not a string (fuzz finding U3, fuzz/README.md)."""
    content, ctype, name = ent.get("content", ""), ent.get("type"), ent.get("filename")
    if isinstance(content, str):
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a YAML "\ud800" escape
            return False
    elif not isinstance(content, bytes):
        return False
    if ctype and not (isinstance(ctype, str) and "/" in ctype):
        return False
    return (name is None or isinstance(name, str)) and all(isinstance(k, str) for k in ent)


# --- checking the user's parts ------------------------------------------------------


def _inspect(body: bytes) -> tuple[str, list[Part]]:
    """Name the input's format and check each part is what its header says."""
    found = _parts(body)
    if _is_mime(body):
        msg = _message(body)
        fmt = "mime-multipart" if msg.is_multipart() else "mime"
        if msg.get_content_maintype() == "multipart" and not (
            msg.is_multipart() and msg.get_boundary()
        ):
            raise UserDataRefused(
                "the user-data is MIME multipart without a boundary parameter, so its "
                "parts cannot be found; fix its Content-Type header"
            )
    else:
        fmt = found[0].content_type
        if fmt == _NOT_MULTIPART:
            raise UserDataRefused(
                "the user-data starts with no header cloud-init recognises (#cloud-config, "
                "#!, #include, #cloud-boothook, ## template: jinja, ...) and is not MIME, "
                "so cloud-init would ignore it; add the right first line"
            )
    for n, p in enumerate(found, 1):
        where = "the user-data" if fmt not in ("mime", "mime-multipart") else f"part {n}"
        _check_part(p, where)
    return fmt, found


def _check_part(p: Part, where: str) -> None:
    ct = p.content_type
    if ct == _CLOUD_CONFIG:
        _check_cloud_config(p.payload, where)
    elif ct == "text/cloud-config-archive":
        entries = _yaml_load(p.payload, where)
        if not isinstance(entries, list):
            raise UserDataRefused(
                f"{where} says #cloud-config-archive but is not a YAML list, so cloud-init "
                "would ignore it; fix it"
            )
        for i, ent in enumerate(entries, 1):
            if isinstance(ent, (str, dict)) and not _archive_entry_ok(
                {"content": ent} if isinstance(ent, str) else ent
            ):
                raise UserDataRefused(
                    f"entry {i} of the archive in {where} has content that is not text, a "
                    "type that is not a MIME type, or a name that is not a string, so "
                    "cloud-init would fail on it; fix that entry"
                )
        for i, e in enumerate(_expand_archives([p]), 1):
            _check_part(e, f"entry {i} of the archive in {where}")
    elif ct == "text/cloud-config-jsonp":
        text = _utf8(p.payload, where).lstrip()
        if text.lower().startswith("#cloud-config-jsonp"):
            text = text[len("#cloud-config-jsonp") :]
        try:
            patch = json.loads(text)
        except ValueError:
            patch = None
        if not isinstance(patch, list):
            raise UserDataRefused(
                f"{where} says #cloud-config-jsonp but is not a JSON patch (a JSON list), "
                "so cloud-init would fail on it; fix it"
            )
    elif ct in ("text/x-include-url", "text/x-include-once-url"):
        _check_include(p.payload, where)


def _utf8(payload: bytes, where: str) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise UserDataRefused(
            f"{where} is not UTF-8 text, which cloud-init cannot read as configuration"
        ) from None


def _yaml_load(payload: bytes, where: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise DeliveryError(
            "reading cloud-config user-data needs PyYAML; install python3-yaml or "
            "'pip install pyyaml'"
        ) from None
    text = _utf8(payload, where)
    try:
        return copy.deepcopy(_safe_load(text))
    except RecursionError:  # fuzz finding U2: "[" * 1000 exhausts the parser's stack
        raise UserDataRefused(
            f"{where} nests too deeply to be read as YAML, so cloud-init could not read it "
            "either; flatten it"
        ) from None
    except yaml.YAMLError as e:
        mark = (e.problem_mark or e.context_mark) if isinstance(e, yaml.MarkedYAMLError) else None
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserDataRefused(
            f"{where} is not valid YAML{at}, so cloud-init would ignore it; fix it "
            "(cloud-init schema --config-file shows the problem)"
        ) from None


def _safe_load(text: str) -> Any:
    # cloud-init loads cloud-config with yaml.safe_load. One `build` reads each part
    # several times (check, read-back, find_seed), so it parses each text once, in a
    # cache that lives only for that call (it holds user content and the seed).
    # Callers get a deep copy: the merge removes keys from what it is given.
    import yaml

    cache = _YAML_CACHE.get()
    if cache is None:
        return yaml.safe_load(text)
    if text not in cache:
        cache[text] = yaml.safe_load(text)
    return cache[text]


def _yaml_mapping(payload: bytes) -> dict[str, Any] | None:
    try:
        cfg = _yaml_load(payload, "a cloud-config part")
    except UserDataRefused:
        return None
    return cfg if isinstance(cfg, dict) else None


def _check_cloud_config(payload: bytes, where: str) -> None:
    cfg = _yaml_load(payload, where)
    if cfg is None:
        return  # empty: cloud-init warns about it, but it is the user's to keep
    if not isinstance(cfg, dict):
        raise UserDataRefused(
            f"{where} says #cloud-config but is a YAML {type(cfg).__name__}, not a "
            "mapping, so cloud-init would ignore it; fix it"
        )
    if "random_seed" not in cfg:
        return
    rs = cfg["random_seed"]
    if not isinstance(rs, dict):
        raise UserDataRefused(
            f"{where} sets random_seed to something other than a mapping; cloud-init would "
            "then keep it and drop the seed: remove it or write random_seed as a mapping"
        )
    data = rs.get("data")
    if "data" in rs and not isinstance(data, str):
        raise UserDataRefused(
            f"{where} sets random_seed.data to something other than a string; cloud-init "
            "would then keep it and drop the seed: remove random_seed.data"
        )
    # the same for encoding: a null or a number would be kept and break seed_random
    # (found by a property in tests/test_properties.py, fuzz/README.md U5)
    if "encoding" in rs and not isinstance(rs["encoding"], str):
        raise UserDataRefused(
            f"{where} sets random_seed.encoding to something other than a string; "
            "cloud-init would then keep it and misread the seed: remove random_seed.encoding"
        )
    # cloud-init's seed_random (cc_seed_random.handle, 22.4 and 25.1) appends the decoded
    # data to random_seed.file: a regular file there would keep the seed on disk, where
    # no scrub may rewrite it, so only the kernel's devices are accepted
    if "file" in rs and rs["file"] not in SEED_DEVICES:
        raise UserDataRefused(
            f"{where} sets random_seed.file, so cloud-init would copy the seed into that "
            "file and leave it there; remove random_seed.file (the default is /dev/urandom)"
        )
    if isinstance(data, str) and _is_envelope(data):
        raise UserDataRefused(
            f"{where} already carries a seedtool seed; add a fresh seed to the original "
            "user-data instead, so that no seed is ever used twice"
        )


def _is_envelope(text: str) -> bool:
    try:
        envelope.parse(text)
    except envelope.EnvelopeError:
        return False
    return True


def _check_include(payload: bytes, where: str) -> None:
    # cloudinit/user_data.py _do_include: one URL per line, '#include' prefixes
    # stripped, '#' lines and blank lines skipped; read_file_or_url takes local
    # paths, file:// and http(s) URLs.
    text = _utf8(payload, where)
    for lineno, line in enumerate(text.splitlines(), 1):
        low = line.lower()
        if low.startswith("#include-once"):
            line = line[len("#include-once") :].lstrip()
        elif low.startswith("#include"):
            line = line[len("#include") :].lstrip()
        if line.startswith("#") or not line.strip():
            continue
        url = line.strip()
        try:
            parsed = urlsplit(url)
        except ValueError:  # e.g. "https://]" (fuzz finding U6, fuzz/README.md)
            parsed = None
        if url.startswith("/") or (parsed is not None and (
            (parsed.scheme in ("http", "https") and parsed.netloc)
            or (parsed.scheme == "file" and parsed.path)
        )):
            continue
        raise UserDataRefused(
            f"line {lineno} of {where} (#include) is not an http(s) or file URL, so "
            "cloud-init could not fetch it; fix that line"
        )


# --- writing ------------------------------------------------------------------------


def _checked_envelope(envelope_b64: str) -> str:
    text = "".join(str(envelope_b64).split())
    if not _B64_TEXT.fullmatch(text):
        raise DeliveryError(
            "the seed to add is not base64 text; pass the envelope as 'seedtool generate' "
            "writes it"
        )
    envelope.parse(text)  # raises MalformedEnvelope with its own sentence
    return text


def _seed_document(seed_text: str, eol: str) -> str:
    lines = ["#cloud-config", "random_seed:", f'  data: "{seed_text}"', "  encoding: b64"]
    return eol.join(lines) + eol


def _seed_part(seed_text: str, eol: str) -> str:
    head = [
        f"Content-Type: {_CLOUD_CONFIG}",
        f'Content-Disposition: attachment; filename="{SEED_PART_NAME}"',
        f"Merge-Type: {SEED_MERGE_TYPE}",
    ]
    return eol.join(head) + eol + eol + _seed_document(seed_text, eol)


def _boundary(seed_id: str, body: bytes) -> str:
    n = 0
    while True:
        b = f"seedtool-{seed_id}" + (f"-{n}" if n else "")
        if b.encode() not in body:
            return b
        n += 1


def _with_seed(
    body: bytes, fmt: str, seed_text: str, seed_id: str, originals: list[Part]
) -> bytes:
    if fmt == "mime-multipart":
        out = _insert_part(body, seed_text)
        _check_result(out, originals, seed_text)
        return out
    boundary = _boundary(seed_id, body)
    last: Exception | None = None
    for plain in (True, False):
        if plain and not _plain_ok(body, fmt):
            continue
        out = _wrap(body, fmt, seed_text, boundary, plain)
        try:
            _check_result(out, originals, seed_text)
        except DeliveryError as e:
            last = e
            continue
        return out
    assert last is not None
    raise last


def _plain_ok(body: bytes, fmt: str) -> bool:
    if fmt == "mime":
        return True  # a one-part MIME message is UTF-8 text by now
    try:
        body.decode("ascii")
    except UnicodeDecodeError:
        return False
    return True


def _wrap(body: bytes, fmt: str, seed_text: str, boundary: str, plain: bool) -> bytes:
    eol = "\n"
    out = [
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
        "MIME-Version: 1.0",
        "",
        f"--{boundary}",
    ]
    if fmt == "mime":
        # a one-part MIME message: its own headers become the part's headers
        user = body.decode("utf-8")
    elif plain:
        user = f"Content-Type: {_NOT_MULTIPART}{eol}{eol}" + body.decode("ascii")
    else:
        b64 = base64.encodebytes(body).decode("ascii").replace("\n", eol)
        user = (
            f"Content-Type: {_NOT_MULTIPART}{eol}Content-Transfer-Encoding: base64{eol}{eol}"
            + b64
        )
    # The parser drops one line break before each delimiter (RFC 2046: it belongs
    # to the delimiter); after a lone CR a LF would pair up with it, so use CRLF.
    tail = "\r\n" if user.endswith("\r") else eol
    text = eol.join(out) + eol + user + tail + f"--{boundary}{eol}"
    text += _seed_part(seed_text, eol) + f"--{boundary}--{eol}"
    return text.encode("utf-8")


def _insert_part(body: bytes, seed_text: str) -> bytes:
    """Insert the seed part before the closing delimiter; keep every other byte."""
    msg = _message(body)
    boundary = msg.get_boundary()
    assert boundary is not None
    text = body.decode("utf-8")
    sep = "--" + boundary
    # The parser (email.feedparser, which cloud-init uses) ends the multipart at the
    # first line that is the delimiter followed by "--" and optional blanks; a nested
    # part cannot hide it, since every outer delimiter also ends the inner parts.
    close = re.compile(re.escape(sep) + r"--[ \t]*(?:\r\n|\r|\n)?\Z")
    eol = "\n"
    prev_end = ""
    for m in _LINE.finditer(text):
        line = m.group(0)
        if close.match(line):
            eol = prev_end or eol
            part = f"{sep}{eol}" + _seed_part(seed_text, eol)
            return (text[: m.start()] + part + text[m.start() :]).encode("utf-8")
        prev_end = line[len(line.rstrip("\r\n")) :] or prev_end
    # no closing delimiter: the parser accepts that; add ours after the last part
    eol = prev_end or eol
    lead = "" if text.endswith(("\n", "\r")) or not text else eol
    return (text + lead + f"{sep}{eol}" + _seed_part(seed_text, eol) + f"{sep}--{eol}").encode(
        "utf-8"
    )


def _check_result(out: bytes, originals: list[Part], seed_text: str) -> None:
    got = _parts(out)
    if got[: len(originals)] != originals or len(got) != len(originals) + 1:
        raise UserDataRefused(
            "cannot add a seed without changing how cloud-init reads this user-data; "
            "write it as MIME multipart (cloud-init devel make-mime) and try again"
        )
    rs = (merged_cloud_config(out) or {}).get("random_seed")
    if find_seed(out) != seed_text or not isinstance(rs, dict) or rs.get("encoding") != "b64":
        raise UserDataRefused(
            "the user-data's own cloud-config would override the seed in cloud-init's "
            "merge; remove its random_seed settings and try again"
        )


def _gzip(data: bytes) -> bytes:
    # mtime=0 and no file name: the same input always gives the same bytes
    return gzip.compress(data, compresslevel=9, mtime=0)


def _counted_size(data: bytes, target: str) -> int:
    if target == "gce":
        return len(gce_metadata(data)["user-data"].encode("utf-8"))
    return len(data)


# --- cloud-init's cloud-config merge, for find_seed ---------------------------------
# The semantics of cloudinit/mergers/ (m_dict, m_list, m_str) as cloud-init's docs
# ("Merging user-data sections") describe them: a merge dispatches on the type of the
# old value; a type no merger handles keeps the old value.

_MERGER_NAME = re.compile(r"([a-z_][a-z0-9_]*)\((.*?)\)")
_DEFAULT_MERGE = "dict(replace)+list()+str()"
#: merge steps one reading may take: YAML aliases make a 2 KB text a graph whose merge
#: visits 2**n nodes, which hung find_seed (fuzz finding U4, fuzz/README.md)
MAX_MERGE_STEPS = 200_000


def _parse_mergers(spec: str) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    for item in spec.split("+"):
        item = item.lower().strip().replace("-", "_")
        if not item:
            continue
        m = _MERGER_NAME.fullmatch(item)
        if not m:
            raise ValueError(item)
        opts = [o.strip().lower() for o in m.group(2).split(",") if o.strip()]
        out.append((m.group(1), opts))
    return out


def _mergers_of(cfg: dict[str, Any], header: str | None) -> list[tuple[str, list[str]]]:
    """cloud-config handler: mergers from the payload's merge_how/merge_type, then the
    Merge-Type header; the default when neither gives any. The keys are removed.
    Raises ValueError where cloud-init would fail and skip the part."""
    how: list[tuple[str, list[str]]] = []
    raw = cfg.pop("merge_how", None)
    if raw is None:
        raw = cfg.pop("merge_type", None)
    if isinstance(raw, str):
        how += _parse_mergers(raw)
    elif raw is not None:
        try:
            for m in raw:
                if isinstance(m, dict):
                    how.append((str(m["name"]).replace("-", "_").strip(), list(m["settings"])))
                elif m:
                    how.append((str(m[0]), [str(o) for o in m[1:]]))
        except (KeyError, TypeError, IndexError):
            raise ValueError("merge_how") from None
    if header:
        how += _parse_mergers(header)
    for name, _ in how:
        if name not in ("dict", "list", "str"):
            raise ValueError(name)
    return how or _parse_mergers(_DEFAULT_MERGE)


class _Merger:
    def __init__(self, how: list[tuple[str, list[str]]], budget: list[int]) -> None:
        self.budget = budget  # shared by the mergers of one reading
        self.dict_opts: list[str] | None = None
        self.list_opts: list[str] | None = None
        self.str_opts: list[str] | None = None
        for name, opts in how:
            if name == "dict" and self.dict_opts is None:
                self.dict_opts = opts
            elif name == "list" and self.list_opts is None:
                self.list_opts = opts
            elif name == "str" and self.str_opts is None:
                self.str_opts = opts

    def merge(self, old: Any, new: Any) -> Any:
        self.budget[0] -= 1
        if self.budget[0] < 0:
            raise UserDataRefused(
                "the user-data's cloud-config parts take too long to merge (YAML aliases "
                "repeat the same structure many times over); simplify them"
            )
        if isinstance(old, dict) and self.dict_opts is not None:
            return self._dict(old, new, self.dict_opts)
        if isinstance(old, (list, tuple)) and self.list_opts is not None:
            merged = self._list(list(old), new, self.list_opts)
            return tuple(merged) if isinstance(old, tuple) else merged
        if isinstance(old, str) and self.str_opts is not None:
            if "append" in self.str_opts and isinstance(new, str):
                return old + new
            return new
        return old

    def _dict(self, old: dict[str, Any], new: Any, opts: list[str]) -> Any:
        if not isinstance(new, dict):
            return old
        replace = "replace" in opts  # m_dict's default is no_replace
        rec_str = "recurse_str" in opts
        rec_list = "recurse_array" in opts or "recurse_list" in opts
        out = dict(old)
        for k, v in new.items():
            if k not in out:
                out[k] = v
            elif v is None and "allow_delete" in opts:
                out.pop(k)
            elif replace:
                out[k] = v
            elif (
                isinstance(v, dict)
                or (isinstance(v, str) and rec_str)
                or (isinstance(v, (list, tuple)) and rec_list)
            ):
                out[k] = self.merge(out[k], v)
        return out

    def _list(self, old: list[Any], new: Any, opts: list[str]) -> Any:
        method = next(
            (m for m in ("append", "prepend", "replace", "no_replace") if m in opts), "replace"
        )
        if method == "replace" and not isinstance(new, (list, tuple)):
            return new
        if method == "prepend":
            return [*new, *old]
        if method == "append":
            return [*old, *new]
        out = list(old)
        for i in range(min(len(out), len(new))):
            v = new[i]
            if method == "no_replace":
                continue
            rec_list = "recurse_array" in opts or "recurse_list" in opts
            if (
                (isinstance(v, (list, tuple)) and rec_list)
                or (isinstance(v, str) and "recurse_str" in opts)
                or (isinstance(v, dict) and "recurse_dict" in opts)
            ):
                out[i] = self.merge(out[i], v)
            else:
                out[i] = v
        return out


__all__ = [
    "SEED_MERGE_TYPE",
    "SEED_PART_NAME",
    "TARGETS",
    "Part",
    "Result",
    "UserDataRefused",
    "UserDataTooLarge",
    "add_seed",
    "build",
    "check",
    "find_seed",
    "gce_metadata",
    "merged_cloud_config",
    "parts",
    "user_parts",
]
