"""The storage contract: every backend behind ``kis_estimator.server.storage.repository`` passes this suite.

Backends come from the ``backend`` fixture (``params=["sqlite", "postgres"]``). The PostgreSQL
backend gives each test a fresh database on the server of ``KIS_TEST_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``, used only to create and drop it); its cases skip with
a reason when no server is reachable, and fail under ``KIS_REQUIRE_PG=1``, per docs/conventions.md §3.
Nothing below the backends names one. Tampering tests reach the database around the store through
the backend's ``raw`` hooks, as an attacker with database access would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql as pgsql

from kis_estimator.server.engine import audit
from kis_estimator.server.engine.audit import (
    GENESIS_HASH,
    AuditDraft,
    AuditEvent,
    ChainBreak,
    event_hash,
    verify_chain,
)
from kis_estimator.server.engine.codec import stored_request
from kis_estimator.server.engine.model import (
    RULES_VERSION,
    BreakerLine,
    Decision,
    Enclosure,
    EstimateRequest,
    PhaseBalance,
    PricedLine,
    Quote,
    ReviewReason,
    Sizing,
    Status,
    Totals,
)
from kis_estimator.server.engine.records import EstimateRecord
from kis_estimator.server.engine.request import request_hash
from kis_estimator.server.storage import packing
from kis_estimator.server.storage.migrate import POSTGRES_MIGRATIONS, SchemaVersionError, load_migrations
from kis_estimator.server.storage.postgres import PostgresStore
from kis_estimator.server.storage.repository import (
    AuditFilter,
    DuplicateKeyError,
    EstimateCursor,
    EvidenceRecord,
    GrantExistsError,
    IdempotencyRecord,
    MixedGrant,
    NewRows,
    StaleRevisionError,
    StorageError,
    Store,
    TokenRecord,
)
from kis_estimator.server.storage.rows import new_rows
from kis_estimator.server.storage.sqlite import SqliteStore

T0 = datetime(2025, 10, 1, 3, 4, 5, 123456, tzinfo=UTC)
JOIN_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------- backends


@dataclass
class Backend:
    """How the suite reaches one storage technology."""

    name: str
    open_store: Callable[[float], Store]  # busy_timeout_s -> a new store on the same database
    write_schema_version: Callable[[int], None]  # simulate a migration by a newer build
    open_at_version: Callable[[int], Store]  # a store migrated only up to this schema version
    raw: Callable[[str, Sequence[object]], None]  # one statement on the database, around the store
    raw_error: type[Exception]  # what ``raw`` raises when the database refuses a statement
    drop_audit_guards: Callable[[], None]  # the append-only triggers, as an attacker would drop them
    opened: list[Store] = field(default_factory=list)

    def open(self, busy_timeout_s: float = 10.0) -> Store:
        store = self.open_store(busy_timeout_s)
        self.opened.append(store)
        return store

    def open_old(self, version: int) -> Store:
        store = self.open_at_version(version)
        self.opened.append(store)
        return store


def _sqlite_backend(tmp_path: Path) -> Backend:
    path = tmp_path / "var" / "nested" / "kis.db"  # parent directories do not exist yet

    def open_store(busy_timeout_s: float) -> Store:
        return SqliteStore(path, busy_timeout_s=busy_timeout_s)

    def write_schema_version(version: int) -> None:
        with sqlite3.connect(path) as conn:
            conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                (version, "2030-01-01T00:00:00.000000Z"),
            )
        conn.close()

    def open_at_version(version: int) -> Store:
        return SqliteStore(path, migrations=load_migrations()[:version])

    def raw(sql: str, params: Sequence[object]) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute(sql, params)
        finally:
            conn.close()

    def drop_audit_guards() -> None:
        for trigger in ("audit_events_no_update", "audit_events_delete_only_pruned"):
            raw(f"DROP TRIGGER {trigger}", ())

    return Backend(
        "sqlite",
        open_store,
        write_schema_version,
        open_at_version,
        raw,
        sqlite3.IntegrityError,  # RAISE(ABORT) in a trigger is a constraint failure
        drop_audit_guards,
    )


PG_SERVER_URL = os.environ.get("KIS_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
_pg_unreachable: list[str] = []  # the reason, once a connection attempt failed (tried once per session)


def _pg_admin() -> psycopg.Connection[tuple[object, ...]]:
    """A connection to the test server's maintenance database; skips (or fails) when unreachable."""
    if not _pg_unreachable:
        try:
            return psycopg.connect(PG_SERVER_URL, autocommit=True, connect_timeout=3)
        except psycopg.OperationalError as exc:
            detail = " ".join(str(exc).split())  # libpq's message spans lines
            _pg_unreachable.append(f"PostgreSQL is not reachable at {PG_SERVER_URL}: {detail}")
    if os.environ.get("KIS_REQUIRE_PG") == "1":
        pytest.fail(f"KIS_REQUIRE_PG=1 but {_pg_unreachable[0]}")
    pytest.skip(_pg_unreachable[0])


@contextmanager
def pg_database() -> Iterator[str]:
    """The URL of a new, empty database on the test server, dropped (with its sessions) afterwards."""
    name = f"kis_test_{uuid.uuid4().hex[:16]}"
    with _pg_admin() as admin:
        admin.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
    try:
        yield urlsplit(PG_SERVER_URL)._replace(path=f"/{name}").geturl()
    finally:
        with _pg_admin() as admin:
            admin.execute(pgsql.SQL("DROP DATABASE {} WITH (FORCE)").format(pgsql.Identifier(name)))


