"""PostgreSQL implementation of :mod:`kis_estimator.server.storage.repository` (psycopg 3, plain parameterized
SQL).

Selected by ``KIS_DATABASE_URL=postgresql://…``; the schema is ``migrations_postgres/`` (the same
versions and guards as the SQLite files, in PostgreSQL types, plus the shared request budgets of
0003 and the lz4 compression of the large values of 0004), applied when the store opens. The
repositories' SQL is shared with SQLite (``server/storage/sql_repositories.py``);
:class:`_Transaction` is PostgreSQL's side of that module's dialect seam (``?`` → ``%s``,
``ON CONFLICT DO NOTHING``, ``timestamptz``).

Connection model. As in ``sqlite.py``: each unit of work checks one connection out of a small
pool for its whole life and returns it afterwards, so a connection is used by one thread at a
time. The pool keeps at most ``max_idle_connections`` idle connections and opens more on demand;
a connection that failed (lost, or left in a transaction) is closed, not pooled, and one that the
server or the network closed while it sat in the pool is found by a ``poll`` of its socket when it
is taken out, and replaced (:meth:`PostgresStore.acquire`). Connections run in autocommit mode with
the session time zone set to UTC, and each unit issues its own ``BEGIN``.

Transactions.

* Write units: ``BEGIN ISOLATION LEVEL READ COMMITTED``, then ``pg_advisory_xact_lock`` on one
  database-wide key (:data:`WRITE_LOCK_KEY`), released by the commit or rollback. Every write
  unit of every process holding this store's database is therefore serialised: the single-writer
  model of SQLite's ``BEGIN IMMEDIATE``, which the service relies on for its read-check-insert
  sequences in one unit (dedup look-up and insert, the MIXED quota's ``count_accepted`` then
  ``add``, the audit chain's head read then append). A per-month key would let MIXED creates of
  different months overlap, but nearly every write unit also appends to the one audit chain,
  which needs a single order anyway, so one key costs nothing and keeps the rule simple.
  READ COMMITTED on purpose: under REPEATABLE READ or SERIALIZABLE the snapshot is taken by the
  unit's first statement, which is the lock request itself, so a unit would *not* see the commit
  of the writer it waited for (a stale quota count). Under READ COMMITTED every statement after the
  lock sees all commits before it, and with writers serialised that is serial execution.
  Threads of this process first queue on an in-process lock (as in ``sqlite.py``) so that waiting
  writers hold no connection; both waits are bounded by ``busy_timeout_s`` (the advisory lock
  through ``lock_timeout``) and end in a retryable :class:`StorageError`.
  The ``BEGIN``, the lock and a read of the audit chain's head go to the server as one simple
  query (one round trip; the head read is its own statement, after the grant). The unit answers
  its first read of the head from it, unless it has written since (``_Transaction.prefetched``).
* The group commit's write (``UnitOfWork.store_creates``): after that first round trip, the
  multi-row INSERTs and the ``COMMIT`` go out together in pipeline mode and are answered together,
  so a batch of creates costs two round trips, not eight. After each reply the writer thread has
  to be scheduled and win the GIL back from the request threads while it holds the lock every
  other process's writer waits for; under load a round trip took ~3 ms, 4-10 ms with two workers.
  Without ``ON CONFLICT`` there: a taken key fails its INSERT, the server skips the rest (the
  ``COMMIT`` too), and the unit is rolled back and reports it; that connection is then closed, so
  the INSERTs can be prepared statements (one per table and batch size up to
  :data:`PREPARED_BATCH_MAX`, on a connection's fifth use of it, as psycopg prepares any
  statement) without a skipped Parse leaving psycopg's record of what is prepared out of step with
  the server's.
* Read-only units: ``BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY``: one snapshot for the whole
  unit (audit verification reads the anchor and the events consistently), never blocked by
  writers; the server refuses writes in them (a non-retryable :class:`StorageError`).
* Lookup units (:meth:`PostgresStore.lookup`): one statement in autocommit, no transaction: a
  single statement reads one snapshot by itself, so the per-call token look-up is one round trip
  instead of three. The unit refuses a write or a second statement (``StatementBudget``).

Errors. Unique keys are handled with ``INSERT … ON CONFLICT DO NOTHING`` and a look-up of the
holder, so a DuplicateKeyError or GrantExistsError leaves the transaction usable, as in SQLite.
Any other failed statement aborts a PostgreSQL transaction: the unit can then only roll back, and
:meth:`PostgresUnitOfWork.commit` raises instead of letting the server turn COMMIT into ROLLBACK.
Serialization failures, deadlocks, lock timeouts and lost connections are ``retryable``. A
connection lost during COMMIT leaves the outcome unknown and is reported retryable too: a retried
create is then caught by its request_id or dedup_key (docs/pricing-rules.md §13), as after any lost reply.

Documents (the estimate record and audit details) are JSON in ``text`` columns, written and read
byte for byte; times are ``timestamptz``, read back as aware UTC datetimes. Durability is the
server's (``synchronous_commit``); "accepted" is replied only after COMMIT returns.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import select
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import psycopg
from psycopg import conninfo
from psycopg.pq import TransactionStatus

from kis_estimator.server.storage.migrate import (
    POSTGRES_MIGRATIONS,
    Migration,
    load_migrations,
    refuse_unknown_versions,
)
from kis_estimator.server.storage.repository import (
    NewRows,
    StorageError,
    TokenRecord,
)
from kis_estimator.server.storage.rows import Large, Row, pack_ahead, token_of
from kis_estimator.server.storage.sql_repositories import (
    AUDIT_HEAD,
    Insert,
    SqlRepositories,
    StatementBudget,
    multi_row,
)

logger = logging.getLogger(__name__)

WRITE_LOCK_KEY = int.from_bytes(b"KIS-EST\x01", "big")
"""The ``pg_advisory_xact_lock`` key every write unit (and every migration) takes; database-wide."""

# A write unit's start, one simple query (one round trip): the transaction, the lock, and then the
# audit chain's head, read by its own statement after the lock is granted (so under READ COMMITTED
# it sees every commit before the grant), because nearly every write unit appends to the chain.
_BEGIN_WRITE_WITHOUT_HEAD = (
    f"BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE; SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY:d})"
)
_BEGIN_WRITE = f"{_BEGIN_WRITE_WITHOUT_HEAD}; {AUDIT_HEAD}"
# Pipeline mode needs libpq 14 or later (psycopg's binary package brings its own).
_PIPELINE = psycopg.Pipeline.is_supported()
# The largest group-commit batch whose INSERTs are prepared (UnitOfWork.store_creates). Each batch
# size is a statement text of its own per table, and a prepared one keeps its parse tree and plan
# in the backend for the connection's life. Measured on one connection: sizes 1-8, each at its
# generic plan, held 1.2 MB of plan memory; sizes 1-40 (104 statements, psycopg's limit of 100 a
# connection passed) 7.5 MB before most had a generic plan. Nearly every batch is this small
# (bench/README.md: 3-6 creates a commit at c16); a larger one is planned afresh.
PREPARED_BATCH_MAX = 8

_Connection = psycopg.Connection[tuple[Any, ...]]


# Retryable: the same unit may succeed when run again. Class 40 = transaction rollback
# (serialization_failure 40001, deadlock_detected 40P01), class 08 = connection exception,
# 55P03 lock_not_available (our lock_timeout), 57P01-57P03 server shutting down or starting,
# 53300 too_many_connections.
_RETRYABLE_CLASSES = ("40", "08")
_RETRYABLE_STATES = frozenset({"55P03", "57P01", "57P02", "57P03", "53300"})


# (the audit chain exists: 0002; the document is bytea, so values are stored packed: 0005)
_SCHEMA_FEATURES = (
    "SELECT to_regclass('audit_events') IS NOT NULL,"
    " EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('estimates')"
    " AND attname = 'document' AND atttypid = 'bytea'::regtype)"
)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def translate(exc: psycopg.Error, what: str) -> StorageError:
    """The storage error for a driver error; see the module docstring for what is retryable."""
    state = exc.sqlstate
    if state is None:
        # no server error code: the connection failed or was lost on the client side
        retryable = isinstance(exc, psycopg.OperationalError)
    else:
        retryable = state.startswith(_RETRYABLE_CLASSES) or state in _RETRYABLE_STATES
    err = StorageError(f"{what}: {exc}", retryable=retryable)
    err.__cause__ = exc
    return err


# --------------------------------------------------------------------------- transaction


class _Transaction:
    """The connection of one open unit of work; every statement goes through here."""

    def __init__(self, *, single_statement: bool = False, packs: Callable[[Large], bool]) -> None:
        self.conn: _Connection | None = None  # set while the unit is open
        self.packs = packs
        self._budget = StatementBudget(single=single_statement)
        # Answers of reads the unit ran with its BEGIN (one round trip; PostgresUnitOfWork._begin),
        # by their SQL: good until the unit's first write, after which they may be stale.
        self.prefetched: dict[str, Row | None] = {}

    @property
    def active(self) -> bool:
        return self.conn is not None

    def connection(self) -> _Connection:
        if self.conn is None:
            raise StorageError("unit of work is not open (not entered, committed or rolled back)")
        return self.conn

    def statement(self, *, write: bool = False) -> _Connection:
        """The connection for the unit's next statement (a lookup unit runs one read)."""
        self._budget.spend(write=write)
        if write:
            self.prefetched.clear()
        return self.connection()

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run one statement (``?`` placeholders); returns the number of rows changed."""
        try:
            return self.statement(write=True).execute(_dialect(sql), params).rowcount
        except psycopg.Error as exc:
            raise translate(exc, "postgres statement failed") from exc

    def insert(self, sql: str, params: Sequence[object]) -> bool:
        """Run ``sql`` (an INSERT) with ``ON CONFLICT DO NOTHING``; False when a unique key was taken.

        ON CONFLICT instead of catching the unique violation: a failed statement would abort the
        whole PostgreSQL transaction, and the caller may go on after a duplicate (as with SQLite).
        """
        return self.execute(sql + " ON CONFLICT DO NOTHING", params) == 1

    def insert_many(self, sql: str, rows: Sequence[Sequence[object]]) -> bool:
        """``insert`` for every row as one statement; False when a unique key was taken."""
        statement, params = multi_row(sql, rows)
        return self.execute(statement + " ON CONFLICT DO NOTHING", params) == len(rows)

    def one(self, sql: str, params: Sequence[object]) -> Row | None:
        if not params and sql in self.prefetched:
            self._budget.spend()
            return self.prefetched.pop(sql)
        try:
            row: Row | None = self.statement().execute(_dialect(sql), params).fetchone()
        except psycopg.Error as exc:
            raise translate(exc, "postgres query failed") from exc
        return row

    def all(self, sql: str, params: Sequence[object]) -> list[Row]:
        try:
            rows: list[Row] = self.statement().execute(_dialect(sql), params).fetchall()
        except psycopg.Error as exc:
            raise translate(exc, "postgres query failed") from exc
        return rows

    # The dialect seam of server/storage/sql_repositories.py.

    @staticmethod
    def bind_time(value: datetime | None) -> object:
        """``timestamptz``: psycopg binds an aware datetime as it is."""
        return value

    @staticmethod
    def read_time(value: object) -> datetime:
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise StorageError(f"corrupt row: expected timestamptz, got {type(value).__name__}")
        return value.astimezone(UTC)

    def read_opt_time(self, value: object) -> datetime | None:
        return None if value is None else self.read_time(value)

    @staticmethod
    def unindexed(column: str) -> str:
        """PostgreSQL plans from statistics: no hint needed."""
        return column


def _last_row(cursor: psycopg.Cursor[Row]) -> Row | None:
    """The row of the last statement of a multi-statement query (None when it returned none)."""
    while cursor.nextset():
        pass
    return cursor.fetchone()


@functools.lru_cache(maxsize=256)
def _dialect(sql: str) -> str:
    """The repositories' ``?`` placeholders as psycopg's ``%s`` (their SQL holds no other ``?`` or ``%``)."""
    return sql.replace("?", "%s")


def _closed_while_idle(conn: _Connection) -> bool:
    """Whether an idle pooled connection is gone, without a round trip: one ``poll`` of its socket.

    An idle connection expects nothing from the server, so a readable socket means end of file
    (the server or a middlebox closed it) or the server's last words before closing it (a FATAL
    such as 57P01 on shutdown); either way it is not used again. A connection dropped without a
    packet (a host gone) still looks alive here and fails at its first statement.
    """
    if conn.closed or conn.broken:
        return True
    try:
        fd = conn.fileno()
    except psycopg.Error:
        return True
    watch = select.poll()
    watch.register(fd, select.POLLIN | select.POLLPRI)
    return bool(watch.poll(0))  # POLLHUP and POLLERR are reported whether asked for or not


def _in_transaction(conn: _Connection) -> bool:
    return conn.info.transaction_status != TransactionStatus.IDLE


class PostgresUnitOfWork(SqlRepositories):
    """One transaction on one pooled connection; see the module docstring."""

    def __init__(self, store: PostgresStore, *, read_only: bool, snapshot: bool = True) -> None:
        self._store = store
        self._read_only = read_only or not snapshot
        self._snapshot = snapshot
        self._tx = _Transaction(single_statement=not snapshot, packs=store.packs)
        self._entered = False
        super().__init__(self._tx)

    def __enter__(self) -> Self:
        if self._entered:
            raise StorageError("a unit of work can be entered only once")
        self._entered = True
        if not self._read_only and not self._store.write_lock.acquire(timeout=self._store.busy_timeout_s):
            raise StorageError("timed out waiting for the write lock", retryable=True)
        try:
            self._tx.conn = self._begin()
        except BaseException:
            self._release_write_lock()
            raise
        return self

    def _begin(self) -> _Connection:
        """A pooled connection inside this unit's transaction (a dead pooled one is replaced once)."""
        conn, pooled = self._store.acquire()
        while True:
            try:
                if not self._snapshot:
                    pass  # a lookup: its one statement runs in autocommit (PostgresStore.lookup)
                elif self._read_only:
                    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                elif self._store.has_audit_chain:
                    self._tx.prefetched = {AUDIT_HEAD: _last_row(conn.execute(_BEGIN_WRITE))}
                else:
                    conn.execute(_BEGIN_WRITE_WITHOUT_HEAD)
            except psycopg.Error as exc:
                self._store.release(conn, healthy=self._rolled_back(conn))
                if pooled and conn.broken:
                    # An idle connection died (server restart, idle timeout): nothing was done
                    # yet, so try once more on a new connection; the other idle ones likely died too.
                    self._store.discard_idle()
                    conn, pooled = self._store.acquire()
                    continue
                raise translate(exc, "cannot begin a transaction") from exc
            return conn

    @staticmethod
    def _rolled_back(conn: _Connection) -> bool:
        """Roll back whatever is open on ``conn``; True when it is clean and may be pooled again."""
        if conn.closed or conn.broken:
            return False
        if _in_transaction(conn):
            try:
                conn.execute("ROLLBACK")
            except psycopg.Error:
                return False
        return not _in_transaction(conn)

    def _release_write_lock(self) -> None:
        if not self._read_only:
            self._store.write_lock.release()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._tx.active:
            return
        try:
            self.rollback()
        except StorageError:
            if exc is None:
                raise
            # the original exception is the one to report; the rollback failure is secondary
            logger.exception("rollback failed while handling %s", exc_type)

    def commit(self) -> None:
        """Commit and finish the unit; on failure it is rolled back and StorageError raised."""
        conn = self._tx.connection()
        if conn.info.transaction_status == TransactionStatus.INERROR:
            self._finish(conn)
            raise StorageError("cannot commit: a statement of this unit failed, so it was rolled back")
        try:
            status = conn.execute("COMMIT").statusmessage
        except psycopg.Error as exc:
            self._finish(conn)
            raise translate(exc, "commit failed") from exc
        self._finish(conn)
        if status != "COMMIT":  # the server answers COMMIT of a failed transaction with ROLLBACK
            raise StorageError(f"commit failed: the server answered {status}")

    def rollback(self) -> None:
        """Roll back and finish the unit."""
        conn = self._tx.connection()
        self._finish(conn)

    def _insert_and_commit(self, inserts: Sequence[Insert]) -> bool:
        """The inserts and the COMMIT sent together and answered together: one round trip, in
        pipeline mode (each statement's result waits for the server's reply to all of them).

        The statements are plain INSERTs, not ``ON CONFLICT DO NOTHING``: their row counts arrive
        only after the COMMIT was sent, too late to decide against it. A taken key therefore fails
        its statement, which aborts the transaction; the server skips the rest of the pipeline,
        COMMIT included, and the unit is rolled back."""
        conn = self._tx.statement(write=True)
        try:
            # The INSERTs of a batch of up to PREPARED_BATCH_MAX creates are prepared as psycopg
            # prepares any statement, on a connection's fifth use of one text (one text per table
            # and batch size), and PostgreSQL then plans them once: parsing, analysing and planning
            # every batch's multi-row INSERTs, with custom plans copying each bound value (the
            # bundles, the documents) into their trees, cost about 5 % of the server's CPU per
            # create (bench/README.md, ninth section). What makes preparing safe is below: a failed
            # pipeline's connection is never used again.
            with conn.pipeline() if _PIPELINE else contextlib.nullcontext():
                for sql, rows in inserts:
                    statement, params = multi_row(sql, rows)
                    conn.execute(
                        _dialect(statement),
                        params,
                        prepare=None if len(rows) <= PREPARED_BATCH_MAX else False,
                    )
                status = conn.execute("COMMIT", prepare=False)
        except psycopg.errors.UniqueViolation as exc:
            # A connection whose pipeline was aborted is closed, not pooled. The server skipped
            # every statement after the failed one, their Parse too, so one psycopg had decided to
            # prepare would be remembered as prepared and fail its next use ("prepared statement
            # _pg3_0 does not exist", seen in a replica's CI run before this close).
            conn.close()
            self._finish(conn)
            if exc.diag.table_name == "audit_events":  # pragma: no cover - the advisory lock prevents it
                raise StorageError("an audit seq was taken concurrently", retryable=True) from exc
            return False
        except psycopg.Error as exc:
            conn.close()
            self._finish(conn)
            raise translate(exc, "cannot store the creates") from exc
        self._finish(conn)
        if status.statusmessage != "COMMIT":
            raise StorageError(f"commit failed: the server answered {status.statusmessage}")
        return True

    def _finish(self, conn: _Connection) -> None:
        self._tx.conn = None
        failure: psycopg.Error | None = None
        healthy = not (conn.closed or conn.broken)
        try:
            if healthy and _in_transaction(conn):
                try:
                    conn.execute("ROLLBACK")
                except psycopg.Error as exc:
                    healthy = False
                    failure = exc
            self._store.release(conn, healthy=healthy and not _in_transaction(conn))
        finally:
            self._release_write_lock()
        if failure is not None:
            raise translate(failure, "rollback failed")


