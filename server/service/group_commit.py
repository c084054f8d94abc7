"""Group commit: concurrent CreateEstimate writes share one write transaction and one commit.

Every create holds the store's write lock (SQLite's single writer and the writer lock shared by
``--workers``; PostgreSQL's advisory lock) for its inserts and its durable commit. Measured under
load (bench/README.md, c16, one process): the lock was held ~4 ms per create — the commit ~1.7 ms,
the rest five statements, each waiting for the GIL behind the request threads after its I/O — while
the same work takes 1.2 ms alone. So the writes, not the CPU, capped a process near 240 creates/s,
and a second worker on the same store added little. (SQLite now flushes a commit to disk after the
lock is released, ``storage/sqlite.py``; the lock covers the statements and the WAL append.)

Here one writer thread per process takes every create that is waiting when it is free, inserts
them with one multi-row INSERT per table, appends their audit events in arrival order
and commits once (``UnitOfWork.store_creates``; on PostgreSQL the inserts and the commit are one
round trip, ``storage/postgres.py``); then each caller learns its outcome. The batch forms by
itself: whatever arrives while a commit runs is the next batch, so a lone create waits for
nothing. The writer opens its write unit (takes the lock) before it takes the batch, so the
creates that arrive while another process holds the lock join this commit rather than wait for
the next one; and each create's rows (``storage.rows.new_rows``: the JSON document, the checked
bundle, on PostgreSQL both packed by ``Store.prepare_rows``) are made on the request's thread
before it queues, so the lock is held for the SQL and the commit only. A reply is still sent only
after the commit that stored it (its caller waits for that), so nothing acknowledged can be lost,
and a batch that fails (the store unavailable, a commit error) fails every member, none half-stored.

A batch that meets a taken key (a duplicate ``request_id`` or ``dedup_key``: two creates racing
with one key, or a retry racing its first attempt) is rolled back, and its members are written one
by one, each in its own transaction exactly as without grouping, so each gets its own answer
(``DuplicateKeyError``: the replay or DUPLICATE_REQUEST). A member whose caller gave up by the time
its batch is written is dropped (``CallAbandoned``) and nothing of it is stored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from kis_estimator.server.engine.audit import AuditDraft
from kis_estimator.server.engine.records import EstimateRecord
from kis_estimator.server.storage.repository import (
    EvidenceRecord,
    IdempotencyRecord,
    NewRows,
    StorageError,
    Store,
    UnitOfWork,
)
from kis_estimator.server.storage.rows import new_rows

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 64


class CallAbandoned(Exception):
    """The caller gave up (deadline or cancel) before the estimate was stored; nothing was."""


@dataclass(slots=True)
class NewEstimate:
    """Everything one accepted create stores, built before the write: its records (what writing it
    alone checks key by key) and their rows (what a batch inserts), made at construction, on the
    request's thread."""

    record: EstimateRecord
    evidence: EvidenceRecord
    idempotency: IdempotencyRecord | None
    audit: AuditDraft
    still_wanted: Callable[[], bool] = lambda: True
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    rows: NewRows = field(init=False)

    def __post_init__(self) -> None:
        self.rows = new_rows(self.record, self.evidence, self.idempotency)


def store_one(uow: UnitOfWork, item: NewEstimate) -> None:
    """One create in ``uow``, each key checked on its own (the caller commits)."""
    uow.estimates.add(item.record)
    uow.evidence.add(item.evidence)
    if item.idempotency is not None:
        uow.idempotency.add(item.idempotency, item.record.accepted_at)
    uow.audit.append(item.audit)


class GroupCommit:
    """The writer of one process's creates (see the module docstring); ``max_batch`` 1 writes each
    create alone on its caller's thread, as before grouping."""

    def __init__(
        self,
        store: Store,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        on_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._store = store
        self._max_batch = max_batch
        self._on_batch = on_batch
        self._waiting: list[NewEstimate] = []
        self._cond = threading.Condition()
        self._writer: threading.Thread | None = None

    def waiting(self) -> int:
        """Creates queued for the next transaction (not counting the one being written)."""
        with self._cond:
            return len(self._waiting)

    def write(self, item: NewEstimate) -> None:
        """Store ``item``; returns once it is committed, raises what writing it alone would raise
        (DuplicateKeyError, StorageError) or CallAbandoned when its caller gave up first."""
        if self._max_batch == 1:
            self._write_alone(item)
            _raise_for(item)
            return
        self._store.prepare_rows(item.rows)  # on this thread, not the writer's under the lock
        with self._cond:
            self._waiting.append(item)
            if self._writer is None:
                self._writer = threading.Thread(target=self._run, name="group-commit", daemon=True)
                self._writer.start()
            self._cond.notify()
        item.done.wait()
        _raise_for(item)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting:
                    self._cond.wait()
            batch: list[NewEstimate] = []
            try:
                self._write_batch(batch)
            except BaseException as exc:
                if not batch:  # the unit of work never opened: fail what is waiting now
                    batch.extend(self._take())
                log.exception("group commit of %d creates failed", len(batch))
                for item in batch:
                    if item.error is None:
                        item.error = _own_copy(exc)
            finally:
                for item in batch:
                    item.done.set()

    def _take(self) -> list[NewEstimate]:
        with self._cond:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
        return batch

    def _write_batch(self, batch: list[NewEstimate]) -> None:
        """Open the write unit first, then take the batch (into ``batch``): the creates that
        arrived while another writer held the store's write lock join this commit instead of
        waiting for the next one."""
        with self._store.unit_of_work() as uow:
            batch.extend(self._take())
            wanted = []
            for item in batch:
                if item.still_wanted():
                    wanted.append(item)
                else:
                    item.error = CallAbandoned()
            if not wanted:
                return  # nothing written: leaving the unit rolls it back
            self._on_batch(len(wanted))
            if uow.store_creates([item.rows for item in wanted], [item.audit for item in wanted]):
                return
        # a key was taken: the unit above was rolled back with nothing stored; each alone now
        for item in wanted:
            self._write_alone(item)

    @staticmethod
    def _store_alone(uow: UnitOfWork, item: NewEstimate) -> None:
        """``item`` in ``uow`` and commit; what fails is ``item``'s answer (its caller raises it)."""
        try:
            store_one(uow, item)
            uow.commit()
        except Exception as exc:  # noqa: BLE001 - the caller's thread raises it
            item.error = exc

    def _write_alone(self, item: NewEstimate) -> None:
        if not item.still_wanted():
            item.error = CallAbandoned()
            return
        try:
            with self._store.unit_of_work() as uow:
                self._store_alone(uow, item)
        except Exception as exc:  # noqa: BLE001 - opening the unit failed: the caller raises it
            item.error = exc


def _own_copy(exc: BaseException) -> BaseException:
    """A batch's failure for one member: each caller's thread raises an exception object of its own."""
    if isinstance(exc, StorageError):
        return StorageError(str(exc), retryable=exc.retryable)
    return exc


def _raise_for(item: NewEstimate) -> None:
    if item.error is not None:
        raise item.error


__all__ = [
    "DEFAULT_MAX_BATCH",
    "CallAbandoned",
    "GroupCommit",
    "NewEstimate",
    "StorageError",
    "store_one",
]
