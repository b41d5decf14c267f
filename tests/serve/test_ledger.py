"""The issuance ledger, every semantic test on both backends: SQLite and a real PostgreSQL.

The PostgreSQL backend runs against a throwaway cluster (devtools/postgres.py), one
per module; each test gets a database of its own in it.
"""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import queue
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from seedtool.identity import Identity
from seedtool.identity.token import make_tokens, token_digest, token_instance
from seedtool.serve.ledger import (
    SCHEMA_VERSION,
    Issuance,
    Ledger,
    LedgerUnavailable,
    LedgerVersionError,
    TooMany,
    open_ledger,
)

K = 3
_names = itertools.count()


def ident(name: str = "i-1", boot: str = "t0") -> Identity:
    instance = f"aws:111122223333:us-east-1:{name}"
    return Identity(kind="aws-iid", instance=instance, boot=f"{instance}:{boot}",
                    claims={"account": "111122223333"})


def issue(ledger: Ledger, who: Identity, *, now: float = 1000.0, limit: int = K,
          client: str = "192.0.2.7") -> int:
    return ledger.issue(identity=who, seed_id=f"seed-{next(_names)}", key_id="key-1",
                        client=client, now=now, limit=limit)


# --- the two backends -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[Any]:
    pytest.importorskip("psycopg")
    pytest.importorskip("psycopg_pool")
    from devtools.postgres import bindir, throwaway_cluster

    try:
        bindir()
    except RuntimeError as err:
        pytest.skip(str(err))
    with throwaway_cluster() as cluster:
        yield cluster


class Backend:
    """Opens ledgers of one backend on one test's own database."""

    def __init__(self, name: str, spec: str, raw: Callable[[str], None],
                 cluster: Any = None) -> None:
        self.name, self.spec, self.raw, self.cluster = name, spec, raw, cluster
        self._open: list[Ledger] = []

    def open(self, **kwargs: Any) -> Ledger:
        ledger = open_ledger(self.spec, **kwargs)
        self._open.append(ledger)
        return ledger

    def close_all(self) -> None:
        for ledger in self._open:
            ledger.close()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = _backend(request.param, request, tmp_path)
    yield b
    b.close_all()


