"""The repositories of :mod:`kis_estimator.server.storage.repository`, written once for SQLite and PostgreSQL.

The SQL is the same for both stores; what differs sits behind :class:`SqlTransaction`, the dialect
seam each store's transaction implements (``server/storage/sqlite.py``, ``server/storage/postgres.py``):

* placeholders: the statements here use ``?``; PostgreSQL's transaction rewrites them to ``%s``;
* unique keys: :meth:`SqlTransaction.insert` returns False when a unique key is already taken, and
  leaves the transaction usable (SQLite: the unique-violation error is caught; PostgreSQL: the
  statement gets ``ON CONFLICT DO NOTHING``, because any failed statement aborts its transaction);
* times: :meth:`SqlTransaction.bind_time` is what a datetime is bound as (SQLite: fixed-width UTC
  text, which sorts like the instant; PostgreSQL: ``timestamptz``), :meth:`SqlTransaction.read_time`
  reads it back as an aware UTC datetime, and refuses a corrupt value with StorageError;
* large values: :meth:`SqlTransaction.packs` says which of a create's document and bundle
  (:class:`~kis_estimator.server.storage.rows.Large`) are stored as a zstd frame, packed by the
  replica (``server/storage/packing.py``: on PostgreSQL both, so that the shared database does not
  compress them; on SQLite the bundle, the document staying TEXT); reading unpacks a frame;
* planner hints: :meth:`SqlTransaction.unindexed` names a column whose index must not be used
  (SQLite's unary ``+``; PostgreSQL plans from statistics and needs none);
* a batch's inserts and commit: :meth:`SqlRepositories.store_creates` builds the statements once
  and each store's unit runs them (``_insert_and_commit``: SQLite one after the other, PostgreSQL
  in one pipelined round trip).

Locking and isolation are the stores' (their module docstrings): every write unit runs alone, so
the read-check-insert sequences below (dedup, quota, the audit chain's head) are serial.
"""

from __future__ import annotations

import builtins
import hashlib
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from kis_estimator.server.engine.audit import AuditDraft, AuditEvent, seal
from kis_estimator.server.engine.model import Status
from kis_estimator.server.engine.records import EstimateRecord
from kis_estimator.server.storage.packing import unpack
from kis_estimator.server.storage.repository import (
    AuditFilter,
    DuplicateKeyError,
    EstimateCursor,
    EvidenceRecord,
    GrantExistsError,
    IdempotencyRecord,
    MixedGrant,
    NewRows,
    StaleRevisionError,
    StorageError,
    TokenRecord,
)
from kis_estimator.server.storage.rows import (
    Large,
    Row,
    audit_event_of,
    estimate_row,
    evidence_of,
    evidence_row,
    idempotency_row,
    token_of,
)
from kis_estimator.server.storage.rows import blob as _blob
from kis_estimator.server.storage.rows import count as _count
from kis_estimator.server.storage.rows import details_text as _details_text
from kis_estimator.server.storage.rows import document_text as _document_text
from kis_estimator.server.storage.rows import integer as _int
from kis_estimator.server.storage.rows import opt_text as _opt_text
from kis_estimator.server.storage.rows import page_of as _page
from kis_estimator.server.storage.rows import record_of as _record
from kis_estimator.server.storage.rows import text as _text


