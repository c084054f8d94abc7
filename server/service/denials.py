"""Audit of refused calls, cheap and bounded under a flood, without losing that any happened.

docs/pricing-rules.md §15 wants every evidence-bundle attempt in the audit log, refused ones included.
Written one row each, a single client sending refused calls in a loop (733 a second were measured)
took the store's write lock for every one of them and halved CreateEstimate throughput. So:

* the first refusal of a kind is written at once, exactly as before: the same fields (caller, peer,
  estimate id, revision, outcome) in its own row;
* identical refusals that follow within ``window_s`` (same action, outcome, caller, role, estimate id,
  revision, details and client address — the port is ignored, see ``peer_key``) are only counted in
  memory; when the window has passed, one more row is written with the same fields, the client
  address as its peer and ``repeats`` = how many were counted, ``first_repeat_at`` and
  ``last_repeat_at`` in its details. A steady flood of one kind thus costs two rows per window;
* at most ``max_pending`` kinds are counted at once; refusals of further kinds while the table is
  full are counted together per (action, outcome) and written as one row with ``overflow`` = true
  and no estimate id, so memory stays bounded whatever a caller sends;
* counts are written when a later refusal finds its window over, by :meth:`DenialAudit.flush_due`
  (called every few seconds by the server, ``server/main.py``), and by :meth:`DenialAudit.flush_all`
  when the server stops. Only a crash loses counts: at most one window's worth, never the first
  row of a kind.

A failed audit write is logged, never raised: the refusal itself must reach the client.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from kis_estimator.server.clock import Clock
from kis_estimator.server.engine.audit import AuditDraft, DetailValue, timestamp_text
from kis_estimator.server.service.rate_limit import peer_key
from kis_estimator.server.storage.repository import StorageError, Store

log = logging.getLogger(__name__)

DEFAULT_MAX_PENDING = 1024
_Key = tuple[str, ...]


@dataclass(slots=True)
class _Pending:
    draft: AuditDraft  # the first refusal of this kind (already written, unless overflow)
    window_end: datetime
    repeats: int = 0
    first_repeat_at: datetime | None = None
    last_repeat_at: datetime | None = None
    overflow: bool = False
    peer: str = field(default="")


def _key(draft: AuditDraft) -> _Key:
    details = json.dumps(dict(draft.details), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return (
        draft.action,
        draft.outcome,
        draft.actor,
        draft.role,
        draft.estimate_id or "",
        str(draft.revision or ""),
        details,
        peer_key(draft.peer),
    )


class DenialAudit:
    """Writes refused attempts to the audit log, aggregating identical repeats (module docstring)."""

    def __init__(
        self, store: Store, clock: Clock, *, window_s: float = 60.0, max_pending: int = DEFAULT_MAX_PENDING
    ) -> None:
        if window_s <= 0 or max_pending < 1:
            raise ValueError("window_s must be > 0 and max_pending >= 1")
        self._store = store
        self._clock = clock
        self._window = timedelta(seconds=window_s)
        self._max_pending = max_pending
        self._pending: dict[_Key, _Pending] = {}
        self._lock = threading.Lock()

    @property
    def window_s(self) -> float:
        return self._window.total_seconds()

    def pending(self) -> int:
        """Kinds currently counted in memory (overflow counters included)."""
        with self._lock:
            return len(self._pending)

    def record(self, draft: AuditDraft) -> None:
        """Audit one refused attempt: written now if it is the first of its kind, else counted."""
        now = self._clock.now()
        key = _key(draft)
        with self._lock:
            due = self._take_due(now)
            entry = self._pending.get(key)
            write_now = False
            if entry is None and len(self._pending) >= self._max_pending:
                key = ("", draft.action, draft.outcome)  # the overflow counter of this action/outcome
                entry = self._pending.get(key)
                if entry is None:
                    overflow = replace(draft, estimate_id=None, revision=None, details={}, peer="")
                    entry = self._pending[key] = _Pending(overflow, now + self._window, overflow=True)
            if entry is None:
                self._pending[key] = _Pending(draft, now + self._window, peer=peer_key(draft.peer))
                write_now = True
            else:
                entry.repeats += 1
                entry.first_repeat_at = entry.first_repeat_at or now
                entry.last_repeat_at = now
        self._write([*due, draft] if write_now else due)

    def flush_due(self) -> int:
        """Write the counts whose window has passed; returns the number of rows written."""
        with self._lock:
            due = self._take_due(self._clock.now())
        self._write(due)
        return len(due)

    def flush_all(self) -> int:
        """Write every count now (the server is stopping); returns the number of rows written."""
        with self._lock:
            entries, self._pending = list(self._pending.values()), {}
            due = [d for d in (self._summary(e, self._clock.now()) for e in entries) if d is not None]
        self._write(due)
        return len(due)

    def _take_due(self, now: datetime) -> list[AuditDraft]:
        """Remove the entries whose window ended; their summaries (entries with repeats only)."""
        ended = [key for key, entry in self._pending.items() if entry.window_end <= now]
        drafts = []
        for key in ended:
            summary = self._summary(self._pending.pop(key), now)
            if summary is not None:
                drafts.append(summary)
        return drafts

    @staticmethod
    def _summary(entry: _Pending, now: datetime) -> AuditDraft | None:
        if entry.repeats == 0 or entry.first_repeat_at is None or entry.last_repeat_at is None:
            return None
        details: dict[str, DetailValue] = dict(entry.draft.details)
        details["repeats"] = entry.repeats
        details["first_repeat_at"] = timestamp_text(entry.first_repeat_at)
        details["last_repeat_at"] = timestamp_text(entry.last_repeat_at)
        if entry.overflow:
            details["overflow"] = True
        return replace(entry.draft, at=now, details=details, peer=entry.peer)

    def _write(self, drafts: list[AuditDraft]) -> None:
        if not drafts:
            return
        try:
            with self._store.unit_of_work() as uow:
                for draft in drafts:
                    uow.audit.append(draft)
                uow.commit()
        except StorageError:
            log.exception("could not audit %d refused call record(s)", len(drafts))
