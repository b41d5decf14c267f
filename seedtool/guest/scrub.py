"""Remove a consumed envelope from the copies cloud-init keeps of user-data.

Where cloud-init keeps user-data (cloudinit/stages.py, cloudinit/sources/__init__.py,
cloudinit/handlers/cloud_config.py of 22.4 and 25.1):

* `/var/lib/cloud/instance/user-data.txt` (raw, possibly gzip), `user-data.txt.i`
  (processed MIME), `cloud-config.txt` (merged cloud-config, re-dumped as YAML, so a
  `!!binary` value is re-wrapped at 76 columns), `vendor-data.txt`, `vendor-data.txt.i`,
  `vendor-data2.txt*` and the NoCloud seed directory, all under `/var/lib/cloud`;
* `obj.pkl`, the pickled datasource (`userdata_raw`, the processed `userdata`, the
  crawled metadata: GCE's `instance-data` holds the instance attributes with the
  still-encoded `user-data`), from which the next boot rewrites all of the above;
* `/run/cloud-init/instance-data.json`, `instance-data-sensitive.json` and
  `combined-cloud-config.json` (JSON: line breaks become `\\n`, bytes become
  `ci-b64:` + base64) and `status.json`/`result.json`, whose error messages may quote
  a value (`b'...'`, Python's repr, from a schema warning);
* `/var/log/cloud-init*.log`, which quote the same warnings;
* `/var/lib/waagent/ovf-env.xml`, where DataSourceAzure (`ds_cfg["data_dir"]`,
  `write_files`) keeps the OVF environment with user-data as base64 `CustomData`;
* the in-memory datasource and config of the running `cloud-init` process.

What is searched for. Only what is ours: the forms of a parsed seedtool envelope (its
raw bytes and its canonical base64 text, `Needles`), or a datasource seed the module
credited. `needles_for` of anything else is empty and the scrub then changes nothing.

How. Each file, string or bytes value is searched the way cloud-init decodes it, in
layers, and every edit keeps the length, so pickles (length-prefixed strings), JSON,
YAML, MIME and logs (another process may be appending) stay valid. Containers come
first, outer kinds before inner, so that no edit lands inside a container whose
integrity check it would break (a stored gzip member shows its text):

1. gzip members (RFC 1952) anywhere are decompressed and searched; a changed member
   is recompressed and padded to its original length with the header's FEXTRA field
   (section 2.3.1) and, past 65535 bytes of padding, empty stored deflate blocks
   (RFC 1951 section 3.2.4); when even that cannot fit, it is replaced by a
   same-length valid member holding a marker. A whole gzip file that cannot be
   refitted is rewritten atomically instead;
2. Python bytes literals (`b'...'`, also inside up to three JSON escapings) are
   decoded and searched; one that holds ours is overwritten whole with a same-length
   marker;
3. runs of base64 of at least `MIN_B64` characters, with layout allowed inside (white
   space, YAML indentation, quotes, backslashes, escapes such as `\\n`), are decoded and
   searched; since a run may start with a word that only layout separates from it (a
   MIME header's `base64` before the blank line), it is also decoded from its second
   and third piece. A changed layer is re-encoded: base64 of same-length bytes has the
   same length, written back at the positions the characters came from, so line
   breaks and indentation stay where they were;
4. the raw envelope, literally (pickled bytes, the file `seed_random` wrote);
5. the base64 text as a skeleton: the same layout (and quoted-printable soft line
   breaks) between its characters is ignored, so folded, quoted, line-wrapped,
   indented and JSON-escaped copies are found however short their pieces; only the
   matched base64 characters are overwritten, in place, with base64 characters.

Bounds: at most `MAX_DEPTH` nested layers, `MAX_DECODED` bytes decoded per scrub (all
layers and files together), files up to `MAX_FILE` bytes, and a wall-clock limit
(`TIME_LIMIT` seconds per `Scrubber`). What a bound stops is not searched further and
is recorded in `Scrubber.incomplete` (path -> "too large", "depth", "decode budget" or
"time"; after the time limit, "N files not searched"), which the cloud-init module
logs by name and count, never content. The rest of that file is still searched
(depth, decode budget), or the file is left as it was (too large, time).

The filler is base64 where the original was (it decodes to a `[seedtool: scrubbed]`
marker and zero bytes), so cloud-init's `seed_random`, if it read it again, would
mix a harmless constant.

Not scrubbed: the systemd journal (hash-chained: editing an entry corrupts the file;
cloud-init logs no user-data content there) and what the platform still holds (NoCloud
ISO, IMDS), which a later boot may read again: the ledger makes such a copy worthless
for crediting.

Standard library only. Never logs or returns what it replaces: names and counts only.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import codecs
import gzip
import json
import os
import re
import struct
import time
import zlib
from collections.abc import Iterable, Sequence
from email.message import Message
from pathlib import Path
from typing import Any

from ..shared import envelope
from ..shared.errors import EnvelopeError
from ..shared.fileio import atomic_write

#: cloud-init's places, relative to the root; waagent: DataSourceAzure's data_dir
DEFAULT_TREES = ("var/lib/cloud", "run/cloud-init", "var/log", "var/lib/waagent")
#: never edited: hash-chained binary logs
EXCLUDED_DIRS = ("var/log/journal", "run/log/journal")
#: files larger than this are not searched (and reported); a fresh VM's are far smaller
MAX_FILE = 32 * 1024 * 1024
#: bytes decoded (base64, gzip, bytes literals) per Scrubber, all layers together
MAX_DECODED = 64 * 1024 * 1024
#: kept for callers of the old name: one gzip member may decompress to at most this
MAX_GUNZIP = MAX_DECODED
#: nested encodings followed (GCE instance-data.json: base64 > JSON > base64 > gzip)
MAX_DEPTH = 5
#: seconds per Scrubber (a boot's scrub takes well under one)
TIME_LIMIT = 20.0
#: the shortest base64 run decoded: 48 bytes, less than any form of an envelope holds
MIN_B64 = 64
#: the shortest literal searched for (a credited datasource seed may be short)
MIN_NEEDLE = 16
_MARKER = "[seedtool: {}]"
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_MEMBER = b"\x1f\x8b\x08"
_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
#: deleted in the compacted view (after escapes like \n are blanked)
_LAYOUT = b" \t\r\n\f\v\"'\\"
_KEPT = re.compile(rb"[^ \t\r\n\f\v\"'\\]+")
_B64_RUN = re.compile(rb"[A-Za-z0-9+/]{%d,}" % MIN_B64)
#: a Python bytes literal, possibly inside a JSON string (its backslashes doubled)
_BYTES_LITERAL = re.compile(
    rb"(?<![A-Za-z0-9_])b(?P<e>\\*)(?P<q>['\"])"
    rb"(?P<c>(?:[^\\'\"\r\n]|\\+[^\r\n]|(?!(?P=e)(?P=q))['\"]){%d,}?)(?P=e)(?P=q)" % MIN_B64
)
_QP_BREAK = re.compile(rb"=(?=\r|\n|\\+[rn])")
_CHUNK = 1 << 16
#: an empty, non-final stored deflate block (RFC 1951 3.2.4): padding in a member
_EMPTY_STORED = b"\x00\x00\x00\xff\xff"


class _Target:
    """One secret: its raw bytes and, when it travels as base64, the text's core."""

    __slots__ = ("raw", "core", "raw_fill", "core_fill")

    def __init__(self, raw: bytes, label: str = "scrubbed") -> None:
        self.raw = raw
        text = base64.b64encode(raw)
        self.core = text.rstrip(b"=")  # the padding reveals nothing
        self.raw_fill = filler(raw, label)
        self.core_fill = filler(text, label)[: len(self.core)]


