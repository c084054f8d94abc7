"""The SQLite writer lock (``WriterLock``): one writer at a time across threads and processes, a
bounded wait, and writers of two processes on one file that never wait in SQLite's busy handler."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from kis_estimator.server.clock import SystemClock
from kis_estimator.server.engine.roles import Role
from kis_estimator.server.service.tokens import TokenService
from kis_estimator.server.storage.sqlite import SqliteStore, WriterLock

HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


def test_another_process_holding_the_lock_makes_a_writer_wait_and_time_out(tmp_path: Path) -> None:
    path = tmp_path / "kis.db-writer"
    lock = WriterLock(path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        assert lock.acquire(timeout=0.2) is False
        assert 0.2 <= time.monotonic() - started < 2.0
        # the thread lock was given back: a later attempt is not stuck behind the failed one
        waited: list[bool] = []
        waiter = threading.Thread(target=lambda: waited.append(lock.acquire(timeout=10)))
        waiter.start()
        time.sleep(0.1)
        assert waited == []
        holder.communicate("\n", timeout=10)  # the holder exits: its lock goes with its descriptor
        waiter.join(timeout=10)
        assert waited == [True]
        lock.release()
    finally:
        holder.kill()
        lock.close()


def test_two_locks_on_one_file_exclude_each_other(tmp_path: Path) -> None:
    """Two opens of one lock file (as two processes have) never hold it together."""
    path = tmp_path / "kis.db-writer"
    locks = [WriterLock(path), WriterLock(path)]
    inside, overlaps, entries = [0], [0], [0]
    guard = threading.Lock()

    def writer(lock: WriterLock) -> None:
        for _ in range(200):
            assert lock.acquire(timeout=10)
            with guard:
                inside[0] += 1
                overlaps[0] += inside[0] > 1
                entries[0] += 1
            time.sleep(0.0002)
            with guard:
                inside[0] -= 1
            lock.release()

    threads = [threading.Thread(target=writer, args=(locks[i % 2],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert entries == [1200] and overlaps == [0]
    for lock in locks:
        lock.close()


def test_writers_of_two_stores_on_one_file_all_commit(tmp_path: Path) -> None:
    """Two stores on one file stand for two ``--workers``: every write unit of both commits."""
    writers_per_store = 4
    stores = [SqliteStore(tmp_path / "kis.db", busy_timeout_s=5.0) for _ in range(2)]
    created: list[str] = []
    failures: list[BaseException] = []

    def writer(store: SqliteStore, n: int) -> None:
        tokens = TokenService(store, SystemClock())
        try:
            for i in range(25):
                created.append(tokens.create(Role.VIEWER, f"w{n}-{i}").token)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(stores[i % 2], i)) for i in range(2 * writers_per_store)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert failures == []
    assert len(set(created)) == 2 * writers_per_store * 25
    listed = TokenService(stores[0], SystemClock()).list()
    assert len(listed) == 2 * writers_per_store * 25
    for store in stores:
        store.close()
