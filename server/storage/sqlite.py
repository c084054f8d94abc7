"""SQLite implementation of :mod:`kis_estimator.server.storage.repository` (WAL, plain parameterized SQL).

The store, its connections and transactions live here; the repositories' SQL is shared with
PostgreSQL (``server/storage/sql_repositories.py``), and :class:`_Transaction` is SQLite's side of
that module's dialect seam.

Connection model. The gRPC server calls in from a thread pool, and a ``sqlite3.Connection`` must
never be used by two threads at once. So each unit of work checks one connection out of a small
pool for its whole life and returns it afterwards: a connection is used by one thread at a time
(``check_same_thread=False`` only lets it move between threads between units). The pool keeps at
most ``max_idle_connections`` idle connections and opens more on demand, so concurrency is bounded
by the callers' thread pool, not here. A unit of work itself must stay on one thread.

Transactions. Connections run in autocommit mode and each unit issues its own ``BEGIN``:

* write units: ``BEGIN IMMEDIATE`` takes the write lock up front, so writers queue on
  ``busy_timeout`` instead of failing with an unretriable lock upgrade mid-transaction; a
  read-check-insert in one write unit (dedup, MIXED quota, the audit chain's head) is therefore
  atomic;
* read-only units: ``BEGIN DEFERRED`` under ``PRAGMA query_only``; in WAL mode they read a
  consistent snapshot and never block or wait for writers;
* lookup units (:meth:`SqliteStore.lookup`): one statement under ``PRAGMA query_only`` and no
  ``BEGIN``: a single statement reads one consistent snapshot by itself, so the per-call token
  look-up costs one statement instead of four. ``query_only`` is set only when a pooled
  connection's previous unit was of the other kind.

Durability: a write unit's commit returns only once the transaction is on disk, so a committed
estimate (and the reply built from it) survives power loss, not just a process crash. The flush
happens *after* the writer lock is released: connections run ``synchronous = NORMAL`` (COMMIT
appends the transaction to the WAL in the OS's page cache without waiting for the disk), and
:meth:`SqliteUnitOfWork.commit` then releases the lock and calls :meth:`SqliteStore.sync_wal`
(``fdatasync`` of the WAL file) before it returns. The WAL is append-only in commit order and its
frames are checksummed as a chain, so one flush makes this transaction and every earlier one
durable, and a crash can only drop a suffix of the WAL, never a transaction in front of a
durable one. Under ``synchronous = FULL`` the flush ran inside the lock: measured with two
``--workers`` on one file (bench/README.md), a COMMIT took 3.3-3.8 ms of a 6-9 ms lock hold, every
other writer of the set waited for it, and the processes idled a third of the time; flushed
outside, the hold is ~2 ms. What this changes: another connection can read a transaction for the
~1-3 ms between its COMMIT and its flush, before its own caller has been answered; if the machine
loses power in that window, that transaction (never acknowledged) is gone, as its caller's retry
expects, though a reader may have seen it. Checkpoints are unchanged: under ``NORMAL`` SQLite
still syncs the WAL before a checkpoint and the database file after it. Requires SQLite >= 3.37
(STRICT tables).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from kis_estimator.server import clock
from kis_estimator.server.engine.codec import (
    datetime_from_text,
    datetime_to_text,
)
from kis_estimator.server.storage.migrate import Migration, load_migrations, migrate_sqlite
from kis_estimator.server.storage.repository import (
    NewRows,
    StorageError,
)
from kis_estimator.server.storage.rows import Large, Row, pack_ahead
from kis_estimator.server.storage.rows import text as _text
from kis_estimator.server.storage.sql_repositories import Insert, SqlRepositories, StatementBudget, multi_row

logger = logging.getLogger(__name__)

MIN_SQLITE_VERSION = (3, 37, 0)
FILE_MODE = 0o600  # the database and its -wal/-shm/-writer files: owner only
WAL_TRUNCATE_BYTES = 64 * 1024 * 1024  # above it the checkpointer truncates the WAL (checkpoint())
GAP_DRAIN_S = 1.0  # how long a truncating checkpoint waits for this process's reads to finish
TRUNCATE_BUSY_S = 0.25  # how long a truncation then waits for other processes' readers
PACKED_BUNDLE_VERSION = 3  # the migration from which evidence.bundle holds zstd frames
# How the writer lock polls another process's hold: from 0.2 ms, doubling, at most 1 ms apart.
FIRST_POLL_S = 0.0002
MAX_POLL_S = 0.001
_RETRYABLE = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_UNIQUE = frozenset({sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY})


def _utc_now() -> datetime:
    return datetime.now(UTC)


def translate(exc: sqlite3.Error, what: str) -> StorageError:
    """The storage error for a driver error; busy/locked (also extended codes) are retryable."""
    code = getattr(exc, "sqlite_errorcode", None)
    retryable = isinstance(code, int) and (code & 0xFF) in _RETRYABLE
    err = StorageError(f"{what}: {exc}", retryable=retryable)
    err.__cause__ = exc
    return err


def _is_unique_violation(exc: sqlite3.IntegrityError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in _UNIQUE


# --------------------------------------------------------------------------- transaction


class _Connection(sqlite3.Connection):
    """A pooled connection that remembers its ``query_only`` pragma, so that a unit sets it only
    when the connection's last unit was of the other kind (one statement fewer per unit)."""

    query_only: bool | None = None


