"""Remove a consumed envelope from the copies cloud-init keeps of user-data.

cloud-init keeps user-data in several places (FACTS "cloud-init"; cloudinit/stages.py,
cloudinit/sources/__init__.py):

* `/var/lib/cloud/instance/user-data.txt` (raw, possibly gzip), `user-data.txt.i`
  (processed MIME) and `cloud-config.txt` (merged cloud-config) — the later
  `modules:config` and `modules:final` stages read their config from the last one;
* `obj.pkl`, the pickled datasource with `userdata_raw` and the processed `userdata`,
  from which cloud-init rewrites all of the above on the next boot of the same instance;
* `/run/cloud-init/combined-cloud-config.json` and `instance-data-sensitive.json`
  (23.x+), and whatever a datasource crawled;
* the in-memory datasource of the running `cloud-init init` process.

How it is done, robustly and without parsing any of those formats: every copy is
replaced in place by a filler of exactly the same length. A length-preserving edit
keeps pickles (which length-prefix their strings), JSON, YAML and MIME valid, and
is safe on a log file another process is appending to. The filler is valid base64
of the same decoded length (it decodes to a marker naming the seed id, padded with
zero bytes), so cloud-init's own `seed_random`, if it ever read it again, would
decode it fine and mix a harmless constant. Gzip files are decompressed, scrubbed
and recompressed. The in-memory datasource is scrubbed too and re-pickled with
cloud-init's own `pkl_store`, so even a gzip `userdata_raw` in obj.pkl is clean.

Not scrubbed: the systemd journal (its entries are hash-chained: editing one would
corrupt the file; cloud-init does not log user-data content there) and user-data
still held by the platform (NoCloud ISO, IMDS), which a later boot may read again:
the ledger makes such a copy worthless for crediting.

Standard library only. Never logs what it replaces, only file names and counts.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import os
import zlib
from collections.abc import Iterable, Sequence
from email.message import Message
from pathlib import Path
from typing import Any

from .. import envelope
from ..errors import EnvelopeError
from ..fileio import atomic_write

#: cloud-init's default places, relative to the root
DEFAULT_TREES = ("var/lib/cloud", "run/cloud-init", "var/log")
#: never edited: hash-chained binary logs
EXCLUDED_DIRS = ("var/log/journal", "run/log/journal")
#: skip files larger than this (a fresh VM's logs are far smaller)
MAX_FILE = 32 * 1024 * 1024
MAX_GUNZIP = 64 * 1024 * 1024
#: shorter pieces of text could occur by chance; envelopes are at least 180 chars
MIN_NEEDLE = 16
_GZIP_MAGIC = b"\x1f\x8b"
_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def needles_for(data: str | bytes) -> list[bytes]:
    """Every form in which `data` (an envelope as delivered) can sit in a file.

    The text as given, split at white space (YAML block scalars keep line breaks),
    and, when it is an envelope, its raw bytes and its canonical base64 text.
    """
    raw_text = data.encode("utf-8", "replace") if isinstance(data, str) else bytes(data)
    found: list[bytes] = []
    for tok in raw_text.split():
        if len(tok) >= MIN_NEEDLE:
            found.append(tok)
    try:
        raw = envelope.decode_text(data)
    except EnvelopeError:
        raw = b""
    if raw:
        found.append(raw)
        found.append(envelope.encode_text(raw).encode("ascii"))
    # longest first, so a token inside a longer needle never leaves a remnant
    return sorted(set(found), key=len, reverse=True)


def filler(needle: bytes, label: str = "scrubbed") -> bytes:
    """A replacement of exactly len(needle) bytes; valid base64 when the needle was."""
    n = len(needle)
    marker = f"[seedtool: {label}]".encode("ascii", "replace")
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


def scrub_bytes(
    blob: bytes, needles: Sequence[bytes], label: str = "scrubbed"
) -> tuple[bytes, int]:
    count = 0
    for needle in needles:
        hits = blob.count(needle)
        if hits:
            blob = blob.replace(needle, filler(needle, label))
            count += hits
    return blob, count


def scrub_file(path: str | os.PathLike[str], needles: Sequence[bytes],
               label: str = "scrubbed") -> int:
    """Scrub one regular file in place; the number of copies replaced (0 if none).

    Not fsynced: `scrub_tree` flushes the files it changed, all at once, when asked to.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        st = os.fstat(fd)
        if not (st.st_mode & 0o170000 == 0o100000) or st.st_size > MAX_FILE:
            return 0
        data = os.pread(fd, st.st_size, 0)
        if data.startswith(_GZIP_MAGIC):
            try:
                plain = _gunzip(data)
            except (OSError, EOFError, zlib.error, ValueError):
                plain = None
            if plain is not None:
                new_plain, count = scrub_bytes(plain, needles, label)
                if count:
                    mode = st.st_mode & 0o7777
                    atomic_write(path, gzip.compress(new_plain, mtime=0), mode=mode,
                                 durable=False)
                return count
        new, count = scrub_bytes(data, needles, label)
        if count:
            # same length: overwrite in place, so a process appending keeps its offset
            os.pwrite(fd, new, 0)
        return count
    finally:
        os.close(fd)


