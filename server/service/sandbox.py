"""Acceptance sandboxes: run the regression and smoke suites against a live server, leaving no trace.

A call carrying the metadata ``kis-sandbox: <run id>`` is served by the very same servicers, use cases,
engine and catalog as any other call, but against a throwaway store of that run: a new SQLite database
(same migrations, same repository code) in a private temporary directory. Everything the suites check
behaves exactly as on an empty store in the current KST month — MIXED quota and grants, dedup keys,
request ids and replays, evidence bundles, reviews — while production data is untouched by
construction: no quota used, no estimate a user could list or get, nothing in TAT, the
auto-processing rate, ``GetMetrics`` or the monthly report, and no domain metric moves (a sandbox's
use cases record into a registry nobody scrapes). Calls still pass authentication, RBAC and the rate
limit as usual, and still count in ``grpc_server_*`` (they are real calls); the production audit log
gets one ``SANDBOX_OPENED`` record per run (who ran acceptance, and when), the sandbox's own audit log
the rest.

Lifetime: a run ends its sandbox with a last call carrying ``kis-sandbox-end: 1`` as well (closed
and deleted when that call ends); a sandbox without calls for ``idle_s`` (a runner that crashed) is
closed too, and all of them at shutdown. At most ``max_open`` are open at once: a further run id is
RESOURCE_EXHAUSTED ``SANDBOX_LIMIT``; ``max_open = 0`` disables sandboxes, so a client can never
mistake production for a sandbox.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kis_estimator.server.engine.errors import DomainError, ErrorCode
from kis_estimator.server.engine.messages import violation
from kis_estimator.server.service.caller import Caller

log = logging.getLogger(__name__)

HEADER = "kis-sandbox"
END_HEADER = "kis-sandbox-end"
FIELD = f"metadata.{HEADER}"
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


@dataclass(frozen=True, slots=True)
class ServiceSet:
    """The use cases a call is served by: production's, or one sandbox's."""

    estimates: Any  # EstimateService (Any: this module is imported by their wiring)
    reviews: Any  # ReviewService
    evidence: Any  # EvidenceService
    admin: Any  # AdminService


@dataclass(slots=True)
class _Open:
    services: ServiceSet
    close: Callable[[], None]
    directory: Path
    last_used: float


# (directory for the store) -> (its services, a function closing its store)
SandboxFactory = Callable[[Path], tuple[ServiceSet, Callable[[], None]]]
# (run id, who opened it) -> None: records SANDBOX_OPENED in production
OpenedHook = Callable[[str, Caller], None]


def parse_run_id(value: str) -> str:
    """The run id of a ``kis-sandbox`` header; INVALID_ARGUMENT ``SANDBOX_INVALID`` otherwise."""
    if not _RUN_ID.match(value):
        raise DomainError(violation(ErrorCode.SANDBOX_INVALID, FIELD, v=value[:80]))
    return value


class Sandboxes:
    """The open sandboxes of this process, keyed by run id (see the module docstring)."""

    def __init__(
        self,
        factory: SandboxFactory,
        *,
        max_open: int,
        idle_s: float,
        monotonic: Callable[[], float],
        opened: OpenedHook | None = None,
    ) -> None:
        self._factory = factory
        self._max_open = max_open
        self._idle_s = idle_s
        self._monotonic = monotonic
        self._opened = opened
        self._open: dict[str, _Open] = {}
        self._lock = threading.Lock()

    @property
    def max_open(self) -> int:
        return self._max_open

    def services(self, run_id: str, caller: Caller) -> ServiceSet:
        """The sandbox of ``run_id``, opened on its first call (by ``caller``)."""
        now = self._monotonic()
        expired: list[_Open] = []
        with self._lock:
            for key in [k for k, v in self._open.items() if now - v.last_used > self._idle_s]:
                expired.append(self._open.pop(key))
            found = self._open.get(run_id)
            if found is None:
                if len(self._open) >= self._max_open:
                    self._close_all(expired)
                    raise DomainError(violation(ErrorCode.SANDBOX_LIMIT, FIELD, max=self._max_open))
                directory = Path(tempfile.mkdtemp(prefix="kis-sandbox-"))
                directory.chmod(0o700)
                try:
                    services, close = self._factory(directory)
                except Exception:
                    shutil.rmtree(directory, ignore_errors=True)
                    raise
                found = _Open(services, close, directory, now)
                self._open[run_id] = found
                created = True
            else:
                created = False
            found.last_used = now
        self._close_all(expired)
        if created:
            log.info("sandbox opened", extra={"run_id": run_id, "path": str(found.directory)})
            if self._opened is not None:
                self._opened(run_id, caller)
        return found.services

    def end(self, run_id: str) -> None:
        """Close and delete the sandbox of ``run_id`` (its run is over); unknown ids are ignored."""
        with self._lock:
            found = self._open.pop(run_id, None)
        if found is not None:
            self._close_all([found])
            log.info("sandbox closed", extra={"run_id": run_id})

    def open_count(self) -> int:
        with self._lock:
            return len(self._open)

    def close(self) -> None:
        """Close and delete every sandbox (server shutdown)."""
        with self._lock:
            every = list(self._open.values())
            self._open.clear()
        self._close_all(every)

    @staticmethod
    def _close_all(sandboxes: list[_Open]) -> None:
        for sandbox in sandboxes:
            try:
                sandbox.close()
            finally:
                shutil.rmtree(sandbox.directory, ignore_errors=True)


__all__ = ["END_HEADER", "FIELD", "HEADER", "SandboxFactory", "Sandboxes", "ServiceSet", "parse_run_id"]
