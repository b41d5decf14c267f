"""Find secrets an image must not carry, wherever they are: the scan behind `bake --check`.

Every VM made from an image shares whatever the image holds (docs/threat-model.md,
C10). `scan(fs)` walks the whole target through `TargetFS` (a directory, or a disk
image through debugfs or libguestfs) and reads every regular file in pieces, looking for:

* PEM private keys, whatever their label (PKCS#8, RSA, EC, ENCRYPTED, OPENSSH...),
  also inside JSON or YAML strings where line breaks are written `\\n`;
* PuTTY private keys;
* dropbear's binary keys (dropbear's own format: SSH wire strings and mpints, as
  dropbearkey(1) writes them), told apart from public key blobs by their fields;
* seedtool envelopes, raw (envelope.MAGIC and a header `envelope.parse` accepts) and in
  their base64 text form (as `seedtool userdata` writes them), also inside one gzip layer.

Files are read in pieces of CHUNK bytes; each piece is searched with OVERLAP bytes of
the next one in view, so a marker at the end of a large file or across a piece boundary
is found. The walk lists symlinks and never follows them, so it cannot leave the target
or loop; each real directory is listed once.

The scan is bounded (ScanBounds: files, bytes, seconds). Reaching a bound is not a pass:
the report says where the scan stopped. Never keeps or returns file contents: a hit
names a path and a kind.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import stat
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..image.fs import FileStat, TargetFS, resolve
from ..shared import envelope
from ..shared.errors import SeedtoolError

#: bytes per read; each piece is searched with the next OVERLAP bytes in view
CHUNK = 1 << 20
#: more than the longest PEM key (RSA-16384 is about 13 KiB, JSON-escaped 14 KiB) and
#: the longest envelope text (envelope.MAX_TEXT), so a hit can be judged whole
OVERLAP = 64 * 1024
#: dropbear keys are a few KiB at most (RSA-4096: about 2.3 KiB)
DROPBEAR_MAX = 64 * 1024
#: gzip files this small are also searched decompressed (cloud-init accepts gzip
#: user-data, e.g. in a NoCloud seed), at most GZIP_OUT bytes of it
GZIP_MAX = 1 << 20
GZIP_OUT = 16 << 20
#: run-time file systems, empty in an image: never walked (a live root's /proc is endless)
PSEUDO = ("/proc", "/sys", "/dev", "/run")
#: walked first, so a bound, if reached, is reached in the bulk of /usr
FIRST = ("/etc", "/root", "/home", "/var/lib/cloud", "/srv", "/opt", "/tmp", "/var/tmp",
         "/var", "/boot", "/usr/local")


@dataclass(frozen=True)
class ScanBounds:
    """What one scan may cost; reaching any of these stops it with a report."""

    max_files: int = 1_000_000
    max_bytes: int = 64 << 30
    max_seconds: float = 1800.0


#: dpkg's list of each package's files with their MD5 (dpkg(1), deb(5))
DPKG_INFO = "/var/lib/dpkg/info"


@dataclass(frozen=True)
class Hit:
    path: str
    #: seedtool-key, encrypted, openssh, pem, putty, dropbear, envelope
    kind: str
    #: "gzip" when found inside one gzip layer
    inside: str = ""


@dataclass
class ScanReport:
    hits: list[Hit] = field(default_factory=list)
    #: (path, why) where the scan stopped at a bound; at most one
    stopped: tuple[str, str] | None = None
    #: files that could not be read, by the top directory they are in
    unreadable: dict[str, int] = field(default_factory=dict)
    #: (directory, reason) that could not be listed
    unlisted: list[tuple[str, str]] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    #: hits in files a Debian package ships, unchanged: the same in every install, public
    distributed: list[Hit] = field(default_factory=list)


# --- what a secret looks like ------------------------------------------------------------------

# a line break, raw or as written inside a JSON/YAML string
_NL = rb"(?:\r?\n|\\r\\n|\\n)"
_B64 = rb"(?:[A-Za-z0-9+=]|\\?/)"
#: a header followed by a body (optional RFC 1421 headers, then base64): a bare header
#: string, as in a library's source code, is not a key (the label is assembled so that
#: this source file holds no PEM header line itself)
_KEY_LABEL = rb"PRIVATE" + rb" KEY-----"
_PEM = re.compile(
    rb"-----BEGIN ((?:[A-Z0-9]+ )*)" + _KEY_LABEL + _NL
    + rb"(?:[A-Za-z-]+:[^\n\\]*" + _NL + rb")*(?:\s|\\[rn])*" + _B64 + rb"{16}"
)
_PEM_END = re.compile(rb"-----END ")
_PUTTY = re.compile(rb"PuTTY-User-Key-File-\d+: [^\r\n]*\r?\n(?:[^\r\n]*\r?\n){0,40}?"
                    rb"Private-Lines: \d+")
#: DER of the Ed25519 algorithm identifier (OID 1.3.101.112, RFC 8410): seedtool's keys
_ED25519_ALG = bytes.fromhex("300506032b6570")
#: the first six bytes of every envelope (magic, version, flags) of both formats, and
#: their base64: envelope.encode_text starts with the same eight characters for every
#: envelope of one format
_ENV_RAWS = (envelope.MAGIC + bytes([envelope.VERSION, 0]),
             envelope.MAGIC + bytes([envelope.VERSION_BOUND, envelope.FLAG_BOUND]))
_ENV_TEXTS = tuple(base64.b64encode(r) for r in _ENV_RAWS)
_ENV_TEXT_RUN = re.compile(rb"(?:[A-Za-z0-9+/=]|\s|\\[rn])+")
#: dropbear key types and how many wire fields a *private* key file has after the name
#: (dropbear's signkey.c / rsa.c / dss.c / ecdsa.c / ed25519.c; public blobs have fewer)
_DROPBEAR = {b"ssh-rsa": 5, b"ssh-dss": 5, b"ssh-ed25519": 1, b"ecdsa-sha2-nistp256": 3,
             b"ecdsa-sha2-nistp384": 3, b"ecdsa-sha2-nistp521": 3}


def _pem_kind(buf: bytes, m: re.Match[bytes]) -> str:
    label = m.group(1)
    if label == b"ENCRYPTED ":
        return "encrypted"
    if label == b"OPENSSH ":
        return "openssh"
    if label == b"":
        end = _PEM_END.search(buf, m.end())
        body = buf[m.start() + 11 + len(_KEY_LABEL):end.start() if end else len(buf)]
        body = body.replace(b"\\n", b"").replace(b"\\r", b"").replace(b"\\/", b"/")
        try:
            der = base64.b64decode(b"".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            der = b""
        if _ED25519_ALG in der[:16]:
            return "seedtool-key"
    return "pem"


def _is_envelope(raw: bytes) -> bool:
    total = envelope.length_at(raw)
    if not total or total > len(raw):
        return False
    try:
        envelope.parse(raw[:total])
    except (envelope.MalformedEnvelope, ValueError, struct.error):
        return False
    return True


def _envelope_text_at(buf: bytes, pos: int) -> bool:
    m = _ENV_TEXT_RUN.match(buf, pos, pos + 2 * envelope.MAX_TEXT)
    if m is None:
        return False
    text = m.group(0).replace(b"\\n", b"").replace(b"\\r", b"")
    text = b"".join(text.split())
    text = text[: len(text) - len(text) % 4]
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        # padding in the middle: the envelope ends there
        end = text.find(b"=")
        try:
            raw = base64.b64decode(text[: end + (4 - end % 4) % 4], validate=True)
        except (binascii.Error, ValueError):
            return False
    return _is_envelope(raw)


def dropbear_key(data: bytes) -> bool:
    """True if `data` is a whole dropbear private key file."""
    pos, fields = 0, []
    while pos < len(data):
        if pos + 4 > len(data):
            return False
        (n,) = struct.unpack_from(">I", data, pos)
        pos += 4
        if pos + n > len(data):
            return False
        fields.append(data[pos:pos + n])
        pos += n
    if not fields or fields[0] not in _DROPBEAR:
        return False
    want = _DROPBEAR[fields[0]]
    if len(fields) - 1 != want:
        return False
    return fields[0] != b"ssh-ed25519" or len(fields[1]) == 64  # private||public


def _search(buf: bytes, before: int) -> str | None:
    """The kind of the first secret starting before offset `before`, or None."""
    for m in _PEM.finditer(buf):
        if m.start() >= before:
            break
        return _pem_kind(buf, m)
    for head in _ENV_RAWS:
        pos = buf.find(head)
        while 0 <= pos < before:
            if _is_envelope(buf[pos:pos + envelope.MAX_SIZE]):
                return "envelope"
            pos = buf.find(head, pos + 1)
    for head in _ENV_TEXTS:
        pos = buf.find(head)
        while 0 <= pos < before:
            if _envelope_text_at(buf, pos):
                return "envelope"
            pos = buf.find(head, pos + 1)
    m2 = _PUTTY.search(buf)
    if m2 is not None and m2.start() < before:
        return "putty"
    return None


class _FileScan:
    """One file's stream of pieces; `kind` is set at the first secret found."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.carry = b""
        self.kind: str | None = None
        self.head = b""
        self.gz: list[bytes] | None = [] if size <= GZIP_MAX else None

    def feed(self, piece: bytes) -> None:
        if self.gz is not None:
            self.gz.append(piece)
        if len(self.head) < DROPBEAR_MAX:
            self.head += piece[:DROPBEAR_MAX - len(self.head)]
        if self.kind is not None:
            return
        buf = self.carry + piece
        limit = len(buf) - OVERLAP
        if limit > 0:
            self.kind = _search(buf, limit)
            self.carry = buf[limit:]
        else:
            self.carry = buf

    def finish(self) -> tuple[str, str] | None:
        if self.kind is None and self.carry:
            self.kind = _search(self.carry, len(self.carry))
        if self.kind is None and self.size <= DROPBEAR_MAX and dropbear_key(self.head):
            self.kind = "dropbear"
        if self.kind is not None:
            return self.kind, ""
        if self.gz is not None and self.gz and self.gz[0][:2] == b"\x1f\x8b":
            inner = _gunzip(b"".join(self.gz))
            if inner:
                sub = _FileScan(len(inner))
                sub.gz = None
                for i in range(0, len(inner), CHUNK):
                    sub.feed(inner[i:i + CHUNK])
                found = sub.finish()
                if found is not None:
                    return found[0], "gzip"
        return None


