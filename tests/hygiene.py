"""pytest plugin: no test may leave a seed anywhere but inside a whole envelope.

For every test it learns the secrets the test made and searches everything the test
wrote for them:

* learned secrets: every seed `SeedFactory.new` makes (parsed back from the envelope)
  and every `seedtool.shared.mix.mix` output of 16 bytes or more, in this process; plus the
  seed of every envelope found in anything searched below, which is how seeds made by
  child processes (`seedtool generate` run as a subprocess, a chroot) are learned;
* what is searched: the test's captured stdout and stderr (pytest's report sections
  and whatever `capsys`/`capfd.readouterr()` handed to the test), log records of every
  logger (seedtool's own at DEBUG), subprocess outputs (`Popen.communicate`, so
  `subprocess.run` too), click `CliRunner` results, the message of every
  `SeedtoolError` created, and every regular file under the test's temporary
  directories (`tmp_path`, `tmpdir` and any `tmp_path_factory.mktemp` made during it);
* forms: raw bytes, lower- and upper-case hex and standard and URL-safe base64, each
  as windows of the secret (16 bytes raw and hex, 12 bytes = 16 characters of base64
  at each of the three alignments a secret can have inside a longer base64 text), so a
  partial or embedded copy is found as well as a whole one.

A seed may legitimately appear only inside a whole envelope (an envelope file,
user-data, a NoCloud ISO, a disk image, `seedtool generate` writing to stdout). So in
files and standard output every envelope (base64 text beginning with the magic, or raw
bytes beginning with it) is a carrier and its span is skipped; a seed found anywhere
else is a leak. Standard error, log records, exception messages, status files
(`status*.json`), the ledger, kmsg stand-ins and `*.log` files are strict: an
envelope there is a leak too.

A leak fails the test with a message naming the place, the form and the seed id,
never the bytes or the text around them (the message itself is checked before it is
reported). A test that must plant a seed on purpose says so with
`@pytest.mark.hygiene_exempt("why")`. Files over 8 MiB (disk images) are only read
to learn seeds, not searched for leaks; at most 5000 files / 128 MiB per test.
`--hygiene-stats` prints what was checked and how long it took; `-p no:tests.hygiene`
turns the plugin off.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import stat
import struct
import subprocess
import time
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

MIN_SECRET = 16
RAW_WINDOW = 16
B64_WINDOW = 12  # bytes; 16 characters, no padding
MAX_SEARCH_FILE = 8 << 20
MAX_LEARN_FILE = 1 << 30
MAX_FILES = 5000
MAX_TOTAL = 128 << 20
MAX_GUNZIP = 16 << 20

MAGIC = b"SDTL"
RAW_MAGIC = MAGIC + b"\x01\x00"  # magic, version 1, flags 0
RAW_MAGIC_BOUND = MAGIC + b"\x02\x01"  # magic, version 2 (a seed server's), BOUND
RAW_MAGICS = (RAW_MAGIC, RAW_MAGIC_BOUND)
TEXT_MAGIC = base64.b64encode(MAGIC)[:5]  # b"U0RUT": the first 5 characters are fixed
_TEXT_WRAPPED = re.compile(rb"U0RUT(?:[A-Za-z0-9+/]|\r?\n)*=?=?")
_TEXT_RUN = re.compile(rb"U0RUT[A-Za-z0-9+/]*=?=?")
_STRICT_NAME = re.compile(r"^(status.*\.json|ledger|kmsg|.*\.log)$")
_HEAD = struct.Struct(">4sBB16sQQ8sH")

#: test-harness files (path under the test's directory) that hold seed-like bytes on
#: purpose: (pattern, why, learn seeds from it); none of them is searched for leaks
HARNESS_FILES: list[tuple[re.Pattern[str], str, bool]] = [
    # tests/guest/test_cloudinit.py's run_in_chroot hands the chroot the needles (forms of
    # the seed) its check script searches cloud-init's files for, via these two files
    (re.compile(r"^work/driver\.json$"), "run_in_chroot's spec for the namespaced driver",
     True),
    (re.compile(r"^work/upper/root/spec\.json$"), "the same spec, copied into the chroot",
     True),
    # fuzz/run.py's WORK layout: mutated inputs that look like envelopes hold no secret
    (re.compile(r"(^|/)(corpus|seeds)/"), "fuzzer inputs (fuzz/run.py WORK/corpus, seeds)",
     False),
    (re.compile(r"(^|/)(crash|leak|timeout|oom|slow-unit)-[^/]*$"),
     "inputs libFuzzer kept (fuzz/run.py WORK/crash-*, ...)", False),
]


# ---- what a test made and wrote ------------------------------------------------------------


@dataclass
class Haystack:
    place: str
    data: bytes
    strict: bool


@dataclass
class Recorder:
    nodeid: str
    secrets: dict[bytes, str] = field(default_factory=dict)
    outputs: list[Haystack] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)
    exceptions: int = 0

    def secret(self, value: bytes, label: str, name_it: bool = False) -> None:
        """Remember a secret; `name_it` replaces an earlier, vaguer label."""
        if len(value) >= MIN_SECRET and (name_it or value not in self.secrets):
            self.secrets[bytes(value)] = label

    def output(self, place: str, data: Any, strict: bool) -> None:
        if data is None:
            return
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        if isinstance(data, (bytes, bytearray, memoryview)) and len(data):
            self.outputs.append(Haystack(place, bytes(data), strict))


@dataclass
class Stats:
    tests: int = 0
    secrets: int = 0
    learned: int = 0
    files: int = 0
    bytes: int = 0
    skipped_large: int = 0
    truncated: int = 0
    seconds: float = 0.0
    leaks: int = 0
    slowest: tuple[float, str] = (0.0, "")


_current: Recorder | None = None
_stats = Stats()
_undo: list[tuple[Any, str, Any]] = []


def _rec() -> Recorder | None:
    return _current


# ---- envelopes: where they are, what seed they hold -------------------------------------------


def _raw_envelope_end(buf: bytes, i: int) -> int:
    """End of a raw envelope starting at i, from its length fields; i + 6 if it cannot be one."""
    from seedtool.shared import envelope

    try:
        (seed_len,) = struct.unpack_from(">H", buf, i + _HEAD.size - 2)
        (prov_len,) = struct.unpack_from(">H", buf, i + _HEAD.size + seed_len)
    except struct.error:
        return min(len(buf), i + 4096)  # truncated: treat the rest as its carrier
    if not 16 <= seed_len <= 512 or prov_len > 1024:
        return i + len(RAW_MAGIC)
    total = envelope.length_at(buf[i:i + envelope.MAX_SIZE])
    return min(len(buf), i + total) if total else min(len(buf), i + 4096)


def _seed_of(candidate: bytes) -> tuple[bytes, str] | None:
    from seedtool.shared import envelope

    try:
        env = envelope.parse(candidate)
    except Exception:
        return None
    return env.uncredited_seed, env.seed_id_hex


def envelopes_in(buf: bytes) -> Iterator[tuple[int, int, tuple[bytes, str] | None]]:
    """(start, end, (seed, seed id) or None) of every envelope-looking span in buf."""
    if TEXT_MAGIC in buf:
        taken_to = 0
        for m in _TEXT_WRAPPED.finditer(buf):
            if m.start() < taken_to:
                continue
            found = _seed_of(m.group())
            if found is None:  # a wrapped match ran into other text: the bare run
                run = _TEXT_RUN.match(buf, m.start())
                end = run.end() if run else m.end()
                found = _seed_of(buf[m.start():end])
            else:
                end = m.end()
            taken_to = end
            yield m.start(), end, found
    for magic in RAW_MAGICS:
        at = buf.find(magic)
        while at >= 0:
            end = _raw_envelope_end(buf, at)
            yield at, end, _seed_of(buf[at:end])
            at = buf.find(magic, max(end, at + 1))


def _gunzipped(data: bytes) -> bytes | None:
    if not data.startswith(b"\x1f\x8b"):
        return None
    try:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        return d.decompress(data, MAX_GUNZIP)
    except zlib.error:
        return None


def looks_random(seed: bytes) -> bool:
    """False for a learned "seed" no seed factory would make (a fuzzer's or a test's
    hand-made envelope): fewer than 60 % of the distinct byte values n random bytes show
    on average (16 random bytes show 15.5; none of 200,000 samples here showed fewer
    than 11, against a bar of 10). Such a seed is not learned; nothing fails."""
    expected = 256 * (1 - (255 / 256) ** len(seed))
    return len(set(seed)) >= 0.6 * expected


# ---- the forms a secret can take ----------------------------------------------------------------


@dataclass(frozen=True)
class Needle:
    text: bytes
    label: str
    form: str


def needles_for(secret: bytes, label: str) -> list[Needle]:
    out: list[Needle] = []
    n = len(secret)
    starts = list(range(0, n - RAW_WINDOW + 1, RAW_WINDOW))
    if starts[-1] != n - RAW_WINDOW:
        starts.append(n - RAW_WINDOW)
    for s in starts:
        w = secret[s:s + RAW_WINDOW]
        out.append(Needle(w, label, "raw bytes"))
        out.append(Needle(w.hex().encode(), label, "hex"))
        out.append(Needle(w.hex().upper().encode(), label, "upper-case hex"))
    for k in range(3):
        for s in range(k, n - B64_WINDOW + 1, B64_WINDOW):
            chunk = base64.b64encode(secret[s:s + B64_WINDOW])
            out.append(Needle(chunk, label, "base64"))
            url = chunk.replace(b"+", b"-").replace(b"/", b"_")
            if url != chunk:
                out.append(Needle(url, label, "url-safe base64"))
    return out


def _inside(pos: int, spans: list[tuple[int, int]]) -> int:
    """End of the carrier span holding pos, or -1."""
    for s, e in spans:
        if s <= pos < e:
            return e
    return -1


def search(hay: Haystack, needles: list[Needle]) -> tuple[str, str] | None:
    """(label, form) of the first leak in hay, or None."""
    spans = [] if hay.strict else [(s, e) for s, e, _ in envelopes_in(hay.data)]
    data = hay.data
    for nd in needles:
        pos = data.find(nd.text)
        while pos >= 0:
            end = _inside(pos, spans)
            if end < 0:
                return nd.label, nd.form
            pos = data.find(nd.text, end)
    if hay.strict:
        for _s, _e, found in envelopes_in(data):
            if found is not None:
                return f"seed {found[1]}", "a whole envelope"
    return None


# ---- the files a test wrote --------------------------------------------------------------------


def _files(top: Path) -> Iterator[tuple[Path, os.stat_result]]:
    for dirpath, dirnames, filenames in os.walk(top):
        d = Path(dirpath)
        dirnames[:] = [x for x in dirnames if not os.path.ismount(d / x)]
        for name in filenames:
            p = d / name
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                yield p, st


def _read_for_learning(path: Path, size: int) -> list[tuple[bytes, str]]:
    """Envelopes inside a large file (a disk image), found without reading it all into memory.

    Read in chunks, not through mmap: mmap.find() in CPython before 3.11.5 reads past the
    end of a mapping whose size is a multiple of the page size (gh-105235) and crashed
    the test run on Debian 12's Python 3.11.2 with a sparse disk image.
    """
    learned: list[tuple[bytes, str]] = []
    chunk = 1 << 20
    keep = max(len(RAW_MAGIC), len(TEXT_MAGIC)) - 1  # a magic split across two chunks
    try:
        with open(path, "rb") as f:
            fd = f.fileno()
            offset, tail = 0, b""
            while offset < size and len(learned) < 64:
                block = os.pread(fd, chunk, offset)
                if not block:
                    break
                data, base = tail + block, offset - len(tail)
                for magic in (*RAW_MAGICS, TEXT_MAGIC):
                    at = data.find(magic)
                    while at >= 0 and len(learned) < 64:
                        window = os.pread(fd, 4096, base + at)
                        for _s, _e, found in envelopes_in(window):
                            if found is not None:
                                learned.append(found)
                            break
                        at = data.find(magic, at + 1)
                tail = data[-keep:]
                offset += len(block)
    except (OSError, ValueError):
        pass
    return learned


def collect_files(
    rec: Recorder, item: pytest.Item
) -> tuple[list[Haystack], list[tuple[bytes, str]]]:
    tops: list[Path] = []
    for name in ("tmp_path", "tmpdir"):
        value = getattr(item, "funcargs", {}).get(name)
        if value is not None:
            tops.append(Path(str(value)))
    tops.extend(rec.dirs)
    seen: set[Path] = set()
    out: list[Haystack] = []
    learned: list[tuple[bytes, str]] = []
    total = files = 0
    for top in tops:
        top = top.resolve() if top.exists() else top
        if top in seen or any(parent in seen for parent in top.parents) or not top.is_dir():
            continue
        seen.add(top)
        for p, st in _files(top):
            if files >= MAX_FILES or total >= MAX_TOTAL:
                _stats.truncated += 1
                break
            files += 1
            if st.st_size > MAX_SEARCH_FILE:
                _stats.skipped_large += 1
                if st.st_size <= MAX_LEARN_FILE:
                    learned.extend(_read_for_learning(p, st.st_size))
                continue
            try:
                data = p.read_bytes()
            except OSError:
                continue
            total += len(data)
            rel = p.relative_to(top)
            harness = [learn for rx, _why, learn in HARNESS_FILES if rx.search(rel.as_posix())]
            if harness:
                if harness[0]:
                    learned.extend(f for _s, _e, f in envelopes_in(data) if f is not None)
                continue
            strict = bool(_STRICT_NAME.match(p.name)) or "kmsg" in rel.parts
            out.append(Haystack(f"file {rel} under the test's {top.name} directory", data,
                                strict))
    _stats.files += files
    _stats.bytes += total
    return out, learned


# ---- the check ---------------------------------------------------------------------------------


def _safe(message: str, needles: list[Needle]) -> str:
    """The plugin's own message, refused if it could carry a secret."""
    raw = message.encode("utf-8", "replace")
    if any(n.text in raw for n in needles) or TEXT_MAGIC in raw:
        return "seed hygiene: a seed leaked (the description itself held secret text)"
    return message