def _postgres_backend(url: str) -> Backend:
    def open_store(busy_timeout_s: float) -> Store:
        return PostgresStore(url, busy_timeout_s=busy_timeout_s)

    def write_schema_version(version: int) -> None:
        raw("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (version, T0))

    def open_at_version(version: int) -> Store:
        return PostgresStore(url, migrations=load_migrations(package_dir=POSTGRES_MIGRATIONS)[:version])

    def raw(sql: str, params: Sequence[object]) -> None:
        # the suite writes SQLite's "?" placeholders; its statements hold no literal "?" or "%"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.replace("?", "%s"), params)

    def drop_audit_guards() -> None:
        for trigger in ("audit_events_no_update", "audit_events_delete_only_pruned"):
            raw(f"DROP TRIGGER {trigger} ON audit_events", ())

    return Backend(
        "postgres",
        open_store,
        write_schema_version,
        open_at_version,
        raw,
        psycopg.errors.RaiseException,  # RAISE EXCEPTION in a PL/pgSQL trigger function
        drop_audit_guards,
    )


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        chosen = _sqlite_backend(tmp_path)
        yield chosen
        for store in chosen.opened:
            store.close()
        return
    with pg_database() as url:
        chosen = _postgres_backend(url)
        try:
            yield chosen
        finally:
            for store in chosen.opened:
                store.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()


# --------------------------------------------------------------------------- records


def _quote(status: Status) -> Quote:
    review = status is Status.NEEDS_REVIEW
    return Quote(
        status=status,
        decision=Decision.ABSTAIN if review else Decision.OK,
        catalog_version="fa2a6102" * 8,
        rules_version=RULES_VERSION,
        enclosure=Enclosure(
            "STOCK", "HS", "HS 60 70 15", "STEEL_1_6", "INDOOR", "FLUSH", 600, 700, 150, 54000
        ),
        sizing=Sizing(600, 700, 150, 190, 120, 200, 100, 0, 610),
        selections=(),
        lines=(
            PricedLine(1, "BUSBAR", "BUS-BAR", "", "KG", None, Decimal("3.25"), 20000, 65000, "PRC-BUS"),
            PricedLine(
                2, "BREAKER", "SBS-103", "3P 100A", "EA", 4, None, None if review else 1000, None, "PRC-BRK"
            ),
        ),
        totals=Totals(None, None, None, 65000) if review else Totals(450350, 45035, 495385, 450350),
        review_reasons=(ReviewReason("R1", "NEED_KNOWLEDGE_UPDATE", "branches[0]", "?", "?"),)
        if review
        else (),
        warnings=(),
        phase_balance=PhaseBalance(
            True, Decimal("33.33"), Decimal("33.33"), Decimal("33.33"), Decimal("0.00")
        ),
        trace={"size": {"A": 190}},
    )


def make_record(
    estimate_id: str,
    *,
    accepted_at: datetime = T0,
    status: Status = Status.COMPLETED,
    request_id: str | None = None,
    dedup_key: str | None = None,
    brand: str = "LS",
) -> EstimateRecord:
    req = stored_request(
        EstimateRequest(
            brand=brand,
            request_id=request_id,
            location="INDOOR",
            mount="FLUSH",
            main=BreakerLine(kind="MCCB", poles=3, trip_at=100),
            branches=(BreakerLine(kind="MCCB", poles=3, trip_at=100, qty=4),),
            accessories_enabled=False,
            dedup_key=dedup_key,
        )
    )
    quote = _quote(status)
    return EstimateRecord(
        estimate_id=estimate_id,
        revision=1,
        status=status,
        decision=quote.decision,
        request=req,
        request_hash=request_hash(req),
        request_id=request_id,
        dedup_key=dedup_key,
        actor="estimator-1",
        accepted_at=accepted_at,
        completed_at=None if status is Status.NEEDS_REVIEW else accepted_at + timedelta(seconds=1),
        quote=quote,
    )


def add_committed(store: Store, *records: EstimateRecord) -> None:
    with store.unit_of_work() as uow:
        for record in records:
            uow.estimates.add(record)
        uow.commit()


def get(store: Store, estimate_id: str) -> EstimateRecord | None:
    with store.unit_of_work(read_only=True) as uow:
        return uow.estimates.get(estimate_id)


# --------------------------------------------------------------------------- estimates


@pytest.mark.parametrize("status", [Status.COMPLETED, Status.NEEDS_REVIEW], ids=["completed", "needs_review"])
def test_added_estimate_reads_back_equal(store: Store, status: Status) -> None:
    record = make_record("E1", status=status, request_id="rid-1", dedup_key="dedup:1")
    add_committed(store, record)
    assert get(store, "E1") == record


def test_unknown_estimate_is_none(store: Store) -> None:
    assert get(store, "nope") is None
    with store.unit_of_work(read_only=True) as uow:
        assert uow.estimates.find_by_dedup_key("nope") is None


def test_dedup_key_is_found_and_a_second_use_raises_with_the_existing_id(store: Store) -> None:
    add_committed(store, make_record("E1", dedup_key="dedup:ab12cd34"))
    with store.unit_of_work() as uow:
        assert uow.estimates.find_by_dedup_key("dedup:ab12cd34") == "E1"
        with pytest.raises(DuplicateKeyError) as caught:
            uow.estimates.add(make_record("E2", dedup_key="dedup:ab12cd34"))
    assert (caught.value.kind, caught.value.existing_estimate_id) == ("dedup_key", "E1")
    assert get(store, "E2") is None


def test_request_id_reuse_raises_with_the_existing_id_and_wins_over_dedup(store: Store) -> None:
    add_committed(store, make_record("E1", request_id="rid-F30", dedup_key="dedup:1"))
    with store.unit_of_work() as uow, pytest.raises(DuplicateKeyError) as caught:
        uow.estimates.add(make_record("E2", request_id="rid-F30", dedup_key="dedup:1"))
    assert (caught.value.kind, caught.value.existing_estimate_id) == ("request_id", "E1")


def test_duplicate_racing_past_the_lookup_is_caught_by_the_store(store: Store) -> None:
    with store.unit_of_work(read_only=True) as uow:  # the service's check sees nothing yet
        assert uow.estimates.find_by_dedup_key("dedup:race") is None
    add_committed(store, make_record("E-winner", dedup_key="dedup:race"))  # another request wins
    with store.unit_of_work() as uow, pytest.raises(DuplicateKeyError) as caught:
        uow.estimates.add(make_record("E-loser", dedup_key="dedup:race"))
    assert caught.value.existing_estimate_id == "E-winner"


def test_unit_continues_after_a_duplicate_key(store: Store) -> None:
    add_committed(store, make_record("E1", dedup_key="dedup:1"))
    with store.unit_of_work() as uow:
        with pytest.raises(DuplicateKeyError):
            uow.estimates.add(make_record("E2", dedup_key="dedup:1"))
        uow.estimates.add(make_record("E3", dedup_key="dedup:3"))
        uow.commit()
    assert get(store, "E3") is not None


def test_reused_estimate_id_is_a_storage_error(store: Store) -> None:
    add_committed(store, make_record("E1"))
    with store.unit_of_work() as uow, pytest.raises(StorageError, match="already stored"):
        uow.estimates.add(make_record("E1"))


def test_exception_inside_unit_rolls_everything_back(store: Store) -> None:
    with pytest.raises(RuntimeError), store.unit_of_work() as uow:
        uow.estimates.add(make_record("E1", request_id="rid-1"))
        uow.idempotency.add(IdempotencyRecord("rid-1", "h", "E1", b"reply"), T0)
        raise RuntimeError("boom")
    with store.unit_of_work(read_only=True) as uow:
        assert uow.estimates.get("E1") is None
        assert uow.idempotency.get("rid-1") is None


def test_leaving_without_commit_rolls_back(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.estimates.add(make_record("E1"))
    assert get(store, "E1") is None


def test_unit_is_finished_after_commit(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.estimates.add(make_record("E1"))
        uow.commit()
        with pytest.raises(StorageError, match="not open"):
            uow.estimates.get("E1")
        with pytest.raises(StorageError, match="not open"):
            uow.commit()
    assert get(store, "E1") is not None


def test_read_only_unit_refuses_writes(store: Store) -> None:
    for _ in range(2):  # also on a pooled connection whose previous unit wrote, and back again
        with store.unit_of_work(read_only=True) as uow, pytest.raises(StorageError) as caught:
            uow.estimates.add(make_record("E1"))
        assert not caught.value.retryable
        assert get(store, "E1") is None
        with store.unit_of_work() as uow:
            uow.tokens.add("t1", "ci", "ESTIMATOR", "a" * 64, T0)  # rolled back: left uncommitted


def test_a_lookup_reads_one_statement_and_refuses_a_second_or_a_write(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.tokens.add("t1", "ci", "ESTIMATOR", "a" * 64, T0)
        uow.commit()
    with store.lookup() as uow:
        assert uow.tokens.find_by_hash("a" * 64) == TokenRecord("t1", "ci", "ESTIMATOR", "a" * 64, T0, None)
        with pytest.raises(StorageError, match="single statement"):
            uow.tokens.find_by_hash("a" * 64)
    with store.lookup() as uow, pytest.raises(StorageError, match="read-only") as caught:
        uow.estimates.add(make_record("E1"))
    assert not caught.value.retryable
    assert get(store, "E1") is None
    # a lookup holds no transaction: a writer commits while one is open, and a later lookup sees it
    with store.lookup() as first:
        with store.unit_of_work() as uow:
            uow.tokens.revoke("t1", T0 + timedelta(hours=1))
            uow.commit()
        assert first.tokens.find_by_hash("a" * 64) is None
    # and the pooled connections it used still serve ordinary units of both kinds
    with store.unit_of_work(read_only=True) as uow:
        assert uow.tokens.find_by_hash("a" * 64, include_revoked=True) is not None
        assert uow.tokens.find_by_hash("a" * 64) is None
    with store.unit_of_work() as uow:
        uow.tokens.add("t2", "ops", "ADMIN", "b" * 64, T0)
        uow.commit()
    with store.lookup() as uow:
        assert uow.tokens.find_by_hash("b" * 64) is not None


def test_update_stores_the_next_revision(store: Store) -> None:
    original = make_record("E1", status=Status.NEEDS_REVIEW, dedup_key="dedup:1")
    add_committed(store, original)
    reviewed = dataclasses.replace(
        original,
        revision=2,
        status=Status.REVIEWED,
        decision=Decision.OK,
        completed_at=T0 + timedelta(minutes=5),
        quote=_quote(Status.COMPLETED),
    )
    with store.unit_of_work() as uow:
        uow.estimates.update(reviewed)
        uow.commit()
    assert get(store, "E1") == reviewed
    with store.unit_of_work(read_only=True) as uow:
        page, _ = uow.estimates.list(Status.NEEDS_REVIEW, 10, None)
        assert page == []


@pytest.mark.parametrize(
    ("estimate_id", "revision", "found"),
    [("E1", 3, 1), ("E1", 1, 1), ("missing", 2, None)],
    ids=["skips_a_revision", "same_revision", "unknown_estimate"],
)
def test_update_refuses_a_stale_revision(
    store: Store, estimate_id: str, revision: int, found: int | None
) -> None:
    add_committed(store, make_record("E1", status=Status.NEEDS_REVIEW))
    changed = dataclasses.replace(make_record(estimate_id), revision=revision)
    with store.unit_of_work() as uow, pytest.raises(StaleRevisionError) as caught:
        uow.estimates.update(changed)
    assert (caught.value.expected_revision, caught.value.found_revision) == (revision - 1, found)


def test_update_refuses_to_change_identity_fields(store: Store) -> None:
    add_committed(store, make_record("E1", status=Status.NEEDS_REVIEW))
    moved = dataclasses.replace(make_record("E1"), revision=2, accepted_at=T0 + timedelta(days=1))
    with store.unit_of_work() as uow, pytest.raises(ValueError, match="identity"):
        uow.estimates.update(moved)


def test_count_accepted_counts_a_brand_in_a_half_open_window(store: Store) -> None:
    month = datetime(2025, 9, 30, 15, 0, tzinfo=UTC)  # 2025-10-01 00:00 KST
    next_month = datetime(2025, 10, 31, 15, 0, tzinfo=UTC)
    add_committed(
        store,
        make_record("M-before", brand="MIXED", accepted_at=month - timedelta(microseconds=1)),
        make_record("M-first", brand="MIXED", accepted_at=month),
        make_record(
            "M-rejected", brand="MIXED", accepted_at=month + timedelta(days=3), status=Status.REJECTED
        ),
        make_record("L-in", brand="LS", accepted_at=month + timedelta(days=3)),
        make_record("M-next", brand="MIXED", accepted_at=next_month),
    )
    with store.unit_of_work(read_only=True) as uow:
        assert uow.estimates.count_accepted("MIXED", month, next_month) == 2


# --------------------------------------------------------------------------- listing


def _all_pages(store: Store, status: Status | None, page_size: int) -> list[str]:
    ids: list[str] = []
    cursor: EstimateCursor | None = None
    with store.unit_of_work(read_only=True) as uow:
        while True:
            page, cursor = uow.estimates.list(status, page_size, cursor)
            assert len(page) <= page_size
            ids += [r.estimate_id for r in page]
            if cursor is None:
                return ids


@pytest.mark.parametrize("page_size", [1, 3, 7, 100], ids=["size1", "size3", "size7", "one_page"])
@pytest.mark.parametrize("status", [None, Status.NEEDS_REVIEW], ids=["all", "needs_review"])
def test_list_pages_newest_first_without_gaps_or_repeats(
    store: Store, page_size: int, status: Status | None
) -> None:
    records = []
    for i in range(40):
        # five instants shared by eight rows each; ids interleave with time on purpose
        accepted = T0 + timedelta(seconds=i % 5)
        state = Status.NEEDS_REVIEW if i % 3 == 0 else Status.COMPLETED
        records.append(make_record(f"E{(i * 7) % 40:02d}", accepted_at=accepted, status=state))
    add_committed(store, *records)
    expected = [
        r.estimate_id
        for r in sorted(records, key=lambda r: (r.accepted_at, r.estimate_id), reverse=True)
        if status is None or r.status is status
    ]
    got = _all_pages(store, status, page_size)
    assert got == expected
    assert len(set(got)) == len(got)


def test_list_returns_full_records_and_no_cursor_on_the_last_page(store: Store) -> None:
    older = make_record("E1", accepted_at=T0)
    newer = make_record("E2", accepted_at=T0 + timedelta(microseconds=1))
    add_committed(store, older, newer)
    with store.unit_of_work(read_only=True) as uow:
        first, cursor = uow.estimates.list(None, 1, None)
        assert first == [newer]
        assert cursor == EstimateCursor(newer.accepted_at, "E2")
        second, last = uow.estimates.list(None, 1, cursor)
        assert second == [older]
        assert last is None
        empty, none = uow.estimates.list(Status.REJECTED, 5, None)
        assert (list(empty), none) == ([], None)


def test_list_rejects_a_non_positive_page_size(store: Store) -> None:
    with store.unit_of_work(read_only=True) as uow, pytest.raises(ValueError, match="page_size"):
        uow.estimates.list(None, 0, None)


# --------------------------------------------------------------------------- idempotency


def test_idempotency_response_comes_back_byte_identical(store: Store) -> None:
    response = bytes(range(256)) * 3 + b"\x00\x00trailing"
    record = IdempotencyRecord("rid-1", "ab" * 32, "E1", response)
    with store.unit_of_work() as uow:
        uow.estimates.add(make_record("E1", request_id="rid-1"))
        uow.idempotency.add(record, T0)
        uow.commit()
    with store.unit_of_work(read_only=True) as uow:
        stored = uow.idempotency.get("rid-1")
        assert uow.idempotency.get("rid-unknown") is None
    assert stored == record
    assert stored is not None and stored.response == response


def test_idempotency_reuse_raises_with_the_existing_estimate(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.estimates.add(make_record("E1"))
        uow.estimates.add(make_record("E2"))
        uow.idempotency.add(IdempotencyRecord("rid-1", "h1", "E1", b"first"), T0)
        uow.commit()
    with store.unit_of_work() as uow, pytest.raises(DuplicateKeyError) as caught:
        uow.idempotency.add(IdempotencyRecord("rid-1", "h2", "E2", b"second"), T0)
    assert (caught.value.kind, caught.value.existing_estimate_id) == ("request_id", "E1")


def test_idempotency_record_needs_a_stored_estimate(store: Store) -> None:
    with store.unit_of_work() as uow, pytest.raises(StorageError):
        uow.idempotency.add(IdempotencyRecord("rid-1", "h", "E-missing", b"x"), T0)


# --------------------------------------------------------------------------- tokens


def test_tokens_add_find_list_and_revoke(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.tokens.add("t1", "ci", "ESTIMATOR", "a" * 64, T0)
        uow.tokens.add("t2", "ops", "ADMIN", "b" * 64, T0 + timedelta(seconds=1))
        uow.commit()
    with store.unit_of_work() as uow:
        assert uow.tokens.find_by_hash("a" * 64) == TokenRecord("t1", "ci", "ESTIMATOR", "a" * 64, T0, None)
        assert uow.tokens.find_by_hash("c" * 64) is None
        assert uow.tokens.revoke("t1", T0 + timedelta(hours=1)) is True
        assert uow.tokens.revoke("t1", T0 + timedelta(hours=2)) is False
        assert uow.tokens.revoke("unknown", T0) is False
        uow.commit()
    with store.unit_of_work(read_only=True) as uow:
        assert uow.tokens.find_by_hash("a" * 64) is None
        revoked = TokenRecord("t1", "ci", "ESTIMATOR", "a" * 64, T0, T0 + timedelta(hours=1))
        assert uow.tokens.find_by_hash("a" * 64, include_revoked=True) == revoked
        assert uow.tokens.find_by_hash("c" * 64, include_revoked=True) is None
        assert list(uow.tokens.list()) == [
            TokenRecord("t1", "ci", "ESTIMATOR", "a" * 64, T0, T0 + timedelta(hours=1)),
            TokenRecord("t2", "ops", "ADMIN", "b" * 64, T0 + timedelta(seconds=1), None),
        ]


@pytest.mark.parametrize(
    ("token_id", "sha256"), [("t1", "f" * 64), ("t9", "a" * 64)], ids=["same_id", "same_hash"]
)
def test_token_id_and_hash_are_unique(store: Store, token_id: str, sha256: str) -> None:
    with store.unit_of_work() as uow:
        uow.tokens.add("t1", "ci", "VIEWER", "a" * 64, T0)
        uow.commit()
    with store.unit_of_work() as uow, pytest.raises(StorageError, match="already stored"):
        uow.tokens.add(token_id, "other", "VIEWER", sha256, T0)


# --------------------------------------------------------------------------- lifecycle and migrations


def test_reopening_keeps_data_and_applies_nothing_twice(backend: Backend) -> None:
    first = backend.open()
    add_committed(first, make_record("E1"))
    first.close()
    second = backend.open()
    third = backend.open()
    assert get(second, "E1") == make_record("E1")
    assert get(third, "E1") == make_record("E1")


def test_database_from_a_newer_build_is_refused(backend: Backend) -> None:
    backend.open().close()
    backend.write_schema_version(999)
    with pytest.raises(SchemaVersionError, match=r"\[999\].*refusing to start"):
        backend.open()


def test_closed_store_refuses_new_units(store: Store) -> None:
    store.close()
    with pytest.raises(StorageError, match="closed"), store.unit_of_work() as uow:
        uow.estimates.get("E1")


def test_busy_writer_gives_a_retryable_error(backend: Backend) -> None:
    holder = backend.open()
    impatient = backend.open(busy_timeout_s=0.05)
    with holder.unit_of_work() as uow:
        uow.estimates.add(make_record("E1"))
        with pytest.raises(StorageError) as caught, impatient.unit_of_work() as blocked:
            blocked.estimates.add(make_record("E2"))
        assert caught.value.retryable
        with impatient.unit_of_work(read_only=True) as reader:  # WAL: readers are not blocked
            assert reader.estimates.get("E1") is None
        uow.commit()
    assert get(impatient, "E1") is not None


def test_concurrent_writers_all_land(store: Store) -> None:
    threads_n, per_thread = 8, 25
    start = threading.Barrier(threads_n)

    def write(thread_no: int) -> int:
        start.wait(timeout=JOIN_TIMEOUT_S)  # all threads begin together
        for i in range(per_thread):
            n = thread_no * per_thread + i
            record = make_record(
                f"E{n:04d}",
                accepted_at=T0 + timedelta(seconds=n % 4),
                request_id=f"rid-{n}",
                dedup_key=f"dedup:{n}",
            )
            with store.unit_of_work() as uow:
                assert uow.estimates.find_by_dedup_key(f"dedup:{n}") is None
                uow.estimates.add(record)
                uow.idempotency.add(IdempotencyRecord(f"rid-{n}", "h", record.estimate_id, b"r"), T0)
                uow.commit()
            with store.unit_of_work(read_only=True) as uow:
                assert uow.estimates.get(record.estimate_id) == record
        return per_thread

    with ThreadPoolExecutor(max_workers=threads_n) as pool:
        futures = [pool.submit(write, t) for t in range(threads_n)]
        # result() re-raises a worker's failure (a StorageError 'database is locked' included)
        assert [f.result(timeout=JOIN_TIMEOUT_S) for f in futures] == [per_thread] * threads_n
    ids = _all_pages(store, None, 37)
    assert sorted(ids) == [f"E{n:04d}" for n in range(threads_n * per_thread)]


def test_upgrade_from_schema_1_keeps_the_data_and_adds_the_new_tables(backend: Backend) -> None:
    old = backend.open_old(1)
    first = make_record("E1", request_id="rid-1", dedup_key="dedup:1")
    with old.unit_of_work() as uow:
        uow.estimates.add(first)
        uow.idempotency.add(IdempotencyRecord("rid-1", "h", "E1", b"reply"), T0)
        uow.tokens.add("t1", "ci", "ADMIN", "a" * 64, T0)
        uow.commit()
    old.close()
    upgraded = backend.open()
    with upgraded.unit_of_work() as uow:
        assert uow.estimates.get("E1") == first
        assert uow.idempotency.get("rid-1") == IdempotencyRecord("rid-1", "h", "E1", b"reply")
        assert uow.tokens.find_by_hash("a" * 64) is not None
        assert uow.audit.anchor() == (0, GENESIS_HASH)
        uow.evidence.add(make_evidence("E1", 1))
        assert uow.audit.append(draft(1)).seq == 1
        uow.mixed_grants.add(MixedGrant("G1", "2025-10", "vendor shortage", "admin", T0))
        assert uow.estimates.count_by_status(T0, T0 + timedelta(days=1))[Status.COMPLETED] == 1
        uow.commit()
    assert get_evidence(upgraded, "E1", None) == make_evidence("E1", 1)


# --------------------------------------------------------------------------- review queue and reports


@pytest.mark.parametrize("page_size", [1, 4, 100], ids=["size1", "size4", "one_page"])
def test_list_oldest_pages_a_status_oldest_first(store: Store, page_size: int) -> None:
    records = []
    for i in range(30):
        accepted = T0 + timedelta(seconds=i % 4)  # shared instants: estimate_id breaks the tie
        state = Status.NEEDS_REVIEW if i % 3 else Status.COMPLETED
        records.append(make_record(f"E{(i * 11) % 30:02d}", accepted_at=accepted, status=state))
    add_committed(store, *records)
    expected = [
        r.estimate_id
        for r in sorted(records, key=lambda r: (r.accepted_at, r.estimate_id))
        if r.status is Status.NEEDS_REVIEW
    ]
    got: list[str] = []
    cursor: EstimateCursor | None = None
    with store.unit_of_work(read_only=True) as uow:
        while True:
            page, cursor = uow.estimates.list_oldest(Status.NEEDS_REVIEW, page_size, cursor)
            assert len(page) <= page_size
            got += [r.estimate_id for r in page]
            if cursor is None:
                break
        assert uow.estimates.list_oldest(Status.REVIEWED, 5, None) == ([], None)
        with pytest.raises(ValueError, match="page_size"):
            uow.estimates.list_oldest(Status.NEEDS_REVIEW, 0, None)
    assert got == expected


def test_list_oldest_returns_full_records_and_the_cursor_of_the_last_row(store: Store) -> None:
    older = make_record("E2", accepted_at=T0, status=Status.NEEDS_REVIEW)
    newer = make_record("E1", accepted_at=T0 + timedelta(microseconds=1), status=Status.NEEDS_REVIEW)
    add_committed(store, newer, older)
    with store.unit_of_work(read_only=True) as uow:
        first, cursor = uow.estimates.list_oldest(Status.NEEDS_REVIEW, 1, None)
        assert (list(first), cursor) == ([older], EstimateCursor(T0, "E2"))
        second, last = uow.estimates.list_oldest(Status.NEEDS_REVIEW, 1, cursor)
        assert (list(second), last) == ([newer], None)


WINDOW_FROM = datetime(2025, 9, 30, 15, 0, tzinfo=UTC)  # 2025-10-01 00:00 KST
WINDOW_BEFORE = datetime(2025, 10, 31, 15, 0, tzinfo=UTC)  # 2025-11-01 00:00 KST


def test_count_by_status_counts_a_half_open_accepted_window(store: Store) -> None:
    inside = WINDOW_FROM + timedelta(days=2)
    add_committed(
        store,
        make_record("before", accepted_at=WINDOW_FROM - timedelta(microseconds=1)),
        make_record("first", accepted_at=WINDOW_FROM),
        make_record("c2", accepted_at=inside),
        make_record("open", accepted_at=inside, status=Status.NEEDS_REVIEW),
        make_record("rejected", accepted_at=inside, status=Status.REJECTED),
        make_record(
            "last", accepted_at=WINDOW_BEFORE - timedelta(microseconds=1), status=Status.NEEDS_REVIEW
        ),
        make_record("after", accepted_at=WINDOW_BEFORE),
    )
    with store.unit_of_work(read_only=True) as uow:
        assert uow.estimates.count_by_status(WINDOW_FROM, WINDOW_BEFORE) == {
            Status.COMPLETED: 2,
            Status.NEEDS_REVIEW: 2,
            Status.REVIEWED: 0,
            Status.REJECTED: 1,
        }
        assert uow.estimates.count_by_status(WINDOW_BEFORE, WINDOW_BEFORE) == dict.fromkeys(Status, 0)


def test_tat_is_exact_microseconds_over_a_half_open_completed_window(store: Store) -> None:
    def done(estimate_id: str, completed_at: datetime, tat: timedelta, status: Status) -> EstimateRecord:
        base = make_record(estimate_id, accepted_at=completed_at - tat, status=status)
        return dataclasses.replace(base, completed_at=completed_at)

    add_committed(
        store,
        done("before", WINDOW_FROM - timedelta(microseconds=1), timedelta(seconds=1), Status.COMPLETED),
        done("first", WINDOW_FROM, timedelta(minutes=3, microseconds=7), Status.COMPLETED),
        # accepted in the previous month, completed inside the window: counted (window is on completed_at)
        done("reviewed", WINDOW_FROM + timedelta(hours=1), timedelta(days=2), Status.REVIEWED),
        done("rejected", WINDOW_FROM + timedelta(hours=1), timedelta(seconds=9), Status.REJECTED),
        done("last", WINDOW_BEFORE - timedelta(microseconds=1), timedelta(microseconds=1), Status.COMPLETED),
        done("after", WINDOW_BEFORE, timedelta(seconds=2), Status.COMPLETED),
        make_record("open", accepted_at=WINDOW_FROM + timedelta(hours=2), status=Status.NEEDS_REVIEW),
    )
    with store.unit_of_work(read_only=True) as uow:
        assert uow.estimates.tat_seconds(WINDOW_FROM, WINDOW_BEFORE) == [1, 180_000_007, 172_800_000_000]
        assert uow.estimates.tat_seconds(WINDOW_BEFORE, WINDOW_BEFORE) == []


def test_oldest_accepted_at_per_status(store: Store) -> None:
    add_committed(
        store,
        make_record("E1", accepted_at=T0 + timedelta(hours=1), status=Status.NEEDS_REVIEW),
        make_record("E2", accepted_at=T0, status=Status.NEEDS_REVIEW),
        make_record("E3", accepted_at=T0 - timedelta(days=1)),
    )
    with store.unit_of_work(read_only=True) as uow:
        assert uow.estimates.oldest_accepted_at(Status.NEEDS_REVIEW) == T0
        assert uow.estimates.oldest_accepted_at(Status.COMPLETED) == T0 - timedelta(days=1)
        assert uow.estimates.oldest_accepted_at(Status.REVIEWED) is None


# --------------------------------------------------------------------------- evidence


def make_evidence(estimate_id: str, revision: int, *, signed: bool = False) -> EvidenceRecord:
    # every byte value, NULs and a non-UTF-8 tail: the blob must come back untouched
    bundle = bytes(range(256)) * 40 + f"{estimate_id}/{revision}".encode() + b"\x00\xff\xfe"
    return EvidenceRecord(
        estimate_id=estimate_id,
        revision=revision,
        sha256=hashlib.sha256(bundle).hexdigest(),
        size_bytes=len(bundle),
        bundle=bundle,
        manifest_json=f'{{"estimate_id": "{estimate_id}", "revision": {revision}, "비고": "한"}}\n'.encode(),
        signature_key_id="k-2025" if signed else None,
        signature="c2lnbmF0dXJl" if signed else None,
        created_at=T0 + timedelta(minutes=revision),
    )


def get_evidence(store: Store, estimate_id: str, revision: int | None) -> EvidenceRecord | None:
    with store.unit_of_work(read_only=True) as uow:
        return uow.evidence.get(estimate_id, revision)


def test_evidence_reads_back_byte_identical_by_revision_or_highest(store: Store) -> None:
    rev1, rev2 = make_evidence("E1", 1), make_evidence("E1", 2, signed=True)
    with store.unit_of_work() as uow:
        uow.estimates.add(make_record("E1"))
        uow.estimates.add(make_record("E2"))
        uow.evidence.add(rev2)  # insertion order does not decide "highest"
        uow.evidence.add(rev1)
        uow.commit()
    assert get_evidence(store, "E1", 1) == rev1
    assert get_evidence(store, "E1", 2) == rev2
    latest = get_evidence(store, "E1", None)
    assert latest == rev2
    assert latest is not None and latest.bundle == rev2.bundle
    assert hashlib.sha256(latest.bundle).hexdigest() == rev2.sha256
    assert get_evidence(store, "E1", 3) is None
    assert get_evidence(store, "E2", None) is None
    assert get_evidence(store, "unknown", None) is None


def test_a_bundle_that_starts_like_a_packed_value_reads_back_as_given(store: Store) -> None:
    """A stored bundle is told packed by zstd's magic (storage/packing.py); a bundle whose own
    bytes start with it (none the service builds: those are ZIPs) is packed like any other, so
    each store gives back exactly what was stored. So do an empty one and one of zstd's own
    frames."""
    made = [
        packing.ZSTD_MAGIC + b"\x00not a frame",
        packing.ZSTD_MAGIC,
        packing.pack(b"a frame of its own"),
        b"",
    ]
    records = [
        dataclasses.replace(
            make_evidence("E1", revision),
            bundle=bundle,
            sha256=hashlib.sha256(bundle).hexdigest(),
            size_bytes=len(bundle),
        )
        for revision, bundle in enumerate(made, start=1)
    ]
    with store.unit_of_work() as uow:
        uow.estimates.add(make_record("E1"))
        for record in records:
            uow.evidence.add(record)
        uow.commit()
    assert [get_evidence(store, "E1", r.revision) for r in records] == records


def test_a_stored_bundle_that_no_longer_matches_its_sha256_is_refused(backend: Backend) -> None:
    """A bundle changed in the database behind the service (same size, so the schema's checks
    hold) is not served as evidence: every read checks it against its stored sha256."""
    store = backend.open()
    with store.unit_of_work() as uow:
        uow.estimates.add(make_record("E1"))
        uow.evidence.add(make_evidence("E1", 1))
        uow.commit()
    original = make_evidence("E1", 1).bundle
    changed = bytes([original[0] ^ 0xFF]) + original[1:]
    backend.raw(
        "UPDATE evidence SET bundle = ?", (changed if backend.name == "sqlite" else packing.pack(changed),)
    )
    with pytest.raises(StorageError, match="evidence of estimate E1 revision 1: the bundle does not match"):
        get_evidence(store, "E1", 1)
    with store.unit_of_work(read_only=True) as uow:
        assert uow.evidence.get_info("E1", 1) == dataclasses.replace(make_evidence("E1", 1), bundle=b"")


def test_evidence_info_has_everything_but_the_blob(store: Store) -> None:
    rev1, rev2 = make_evidence("E1", 1, signed=True), make_evidence("E1", 2)
    with store.unit_of_work() as uow:
        uow.estimates.add(make_record("E1"))
        uow.evidence.add(rev1)
        uow.evidence.add(rev2)
        uow.commit()
    with store.unit_of_work(read_only=True) as uow:
        assert uow.evidence.get_info("E1", None) == dataclasses.replace(rev2, bundle=b"")
        assert uow.evidence.get_info("E1", 1) == dataclasses.replace(rev1, bundle=b"")
        assert uow.evidence.get_info("E1", 9) is None


def test_evidence_of_a_revision_is_stored_once(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.estimates.add(make_record("E1"))
        uow.evidence.add(make_evidence("E1", 1))
        uow.commit()
    with store.unit_of_work() as uow, pytest.raises(StorageError, match="already stored"):
        uow.evidence.add(make_evidence("E1", 1, signed=True))
    assert get_evidence(store, "E1", 1) == make_evidence("E1", 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"sha256": "0" * 64}, "sha256"), ({"size_bytes": 1}, "size_bytes")],
    ids=["wrong_sha256", "wrong_size"],
)
def test_evidence_must_describe_its_bundle(store: Store, change: dict[str, object], message: str) -> None:
    with store.unit_of_work() as uow, pytest.raises(ValueError, match=message):
        uow.estimates.add(make_record("E1"))
        uow.evidence.add(dataclasses.replace(make_evidence("E1", 1), **change))  # type: ignore[arg-type]


def test_evidence_needs_a_stored_estimate(store: Store) -> None:
    with store.unit_of_work() as uow, pytest.raises(StorageError):
        uow.evidence.add(make_evidence("E-missing", 1))


# --------------------------------------------------------------------------- audit log


def draft(
    n: int,
    *,
    action: str = audit.ESTIMATE_ACCEPTED,
    estimate_id: str | None = None,
    at: datetime | None = None,
) -> AuditDraft:
    return AuditDraft(
        at=T0 + timedelta(minutes=n) if at is None else at,
        action=action,
        outcome="OK",
        actor="관리자-1",
        role="ADMIN",
        estimate_id=estimate_id,
        revision=None if estimate_id is None else 1,
        details={"n": n, "codes": ["MIX-1", "DUP-1"], "granted": n % 2 == 0, "note": None},
        peer="ipv4:127.0.0.1:50000",
    )


def append_committed(store: Store, *drafts: AuditDraft) -> list[AuditEvent]:
    with store.unit_of_work() as uow:
        events = [uow.audit.append(d) for d in drafts]
        uow.commit()
    return events


def read_chain(store: Store) -> tuple[int, str, list[AuditEvent]]:
    with store.unit_of_work(read_only=True) as uow:
        seq, hash_ = uow.audit.anchor()
        return seq, hash_, list(uow.audit.iter_ascending(seq + 1))


def verify(store: Store) -> ChainBreak | None:
    """What an operator's verification does: anchor and events from one read snapshot."""
    with store.unit_of_work(read_only=True) as uow:
        seq, hash_ = uow.audit.anchor()
        return verify_chain(uow.audit.iter_ascending(seq + 1), anchor_seq=seq, anchor_hash=hash_)


def test_appends_build_a_verifiable_chain_from_genesis(store: Store) -> None:
    first = append_committed(store, draft(0), draft(1, estimate_id="E1"))
    second = append_committed(store, draft(2, action=audit.EVIDENCE_DOWNLOAD))
    events = first + second
    assert [(e.seq, e.prev_hash) for e in events] == [
        (1, GENESIS_HASH),
        (2, events[0].hash),
        (3, events[1].hash),
    ]
    assert all(e.hash == event_hash(e.seq, e.prev_hash, e.draft) for e in events)
    assert read_chain(store) == (0, GENESIS_HASH, events)  # read back equal, field for field
    assert verify(store) is None


def test_a_rolled_back_append_leaves_no_gap(store: Store) -> None:
    append_committed(store, draft(0))
    with store.unit_of_work() as uow:
        assert uow.audit.append(draft(1)).seq == 2  # not committed
    assert append_committed(store, draft(2))[0].seq == 2
    assert [e.seq for e in read_chain(store)[2]] == [1, 2]
    assert verify(store) is None


def test_append_needs_a_write_unit(store: Store) -> None:
    with store.unit_of_work(read_only=True) as uow, pytest.raises(StorageError):
        uow.audit.append(draft(0))


def test_iter_ascending_reads_long_chains_in_order_from_any_seq(store: Store) -> None:
    events = append_committed(store, *(draft(i) for i in range(1234)))
    with store.unit_of_work(read_only=True) as uow:
        assert list(uow.audit.iter_ascending()) == events
        assert list(uow.audit.iter_ascending(1001)) == events[1000:]
        assert list(uow.audit.iter_ascending(5000)) == []
    assert verify(store) is None


def test_concurrent_appends_form_one_contiguous_chain(store: Store) -> None:
    threads_n, per_thread = 8, 25
    start = threading.Barrier(threads_n)

    def write(thread_no: int) -> list[AuditEvent]:
        start.wait(timeout=JOIN_TIMEOUT_S)
        written = []
        for i in range(per_thread):
            written += append_committed(store, draft(i, estimate_id=f"T{thread_no}"))
        return written

    with ThreadPoolExecutor(max_workers=threads_n) as pool:
        futures = [pool.submit(write, t) for t in range(threads_n)]
        written = [e for f in futures for e in f.result(timeout=JOIN_TIMEOUT_S)]
    _, _, stored = read_chain(store)
    assert [e.seq for e in stored] == list(range(1, threads_n * per_thread + 1))
    assert sorted(written, key=lambda e: e.seq) == stored
    assert verify(store) is None


# --------------------------------------------------------------------------- the group commit's write


def new_create(
    estimate_id: str, *, request_id: str | None = None, dedup_key: str | None = None
) -> tuple[NewRows, AuditDraft]:
    """What one accepted create stores: its rows (estimate, evidence, reply when it has a request_id)
    and its audit draft."""
    record = make_record(estimate_id, request_id=request_id, dedup_key=dedup_key)
    reply = (
        None
        if request_id is None
        else IdempotencyRecord(request_id, "h", estimate_id, b"reply " + estimate_id.encode())
    )
    return new_rows(record, make_evidence(estimate_id, 1), reply), draft(0, estimate_id=estimate_id)


def store_committed(store: Store, *creates: tuple[NewRows, AuditDraft]) -> bool:
    with store.unit_of_work() as uow:
        stored = uow.store_creates([rows for rows, _ in creates], [d for _, d in creates])
        with pytest.raises(StorageError):  # committed or rolled back: the unit is finished either way
            uow.estimates.get("E1")
    return stored


def test_store_creates_stores_every_row_and_chains_the_events_after_the_head(store: Store) -> None:
    append_committed(store, draft(0))
    creates = [new_create("E1", request_id="rid-1"), new_create("E2"), new_create("E3", dedup_key="d:3")]
    assert store_committed(store, *creates)
    _, _, events = read_chain(store)
    assert [(e.seq, e.estimate_id) for e in events] == [(1, None), (2, "E1"), (3, "E2"), (4, "E3")]
    assert [e.draft for e in events[1:]] == [d for _, d in creates]
    assert verify(store) is None
    for estimate_id in ("E1", "E2", "E3"):
        assert get(store, estimate_id) == make_record(
            estimate_id,
            request_id="rid-1" if estimate_id == "E1" else None,
            dedup_key="d:3" if estimate_id == "E3" else None,
        )
        assert get_evidence(store, estimate_id, None) == make_evidence(estimate_id, 1)
    with store.unit_of_work(read_only=True) as uow:
        assert uow.idempotency.get("rid-1") == IdempotencyRecord("rid-1", "h", "E1", b"reply E1")
        assert uow.estimates.find_by_dedup_key("d:3") == "E3"


@pytest.mark.parametrize(
    "taken",
    [
        {"request_id": "rid-1"},
        {"dedup_key": "d:1"},
    ],
    ids=["request_id", "dedup_key"],
)
def test_store_creates_with_a_taken_key_commits_nothing(store: Store, taken: dict[str, str]) -> None:
    assert store_committed(store, new_create("E1", request_id="rid-1", dedup_key="d:1"))
    before = read_chain(store)
    assert not store_committed(store, new_create("E2"), new_create("E3", **taken), new_create("E4"))
    assert read_chain(store) == before
    assert [get(store, e) for e in ("E2", "E3", "E4")] == [None, None, None]
    assert store_committed(store, new_create("E2"), new_create("E4"))  # the store took no harm
    assert verify(store) is None


def test_a_unit_that_wrote_audit_events_reads_the_head_it_moved(store: Store) -> None:
    """A write unit may have read the chain's head with its BEGIN (PostgreSQL): after the unit's
    own appends the head must be read again, not taken from then."""
    with store.unit_of_work() as uow:
        first = uow.audit.append(draft(0))
        second = uow.audit.append_many([draft(1), draft(2)])
        rows, accepted = new_create("E1")
        assert uow.store_creates([rows], [accepted])
    _, _, events = read_chain(store)
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert events[:3] == [first, *second]
    assert verify(store) is None


def test_store_creates_from_two_stores_on_one_database_keeps_one_chain(backend: Backend) -> None:
    """Two stores (as two processes would hold) writing batches at once: their write units are
    serialised by the database's lock, so each batch is sealed after the other's last event."""
    stores = [backend.open(), backend.open()]
    rounds = 20
    start = threading.Barrier(2)

    def write(n: int) -> None:
        start.wait(timeout=JOIN_TIMEOUT_S)
        for i in range(rounds):
            creates = [new_create(f"S{n}-{i}-{k}", request_id=f"r{n}-{i}-{k}") for k in range(3)]
            assert store_committed(stores[n], *creates)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for future in [pool.submit(write, n) for n in range(2)]:
            future.result(timeout=JOIN_TIMEOUT_S)
    _, _, events = read_chain(stores[0])
    assert [e.seq for e in events] == list(range(1, 2 * rounds * 3 + 1))
    assert verify(stores[1]) is None


AUDIT_FILTERS: list[tuple[str, AuditFilter]] = [
    ("all", AuditFilter()),
    ("action", AuditFilter(action=audit.EVIDENCE_DOWNLOAD)),
    ("estimate", AuditFilter(estimate_id="E1")),
    ("action_and_estimate", AuditFilter(action=audit.EVIDENCE_DOWNLOAD, estimate_id="E1")),
    ("since_inclusive", AuditFilter(since=T0 + timedelta(minutes=10))),
    ("until_exclusive", AuditFilter(until=T0 + timedelta(minutes=10))),
    ("window", AuditFilter(since=T0 + timedelta(minutes=5), until=T0 + timedelta(minutes=15))),
    ("no_match", AuditFilter(action=audit.TOKEN_REVOKED)),
]


def _matches(event: AuditEvent, f: AuditFilter) -> bool:
    return (
        (f.action is None or event.action == f.action)
        and (f.estimate_id is None or event.estimate_id == f.estimate_id)
        and (f.since is None or event.at >= f.since)
        and (f.until is None or event.at < f.until)
    )


@pytest.mark.parametrize("page_size", [1, 3, 100], ids=["size1", "size3", "one_page"])
@pytest.mark.parametrize("audit_filter", [f for _, f in AUDIT_FILTERS], ids=[n for n, _ in AUDIT_FILTERS])
def test_audit_list_filters_and_pages_newest_first(
    store: Store, audit_filter: AuditFilter, page_size: int
) -> None:
    drafts = [
        draft(
            i,
            action=audit.EVIDENCE_DOWNLOAD if i % 3 == 0 else audit.ESTIMATE_ACCEPTED,
            estimate_id=None if i % 5 == 4 else f"E{i % 2}",
        )
        for i in range(20)
    ]
    events = append_committed(store, *drafts)
    expected = [e for e in reversed(events) if _matches(e, audit_filter)]
    got: list[AuditEvent] = []
    before: int | None = None
    with store.unit_of_work(read_only=True) as uow:
        while True:
            page, before = uow.audit.list(audit_filter, page_size, before)
            assert len(page) <= page_size
            got += page
            if before is None:
                break
    assert got == expected


def test_audit_list_rejects_a_non_positive_page_size(store: Store) -> None:
    with store.unit_of_work(read_only=True) as uow, pytest.raises(ValueError, match="page_size"):
        uow.audit.list(AuditFilter(), 0, None)


@pytest.mark.parametrize(
    ("sql", "params", "expected"),
    [
        (
            "UPDATE audit_events SET details = ? WHERE seq = ?",
            ('{"n":99}', 4),
            ChainBreak(4, "record 4 was altered"),
        ),
        (
            "UPDATE audit_events SET outcome = ? WHERE seq = ?",
            ("DENIED", 1),
            ChainBreak(1, "record 1 was altered"),
        ),
        (
            "UPDATE audit_events SET at = ? WHERE seq = ?",
            ("2025-10-01T03:04:05.000000Z", 6),
            ChainBreak(6, "record 6 was altered"),
        ),
        ("DELETE FROM audit_events WHERE seq = ?", (5,), ChainBreak(6, "missing record(s) before seq 6")),
        ("DELETE FROM audit_events WHERE seq <= ?", (2,), ChainBreak(3, "missing record(s) before seq 3")),
    ],
    ids=["details_edited", "outcome_edited", "time_edited", "middle_deleted", "first_deleted"],
)
def test_tampering_around_the_store_is_detected(
    backend: Backend, store: Store, sql: str, params: tuple[object, ...], expected: ChainBreak
) -> None:
    append_committed(store, *(draft(i) for i in range(8)))
    backend.drop_audit_guards()
    backend.raw(sql, params)
    assert verify(store) == expected


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link(backend: Backend, store: Store) -> None:
    events = append_committed(store, *(draft(i) for i in range(5)))
    forged = dataclasses.replace(events[2], outcome="DENIED")
    backend.drop_audit_guards()
    backend.raw(
        "UPDATE audit_events SET outcome = ?, hash = ? WHERE seq = ?",
        ("DENIED", event_hash(3, forged.prev_hash, forged.draft), 3),
    )
    assert verify(store) == ChainBreak(4, "record 4 does not link to record 3")


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("UPDATE audit_events SET details = '{}' WHERE seq = ?", (2,)),
        ("DELETE FROM audit_events WHERE seq = ?", (1,)),
        ("DELETE FROM audit_events WHERE seq = ?", (3,)),
        (
            "INSERT INTO audit_events (seq, at, action, outcome, actor, role, details, peer, prev_hash, hash)"
            " VALUES (?, '2025-10-01T00:00:00.000000Z', 'X', 'OK', 'a', '', '{}', '', ?, ?)",
            (5, "0" * 64, "0" * 64),
        ),
        ("UPDATE audit_anchor SET seq = 2, hash = ? WHERE id = 1", ("f" * 64,)),
        ("DELETE FROM audit_anchor", ()),
    ],
    ids=["update", "delete_first", "delete_last", "insert_off_head", "anchor_to_fake_hash", "anchor_delete"],
)
def test_the_database_refuses_edits_while_its_guards_stand(
    backend: Backend, store: Store, sql: str, params: tuple[object, ...]
) -> None:
    events = append_committed(store, *(draft(i) for i in range(3)))
    with pytest.raises(backend.raw_error, match="audit"):
        backend.raw(sql, params)
    assert read_chain(store) == (0, GENESIS_HASH, events)


def test_prune_deletes_a_contiguous_prefix_and_moves_the_anchor(store: Store) -> None:
    minutes = [0, 1, 2, 9, 3, 4, 5, 6]  # seq 4 is late: pruning stops there, keeping seq 5 too
    events = append_committed(store, *(draft(i, at=T0 + timedelta(minutes=m)) for i, m in enumerate(minutes)))
    with store.unit_of_work() as uow:
        assert uow.audit.prune_before(T0 + timedelta(minutes=5)) == 3
        assert uow.audit.anchor() == (3, events[2].hash)
        marker = uow.audit.append(draft(99, action=audit.AUDIT_PRUNED))
        uow.commit()
    assert marker.seq == 9
    assert read_chain(store) == (3, events[2].hash, [*events[3:], marker])
    assert verify(store) is None
    with store.unit_of_work() as uow:
        assert uow.audit.prune_before(T0 + timedelta(minutes=5)) == 0  # seq 4 still blocks
        assert uow.audit.prune_before(T0) == 0
        uow.commit()
    assert read_chain(store)[0] == 3


def test_prune_of_everything_keeps_the_next_append_linked(store: Store) -> None:
    with store.unit_of_work() as uow:
        assert uow.audit.prune_before(T0 + timedelta(days=1)) == 0  # empty log
        assert uow.audit.anchor() == (0, GENESIS_HASH)
        uow.commit()
    events = append_committed(store, *(draft(i) for i in range(4)))
    with store.unit_of_work() as uow:
        assert uow.audit.prune_before(T0 + timedelta(days=1)) == 4
        uow.commit()
    assert read_chain(store) == (4, events[3].hash, [])
    assert verify(store) is None
    after = append_committed(store, draft(5, action=audit.AUDIT_PRUNED))
    assert (after[0].seq, after[0].prev_hash) == (5, events[3].hash)
    assert verify(store) is None


def test_a_rolled_back_prune_changes_nothing(store: Store) -> None:
    events = append_committed(store, *(draft(i) for i in range(4)))
    with store.unit_of_work() as uow:
        assert uow.audit.prune_before(T0 + timedelta(days=1)) == 4
    assert read_chain(store) == (0, GENESIS_HASH, events)


# --------------------------------------------------------------------------- MIXED grants


def test_mixed_grants_are_unique_per_month(store: Store) -> None:
    october = MixedGrant("G1", "2025-10", "고객 요청: 혼합 브랜드", "admin", T0)
    with store.unit_of_work() as uow:
        uow.mixed_grants.add(october)
        uow.commit()
    with store.unit_of_work() as uow:
        with pytest.raises(GrantExistsError) as caught:
            uow.mixed_grants.add(MixedGrant("G2", "2025-10", "again", "admin-2", T0))
        uow.mixed_grants.add(MixedGrant("G3", "2025-11", "next month", "admin", T0))
        with pytest.raises(StorageError, match="already stored"):
            uow.mixed_grants.add(MixedGrant("G1", "2025-12", "same id", "admin", T0))
        uow.commit()
    assert (caught.value.month, caught.value.existing_grant_id) == ("2025-10", "G1")
    with store.unit_of_work(read_only=True) as uow:
        assert uow.mixed_grants.get("2025-10") == october
        assert uow.mixed_grants.get("2025-11") == MixedGrant("G3", "2025-11", "next month", "admin", T0)
        assert uow.mixed_grants.get("2025-12") is None


@pytest.mark.parametrize("month", ["2025-13", "2025-1", "25-10", "2025-00", "2025/10"])
def test_a_grant_month_is_yyyy_mm(month: str) -> None:
    with pytest.raises(ValueError, match="YYYY-MM"):
        MixedGrant("G1", month, "r", "admin", T0)