class _Transaction:
    """The connection of one open unit of work; every statement goes through here."""

    def __init__(self, *, single_statement: bool = False, packs: Callable[[Large], bool]) -> None:
        self.conn: _Connection | None = None  # set while the unit is open
        self.packs = packs
        self._budget = StatementBudget(single=single_statement)

    @property
    def active(self) -> bool:
        return self.conn is not None

    def connection(self) -> _Connection:
        if self.conn is None:
            raise StorageError("unit of work is not open (not entered, committed or rolled back)")
        return self.conn

    def statement(self, *, write: bool = False) -> _Connection:
        """The connection for the unit's next statement (a lookup unit runs one read)."""
        self._budget.spend(write=write)
        return self.connection()

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run one statement; returns the number of rows changed."""
        try:
            return self.statement(write=True).execute(sql, params).rowcount
        except sqlite3.Error as exc:
            raise translate(exc, "sqlite statement failed") from exc

    def insert(self, sql: str, params: Sequence[object]) -> bool:
        """Run an INSERT; False (nothing written) when a unique or primary key is already taken."""
        return self.insert_many(sql, [params])

    def insert_many(self, sql: str, rows: Sequence[Sequence[object]]) -> bool:
        """Insert every row with one statement; False when a unique or primary key is taken."""
        statement, params = multi_row(sql, rows)
        try:
            self.statement(write=True).execute(statement, params)
        except sqlite3.IntegrityError as exc:
            if _is_unique_violation(exc):
                return False
            raise translate(exc, "sqlite insert failed") from exc
        except sqlite3.Error as exc:
            raise translate(exc, "sqlite insert failed") from exc
        return True

    def one(self, sql: str, params: Sequence[object]) -> Row | None:
        try:
            row: Row | None = self.statement().execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise translate(exc, "sqlite query failed") from exc
        return row

    def all(self, sql: str, params: Sequence[object]) -> list[Row]:
        try:
            rows: list[Row] = self.statement().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise translate(exc, "sqlite query failed") from exc
        return rows

    # The dialect seam of server/storage/sql_repositories.py.

    @staticmethod
    def bind_time(value: datetime | None) -> object:
        """Fixed-width UTC text (``datetime_to_text``): it sorts like the instant it names."""
        return None if value is None else datetime_to_text(value)

    @staticmethod
    def read_time(value: object) -> datetime:
        try:
            return datetime_from_text(_text(value))
        except (ValueError, StorageError) as exc:
            raise StorageError(f"corrupt row: {exc}") from exc

    def read_opt_time(self, value: object) -> datetime | None:
        return None if value is None else self.read_time(value)

    @staticmethod
    def unindexed(column: str) -> str:
        """SQLite's unary ``+``: the column is compared but its index is not searched."""
        return f"+{column}"


