"""SQLite implementation of :mod:`server.storage.repository` (WAL, plain parameterized SQL).

Connection model. The gRPC server calls in from a thread pool, and a ``sqlite3.Connection`` must
never be used by two threads at once. So each unit of work checks one connection out of a small
pool for its whole life and returns it afterwards: a connection is used by one thread at a time
(``check_same_thread=False`` only lets it move between threads between units). The pool keeps at
most ``max_idle_connections`` idle connections and opens more on demand, so concurrency is bounded
by the callers' thread pool, not here. A unit of work itself must stay on one thread.

Transactions. Connections run in autocommit mode and each unit issues its own ``BEGIN``:

* write units: ``BEGIN IMMEDIATE`` takes the write lock up front, so writers queue on
  ``busy_timeout`` instead of failing with an unretriable lock upgrade mid-transaction; a
  read-check-insert in one write unit (dedup, MIXED quota, the audit chain's head) is therefore
  atomic;
* read-only units: ``BEGIN DEFERRED`` under ``PRAGMA query_only``; in WAL mode they read a
  consistent snapshot and never block or wait for writers.

Durability: ``synchronous = FULL``, so a committed estimate (and the reply built from it) survives
power loss, not just a process crash. Requires SQLite >= 3.37 (STRICT tables).
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Self

from server.engine.audit import AuditDraft, AuditEvent, seal
from server.engine.codec import (
    datetime_from_text,
    datetime_to_text,
)
from server.engine.model import Status
from server.engine.records import EstimateRecord
from server.storage.migrate import Migration, load_migrations, migrate_sqlite
from server.storage.repository import (
    AuditFilter,
    DuplicateKeyError,
    EstimateCursor,
    EvidenceRecord,
    GrantExistsError,
    IdempotencyRecord,
    MixedGrant,
    StaleRevisionError,
    StorageError,
    TokenRecord,
)
from server.storage.rows import Row, audit_event_of, evidence_of, token_of
from server.storage.rows import blob as _blob
from server.storage.rows import count as _count
from server.storage.rows import details_text as _details_text
from server.storage.rows import document_text as _document_text
from server.storage.rows import integer as _int
from server.storage.rows import page_of as _page
from server.storage.rows import record_of as _record
from server.storage.rows import text as _text

logger = logging.getLogger(__name__)

MIN_SQLITE_VERSION = (3, 37, 0)
FILE_MODE = 0o600  # the database and its -wal/-shm files: owner only
_RETRYABLE = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_UNIQUE = frozenset({sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY})


def _utc_now() -> datetime:
    return datetime.now(UTC)


def translate(exc: sqlite3.Error, what: str) -> StorageError:
    """The storage error for a driver error; busy/locked (also extended codes) are retryable."""
    code = getattr(exc, "sqlite_errorcode", None)
    retryable = isinstance(code, int) and (code & 0xFF) in _RETRYABLE
    err = StorageError(f"{what}: {exc}", retryable=retryable)
    err.__cause__ = exc
    return err


def _is_unique_violation(exc: sqlite3.IntegrityError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in _UNIQUE


# --------------------------------------------------------------------------- transaction


class _Transaction:
    """The connection of one open unit of work; every statement goes through here."""

    def __init__(self) -> None:
        self.conn: sqlite3.Connection | None = None  # set while the unit is open

    @property
    def active(self) -> bool:
        return self.conn is not None

    def connection(self) -> sqlite3.Connection:
        if self.conn is None:
            raise StorageError("unit of work is not open (not entered, committed or rolled back)")
        return self.conn

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run one statement; returns the number of rows changed."""
        try:
            return self.connection().execute(sql, params).rowcount
        except sqlite3.Error as exc:
            raise translate(exc, "sqlite statement failed") from exc

    def insert(self, sql: str, params: Sequence[object]) -> bool:
        """Run an INSERT; False (nothing written) when a unique or primary key is already taken."""
        try:
            self.connection().execute(sql, params)
        except sqlite3.IntegrityError as exc:
            if _is_unique_violation(exc):
                return False
            raise translate(exc, "sqlite insert failed") from exc
        except sqlite3.Error as exc:
            raise translate(exc, "sqlite insert failed") from exc
        return True

    def one(self, sql: str, params: Sequence[object]) -> Row | None:
        try:
            row: Row | None = self.connection().execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise translate(exc, "sqlite query failed") from exc
        return row

    def all(self, sql: str, params: Sequence[object]) -> list[Row]:
        try:
            rows: list[Row] = self.connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise translate(exc, "sqlite query failed") from exc
        return rows


