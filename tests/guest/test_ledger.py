"""The ledger of consumed seed ids (claim C2) in every state a crash or a hand can leave.

Through `Ledger` and end to end through `credit_seed`: a real full file system (a
tiny tmpfs of our own) where the append fails and must leave the file byte for byte
as it was; a torn last record; a zero-filled tail as a power cut leaves it; garbage
that must be an error (nothing credited), never an empty ledger; the replay of every
consumed id refused after each repair. A Hypothesis property drives consumes
interleaved with crash states cut at any byte of an append, with NUL padding.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seedtool.generate import SeedFactory
from seedtool.guest import core
from seedtool.guest.core import Paths, credit_seed
from seedtool.guest.ledger import Ledger, LedgerError
from seedtool.keys import generate_keypair, load_private_key

from ..tinyfs import PAGE, fill, small_tmpfs
from .test_core import make_devices

RECORD = re.compile(rb"[0-9a-f]{32} -?[0-9]+ [A-Za-z0-9:._/-]{1,64}")
#: a record a crash cut after its id, which the writer terminated with a newline
CUT_RECORD = re.compile(rb"[0-9a-f]{32}(?: (?:-?[0-9]*|-?[0-9]+ [A-Za-z0-9:._/-]*))?")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs and "
                                "RNDADDENTROPY need root")


def sid(n: int) -> str:
    return f"{n:032x}"


def lines(path: str | Path, cut: tuple[str, ...] = ()) -> list[bytes]:
    """The file's lines; asserts it ends in a newline and every line is a whole record,
    or, for the ids in `cut` (whose append a crash cut short), a record cut after its id."""
    data = Path(path).read_bytes()
    assert data.endswith(b"\n"), data[-80:]
    out = data[:-1].split(b"\n")
    for line in out:
        assert RECORD.fullmatch(line) or (line[:32].decode() in cut
                                          and CUT_RECORD.fullmatch(line)), line
    return out


def ids_in(path: str | Path, cut: tuple[str, ...] = ()) -> list[str]:
    return [line[:32].decode() for line in lines(path, cut)]


def record(seed_id: str, origin: str = "user-data", stamp: int = 1764620000) -> bytes:
    return f"{seed_id} {stamp} {origin}\n".encode()


# ---- a real full file system ---------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs of our own, unmounted afterwards."""
    with small_tmpfs(tmp_path / "small", "256k") as mnt:
        yield mnt


def grow_to(led: Ledger, size: int, first: int) -> list[str]:
    """Consume ids `first`, `first`+1, ... with origins sized so the file is `size` bytes."""
    ids: list[str] = []
    left = size - (os.path.getsize(led.path) if os.path.exists(led.path) else 0)
    while left:
        # a record is 32 + " 1 " + origin + "\n": 37 to 100 bytes
        n = left if 37 <= left <= 100 else (63 if left > 100 + 37 else left - 37)
        assert 37 <= n <= 100
        ids.append(sid(first + len(ids)))
        assert led.consume(ids[-1], "o" * (n - 36), now=1)
        left -= n
    assert os.path.getsize(led.path) == size
    return ids


@needs_root
@pytest.mark.parametrize("room", [0, 20], ids=["at-a-page-end", "short-write"])
def test_append_on_a_full_disk_leaves_the_file_byte_identical(small_fs: Path,
                                                              room: int) -> None:
    """room 0: the record needs a new page and the first write fails; room 20: 20 bytes
    fit in the file's last page, so the write is short and the next one fails."""
    led = Ledger(small_fs / "var/lib/seedtool/ledger")
    old = grow_to(led, PAGE - room, 1)
    filler = fill(small_fs)
    before = Path(led.path).read_bytes()
    with pytest.raises(LedgerError, match=r"cannot write ledger .*No space left on device"):
        led.consume(sid(999), "user-data")
    assert Path(led.path).read_bytes() == before
    assert not led.contains(sid(999)) and all(led.contains(i) for i in old)

    filler.unlink()
    assert led.consume(sid(999), "user-data") is True
    assert ids_in(led.path) == [*old, sid(999)]
    for i in [*old, sid(999)]:
        assert led.consume(i, "replay") is False


