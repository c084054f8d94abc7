"""KST months (docs/pricing-rules.md §12) and the per-token token bucket."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from server.engine.months import KST, kst_month_of, month_bounds_utc, parse_month
from server.service.rate_limit import RateLimiter


@pytest.mark.parametrize(
    ("instant", "month"),
    [
        (datetime(2031, 6, 30, 14, 59, 59, tzinfo=UTC), "2031-06"),  # 23:59:59 KST
        (datetime(2031, 6, 30, 15, 0, 0, tzinfo=UTC), "2031-07"),  # 00:00:00 KST
        (datetime(2031, 12, 31, 15, 0, 0, tzinfo=UTC), "2032-01"),
    ],
    ids=["last-second", "first-second", "new-year"],
)
def test_kst_month_of(instant: datetime, month: str) -> None:
    assert kst_month_of(instant) == month


def test_month_bounds_are_kst_midnights_in_utc() -> None:
    start, end = month_bounds_utc("2031-12")
    assert start == datetime(2031, 12, 1, tzinfo=KST) and end == datetime(2032, 1, 1, tzinfo=KST)
    assert start.tzinfo is UTC


@pytest.mark.parametrize("bad", ["2031-13", "2031-1", "31-01", "", "2031-00", "1999-01"])
def test_parse_month_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="YYYY-MM"):
        parse_month(bad)


def test_bucket_spends_refills_and_says_when_to_retry() -> None:
    now = [0.0]
    limiter = RateLimiter(budget=3, window_s=3600, monotonic=lambda: now[0])
    assert [limiter.check("t").allowed for _ in range(4)] == [True, True, True, False]
    refused = limiter.check("t")
    assert refused.retry_after_s == pytest.approx(1200.0)
    assert limiter.check("other").allowed
    now[0] = 1199.0
    assert not limiter.check("t").allowed
    now[0] = 1200.0
    assert limiter.check("t").allowed
    now[0] = 10**6
    assert [limiter.check("t").allowed for _ in range(4)] == [True, True, True, False]
