"""Numbered schema migrations: ``migrations/NNNN_name.sql``, applied in order at store open.

The database records applied versions in ``schema_migrations(version, applied_at)``. Opening
applies every pending file, each in its own transaction together with its ``schema_migrations``
row, so a failed migration leaves the previous version intact. A database holding a version this
build does not know (written by a newer build) is refused with :class:`SchemaVersionError`
instead of being used or altered.

``migrations/`` holds the SQLite dialect and :func:`migrate_sqlite` applies it. PostgreSQL has
its own directory, ``migrations_postgres/`` (same versions, same schema in PostgreSQL types), loaded
with ``load_migrations(package_dir=POSTGRES_MIGRATIONS)`` and applied by
``kis_estimator.server.storage.postgres`` under the same rules (:func:`refuse_unknown_versions`); this module
never imports a PostgreSQL driver.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from importlib.resources.abc import Traversable

from kis_estimator.server.storage.repository import StorageError

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
SQLITE_MIGRATIONS = "migrations"
POSTGRES_MIGRATIONS = "migrations_postgres"


class SchemaVersionError(StorageError):
    """The database was migrated by a newer build (or has versions this build never shipped)."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(
    directory: Traversable | None = None, *, package_dir: str = SQLITE_MIGRATIONS
) -> tuple[Migration, ...]:
    """The migrations in ``directory`` (default: the packaged set ``package_dir``), ordered by version.

    Versions must run 1, 2, 3, … without gaps; anything else is a packaging bug and raises
    ``ValueError`` at start-up.
    """
    root = (
        directory if directory is not None else resources.files("kis_estimator.server.storage") / package_dir
    )
    found: list[Migration] = []
    for entry in root.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise ValueError(f"migrations must be numbered 1..n without gaps or duplicates, found {versions}")
    return tuple(found)


def split_statements(sql: str) -> list[str]:
    """Split a script into complete statements (``sqlite3.complete_statement`` handles triggers)."""
    statements: list[str] = []
    pending = ""
    for line in sql.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if _strip_comments(pending):
                statements.append(pending.strip())
            pending = ""
    if _strip_comments(pending):
        raise ValueError(f"incomplete SQL statement at end of migration: {pending.strip()[:80]!r}")
    return statements


def _strip_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--")).strip()


def migrate_sqlite(
    conn: sqlite3.Connection,
    migrations: Sequence[Migration],
    now: Callable[[], datetime],
    format_time: Callable[[datetime], str],
) -> list[int]:
    """Apply pending ``migrations`` to ``conn`` (autocommit mode); returns the versions applied.

    Raises :class:`SchemaVersionError` when the database has a version not in ``migrations``.
    Each version runs under ``BEGIN IMMEDIATE`` and re-reads the applied set inside it, so two
    processes opening one new database at once apply each migration exactly once.
    """
    known = {m.version for m in migrations}
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER NOT NULL PRIMARY KEY,"
        " applied_at TEXT NOT NULL) STRICT"
    )
    applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    refuse_unknown_versions(applied, known)
    if known <= applied:
        return []  # the common case: no write lock taken at open
    applied_now: list[int] = []
    for migration in migrations:
        conn.execute("BEGIN IMMEDIATE")
        try:
            applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            refuse_unknown_versions(applied, known)
            if migration.version not in applied:
                for statement in split_statements(migration.sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (migration.version, format_time(now())),
                )
                applied_now.append(migration.version)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    refuse_unknown_versions(applied, known)
    return applied_now


def refuse_unknown_versions(applied: set[int], known: set[int]) -> None:
    """Raise :class:`SchemaVersionError` when ``applied`` holds a version not in ``known``."""
    unknown = sorted(applied - known)
    if unknown:
        raise SchemaVersionError(
            f"database schema has version(s) {unknown} that this build does not know "
            f"(it knows up to {max(known, default=0)}); it was migrated by a newer kis-estimator. "
            "Upgrade this build or point it at another database; refusing to start."
        )


__all__ = [
    "POSTGRES_MIGRATIONS",
    "SQLITE_MIGRATIONS",
    "Migration",
    "SchemaVersionError",
    "load_migrations",
    "migrate_sqlite",
    "refuse_unknown_versions",
    "split_statements",
]