@pytest.fixture
def guest_on_small_fs(small_fs: Path, tmp_path: Path) -> dict[str, Any]:
    """A guest root whose /var/lib/seedtool is the small tmpfs."""
    root = tmp_path / "root"
    keys = root / "etc/seedtool/trusted-keys"
    keys.mkdir(parents=True)
    generate_keypair(tmp_path / "signing.key", keys / "signing.pub")
    state = root / "var/lib/seedtool"
    state.parent.mkdir(parents=True)
    state.symlink_to(small_fs)
    paths = Paths.under(root, make_devices(tmp_path / "devices"))
    return {"paths": paths, "factory": SeedFactory(load_private_key(tmp_path / "signing.key")),
            "fs": small_fs}


def credit(paths: Paths, text: str) -> core.Outcome:
    return credit_seed(text, "user-data", stage=core.STAGE_CLOUD_INIT, paths=paths)


@needs_root
def test_credit_seed_on_a_full_disk_credits_nothing_then_credits_once(
        guest_on_small_fs: dict[str, Any]) -> None:
    paths, factory = guest_on_small_fs["paths"], guest_on_small_fs["factory"]
    first = factory.new()
    assert credit(paths, first.text).credited
    # the ledger's next record needs a page the file system does not have
    grow_to(Ledger(paths.ledger), PAGE, 1)
    filler = fill(guest_on_small_fs["fs"])
    before = Path(paths.ledger).read_bytes()

    second = factory.new()
    out = credit(paths, second.text)
    assert not out.credited and out.credited_bits == 0 and not out.verified
    assert out.reason == "ledger not writable"
    assert any("No space left on device" in n for n in out.notes), out.notes
    assert Path(paths.ledger).read_bytes() == before

    filler.unlink()
    assert credit(paths, second.text).credited
    assert ids_in(paths.ledger).count(second.seed_id) == 1
    for env in (first, second):
        again = credit(paths, env.text)
        assert not again.credited and again.reason == "already consumed"


# ---- crash tails ---------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [0, 1, 31, 32, 33, 40, 44, 45, 50, 53])
@pytest.mark.parametrize("nuls", [0, 1, 4096])
def test_a_torn_or_zero_filled_tail_never_swallows_the_next_record(
        tmp_path: Path, cut: int, nuls: int) -> None:
    """A crash cut the append of id C after `cut` bytes (its record is 54 bytes), then
    ext4's delayed allocation may have left `nuls` zero bytes after it."""
    led = Ledger(tmp_path / "ledger")
    a, c, b = sid(0xA), sid(0xC), sid(0xB)
    assert led.consume(a, "user-data", now=1764620000)
    torn = record(c)[:cut] + b"\0" * nuls
    with open(led.path, "ab") as f:
        f.write(torn)
    has_c = cut >= 32  # the fragment holds C's whole id: it counts as consumed
    assert led.contains(a) and led.contains(c) == has_c and not led.contains(b)

    assert led.consume(b, "disk") is True
    expect = [a, c, b] if has_c else [a, b]
    assert ids_in(led.path, cut=(c,)) == expect
    assert Path(led.path).read_bytes().startswith(record(a))  # nothing before was touched
    for i in expect:
        assert led.consume(i, "replay") is False and led.contains(i)
    if not has_c:
        assert led.consume(c, "user-data") is True  # an id never recorded is not lost either


def test_a_fragment_with_an_id_is_terminated_not_rewritten(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "ledger")
    Path(led.path).write_bytes(record(sid(1)) + record(sid(2))[:40] + b"\0" * 100)
    assert led.consume(sid(3), "disk", now=7) is True
    assert Path(led.path).read_bytes() == (record(sid(1)) + record(sid(2))[:40] + b"\n"
                                           + f"{sid(3)} 7 disk\n".encode())