def migrate_postgres(
    conn: _Connection, migrations: Sequence[Migration], now: Callable[[], datetime]
) -> list[int]:
    """Apply pending ``migrations`` to ``conn`` (autocommit mode); returns the versions applied.

    Each version runs in its own transaction together with its ``schema_migrations`` row, holding
    :data:`WRITE_LOCK_KEY` and re-reading the applied set, so two processes opening one new
    database at once apply each migration exactly once (and no write unit runs mid-migration).
    Raises :class:`SchemaVersionError` when the database has a version not in ``migrations``.
    """
    known = {m.version for m in migrations}

    def locked_applied() -> set[int]:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer NOT NULL PRIMARY KEY,"
            " applied_at timestamptz NOT NULL)"
        )
        applied = {int(row[0]) for row in conn.execute("SELECT version FROM schema_migrations")}
        refuse_unknown_versions(applied, known)
        return applied

    applied_now: list[int] = []
    for migration in (None, *migrations):  # None: only create the table and check the versions
        conn.execute("BEGIN")
        try:
            applied = locked_applied()
            if migration is None and known <= applied:
                conn.execute("COMMIT")
                return []  # the common case: one short transaction at open
            if migration is not None and migration.version not in applied:
                conn.execute(migration.sql)  # no parameters: psycopg sends the whole script as it is
                conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (%s, %s)",
                    (migration.version, now()),
                )
                applied_now.append(migration.version)
            conn.execute("COMMIT")
        except BaseException:
            if not conn.closed and _in_transaction(conn):
                with contextlib.suppress(psycopg.Error):  # the first failure is the one to report
                    conn.execute("ROLLBACK")
            raise
    return applied_now