class ReaderGate:
    """Gives the WAL truncation a moment with no reader of this process (a "reader gap").

    SQLite can restart the WAL only when no reader still uses it, and reads that follow each
    other without a pause starve it: SQLite's documentation calls this checkpoint starvation.
    Measured with plain ``sqlite3``: two threads reading in a loop made 9-14 of 60 TRUNCATE
    checkpoints give up after the whole busy_timeout with frames left in the WAL; a 0.2 ms pause
    between reads made none fail. So every read-only unit of this process passes this gate, and
    :meth:`SqliteStore.checkpoint` closes it around a truncation: reads that start meanwhile wait
    (for the few milliseconds the truncation takes, at most ``timeout``, after which they read
    anyway: a read never fails here), the reads already running finish, and the truncation runs
    in the gap. A thread already inside a read unit passes a closed gate, so a nested read cannot
    wait for a gap that its own outer read holds shut. Write units need no gate: the checkpoint
    holds the writer lock. Readers in other processes are not held back; a truncation they
    starve is retried at the next checkpoint.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._reading = 0  # read units of this process in progress
        self._shut = False
        self._depth = threading.local()

    @property
    def shut(self) -> bool:
        """Whether a checkpoint holds the gate shut (waiting for reads, or truncating)."""
        return self._shut

    def enter(self, timeout: float) -> None:
        depth: int = getattr(self._depth, "n", 0)
        with self._cond:
            if self._shut and depth == 0:
                self._cond.wait_for(lambda: not self._shut, timeout)
            self._reading += 1
        self._depth.n = depth + 1

    def leave(self) -> None:
        self._depth.n -= 1
        with self._cond:
            self._reading -= 1
            if self._shut and self._reading == 0:
                self._cond.notify_all()

    @contextmanager
    def gap(self, timeout: float) -> Iterator[bool]:
        """Shut the gate and wait for the reads in progress; yields whether they all finished."""
        with self._cond:
            self._shut = True
            drained = self._cond.wait_for(lambda: self._reading == 0, timeout)
        try:
            yield drained
        finally:
            with self._cond:
                self._shut = False
                self._cond.notify_all()


class SqliteUnitOfWork(SqlRepositories):
    """One transaction on one pooled connection; see the module docstring."""

    def __init__(self, store: SqliteStore, *, read_only: bool, snapshot: bool = True) -> None:
        self._store = store
        self._read_only = read_only or not snapshot
        self._snapshot = snapshot
        self._tx = _Transaction(single_statement=not snapshot, packs=store.packs)
        self._entered = False
        super().__init__(self._tx)

    def __enter__(self) -> Self:
        if self._entered:
            raise StorageError("a unit of work can be entered only once")
        self._entered = True
        if self._read_only:
            self._store.readers.enter(self._store.busy_timeout_s)
        elif not self._store.write_lock.acquire(timeout=self._store.busy_timeout_s):
            raise StorageError("timed out waiting for the write lock", retryable=True)
        try:
            conn = self._store.acquire()
        except BaseException:
            self._release_entry()
            raise
        try:
            if conn.query_only is not self._read_only:
                conn.execute(f"PRAGMA query_only = {1 if self._read_only else 0}")
                conn.query_only = self._read_only
            if self._snapshot:
                conn.execute("BEGIN DEFERRED" if self._read_only else "BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._store.release(conn, healthy=not conn.in_transaction)
            self._release_entry()
            raise translate(exc, "cannot begin a transaction") from exc
        self._tx.conn = conn
        return self

    def _release_entry(self) -> None:
        """Release what __enter__ took besides the connection: the writer lock or the reader gate."""
        if self._read_only:
            self._store.readers.leave()
        else:
            self._store.write_lock.release()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._tx.active:
            return
        try:
            self.rollback()
        except StorageError:
            if exc is None:
                raise
            # the original exception is the one to report; the rollback failure is secondary
            logger.exception("rollback failed while handling %s", exc_type)

    def commit(self) -> None:
        """Commit and finish the unit; on failure it is rolled back and StorageError raised.

        A write unit returns once its transaction is durable (:meth:`SqliteStore.sync_wal`, run
        after the writer lock is released; module docstring). If that flush fails, the
        transaction is committed but not known to be on disk: StorageError, not retryable."""
        conn = self._tx.connection()
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._finish(conn)
            raise translate(exc, "commit failed") from exc
        self._finish(conn)  # the writer lock is free from here: the flush below holds nobody up
        if not self._read_only:
            self._store.sync_wal()

    def rollback(self) -> None:
        """Roll back and finish the unit."""
        conn = self._tx.connection()
        self._finish(conn)

    def _insert_and_commit(self, inserts: Sequence[Insert]) -> bool:
        """The statements one after the other (in process: no round trips to save), then commit."""
        for sql, rows in inserts:
            if not self._tx.insert_many(sql, rows):
                self.rollback()
                return False
        self.commit()
        return True

    def _finish(self, conn: _Connection) -> None:
        self._tx.conn = None
        healthy = True
        failure: sqlite3.Error | None = None
        try:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as exc:
                    healthy = False
                    failure = exc
            self._store.release(conn, healthy=healthy)
        finally:
            self._release_entry()
        if failure is not None:
            raise translate(failure, "rollback failed")


class WriterLock:
    """The write lock of one database file, for the threads of this process and for other processes.

    Writers queue here before ``BEGIN IMMEDIATE``, so SQLite's own busy handler, which polls with
    sleeps growing to 100 ms, is never what a writer waits in: it turned 8 concurrent creates into a
    p95 of ~400 ms in one process, and two ``--workers`` on one file into mostly sleeping writers.
    Threads of this process wait on a ``threading.Lock`` (woken at once, in order); the one at its
    head then takes an exclusive ``flock`` on ``<database>-writer``, polled every 0.2-1 ms while
    another process holds it (a blocking ``flock`` cannot time out). Both waits together are bounded
    by the caller's timeout. A process that dies holding the lock releases it with its descriptor.
    Processes that do not use this class (the ``sqlite3`` shell) still meet ``busy_timeout``.
    """

    def __init__(
        self,
        path: Path,
        *,
        sleep: Callable[[float], None] = clock.sleep,
        monotonic: Callable[[], float] = clock.monotonic_s,
    ) -> None:
        self.path = path
        self._threads = threading.Lock()
        self._sleep = sleep
        self._monotonic = monotonic
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise StorageError(f"cannot create or open {path}: {exc}") from exc

    def acquire(self, timeout: float) -> bool:
        """Take the lock within ``timeout`` seconds; False when it could not."""
        deadline = self._monotonic() + timeout
        if not self._threads.acquire(timeout=timeout):
            return False
        if self._fd < 0:
            self._threads.release()
            raise StorageError("store is closed")
        delay = FIRST_POLL_S
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            except OSError as exc:
                self._threads.release()
                raise StorageError(f"cannot lock {self.path}: {exc}", retryable=True) from exc
            left = deadline - self._monotonic()
            if left <= 0:
                self._threads.release()
                return False
            self._sleep(min(delay, left))
            delay = min(2 * delay, MAX_POLL_S)

    def release(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def close(self) -> None:
        """Close the lock file (once; a closed store may be closed again)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