def check(rec: Recorder, item: pytest.Item) -> str | None:
    """A failure message, or None when nothing leaked."""
    hays = list(rec.outputs)
    file_hays, learned = collect_files(rec, item)
    hays.extend(file_hays)
    secrets = dict(rec.secrets)
    for hay in hays:
        for data in (hay.data, _gunzipped(hay.data)):
            if data is None or (TEXT_MAGIC not in data
                                and not any(m in data for m in RAW_MAGICS)):
                continue
            for _s, _e, found in envelopes_in(data):
                if found is not None:
                    learned.append(found)
    for seed, sid in learned:
        if seed not in secrets and looks_random(seed):
            secrets[seed] = f"seed {sid}"
            _stats.learned += 1
    _stats.secrets += len(rec.secrets)
    if not secrets:
        return None
    needles = [n for secret, label in secrets.items() for n in needles_for(secret, label)]
    for hay in hays:
        hit = search(hay, needles)
        if hit is not None:
            label, form = hit
            where = (" (no seed may appear there, not even inside an envelope)" if hay.strict
                     else " outside any envelope")
            return _safe(
                f"seed hygiene: {label} appears as {form} in {hay.place}{where}; a seed may "
                "only travel inside a whole envelope (envelope file, user-data, ISO, image), "
                "never in output, logs, messages or state files (see tests/hygiene.py)",
                needles,
            )
    return None


