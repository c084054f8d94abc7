"""The storage seam: repository and unit-of-work protocols, their records and errors (docs/conventions.md §3).

Only the operations the service uses. Implementations (``sqlite.py``, later ``postgres.py``) use
plain parameterized SQL and translate their driver's errors into the types below, which are the
only failures that leave ``kis_estimator.server.storage``:

* :class:`StorageError` — the store failed (I/O, corruption, busy); ``retryable`` says whether the
  same unit of work may succeed if run again (busy/locked database).
* :class:`DuplicateKeyError` — an insert hit a business key already stored (docs/pricing-rules.md §13),
  also when two requests race past the service's own look-up; carries the existing estimate id.
* :class:`StaleRevisionError` — an update was based on a revision that is no longer current.
* :class:`GrantExistsError` — the month already has its MIXED exception grant (docs/pricing-rules.md §12).

All datetimes are aware and stored in UTC (docs/pricing-rules.md §16.1).
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Literal, Protocol, Self

from kis_estimator.server.engine.audit import AuditDraft, AuditEvent
from kis_estimator.server.engine.model import Status
from kis_estimator.server.engine.records import EstimateRecord, as_utc

DuplicateKind = Literal["dedup_key", "request_id"]


class StorageError(Exception):
    """The store failed; ``retryable`` is true when a retry of the whole unit of work may succeed."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class DuplicateKeyError(Exception):
    """``kind`` (``dedup_key`` or ``request_id``) is already held by ``existing_estimate_id``.

    Not a :class:`StorageError`: it is a domain conflict the service answers with
    DUPLICATE_REQUEST or an idempotent replay (docs/pricing-rules.md §13). When both keys collide,
    ``request_id`` is reported, because a replay is decided before a duplicate (P2 before P4).
    """

    def __init__(self, kind: DuplicateKind, existing_estimate_id: str) -> None:
        super().__init__(f"{kind} already used by estimate {existing_estimate_id}")
        self.kind: DuplicateKind = kind
        self.existing_estimate_id = existing_estimate_id


class StaleRevisionError(Exception):
    """An update expected ``estimate_id`` at ``expected_revision``; the store has ``found_revision``."""

    def __init__(self, estimate_id: str, expected_revision: int, found_revision: int | None) -> None:
        found = "no such estimate" if found_revision is None else f"found revision {found_revision}"
        super().__init__(f"estimate {estimate_id}: expected revision {expected_revision}, {found}")
        self.estimate_id = estimate_id
        self.expected_revision = expected_revision
        self.found_revision = found_revision


class GrantExistsError(Exception):
    """``month`` (``YYYY-MM``, KST) already has a MIXED exception grant, ``existing_grant_id``.

    A domain conflict (MIXED_EXCEPTION_ALREADY_GRANTED, docs/pricing-rules.md §12), not a
    :class:`StorageError`.
    """

    def __init__(self, month: str, existing_grant_id: str) -> None:
        super().__init__(f"month {month} already has MIXED exception grant {existing_grant_id}")
        self.month = month
        self.existing_grant_id = existing_grant_id