def _token(row: Row) -> TokenRecord:
    return token_of(row, _time)


def _evidence(row: Row, bundle: bytes) -> EvidenceRecord:
    return evidence_of(row, bundle, _time)


def _audit_event(row: Row) -> AuditEvent:
    return audit_event_of(row, _time)


def _time(value: object) -> datetime:
    try:
        return datetime_from_text(_text(value))
    except ValueError as exc:
        raise StorageError(f"corrupt row: {exc}") from exc


def _opt_time(value: object) -> datetime | None:
    return None if value is None else _time(value)


# --------------------------------------------------------------------------- repositories

_ESTIMATE_COLUMNS = (
    "estimate_id, revision, status, decision, brand, request_id, dedup_key, request_hash, actor,"
    " accepted_at, completed_at, total_krw, partial_subtotal_krw, catalog_version, document"
)
_ESTIMATE_PLACEHOLDERS = ", ".join("?" for _ in _ESTIMATE_COLUMNS.split(","))


class SqliteEstimateRepository:
    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    def add(self, record: EstimateRecord) -> None:
        """Insert a new estimate; DuplicateKeyError when its request_id or dedup_key is taken."""
        if record.request.brand is None:
            raise ValueError("a stored estimate needs a brand")
        inserted = self._tx.insert(
            f"INSERT INTO estimates ({_ESTIMATE_COLUMNS}) VALUES ({_ESTIMATE_PLACEHOLDERS})",
            (
                record.estimate_id,
                record.revision,
                record.status.value,
                record.decision.value,
                record.request.brand,
                record.request_id,
                record.dedup_key,
                record.request_hash,
                record.actor,
                datetime_to_text(record.accepted_at),
                None if record.completed_at is None else datetime_to_text(record.completed_at),
                record.quote.totals.total_krw,
                record.quote.totals.partial_subtotal_krw,
                record.quote.catalog_version,
                _document_text(record),
            ),
        )
        if inserted:
            return
        # Which key collided: request_id first; a replay wins over a duplicate (docs/pricing-rules.md §13).
        if record.request_id is not None:
            row = self._tx.one("SELECT estimate_id FROM estimates WHERE request_id = ?", (record.request_id,))
            if row is not None:
                raise DuplicateKeyError("request_id", _text(row[0]))
        if record.dedup_key is not None:
            existing = self.find_by_dedup_key(record.dedup_key)
            if existing is not None:
                raise DuplicateKeyError("dedup_key", existing)
        raise StorageError(f"estimate id {record.estimate_id} is already stored")

    def update(self, record: EstimateRecord) -> None:
        """Replace the stored revision ``record.revision - 1`` by ``record``."""
        row = self._tx.one(
            "SELECT revision, request_hash, request_id, dedup_key, actor, accepted_at"
            " FROM estimates WHERE estimate_id = ?",
            (record.estimate_id,),
        )
        expected = record.revision - 1
        if row is None:
            raise StaleRevisionError(record.estimate_id, expected, None)
        if row[0] != expected:
            found = row[0] if isinstance(row[0], int) else None
            raise StaleRevisionError(record.estimate_id, expected, found)
        identity = (
            record.request_hash,
            record.request_id,
            record.dedup_key,
            record.actor,
            datetime_to_text(record.accepted_at),
        )
        if tuple(row[1:]) != identity:
            raise ValueError(f"estimate {record.estimate_id}: an update must not change its identity fields")
        self._tx.execute(
            "UPDATE estimates SET revision = ?, status = ?, decision = ?, completed_at = ?, total_krw = ?,"
            " partial_subtotal_krw = ?, catalog_version = ?, document = ?"
            " WHERE estimate_id = ? AND revision = ?",
            (
                record.revision,
                record.status.value,
                record.decision.value,
                None if record.completed_at is None else datetime_to_text(record.completed_at),
                record.quote.totals.total_krw,
                record.quote.totals.partial_subtotal_krw,
                record.quote.catalog_version,
                _document_text(record),
                record.estimate_id,
                expected,
            ),
        )

    def get(self, estimate_id: str) -> EstimateRecord | None:
        row = self._tx.one("SELECT document FROM estimates WHERE estimate_id = ?", (estimate_id,))
        return None if row is None else _record(estimate_id, row[0])

    def find_by_dedup_key(self, dedup_key: str) -> str | None:
        row = self._tx.one("SELECT estimate_id FROM estimates WHERE dedup_key = ?", (dedup_key,))
        return None if row is None else _text(row[0])

    def list(
        self, status: Status | None, page_size: int, after: EstimateCursor | None
    ) -> tuple[Sequence[EstimateRecord], EstimateCursor | None]:
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        conditions: list[str] = []
        params: list[object] = []
        if status is not None:
            conditions.append("status = ?")
            params.append(status.value)
        if after is not None:
            conditions.append("(accepted_at, estimate_id) < (?, ?)")
            params += [datetime_to_text(after.accepted_at), after.estimate_id]
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = self._tx.all(
            f"SELECT estimate_id, document FROM estimates{where}"  # fixed fragments only; values are bound
            " ORDER BY accepted_at DESC, estimate_id DESC LIMIT ?",
            (*params, page_size + 1),
        )
        return _page(rows, page_size)

    def count_accepted(self, brand: str, accepted_from: datetime, accepted_before: datetime) -> int:
        row = self._tx.one(
            "SELECT COUNT(*) FROM estimates WHERE brand = ? AND accepted_at >= ? AND accepted_at < ?",
            (brand, datetime_to_text(accepted_from), datetime_to_text(accepted_before)),
        )
        return _count(row)

    def list_oldest(
        self, status: Status, page_size: int, after: EstimateCursor | None
    ) -> tuple[Sequence[EstimateRecord], EstimateCursor | None]:
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        params: list[object] = [status.value]
        keyset = ""
        if after is not None:
            keyset = " AND (accepted_at, estimate_id) > (?, ?)"
            params += [datetime_to_text(after.accepted_at), after.estimate_id]
        rows = self._tx.all(
            f"SELECT estimate_id, document FROM estimates WHERE status = ?{keyset}"  # fixed fragment
            " ORDER BY accepted_at, estimate_id LIMIT ?",
            (*params, page_size + 1),
        )
        return _page(rows, page_size)

    def count_by_status(self, accepted_from: datetime, accepted_before: datetime) -> dict[Status, int]:
        rows = self._tx.all(
            "SELECT status, COUNT(*) FROM estimates"
            " WHERE accepted_at >= ? AND accepted_at < ? GROUP BY status",
            (datetime_to_text(accepted_from), datetime_to_text(accepted_before)),
        )
        counts = dict.fromkeys(Status, 0)
        for status, count in rows:
            try:
                counts[Status(_text(status))] = _int(count)
            except ValueError as exc:
                raise StorageError(f"corrupt row: unknown status {status!r}") from exc
        return counts

    def tat_seconds(self, completed_from: datetime, completed_before: datetime) -> builtins.list[int]:
        # "+status": filter on it but search the completed_at window (index estimates_completed);
        # without statistics SQLite would otherwise scan every COMPLETED estimate ever stored.
        rows = self._tx.all(
            "SELECT accepted_at, completed_at FROM estimates"
            " WHERE completed_at >= ? AND completed_at < ? AND +status IN ('COMPLETED', 'REVIEWED')",
            (datetime_to_text(completed_from), datetime_to_text(completed_before)),
        )
        # timedelta // 1 µs is exact integer arithmetic, unlike total_seconds()
        return sorted((_time(done) - _time(accepted)) // _MICROSECOND for accepted, done in rows)

    def oldest_accepted_at(self, status: Status) -> datetime | None:
        row = self._tx.one("SELECT MIN(accepted_at) FROM estimates WHERE status = ?", (status.value,))
        return None if row is None else _opt_time(row[0])


_MICROSECOND = timedelta(microseconds=1)


class SqliteIdempotencyRepository:
    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    def get(self, request_id: str) -> IdempotencyRecord | None:
        row = self._tx.one(
            "SELECT request_id, request_hash, estimate_id, response FROM idempotency WHERE request_id = ?",
            (request_id,),
        )
        if row is None:
            return None
        response = row[3]
        if not isinstance(response, bytes):
            raise StorageError(f"idempotency {request_id}: response is not a BLOB")
        return IdempotencyRecord(
            request_id=_text(row[0]),
            request_hash=_text(row[1]),
            estimate_id=_text(row[2]),
            response=response,
        )

    def add(self, record: IdempotencyRecord, created_at: datetime) -> None:
        inserted = self._tx.insert(
            "INSERT INTO idempotency (request_id, request_hash, estimate_id, response, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                record.request_id,
                record.request_hash,
                record.estimate_id,
                bytes(record.response),
                datetime_to_text(created_at),
            ),
        )
        if not inserted:
            existing = self.get(record.request_id)
            if existing is None:  # pragma: no cover - the conflicting row is visible in this transaction
                raise StorageError(f"idempotency {record.request_id}: conflict without a stored row")
            raise DuplicateKeyError("request_id", existing.estimate_id)


