"""The PostgreSQL ledger: one database shared by several seed servers.

psycopg 3 with a bounded `psycopg_pool.ConnectionPool`. Each call takes one
connection and runs one transaction (``conn.transaction()``, READ COMMITTED);
the commit returns only once the WAL is flushed under PostgreSQL's default
``synchronous_commit = on`` (PostgreSQL docs, "Asynchronous Commit"), which this
module does not change. The rule "at most K per boot" is in the shared SQL
(`seedtool/serve/ledger/_sql.py`).

Every wait is bounded by `timeout`: getting a connection from the pool, libpq's
``connect_timeout``, the server-side ``statement_timeout`` and ``lock_timeout``, and
TCP keepalives with ``tcp_user_timeout`` for a server that vanished from the
network (libpq docs, "Parameter Key Words"). The pool checks a connection before
handing it out (`ConnectionPool.check_connection`, psycopg_pool docs "Connection
pools"), so after a database restart the next request gets a fresh connection and
the same ledger object recovers without help; while the database is down every
call fails within about `timeout` seconds with `LedgerUnavailable`.

Messages name user@host:port/dbname, never the DSN's password.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ...shared.errors import UsageError
from . import LedgerUnavailable
from ._sql import SqlLedger

DDL = (
    """CREATE TABLE seedtool_issuance (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        boot TEXT NOT NULL,
        slot INTEGER NOT NULL CHECK (slot >= 1),
        instance TEXT NOT NULL,
        kind TEXT NOT NULL,
        client TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        seed_id TEXT NOT NULL UNIQUE,
        key_id TEXT NOT NULL,
        UNIQUE (boot, slot))""",
    "CREATE INDEX seedtool_issuance_instance ON seedtool_issuance (instance)",
    "CREATE INDEX seedtool_issuance_at ON seedtool_issuance (at)",
    """CREATE TABLE seedtool_refusal (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        boot TEXT NOT NULL,
        instance TEXT NOT NULL,
        kind TEXT NOT NULL,
        client TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX seedtool_refusal_instance ON seedtool_refusal (instance)",
    "CREATE INDEX seedtool_refusal_at ON seedtool_refusal (at)",
    """CREATE TABLE seedtool_token (
        digest BYTEA PRIMARY KEY CHECK (octet_length(digest) = 32),
        created DOUBLE PRECISION NOT NULL,
        expires DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE seedtool_probe (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        at DOUBLE PRECISION NOT NULL)""",
    "INSERT INTO seedtool_probe (id, at) VALUES (1, 0)",
)

#: pg_advisory_xact_lock key that first opens take turns on ("seedtool" in ASCII)
_SCHEMA_LOCK = 0x73656564746F6F6C

_PARAM = re.compile(r"(?<!:):([a-z_]+)")


def _describe(dsn: str) -> tuple[str, str]:
    """What messages call the ledger (user@host:port/dbname, from the DSN and the PG*
    environment) and the DSN's password, which messages must never carry."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(dsn)
    except Exception:  # an unparsable DSN: psycopg itself will say so at connect
        return "the PostgreSQL ledger", ""

    def part(key: str, env: str, default: str) -> str:
        return str(parts.get(key) or os.environ.get(env) or default)

    where = (f"the PostgreSQL ledger {part('user', 'PGUSER', '')}@"
             f"{part('host', 'PGHOST', 'localhost')}:{part('port', 'PGPORT', '5432')}"
             f"/{part('dbname', 'PGDATABASE', '')}")
    return where, str(parts.get("password") or "")


class PostgresLedger(SqlLedger):
    """A `Ledger` in a PostgreSQL database (see the module docstring)."""

    ddl = DDL

    def __init__(self, dsn: str, *, timeout: float = 5.0, pool_size: int = 8) -> None:
        try:
            import psycopg
            import psycopg_pool
        except ImportError as err:
            raise UsageError("the PostgreSQL ledger needs psycopg 3 and psycopg-pool: "
                             "pip install 'seedtool[server]'") from err
        self._psycopg = psycopg
        self._pool_errors: tuple[type[BaseException], ...] = (psycopg.Error,
                                                              psycopg_pool.PoolTimeout)
        self.where, self._secret = _describe(dsn)
        self._timeout = timeout
        ms = max(1, int(timeout * 1000))
        kwargs: dict[str, Any] = {
            "autocommit": True,  # every call opens its own `conn.transaction()`
            "connect_timeout": max(2, int(timeout)),  # libpq: whole seconds, 2 at least
            "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
            "keepalives_count": 3, "tcp_user_timeout": ms,
        }

        def configure(conn: Any) -> None:
            # the slot rule relies on READ COMMITTED: each statement of the issuing
            # transaction sees what others committed (see _sql.py), whatever the
            # database's default_transaction_isolation says
            conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
            conn.execute(f"SET statement_timeout = {ms}")
            conn.execute(f"SET lock_timeout = {ms}")

        self._pool = psycopg_pool.ConnectionPool(
            dsn, min_size=1, max_size=max(1, pool_size), kwargs=kwargs, configure=configure,
            check=psycopg_pool.ConnectionPool.check_connection, timeout=timeout,
            # give up a reconnection after 30 s; the next request starts a fresh one
            reconnect_timeout=30.0, name="seedtool-ledger", open=False)
        try:
            self._pool.open(wait=True, timeout=timeout)
        except self._pool_errors as err:
            self._pool.close()
            raise self._unavailable(err) from err
        try:
            self._ensure_schema()
        except BaseException:
            self._pool.close()
            raise

    def _unavailable(self, err: BaseException) -> LedgerUnavailable:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if self._secret:
            text = text.replace(self._secret, "***")
        reason = text.rstrip(".")[:200]
        return LedgerUnavailable(
            f"{self.where} failed ({reason}); no seed is issued until it answers again")

    def _sql(self, statement: str) -> str:
        return _PARAM.sub(r"%(\1)s", statement)

    def _lock_schema(self, cur: Any) -> None:
        cur.execute(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        try:
            with self._pool.connection(timeout=self._timeout) as conn:
                with conn.transaction():
                    with conn.cursor() as cur:
                        yield cur
        except self._pool_errors as err:
            raise self._unavailable(err) from err

    def close(self) -> None:
        self._pool.close()
