"""SQLite migration mechanics: loading, statement splitting, atomic application."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kis_estimator.server.storage import packing
from kis_estimator.server.storage.migrate import Migration, load_migrations, migrate_sqlite, split_statements
from kis_estimator.server.storage.repository import StorageError
from kis_estimator.server.storage.sqlite import SqliteStore
from tests.integration.test_storage_contract import make_evidence, make_record

T0 = datetime(2025, 10, 1, tzinfo=UTC)


def _versions(path: Path) -> list[tuple[int, str]]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute("SELECT version, applied_at FROM schema_migrations ORDER BY version"))
    finally:
        conn.close()


def _tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    finally:
        conn.close()


def test_packaged_migrations_start_at_one() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "initial"


def test_store_open_creates_parents_wal_schema_and_records_the_version(tmp_path: Path) -> None:
    path = tmp_path / "var" / "kis.db"
    store = SqliteStore(path, now=lambda: T0)
    store.close()
    SqliteStore(path, now=lambda: datetime(2030, 1, 1, tzinfo=UTC)).close()  # reopen: nothing applied
    assert _versions(path) == [(version, "2025-10-01T00:00:00.000000Z") for version in (1, 2, 3)]
    expected = {"estimates", "idempotency", "tokens", "schema_migrations", "audit_events", "evidence"}
    assert expected <= _tables(path)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["0001_a.sql", "0003_c.sql"], r"without gaps.*\[1, 3\]"),
        (["0002_b.sql"], r"\[2\]"),
        (["0001_a.sql", "0001_b.sql"], r"\[1, 1\]"),
    ],
    ids=["gap", "no_first", "duplicate"],
)
def test_misnumbered_migrations_are_refused(tmp_path: Path, names: list[str], message: str) -> None:
    for name in names:
        (tmp_path / name).write_text("SELECT 1;\n", encoding="utf-8")
    (tmp_path / "README.txt").write_text("ignored", encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_migrations(tmp_path)


def test_split_statements_keeps_triggers_whole_and_drops_comments() -> None:
    sql = (
        "-- header; with a semicolon\n"
        "CREATE TABLE a (x INTEGER);\n"
        "CREATE TRIGGER t AFTER INSERT ON a BEGIN\n"
        "  UPDATE a SET x = 1;\n"
        "  UPDATE a SET x = 2;\n"
        "END;\n"
        "-- trailing comment\n"
    )
    statements = split_statements(sql)
    assert len(statements) == 2
    assert statements[0] == "-- header; with a semicolon\nCREATE TABLE a (x INTEGER);"
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")


def test_split_statements_refuses_an_unterminated_statement() -> None:
    with pytest.raises(ValueError, match="incomplete"):
        split_statements("CREATE TABLE a (x INTEGER)")


def test_a_failing_migration_leaves_the_previous_version_intact(tmp_path: Path) -> None:
    path = tmp_path / "kis.db"
    good = Migration(1, "good", "CREATE TABLE a (x INTEGER);")
    bad = Migration(2, "bad", "CREATE TABLE b (x INTEGER);\nINSERT INTO missing VALUES (1);")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        assert migrate_sqlite(conn, [good], now=lambda: T0, format_time=datetime.isoformat) == [1]
        with pytest.raises(sqlite3.OperationalError, match="missing"):
            migrate_sqlite(conn, [good, bad], now=lambda: T0, format_time=datetime.isoformat)
        assert not conn.in_transaction
    finally:
        conn.close()
    assert [v for v, _ in _versions(path)] == [1]
    assert "b" not in _tables(path)


def test_store_open_translates_a_failing_migration(tmp_path: Path) -> None:
    bad = Migration(1, "bad", "INSERT INTO missing VALUES (1);")
    with pytest.raises(StorageError, match="cannot open"):
        SqliteStore(tmp_path / "kis.db", migrations=[bad])


def test_bundles_stored_before_0003_read_back_the_same_and_new_ones_are_packed(tmp_path: Path) -> None:
    """0003 rebuilds the evidence table: its rows are copied as they are and read back byte for
    byte; from then on a bundle is stored as a zstd frame, and the schema still holds an unpacked
    bundle to its size."""
    path = tmp_path / "kis.db"
    old = SqliteStore(path, migrations=load_migrations()[:2], now=lambda: T0)
    try:
        assert not old.packs_bundles
        with old.unit_of_work() as uow:
            uow.estimates.add(make_record("E1"))
            uow.evidence.add(make_evidence("E1", 1))
            uow.commit()
    finally:
        old.close()
    upgraded = SqliteStore(path, now=lambda: T0)
    try:
        assert upgraded.packs_bundles
        with upgraded.unit_of_work() as uow:
            uow.evidence.add(make_evidence("E1", 2))
            uow.commit()
        with upgraded.unit_of_work(read_only=True) as uow:
            assert uow.evidence.get("E1", 1) == make_evidence("E1", 1)
            assert uow.evidence.get("E1", 2) == make_evidence("E1", 2)
            assert uow.estimates.get("E1") == make_record("E1")
    finally:
        upgraded.close()
    conn = sqlite3.connect(path)
    try:
        stored = conn.execute(
            "SELECT revision, bundle, size_bytes FROM evidence ORDER BY revision"
        ).fetchall()
        assert [(revision, bundle[:4] == packing.ZSTD_MAGIC) for revision, bundle, _ in stored] == [
            (1, False),  # as 0002 stored it
            (2, True),
        ]
        assert len(stored[1][1]) < stored[1][2]  # packed: smaller than the ZIP it holds
        assert conn.execute("SELECT typeof(document) FROM estimates").fetchall() == [("text",)]
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute("UPDATE evidence SET size_bytes = size_bytes + 1 WHERE revision = 1")
    finally:
        conn.close()
