"""Row ↔ value mapping shared by the SQLite and PostgreSQL stores (plain code, no ORM).

Cells are checked as they are read: a value of the wrong type is a corrupt row and becomes a
:class:`StorageError`, never a crash further up. Timestamps differ between the backends (RFC 3339
text in SQLite, ``timestamptz`` in PostgreSQL), so the mapping functions take the backend's
``time_of`` reader.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

from kis_estimator.server.engine.audit import AuditEvent, DetailValue
from kis_estimator.server.engine.codec import DocumentError, record_from_document, record_to_document
from kis_estimator.server.engine.records import EstimateRecord
from kis_estimator.server.storage.packing import pack, unpack
from kis_estimator.server.storage.repository import (
    EstimateCursor,
    EvidenceRecord,
    IdempotencyRecord,
    NewRows,
    StorageError,
    TokenRecord,
)

Row = tuple[object, ...]
TimeOf = Callable[[object], datetime]


def text(value: object) -> str:
    if not isinstance(value, str):
        raise StorageError(f"corrupt row: expected text, got {type(value).__name__}")
    return value


def opt_text(value: object) -> str | None:
    return None if value is None else text(value)


def integer(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise StorageError(f"corrupt row: expected an integer, got {type(value).__name__}")
    return value


def opt_integer(value: object) -> int | None:
    return None if value is None else integer(value)


def blob(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise StorageError(f"corrupt row: expected bytes, got {type(value).__name__}")
    return value


def count(row: Row | None) -> int:
    return 0 if row is None else integer(row[0])


_RECENT_DOCUMENTS = 64
_recent: OrderedDict[int, tuple[EstimateRecord, str]] = OrderedDict()
_recent_lock = threading.Lock()


def document_text(record: EstimateRecord) -> str:
    """The stored JSON document of an estimate (compact, sorted keys, UTF-8 text).

    A create renders it before its write transaction (the stored-size check) and the repository
    again inside it; the last few renderings are kept by record identity (records are immutable,
    and each entry holds its record, so an id is never reused while cached), so the second costs
    nothing while the store's write lock is held.
    """
    key = id(record)
    with _recent_lock:
        found = _recent.get(key)
        if found is not None and found[0] is record:
            _recent.move_to_end(key)
            return found[1]
    text_ = json.dumps(record_to_document(record), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    with _recent_lock:
        _recent[key] = (record, text_)
        _recent.move_to_end(key)
        while len(_recent) > _RECENT_DOCUMENTS:
            _recent.popitem(last=False)
    return text_


def document_of(estimate_id: object, document: object) -> str:
    """The JSON text of a stored document: text as SQLite keeps it, or bytes as PostgreSQL does
    (a zstd frame since migration 0005, the UTF-8 text before it; storage.packing)."""
    if isinstance(document, str):
        return document
    raw = unpack(blob(document), f"estimate {estimate_id}: stored document")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StorageError(f"estimate {estimate_id}: stored document is not UTF-8: {exc}") from exc


def record_of(estimate_id: object, document: object) -> EstimateRecord:
    try:
        return record_from_document(json.loads(document_of(estimate_id, document)))
    except (ValueError, DocumentError) as exc:  # json.JSONDecodeError is a ValueError
        raise StorageError(f"estimate {estimate_id}: stored document is unreadable: {exc}") from exc


def page_of(rows: Sequence[Row], page_size: int) -> tuple[list[EstimateRecord], EstimateCursor | None]:
    """The first ``page_size`` of ``rows`` (estimate_id, document) read one beyond, and the next cursor."""
    records = [record_of(row[0], row[1]) for row in rows[:page_size]]
    if len(rows) <= page_size:
        return records, None
    last = records[-1]
    return records, EstimateCursor(accepted_at=last.accepted_at, estimate_id=last.estimate_id)


def token_of(row: Row, time_of: TimeOf) -> TokenRecord:
    """(token_id, name, role, token_sha256, created_at, revoked_at)."""
    return TokenRecord(
        token_id=text(row[0]),
        name=text(row[1]),
        role=text(row[2]),
        token_sha256=text(row[3]),
        created_at=time_of(row[4]),
        revoked_at=None if row[5] is None else time_of(row[5]),
    )


def evidence_of(row: Row, bundle: bytes, time_of: TimeOf) -> EvidenceRecord:
    """(estimate_id, revision, sha256, size_bytes, signature_key_id, signature, created_at, manifest_json)."""
    try:
        return EvidenceRecord(
            estimate_id=text(row[0]),
            revision=integer(row[1]),
            sha256=text(row[2]),
            size_bytes=integer(row[3]),
            signature_key_id=opt_text(row[4]),
            signature=opt_text(row[5]),
            created_at=time_of(row[6]),
            manifest_json=blob(row[7]),
            bundle=bundle,
        )
    except ValueError as exc:
        raise StorageError(f"corrupt evidence row: {exc}") from exc


def details_text(details: Mapping[str, DetailValue]) -> str:
    return json.dumps(dict(details), ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def audit_event_of(row: Row, time_of: TimeOf) -> AuditEvent:
    """(seq, prev_hash, hash, at, action, outcome, actor, role, estimate_id, revision, details, peer)."""
    seq = integer(row[0])
    try:
        details = json.loads(text(row[10]))
    except ValueError as exc:
        raise StorageError(f"corrupt audit event {seq}: details are not JSON: {exc}") from exc
    if not isinstance(details, dict):
        raise StorageError(f"corrupt audit event {seq}: details are not a JSON object")
    # Read as stored, not re-validated: verify_chain judges the content (an edit shows as a break).
    return AuditEvent(
        seq=seq,
        prev_hash=text(row[1]),
        hash=text(row[2]),
        at=time_of(row[3]),
        action=text(row[4]),
        outcome=text(row[5]),
        actor=text(row[6]),
        role=text(row[7]),
        estimate_id=opt_text(row[8]),
        revision=opt_integer(row[9]),
        details=details,
        peer=text(row[11]),
    )


class Large:
    """A create's document (text) or bundle (bytes) on its way to a row: each dialect binds it as
    it stores it (packed when ``SqlTransaction.packs`` says so; storage/packing.py). The packed
    form is made at most once, by whichever thread asks first: the store's ``prepare_rows`` asks on
    the request's thread, so the writer finds it ready under the write lock."""

    __slots__ = ("_packed", "value")

    def __init__(self, value: str | bytes) -> None:
        self.value = value
        self._packed: bytes | None = None

    def packed(self) -> bytes:
        if self._packed is None:
            raw = self.value.encode("utf-8") if isinstance(self.value, str) else self.value
            self._packed = pack(raw)
        return self._packed

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Large) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return f"Large({len(self.value)} {'chars' if isinstance(self.value, str) else 'bytes'})"