class SqliteStore:
    """The SQLite store at ``path`` (parent directories created; schema migrated on open).

    ``busy_timeout_s`` bounds how long a write unit waits for the write lock before failing with a
    retryable :class:`StorageError`. ``now`` stamps ``schema_migrations.applied_at``.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        busy_timeout_s: float = 5.0,
        max_idle_connections: int = 8,
        migrations: Sequence[Migration] | None = None,
        now: Callable[[], datetime] = _utc_now,
        wal_truncate_bytes: int = WAL_TRUNCATE_BYTES,
    ) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            raise StorageError(
                f"SQLite {sqlite3.sqlite_version} is too old; "
                f"need {'.'.join(map(str, MIN_SQLITE_VERSION))} or newer"
            )
        if busy_timeout_s <= 0:
            raise ValueError("busy_timeout_s must be > 0")
        self.path = Path(path)
        self.wal_path = Path(f"{self.path}-wal")
        self._busy_timeout_s = busy_timeout_s
        self._wal_truncate_bytes = wal_truncate_bytes
        self._stopping = threading.Event()
        self._checkpointer: threading.Thread | None = None
        self._max_idle = max_idle_connections
        self._lock = threading.Lock()
        self._idle: list[_Connection] = []
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the directory of {self.path}: {exc}") from exc
        self._restrict_permissions()
        self.write_lock = WriterLock(Path(f"{self.path}-writer"))
        self.readers = ReaderGate()
        try:
            conn = self._open_migrated(migrations, now)
        except BaseException:
            self.write_lock.close()
            raise
        self._idle.append(conn)
        self.start_checkpointer()

    def _open_migrated(
        self, migrations: Sequence[Migration] | None, now: Callable[[], datetime]
    ) -> _Connection:
        """The first connection, in WAL mode, after the migrations ran."""
        conn = self._connect()
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise StorageError(f"{self.path}: cannot switch to WAL journal mode (got {mode})")
            migrate_sqlite(
                conn,
                load_migrations() if migrations is None else migrations,
                now=now,
                format_time=datetime_to_text,
            )
            # From 0003 on the evidence table takes packed bundles; a store opened at an older
            # schema (the upgrade tests write through such stores) stores them as they are.
            row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
            self.packs_bundles = (
                row is not None and row[0] is not None and int(row[0]) >= PACKED_BUNDLE_VERSION
            )
        except sqlite3.Error as exc:
            conn.close()
            raise translate(exc, f"cannot open {self.path}") from exc
        except BaseException:
            conn.close()
            raise
        try:
            self.sync_wal()  # what the migrations committed
        except StorageError:
            conn.close()
            raise
        return conn

    def _restrict_permissions(self) -> None:
        """Create the database file 0600 (owner only), like the evidence key file, and tighten an
        existing one (and its WAL and shared-memory files) that group or others may read.

        SQLite creates ``-wal`` and ``-shm`` with the permissions of the database file, so a 0600
        database keeps them 0600 too. The store holds every customer's request and the token hashes.
        """
        try:
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE))
        except OSError as exc:
            raise StorageError(f"cannot create or open {self.path}: {exc}") from exc
        for path in self.files():
            try:
                if path.exists() and path.stat().st_mode & 0o077:
                    path.chmod(FILE_MODE)
                    logger.warning("restricted %s to mode 0600 (group or others could read it)", path)
            except OSError as exc:  # not the owner: serve anyway, and say so
                logger.warning("cannot restrict %s to mode 0600: %s", path, exc)

    def _connect(self) -> _Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                factory=_Connection,
                timeout=self._busy_timeout_s,  # sets SQLite's busy_timeout on this connection
                isolation_level=None,  # autocommit: units issue BEGIN/COMMIT themselves
                check_same_thread=False,  # moved between threads by the pool, never shared
            )
        except sqlite3.Error as exc:
            raise translate(exc, f"cannot open {self.path}") from exc
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            # COMMIT does not wait for the disk; write units flush after releasing the writer
            # lock (SqliteStore.sync_wal, the module docstring).
            conn.execute("PRAGMA synchronous = NORMAL")
            # Checkpoints run in the background thread (see _checkpoint_loop), not in a committing
            # request: an inline auto-checkpoint copies ~4 MB and stalled 1 % of creates by ~150 ms.
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        except sqlite3.Error as exc:
            conn.close()
            raise translate(exc, f"cannot configure {self.path}") from exc
        return conn

    def acquire(self) -> _Connection:
        """A connection for the calling unit of work (pool internals, used by SqliteUnitOfWork)."""
        with self._lock:
            if self._closed:
                raise StorageError("store is closed")
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def release(self, conn: _Connection, *, healthy: bool) -> None:
        """Return a connection after its unit finished; broken or surplus ones are closed."""
        with self._lock:
            if healthy and not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()

    @property
    def busy_timeout_s(self) -> float:
        return self._busy_timeout_s

    def unit_of_work(self, *, read_only: bool = False) -> SqliteUnitOfWork:
        return SqliteUnitOfWork(self, read_only=read_only)

    def lookup(self) -> SqliteUnitOfWork:
        """A read-only unit for one statement, outside a transaction (``Store.lookup``)."""
        return SqliteUnitOfWork(self, read_only=True, snapshot=False)

    def start_checkpointer(self, interval_s: float = 1.0) -> None:
        """Checkpoint the WAL every ``interval_s`` in a daemon thread until close (:meth:`checkpoint`)."""
        if self._checkpointer is not None:
            return
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, args=(interval_s,), name="sqlite-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def _checkpoint_loop(self, interval_s: float) -> None:
        conn = self._connect()
        try:
            while not self._stopping.wait(interval_s):
                try:
                    self.checkpoint(conn)
                except sqlite3.Error:
                    logger.exception("WAL checkpoint failed; retrying in %s s", interval_s)
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            logger.exception("final WAL checkpoint failed")
        finally:
            conn.close()

    def checkpoint(self, conn: sqlite3.Connection) -> str:
        """One checkpoint; returns its mode.

        PASSIVE never blocks readers or writers: it copies what it can into the database file. But
        the WAL only starts over from its beginning when a writer finds every frame copied *and* no
        reader still using the WAL, which under steady load never happens: a 100,000-create run
        grew the WAL to 13 GB (and its index, mapped into every connection, to 26 MB of RSS). So
        once the WAL is larger than ``wal_truncate_bytes``, the checkpoint takes this process's
        writer lock (its writers wait; the PASSIVE runs before left little to copy), opens a reader
        gap (:class:`ReaderGate`: this process's reads in progress finish, new ones wait) and runs
        TRUNCATE, which waits for any other process's readers of the WAL and truncates it to zero
        bytes. Every writer and this process's readers wait for it, so that wait is short
        (``TRUNCATE_BUSY_S``): a truncation that other processes' readers keep from finishing is
        retried at the next checkpoint instead of holding them all for the whole busy_timeout (a
        40 s run of two workers under h2load saw one such attempt). Other processes' writers meet
        SQLite's busy handler, as with any writer.
        """
        try:
            wal_bytes = self.wal_path.stat().st_size
        except FileNotFoundError:
            wal_bytes = 0
        if wal_bytes < self._wal_truncate_bytes or not self.write_lock.acquire(timeout=self._busy_timeout_s):
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            return "PASSIVE"
        try:
            with self.readers.gap(min(GAP_DRAIN_S, self._busy_timeout_s)) as drained:
                # every writer and this process's readers wait meanwhile: a short attempt, retried
                # at the next checkpoint, rather than one that holds them for all of busy_timeout
                wait_ms = round(1000 * min(TRUNCATE_BUSY_S, self._busy_timeout_s))
                conn.execute(f"PRAGMA busy_timeout = {wait_ms}")
                try:
                    row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                finally:
                    conn.execute(f"PRAGMA busy_timeout = {round(1000 * self._busy_timeout_s)}")
        finally:
            self.write_lock.release()
        if row is not None and row[0]:
            whose = "another process's" if drained else "this process's"
            logger.info("WAL truncation found %s readers in its way; retried next run", whose)
        return "TRUNCATE"

    def sync_wal(self) -> None:
        """Flush the WAL to disk: every transaction committed so far is durable when this returns.

        No WAL file means nothing is pending in one: SQLite removes it only after a checkpoint that
        copied it into the database file and synced that. A failed flush raises StorageError (not
        retryable): what was committed may not be on disk, and Linux may not report it twice.
        """
        try:
            fd = os.open(self.wal_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"cannot open {self.wal_path} to flush it: {exc}") from exc
        try:
            os.fdatasync(fd)
        except OSError as exc:
            logger.critical("flushing %s failed: committed writes may not be on disk", self.wal_path)
            reason = f"commit not confirmed durable: flushing {self.wal_path} failed: {exc}"
            raise StorageError(reason) from exc
        finally:
            os.close(fd)

    def files(self) -> tuple[Path, Path, Path, Path]:
        """The database file, its WAL and shared-memory companions, and the writer lock file."""
        return self.path, self.wal_path, Path(f"{self.path}-shm"), Path(f"{self.path}-writer")

    def packs(self, value: Large) -> bool:
        """The bundle (a BLOB; migration 0003), not the document (its column is STRICT TEXT);
        neither on an older schema (storage/packing.py)."""
        return self.packs_bundles and isinstance(value.value, bytes)

    def prepare_rows(self, rows: NewRows) -> None:
        pack_ahead(rows, self.packs)

    def size_bytes(self) -> int:
        """Bytes of the database, WAL and shared-memory files (a missing companion counts 0)."""
        total = 0
        for path in self.files():
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StorageError(f"cannot stat {path}: {exc}") from exc
        return total

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        self._stopping.set()
        if self._checkpointer is not None:
            self._checkpointer.join(timeout=self._busy_timeout_s + 5)
        for conn in idle:
            conn.close()
        self.write_lock.close()


__all__ = [
    "MIN_SQLITE_VERSION",
    "SqliteStore",
    "SqliteUnitOfWork",
    "translate",
]