def _gunzip(data: bytes) -> bytes:
    d = zlib.decompressobj(wbits=31)
    try:
        return d.decompress(data, GZIP_OUT)
    except zlib.error:
        return b""


# --- the walk ----------------------------------------------------------------------------------


def _walk(fs: TargetFS, report: ScanReport, skip: Callable[[str], bool]
          ) -> Iterator[tuple[str, str, FileStat]]:
    """(top, path, stat) of each regular file, FIRST's directories first, each directory
    once; symlinks are never followed (a link's target is reached, if at all, by its
    real path)."""
    walked: set[str] = set()
    for top in (*FIRST, "/"):
        st = fs.stat(top)
        if st is None or not stat.S_ISDIR(st.mode) or top in walked:
            continue
        stack = [top]
        while stack:
            d = stack.pop()
            if d in walked or d in PSEUDO:
                continue
            walked.add(d)
            try:
                entries = fs.scandir(d)
            except SeedtoolError as e:
                report.unlisted.append((d, str(e)))
                continue
            subdirs = []
            for name, est in entries:
                path = f"{d.rstrip('/')}/{name}"
                if stat.S_ISDIR(est.mode):
                    if path not in walked and path not in FIRST:
                        subdirs.append(path)
                elif stat.S_ISREG(est.mode) and not skip(path):
                    yield top, path, est
            stack.extend(reversed(subdirs))