class SqlTransaction(Protocol):
    """One open unit of work's statements, in the store's dialect (module docstring)."""

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run one statement; the number of rows changed."""

    def insert(self, sql: str, params: Sequence[object]) -> bool:
        """Run an INSERT; False (nothing written, transaction usable) when a unique key is taken."""

    def insert_many(self, sql: str, rows: Sequence[Sequence[object]]) -> bool:
        """Every row inserted by one statement (:func:`multi_row`); False when a unique key was taken
        (then the unit may hold rows of its earlier statements and must be rolled back)."""
        ...

    def one(self, sql: str, params: Sequence[object]) -> Row | None: ...

    def all(self, sql: str, params: Sequence[object]) -> list[Row]: ...

    def bind_time(self, value: datetime | None) -> object:
        """What an aware datetime (or None) is bound as."""

    def read_time(self, value: object) -> datetime:
        """A stored time as an aware UTC datetime; StorageError when it is not one."""

    def read_opt_time(self, value: object) -> datetime | None: ...

    def unindexed(self, column: str) -> str:
        """``column`` in a WHERE clause, so that the planner does not search its index."""

    def packs(self, value: Large) -> bool:
        """Whether a create's document or bundle is stored packed (the store's schema decides)."""


# --------------------------------------------------------------------------- repositories

_ESTIMATE_COLUMNS = (
    "estimate_id, revision, status, decision, brand, request_id, dedup_key, request_hash, actor,"
    " accepted_at, completed_at, total_krw, partial_subtotal_krw, catalog_version, document"
)
_ESTIMATE_PLACEHOLDERS = ", ".join("?" for _ in _ESTIMATE_COLUMNS.split(","))


def _bound(tx: SqlTransaction, row: Row) -> Row:
    """``row`` (``storage.rows``) with its datetimes and large values bound as ``tx``'s dialect
    stores them."""
    return tuple(
        tx.bind_time(value)
        if isinstance(value, datetime)
        else _large(tx, value)
        if isinstance(value, Large)
        else value
        for value in row
    )


def _large(tx: SqlTransaction, value: Large) -> object:
    """What a document or bundle is bound as: its zstd frame, or the value as it is."""
    return value.packed() if tx.packs(value) else value.value


class StatementBudget:
    """What a lookup unit (``Store.lookup``) may still run: one read, no write. Units of work have
    no limit (``single`` False). Each dialect's transaction spends it before every statement."""

    def __init__(self, *, single: bool) -> None:
        self._left = 1 if single else None

    def spend(self, *, write: bool = False) -> None:
        if self._left is None:
            return
        if write:
            raise StorageError("a lookup unit is read-only")
        if self._left == 0:
            raise StorageError("a lookup unit runs a single statement (it reads no snapshot)")
        self._left -= 1


def multi_row(sql: str, rows: Sequence[Sequence[object]]) -> tuple[str, list[object]]:
    """``INSERT ... VALUES (?, ...)`` for every row as one statement and its flat parameters.

    One statement, not ``executemany``: each statement the driver runs gives up the GIL and must win
    it back from the request threads, which under load cost more than the insert (group_commit.py).
    """
    head, sep, values = sql.partition(" VALUES ")
    if not sep or not rows:
        raise ValueError("multi_row needs an INSERT ... VALUES (...) statement and at least one row")
    return f"{head} VALUES {', '.join([values] * len(rows))}", [value for row in rows for value in row]