_TOKEN_COLUMNS = "token_id, name, role, token_sha256, created_at, revoked_at"


class SqliteTokenRepository:
    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    def add(self, token_id: str, name: str, role: str, token_sha256: str, created_at: datetime) -> None:
        inserted = self._tx.insert(
            f"INSERT INTO tokens ({_TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL)",
            (token_id, name, role, token_sha256, datetime_to_text(created_at)),
        )
        if not inserted:
            raise StorageError(f"token {token_id}: its id or hash is already stored")

    def find_by_hash(self, token_sha256: str, *, include_revoked: bool = False) -> TokenRecord | None:
        live = "" if include_revoked else " AND revoked_at IS NULL"  # a fixed fragment; values are bound
        row = self._tx.one(
            f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE token_sha256 = ?{live}",
            (token_sha256,),
        )
        return None if row is None else _token(row)

    def list(self) -> Sequence[TokenRecord]:
        rows = self._tx.all(f"SELECT {_TOKEN_COLUMNS} FROM tokens ORDER BY created_at, token_id", ())
        return [_token(row) for row in rows]

    def revoke(self, token_id: str, at: datetime) -> bool:
        changed = self._tx.execute(
            "UPDATE tokens SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL",
            (datetime_to_text(at), token_id),
        )
        return changed == 1


