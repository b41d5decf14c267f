"""What the SQLite and PostgreSQL ledgers share: the statements and the issuance rule.

Both backends run the same statements (written with ``:name`` parameters; the
PostgreSQL backend rewrites them to psycopg's ``%(name)s``), so the rule "at most
K per boot" is one piece of SQL, enforced by the database in both:

* ``seedtool_issuance`` has ``UNIQUE (boot, slot)`` and ``CHECK (slot >= 1)``;
* `ISSUE` inserts slot ``MAX(slot) + 1`` of that boot only ``WHERE`` it is at most
  the limit, ``ON CONFLICT (boot, slot) DO NOTHING``, in one statement of one
  transaction. In SQLite the transaction is ``BEGIN IMMEDIATE`` (one writer at a
  time: SQLite "Transaction" docs); in PostgreSQL a concurrent insert of the same
  slot makes the statement wait for the other transaction and then do nothing
  (PostgreSQL docs, INSERT, "ON CONFLICT Clause"), and the next statement of the
  same READ COMMITTED transaction sees the winner's row and takes the next slot,
  or finds the boot full. Either way no K+1th row can exist.

Only table names with the ``seedtool_`` prefix are used, so a ledger can live in
a database shared with other applications.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from ...identity import Identity
from ...identity.token import token_instance
from . import SCHEMA_VERSION, Issuance, LedgerUnavailable, LedgerVersionError, TooMany

VERSION_TABLE = "CREATE TABLE IF NOT EXISTS seedtool_schema_version (version INTEGER NOT NULL)"
READ_VERSION = "SELECT MAX(version) FROM seedtool_schema_version"
WRITE_VERSION = "INSERT INTO seedtool_schema_version (version) VALUES (:version)"

ISSUE = """
INSERT INTO seedtool_issuance (boot, slot, instance, kind, client, at, seed_id, key_id)
SELECT :boot, n, :instance, :kind, :client, :at, :seed_id, :key_id
FROM (SELECT COALESCE(MAX(slot), 0) + 1 AS n
      FROM seedtool_issuance WHERE boot = :boot) AS next_slot