def _gunzip(data: bytes) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = d.decompress(data, MAX_GUNZIP)
    if d.unconsumed_tail:
        raise ValueError("too large")
    return out


def scrub_tree(
    root: Path,
    needles: Sequence[bytes],
    trees: Iterable[str] = DEFAULT_TREES,
    label: str = "scrubbed",
    durable: bool = True,
) -> list[str]:
    """Scrub every regular file under root/tree (symlinks not followed); files changed.

    With `durable` each changed file is fsynced once all are edited (`flush`);
    without, the kernel's normal write-back makes them durable.
    """
    if not needles:
        return []
    changed: list[str] = []
    excluded = {os.path.normpath(root / e) for e in EXCLUDED_DIRS}
    for tree in trees:
        top = root / tree
        for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
            dirnames[:] = [
                d for d in dirnames if os.path.normpath(os.path.join(dirpath, d)) not in excluded
            ]
            for name in filenames:
                p = os.path.join(dirpath, name)  # str, not Path: this loop runs per file
                try:
                    if scrub_file(p, needles, label):
                        changed.append(p)
                except (OSError, EnvelopeError):
                    continue
    if durable:
        flush(changed)
    return changed


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


def scrub_object(obj: Any, needles: Sequence[bytes], label: str = "scrubbed",
                 _seen: set[int] | None = None, _depth: int = 0,
                 _text: tuple[str, ...] | None = None) -> int:
    """Scrub `str`/`bytes` held by an object graph in place; the number of replacements.

    Walks dicts, lists, email messages and the attributes of cloud-init's own
    objects (e.g. the datasource's `userdata_raw`, `userdata`, crawled metadata).
    Gzip bytes are scrubbed inside. Immutable containers (tuples) are left alone.
    """
    seen = _seen if _seen is not None else set()
    if id(obj) in seen or _depth > 12:
        return 0
    # an ASCII str encodes to itself, so only the ASCII needles can be in it: checked
    # as str, most strings need no encoding at all (a big config has thousands)
    text = _text if _text is not None else tuple(n.decode() for n in needles if n.isascii())
    seen.add(id(obj))
    count = 0

    def fix(value: Any) -> tuple[Any, int]:
        if isinstance(value, (bytes, bytearray)):
            data = bytes(value)
            if data.startswith(_GZIP_MAGIC):
                try:
                    plain = _gunzip(data)
                except (OSError, EOFError, zlib.error, ValueError):
                    plain = None
                if plain is not None:
                    new_plain, n = scrub_bytes(plain, needles, label)
                    return (gzip.compress(new_plain, mtime=0), n) if n else (value, 0)
            new, n = scrub_bytes(data, needles, label)
            return (type(value)(new), n) if n else (value, 0)
        if isinstance(value, str):
            if value.isascii() and not any(t in value for t in text):
                return value, 0
            enc = value.encode("utf-8", "surrogateescape")
            new, n = scrub_bytes(enc, needles, label)
            return (new.decode("utf-8", "surrogateescape"), n) if n else (value, 0)
        return value, -1  # not a leaf

    def visit(value: Any) -> tuple[Any, int]:
        new, n = fix(value)
        if n >= 0:
            return new, n
        return value, scrub_object(value, needles, label, seen, _depth + 1, text)

    if isinstance(obj, dict):
        for k in list(obj):
            obj[k], n = visit(obj[k])
            count += n
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            obj[i], n = visit(v)
            count += n
    elif isinstance(obj, Message):
        if obj.is_multipart():
            for part in obj.get_payload():
                count += scrub_object(part, needles, label, seen, _depth + 1, text)
        else:
            payload = obj.get_payload()
            new, n = visit(payload)
            if n:
                obj.set_payload(new)
                count += n
    elif type(obj).__module__.startswith("cloudinit.") and hasattr(obj, "__dict__"):
        # everything, system config included: after consume_data cloud-init hands the
        # merged config (user-data's random_seed too) to the datasource as sys_cfg
        for k, v in list(vars(obj).items()):
            new, n = visit(v)
            if n > 0 and new is not v:
                setattr(obj, k, new)
            count += max(n, 0)
    return count
