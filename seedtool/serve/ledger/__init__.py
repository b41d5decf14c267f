"""The seed server's issuance ledger: every seed it issues, recorded before it is sent.

The seed server issues at most K seeds per instance boot (`Identity.boot`), so a
VM whose response was lost can ask again, and an instance asking more often is
refused and recorded as suspicious. The ledger is where that count lives, and the
*database* enforces it, not the server process: several servers behind one load
balancer share one PostgreSQL ledger, and a server killed mid-request must never
have sent a seed whose row was not committed. Two backends, one behaviour:

* SQLite (``sqlite:PATH``, the default): one file in WAL mode with
  ``synchronous=FULL``, for one server (any number of its worker processes).
* PostgreSQL (``postgresql://...``, or ``postgres`` with the ``PG*`` environment
  variables): psycopg 3 with a bounded `psycopg_pool.ConnectionPool`.

Both keep the same tables (`seedtool/serve/ledger/_sql.py` holds the statements
they share): ``issuance`` has a unique constraint on ``(boot, slot)``, and one
statement in one transaction inserts slot ``MAX(slot) + 1`` only while that is at
most K; a concurrent request that chose the same slot loses on the constraint and
is retried, so there is never a K+1th row. `issue` returns only after the commit.

The ledger never receives seed bytes: it records ids, times, client addresses,
identity kinds and boots. It also keeps the bootstrap tokens of the ``token``
identity check, as SHA-256 digests only (`seedtool/identity/token.py`).

What it must never do: hold a seed, a token in clear, or put a DSN's password in
a message.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Protocol, Union

from ...identity import Identity
from ...shared.errors import SeedtoolError, UsageError

#: the schema version this code writes and reads (table ``schema_version``)
SCHEMA_VERSION = 1

#: the issuance limit per instance boot when the server is not told otherwise
DEFAULT_LIMIT = 3


class LedgerError(SeedtoolError):
    """The ledger could not record or answer; the seed server answers with `status`."""

    #: the HTTP status the seed server answers with
    status = 503
    #: the machine-readable `error` field of the JSON answer
    error = "ledger-unavailable"


class LedgerUnavailable(LedgerError):
    """The database failed: connection lost, disk full or read-only, locked too long."""

    status = 503
    error = "ledger-unavailable"


class LedgerVersionError(LedgerUnavailable):
    """The database holds a ledger schema newer than this seedtool knows."""


class TooMany(LedgerError):
    """This instance boot already had its K issuances; the refusal was recorded."""

    status = 409
    error = "too-many"


@dataclass(frozen=True)
class Issuance:
    """One ledger event: a seed issued, or a request refused for asking too often."""

    #: "issued" or "refused"
    event: str
    #: seconds since the epoch, as the server's clock gave it
    at: float
    #: `Identity.instance`, `Identity.boot`, `Identity.kind`
    instance: str
    boot: str
    kind: str
    #: the client's address as the server saw it
    client: str
    #: 1..K for an issuance; None for a refusal
    number: Optional[int] = None
    #: the issued envelope's seed id and signing key id (None for a refusal)
    seed_id: Optional[str] = None
    key_id: Optional[str] = None


class Ledger(Protocol):
    """What the seed server asks of its ledger; see the module docstring.

    Every method raises `LedgerUnavailable` on a database failure, with one
    sentence that names no password; methods are safe to call from several threads.
    """

    def issue(self, *, identity: Identity, seed_id: str, key_id: str, client: str,
              now: float, limit: int) -> int:
        """Record one issuance for `identity.boot`, committed, and return its number.

        The number is 1..`limit`. When `limit` issuances already exist for that
        boot, record a refusal (listed by `show` and `list`) and raise `TooMany`.
        """
        ...

    def writable(self) -> bool:
        """True when a small write just committed (the probe behind /healthz)."""
        ...

    def show(self, instance: str) -> builtins.list[Issuance]:
        """Every event of one instance (`Identity.instance`), oldest first."""
        ...

    def list(self, since: float) -> builtins.list[Issuance]:
        """Every event at or after `since`, oldest first."""
        ...

    def add_tokens(self, hashes: Sequence[bytes], *, created: float, expires: float) -> None:
        """Store bootstrap tokens by their SHA-256 digests, in one transaction."""
        ...

    def token_state(self, digest: bytes, now: float) -> str:
        """One of "ok", "unknown", "expired", "used" (a seed was issued for it: still valid)."""
        ...

    def close(self) -> None: ...


def open_ledger(spec: Optional[str], *, default_path: Union[str, os.PathLike[str], None] = None,
                timeout: float = 5.0, pool_size: int = 8) -> Ledger:
    """Open (and on first use create) the ledger that `spec` names.

    `spec` is ``sqlite:PATH``, a ``postgresql://`` or ``postgres://`` URL, or
    ``postgres`` alone for libpq's ``PG*`` environment variables; None means SQLite
    at `default_path`. `timeout` bounds every wait (a lock, a connection, a
    statement) in seconds; `pool_size` bounds PostgreSQL connections.
    """
    if spec is None:
        if default_path is None:
            raise UsageError("no ledger was named: give sqlite:PATH or a postgresql:// URL")
        spec = "sqlite:" + os.fspath(default_path)
    if spec.startswith("sqlite:"):
        path = spec[len("sqlite:"):]
        if not path:
            raise UsageError("the ledger sqlite: needs a path, e.g. sqlite:ledger.db")
        from .sqlite import SqliteLedger

        return SqliteLedger(path, timeout=timeout)
    if spec == "postgres" or spec.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresLedger

        return PostgresLedger("" if spec == "postgres" else spec, timeout=timeout,
                              pool_size=pool_size)
    raise UsageError("a ledger is sqlite:PATH, a postgresql:// URL or postgres (PG* environment)")