def scan(fs: TargetFS, bounds: ScanBounds | None = None,
         skip: Callable[[str], bool] = lambda p: False,
         clock: Callable[[], float] = time.monotonic) -> ScanReport:
    """Search every regular file of `fs` (but those `skip` names) within `bounds`."""
    bounds = bounds or ScanBounds()
    report = ScanReport()
    deadline = clock() + bounds.max_seconds
    batch: list[tuple[str, str, FileStat]] = []

    def run_batch() -> bool:
        """Read the batch; False when the time bound stopped it."""
        tops = {p: t for t, p, _ in batch}
        sizes = {p: st.size for _, p, st in batch}
        scans: dict[str, _FileScan] = {}
        done: set[str] = set()
        cur: str | None = None

        def close(path: str) -> None:
            found = scans[path].finish()
            done.add(path)
            if found is not None:
                report.hits.append(Hit(path, found[0], found[1]))

        for path, piece in fs.read_chunks([p for _, p, _ in batch], CHUNK):
            if path != cur:
                if cur is not None and cur in scans:
                    close(cur)
                cur = path
                if clock() > deadline:
                    report.stopped = (path, f"the {bounds.max_seconds:g} s time bound")
                    order = [p for _, p, _ in batch]
                    unread = order[order.index(path):]
                    report.files -= len(unread)
                    report.bytes -= sum(sizes[p] for p in unread)
                    return False
            if piece is None:
                report.unreadable[tops[path]] = report.unreadable.get(tops[path], 0) + 1
                done.add(path)
                continue
            if path not in scans:
                scans[path] = _FileScan(sizes[path])
            scans[path].feed(piece)
        if cur is not None and cur in scans and cur not in done:
            close(cur)
        return True

    for top, path, st in _walk(fs, report, skip):
        if st.size == 0:
            continue
        if report.files >= bounds.max_files:
            report.stopped = (path, f"the {bounds.max_files} file bound")
            break
        if report.bytes + st.size > bounds.max_bytes:
            report.stopped = (path, f"the {bounds.max_bytes} byte bound")
            break
        report.files += 1
        report.bytes += st.size
        batch.append((top, path, st))
        if len(batch) >= 256 or sum(s.size for _, _, s in batch) >= 64 * CHUNK:
            if not run_batch():
                batch = []
                break
            batch = []
    if batch:
        run_batch()  # also when a bound was met: the files counted before it are searched
    if report.hits:
        _set_aside_distributed(fs, report)
    return report


