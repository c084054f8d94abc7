"""KST months (docs/pricing-rules.md §12) and the per-token token bucket."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kis_estimator.server.engine.months import KST, kst_month_of, month_bounds_utc, parse_month
from kis_estimator.server.service.rate_limit import RateLimiter, peer_key


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


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ("ipv4:127.0.0.1:54321", "ipv4:127.0.0.1"),
        ("ipv4:10.1.2.3:1", "ipv4:10.1.2.3"),
        ("ipv6:[::1]:5555", "ipv6:::/64"),
        ("ipv6:[2001:db8:1:2:3:4:5:6]:443", "ipv6:2001:db8:1:2::/64"),
        ("ipv6:[2001:db8:1:2::9]:80", "ipv6:2001:db8:1:2::/64"),
        ("ipv6:[fe80::1%eth0]:80", "ipv6:fe80::/64"),
        ("ipv6:[not-an-address]:80", "ipv6:[not-an-address]:80"),
        ("unix:/run/kis.sock", "unix:/run/kis.sock"),
        ("", ""),
    ],
)
def test_peer_key_drops_the_port_and_groups_ipv6_by_64(peer: str, key: str) -> None:
    assert peer_key(peer) == key


def test_bucket_table_is_bounded_and_sheds_refilled_buckets_first() -> None:
    now = [0.0]
    limiter = RateLimiter(2, 10.0, lambda: now[0], max_keys=3)
    for key in ("a", "b", "c"):
        assert limiter.check(key).allowed
    assert len(limiter) == 3
    # the table is full and nobody has refilled: a new key shares the overflow bucket
    assert limiter.check("d").allowed and limiter.check("e").allowed
    assert not limiter.check("f").allowed  # d, e and f share one budget of 2
    assert len(limiter) == 4  # three keys plus the one overflow bucket, whatever arrives
    for key in "ghijklmnop":
        limiter.check(key)
    assert len(limiter) == 4
    now[0] = 100.0  # every bucket has refilled: the full ones are dropped for the new key
    assert limiter.check("q").allowed and len(limiter) == 1
