"""The SQLite ledger: one file, WAL, every issuance fsynced before `issue` returns.

Durability: ``journal_mode=WAL`` with ``synchronous=FULL`` syncs the WAL at every
commit (SQLite docs, "PRAGMA synchronous": in WAL mode NORMAL may lose the last
transactions on power loss, FULL does not). Transactions are ``BEGIN IMMEDIATE``,
so a writer takes the write lock before it reads the slot count (SQLite docs,
"Transaction"); other connections, other worker processes included, wait up to
`timeout` seconds (``busy_timeout``) and then get `LedgerUnavailable`.

One connection per `SqliteLedger`, used by one thread at a time under a lock: the
commits are serialised by SQLite anyway, and each fsync is the cost that counts.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional, Union

from . import LedgerUnavailable
from ._sql import SqlLedger

DDL = (
    """CREATE TABLE seedtool_issuance (
        id INTEGER PRIMARY KEY,
        boot TEXT NOT NULL,
        slot INTEGER NOT NULL CHECK (slot >= 1),
        instance TEXT NOT NULL,
        kind TEXT NOT NULL,
        client TEXT NOT NULL,
        at REAL NOT NULL,
        seed_id TEXT NOT NULL UNIQUE,
        key_id TEXT NOT NULL,
        UNIQUE (boot, slot))""",
    "CREATE INDEX seedtool_issuance_instance ON seedtool_issuance (instance)",
    "CREATE INDEX seedtool_issuance_at ON seedtool_issuance (at)",
    """CREATE TABLE seedtool_refusal (
        id INTEGER PRIMARY KEY,
        boot TEXT NOT NULL,
        instance TEXT NOT NULL,
        kind TEXT NOT NULL,
        client TEXT NOT NULL,
        at REAL NOT NULL)""",
    "CREATE INDEX seedtool_refusal_instance ON seedtool_refusal (instance)",
    "CREATE INDEX seedtool_refusal_at ON seedtool_refusal (at)",
    """CREATE TABLE seedtool_token (
        digest BLOB PRIMARY KEY CHECK (length(digest) = 32),
        created REAL NOT NULL,
        expires REAL NOT NULL)""",
    "CREATE TABLE seedtool_probe (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL)",
    "INSERT INTO seedtool_probe (id, at) VALUES (1, 0)",
)


class SqliteLedger(SqlLedger):
    """A `Ledger` in one SQLite file (see the module docstring)."""

    ddl = DDL

    def __init__(self, path: Union[str, os.PathLike[str]], *, timeout: float = 5.0) -> None:
        self.where = f"the SQLite ledger {os.fspath(path)}"
        self._lock = threading.Lock()
        self._timeout = timeout
        self._conn: Optional[sqlite3.Connection] = None
        try:
            # isolation_level=None: the module leaves transactions to our BEGIN/COMMIT
            conn = sqlite3.connect(path, timeout=timeout, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as err:
            raise self._unavailable(err) from err
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise LedgerUnavailable(
                    f"{self.where} cannot use write-ahead logging (journal mode {mode}); "
                    "put it on a local file system")
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as err:
            conn.close()
            raise self._unavailable(err) from err
        except LedgerUnavailable:
            conn.close()
            raise
        self._conn = conn
        try:
            self._ensure_schema()
        except BaseException:
            self.close()
            raise

    def _unavailable(self, err: sqlite3.Error) -> LedgerUnavailable:
        reason = str(err).splitlines()[0].rstrip(".") if str(err) else type(err).__name__
        return LedgerUnavailable(
            f"{self.where} failed ({reason}); no seed is issued until it can be written again")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        # this process's other threads wait as long as other processes would (busy_timeout)
        if not self._lock.acquire(timeout=self._timeout):
            raise LedgerUnavailable(f"{self.where} stayed busy for {self._timeout:g} seconds; "
                                    "the request was not recorded and may be retried")
        try:
            conn = self._conn
            if conn is None:
                raise LedgerUnavailable(f"{self.where} is closed")
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn.cursor()
                conn.execute("COMMIT")
            except sqlite3.Error as err:
                self._rollback(conn)
                raise self._unavailable(err) from err
            except BaseException:
                self._rollback(conn)
                raise
        finally:
            self._lock.release()

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        # a failed COMMIT (disk full, I/O error) may already have rolled back
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
