"""The storage seam: repository and unit-of-work protocols, their records and errors (STYLE.md §2.3).

Only the operations the service uses. Implementations (``sqlite.py``, later ``postgres.py``) use
plain parameterized SQL and translate their driver's errors into the types below, which are the
only failures that leave ``server.storage``:

* :class:`StorageError` — the store failed (I/O, corruption, busy); ``retryable`` says whether the
  same unit of work may succeed if run again (busy/locked database).
* :class:`DuplicateKeyError` — an insert hit a business key already stored (DOMAIN.md §13), also when
  two requests race past the service's own look-up; carries the existing estimate id.
* :class:`StaleRevisionError` — an update was based on a revision that is no longer current.

All datetimes are aware and stored in UTC (DOMAIN.md §16.1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Literal, Protocol, Self

from server.engine.model import Status
from server.engine.records import EstimateRecord

DuplicateKind = Literal["dedup_key", "request_id"]


class StorageError(Exception):
    """The store failed; ``retryable`` is true when a retry of the whole unit of work may succeed."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class DuplicateKeyError(Exception):
    """``kind`` (``dedup_key`` or ``request_id``) is already held by ``existing_estimate_id``.

    Not a :class:`StorageError`: it is a domain conflict the service answers with
    DUPLICATE_REQUEST or an idempotent replay (DOMAIN.md §13). When both keys collide,
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


@dataclass(frozen=True, slots=True)
class EstimateCursor:
    """Keyset position in the newest-first estimate listing: the last row of the previous page.

    Opaque to clients; the API layer encodes it as a page token.
    """

    accepted_at: datetime
    estimate_id: str


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """Transport idempotency (DOMAIN.md §13): the first accepted reply for ``request_id``, byte for byte."""

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

        For the MIXED monthly quota (DOMAIN.md §12); run it in the write unit that adds, so the
        check and the insert are atomic.
        """


class IdempotencyRepository(Protocol):
    def get(self, request_id: str) -> IdempotencyRecord | None:
        """The stored first reply for ``request_id``, or None."""

    def add(self, record: IdempotencyRecord, created_at: datetime) -> None:
        """Store a reply; raises :class:`DuplicateKeyError` (kind ``request_id``) if the id is taken."""


class TokenRepository(Protocol):
    def add(self, token_id: str, name: str, role: str, token_sha256: str, created_at: datetime) -> None:
        """Store a new token; raises :class:`StorageError` if its id or hash is already stored."""

    def find_by_hash(self, token_sha256: str) -> TokenRecord | None:
        """The unrevoked token with this hash, or None."""

    def list(self) -> Sequence[TokenRecord]:
        """All tokens, revoked ones included, oldest first."""

    def revoke(self, token_id: str, at: datetime) -> bool:
        """Revoke a token; False if it does not exist or is already revoked."""


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

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


class Store(Protocol):
    def unit_of_work(self, *, read_only: bool = False) -> UnitOfWork:
        """A new unit of work. Write units are serialised; read-only units refuse writes."""

    def close(self) -> None:
        """Release the store's connections; units already open may still finish."""


__all__ = [
    "DuplicateKeyError",
    "DuplicateKind",
    "EstimateCursor",
    "EstimateRepository",
    "IdempotencyRecord",
    "IdempotencyRepository",
    "StaleRevisionError",
    "StorageError",
    "Store",
    "TokenRecord",
    "TokenRepository",
    "UnitOfWork",
]