class Needles(tuple):
    """The literal forms (raw envelope, canonical base64) of what may be scrubbed.

    Built only from parsed seedtool envelopes (or a datasource seed the caller
    credited, `Needles.secret`); it carries the targets the layered search uses.
    """

    targets: tuple[_Target, ...]

    def __new__(cls, targets: Iterable[_Target] = ()) -> Needles:
        ts = tuple(targets)
        forms: set[bytes] = set()
        for t in ts:
            forms.add(t.raw)
            forms.add(base64.b64encode(t.raw))
        self = super().__new__(cls, sorted(forms, key=len, reverse=True))
        self.targets = ts
        return self

    def __add__(self, other: Any) -> Needles:
        other_t = other.targets if isinstance(other, Needles) else as_needles(other).targets
        seen = {t.raw for t in self.targets}
        return Needles(self.targets + tuple(t for t in other_t if t.raw not in seen))

    @classmethod
    def secret(cls, raw: bytes) -> Needles:
        """A non-envelope secret the caller owns (a credited datasource seed)."""
        return cls([_Target(bytes(raw))] if len(raw) >= MIN_NEEDLE else [])


def needles_for(data: str | bytes | None) -> Needles:
    """The forms of `data` to scrub: empty unless `data` is a seedtool envelope.

    `data` is the envelope as cloud-init handed it over (base64 text, possibly with
    line breaks, or raw bytes); anything that does not parse is not ours.
    """
    if not isinstance(data, (str, bytes, bytearray)) or not data:
        return Needles()
    try:
        raw = envelope.decode_text(bytes(data) if isinstance(data, bytearray) else data)
        envelope.parse(raw)
    except EnvelopeError:
        return Needles()
    return Needles([_Target(raw)])


