"""The SQLite WAL stays bounded under steady load with readers always present.

PASSIVE checkpoints alone let the WAL grow without end while some reader always uses it (13 GB
after 100,000 creates in the benchmark's leak check). Above ``wal_truncate_bytes`` the checkpointer
truncates it (server/storage/sqlite.py SqliteStore.checkpoint).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

from kis_estimator.server.storage.sqlite import SqliteStore

T0 = datetime(2026, 12, 3, tzinfo=UTC)
LIMIT = 256 * 1024


def wal_bytes(store: SqliteStore) -> int:
    wal = Path(f"{store.path}-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_the_wal_is_truncated_past_its_limit_while_readers_keep_reading(tmp_path: Path) -> None:
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
    assert wal_bytes(store) < 2 * LIMIT  # bounded, whatever the readers did
    with store.unit_of_work(read_only=True) as uow:
        assert len(uow.tokens.list()) == 360  # nothing lost
    store.close()
