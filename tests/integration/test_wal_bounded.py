"""The SQLite WAL stays bounded under steady load with readers always present.

PASSIVE checkpoints alone let the WAL grow without end while some reader always uses it (13 GB
after 100,000 creates in the benchmark's leak check). Above ``wal_truncate_bytes`` the checkpointer
truncates it (server/storage/sqlite.py SqliteStore.checkpoint), in a reader gap
(sqlite.py ReaderGate): reads that follow each other without a pause would starve it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kis_estimator.server.storage.sqlite import SqliteStore

T0 = datetime(2026, 12, 3, tzinfo=UTC)
LIMIT = 256 * 1024


def wal_bytes(store: SqliteStore) -> int:
    wal = Path(f"{store.path}-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_the_wal_is_truncated_past_its_limit_while_readers_keep_reading(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kis_estimator.server.storage.sqlite")
    store = SqliteStore(tmp_path / "kis.db", wal_truncate_bytes=LIMIT)
    stop = threading.Event()
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            with store.unit_of_work(read_only=True) as uow:
                uow.tokens.list()
            reads += 1

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        conn = store._connect()  # a checkpoint connection like the store's own thread
        modes = []
        for batch in range(6):
            for i in range(60):
                with store.unit_of_work() as uow:
                    uow.tokens.add(f"tok_{batch}_{i}", "n" * 200, "VIEWER", f"{batch:02d}{i:062d}", T0)
                    uow.commit()
            modes.append(store.checkpoint(conn))
        conn.close()
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert reads > 0
    assert "TRUNCATE" in modes, modes  # the WAL passed the limit and was truncated
    # every truncation found its gap: none gave up on readers, and the WAL ends below the limit
    assert not [r.message for r in caplog.records if "found" in r.message and "readers" in r.message]
    assert wal_bytes(store) < LIMIT
    with store.unit_of_work(read_only=True) as uow:
        assert len(uow.tokens.list()) == 360  # nothing lost
    store.close()


def read_in_thread(store: SqliteStore, entered: threading.Event, leave: threading.Event) -> threading.Thread:
    """A thread that opens a read unit, sets ``entered``, and keeps it open until ``leave`` is set."""

    def read() -> None:
        with store.unit_of_work(read_only=True) as uow:
            uow.tokens.list()
            entered.set()
            leave.wait(10)

    thread = threading.Thread(target=read)
    thread.start()
    return thread


def test_a_reader_gap_waits_for_reads_in_progress_and_holds_new_ones_back(sqlite_store: SqliteStore) -> None:
    first_in, first_out = threading.Event(), threading.Event()
    first = read_in_thread(sqlite_store, first_in, first_out)
    assert first_in.wait(5)
    in_gap, gap_over, drained = threading.Event(), threading.Event(), []

    def truncate() -> None:
        with sqlite_store.readers.gap(5) as ok:
            drained.append(ok)
            in_gap.set()
            gap_over.wait(10)

    gap = threading.Thread(target=truncate)
    gap.start()
    assert not in_gap.wait(0.3)  # the read in progress keeps the gap from opening
    first_out.set()
    assert in_gap.wait(5) and drained == [True]
    second_in, second_out = threading.Event(), threading.Event()
    second = read_in_thread(sqlite_store, second_in, second_out)
    assert not second_in.wait(0.3)  # a read that starts during the gap waits at the gate
    gap_over.set()
    assert second_in.wait(5)  # and goes on once the gap is over
    second_out.set()
    for thread in (first, gap, second):
        thread.join(5)


def test_a_nested_read_passes_a_shut_gate(sqlite_store: SqliteStore) -> None:
    drained: list[bool] = []

    def truncate() -> None:
        with sqlite_store.readers.gap(5) as ok:
            drained.append(ok)

    gap = threading.Thread(target=truncate)
    with sqlite_store.unit_of_work(read_only=True) as outer:
        outer.tokens.list()
        gap.start()  # shuts the gate, then waits for this thread's read to finish
        while not sqlite_store.readers.shut:
            gap.join(0.001)
        with sqlite_store.lookup() as inner:  # the same thread's nested read is not held back
            assert inner.tokens.list() == []
        assert drained == []  # the gap is still waiting for the outer read
    gap.join(5)
    assert drained == [True]


def test_a_gap_is_tried_anyway_when_a_read_does_not_finish_in_time(sqlite_store: SqliteStore) -> None:
    with sqlite_store.unit_of_work(read_only=True) as held, sqlite_store.readers.gap(0.1) as drained:
        assert not drained
        held.tokens.list()
    assert not sqlite_store.readers.shut
    with sqlite_store.unit_of_work(read_only=True) as after:
        assert after.tokens.list() == []


def test_a_truncation_held_up_by_a_reader_it_cannot_gate_gives_up_soon_and_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A reader outside the gate (another process's; here a plain connection) keeps a snapshot in
    the WAL: the truncation, during which every writer and this process's readers wait, gives up
    after TRUNCATE_BUSY_S instead of the store's whole busy_timeout, and the next one succeeds."""
    caplog.set_level(logging.INFO, logger="kis_estimator.server.storage.sqlite")
    store = SqliteStore(tmp_path / "kis.db", wal_truncate_bytes=LIMIT, busy_timeout_s=5.0)
    other = sqlite3.connect(store.path, isolation_level=None)
    conn = store._connect()
    try:
        for i in range(60):
            with store.unit_of_work() as uow:
                uow.tokens.add(f"tok_{i}", "n" * 200, "VIEWER", f"{i:064d}", T0)
                uow.commit()
        other.execute("BEGIN")
        other.execute("SELECT count(*) FROM tokens").fetchone()  # a snapshot in the WAL
        for i in range(60, 400):
            with store.unit_of_work() as uow:
                uow.tokens.add(f"tok_{i}", "n" * 200, "VIEWER", f"{i:064d}", T0)
                uow.commit()
        assert wal_bytes(store) > LIMIT
        started = time.monotonic()
        assert store.checkpoint(conn) == "TRUNCATE"
        assert time.monotonic() - started < 2.5  # TRUNCATE_BUSY_S (0.25 s), not busy_timeout (5 s)
        assert [r for r in caplog.records if "another process's readers" in r.getMessage()]
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000  # restored
        assert wal_bytes(store) > LIMIT
        other.execute("COMMIT")
        store.checkpoint(conn)
        assert wal_bytes(store) == 0
    finally:
        other.close()
        conn.close()
        store.close()