# ---- hooks into the code under test ------------------------------------------------------------


_ABSENT = object()
_WORD = re.compile(r"-{0,2}[A-Za-z][A-Za-z_.-]{0,23}")


def _describe(args: Any) -> str:
    """A subprocess's program and its first plain words (options, subcommands), no data."""
    argv = [str(a) for a in args] if isinstance(args, (list, tuple)) else [str(args)]
    words = [os.path.basename(argv[0].split()[0]) if argv[0].split() else "?"]
    words += [a for a in argv[1:4] if _WORD.fullmatch(a)]
    return " ".join(words)


def _patch(owner: Any, name: str, new: Any) -> None:
    """Replace owner.name, remembering what to put back (nothing, for an inherited name)."""
    old = owner.__dict__.get(name, _ABSENT) if isinstance(owner, type) else getattr(owner, name)
    _undo.append((owner, name, old))
    setattr(owner, name, new)


def _install() -> None:
    from _pytest.capture import CaptureFixture
    from _pytest.tmpdir import TempPathFactory

    import seedtool.generate as generate
    import seedtool.shared.mix as mixmod
    from seedtool.shared import envelope
    from seedtool.shared.errors import SeedtoolError

    orig_new = generate.SeedFactory.new

    def new(self: Any, *args: Any, **kwargs: Any) -> Any:
        made = orig_new(self, *args, **kwargs)
        rec = _rec()
        if rec is not None:
            rec.secret(envelope.parse(made.raw).uncredited_seed, f"seed {made.seed_id}",
                       name_it=True)
        return made

    _patch(generate.SeedFactory, "new", new)

    orig_mix = mixmod.mix

    def mix(*args: Any, **kwargs: Any) -> bytes:
        out = orig_mix(*args, **kwargs)
        rec = _rec()
        if rec is not None:
            rec.secret(out, "a mix() output")
        return out

    _patch(mixmod, "mix", mix)
    import sys

    for modname, mod in list(sys.modules.items()):
        if modname.startswith(("seedtool.", "cc_seedtool")) and getattr(mod, "mix", None) \
                is orig_mix:
            _patch(mod, "mix", mix)

    orig_init = SeedtoolError.__init__

    def init(self: Any, *args: Any) -> None:
        orig_init(self, *args)
        rec = _rec()
        if rec is not None:
            rec.exceptions += 1
            rec.output(f"the message of a {type(self).__name__}", " ".join(map(str, args)),
                       strict=True)

    _patch(SeedtoolError, "__init__", init)

    orig_communicate = subprocess.Popen.communicate

    def communicate(self: Any, *args: Any, **kwargs: Any) -> Any:
        out, err = orig_communicate(self, *args, **kwargs)
        rec = _rec()
        if rec is not None:
            what = _describe(self.args)
            rec.output(f"the standard output of subprocess '{what}'", out, strict=False)
            rec.output(f"the standard error of subprocess '{what}'", err, strict=True)
        return out, err

    _patch(subprocess.Popen, "communicate", communicate)

    orig_readouterr = CaptureFixture.readouterr

    def readouterr(self: Any) -> Any:
        res = orig_readouterr(self)
        rec = _rec()
        if rec is not None:
            rec.output("standard output read by the test (readouterr)", res.out, strict=False)
            rec.output("standard error read by the test (readouterr)", res.err, strict=True)
        return res

    _patch(CaptureFixture, "readouterr", readouterr)

    orig_mktemp = TempPathFactory.mktemp

    def mktemp(self: Any, *args: Any, **kwargs: Any) -> Path:
        path: Path = orig_mktemp(self, *args, **kwargs)
        rec = _rec()
        if rec is not None:
            rec.dirs.append(path)
        return path

    _patch(TempPathFactory, "mktemp", mktemp)

    try:
        from click.testing import CliRunner
    except ImportError:  # pragma: no cover - click is a dependency
        return
    orig_invoke = CliRunner.invoke

    def invoke(self: Any, *args: Any, **kwargs: Any) -> Any:
        res = orig_invoke(self, *args, **kwargs)
        rec = _rec()
        if rec is not None:
            rec.output("the standard output of a CliRunner run",
                       getattr(res, "stdout_bytes", None), strict=False)
            try:
                err = res.stderr_bytes
            except ValueError:  # stderr not separately captured (older click)
                err = None
            rec.output("the standard error of a CliRunner run", err, strict=True)
        return res

    _patch(CliRunner, "invoke", invoke)


