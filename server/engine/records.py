"""The stored estimate (docs/pricing-rules.md §16.1): an accepted request, its quote and its bookkeeping.

Pure data like :mod:`kis_estimator.server.engine.model`; storage maps it to rows and documents
(:mod:`kis_estimator.server.engine.codec`). Timestamps are aware and normalised to UTC on construction
(docs/pricing-rules.md §16.1 "Timestamps stored in UTC"), so two records for the same instants compare equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from kis_estimator.server.engine.model import Decision, EstimateRequest, Quote, Status


def as_utc(value: datetime, name: str) -> datetime:
    """``value`` converted to UTC; raises ``ValueError`` naming ``name`` when it is naive."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class EstimateRecord:
    """One revision of a stored estimate.

    ``request`` is the request as accepted; storage keeps it in canonical form (docs/pricing-rules.md §13)
    plus ``request_id``, so a record read back carries the defaults of §2 filled in
    (see :func:`kis_estimator.server.engine.codec.stored_request`). ``dedup_key`` and ``request_id`` repeat
    the request's values as the keys storage indexes. ``actor`` is the caller that created the estimate.
    ``completed_at`` is set once the status first becomes COMPLETED or REVIEWED (§16.3).
    """

    estimate_id: str
    revision: int
    status: Status
    decision: Decision
    request: EstimateRequest
    request_hash: str
    request_id: str | None
    dedup_key: str | None
    actor: str
    accepted_at: datetime
    completed_at: datetime | None
    quote: Quote

    def __post_init__(self) -> None:
        if self.revision < 1:
            raise ValueError("revision must be >= 1")
        if self.request_id != self.request.request_id or self.dedup_key != self.request.dedup_key:
            raise ValueError("request_id and dedup_key must equal the request's values")
        # frozen dataclass: normalising in __post_init__ is the documented way to set fields
        object.__setattr__(self, "accepted_at", as_utc(self.accepted_at, "accepted_at"))
        if self.completed_at is not None:
            object.__setattr__(self, "completed_at", as_utc(self.completed_at, "completed_at"))