def _md5(fs: TargetFS, path: str) -> str | None:
    h = hashlib.md5(usedforsecurity=False)
    for _, piece in fs.read_chunks([path], CHUNK):
        if piece is None:
            return None
        h.update(piece)
    return h.hexdigest()


def _set_aside_distributed(fs: TargetFS, report: ScanReport) -> None:
    """Move hits in files that a Debian package ships, byte for byte as shipped (its
    md5sums list says so), to `report.distributed`: an example key in documentation or a
    library's self-test key is in every install of that package, not a secret of this
    image. Byte code under __pycache__ counts as its source file (py3compile makes it
    from the packaged .py at install time)."""
    st = fs.stat(DPKG_INFO)
    if st is None or not stat.S_ISDIR(st.mode):
        return
    lists = [f"{DPKG_INFO}/{n}" for n, est in fs.scandir(DPKG_INFO)
             if n.endswith(".md5sums") and stat.S_ISREG(est.mode)]
    sums: dict[str, str] = {}
    tops: dict[str, str] = {}
    text = b""
    cur = None
    for path, piece in [*fs.read_chunks(lists, CHUNK), (None, None)]:
        if path != cur and text:
            for line in text.decode("utf-8", "surrogateescape").splitlines():
                digest, _, rel = line.partition("  ")
                first, _, rest = rel.partition("/")
                if first not in tops:
                    # merged /usr: packages may list lib/... while the file is at /usr/lib/...
                    try:
                        tops[first] = resolve(fs, "/" + first)
                    except SeedtoolError:
                        tops[first] = "/" + first
                sums[f"{tops[first].rstrip('/')}/{rest}" if rest else tops[first]] = digest
            text = b""
        cur = path
        if piece:
            text += piece
    keep = []
    for hit in report.hits:
        src = hit.path
        head, _, name = src.rpartition("/")
        if head.endswith("/__pycache__") and name.endswith(".pyc"):
            src = f"{head[: -len('/__pycache__')]}/{name.split('.')[0]}.py"
        if src in sums and _md5(fs, src) == sums[src]:
            report.distributed.append(hit)
        else:
            keep.append(hit)
    report.hits = keep
