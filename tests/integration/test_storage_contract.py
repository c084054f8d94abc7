"""The storage contract: every backend behind ``server.storage.repository`` passes this suite.

Backends come from the ``backend`` fixture (``params=["sqlite"]``). A PostgreSQL backend adds a
param whose factory skips with a reason when no server is reachable (and fails under
``KIS_REQUIRE_PG=1``), per STYLE.md §2.3; nothing below names a backend.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from server.engine.codec import stored_request
from server.engine.model import (
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
from server.engine.records import EstimateRecord
from server.engine.request import request_hash
from server.storage.migrate import SchemaVersionError
from server.storage.repository import (
    DuplicateKeyError,
    EstimateCursor,
    IdempotencyRecord,
    StaleRevisionError,
    StorageError,
    Store,
    TokenRecord,
)
from server.storage.sqlite import SqliteStore

T0 = datetime(2025, 10, 1, 3, 4, 5, 123456, tzinfo=UTC)
JOIN_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------- backends


@dataclass
class Backend:
    """How the suite reaches one storage technology."""

    name: str
    open_store: Callable[[float], Store]  # busy_timeout_s -> a new store on the same database
    write_schema_version: Callable[[int], None]  # simulate a migration by a newer build
    opened: list[Store] = field(default_factory=list)

    def open(self, busy_timeout_s: float = 10.0) -> Store:
        store = self.open_store(busy_timeout_s)
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

    return Backend("sqlite", open_store, write_schema_version)


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    factories: dict[str, Callable[[Path], Backend]] = {"sqlite": _sqlite_backend}
    chosen = factories[request.param](tmp_path)
    yield chosen
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
    with store.unit_of_work(read_only=True) as uow, pytest.raises(StorageError) as caught:
        uow.estimates.add(make_record("E1"))
    assert not caught.value.retryable
    assert get(store, "E1") is None


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