class EstimateRepository:
    def __init__(self, tx: SqlTransaction) -> None:
        self._tx = tx

    def add(self, record: EstimateRecord) -> None:
        """Insert a new estimate; DuplicateKeyError when its request_id or dedup_key is taken."""
        inserted = self._tx.insert(self.INSERT, self._params(record))
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

    INSERT = f"INSERT INTO estimates ({_ESTIMATE_COLUMNS}) VALUES ({_ESTIMATE_PLACEHOLDERS})"

    def _params(self, record: EstimateRecord) -> tuple[object, ...]:
        return _bound(self._tx, estimate_row(record))

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
        stored = (
            _text(row[1]),
            _opt_text(row[2]),
            _opt_text(row[3]),
            _text(row[4]),
            self._tx.read_time(row[5]),
        )
        identity = (
            record.request_hash,
            record.request_id,
            record.dedup_key,
            record.actor,
            record.accepted_at,
        )
        if stored != identity:
            raise ValueError(f"estimate {record.estimate_id}: an update must not change its identity fields")
        self._tx.execute(
            "UPDATE estimates SET revision = ?, status = ?, decision = ?, completed_at = ?, total_krw = ?,"
            " partial_subtotal_krw = ?, catalog_version = ?, document = ?"
            " WHERE estimate_id = ? AND revision = ?",
            (
                record.revision,
                record.status.value,
                record.decision.value,
                self._tx.bind_time(record.completed_at),
                record.quote.totals.total_krw,
                record.quote.totals.partial_subtotal_krw,
                record.quote.catalog_version,
                _large(self._tx, Large(_document_text(record))),
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
            params += [self._tx.bind_time(after.accepted_at), after.estimate_id]
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
            (brand, self._tx.bind_time(accepted_from), self._tx.bind_time(accepted_before)),
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
            params += [self._tx.bind_time(after.accepted_at), after.estimate_id]
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
            (self._tx.bind_time(accepted_from), self._tx.bind_time(accepted_before)),
        )
        counts = dict.fromkeys(Status, 0)
        for status, count in rows:
            try:
                counts[Status(_text(status))] = _int(count)
            except ValueError as exc:
                raise StorageError(f"corrupt row: unknown status {status!r}") from exc
        return counts

    def tat_seconds(self, completed_from: datetime, completed_before: datetime) -> builtins.list[int]:
        # status unindexed (SQLite: "+status"): filter on it but search the completed_at window (index
        # estimates_completed); without statistics SQLite would otherwise scan every COMPLETED estimate.
        rows = self._tx.all(
            "SELECT accepted_at, completed_at FROM estimates"
            " WHERE completed_at >= ? AND completed_at < ?"
            f" AND {self._tx.unindexed('status')} IN ('COMPLETED', 'REVIEWED')",
            (self._tx.bind_time(completed_from), self._tx.bind_time(completed_before)),
        )
        # timedelta // 1 µs is exact integer arithmetic, unlike total_seconds()
        return sorted(
            (self._tx.read_time(done) - self._tx.read_time(accepted)) // _MICROSECOND
            for accepted, done in rows
        )

    def oldest_accepted_at(self, status: Status) -> datetime | None:
        row = self._tx.one("SELECT MIN(accepted_at) FROM estimates WHERE status = ?", (status.value,))
        return None if row is None else self._tx.read_opt_time(row[0])


_MICROSECOND = timedelta(microseconds=1)


class IdempotencyRepository:
    def __init__(self, tx: SqlTransaction) -> None:
        self._tx = tx

    def get(self, request_id: str) -> IdempotencyRecord | None:
        row = self._tx.one(
            "SELECT request_id, request_hash, estimate_id, response FROM idempotency WHERE request_id = ?",
            (request_id,),
        )
        if row is None:
            return None
        return IdempotencyRecord(
            request_id=_text(row[0]),
            request_hash=_text(row[1]),
            estimate_id=_text(row[2]),
            response=_blob(row[3]),
        )

    INSERT = (
        "INSERT INTO idempotency (request_id, request_hash, estimate_id, response, created_at)"
        " VALUES (?, ?, ?, ?, ?)"
    )

    def _params(self, record: IdempotencyRecord, created_at: datetime) -> tuple[object, ...]:
        return _bound(self._tx, idempotency_row(record, created_at))

    def add(self, record: IdempotencyRecord, created_at: datetime) -> None:
        inserted = self._tx.insert(self.INSERT, self._params(record, created_at))
        if not inserted:
            existing = self.get(record.request_id)
            if existing is None:  # pragma: no cover - the conflicting row is visible in this transaction
                raise StorageError(f"idempotency {record.request_id}: conflict without a stored row")
            raise DuplicateKeyError("request_id", existing.estimate_id)


_TOKEN_COLUMNS = "token_id, name, role, token_sha256, created_at, revoked_at"


class TokenRepository:
    def __init__(self, tx: SqlTransaction) -> None:
        self._tx = tx

    def add(self, token_id: str, name: str, role: str, token_sha256: str, created_at: datetime) -> None:
        inserted = self._tx.insert(
            f"INSERT INTO tokens ({_TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL)",
            (token_id, name, role, token_sha256, self._tx.bind_time(created_at)),
        )
        if not inserted:
            raise StorageError(f"token {token_id}: its id or hash is already stored")

    def find_by_hash(self, token_sha256: str, *, include_revoked: bool = False) -> TokenRecord | None:
        live = "" if include_revoked else " AND revoked_at IS NULL"  # a fixed fragment; values are bound
        row = self._tx.one(
            f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE token_sha256 = ?{live}",
            (token_sha256,),
        )
        return None if row is None else token_of(row, self._tx.read_time)

    def list(self) -> Sequence[TokenRecord]:
        rows = self._tx.all(f"SELECT {_TOKEN_COLUMNS} FROM tokens ORDER BY created_at, token_id", ())
        return [token_of(row, self._tx.read_time) for row in rows]

    def revoke(self, token_id: str, at: datetime) -> bool:
        changed = self._tx.execute(
            "UPDATE tokens SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL",
            (self._tx.bind_time(at), token_id),
        )
        return changed == 1


# --------------------------------------------------------------------------- evidence

_EVIDENCE_INFO_COLUMNS = (
    "estimate_id, revision, sha256, size_bytes, signature_key_id, signature, created_at, manifest_json"
)


class EvidenceRepository:
    def __init__(self, tx: SqlTransaction) -> None:
        self._tx = tx

    INSERT = f"INSERT INTO evidence ({_EVIDENCE_INFO_COLUMNS}, bundle) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"

    def _params(self, record: EvidenceRecord) -> tuple[object, ...]:
        return _bound(self._tx, evidence_row(record))

    def add(self, record: EvidenceRecord) -> None:
        """Insert a revision's bundle; StorageError when that revision already has one."""
        inserted = self._tx.insert(self.INSERT, self._params(record))
        if not inserted:
            raise StorageError(
                f"evidence of estimate {record.estimate_id} revision {record.revision} is already stored"
            )

    def get(self, estimate_id: str, revision: int | None) -> EvidenceRecord | None:
        row = self._row(f"{_EVIDENCE_INFO_COLUMNS}, bundle", estimate_id, revision)
        if row is None:
            return None
        what = f"evidence of estimate {estimate_id}"
        record = evidence_of(row, unpack(_blob(row[8]), what), self._tx.read_time)
        # What is served as evidence is what was stored: checked on every read, since a bundle
        # now passes through a decoder (PostgreSQL) and the stored sha256 costs nothing to check.
        if (
            len(record.bundle) != record.size_bytes
            or hashlib.sha256(record.bundle).hexdigest() != record.sha256
        ):
            raise StorageError(f"{what} revision {record.revision}: the bundle does not match its sha256")
        return record

    def get_info(self, estimate_id: str, revision: int | None) -> EvidenceRecord | None:
        row = self._row(_EVIDENCE_INFO_COLUMNS, estimate_id, revision)
        return None if row is None else evidence_of(row, b"", self._tx.read_time)

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
AUDIT_INSERT = f"INSERT INTO audit_events ({_AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
# The chain's head; a write unit reads it under its lock (PostgreSQL reads it in the BEGIN round trip).
AUDIT_HEAD = "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1"


def audit_params(tx: SqlTransaction, event: AuditEvent) -> Row:
    """``event``'s row for :data:`AUDIT_INSERT`."""
    return (
        event.seq,
        event.prev_hash,
        event.hash,
        tx.bind_time(event.at),
        event.action,
        event.outcome,
        event.actor,
        event.role,
        event.estimate_id,
        event.revision,
        _details_text(event.details),
        event.peer,
    )


class AuditRepository:
    """The hash-chained audit log; the schema's triggers keep it append-only (migration 0002)."""

    def __init__(self, tx: SqlTransaction) -> None:
        self._tx = tx

    def append(self, draft: AuditDraft) -> AuditEvent:
        """Seal ``draft`` after the current head and insert it (call in a write unit)."""
        return self.append_many([draft])[0]

    def append_many(self, drafts: Sequence[AuditDraft]) -> list[AuditEvent]:
        """Seal ``drafts`` in order after the current head and insert them in one call."""
        events = self.seal_many(drafts)
        inserted = self._tx.insert_many(AUDIT_INSERT, [audit_params(self._tx, event) for event in events])
        if not inserted:  # pragma: no cover - the write lock keeps the head seal_many read current
            raise StorageError(f"audit seq {events[0].seq} was taken concurrently", retryable=True)
        return events

    def seal_many(self, drafts: Sequence[AuditDraft]) -> list[AuditEvent]:
        """``drafts`` sealed in order after the current head, not inserted: the caller inserts
        them in this unit (:meth:`SqlRepositories.store_creates`)."""
        head = self._tx.one(AUDIT_HEAD, ())
        last_seq, last_hash = (_int(head[0]), _text(head[1])) if head is not None else self.anchor()
        events = []
        for draft in drafts:
            event = seal(last_seq + 1, last_hash, draft)
            events.append(event)
            last_seq, last_hash = event.seq, event.hash
        return events

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
            params.append(self._tx.bind_time(filter.since))
        if filter.until is not None:
            conditions.append("at < ?")
            params.append(self._tx.bind_time(filter.until))
        if before_seq is not None:
            conditions.append("seq < ?")
            params.append(before_seq)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = self._tx.all(
            f"SELECT {_AUDIT_COLUMNS} FROM audit_events{where}"  # fixed fragments only; values are bound
            " ORDER BY seq DESC LIMIT ?",
            (*params, page_size + 1),
        )
        events = [audit_event_of(row, self._tx.read_time) for row in rows[:page_size]]
        return events, (events[-1].seq if len(rows) > page_size else None)

    def iter_ascending(self, from_seq: int = 1) -> Iterator[AuditEvent]:
        next_seq = from_seq
        while True:
            rows = self._tx.all(
                f"SELECT {_AUDIT_COLUMNS} FROM audit_events WHERE seq >= ? ORDER BY seq LIMIT ?",
                (next_seq, _AUDIT_CHUNK),
            )
            for row in rows:
                event = audit_event_of(row, self._tx.read_time)
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
        # at unindexed (SQLite: "+at"): walk seq upwards from the oldest event and stop at the first
        # one to keep (reads about as many rows as are pruned), not sort every event after the cutoff.
        first_kept = self._tx.one(
            f"SELECT seq FROM audit_events WHERE {self._tx.unindexed('at')} >= ? ORDER BY seq LIMIT 1",
            (self._tx.bind_time(cutoff),),
        )
        if first_kept is None:
            last = self._tx.one(AUDIT_HEAD, ())
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
            (last_seq, _text(last[1]), self._tx.bind_time(cutoff)),
        )
        return self._tx.execute("DELETE FROM audit_events WHERE seq > ? AND seq <= ?", (anchor_seq, last_seq))


