"""Administration: the MIXED quota and its monthly exception (docs/pricing-rules.md §12), the audit log.

Audit retention (issue #3): records older than ``retention_days`` may be pruned; pruning removes a
contiguous oldest prefix and moves the chain's anchor to the last removed record in the same
transaction, so the remaining chain still verifies. The prune itself is an audit record.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from kis_estimator.server.clock import Clock
from kis_estimator.server.engine import audit as actions
from kis_estimator.server.engine.audit import AuditEvent, ChainBreak, verify_chain
from kis_estimator.server.engine.errors import DomainError, ErrorCode
from kis_estimator.server.engine.messages import violation
from kis_estimator.server.service.caller import Caller
from kis_estimator.server.service.mixed_quota import mixed_usage, month_of_request, required_text
from kis_estimator.server.service.paging import PageTokens, page_size_of
from kis_estimator.server.storage.repository import AuditFilter, GrantExistsError, MixedGrant, Store

MAX_REASON = 500


@dataclass(frozen=True, slots=True)
class Quota:
    month: str
    used: int
    quota: int
    grant_id: str | None


@dataclass(frozen=True, slots=True)
class AuditPage:
    events: tuple[AuditEvent, ...]
    next_page_token: str


class AdminService:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        mixed_monthly_quota: int,
        retention_days: int,
        page_tokens: PageTokens | None = None,
    ) -> None:
        self._pages = page_tokens or PageTokens.random()
        self._store = store
        self._clock = clock
        self._mixed_quota = mixed_monthly_quota
        self._retention = timedelta(days=retention_days)

    def quota(self, month: str) -> Quota:
        """GetMixedQuota: used and allowed MIXED estimates of a KST month."""
        with self._store.unit_of_work(read_only=True) as uow:
            usage = mixed_usage(uow, month_of_request(month, self._clock), self._mixed_quota)
        return Quota(usage.month, usage.used, usage.quota, usage.grant.grant_id if usage.grant else None)

    def grant(self, month: str, reason: str, caller: Caller) -> Quota:
        """GrantMixedException: +1 for the month, once per month, audited in the same transaction."""
        if not month.strip():
            raise DomainError(violation(ErrorCode.FIELD_REQUIRED, "month", f="month"))
        month = month_of_request(month, self._clock)
        reason = required_text(reason, "reason", MAX_REASON)
        now = self._clock.now()
        grant = MixedGrant(
            grant_id=f"grant_{secrets.token_hex(6)}",
            month=month,
            reason=reason,
            actor=caller.actor,
            granted_at=now,
        )
        try:
            with self._store.unit_of_work() as uow:
                uow.mixed_grants.add(grant)
                usage = mixed_usage(uow, month, self._mixed_quota)
                uow.audit.append(
                    caller.audit(
                        now,
                        actions.MIXED_GRANT,
                        "GRANTED",
                        month=month,
                        grant_id=grant.grant_id,
                        reason=reason,
                    )
                )
                uow.commit()
        except GrantExistsError:
            raise DomainError(
                violation(ErrorCode.MIXED_EXCEPTION_ALREADY_GRANTED, "month", v=month)
            ) from None
        return Quota(month, usage.used, usage.quota, grant.grant_id)

    def audit_events(
        self,
        page_size: int,
        page_token: str,
        *,
        action: str | None,
        estimate_id: str | None,
        since: datetime | None,
        until: datetime | None,
    ) -> AuditPage:
        """ListAuditEvents: newest first."""
        size = page_size_of(page_size)
        bounds = [b.isoformat() if b else "" for b in (since, until)]
        scope = ":".join(["audit", action or "", estimate_id or "", *bounds])
        before = self._pages.seq_cursor(page_token, scope)
        flt = AuditFilter(action=action, estimate_id=estimate_id, since=since, until=until)
        with self._store.unit_of_work(read_only=True) as uow:
            events, next_before = uow.audit.list(flt, size, before)
        return AuditPage(tuple(events), self._pages.seq_token(next_before, scope))

    def verify_audit(self) -> tuple[int, ChainBreak | None]:
        """Walk the whole chain from its anchor: (records checked, first break or None)."""
        with self._store.unit_of_work(read_only=True) as uow:
            anchor_seq, anchor_hash = uow.audit.anchor()
            counted = _Counted(uow.audit.iter_ascending(anchor_seq + 1))
            broken = verify_chain(counted, anchor_seq=anchor_seq, anchor_hash=anchor_hash)
        return counted.count, broken

    def prune_audit(self, caller: Caller) -> int:
        """Delete audit records older than the retention period; the prune is audited."""
        now = self._clock.now()
        cutoff = now - self._retention
        with self._store.unit_of_work() as uow:
            removed = uow.audit.prune_before(cutoff)
            uow.audit.append(
                caller.audit(now, actions.AUDIT_PRUNED, "PRUNED", removed=removed, cutoff=cutoff.isoformat())
            )
            uow.commit()
        return removed


class _Counted:
    """Counts events as verify_chain consumes them."""

    def __init__(self, events: Iterator[AuditEvent]) -> None:
        self._events = events
        self.count = 0

    def __iter__(self) -> Iterator[AuditEvent]:
        for event in self._events:
            self.count += 1
            yield event