def pack_ahead(rows: NewRows, packs: Callable[[Large], bool]) -> None:
    """Pack now, on the calling thread, each large value of ``rows`` the store ``packs``
    (``Store.prepare_rows``), so the group commit's writer finds them packed under the lock."""
    for value in (*rows.estimate, *rows.evidence):
        if isinstance(value, Large) and packs(value):
            value.packed()


# --------------------------------------------------------------------------- the rows of a create
# Column values in each table's insert order, datetimes not yet bound (each dialect binds them as it
# inserts): computed on the request's thread, before the write lock (group_commit.py).


def estimate_row(record: EstimateRecord) -> Row:
    if record.request.brand is None:
        raise ValueError("a stored estimate needs a brand")
    return (
        record.estimate_id,
        record.revision,
        record.status.value,
        record.decision.value,
        record.request.brand,
        record.request_id,
        record.dedup_key,
        record.request_hash,
        record.actor,
        record.accepted_at,
        record.completed_at,
        record.quote.totals.total_krw,
        record.quote.totals.partial_subtotal_krw,
        record.quote.catalog_version,
        Large(document_text(record)),
    )


def evidence_row(record: EvidenceRecord) -> Row:
    if record.size_bytes != len(record.bundle):
        raise ValueError(f"evidence size_bytes {record.size_bytes} != bundle length {len(record.bundle)}")
    if record.sha256 != hashlib.sha256(record.bundle).hexdigest():
        raise ValueError("evidence sha256 does not match the bundle bytes")
    return (
        record.estimate_id,
        record.revision,
        record.sha256,
        record.size_bytes,
        record.signature_key_id,
        record.signature,
        record.created_at,
        bytes(record.manifest_json),
        Large(bytes(record.bundle)),
    )


def idempotency_row(record: IdempotencyRecord, created_at: datetime) -> Row:
    return (record.request_id, record.request_hash, record.estimate_id, bytes(record.response), created_at)


def new_rows(
    estimate: EstimateRecord, evidence: EvidenceRecord, idempotency: IdempotencyRecord | None
) -> NewRows:
    """The rows one create inserts (the reply stored for its request_id, if any, dated as accepted)."""
    return NewRows(
        estimate_row(estimate),
        evidence_row(evidence),
        None if idempotency is None else idempotency_row(idempotency, estimate.accepted_at),
    )