# --------------------------------------------------------------------------- MIXED grants

_GRANT_COLUMNS = "grant_id, month, reason, actor, granted_at"


class MixedGrantRepository:
    def __init__(self, tx: SqlTransaction) -> None:
        self._tx = tx

    def add(self, grant: MixedGrant) -> None:
        """Insert a grant; GrantExistsError when its month already has one."""
        inserted = self._tx.insert(
            f"INSERT INTO mixed_grants ({_GRANT_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
            (grant.grant_id, grant.month, grant.reason, grant.actor, self._tx.bind_time(grant.granted_at)),
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
                granted_at=self._tx.read_time(row[4]),
            )
        except ValueError as exc:
            raise StorageError(f"corrupt MIXED grant row: {exc}") from exc


# --------------------------------------------------------------------------- unit of work and store


# An ``INSERT … VALUES (?, …)`` statement and the rows (bound) it inserts as one multi-row statement.
Insert = tuple[str, list[Row]]


class SqlRepositories:
    """The repositories of one unit of work over its transaction (both stores' units inherit this)."""

    def __init__(self, tx: SqlTransaction) -> None:
        self._statements = tx
        self.estimates = EstimateRepository(tx)
        self.idempotency = IdempotencyRepository(tx)
        self.tokens = TokenRepository(tx)
        self.evidence = EvidenceRepository(tx)
        self.audit = AuditRepository(tx)
        self.mixed_grants = MixedGrantRepository(tx)

    def store_creates(self, rows: Sequence[NewRows], drafts: Sequence[AuditDraft]) -> bool:
        """The group commit's write (``UnitOfWork.store_creates``): ``rows`` inserted, one
        statement per table, ``drafts`` sealed after the chain's head and inserted, then commit.
        False (nothing committed, the unit rolled back) when a unique key was taken."""
        tx = self._statements
        events = self.audit.seal_many(drafts)  # the one read: the chain's head
        replies = [row.idempotency for row in rows if row.idempotency is not None]
        inserts: list[Insert] = [
            (EstimateRepository.INSERT, [_bound(tx, row.estimate) for row in rows]),
            (EvidenceRepository.INSERT, [_bound(tx, row.evidence) for row in rows]),
        ]
        if replies:
            inserts.append((IdempotencyRepository.INSERT, [_bound(tx, row) for row in replies]))
        inserts.append((AUDIT_INSERT, [audit_params(tx, event) for event in events]))
        return self._insert_and_commit(inserts)

    def _insert_and_commit(self, inserts: Sequence[Insert]) -> bool:
        """Run ``inserts`` (each as one multi-row statement) and commit; False, the unit rolled
        back, when a unique key was taken. Each store's unit: PostgreSQL's sends them all and the
        COMMIT in one round trip."""
        raise NotImplementedError