# --------------------------------------------------------------------------- evidence

_EVIDENCE_INFO_COLUMNS = (
    "estimate_id, revision, sha256, size_bytes, signature_key_id, signature, created_at, manifest_json"
)


class SqliteEvidenceRepository:
    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    def add(self, record: EvidenceRecord) -> None:
        """Insert a revision's bundle; StorageError when that revision already has one."""
        if record.size_bytes != len(record.bundle):
            raise ValueError(f"evidence size_bytes {record.size_bytes} != bundle length {len(record.bundle)}")
        if record.sha256 != hashlib.sha256(record.bundle).hexdigest():
            raise ValueError("evidence sha256 does not match the bundle bytes")
        inserted = self._tx.insert(
            f"INSERT INTO evidence ({_EVIDENCE_INFO_COLUMNS}, bundle) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.estimate_id,
                record.revision,
                record.sha256,
                record.size_bytes,
                record.signature_key_id,
                record.signature,
                datetime_to_text(record.created_at),
                bytes(record.manifest_json),
                bytes(record.bundle),
            ),
        )
        if not inserted:
            raise StorageError(
                f"evidence of estimate {record.estimate_id} revision {record.revision} is already stored"
            )

    def get(self, estimate_id: str, revision: int | None) -> EvidenceRecord | None:
        row = self._row(f"{_EVIDENCE_INFO_COLUMNS}, bundle", estimate_id, revision)
        return None if row is None else _evidence(row, _blob(row[8]))

    def get_info(self, estimate_id: str, revision: int | None) -> EvidenceRecord | None:
        row = self._row(_EVIDENCE_INFO_COLUMNS, estimate_id, revision)
        return None if row is None else _evidence(row, b"")

    def _row(self, columns: str, estimate_id: str, revision: int | None) -> Row | None:
        # columns is one of the two constants above; values are bound
        if revision is None:
            return self._tx.one(
                f"SELECT {columns} FROM evidence WHERE estimate_id = ? ORDER BY revision DESC LIMIT 1",
                (estimate_id,),
            )
        return self._tx.one(
            f"SELECT {columns} FROM evidence WHERE estimate_id = ? AND revision = ?", (estimate_id, revision)
        )


# --------------------------------------------------------------------------- audit

_AUDIT_COLUMNS = (
    "seq, prev_hash, hash, at, action, outcome, actor, role, estimate_id, revision, details, peer"
)
_AUDIT_CHUNK = 500  # rows per read in iter_ascending: bounded memory for any log size


