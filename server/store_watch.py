"""Health follows the store: NOT_SERVING while the database cannot be reached, SERVING once it answers.

A database outage is not a bug: calls that meet it are answered UNAVAILABLE ``STORE_UNAVAILABLE``
(the interceptor, which also wakes this watch), and :class:`StoreWatch` pings the store (a
read-only unit of work with one lookup) every ``interval_s`` — at once when woken — so gRPC health
and ``/healthz`` turn NOT_SERVING during the outage (a load balancer stops sending calls) and SERVING again by
themselves when the store is back. The watch only undoes what it did: a replica drained on purpose
(``App.set_serving(False)``) stays drained.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kis_estimator.server.storage.repository import StorageError, Store

__all__ = ["StoreWatch"]

log = logging.getLogger(__name__)


class StoreWatch:
    def __init__(self, store: Store, *, interval_s: float = 2.0) -> None:
        self._store = store
        self._interval_s = interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.down = False  # the watch turned health NOT_SERVING and has not turned it back yet

    def notify(self) -> None:
        """A call met an outage: ping now."""
        self._wake.set()

    def ping(self) -> bool:
        try:
            with self._store.unit_of_work(read_only=True) as uow:
                uow.estimates.get("")  # a real round trip: opening a unit may not touch the database
                return True
        except StorageError:
            return False
        except Exception:  # any failure to reach the store is "not reachable"; the watch must live on
            log.warning("store ping failed unexpectedly", exc_info=True)
            return False

    def start(self, set_serving: Callable[[bool], None]) -> None:
        def run() -> None:
            while not self._stop.is_set():
                ok = self.ping()
                if not ok and not self.down:
                    self.down = True
                    log.error("store unreachable: health NOT_SERVING until it answers again")
                    set_serving(False)
                elif ok and self.down:
                    self.down = False
                    log.warning("store reachable again: health SERVING")
                    set_serving(True)
                self._wake.wait(self._interval_s)
                self._wake.clear()

        self._thread = threading.Thread(target=run, name="store-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