@pytest.mark.parametrize("content", [b"", b"\0", b"\0" * 8192, record(sid(5))[:20],
                                     record(sid(5))[:-1], record(sid(5))[:33] + b"\0" * 9])
def test_a_crash_during_the_first_append(tmp_path: Path, content: bytes) -> None:
    led = Ledger(tmp_path / "ledger")
    Path(led.path).write_bytes(content)
    assert led.contains(sid(5)) == (len(content.rstrip(b"\0")) >= 32)
    assert led.consume(sid(6), "disk") is True
    assert sid(6) in ids_in(led.path, cut=(sid(5),))


@needs_root
@pytest.mark.parametrize("tail", [record("e" * 32)[:17], record("e" * 32)[:45],
                                  b"\0" * 512, record("e" * 32)[:38] + b"\0" * 3000])
def test_credit_seed_after_a_crash_tail_credits_once(guest_on_small_fs: dict[str, Any],
                                                     tail: bytes) -> None:
    paths, factory = guest_on_small_fs["paths"], guest_on_small_fs["factory"]
    first = factory.new()
    assert credit(paths, first.text).credited
    with open(paths.ledger, "ab") as f:
        f.write(tail)
    second = factory.new()
    assert credit(paths, second.text).credited
    ids = ids_in(paths.ledger, cut=("e" * 32,))
    assert ids[0] == first.seed_id and ids[-1] == second.seed_id
    assert ("e" * 32 in ids) == (len(tail.rstrip(b"\0")) >= 32)
    for env in (first, second):
        again = credit(paths, env.text)
        assert not again.credited and again.reason == "already consumed"


# ---- what only a hand (or a bug) makes: an error, never an empty ledger --------------------

GOOD = record(sid(1))
UNPARSABLE = {
    "garbage-line": GOOD + b"hello\n",
    "garbage-first": b"# seedtool ledger\n" + GOOD,
    "crlf": GOOD.replace(b"\n", b"\r\n"),
    "upper-case-id": record("ab" * 16).upper(),
    "non-ascii-origin": GOOD[:-1] + "\u00e9\n".encode(),
    "nul-in-the-middle": GOOD[:40] + b"\0" + GOOD[41:] + record(sid(2)),
    "nul-run-then-a-record": GOOD + b"\0" * 64 + record(sid(2)),
    "empty-line": GOOD + b"\n" + record(sid(2)),
    "tab-separated": GOOD.replace(b" ", b"\t"),
    "two-records-run-together": GOOD + record(sid(3))[:20] + record(sid(2)),
    "short-id": b"0123456789abcdef 1 x\n",
    "garbage-tail": GOOD + b"not a record",
    "id-then-garbage-tail": GOOD + sid(2).encode() + b"!",
}


@pytest.mark.parametrize("content", UNPARSABLE.values(), ids=UNPARSABLE.keys())
def test_an_unparsable_ledger_is_an_error_and_is_left_alone(tmp_path: Path,
                                                            content: bytes) -> None:
    led = Ledger(tmp_path / "ledger")
    Path(led.path).write_bytes(content)
    with pytest.raises(LedgerError, match=r"^ledger .*ledger (line|ends in an incomplete "
                                          r"line) \d+ .*; correct or remove that line"):
        led.contains(sid(1))
    with pytest.raises(LedgerError):
        led.contains(sid(99))  # never "not there" for an id the garbage may hide
    with pytest.raises(LedgerError) as err:
        led.consume(sid(99), "user-data")
    assert Path(led.path).read_bytes() == content
    message = str(err.value)
    assert "\n" not in message and "hello" not in message and "\0" not in message


@pytest.mark.parametrize("content", [UNPARSABLE["garbage-line"],
                                     UNPARSABLE["two-records-run-together"],
                                     UNPARSABLE["nul-run-then-a-record"]],
                         ids=["garbage-line", "two-records-run-together", "nul-in-the-middle"])