class SqliteAuditRepository:
    """The hash-chained audit log; the schema's triggers keep it append-only (migration 0002)."""

    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    def append(self, draft: AuditDraft) -> AuditEvent:
        """Seal ``draft`` after the current head and insert it (call in a write unit)."""
        head = self._tx.one("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1", ())
        last_seq, last_hash = (_int(head[0]), _text(head[1])) if head is not None else self.anchor()
        event = seal(last_seq + 1, last_hash, draft)
        inserted = self._tx.insert(
            f"INSERT INTO audit_events ({_AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                event.seq,
                event.prev_hash,
                event.hash,
                datetime_to_text(event.at),
                event.action,
                event.outcome,
                event.actor,
                event.role,
                event.estimate_id,
                event.revision,
                _details_text(event.details),
                event.peer,
            ),
        )
        if not inserted:  # pragma: no cover - the write lock makes the head read above current
            raise StorageError(f"audit seq {event.seq} was taken concurrently", retryable=True)
        return event

    def list(
        self, filter: AuditFilter, page_size: int, before_seq: int | None
    ) -> tuple[Sequence[AuditEvent], int | None]:
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        conditions: list[str] = []
        params: list[object] = []
        if filter.action is not None:
            conditions.append("action = ?")
            params.append(filter.action)
        if filter.estimate_id is not None:
            conditions.append("estimate_id = ?")
            params.append(filter.estimate_id)
        if filter.since is not None:
            conditions.append("at >= ?")
            params.append(datetime_to_text(filter.since))
        if filter.until is not None:
            conditions.append("at < ?")
            params.append(datetime_to_text(filter.until))
        if before_seq is not None:
            conditions.append("seq < ?")
            params.append(before_seq)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = self._tx.all(
            f"SELECT {_AUDIT_COLUMNS} FROM audit_events{where}"  # fixed fragments only; values are bound
            " ORDER BY seq DESC LIMIT ?",
            (*params, page_size + 1),
        )
        events = [_audit_event(row) for row in rows[:page_size]]
        return events, (events[-1].seq if len(rows) > page_size else None)

    def iter_ascending(self, from_seq: int = 1) -> Iterator[AuditEvent]:
        next_seq = from_seq
        while True:
            rows = self._tx.all(
                f"SELECT {_AUDIT_COLUMNS} FROM audit_events WHERE seq >= ? ORDER BY seq LIMIT ?",
                (next_seq, _AUDIT_CHUNK),
            )
            for row in rows:
                event = _audit_event(row)
                next_seq = event.seq + 1
                yield event
            if len(rows) < _AUDIT_CHUNK:
                return

    def anchor(self) -> tuple[int, str]:
        row = self._tx.one("SELECT seq, hash FROM audit_anchor WHERE id = 1", ())
        if row is None:
            raise StorageError("audit_anchor row is missing (schema 0002 inserts it)")
        return _int(row[0]), _text(row[1])

    def prune_before(self, cutoff: datetime) -> int:
        anchor_seq, _ = self.anchor()
        # "+at": walk seq upwards from the oldest event and stop at the first one to keep (reads
        # about as many rows as are pruned), rather than sorting every event after the cutoff.
        first_kept = self._tx.one(
            "SELECT seq FROM audit_events WHERE +at >= ? ORDER BY seq LIMIT 1", (datetime_to_text(cutoff),)
        )
        if first_kept is None:
            last = self._tx.one("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1", ())
        else:
            last = self._tx.one(
                "SELECT seq, hash FROM audit_events WHERE seq < ? ORDER BY seq DESC LIMIT 1",
                (_int(first_kept[0]),),
            )
        if last is None:
            return 0
        last_seq = _int(last[0])
        # Anchor first: the delete trigger only lets events up to the anchor go.
        self._tx.execute(
            "UPDATE audit_anchor SET seq = ?, hash = ?, pruned_before = ? WHERE id = 1",
            (last_seq, _text(last[1]), datetime_to_text(cutoff)),
        )
        return self._tx.execute("DELETE FROM audit_events WHERE seq > ? AND seq <= ?", (anchor_seq, last_seq))


# --------------------------------------------------------------------------- MIXED grants

_GRANT_COLUMNS = "grant_id, month, reason, actor, granted_at"


