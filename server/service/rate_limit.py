"""Per-token request budget (issue #3): a token bucket per API token, per replica.

The GA manifest sets 1,000 requests per hour per token. The bucket holds ``budget`` requests and
refills continuously at ``budget / window`` per second, so a client that spends its budget may send
again after ``window / budget`` seconds rather than waiting for an hour boundary. The budget is
**per replica**: buckets live in process memory (a shared budget needs a shared store such as Redis;
with N replicas behind a balancer the effective limit is up to N × budget). Health checks and the
metrics endpoint never pass through here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction


@dataclass(slots=True)
class _Bucket:
    tokens: Fraction
    updated_s: float


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after_s: float = 0.0


class RateLimiter:
    """``check(key)`` spends one request of ``key``'s budget, or says when to retry."""

    def __init__(self, budget: int, window_s: float, monotonic: Callable[[], float]) -> None:
        if budget < 1 or window_s <= 0:
            raise ValueError("budget must be >= 1 and window_s > 0")
        self.budget = budget
        self._budget = Fraction(budget)
        self._rate = Fraction(budget) / Fraction(window_s)  # requests per second
        self._now = monotonic
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> Decision:
        now = self._now()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(tokens=self._budget, updated_s=now)
            elapsed = Fraction(max(0.0, now - bucket.updated_s))
            bucket.tokens = min(self._budget, bucket.tokens + elapsed * self._rate)
            bucket.updated_s = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return Decision(allowed=True)
            wait = (1 - bucket.tokens) / self._rate
            return Decision(allowed=False, retry_after_s=float(wait))