def test_credit_seed_with_an_unparsable_ledger_credits_nothing(tmp_path: Path,
                                                               private_key: Any,
                                                               content: bytes) -> None:
    root = tmp_path / "root"
    keys = root / "etc/seedtool/trusted-keys"
    keys.mkdir(parents=True)
    generate_keypair(tmp_path / "k", keys / "k.pub")
    paths = Paths.under(root, make_devices(tmp_path / "devices"))
    Path(paths.ledger).parent.mkdir(parents=True)
    Path(paths.ledger).write_bytes(content)
    new = SeedFactory(load_private_key(tmp_path / "k")).new()
    out = credit(paths, new.text)
    assert not out.credited and out.credited_bits == 0 and not out.verified
    assert out.reason == "ledger invalid"
    assert any("is not a seedtool ledger record" in n or "incomplete line" in n
               for n in out.notes), out.notes
    assert Path(paths.ledger).read_bytes() == content
    assert "ledger invalid" in Path(paths.kmsg).read_text()


def test_a_ledger_that_is_not_a_file(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "ledger")
    os.mkfifo(led.path)
    with pytest.raises(LedgerError, match="not a regular file"):
        led.contains(sid(1))
    with pytest.raises(LedgerError, match="not a regular file"):
        led.consume(sid(1), "x")


def test_records_of_older_writers_still_read(tmp_path: Path) -> None:
    """What the writer before this format check wrote (any origin it sanitised, a
    negative time from a clock before 1970) is read as before."""
    led = Ledger(tmp_path / "ledger")
    old = record(sid(1), "datasource:open_stack_x") + record(sid(2), "-", stamp=-5)
    Path(led.path).write_bytes(old)
    assert led.contains(sid(1)) and led.contains(sid(2))
    assert led.consume(sid(2), "disk") is False
    assert led.consume(sid(3), "disk") is True and ids_in(led.path) == [sid(1), sid(2), sid(3)]


# ---- the property: crashes at any byte ------------------------------------------------------


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[str, int, int]]:
    """Steps: ("consume", id number, 0) or ("crash", cut point seed, NUL count)."""
    steps = []
    for n in range(draw(st.integers(1, 10))):
        if draw(st.booleans()):
            steps.append(("consume", n, 0))
        else:
            steps.append(("crash", draw(st.integers(0, 10_000)),
                          draw(st.sampled_from([0, 0, 1, 7, 512, 4096]))))
    return steps


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.text(alphabet="abz: \n\u00e9", min_size=0, max_size=70))
def test_every_complete_record_survives_any_crash_tail(steps: list[tuple[str, int, int]],
                                                      origin: str) -> None:
    """A crash is modelled exactly: the consume of a fresh id is run on a copy, and the
    file is then cut at any byte between what the old and the new file share and the
    new file's end (the truncation of a tail and the write of the record, cut short),
    then padded with NULs as a power cut can leave the unwritten part."""
    with tempfile.TemporaryDirectory() as d:
        led = Ledger(os.path.join(d, "ledger"))
        copy = Ledger(os.path.join(d, "copy"))
        done: list[str] = []  # ids whose consume returned True: must always be seen
        crashed: list[str] = []
        for n, (kind, cut, nuls) in enumerate(steps):
            if kind == "consume":
                assert led.consume(sid(n), origin) is True
                done.append(sid(n))
                continue
            before = Path(led.path).read_bytes() if os.path.exists(led.path) else b""
            Path(copy.path).write_bytes(before)
            assert copy.consume(sid(n), origin) is True
            after = Path(copy.path).read_bytes()
            shared = len(os.path.commonprefix([before, after]))
            at = shared + cut % (len(after) - shared)  # never the whole record
            Path(led.path).write_bytes(after[:at] + b"\0" * nuls)
            crashed.append(sid(n))
            for i in done:
                assert led.contains(i)
        assert led.consume(sid(999), origin) is True
        seen = ids_in(led.path, cut=tuple(crashed))
        assert seen[-1] == sid(999) and len(seen) == len(set(seen))
        for i in [*done, sid(999)]:
            assert i in seen and led.contains(i) and led.consume(i, "replay") is False
        assert set(seen) <= {*done, *crashed, sid(999)}
        assert not led.contains(sid(1000))
