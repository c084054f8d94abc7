"""Time for workflows: the only module besides settings that reads the wall clock or sleeps."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Protocol

KST = timezone(timedelta(hours=9), "KST")


class Clock(Protocol):
    def now(self) -> datetime:
        """Aware UTC now."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def monotonic_s() -> float:
    return time.monotonic()


def sleep(seconds: float) -> None:
    """Real sleep, passed where a ``sleep`` argument is expected (tenacity, schedulers)."""
    time.sleep(seconds)


def kst_text(when: datetime) -> str:
    """``2025-09-23 12:00:00 KST`` as the seed notice writes times."""
    return when.astimezone(KST).strftime("%Y-%m-%d %H:%M:%S KST")
