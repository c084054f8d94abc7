"""SQLite durability: a write unit's commit returns only after the WAL was flushed to disk, and that
flush runs after the writer lock was released (server/storage/sqlite.py, module docstring)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kis_estimator.server.storage.repository import StorageError
from kis_estimator.server.storage.sqlite import SqliteStore, WriterLock

NOW = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


def add_token(store: SqliteStore, token_id: str) -> None:
    with store.unit_of_work() as uow:
        uow.tokens.add(token_id, f"name of {token_id}", "ESTIMATOR", f"{token_id:0<64}"[:64], NOW)
        uow.commit()


def stored_ids(store: SqliteStore) -> set[str]:
    with store.unit_of_work(read_only=True) as uow:
        return {record.token_id for record in uow.tokens.list()}


def flushes(monkeypatch: pytest.MonkeyPatch, on_flush: Callable[[str], None]) -> list[str]:
    """Record every ``os.fdatasync`` by the path of the file it flushes (after ``on_flush`` ran)."""
    flushed: list[str] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        path = str(Path(f"/proc/self/fd/{fd}").readlink())
        on_flush(path)
        flushed.append(path)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    return flushed


def test_connections_leave_the_flush_to_the_unit_of_work(sqlite_store: SqliteStore) -> None:
    with sqlite_store.unit_of_work(read_only=True) as uow:
        conn = uow._tx.connection()  # the pooled connection's own pragma
        assert conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc to name a descriptor's file")
def test_a_write_commit_flushes_the_wal_after_the_writer_lock_is_free(
    sqlite_store: SqliteStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    add_token(sqlite_store, "tok_first")  # the WAL exists from here
    seen: dict[str, object] = {}

    def on_flush(path: str) -> None:
        other = WriterLock(Path(f"{sqlite_store.path}-writer"))  # as another process would take it
        try:
            seen["lock_free"] = other.acquire(timeout=0.05)
            if seen["lock_free"]:
                other.release()
        finally:
            other.close()
        seen["visible"] = "tok_second" in stored_ids(sqlite_store)

    flushed = flushes(monkeypatch, on_flush)
    add_token(sqlite_store, "tok_second")
    assert flushed == [str(tmp_path / "kis.db-wal")]
    assert seen == {"lock_free": True, "visible": True}  # committed, unlocked, then flushed

    flushed.clear()
    assert stored_ids(sqlite_store) == {"tok_first", "tok_second"}
    with sqlite_store.unit_of_work() as uow:  # a write unit that commits nothing is not flushed
        uow.rollback()
    assert flushed == []  # reads never flush


def test_a_failed_flush_fails_the_commit_and_leaves_the_store_usable(
    sqlite_store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_token(sqlite_store, "tok_first")

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(StorageError, match="not confirmed durable") as failed:
        add_token(sqlite_store, "tok_unsure")
    assert failed.value.retryable is False  # a retry would meet the committed row: say so plainly
    monkeypatch.undo()
    # committed but not known to be on disk: present, and the next writer is not locked out
    assert stored_ids(sqlite_store) == {"tok_first", "tok_unsure"}
    add_token(sqlite_store, "tok_after")
    assert "tok_after" in stored_ids(sqlite_store)


def test_no_wal_file_means_nothing_to_flush(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kis.db")
    add_token(store, "tok_first")
    store.close()  # the last connection checkpoints the WAL into the database and removes it
    assert not Path(f"{store.path}-wal").exists()
    store.sync_wal()
    reopened = SqliteStore(tmp_path / "kis.db")
    try:
        assert stored_ids(reopened) == {"tok_first"}
    finally:
        reopened.close()
