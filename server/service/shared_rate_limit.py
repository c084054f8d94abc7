"""The per-token request budget shared by every replica on one PostgreSQL database.

Why PostgreSQL rather than Redis: the replicas already share the database, and every guarantee of
the scale-out rests on it (quotas, dedup keys, request ids, the audit chain). A Redis would be one
more service to run, secure and watch for a single counter; one upsert per authenticated call costs
a round trip on a connection the replica already holds. The bucket is one row per key, updated by a
single statement that locks that row only (``PostgresStore.spend_budget``), so the budget is exact
across replicas: N replicas together give a token ``budget`` requests, not N × ``budget``.

Degrading safely: when the database cannot be reached the call is checked against this replica's
in-memory bucket instead (:class:`~kis_estimator.server.service.rate_limit.RateLimiter`, the single-host
budget), so an outage neither opens the gates nor refuses every caller; the switch is logged (at most once a
minute). The calls that need the store fail UNAVAILABLE anyway during the outage.

SQLite deployments are one host; their budgets stay in process memory (server/service/rate_limit.py).
The per-address budget of calls without a valid token stays per replica too: it only bounds the
work such calls cause on the replica that receives them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kis_estimator.server.service.rate_limit import Decision, RateLimiter
from kis_estimator.server.storage.repository import StorageError

log = logging.getLogger(__name__)

FALLBACK_LOG_INTERVAL_S = 60.0
KEY_PREFIX = "token:"

# (key, budget, window_s) -> (allowed, retry_after_s); PostgresStore.spend_budget
SpendBudget = Callable[[str, int, float], tuple[bool, float]]


class SharedRateLimiter:
    """``check(key)`` like :class:`RateLimiter`, against the shared table (module docstring)."""

    def __init__(
        self,
        spend: SpendBudget,
        budget: int,
        window_s: float,
        fallback: RateLimiter,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if fallback.budget != budget:
            raise ValueError("the fallback limiter must have the same budget")
        self.budget = budget
        self._window_s = window_s
        self._spend = spend
        self._fallback = fallback
        self._now = monotonic
        self._lock = threading.Lock()
        self._last_logged: float | None = None

    def check(self, key: str) -> Decision:
        try:
            allowed, retry_after_s = self._spend(KEY_PREFIX + key, self.budget, self._window_s)
        except StorageError as exc:
            self._log_fallback(exc)
            return self._fallback.check(key)
        return Decision(allowed=allowed, retry_after_s=retry_after_s)

    def _log_fallback(self, exc: StorageError) -> None:
        now = self._now()
        with self._lock:
            if self._last_logged is not None and now - self._last_logged < FALLBACK_LOG_INTERVAL_S:
                return
            self._last_logged = now
        log.warning("shared request budget unavailable, using this replica's", extra={"error": str(exc)})