@pytest.fixture
def postgres(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = _backend("postgres", request, tmp_path)
    yield b
    b.close_all()


def _backend(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if name == "sqlite":
        path = tmp_path / "ledger.db"

        def raw_sqlite(sql: str) -> None:
            with sqlite3.connect(path) as conn:
                conn.execute(sql)

        b = Backend("sqlite", f"sqlite:{path}", raw_sqlite)
    else:
        import psycopg

        cluster = request.getfixturevalue("pg_cluster")
        db = f"t{next(_names)}"
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {db}")
        dsn = cluster.dsn.rsplit("/", 1)[0] + "/" + db

        def raw_pg(sql: str) -> None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(sql)

        b = Backend("postgres", dsn, raw_pg, cluster)
    return b


# --- issuance, refusal, audit -----------------------------------------------------------------

def test_issue_counts_one_to_k_then_refuses_and_records_the_refusal(backend: Backend) -> None:
    ledger = backend.open()
    who = ident()
    assert [issue(ledger, who, now=1000.0 + n) for n in range(K)] == [1, 2, 3]
    for n in range(2):
        with pytest.raises(TooMany) as caught:
            issue(ledger, who, now=2000.0 + n, client="198.51.100.9")
        assert caught.value.status == 409 and caught.value.error == "too-many"
        assert "\n" not in str(caught.value) and who.boot in str(caught.value)
    events = ledger.show(who.instance)
    assert [(e.event, e.number) for e in events] == [
        ("issued", 1), ("issued", 2), ("issued", 3), ("refused", None), ("refused", None)]
    assert [e.client for e in events[3:]] == ["198.51.100.9"] * 2
    assert all(e.boot == who.boot and e.kind == "aws-iid" for e in events)
    assert all(e.seed_id and e.key_id == "key-1" for e in events[:3])
    assert len({e.seed_id for e in events[:3]}) == 3


def test_a_boot_of_its_own_for_each_boot_and_each_instance(backend: Backend) -> None:
    ledger = backend.open()
    first, rebooted, other = ident("i-1", "t0"), ident("i-1", "t1"), ident("i-2", "t0")
    for _ in range(K):
        issue(ledger, first)
    with pytest.raises(TooMany):
        issue(ledger, first)
    assert issue(ledger, rebooted) == 1
    assert issue(ledger, other) == 1
    # a different limit is read against the same rows: the database keeps the count
    assert issue(ledger, other, limit=2) == 2
    with pytest.raises(TooMany):
        issue(ledger, other, limit=2)
    assert [e.boot for e in ledger.show(first.instance) if e.event == "issued"] == (
        [first.boot] * K + [rebooted.boot])
    assert ledger.show("aws:111122223333:us-east-1:i-404") == []


def test_list_since_and_what_an_event_holds(backend: Backend) -> None:
    ledger = backend.open()
    a, b = ident("i-a"), ident("i-b")
    issue(ledger, a, now=100.0)
    issue(ledger, b, now=200.0, limit=1)
    with pytest.raises(TooMany):
        issue(ledger, b, now=300.0, limit=1)
    assert [(e.instance, e.event, e.at) for e in ledger.list(150.0)] == [
        (b.instance, "issued", 200.0), (b.instance, "refused", 300.0)]
    assert len(ledger.list(0.0)) == 3 and ledger.list(301.0) == []
    # ids, times, addresses, kind, boot, number: nowhere to put a seed
    assert {f.name for f in dataclasses.fields(Issuance)} == {
        "event", "at", "instance", "boot", "kind", "client", "number", "seed_id", "key_id"}


def test_rows_survive_closing_and_reopening(backend: Backend) -> None:
    ledger = backend.open()
    who = ident()
    issue(ledger, who)
    issue(ledger, who)
    ledger.close()
    again = backend.open()
    assert issue(again, who) == 3
    with pytest.raises(TooMany):
        issue(again, who)
    assert len(again.show(who.instance)) == 4


def test_a_closed_ledger_is_unavailable(backend: Backend) -> None:
    ledger = backend.open()
    ledger.close()
    with pytest.raises(LedgerUnavailable):
        issue(ledger, ident())


def test_a_newer_schema_is_refused_in_one_sentence(backend: Backend) -> None:
    backend.open().close()
    backend.raw(f"INSERT INTO seedtool_schema_version (version) VALUES ({SCHEMA_VERSION + 1})")
    with pytest.raises(LedgerVersionError) as caught:
        backend.open()
    message = str(caught.value)
    assert f"version {SCHEMA_VERSION + 1}" in message and "upgrade seedtool" in message
    assert "\n" not in message and caught.value.status == 503


def test_writable_is_a_real_write(backend: Backend) -> None:
    ledger = backend.open()
    assert ledger.writable()
    # a probe that only read would still pass with the table's writes refused
    if backend.name == "sqlite":
        backend.raw("CREATE TRIGGER no_probe BEFORE UPDATE ON seedtool_probe "
                    "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    else:
        backend.raw("CREATE FUNCTION no_probe() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'refused'; END $$")
        backend.raw("CREATE TRIGGER no_probe BEFORE UPDATE ON seedtool_probe "
                    "FOR EACH ROW EXECUTE FUNCTION no_probe()")
    assert not ledger.writable()


def test_a_lock_held_too_long_is_unavailable_then_passes(backend: Backend) -> None:
    ledger = backend.open(timeout=0.5)
    issue(ledger, ident())
    if backend.name == "sqlite":
        holder: Any = sqlite3.connect(backend.spec[len("sqlite:"):], isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process's writer that does not finish
    else:
        import psycopg

        holder = psycopg.connect(backend.spec)
        holder.execute("LOCK TABLE seedtool_issuance IN EXCLUSIVE MODE")
    try:
        with pytest.raises(LedgerUnavailable) as caught:
            issue(ledger, ident())
        assert "\n" not in str(caught.value)
    finally:
        if backend.name == "sqlite":
            holder.execute("ROLLBACK")
        else:
            holder.rollback()
        holder.close()
    assert issue(ledger, ident()) == 2


# --- tokens -----------------------------------------------------------------------------------

def test_token_states(backend: Backend) -> None:
    ledger = backend.open()
    fresh, later = make_tokens(2)
    ledger.add_tokens([token_digest(fresh)], created=0.0, expires=100.0)
    ledger.add_tokens([token_digest(later)], created=0.0, expires=500.0)
    assert ledger.token_state(token_digest(fresh), 99.0) == "ok"
    assert ledger.token_state(token_digest(fresh), 100.0) == "expired"
    assert ledger.token_state(token_digest(make_tokens(1)[0]), 1.0) == "unknown"
    instance = token_instance(token_digest(later))
    ledger.issue(identity=Identity("token", instance, instance), seed_id="s", key_id="k",
                 client="c", now=1.0, limit=K)
    assert ledger.token_state(token_digest(later), 2.0) == "used"
    assert ledger.token_state(token_digest(later), 500.0) == "expired"
    with pytest.raises(ValueError):
        ledger.add_tokens([b"short"], created=0.0, expires=1.0)


# --- concurrency: the database, not the process, keeps the count ------------------------------

def _hammer(spec: str, boot: str, threads: int, tag: str, start: Any, out: Any) -> None:
    """One 'server': its own ledger, `threads` simultaneous issue() calls for one boot."""
    ledger = open_ledger(spec, timeout=60.0, pool_size=8)
    who = Identity("token", boot, boot)
    barrier = threading.Barrier(threads)
    results: list[str] = []

    def one(n: int) -> None:
        barrier.wait()
        try:
            results.append(str(ledger.issue(identity=who, seed_id=f"{boot}-{tag}-{n}",
                                            key_id="k", client="c", now=1.0, limit=K)))
        except TooMany:
            results.append("too-many")
        except Exception as err:  # reported, and the test fails on it
            results.append(f"{type(err).__name__}: {err}")

    if start is not None:
        start.wait()
    workers = [threading.Thread(target=one, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    ledger.close()
    out.put(results)


def _check_exactly_k(backend: Backend, boot: str, results: list[str], calls: int) -> None:
    assert len(results) == calls
    assert sorted(r for r in results if r != "too-many") == ["1", "2", "3"]
    assert results.count("too-many") == calls - K
    ledger = backend.open()
    events = ledger.show(boot)
    assert sorted(e.number for e in events if e.event == "issued") == [1, 2, 3]  # type: ignore
    assert sum(e.event == "refused" for e in events) == calls - K


def test_hundreds_of_threads_on_one_boot_get_exactly_k(backend: Backend) -> None:
    boot = "token:threads"
    backend.open().close()  # the schema exists before the race starts
    # several ledgers (connections) at once, as several worker processes would hold
    ledgers, per = 4, 50
    out: queue.Queue[list[str]] = queue.Queue()
    start = threading.Barrier(ledgers)
    runners = [threading.Thread(target=_hammer, args=(backend.spec, boot, per, str(i), start, out))
               for i in range(ledgers)]
    for r in runners:
        r.start()
    for r in runners:
        r.join()
    results = [r for _ in runners for r in out.get_nowait()]
    _check_exactly_k(backend, boot, results, ledgers * per)
    # and the other boots are untouched
    assert issue(backend.open(), ident("i-other")) == 1


def test_three_server_processes_on_one_boot_get_exactly_k(backend: Backend) -> None:
    boot = "token:processes"
    # no ledger opened first: the three also race to create the schema
    ctx = multiprocessing.get_context("spawn")
    servers, per = 3, 60
    start = ctx.Barrier(servers)
    out = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(backend.spec, boot, per, f"p{i}", start, out))
             for i in range(servers)]
    for p in procs:
        p.start()
    results: list[str] = []
    for _ in procs:
        results.extend(out.get(timeout=300))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    _check_exactly_k(backend, boot, results, servers * per)


def test_postgres_default_isolation_does_not_change_the_rule(postgres: Backend) -> None:
    # the slot rule needs READ COMMITTED; a database whose default is stricter would
    # turn lost races into serialization failures (503s) unless the ledger sets it
    db = postgres.spec.rsplit("/", 1)[1]
    postgres.raw(f"ALTER DATABASE {db} SET default_transaction_isolation TO 'repeatable read'")
    boot = "token:isolation"
    out: queue.Queue[list[str]] = queue.Queue()
    _hammer(postgres.spec, boot, 100, "rr", None, out)
    _check_exactly_k(postgres, boot, out.get_nowait(), 100)


# --- faults -----------------------------------------------------------------------------------

def test_postgres_stopped_mid_run_then_restarted(postgres: Backend) -> None:
    backend = postgres
    ledger = backend.open(timeout=2.0, pool_size=4)
    stop = threading.Event()
    done: list[tuple[str, str]] = []  # (seed id, outcome)
    lock = threading.Lock()

    def client(n: int) -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            seed = f"outage-{n}-{i}"
            who = Identity("token", f"token:outage-{n}-{i // 2}", f"token:outage-{n}-{i // 2}")
            try:
                outcome = str(ledger.issue(identity=who, seed_id=seed, key_id="k",
                                           client="c", now=1.0, limit=K))
            except LedgerUnavailable as err:
                outcome = "unavailable"
                assert "\n" not in str(err)
            except Exception as err:
                outcome = f"{type(err).__name__}: {err}"
            with lock:
                done.append((seed, outcome))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    while len(done) < 40:
        time.sleep(0.01)
    backend.cluster.stop("immediate")
    try:
        with pytest.raises(LedgerUnavailable) as caught:
            issue(ledger, ident("i-down"))
        assert caught.value.status == 503 and caught.value.error == "ledger-unavailable"
        assert not ledger.writable()
    finally:
        backend.cluster.start()
    # the same object recovers on its own: the pool replaces its dead connections
    deadline = time.monotonic() + 120
    while True:
        try:
            assert issue(ledger, ident("i-back")) == 1
            break
        except LedgerUnavailable:
            assert time.monotonic() < deadline, "the ledger did not recover after the restart"
            time.sleep(0.2)
    assert ledger.writable()
    stop.set()
    for t in threads:
        t.join()
    outcomes = {o for _, o in done}
    assert outcomes <= {"1", "2", "unavailable"}, outcomes
    assert "unavailable" in outcomes
    # every issue() that returned a number had its row committed before it returned
    recorded = {e.seed_id for e in ledger.list(0.0) if e.event == "issued"}
    assert {s for s, o in done if o in ("1", "2")} <= recorded


def test_an_unreachable_postgres_is_one_sentence_without_the_password() -> None:
    pytest.importorskip("psycopg_pool")
    with pytest.raises(LedgerUnavailable) as caught:
        open_ledger("postgresql://seeder:s3cret-pw@%2Fnonexistent-dir:5432/ledger", timeout=1.0)
    message = str(caught.value)
    assert "s3cret-pw" not in message and "\n" not in message
    assert "seeder@/nonexistent-dir:5432/ledger" in message


def test_postgres_from_the_pg_environment(postgres: Backend,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.parse

    url = urllib.parse.urlsplit(postgres.spec)
    monkeypatch.setenv("PGHOST", urllib.parse.unquote(url.hostname or ""))
    monkeypatch.setenv("PGPORT", str(url.port))
    monkeypatch.setenv("PGUSER", url.username or "")
    monkeypatch.setenv("PGDATABASE", url.path.lstrip("/"))
    ledger = open_ledger("postgres")
    try:
        assert issue(ledger, ident()) == 1
    finally:
        ledger.close()
    # the other URL scheme libpq knows opens the same database
    again = open_ledger("postgres://" + postgres.spec.split("://", 1)[1])
    try:
        assert issue(again, ident()) == 2
    finally:
        again.close()


# --- SQLite on a file system that goes read-only or fills up ----------------------------------

@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs mount privileges: root in a container that allows it)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)],
            capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_sqlite_on_a_read_only_file_system(small_fs: Path) -> None:
    # the kernel refuses a read-only remount while a file is open for writing, as the
    # ledger's is; so this is the server started again on a file system gone read-only
    ledger = open_ledger(f"sqlite:{small_fs / 'ledger.db'}")
    assert issue(ledger, ident()) == 1
    ledger.close()
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        with pytest.raises(LedgerUnavailable) as caught:
            open_ledger(f"sqlite:{small_fs / 'ledger.db'}")
        assert "\n" not in str(caught.value) and "ledger.db" in str(caught.value)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    again = open_ledger(f"sqlite:{small_fs / 'ledger.db'}")
    assert again.writable() and issue(again, ident()) == 2
    again.close()


def test_sqlite_on_a_full_file_system(small_fs: Path) -> None:
    ledger = open_ledger(f"sqlite:{small_fs / 'ledger.db'}")
    try:
        filler = small_fs / "filler"
        with open(filler, "wb", buffering=0) as f:
            for size in (65536, 4096, 512, 1):
                try:
                    while f.write(b"\0" * size):
                        pass
                except OSError:
                    pass
        outcomes: list[str] = []
        # the WAL and the database still have free pages: writes go on until they fill
        for n in range(20000):
            try:
                ledger.issue(identity=ident(f"i-{n}"), seed_id=f"full-{n}", key_id="k",
                             client="c", now=1.0, limit=K)
                outcomes.append("ok")
            except LedgerUnavailable as err:
                outcomes.append("unavailable")
                assert "\n" not in str(err)
                break
        assert outcomes[-1] == "unavailable"
        assert not ledger.writable()
        filler.unlink()
        assert ledger.writable()
        assert issue(ledger, ident("i-after")) == 1
        # nothing the ledger said was issued went missing
        issued = {e.seed_id for e in ledger.list(0.0)}
        assert {f"full-{n}" for n, o in enumerate(outcomes) if o == "ok"} <= issued
    finally:
        ledger.close()


def test_sqlite_is_wal_with_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = open_ledger(f"sqlite:{path}")
    issue(ledger, ident())
    assert (tmp_path / "ledger.db-wal").exists()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # synchronous is a setting of each connection: the ledger's own (2 = FULL)
    assert ledger._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # type: ignore
    ledger.close()


def test_open_ledger_specs(tmp_path: Path) -> None:
    from seedtool.shared.errors import UsageError

    ledger = open_ledger(None, default_path=tmp_path / "default.db")
    ledger.close()
    assert (tmp_path / "default.db").exists()
    for bad in (None, "sqlite:", "mysql://x", "ledger.db"):
        with pytest.raises(UsageError):
            open_ledger(bad)
    with pytest.raises(LedgerUnavailable):
        open_ledger(f"sqlite:{tmp_path / 'no-such-dir' / 'x.db'}")