@dataclass(frozen=True, slots=True)
class EstimateCursor:
    """Keyset position in the newest-first estimate listing: the last row of the previous page.

    Opaque to clients; the API layer encodes it as a page token.
    """

    accepted_at: datetime
    estimate_id: str


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """Transport idempotency (docs/pricing-rules.md §13.2): the first accepted reply to ``request_id``."""

    request_id: str
    request_hash: str
    estimate_id: str
    response: bytes


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """An API token; only its SHA-256 (lowercase hex) is stored, never the secret."""

    token_id: str
    name: str
    role: str
    token_sha256: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class EvidenceRecord:
    """The evidence bundle of one estimate revision (docs/pricing-rules.md §15) as stored.

    ``sha256`` (lowercase hex) and ``size_bytes`` describe ``bundle``, the ZIP bytes;
    ``manifest_json`` is the bundle's ``manifest.json`` entry, byte for byte. A record from
    :meth:`EvidenceRepository.get_info` has ``bundle == b""`` (not loaded) and the real size.
    ``signature_key_id`` and ``signature`` (of the manifest) are both set or both None.
    """

    estimate_id: str
    revision: int
    sha256: str
    size_bytes: int
    bundle: bytes
    manifest_json: bytes
    signature_key_id: str | None
    signature: str | None
    created_at: datetime

    def __post_init__(self) -> None:
        if self.revision < 1:
            raise ValueError("evidence revision must be >= 1")
        if (self.signature_key_id is None) != (self.signature is None):
            raise ValueError("evidence signature_key_id and signature must be given together")
        object.__setattr__(self, "created_at", as_utc(self.created_at, "created_at"))


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which audit events to list; every given criterion must match.

    ``since`` is inclusive and ``until`` exclusive (on the event time ``at``).
    """

    action: str | None = None
    estimate_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


_MONTH = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])$")


@dataclass(frozen=True, slots=True)
class MixedGrant:
    """A MIXED exception: ``month`` (``YYYY-MM`` in KST) gets one extra accepted MIXED estimate (§12)."""

    grant_id: str
    month: str
    reason: str
    actor: str
    granted_at: datetime

    def __post_init__(self) -> None:
        if not _MONTH.match(self.month):
            raise ValueError(f"grant month must be YYYY-MM, got {self.month!r}")
        object.__setattr__(self, "granted_at", as_utc(self.granted_at, "granted_at"))


@dataclass(frozen=True, slots=True)
class NewRows:
    """The rows of one create as column values (``storage.rows.new_rows``), datetimes unbound."""

    estimate: tuple[object, ...]
    evidence: tuple[object, ...]
    idempotency: tuple[object, ...] | None


class EstimateRepository(Protocol):
    def add(self, record: EstimateRecord) -> None:
        """Store a new estimate; raises :class:`DuplicateKeyError` for a taken dedup_key/request_id."""

    def update(self, record: EstimateRecord) -> None:
        """Store the next revision of an existing estimate (CompleteReview, RejectEstimate).

        The stored revision must be ``record.revision - 1`` (else :class:`StaleRevisionError`); the
        identity fields (request, request_hash, request_id, dedup_key, actor, accepted_at) must be
        unchanged (else ``ValueError``).
        """

    def get(self, estimate_id: str) -> EstimateRecord | None:
        """The current revision, or None."""

    def find_by_dedup_key(self, dedup_key: str) -> str | None:
        """Id of the estimate holding ``dedup_key`` (any status), or None."""

    def list(
        self, status: Status | None, page_size: int, after: EstimateCursor | None
    ) -> tuple[Sequence[EstimateRecord], EstimateCursor | None]:
        """One page newest first (accepted_at, then estimate_id, both descending), optionally by status.

        Returns the page and the cursor for the next one (None when this page is the last).
        """

    def count_accepted(self, brand: str, accepted_from: datetime, accepted_before: datetime) -> int:
        """Estimates of ``brand`` accepted in ``[accepted_from, accepted_before)``, any status.

        For the MIXED monthly quota (docs/pricing-rules.md §12); run it in the write unit that adds, so the
        check and the insert are atomic.
        """

    def list_oldest(
        self, status: Status, page_size: int, after: EstimateCursor | None
    ) -> tuple[Sequence[EstimateRecord], EstimateCursor | None]:
        """One page of ``status`` oldest first (accepted_at, then estimate_id, ascending): the review queue.

        ``after`` is the cursor returned with the previous page (its last row); None when this page
        is the last.
        """

    def count_by_status(self, accepted_from: datetime, accepted_before: datetime) -> dict[Status, int]:
        """Estimates accepted in ``[accepted_from, accepted_before)`` per current status.

        Every status is a key (0 when none); for the auto-processing rate (docs/pricing-rules.md §16.3).
        """

    def tat_seconds(self, completed_from: datetime, completed_before: datetime) -> builtins.list[int]:
        """TATs in **microseconds** (exact ints), ascending, of estimates completed in the window.

        TAT = ``completed_at - accepted_at`` (docs/pricing-rules.md §16.3) for COMPLETED and REVIEWED
        estimates whose ``completed_at`` is in ``[completed_from, completed_before)``.
        """

    def oldest_accepted_at(self, status: Status) -> datetime | None:
        """``accepted_at`` of the oldest estimate in ``status`` (the oldest open review), or None."""


class IdempotencyRepository(Protocol):
    def get(self, request_id: str) -> IdempotencyRecord | None:
        """The stored first reply for ``request_id``, or None."""

    def add(self, record: IdempotencyRecord, created_at: datetime) -> None:
        """Store a reply; raises :class:`DuplicateKeyError` (kind ``request_id``) if the id is taken."""


class TokenRepository(Protocol):
    def add(self, token_id: str, name: str, role: str, token_sha256: str, created_at: datetime) -> None:
        """Store a new token; raises :class:`StorageError` if its id or hash is already stored."""

    def find_by_hash(self, token_sha256: str, *, include_revoked: bool = False) -> TokenRecord | None:
        """The unrevoked token with this hash (revoked ones too with ``include_revoked``), or None."""

    def list(self) -> Sequence[TokenRecord]:
        """All tokens, revoked ones included, oldest first."""

    def revoke(self, token_id: str, at: datetime) -> bool:
        """Revoke a token; False if it does not exist or is already revoked."""


class EvidenceRepository(Protocol):
    def add(self, record: EvidenceRecord) -> None:
        """Store a revision's bundle; :class:`StorageError` if that revision already has one.

        ``ValueError`` when ``sha256``/``size_bytes`` do not describe ``bundle``. The estimate
        must be stored (same unit of work is fine).
        """

    def get(self, estimate_id: str, revision: int | None) -> EvidenceRecord | None:
        """The bundle of ``revision`` (None: the highest stored revision), blob included, or None."""

    def get_info(self, estimate_id: str, revision: int | None) -> EvidenceRecord | None:
        """Like :meth:`get` without reading the blob: ``bundle`` is ``b""``, the rest is real."""


class AuditRepository(Protocol):
    def append(self, draft: AuditDraft) -> AuditEvent:
        """Add ``draft`` at the head of the chain and return it sealed (seq, prev_hash, hash).

        Needs a write unit: its exclusive lock is what keeps concurrent appends in one chain.
        The event is durable only when the unit commits, together with the action it records.
        """

    def append_many(self, drafts: Sequence[AuditDraft]) -> list[AuditEvent]:
        """:meth:`append` each draft in order, in one call."""

    def list(
        self, filter: AuditFilter, page_size: int, before_seq: int | None
    ) -> tuple[Sequence[AuditEvent], int | None]:
        """One page newest first (seq descending) of events matching ``filter`` with seq < ``before_seq``.

        Returns the page and the ``before_seq`` of the next one (None when this page is the last).
        """

    def iter_ascending(self, from_seq: int = 1) -> Iterator[AuditEvent]:
        """Events with seq >= ``from_seq`` in ascending order, read in chunks (never all at once).

        Lazy: consume it inside the unit of work. Read with :meth:`anchor` in one read-only unit
        to verify a consistent snapshot.
        """

    def anchor(self) -> tuple[int, str]:
        """(seq, hash) of the last pruned event; ``(0, GENESIS_HASH)`` when never pruned."""

    def prune_before(self, cutoff: datetime) -> int:
        """Delete the oldest events while their ``at`` < ``cutoff``; returns how many.

        Stops at the first event at or after ``cutoff``, so what remains is contiguous, and moves
        the anchor to the last deleted event in the same unit. The caller then appends an
        AUDIT_PRUNED event.
        """


class MixedGrantRepository(Protocol):
    def add(self, grant: MixedGrant) -> None:
        """Store a grant; :class:`GrantExistsError` if its month already has one."""

    def get(self, month: str) -> MixedGrant | None:
        """The grant of ``month`` (``YYYY-MM``), or None."""


class UnitOfWork(Protocol):
    """One transaction. ``with store.unit_of_work() as uow: ...; uow.commit()``.

    Leaving the block without :meth:`commit` (or with an exception) rolls back. After commit or
    rollback the unit is finished; using its repositories then raises :class:`StorageError`.
    """

    @property
    def estimates(self) -> EstimateRepository: ...

    @property
    def idempotency(self) -> IdempotencyRepository: ...

    @property
    def tokens(self) -> TokenRepository: ...

    @property
    def evidence(self) -> EvidenceRepository: ...

    @property
    def audit(self) -> AuditRepository: ...

    @property
    def mixed_grants(self) -> MixedGrantRepository: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def store_creates(self, rows: Sequence[NewRows], drafts: Sequence[AuditDraft]) -> bool:
        """Store several new estimates (their rows, ``storage.rows.new_rows``) and their audit
        events (sealed in order after the chain's head), then commit: the group commit's whole
        write. False when any key was taken (a ``request_id``, ``dedup_key`` or revision): then
        nothing was committed and the unit is rolled back (:meth:`EstimateRepository.add` and the
        others, one create per unit, tell which and why). Each store sends it in as few round
        trips as it can (PostgreSQL: the inserts and the commit in one)."""


class Store(Protocol):
    def unit_of_work(self, *, read_only: bool = False) -> UnitOfWork:
        """A new unit of work. Write units are serialised; read-only units refuse writes."""

    def lookup(self) -> UnitOfWork:
        """A read-only unit for exactly one statement, run outside a transaction (one statement
        reads one consistent snapshot by itself): the per-call look-ups (the caller's token) skip
        opening and ending a transaction. A second statement raises StorageError; writes are refused."""

    def prepare_rows(self, rows: NewRows) -> None:
        """Work of storing ``rows`` that needs no lock, done now on the calling thread (PostgreSQL
        packs the large values; storage/packing.py). Optional: the write does it when not done."""

    def size_bytes(self) -> int:
        """Bytes the store occupies on disk now (SQLite: database, WAL and shared-memory files;
        PostgreSQL: ``pg_database_size`` of its database). For the ``kis_store_size_bytes`` gauge."""

    def close(self) -> None:
        """Release the store's connections; units already open may still finish."""


__all__ = [
    "AuditFilter",
    "AuditRepository",
    "DuplicateKeyError",
    "DuplicateKind",
    "EstimateCursor",
    "EstimateRepository",
    "EvidenceRecord",
    "EvidenceRepository",
    "GrantExistsError",
    "IdempotencyRecord",
    "IdempotencyRepository",
    "MixedGrant",
    "MixedGrantRepository",
    "NewRows",
    "StaleRevisionError",
    "StorageError",
    "Store",
    "TokenRecord",
    "TokenRepository",
    "UnitOfWork",
]
