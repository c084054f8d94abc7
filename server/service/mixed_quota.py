"""The MIXED-brand monthly usage (docs/pricing-rules.md §12), read the same way wherever it is needed.

Used = accepted MIXED estimates whose ``accepted_at`` falls in the KST month; quota = the configured
monthly quota, plus one when an ADMIN granted that month's exception. Callers that must be atomic
with an insert (P5) call :func:`mixed_usage` inside their write unit.
"""

from __future__ import annotations

from dataclasses import dataclass

from kis_estimator.server.clock import Clock
from kis_estimator.server.engine.errors import DomainError, ErrorCode
from kis_estimator.server.engine.messages import violation
from kis_estimator.server.engine.months import kst_month_of, month_bounds_utc, parse_month
from kis_estimator.server.storage.repository import MixedGrant, UnitOfWork

MIXED_BRAND = "MIXED"


@dataclass(frozen=True, slots=True)
class MixedUsage:
    month: str
    used: int
    quota: int
    grant: MixedGrant | None


def mixed_usage(uow: UnitOfWork, month: str, base_quota: int) -> MixedUsage:
    """Used and allowed MIXED estimates of ``month`` (``YYYY-MM``, KST) in this unit of work."""
    start, end = month_bounds_utc(month)
    used = uow.estimates.count_accepted(MIXED_BRAND, start, end)
    grant = uow.mixed_grants.get(month)
    return MixedUsage(month=month, used=used, quota=base_quota + (grant is not None), grant=grant)


def month_of_request(text: str, clock: Clock) -> str:
    """A request's ``month`` field: ``YYYY-MM``, or the current KST month when empty."""
    month = text.strip() or kst_month_of(clock.now())
    try:
        parse_month(month)
    except ValueError:
        raise DomainError(violation(ErrorCode.FIELD_REQUIRED, "month", f="month (YYYY-MM)")) from None
    return month


def required_text(value: str, field: str, max_chars: int) -> str:
    """A required free-text field (reason, comment): trimmed, 1 … ``max_chars`` characters."""
    value = value.strip()
    if not value:
        raise DomainError(violation(ErrorCode.FIELD_REQUIRED, field, f=field))
    if len(value) > max_chars:
        raise DomainError(violation(ErrorCode.TEXT_TOO_LONG, field, f=field, max=max_chars))
    return value
