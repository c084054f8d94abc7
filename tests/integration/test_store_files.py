"""The store on disk: owner-only files, and its size as a metric read at scrape time.

``kis.db`` and its ``-wal``/``-shm`` files hold every customer's request and the token hashes; they
were created 0644 (world-readable) while the evidence key beside them is 0600. The size gauge is read
over the real ``/metrics`` endpoint, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import stat
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.storage.sqlite import SqliteStore
from tests.integration.conftest import Served, start_app
from tests.integration.test_evidence_api import _s01, create
from tests.integration.test_postgres_service import start_on_postgres
from tests.integration.test_storage_contract import pg_database

COMPANIONS = ("kis.db", "kis.db-wal", "kis.db-shm")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def scrape(served: Served, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{served.app.metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    values = [s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]
    assert len(values) == 1, f"{name}: {values}"
    return values[0]


def test_database_wal_and_shm_are_created_owner_only(tmp_path: Path) -> None:
    served = start_app(tmp_path)
    try:
        create(served, _s01("mode-"))  # a write: the WAL exists and holds it
        assert {name: oct(mode(tmp_path / name)) for name in COMPANIONS} == dict.fromkeys(COMPANIONS, "0o600")
        assert mode(tmp_path / "evidence-keys") == 0o600
    finally:
        served.app.stop(0)


def test_existing_world_readable_files_are_restricted_on_open(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kis.db")
    store.close()
    for name in ("kis.db", "kis.db-wal"):
        (tmp_path / name).touch()
        (tmp_path / name).chmod(0o644)
    again = SqliteStore(tmp_path / "kis.db")
    try:
        assert mode(tmp_path / "kis.db") == mode(tmp_path / "kis.db-wal") == 0o600
    finally:
        again.close()


def test_store_size_gauge_is_read_at_scrape_time_on_sqlite(tmp_path: Path) -> None:
    served = start_app(tmp_path)
    try:
        before = scrape(served, "kis_store_size_bytes")
        assert before == sum((tmp_path / n).stat().st_size for n in COMPANIONS if (tmp_path / n).exists())
        for i in range(3):
            create(served, _s01(f"size-{i}-"))
        after = scrape(served, "kis_store_size_bytes")
        assert after > before  # three estimates with their evidence bundles are on disk
        assert after == served.app.store.size_bytes()
    finally:
        served.app.stop(0)


def test_store_size_gauge_on_postgres() -> None:
    with pg_database() as url:
        served = start_on_postgres(url)
        try:
            size = scrape(served, "kis_store_size_bytes")
            assert size > 1_000_000  # an empty PostgreSQL database is several MB
            assert abs(size - served.app.store.size_bytes()) < 1_000_000
        finally:
            served.app.stop(0)


@pytest.mark.parametrize("name", COMPANIONS)
def test_every_sqlite_store_is_owner_only(tmp_path: Path, name: str) -> None:
    """Acceptance sandboxes and CLI commands open their stores through SqliteStore too."""
    store = SqliteStore(tmp_path / "kis.db")
    try:
        with store.unit_of_work() as uow:
            uow.tokens.add("t1", "n", "ADMIN", "a" * 64, datetime.now(UTC))
            uow.commit()
        assert mode(tmp_path / name) == 0o600
    finally:
        store.close()