WHERE n <= :limit
ON CONFLICT (boot, slot) DO NOTHING
RETURNING slot
"""
COUNT = "SELECT COUNT(*) FROM seedtool_issuance WHERE boot = :boot"
REFUSE = """
INSERT INTO seedtool_refusal (boot, instance, kind, client, at)
VALUES (:boot, :instance, :kind, :client, :at)
"""
ISSUED_COLUMNS = "at, instance, boot, kind, client, slot, seed_id, key_id"
REFUSED_COLUMNS = "at, instance, boot, kind, client"
BY_INSTANCE = "WHERE instance = :instance ORDER BY at, id"
SINCE = "WHERE at >= :since ORDER BY at, id"
SHOW_ISSUED = f"SELECT {ISSUED_COLUMNS} FROM seedtool_issuance {BY_INSTANCE}"
SHOW_REFUSED = f"SELECT {REFUSED_COLUMNS} FROM seedtool_refusal {BY_INSTANCE}"
LIST_ISSUED = f"SELECT {ISSUED_COLUMNS} FROM seedtool_issuance {SINCE}"
LIST_REFUSED = f"SELECT {REFUSED_COLUMNS} FROM seedtool_refusal {SINCE}"
ADD_TOKEN = """
INSERT INTO seedtool_token (digest, created, expires) VALUES (:digest, :created, :expires)
ON CONFLICT (digest) DO NOTHING
"""
TOKEN_EXPIRES = "SELECT expires FROM seedtool_token WHERE digest = :digest"
TOKEN_USED = "SELECT 1 FROM seedtool_issuance WHERE instance = :instance LIMIT 1"
PROBE = "UPDATE seedtool_probe SET at = :at WHERE id = 1"


def _issued(row: Sequence[Any]) -> Issuance:
    at, instance, boot, kind, client, slot, seed_id, key_id = row
    return Issuance("issued", float(at), instance, boot, kind, client, int(slot), seed_id, key_id)


def _refused(row: Sequence[Any]) -> Issuance:
    at, instance, boot, kind, client = row
    return Issuance("refused", float(at), instance, boot, kind, client)


def _in_order(issued: Sequence[Any], refused: Sequence[Any]) -> builtins.list[Issuance]:
    # both come ORDER BY at, id; the sort is stable, so at equal times the events keep
    # their order of insertion and issuances come before the refusals they caused
    events = [_issued(r) for r in issued] + [_refused(r) for r in refused]
    events.sort(key=lambda e: e.at)
    return events


class SqlLedger:
    """The `Ledger` methods over a backend's `_transaction` (see the module docstring)."""

    #: the backend's CREATE statements for schema version 1 (after VERSION_TABLE)
    ddl: Sequence[str] = ()
    #: what messages call this ledger: a path, or user@host:port/dbname (never a password)
    where = "the ledger"

    def _transaction(self) -> AbstractContextManager[Any]:
        """A cursor inside one transaction, committed on exit, rolled back on an error.

        Database errors leave it as `LedgerUnavailable`; a backend implements it.
        """
        raise NotImplementedError

    def _sql(self, statement: str) -> str:
        """The statement in the backend's parameter style."""
        return statement

    def _lock_schema(self, cur: Any) -> None:
        """Make concurrent first opens of one database take turns (a backend's hook)."""

    def _ensure_schema(self) -> None:
        with self._transaction() as cur:
            self._lock_schema(cur)
            cur.execute(VERSION_TABLE)
            cur.execute(READ_VERSION)
            version = cur.fetchone()[0]
            if version is None:
                for statement in self.ddl:
                    cur.execute(statement)
                cur.execute(self._sql(WRITE_VERSION), {"version": SCHEMA_VERSION})
            elif int(version) > SCHEMA_VERSION:
                raise LedgerVersionError(
                    f"{self.where} has ledger schema version {int(version)} but this seedtool "
                    f"knows only up to {SCHEMA_VERSION}: upgrade seedtool on this server")
            elif int(version) < SCHEMA_VERSION:
                raise LedgerVersionError(
                    f"{self.where} has ledger schema version {int(version)}, older than any "
                    "this seedtool wrote: restore the ledger from a backup")

    def issue(self, *, identity: Identity, seed_id: str, key_id: str, client: str,
              now: float, limit: int) -> int:
        if limit < 1:
            raise ValueError("the issuance limit must be at least 1")
        row = {"boot": identity.boot, "instance": identity.instance, "kind": identity.kind,
               "client": client, "at": now, "seed_id": seed_id, "key_id": key_id,
               "limit": limit}
        with self._transaction() as cur:
            # each pass that inserts nothing either finds the boot full or saw another
            # transaction commit one of its slots: at most `limit` such passes
            for _ in range(limit + 1):
                cur.execute(self._sql(ISSUE), row)
                got = cur.fetchone()
                if got is not None:
                    return int(got[0])
                cur.execute(self._sql(COUNT), row)
                if int(cur.fetchone()[0]) >= limit:
                    cur.execute(self._sql(REFUSE), row)
                    break
            else:
                raise LedgerUnavailable(
                    f"{self.where} kept losing the issuance slot to concurrent requests; "
                    "the request was not recorded and may be retried")
        raise TooMany(
            f"instance boot {identity.boot} already had {limit} seeds issued; this request is "
            "refused and recorded as suspicious")

    def writable(self) -> bool:
        try:
            with self._transaction() as cur:
                cur.execute(self._sql(PROBE), {"at": time.time()})
        except LedgerUnavailable:
            return False
        return True

    def show(self, instance: str) -> builtins.list[Issuance]:
        return self._events(SHOW_ISSUED, SHOW_REFUSED, {"instance": instance})

    def list(self, since: float) -> builtins.list[Issuance]:
        return self._events(LIST_ISSUED, LIST_REFUSED, {"since": since})

    def _events(self, issued_sql: str, refused_sql: str,
                params: dict[str, Any]) -> builtins.list[Issuance]:
        # refusals first: under READ COMMITTED each statement has its own snapshot, and
        # the issuances that caused a refusal committed before it, so the second read
        # sees them all; a refusal is never listed without its K issuances
        with self._transaction() as cur:
            cur.execute(self._sql(refused_sql), params)
            refused = cur.fetchall()
            cur.execute(self._sql(issued_sql), params)
            issued = cur.fetchall()
        return _in_order(issued, refused)

    def add_tokens(self, hashes: Sequence[bytes], *, created: float, expires: float) -> None:
        for digest in hashes:
            if not isinstance(digest, bytes) or len(digest) != 32:
                raise ValueError("a token is stored by its 32-byte SHA-256 digest")
        with self._transaction() as cur:
            for digest in hashes:
                cur.execute(self._sql(ADD_TOKEN),
                            {"digest": digest, "created": created, "expires": expires})

    def token_state(self, digest: bytes, now: float) -> str:
        with self._transaction() as cur:
            cur.execute(self._sql(TOKEN_EXPIRES), {"digest": digest})
            found = cur.fetchone()
            if found is None:
                return "unknown"
            if now >= float(found[0]):
                return "expired"
            cur.execute(self._sql(TOKEN_USED), {"instance": token_instance(digest)})
            return "used" if cur.fetchone() is not None else "ok"