def as_needles(needles: Sequence[bytes]) -> Needles:
    """`needles` as Needles; a plain list counts only its elements that are envelopes."""
    if isinstance(needles, Needles):
        return needles
    out = Needles()
    for n in needles:
        out = out + needles_for(n)
    return out


def filler(needle: bytes, label: str = "scrubbed") -> bytes:
    """A replacement of exactly len(needle) bytes; valid base64 when the needle was."""
    n = len(needle)
    marker = _MARKER.format(label).encode("ascii", "replace")
    body = needle.rstrip(b"=")
    pad = n - len(body)
    if body and pad <= 2 and all(c in _B64 for c in body) and n % 4 == 0:
        try:
            decoded_len = len(base64.b64decode(needle, validate=True))
        except (binascii.Error, ValueError):
            decoded_len = -1
        if decoded_len >= 0:
            plain = (marker + b"\x00" * decoded_len)[:decoded_len]
            out = base64.b64encode(plain)
            if len(out) == n:
                return out
    # not base64 (raw bytes, or a line-wrapped piece): a plain same-length marker
    return (marker + b"." * n)[:n]


class _Stop(Exception):
    """A bound was hit; the reason is recorded."""


class Scrubber:
    """One scrub: the targets, the bounds shared by everything it searches, the report.

    `changed` lists the files edited, `incomplete` maps what was not fully searched
    (a path, or "memory") to why, `replaced` counts the copies replaced.
    """

    def __init__(self, needles: Sequence[bytes], label: str = "scrubbed", *,
                 max_decoded: int = MAX_DECODED, time_limit: float = TIME_LIMIT,
                 max_file: int = MAX_FILE, max_depth: int = MAX_DEPTH) -> None:
        n = as_needles(needles)
        self.targets = tuple(_Target(t.raw, label) for t in n.targets)
        self.label = label
        self.decoded_left = max_decoded
        self.deadline = time.monotonic() + time_limit
        self.max_file = max_file
        self.max_depth = max_depth
        self.changed: list[str] = []
        self.incomplete: dict[str, str] = {}
        self.replaced = 0
        self._where = "memory"
        self._min_len = min((len(t.raw) for t in self.targets), default=0)

    # --- bookkeeping ---------------------------------------------------------------

    def _note(self, reason: str) -> None:
        self.incomplete.setdefault(self._where, reason)

    def _check_time(self) -> None:
        if time.monotonic() > self.deadline:
            self._note("time")
            raise _Stop

    def _spend(self, n: int) -> bool:
        if n > self.decoded_left:
            self._note("decode budget")
            return False
        self.decoded_left -= n
        return True

    # --- bytes ---------------------------------------------------------------------

    def scrub_bytes(self, blob: bytes) -> tuple[bytes, int]:
        """`blob` with every copy replaced (same length), and how many were."""
        if not self.targets or len(blob) < min(self._min_len, MIN_B64):
            return blob, 0
        try:
            self._check_time()
            out, n = self._layer(bytes(blob), 0)
        except _Stop:
            return blob, 0
        self.replaced += n
        return out, n

    def _layer(self, data: bytes, depth: int) -> tuple[bytes, int]:
        # Containers first, outer kinds before inner, so that an edit never lands
        # inside one whose integrity check it would break (a stored gzip member shows
        # its text, also inside a bytes literal; base64 of a member can show the
        # envelope's text at an aligned offset).
        self._check_time()
        data, count = self._gzip_members(data, depth)
        if b"b'" in data or b'b"' in data or b"b\\" in data:
            data, n = self._bytes_literals(data, depth)
            count += n
        data, n = self._base64_runs(data, depth)
        count += n
        for t in self.targets:  # the raw envelope
            hits = data.count(t.raw)
            if hits:
                data = data.replace(t.raw, t.raw_fill)
                count += hits
        # the skeleton of the base64 text, then again across quoted-printable breaks
        data, n = self._skeleton(data, *_compact(data, qp=False))
        count += n
        if _QP_BREAK.search(data):
            data, n = self._skeleton(data, *_compact(data, qp=True))
            count += n
        return data, count

    def _may_open(self, depth: int) -> bool:
        """Whether a container found at `depth` may be opened: time is left (else _Stop)
        and the depth limit is not reached (else noted)."""
        self._check_time()
        if depth >= self.max_depth:
            self._note("depth")
            return False
        return True

    def _gzip_members(self, data: bytes, depth: int) -> tuple[bytes, int]:
        count = 0
        buf: bytearray | None = None
        i = data.find(_GZIP_MEMBER)
        while i >= 0:
            if not self._may_open(depth):
                break
            end = i + 3
            member = self._gunzip_at(data, i)
            if member is not None:
                plain, size = member
                new_plain, n = self._layer(plain, depth + 1)
                if n:
                    buf = bytearray(data) if buf is None else buf
                    buf[i:i + size] = _refit_gzip(new_plain, data[i:i + size], self.label)
                    count += n
                end = i + size
            i = data.find(_GZIP_MEMBER, end)
        return (bytes(buf) if buf is not None else data), count

    def _base64_runs(self, data: bytes, depth: int) -> tuple[bytes, int]:
        view, compacted, ckpt = _compact(data, qp=False)
        count = 0
        buf: bytearray | None = None
        for m in _B64_RUN.finditer(compacted):
            if not self._may_open(depth):
                break
            a, b = m.span()
            starts, pos = [], a
            for s, e in _spans(view, ckpt, a, b, limit=3):
                if b - pos >= MIN_B64:
                    starts.append(pos)
                pos += e - s
            for start in starts:
                chars = compacted[start:b]
                if len(chars) % 4 == 1:
                    chars = chars[:-1]
                if not self._spend(len(chars) * 3 // 4):
                    break
                decoded = binascii.a2b_base64(chars + b"=" * (-len(chars) % 4))
                new, n = self._layer(decoded, depth + 1)
                if n:
                    text = base64.b64encode(new).rstrip(b"=")
                    assert len(text) == len(chars)
                    buf = bytearray(data) if buf is None else buf
                    _write(buf, _spans(view, ckpt, start, start + len(chars)), text)
                    count += n
                    break
        return (bytes(buf) if buf is not None else data), count

    def _bytes_literals(self, data: bytes, depth: int) -> tuple[bytes, int]:
        count = 0
        buf: bytearray | None = None
        for m in _BYTES_LITERAL.finditer(data):
            if not self._may_open(depth):
                break
            for inner in _unrepr(m.group("c")):
                if len(inner) < self._min_len or not self._spend(len(inner)):
                    continue
                _, n = self._layer(inner, depth + 1)
                if n:
                    s, e = m.span("c")
                    buf = bytearray(data) if buf is None else buf
                    buf[s:e] = (_MARKER.format(self.label).encode() + b"." * (e - s))[: e - s]
                    count += n
                    break
        return (bytes(buf) if buf is not None else data), count

    def _skeleton(self, data: bytes, view: bytes, compacted: bytes,
                  ckpt: list[int]) -> tuple[bytes, int]:
        count = 0
        buf: bytearray | None = None
        for t in self.targets:
            k = compacted.find(t.core)
            while k >= 0:
                if buf is None:
                    buf = bytearray(data)
                _write(buf, _spans(view, ckpt, k, k + len(t.core)), t.core_fill)
                count += 1
                k = compacted.find(t.core, k + len(t.core))
        return (bytes(buf) if buf is not None else data), count

    def _gunzip_at(self, data: bytes, i: int) -> tuple[bytes, int] | None:
        """The member at data[i:] decompressed and its length, or None if it is none.

        Fed in growing pieces, so a false or tiny member costs little to try.
        """
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out: list[bytes] = []
        produced, pos, step, limit = 0, i, 512, self.decoded_left
        try:
            while not d.eof:
                if d.unconsumed_tail:
                    piece = d.unconsumed_tail
                elif pos < len(data):
                    piece = data[pos:pos + step]
                    pos += len(piece)
                    step = min(step * 4, 1 << 20)
                else:
                    return None  # truncated
                try:
                    got = d.decompress(piece, limit - produced + 1)
                except zlib.error:
                    return None
                produced += len(got)
                if produced > limit:
                    self._note("decode budget")
                    return None
                out.append(got)
        finally:
            # charged whether or not it was a member: false starts count against the bound
            self.decoded_left -= min(produced, self.decoded_left)
        return b"".join(out), pos - i - len(d.unused_data)

    # --- files ---------------------------------------------------------------------

    def scrub_file(self, path: str | os.PathLike[str]) -> int:
        """Scrub one regular file in place; the number of copies replaced (0 if none).

        Not fsynced: `scrub_tree` flushes the files it changed when asked to.
        """
        if not self.targets:
            return 0
        self._where = os.fspath(path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return 0
        try:
            st = os.fstat(fd)
            if st.st_mode & 0o170000 != 0o100000:
                return 0
            if st.st_size > self.max_file:
                self._note("too large")
                return 0
            data = os.pread(fd, st.st_size, 0)
            if data.startswith(_GZIP_MAGIC):
                whole = self._whole_gzip(path, data, st.st_mode & 0o7777)
                if whole is not None:
                    if whole:
                        self.changed.append(os.fspath(path))
                    return whole
            new, count = self.scrub_bytes(data)
            if count and new != data:
                # same length: overwrite in place, so a process appending keeps its offset
                os.pwrite(fd, new, 0)
                self.changed.append(os.fspath(path))
            return count
        finally:
            os.close(fd)

    def _whole_gzip(self, path: str | os.PathLike[str], data: bytes, mode: int) -> int | None:
        """A file that is one gzip member; None when it is not (searched as bytes)."""
        try:
            self._check_time()
            member = self._gunzip_at(data, 0)
            if member is None or member[1] != len(data):
                return None
            plain, _ = member
            new_plain, n = self._layer(plain, 1)
        except _Stop:
            return 0
        if not n:
            return 0
        self.replaced += n
        fitted = _fit_gzip(new_plain, len(data), data)
        if fitted is not None:
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.pwrite(fd, fitted, 0)
            finally:
                os.close(fd)
        else:
            atomic_write(path, gzip.compress(new_plain, mtime=0), mode=mode, durable=False)
        return n

    def scrub_tree(self, root: Path, trees: Iterable[str] = DEFAULT_TREES,
                   durable: bool = True) -> list[str]:
        """Scrub every regular file under root/tree (symlinks not followed); files changed."""
        if not self.targets:
            return []
        before = len(self.changed)
        excluded = {os.path.normpath(root / e) for e in EXCLUDED_DIRS}
        skipped = 0
        for tree in trees:
            for dirpath, dirnames, filenames in os.walk(root / tree, followlinks=False):
                dirnames[:] = [d for d in dirnames
                               if os.path.normpath(os.path.join(dirpath, d)) not in excluded]
                for name in filenames:
                    p = os.path.join(dirpath, name)  # str, not Path: this loop runs per file
                    if time.monotonic() > self.deadline:
                        skipped += 1
                        continue
                    try:
                        self.scrub_file(p)
                    except (OSError, EnvelopeError):
                        continue
        if skipped:
            self.incomplete[f"{skipped} files not searched"] = "time"
        changed = self.changed[before:]
        if durable:
            flush(changed)
        return changed

    # --- objects -------------------------------------------------------------------

    def scrub_object(self, obj: Any) -> int:
        """Scrub `str`/`bytes` held by an object graph in place; the number replaced.

        Walks dicts, lists, email messages and the attributes of cloud-init's own
        objects (the datasource's `userdata_raw`, `userdata`, `metadata`, crawled
        metadata, `sys_cfg`). Immutable containers (tuples) are left alone.
        """
        if not self.targets:
            return 0
        self._where = "memory"
        return self._visit_obj(obj, set(), 0)

    def _leaf(self, value: Any) -> tuple[Any, int]:
        if isinstance(value, (bytes, bytearray)):
            new, n = self.scrub_bytes(bytes(value))
            return (type(value)(new), n) if n else (value, 0)
        if isinstance(value, str):
            if len(value) < min(self._min_len, MIN_B64):
                return value, 0
            enc = value.encode("utf-8", "surrogateescape")
            new, n = self.scrub_bytes(enc)
            return (new.decode("utf-8", "surrogateescape"), n) if n else (value, 0)
        return value, -1  # not a leaf

    def _visit(self, value: Any, seen: set[int], depth: int) -> tuple[Any, int]:
        new, n = self._leaf(value)
        if n >= 0:
            return new, n
        return value, self._visit_obj(value, seen, depth + 1)

    def _visit_obj(self, obj: Any, seen: set[int], depth: int) -> int:
        if id(obj) in seen or depth > 12:
            return 0
        seen.add(id(obj))
        count = 0
        if isinstance(obj, dict):
            for k in list(obj):
                obj[k], n = self._visit(obj[k], seen, depth)
                count += n
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                obj[i], n = self._visit(v, seen, depth)
                count += n
        elif isinstance(obj, Message):
            if obj.is_multipart():
                for part in obj.get_payload():
                    count += self._visit_obj(part, seen, depth + 1)
            else:
                new, n = self._visit(obj.get_payload(), seen, depth)
                if n:
                    obj.set_payload(new)
                    count += n
        elif type(obj).__module__.startswith("cloudinit.") and hasattr(obj, "__dict__"):
            # everything, system config included: after consume_data cloud-init hands the
            # merged config (user-data's random_seed too) to the datasource as sys_cfg
            for k, v in list(vars(obj).items()):
                new, n = self._visit(v, seen, depth)
                if n > 0 and new is not v:
                    setattr(obj, k, new)
                count += max(n, 0)
        return count


# --- the compacted view ------------------------------------------------------------


def _compact(data: bytes, qp: bool) -> tuple[bytes, bytes, list[int]]:
    """(view, compacted, checkpoints): `view` is `data` with escapes blanked (same
    length), `compacted` the view without layout bytes, checkpoints[i] the length of
    compacted before view[i * _CHUNK]."""
    view = data
    if qp:  # quoted-printable soft line breaks (RFC 2045 6.7 rule 5), also JSON-escaped
        view = _QP_BREAK.sub(b" ", view)
    if b"\\" in view:
        for esc in (b"\\n", b"\\r", b"\\t"):
            view = view.replace(esc, b"  ")
    parts, ckpt, total = [], [], 0
    for j in range(0, len(view), _CHUNK):
        ckpt.append(total)
        part = view[j:j + _CHUNK].translate(None, _LAYOUT)
        parts.append(part)
        total += len(part)
    return view, b"".join(parts), ckpt or [0]


def _spans(view: bytes, ckpt: list[int], a: int, b: int,
           limit: int = 0) -> list[tuple[int, int]]:
    """The byte ranges of `view` that compacted[a:b] came from (the first `limit`)."""
    i = max(0, bisect.bisect_right(ckpt, a) - 1)
    k = ckpt[i]
    out: list[tuple[int, int]] = []
    for m in _KEPT.finditer(view, i * _CHUNK):
        s, e = m.span()
        n = e - s
        if k + n <= a:
            k += n
            continue
        lo, hi = s + max(0, a - k), s + min(n, b - k)
        out.append((lo, hi))
        k += n
        if k >= b or len(out) == limit:
            break
    return out


def _write(buf: bytearray, spans: list[tuple[int, int]], text: bytes) -> None:
    pos = 0
    for s, e in spans:
        buf[s:e] = text[pos:pos + e - s]
        pos += e - s


def _unrepr(content: bytes) -> list[bytes]:
    """What a Python bytes literal's content may stand for: decoded as it is, and
    after removing up to three JSON string escapings around it (a JSON file quoting
    a log line quoting a value)."""
    levels = [content]
    while len(levels) < 4 and b"\\" in levels[-1]:
        try:
            text = json.loads(b'"' + levels[-1] + b'"')
        except (ValueError, RecursionError):
            break
        if not isinstance(text, str) or not text.isascii():
            break
        levels.append(text.encode("ascii"))
    out = []
    for level in reversed(levels):
        try:
            out.append(codecs.escape_decode(level)[0])
        except (ValueError, UnicodeDecodeError):
            continue
    return out


# --- gzip refitting ---------------------------------------------------------------


def _fit_gzip(plain: bytes, size: int, original: bytes) -> bytes | None:
    """A gzip member of exactly `size` bytes decompressing to `plain`, or None."""
    mtime = original[4:8] if len(original) >= 8 else b"\x00" * 4
    trailer = struct.pack("<II", zlib.crc32(plain), len(plain) & 0xFFFFFFFF)
    for level in (9, 6, 1):
        c = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        body = c.compress(plain) + c.flush()
        slack = size - 10 - len(body) - 8
        if slack == 0:
            return b"\x1f\x8b\x08\x00" + mtime + b"\x00\xff" + body + trailer
        if slack < 2:
            continue
        blocks = max(0, -(-(slack - 2 - 0xFFFF) // 5))
        xlen = slack - 2 - 5 * blocks
        # one subfield (SI1 SI2 LEN data) when it fits; readers skip XLEN bytes anyway
        extra = (b"ST" + struct.pack("<H", xlen - 4) + bytes(xlen - 4)) if xlen >= 4 \
            else bytes(xlen)
        return (b"\x1f\x8b\x08\x04" + mtime + b"\x00\xff" + struct.pack("<H", xlen) + extra
                + _EMPTY_STORED * blocks + body + trailer)
    return None


def _refit_gzip(plain: bytes, original: bytes, label: str) -> bytes:
    """`plain` recompressed to len(original) bytes, or a same-length marker member."""
    fitted = _fit_gzip(plain, len(original), original)
    if fitted is not None:
        return fitted
    marker = _MARKER.format(label).encode() + b"\n"
    for pad in range(4):
        fitted = _fit_gzip(marker + b" " * pad, len(original), original)
        if fitted is not None:
            return fitted
    return (marker + b"." * len(original))[: len(original)]  # shorter than any member


# --- the functions earlier callers use ---------------------------------------------


def scrub_bytes(blob: bytes, needles: Sequence[bytes],
                label: str = "scrubbed") -> tuple[bytes, int]:
    return Scrubber(needles, label).scrub_bytes(blob)


def scrub_file(path: str | os.PathLike[str], needles: Sequence[bytes],
               label: str = "scrubbed") -> int:
    return Scrubber(needles, label).scrub_file(path)


def scrub_tree(root: Path, needles: Sequence[bytes], trees: Iterable[str] = DEFAULT_TREES,
               label: str = "scrubbed", durable: bool = True) -> list[str]:
    """Scrub every regular file under root/tree (symlinks not followed); files changed.

    With `durable` each changed file is fsynced once all are edited (`flush`);
    without, the kernel's normal write-back makes them durable.
    """
    return Scrubber(needles, label).scrub_tree(root, trees, durable)


def scrub_object(obj: Any, needles: Sequence[bytes], label: str = "scrubbed") -> int:
    return Scrubber(needles, label).scrub_object(obj)


def flush(paths: Sequence[str]) -> None:
    """fsync each of `paths`; errors are ignored (the scrub itself has happened)."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