# The refilled level of the key's bucket, from its stored level and the time since its last use.
_REFILLED = (
    "LEAST(%(budget)s, b.tokens + GREATEST(0, EXTRACT(EPOCH FROM EXCLUDED.updated_at - b.updated_at)"
    "::double precision) * %(rate)s)"
)
# One statement in its own implicit transaction. Its CTE turns off waiting for the WAL flush at
# that transaction's commit (``set_config(…, true)``: this transaction only; PostgresStore.spend_budget
# says why that is safe), and the row to insert is selected from the CTE so that it is evaluated.
# One statement rather than ``SET LOCAL …; INSERT …`` as one simple query: psycopg prepares it after
# a few calls on a connection, so the server no longer parses and plans two statements per call
# (measured: 180 → 100 µs of backend CPU, 330 → 225 µs per spend, bench/README.md).
# The spend itself, after the INSERT of a full bucket less one: an existing bucket is refilled and
# spends one request if it has one. Shared by _SPEND_BUDGET and _FIND_TOKEN_AND_SPEND.
_SPEND_EXISTING = f"""ON CONFLICT (bucket_key) DO UPDATE SET
    last_allowed = {_REFILLED} >= 1,
    tokens = {_REFILLED} - CASE WHEN {_REFILLED} >= 1 THEN 1 ELSE 0 END,
    updated_at = EXCLUDED.updated_at
RETURNING tokens, last_allowed"""
_SPEND_BUDGET = f"""
WITH unflushed AS (SELECT set_config('synchronous_commit', 'off', true))
INSERT INTO rate_buckets AS b (bucket_key, tokens, last_allowed, updated_at)
SELECT %(key)s, %(budget)s - 1, true, clock_timestamp() FROM unflushed
{_SPEND_EXISTING}
"""
# The caller's live token and, when its role may make the call, the spend of _SPEND_BUDGET on the
# token's bucket, as one statement: one round trip per authenticated call instead of two. The
# spend's CTE runs only for a token that exists, is not revoked and whose role is in %(roles)s,
# so a refused call spends nothing, as when the look-up and the spend were two statements. The
# token's row and the bucket are read and written in one statement, so a revocation that commits
# first is seen and one that commits later does not undo the spend, again as before.
_FIND_TOKEN_AND_SPEND = f"""
WITH token AS (
    SELECT token_id, name, role, token_sha256, created_at, revoked_at FROM tokens
    WHERE token_sha256 = %(digest)s AND revoked_at IS NULL
), unflushed AS (SELECT set_config('synchronous_commit', 'off', true)),
spent AS (
    INSERT INTO rate_buckets AS b (bucket_key, tokens, last_allowed, updated_at)
    SELECT %(prefix)s || token.token_id, %(budget)s - 1, true, clock_timestamp() FROM token, unflushed
    WHERE token.role = ANY(%(roles)s)
{_SPEND_EXISTING}
)
SELECT token.*, spent.tokens, spent.last_allowed FROM token LEFT JOIN spent ON true
"""