class SqliteMixedGrantRepository:
    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    def add(self, grant: MixedGrant) -> None:
        """Insert a grant; GrantExistsError when its month already has one."""
        inserted = self._tx.insert(
            f"INSERT INTO mixed_grants ({_GRANT_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
            (grant.grant_id, grant.month, grant.reason, grant.actor, datetime_to_text(grant.granted_at)),
        )
        if inserted:
            return
        existing = self.get(grant.month)
        if existing is not None:
            raise GrantExistsError(grant.month, existing.grant_id)
        raise StorageError(f"MIXED grant id {grant.grant_id} is already stored")

    def get(self, month: str) -> MixedGrant | None:
        row = self._tx.one(f"SELECT {_GRANT_COLUMNS} FROM mixed_grants WHERE month = ?", (month,))
        if row is None:
            return None
        try:
            return MixedGrant(
                grant_id=_text(row[0]),
                month=_text(row[1]),
                reason=_text(row[2]),
                actor=_text(row[3]),
                granted_at=_time(row[4]),
            )
        except ValueError as exc:
            raise StorageError(f"corrupt MIXED grant row: {exc}") from exc


# --------------------------------------------------------------------------- unit of work and store


class SqliteUnitOfWork:
    """One transaction on one pooled connection; see the module docstring."""

    def __init__(self, store: SqliteStore, *, read_only: bool) -> None:
        self._store = store
        self._read_only = read_only
        self._tx = _Transaction()
        self._entered = False
        self.estimates = SqliteEstimateRepository(self._tx)
        self.idempotency = SqliteIdempotencyRepository(self._tx)
        self.tokens = SqliteTokenRepository(self._tx)
        self.evidence = SqliteEvidenceRepository(self._tx)
        self.audit = SqliteAuditRepository(self._tx)
        self.mixed_grants = SqliteMixedGrantRepository(self._tx)

    def __enter__(self) -> Self:
        if self._entered:
            raise StorageError("a unit of work can be entered only once")
        self._entered = True
        if not self._read_only and not self._store.write_lock.acquire(timeout=self._store.busy_timeout_s):
            raise StorageError("timed out waiting for the write lock", retryable=True)
        try:
            conn = self._store.acquire()
        except BaseException:
            self._release_write_lock()
            raise
        try:
            conn.execute(f"PRAGMA query_only = {1 if self._read_only else 0}")
            conn.execute("BEGIN DEFERRED" if self._read_only else "BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._store.release(conn, healthy=not conn.in_transaction)
            self._release_write_lock()
            raise translate(exc, "cannot begin a transaction") from exc
        self._tx.conn = conn
        return self

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
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._finish(conn)
            raise translate(exc, "commit failed") from exc
        self._finish(conn)

    def rollback(self) -> None:
        """Roll back and finish the unit."""
        conn = self._tx.connection()
        self._finish(conn)

    def _finish(self, conn: sqlite3.Connection) -> None:
        self._tx.conn = None
        healthy = True
        failure: sqlite3.Error | None = None
        try:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as exc:
                    healthy = False
                    failure = exc
            self._store.release(conn, healthy=healthy)
        finally:
            self._release_write_lock()
        if failure is not None:
            raise translate(failure, "rollback failed")


class SqliteStore:
    """The SQLite store at ``path`` (parent directories created; schema migrated on open).

    ``busy_timeout_s`` bounds how long a write unit waits for the write lock before failing with a
    retryable :class:`StorageError`. ``now`` stamps ``schema_migrations.applied_at``.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        busy_timeout_s: float = 5.0,
        max_idle_connections: int = 8,
        migrations: Sequence[Migration] | None = None,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            raise StorageError(
                f"SQLite {sqlite3.sqlite_version} is too old; "
                f"need {'.'.join(map(str, MIN_SQLITE_VERSION))} or newer"
            )
        if busy_timeout_s <= 0:
            raise ValueError("busy_timeout_s must be > 0")
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        # Writers of this process queue on a Python lock before BEGIN IMMEDIATE: SQLite's own busy
        # handler polls with sleeps of up to 100 ms, which turned 8 concurrent creates into a p95 of
        # ~400 ms. Other processes (CLI token commands) still meet busy_timeout, as before.
        self.write_lock = threading.Lock()
        self._stopping = threading.Event()
        self._checkpointer: threading.Thread | None = None
        self._max_idle = max_idle_connections
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the directory of {self.path}: {exc}") from exc
        self._restrict_permissions()
        conn = self._connect()
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise StorageError(f"{self.path}: cannot switch to WAL journal mode (got {mode})")
            migrate_sqlite(
                conn,
                load_migrations() if migrations is None else migrations,
                now=now,
                format_time=datetime_to_text,
            )
        except sqlite3.Error as exc:
            conn.close()
            raise translate(exc, f"cannot open {self.path}") from exc
        except BaseException:
            conn.close()
            raise
        self._idle.append(conn)
        self.start_checkpointer()

    def _restrict_permissions(self) -> None:
        """Create the database file 0600 (owner only), like the evidence key file, and tighten an
        existing one (and its WAL and shared-memory files) that group or others may read.

        SQLite creates ``-wal`` and ``-shm`` with the permissions of the database file, so a 0600
        database keeps them 0600 too. The store holds every customer's request and the token hashes.
        """
        try:
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE))
        except OSError as exc:
            raise StorageError(f"cannot create or open {self.path}: {exc}") from exc
        for path in self.files():
            try:
                if path.exists() and path.stat().st_mode & 0o077:
                    path.chmod(FILE_MODE)
                    logger.warning("restricted %s to mode 0600 (group or others could read it)", path)
            except OSError as exc:  # not the owner: serve anyway, and say so
                logger.warning("cannot restrict %s to mode 0600: %s", path, exc)

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout_s,  # sets SQLite's busy_timeout on this connection
                isolation_level=None,  # autocommit: units issue BEGIN/COMMIT themselves
                check_same_thread=False,  # moved between threads by the pool, never shared
            )
        except sqlite3.Error as exc:
            raise translate(exc, f"cannot open {self.path}") from exc
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = FULL")
            # Checkpoints run in the background thread (see _checkpoint_loop), not in a committing
            # request: an inline auto-checkpoint copies ~4 MB and stalled 1 % of creates by ~150 ms.
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        except sqlite3.Error as exc:
            conn.close()
            raise translate(exc, f"cannot configure {self.path}") from exc
        return conn

    def acquire(self) -> sqlite3.Connection:
        """A connection for the calling unit of work (pool internals, used by SqliteUnitOfWork)."""
        with self._lock:
            if self._closed:
                raise StorageError("store is closed")
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def release(self, conn: sqlite3.Connection, *, healthy: bool) -> None:
        """Return a connection after its unit finished; broken or surplus ones are closed."""
        with self._lock:
            if healthy and not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()

    @property
    def busy_timeout_s(self) -> float:
        return self._busy_timeout_s

    def unit_of_work(self, *, read_only: bool = False) -> SqliteUnitOfWork:
        return SqliteUnitOfWork(self, read_only=read_only)

    def start_checkpointer(self, interval_s: float = 1.0) -> None:
        """Run ``PRAGMA wal_checkpoint(PASSIVE)`` every ``interval_s`` in a daemon thread until close.

        PASSIVE never blocks readers or writers; whatever it cannot copy now, the next run does.
        """
        if self._checkpointer is not None:
            return
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, args=(interval_s,), name="sqlite-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def _checkpoint_loop(self, interval_s: float) -> None:
        conn = self._connect()
        try:
            while not self._stopping.wait(interval_s):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    logger.exception("WAL checkpoint failed; retrying in %s s", interval_s)
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            logger.exception("final WAL checkpoint failed")
        finally:
            conn.close()

    def files(self) -> tuple[Path, Path, Path]:
        """The database file and its WAL and shared-memory companions."""
        return self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")

    def size_bytes(self) -> int:
        """Bytes of the database, WAL and shared-memory files (a missing companion counts 0)."""
        total = 0
        for path in self.files():
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StorageError(f"cannot stat {path}: {exc}") from exc
        return total

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        self._stopping.set()
        if self._checkpointer is not None:
            self._checkpointer.join(timeout=self._busy_timeout_s + 5)
        for conn in idle:
            conn.close()


__all__ = [
    "MIN_SQLITE_VERSION",
    "SqliteAuditRepository",
    "SqliteEstimateRepository",
    "SqliteEvidenceRepository",
    "SqliteIdempotencyRepository",
    "SqliteMixedGrantRepository",
    "SqliteStore",
    "SqliteTokenRepository",
    "SqliteUnitOfWork",
    "translate",
]
