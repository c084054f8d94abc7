"""The tamper-evident audit log: events chained by SHA-256 (docs/conventions.md §3;
docs/pricing-rules.md §12, §15, §16.2).

Every event carries ``seq`` (1, 2, 3, … without gaps), the ``hash`` of the event before it
(``prev_hash``; :data:`GENESIS_HASH` for the first) and its own ``hash``:
SHA-256 (lowercase hex) of the canonical JSON of all its fields except ``hash`` itself —
sorted keys, separators ``,`` ``:``, non-ASCII written as itself, UTF-8, the time as RFC 3339 UTC
with microseconds (``2025-10-01T03:04:05.123456Z``).

What the chain detects (:func:`verify_chain`): an edited event (its hash no longer matches), a
deleted event (a gap in ``seq``), events re-linked or reordered. What it cannot detect on its own:
removal of the newest events (the tail) — compare the head with a copy kept elsewhere (a log
shipper, a metric) for that — and a rewrite of the whole chain from some point on by someone who
recomputes every hash; the chain makes tampering evident, it does not sign.

Pruning keeps the chain verifiable: storage remembers the last pruned event as the *anchor*
``(seq, hash)`` and verification starts from it instead of from genesis.

Pure and stdlib-only: no clock (callers pass ``at``), no storage.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final

DetailValue = str | int | bool | None | list[str]
"""A value in :attr:`AuditDraft.details`: JSON scalars (no floats) or a list of strings."""

GENESIS_HASH: Final = "0" * 64
"""``prev_hash`` of event 1 and the anchor hash of a log that was never pruned."""


class AuditAction(StrEnum):
    """What was done; stored as the plain string in ``AuditDraft.action``."""

    ESTIMATE_ACCEPTED = "ESTIMATE_ACCEPTED"
    REQUEST_REJECTED = "REQUEST_REJECTED"  # failed P2–P5: not stored (docs/pricing-rules.md §16.2)
    EVIDENCE_DOWNLOAD = "EVIDENCE_DOWNLOAD"  # docs/pricing-rules.md §15: every ZIP download
    REVIEW_COMPLETED = "REVIEW_COMPLETED"
    ESTIMATE_REJECTED = "ESTIMATE_REJECTED"
    MIXED_GRANT = "MIXED_GRANT"  # docs/pricing-rules.md §12: actor, month, reason, time
    TOKEN_CREATED = "TOKEN_CREATED"
    TOKEN_REVOKED = "TOKEN_REVOKED"
    AUDIT_PRUNED = "AUDIT_PRUNED"  # written right after a prune, so the prune itself is on the chain
    SANDBOX_OPENED = "SANDBOX_OPENED"  # an acceptance run's throwaway store (server/service/sandbox.py)


ESTIMATE_ACCEPTED: Final = AuditAction.ESTIMATE_ACCEPTED.value
REQUEST_REJECTED: Final = AuditAction.REQUEST_REJECTED.value
EVIDENCE_DOWNLOAD: Final = AuditAction.EVIDENCE_DOWNLOAD.value
REVIEW_COMPLETED: Final = AuditAction.REVIEW_COMPLETED.value
ESTIMATE_REJECTED: Final = AuditAction.ESTIMATE_REJECTED.value
MIXED_GRANT: Final = AuditAction.MIXED_GRANT.value
TOKEN_CREATED: Final = AuditAction.TOKEN_CREATED.value
TOKEN_REVOKED: Final = AuditAction.TOKEN_REVOKED.value
AUDIT_PRUNED: Final = AuditAction.AUDIT_PRUNED.value
SANDBOX_OPENED: Final = AuditAction.SANDBOX_OPENED.value


def _aware_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("audit time 'at' must be timezone-aware")
    return value.astimezone(UTC)


def timestamp_text(value: datetime) -> str:
    """``value`` as RFC 3339 UTC with microseconds, the form hashed and stored."""
    return _aware_utc(value).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _check_details(details: Mapping[str, DetailValue]) -> dict[str, DetailValue]:
    copied: dict[str, DetailValue] = {}
    for key, value in details.items():
        if not isinstance(key, str):
            raise ValueError(f"audit detail keys must be strings, got {key!r}")
        if isinstance(value, list):
            if not all(isinstance(item, str) for item in value):
                raise ValueError(f"audit detail {key!r}: a list must hold strings only")
            copied[key] = list(value)
        elif value is None or isinstance(value, str | int):  # bool is an int
            copied[key] = value
        else:
            raise ValueError(f"audit detail {key!r}: {type(value).__name__} is not allowed (no floats)")
    return copied


@dataclass(frozen=True, slots=True)
class AuditDraft:
    """An event before it has a place in the chain: who did what, when, with which outcome.

    ``at`` is normalised to UTC; ``details`` is copied (lists too) so later changes to the caller's
    objects cannot change the event. ``role`` and ``peer`` may be empty (unauthenticated callers,
    in-process actions); ``revision``, when given, is >= 1.
    """

    at: datetime
    action: str
    outcome: str
    actor: str
    role: str
    estimate_id: str | None
    revision: int | None
    details: Mapping[str, DetailValue]
    peer: str

    def __post_init__(self) -> None:
        # frozen dataclass: normalising in __post_init__ is the documented way to set fields
        object.__setattr__(self, "at", _aware_utc(self.at))
        object.__setattr__(self, "action", str(self.action))  # a StrEnum member becomes its value
        if not self.action:
            raise ValueError("audit action must not be empty")
        for name in ("outcome", "actor", "role", "peer"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"audit {name} must be a string")
        if self.estimate_id is not None and not isinstance(self.estimate_id, str):
            raise ValueError("audit estimate_id must be a string or None")
        if self.revision is not None and (
            isinstance(self.revision, bool) or not isinstance(self.revision, int) or self.revision < 1
        ):
            raise ValueError("audit revision must be an integer >= 1 or None")
        object.__setattr__(self, "details", _check_details(self.details))


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """An event as stored: its draft's fields plus its place in the chain.

    Not re-validated on construction: events read back from storage are whatever is stored, and
    :func:`verify_chain` is what judges them.
    """

    seq: int
    prev_hash: str
    hash: str
    at: datetime
    action: str
    outcome: str
    actor: str
    role: str
    estimate_id: str | None
    revision: int | None
    details: Mapping[str, DetailValue]
    peer: str

    @property
    def draft(self) -> AuditDraft:
        """The event's fields without its chain position (validated like any draft)."""
        return AuditDraft(
            at=self.at,
            action=self.action,
            outcome=self.outcome,
            actor=self.actor,
            role=self.role,
            estimate_id=self.estimate_id,
            revision=self.revision,
            details=self.details,
            peer=self.peer,
        )


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first event at which verification failed, and why."""

    seq: int
    reason: str


def _digest(
    seq: int,
    prev_hash: str,
    at: datetime,
    action: str,
    outcome: str,
    actor: str,
    role: str,
    estimate_id: str | None,
    revision: int | None,
    details: Mapping[str, DetailValue],
    peer: str,
) -> str:
    document = {
        "seq": seq,
        "prev_hash": prev_hash,
        "at": timestamp_text(at),
        "action": action,
        "outcome": outcome,
        "actor": actor,
        "role": role,
        "estimate_id": estimate_id,
        "revision": revision,
        "details": dict(details),
        "peer": peer,
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def event_hash(seq: int, prev_hash: str, draft: AuditDraft) -> str:
    """SHA-256 (lowercase hex) of the canonical JSON of ``draft`` at position ``seq`` after ``prev_hash``."""
    return _digest(
        seq,
        prev_hash,
        draft.at,
        draft.action,
        draft.outcome,
        draft.actor,
        draft.role,
        draft.estimate_id,
        draft.revision,
        draft.details,
        draft.peer,
    )


def seal(seq: int, prev_hash: str, draft: AuditDraft) -> AuditEvent:
    """``draft`` placed at ``seq`` after the event whose hash is ``prev_hash``, with its own hash."""
    if seq < 1:
        raise ValueError("audit seq must be >= 1")
    return AuditEvent(
        seq=seq,
        prev_hash=prev_hash,
        hash=event_hash(seq, prev_hash, draft),
        at=draft.at,
        action=draft.action,
        outcome=draft.outcome,
        actor=draft.actor,
        role=draft.role,
        estimate_id=draft.estimate_id,
        revision=draft.revision,
        details=draft.details,
        peer=draft.peer,
    )


def _recomputed(event: AuditEvent) -> str | None:
    """The hash ``event`` should have; None when its fields cannot even be serialised (tampered)."""
    try:
        return _digest(
            event.seq,
            event.prev_hash,
            event.at,
            event.action,
            event.outcome,
            event.actor,
            event.role,
            event.estimate_id,
            event.revision,
            event.details,
            event.peer,
        )
    except (TypeError, ValueError):
        return None


def verify_chain(events: Iterable[AuditEvent], *, anchor_seq: int, anchor_hash: str) -> ChainBreak | None:
    """The first break in ``events`` (ascending seq, starting right after the anchor), or None.

    Checks per event, in this order: ``seq`` is the previous one + 1 (else "missing record(s)
    before seq N", or "out of order" when it does not increase); its hash matches its fields
    ("record N was altered"); its ``prev_hash`` is the previous event's hash (the anchor's for the
    first). Consumes ``events`` lazily, so a chain read in chunks is never held in memory.
    """
    expected_seq = anchor_seq + 1
    prev_hash = anchor_hash
    for event in events:
        if event.seq > expected_seq:
            return ChainBreak(event.seq, f"missing record(s) before seq {event.seq}")
        if event.seq < expected_seq:
            return ChainBreak(event.seq, f"record {event.seq} is out of order (expected seq {expected_seq})")
        if _recomputed(event) != event.hash:
            return ChainBreak(event.seq, f"record {event.seq} was altered")
        if event.prev_hash != prev_hash:
            before = "the anchor" if event.seq == anchor_seq + 1 else f"record {event.seq - 1}"
            return ChainBreak(event.seq, f"record {event.seq} does not link to {before}")
        prev_hash = event.hash
        expected_seq += 1
    return None


__all__ = [
    "AUDIT_PRUNED",
    "ESTIMATE_ACCEPTED",
    "ESTIMATE_REJECTED",
    "EVIDENCE_DOWNLOAD",
    "GENESIS_HASH",
    "MIXED_GRANT",
    "REQUEST_REJECTED",
    "REVIEW_COMPLETED",
    "SANDBOX_OPENED",
    "TOKEN_CREATED",
    "TOKEN_REVOKED",
    "AuditAction",
    "AuditDraft",
    "AuditEvent",
    "ChainBreak",
    "DetailValue",
    "event_hash",
    "seal",
    "timestamp_text",
    "verify_chain",
]