class _LogTap(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        rec = _rec()
        if rec is None:
            return
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        rec.output(f"a log record of logger '{record.name}'", text, strict=True)


_tap = _LogTap(level=1)
_product_loggers = ("seedtool", "cc_seedtool")
_saved_levels: dict[str, int] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--hygiene-stats", action="store_true", default=False,
                     help="seed hygiene plugin: print what it checked and how long it took")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "hygiene_exempt(reason): the test plants seeds on purpose; the seed "
        "hygiene check (tests/hygiene.py) skips it")
    if not _undo:
        _install()
    logging.getLogger().addHandler(_tap)
    for name in _product_loggers:
        lg = logging.getLogger(name)
        _saved_levels[name] = lg.level
        lg.setLevel(logging.DEBUG)


def pytest_unconfigure(config: pytest.Config) -> None:
    global _current
    _current = None
    logging.getLogger().removeHandler(_tap)
    for name, level in _saved_levels.items():
        logging.getLogger(name).setLevel(level)
    while _undo:
        owner, name, old = _undo.pop()
        if old is _ABSENT:
            delattr(owner, name)
        else:
            setattr(owner, name, old)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    global _current
    _current = Recorder(item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    global _current
    outcome = yield
    rep = outcome.get_result()
    rec = _current
    if rep.when == "teardown":
        _current = None
        return
    if rep.when != "call" or rec is None or not rep.passed:
        return
    if item.get_closest_marker("hygiene_exempt") is not None:
        return
    t0 = time.perf_counter()
    for title, content in rep.sections:
        rec.output(f"{title.lower()}", content, strict="stderr" in title or "log" in title)
    try:
        message = check(rec, item)
    finally:
        spent = time.perf_counter() - t0
        _stats.tests += 1
        _stats.seconds += spent
        _stats.slowest = max(_stats.slowest, (spent, item.nodeid))
    if message is not None:
        _stats.leaks += 1
        rep.outcome = "failed"
        rep.longrepr = message


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not config.getoption("--hygiene-stats"):
        return
    s = _stats
    terminalreporter.write_line(
        f"seed hygiene: {s.tests} tests checked, {s.secrets} secrets made in-process, "
        f"{s.learned} seeds learned from envelopes, {s.files} files ({s.bytes / 2**20:.1f} MiB) "
        f"searched, {s.skipped_large} large files only learned from, {s.truncated} scans cut "
        f"short, {s.leaks} leaks; {s.seconds:.2f} s spent checking (slowest "
        f"{s.slowest[0]:.2f} s: {s.slowest[1] or '-'})"
    )


__all__ = ["Haystack", "Needle", "Recorder", "envelopes_in", "needles_for", "search"]
