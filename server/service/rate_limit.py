"""Request budgets (issue #3): a token bucket per key, per replica.

Two budgets use it: per API token (the GA manifest sets 1,000 requests per hour), and per client
address for calls that fail authentication (``unauthenticated_rate_limit_per_hour``; the key is
:func:`peer_key`). The bucket holds ``budget`` requests and refills continuously at
``budget / window`` per second, so a client that spends its budget may send again after
``window / budget`` seconds rather than waiting for an hour boundary. These buckets live in process
memory: one host (SQLite) keeps them here; replicas on PostgreSQL share the per-token budget through
the database (server/service/shared_rate_limit.py), and fall back to these buckets while it is
unreachable. Health checks and the metrics endpoint
never pass through here.

Memory is bounded: at most ``max_keys`` buckets are kept. A full bucket is the same as no bucket, so
when the table is full the full ones are dropped first; if every bucket is still in use, a new key
shares one overflow bucket (its callers then share one budget, and nobody gets a fresh burst by
flooding the table with new addresses).
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

DEFAULT_MAX_KEYS = 100_000
OVERFLOW_KEY = "\x00overflow"  # never a token id or a peer key (both are printable)
IPV6_PREFIX_BITS = 64  # one customer usually holds a whole /64: count it as one address


@dataclass(slots=True)
class _Bucket:
    tokens: Fraction
    updated_s: float


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after_s: float = 0.0


class Limiter(Protocol):
    """What the interceptor spends budgets with: this module's in-memory buckets, or the table
    shared by replicas on PostgreSQL (server/service/shared_rate_limit.py)."""

    @property
    def budget(self) -> int: ...

    def check(self, key: str) -> Decision: ...


def peer_key(peer: str) -> str:
    """The budget key of a gRPC peer string: its address without the port; IPv6 by /64.

    ``ipv4:10.1.2.3:5555`` → ``ipv4:10.1.2.3``; ``ipv6:[2001:db8::1]:5555`` → ``ipv6:2001:db8::/64``;
    anything else (``unix:…``, an unparsable string) is its own key.
    """
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return f"ipv4:{rest.rpartition(':')[0] or rest}"
    if kind == "ipv6":
        host = rest.rpartition(":")[0] if rest.startswith("[") else rest
        try:
            address = ipaddress.IPv6Address(host.strip("[]").partition("%")[0])
        except ValueError:
            return peer
        return f"ipv6:{ipaddress.IPv6Network((address, IPV6_PREFIX_BITS), strict=False)}"
    return peer


class RateLimiter:
    """``check(key)`` spends one request of ``key``'s budget, or says when to retry."""

    def __init__(
        self,
        budget: int,
        window_s: float,
        monotonic: Callable[[], float],
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if budget < 1 or window_s <= 0 or max_keys < 1:
            raise ValueError("budget and max_keys must be >= 1 and window_s > 0")
        self.budget = budget
        self._budget = Fraction(budget)
        self._rate = Fraction(budget) / Fraction(window_s)  # requests per second
        self._now = monotonic
        self._max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Buckets held (for tests of the memory bound)."""
        with self._lock:
            return len(self._buckets)

    def _refilled(self, bucket: _Bucket, now: float) -> Fraction:
        elapsed = Fraction(max(0.0, now - bucket.updated_s))
        return min(self._budget, bucket.tokens + elapsed * self._rate)

    def _bucket(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is not None:
            return bucket
        if len(self._buckets) >= self._max_keys:
            for known in [k for k, b in self._buckets.items() if self._refilled(b, now) >= self._budget]:
                del self._buckets[known]
            if len(self._buckets) >= self._max_keys:
                key = OVERFLOW_KEY
                bucket = self._buckets.get(key)
                if bucket is not None:
                    return bucket
        bucket = self._buckets[key] = _Bucket(tokens=self._budget, updated_s=now)
        return bucket

    def check(self, key: str) -> Decision:
        now = self._now()
        with self._lock:
            bucket = self._bucket(key, now)
            bucket.tokens = self._refilled(bucket, now)
            bucket.updated_s = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return Decision(allowed=True)
            wait = (1 - bucket.tokens) / self._rate
            return Decision(allowed=False, retry_after_s=float(wait))
