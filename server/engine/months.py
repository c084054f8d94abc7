"""KST calendar months (docs/pricing-rules.md §12 MIXED quota, §16.3 reporting window).

KST is UTC+9 with no daylight saving time, so a fixed offset is exact.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

KST = timezone(timedelta(hours=9), "KST")
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def kst_month_of(when: datetime) -> str:
    """The KST month ``YYYY-MM`` containing the aware instant ``when``."""
    if when.tzinfo is None:
        raise ValueError("an aware datetime is required")
    return when.astimezone(KST).strftime("%Y-%m")


def parse_month(text: str) -> tuple[int, int]:
    """(year, month) of ``YYYY-MM``; ``ValueError`` otherwise."""
    match = _MONTH.match(text)
    if match is None or not 2000 <= int(match.group(1)) <= 2999:
        raise ValueError(f"not a month YYYY-MM: {text[:20]!r}")
    return int(match.group(1)), int(match.group(2))


def month_bounds_utc(month: str) -> tuple[datetime, datetime]:
    """[start, end) of a KST month as aware UTC datetimes."""
    year, mon = parse_month(month)
    start = datetime(year, mon, 1, tzinfo=KST)
    end = datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=KST)
    return start.astimezone(UTC), end.astimezone(UTC)