def _spent(tokens: object, allowed: object, rate: float) -> tuple[bool, float]:
    """(allowed, seconds until a request is back) of a bucket left at ``tokens`` (refill ``rate``/s)."""
    level = float(tokens)  # type: ignore[arg-type]  # a double precision column
    return bool(allowed), 0.0 if allowed else max(0.0, (1.0 - level) / rate)


class PostgresStore:
    """The PostgreSQL store at ``url`` (a libpq URL or conninfo; schema migrated on open).

    ``busy_timeout_s`` bounds how long a write unit waits for the write locks (in-process and
    advisory) before failing with a retryable :class:`StorageError`. ``connect_timeout_s`` applies
    unless the URL sets ``connect_timeout``. ``now`` stamps ``schema_migrations.applied_at``.
    Put the password in ``PGPASSWORD`` or ``~/.pgpass``, not in the URL: the URL is logged.
    """

    def __init__(
        self,
        url: str,
        *,
        busy_timeout_s: float = 5.0,
        connect_timeout_s: int = 10,
        max_idle_connections: int = 8,
        migrations: Sequence[Migration] | None = None,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        if busy_timeout_s <= 0:
            raise ValueError("busy_timeout_s must be > 0")
        try:
            given = conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise StorageError(f"invalid PostgreSQL URL: {exc}") from exc
        defaults: dict[str, str | int] = {}
        if "connect_timeout" not in given:
            defaults["connect_timeout"] = connect_timeout_s
        if "application_name" not in given:
            defaults["application_name"] = "kis-estimator"
        self._conninfo = conninfo.make_conninfo(url, **defaults)  # the URL's own settings win
        self._busy_timeout_s = busy_timeout_s
        self.write_lock = threading.Lock()
        self._max_idle = max_idle_connections
        self._lock = threading.Lock()
        self._idle: list[_Connection] = []
        self._closed = False
        conn = self._connect()
        try:
            migrate_postgres(
                conn,
                load_migrations(package_dir=POSTGRES_MIGRATIONS) if migrations is None else migrations,
                now,
            )
            # Every schema from 0002 on has the audit chain, and from 0005 on a bytea document
            # (packed values); one opened at an older schema (the upgrade tests write through
            # such stores) has neither: a write unit reads no head there and packs nothing.
            row = conn.execute(_SCHEMA_FEATURES).fetchone()
            self.has_audit_chain = row is not None and bool(row[0])
            self.packs_large_values = row is not None and bool(row[1])
        except psycopg.Error as exc:
            conn.close()
            raise translate(exc, "cannot migrate the PostgreSQL schema") from exc
        except BaseException:
            conn.close()
            raise
        self._idle.append(conn)

    def _connect(self) -> _Connection:
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise translate(exc, "cannot connect to PostgreSQL") from exc
        try:
            # UTC: timestamptz values come back in UTC. lock_timeout bounds the advisory-lock wait
            # (and any other lock wait) like SQLite's busy_timeout; it fails with 55P03 (retryable).
            conn.execute(
                "SELECT set_config('TimeZone', 'UTC', false), set_config('lock_timeout', %s, false)",
                (f"{max(1, round(self._busy_timeout_s * 1000))}ms",),
            )
        except psycopg.Error as exc:
            conn.close()
            raise translate(exc, "cannot configure the PostgreSQL session") from exc
        return conn

    def acquire(self) -> tuple[_Connection, bool]:
        """A connection for a unit of work, and whether it came from the pool (used by the unit).

        A pooled connection the server or the network has closed while it sat idle is closed
        and passed over (:func:`_closed_while_idle`), so the unit does not find out by failing:
        after a database restart, or once a proxy or firewall dropped idle connections, every
        pooled connection is dead, and a lookup or budget spend has no ``BEGIN`` to fail first.
        """
        while True:
            with self._lock:
                if self._closed:
                    raise StorageError("store is closed")
                if not self._idle:
                    break
                conn = self._idle.pop()
            if not _closed_while_idle(conn):
                return conn, True
            conn.close()
        return self._connect(), False

    def release(self, conn: _Connection, *, healthy: bool) -> None:
        """Return a connection after its unit finished; broken or surplus ones are closed."""
        with self._lock:
            if healthy and not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def discard_idle(self) -> None:
        """Close every idle connection (after one was found dead)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    @property
    def busy_timeout_s(self) -> float:
        return self._busy_timeout_s

    def unit_of_work(self, *, read_only: bool = False) -> PostgresUnitOfWork:
        return PostgresUnitOfWork(self, read_only=read_only)

    def lookup(self) -> PostgresUnitOfWork:
        """A read-only unit for one statement in autocommit, no ``BEGIN``/``ROLLBACK`` round trips
        (``Store.lookup``); writes are refused by the unit, not by a READ ONLY transaction."""
        return PostgresUnitOfWork(self, read_only=True, snapshot=False)

    def spend_budget(self, key: str, budget: int, window_s: float) -> tuple[bool, float]:
        """Spend one request of ``key``'s token bucket (``budget`` per ``window_s``, refilled
        continuously) in the table every replica shares: (allowed, seconds until one is back).

        One upsert in its own transaction: it locks the key's row only, so replicas spending
        different keys never wait for each other, and two spending the same key are serialised by
        that row lock (never both given the last request). The database clock stamps the bucket.

        The transaction commits without waiting for its WAL flush (``synchronous_commit`` off for
        it alone; the flush follows within ``wal_writer_delay``). Every call of one token spends
        that token's row, so with a synchronous commit every call of the token, on every replica,
        queued behind the previous one's disk flush while it held the row. What a crash of the
        database host can lose is the last fraction of a second of spending: a token gets at most
        that many calls more in its window, and nothing a caller was told is undone.
        """
        rate = budget / window_s
        row = self._one_autocommitted(
            _SPEND_BUDGET,
            {"key": key, "budget": float(budget), "rate": rate},
            "cannot spend the request budget",
        )
        if row is None:
            raise StorageError("the request budget upsert returned no row")
        return _spent(row[0], row[1], rate)

    def find_token_and_spend(
        self, token_sha256: str, roles: Sequence[str], key_prefix: str, budget: int, window_s: float
    ) -> tuple[TokenRecord | None, tuple[bool, float] | None]:
        """The live (unrevoked) token of ``token_sha256`` and, when its role is one of ``roles``,
        one request spent from the bucket ``key_prefix`` + its id as :meth:`spend_budget` spends
        it, in one statement (``_FIND_TOKEN_AND_SPEND``): (None, None) for no such token, (token,
        None) for a role that may not make the call (nothing spent), else (token, (allowed, seconds
        until one is back))."""
        rate = budget / window_s
        params = {
            "digest": token_sha256,
            "roles": list(roles),
            "prefix": key_prefix,
            "budget": float(budget),
            "rate": rate,
        }
        row = self._one_autocommitted(_FIND_TOKEN_AND_SPEND, params, "cannot look up the token")
        if row is None:
            return None, None
        token = token_of(row, _Transaction.read_time)
        return token, None if row[6] is None else _spent(row[6], row[7], rate)

    def _one_autocommitted(
        self, query: str, params: dict[str, object], what: str
    ) -> tuple[object, ...] | None:
        """The first row of one statement in its own implicit transaction on a pooled connection."""
        conn, _ = self.acquire()
        healthy = True
        try:
            row: tuple[object, ...] | None = conn.execute(query, params).fetchone()
        except psycopg.Error as exc:
            healthy = not conn.closed and not _in_transaction(conn)
            raise translate(exc, what) from exc
        finally:
            self.release(conn, healthy=healthy)
        return row

    def packs(self, value: Large) -> bool:
        """Both the document and the bundle, as zstd frames (``bytea`` kept as it is: migration
        0005), packed by the replica, not by the database every replica shares (storage/packing.py);
        neither on an older schema."""
        return self.packs_large_values

    def prepare_rows(self, rows: NewRows) -> None:
        pack_ahead(rows, self.packs)

    def size_bytes(self) -> int:
        """``pg_database_size`` of the store's database (tables, indexes, TOAST; not the WAL)."""
        row = self._one_autocommitted(
            "SELECT pg_database_size(current_database())", {}, "cannot read the database size"
        )
        if row is None or not isinstance(row[0], int):
            raise StorageError(f"pg_database_size returned {row!r}")
        return row[0]

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.discard_idle()


__all__ = [
    "WRITE_LOCK_KEY",
    "PostgresStore",
    "PostgresUnitOfWork",
    "migrate_postgres",
    "translate",
]
