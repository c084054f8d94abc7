"""The real gRPC service on PostgreSQL (``KIS_DATABASE_URL=postgresql://…``), end to end.

Each test gets a fresh database from the storage contract suite's :func:`pg_database`, so these
cases skip with a reason when no PostgreSQL server is reachable and fail under
``KIS_REQUIRE_PG=1`` (docs/conventions.md §3). What is checked here is what SQLite's single writer gave
the service for free: the 40 regression cases, the MIXED quota under 50 concurrent creates, and an
audit chain that verifies afterwards. The last tests pin down store behaviour that exists only on
PostgreSQL (server-side connection loss, aborted transactions), so the contract suite cannot.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import grpc
import psycopg
import pytest
from psycopg import pq

from kis_estimator.server.acceptance.runner import GrpcCaller, Outcome, run_suites
from kis_estimator.server.clock import Clock, ManualClock
from kis_estimator.server.engine.months import KST
from kis_estimator.server.engine.roles import Role
from kis_estimator.server.main import build_app
from kis_estimator.server.settings import Settings
from kis_estimator.server.storage import packing, postgres
from kis_estimator.server.storage.migrate import POSTGRES_MIGRATIONS, load_migrations
from kis_estimator.server.storage.postgres import PostgresStore
from kis_estimator.server.storage.repository import IdempotencyRecord, StorageError
from tests.integration.conftest import Served
from tests.integration.test_evidence_api import _s01, download, threads_that_pack
from tests.integration.test_evidence_api import create as create_s01
from tests.integration.test_mixed_quota import create, mixed, quota
from tests.integration.test_storage_contract import (
    T0,
    draft,
    make_evidence,
    make_record,
    new_create,
    pg_database,
    read_chain,
    store_committed,
    verify,
)

JOIN_TIMEOUT_S = 60.0
# Fixed signing key: load_keyring would otherwise create its key file beside a SQLite path.
EVIDENCE_KEYS = "k1:" + "5a" * 32


@pytest.fixture
def pg_url() -> Iterator[str]:
    with pg_database() as url:
        yield url


def start_on_postgres(url: str, *, clock: Clock | None = None) -> Served:
    """conftest.start_app with a PostgreSQL ``database_url`` (start_app always sets a SQLite one)."""
    settings = Settings(database_url=url, shutdown_grace_s=5.0, evidence_keys=EVIDENCE_KEYS)
    app = build_app(settings, address="127.0.0.1:0", metrics_address="127.0.0.1:0", clock=clock)
    app.start()
    tokens = {role.value: app.deps.tokens.create(role, f"test-{role.value.lower()}").token for role in Role}
    return Served(app=app, address=f"127.0.0.1:{app.port}", tokens=tokens)


def test_the_forty_regression_cases_pass_and_the_audit_chain_verifies(pg_url: str) -> None:
    served = start_on_postgres(pg_url)
    channel = grpc.insecure_channel(served.address)
    try:
        assert isinstance(served.app.store, PostgresStore)
        results = run_suites(GrpcCaller(channel, served.tokens), ("regression",), run="")
        assert len(results) == 40
        assert {r.case_id: r.failures for r in results if not r.passed} == {}
        checked, broken = served.app.deps.admin.verify_audit()
        assert broken is None
        assert checked >= 40  # at least one event per case, plus the token creations
    finally:
        channel.close()
        served.app.stop(0)


def fire_fifty_mixed_creates(replicas: list[Served]) -> list[Outcome]:
    """50 MIXED creates released together, spread round-robin over ``replicas``."""
    results: list[Outcome] = []
    lock = threading.Lock()
    start = threading.Barrier(50)

    def fire(i: int) -> None:
        start.wait(timeout=JOIN_TIMEOUT_S)
        outcome, _ = create(replicas[i % len(replicas)], mixed(f"mixed-{i}"))
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=JOIN_TIMEOUT_S)
    return results


def test_fifty_concurrent_mixed_creates_accept_exactly_two(pg_url: str) -> None:
    served = start_on_postgres(pg_url, clock=ManualClock(datetime(2031, 3, 10, 9, 0, tzinfo=KST)))
    try:
        results = fire_fifty_mixed_creates([served])
        codes = sorted(r.code for r in results)
        assert codes == ["OK"] * 2 + ["RESOURCE_EXHAUSTED"] * 48
        refused = [r for r in results if r.code == "RESOURCE_EXHAUSTED"]
        assert all(r.violations[0]["code"] == "MIXED_QUOTA_EXCEEDED" for r in refused)
        assert {(r.error_info["used"], r.error_info["quota"]) for r in refused} == {("2", "2")}
        assert (quota(served, "2031-03").used, quota(served, "2031-03").quota) == (2, 2)
        checked, broken = served.app.deps.admin.verify_audit()
        # 2 accepted + 48 refused creates, each audited, after the 4 token creations
        assert (checked, broken) == (len(Role) + 50, None)
    finally:
        served.app.stop(0)


def test_two_replicas_on_one_database_share_the_quota_and_the_chain(pg_url: str) -> None:
    # Two stores, two in-process write locks: only the advisory lock serialises their writers.
    clock = ManualClock(datetime(2031, 4, 10, 9, 0, tzinfo=KST))
    first = start_on_postgres(pg_url, clock=clock)
    second = start_on_postgres(pg_url, clock=clock)
    try:
        codes = sorted(r.code for r in fire_fifty_mixed_creates([first, second]))
        assert codes == ["OK"] * 2 + ["RESOURCE_EXHAUSTED"] * 48
        assert quota(second, "2031-04").used == 2
        assert first.app.deps.admin.verify_audit() == (2 * len(Role) + 50, None)
    finally:
        first.app.stop(0)
        second.app.stop(0)


# --------------------------------------------------------------------------- PostgreSQL-only store behaviour


def terminate_other_sessions(url: str) -> int:
    """What a restart or ``idle_session_timeout`` does to the database's other sessions: FATAL
    57P01, then close. Returns how many, once they are gone (each sent its FATAL before it left
    ``pg_stat_activity``, so a client connected directly has it on its socket by then)."""
    others = " FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    with psycopg.connect(url, autocommit=True) as admin:
        row = admin.execute("SELECT count(pg_terminate_backend(pid))" + others).fetchone()
        deadline = time.monotonic() + 10
        while admin.execute("SELECT count(*)" + others).fetchone() != (0,):
            assert time.monotonic() < deadline, "the terminated sessions did not end"
            time.sleep(0.02)
    return 0 if row is None else int(row[0])


def test_pooled_connections_killed_by_the_server_are_replaced(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    try:
        with store.unit_of_work(read_only=True) as uow:  # the pool now holds an idle connection
            uow.estimates.get("E0")
        assert terminate_other_sessions(pg_url) >= 1  # a server restart or an idle timeout
        with store.unit_of_work() as uow:
            uow.estimates.add(make_record("E1"))
            uow.commit()
        with store.unit_of_work() as uow:
            terminate_other_sessions(pg_url)  # lost in the middle of a unit: retry the whole unit
            with pytest.raises(StorageError) as caught:
                uow.estimates.get("E1")
            assert caught.value.retryable
        with store.unit_of_work(read_only=True) as uow:
            assert uow.estimates.get("E1") == make_record("E1")
    finally:
        store.close()


def test_a_creates_document_and_bundle_arrive_packed_and_the_database_keeps_them_as_they_are(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 0005 and storage/packing.py: the replica packs the document and the evidence ZIP
    (zstd), on the request's thread, not on the group commit's writer under the write lock; the
    database stores the frames without compressing them again (the stored reply keeps lz4); what
    is read back, and downloaded, is the bytes the create made."""
    packed_on = threads_that_pack(monkeypatch)
    served = start_on_postgres(pg_url)
    try:
        estimate_id = create_s01(served, _s01("packed-")).estimate_id
        bundle, _ = download(served, estimate_id)
    finally:
        served.app.stop(0)
    assert len(packed_on) == 2 and "group-commit" not in packed_on, packed_on
    with psycopg.connect(pg_url, autocommit=True) as conn:
        columns = conn.execute(
            "SELECT attrelid::regclass::text || '.' || attname, atttypid::regtype::text, attcompression,"
            " attstorage FROM pg_attribute WHERE (attrelid, attname) IN (('evidence'::regclass, 'bundle'),"
            " ('estimates'::regclass, 'document'), ('idempotency'::regclass, 'response'))"
        ).fetchall()
        assert sorted(columns) == [
            ("estimates.document", "bytea", "l", "e"),  # e: EXTERNAL, never compressed again
            ("evidence.bundle", "bytea", "l", "e"),
            ("idempotency.response", "bytea", "l", "x"),
        ]
        stored = conn.execute(
            "SELECT e.document, pg_column_compression(e.document), v.bundle, pg_column_compression(v.bundle),"
            " v.size_bytes, v.sha256 FROM estimates e JOIN evidence v USING (estimate_id)"
            " WHERE estimate_id = %s",
            (estimate_id,),
        ).fetchone()
    assert stored is not None
    document, document_compression, packed_bundle, bundle_compression, size_bytes, sha256 = stored
    assert document_compression is None and bundle_compression is None
    assert document[:4] == packed_bundle[:4] == packing.ZSTD_MAGIC
    assert json.loads(packing.unpack(document, "document"))["estimate_id"] == estimate_id
    assert len(packed_bundle) * 3 < size_bytes  # the ZIP's STORED JSON entries: at least threefold
    assert len(bundle) == size_bytes and hashlib.sha256(bundle).hexdigest() == sha256
    assert packing.unpack(packed_bundle, "bundle") == bundle


def test_values_stored_before_0005_read_back_the_same_and_new_ones_are_packed(pg_url: str) -> None:
    """A database written at schema 3 (bundle uncompressed) and 4 (lz4) keeps its rows through
    0005's type change, read back byte for byte; an old row's document stays lz4-compressed, and the
    bundle check still holds an unpacked bundle to its size."""
    migrations = load_migrations(package_dir=POSTGRES_MIGRATIONS)
    for schema, estimate_id in ((3, "E3"), (4, "E4")):
        old = PostgresStore(pg_url, migrations=migrations[:schema])
        try:
            assert not old.packs_large_values
            with old.unit_of_work() as uow:
                uow.estimates.add(make_record(estimate_id))
                uow.evidence.add(make_evidence(estimate_id, 1))
                uow.commit()
        finally:
            old.close()
    upgraded = PostgresStore(pg_url)
    try:
        assert upgraded.packs_large_values
        with upgraded.unit_of_work() as uow:
            uow.estimates.add(make_record("E5"))
            uow.evidence.add(make_evidence("E5", 1))
            uow.evidence.add(make_evidence("E4", 2))
            uow.commit()
        with upgraded.unit_of_work(read_only=True) as uow:
            for estimate_id in ("E3", "E4", "E5"):
                assert uow.estimates.get(estimate_id) == make_record(estimate_id)
                assert uow.evidence.get(estimate_id, 1) == make_evidence(estimate_id, 1)
            assert uow.evidence.get("E4", 2) == make_evidence("E4", 2)
    finally:
        upgraded.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        stored = conn.execute(
            "SELECT estimate_id, revision, pg_column_compression(bundle), substring(bundle FROM 1 FOR 4)"
            " FROM evidence ORDER BY estimate_id, revision"
        ).fetchall()
        magic = packing.ZSTD_MAGIC
        assert [(e, r, c, m == magic) for e, r, c, m in stored] == [
            ("E3", 1, None, False),  # as 0002 stored it: uncompressed
            ("E4", 1, "lz4", False),  # as 0004 stored it
            ("E4", 2, None, True),  # packed by the replica, not compressed again
            ("E5", 1, None, True),
        ]
        documents = conn.execute(
            "SELECT estimate_id, pg_column_compression(document), substring(document FROM 1 FOR 4)"
            " FROM estimates ORDER BY estimate_id"
        ).fetchall()
        assert [(e, c, m == magic) for e, c, m in documents] == [
            ("E3", "lz4", False),  # 0005's rewrite compresses the converted text as the column did
            ("E4", "lz4", False),
            ("E5", None, True),
        ]
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE evidence SET size_bytes = size_bytes + 1 WHERE estimate_id = 'E3'")


def test_a_corrupt_packed_value_is_a_storage_error_not_a_crash(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    try:
        with store.unit_of_work() as uow:
            uow.estimates.add(make_record("E1"))
            uow.evidence.add(make_evidence("E1", 1))
            uow.commit()
        with psycopg.connect(pg_url, autocommit=True) as conn:  # a frame cut short, as a bad disk would
            conn.execute("UPDATE estimates SET document = substring(document FROM 1 FOR 40)")
            conn.execute("UPDATE evidence SET bundle = substring(bundle FROM 1 FOR 40)")
        with store.unit_of_work(read_only=True) as uow:
            with pytest.raises(StorageError, match="estimate E1: stored document: corrupt packed value"):
                uow.estimates.get("E1")
            with pytest.raises(StorageError, match="evidence of estimate E1: corrupt packed value"):
                uow.evidence.get("E1", 1)
    finally:
        store.close()


def test_commit_after_a_failed_statement_is_refused_not_silently_rolled_back(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    try:
        with store.unit_of_work() as uow:
            uow.estimates.add(make_record("E1"))
            with pytest.raises(StorageError):  # foreign key: PostgreSQL aborts the transaction
                uow.idempotency.add(IdempotencyRecord("rid-1", "h", "E-missing", b"x"), T0)
            with pytest.raises(StorageError, match="cannot commit"):
                uow.commit()
        with store.unit_of_work(read_only=True) as uow:
            assert uow.estimates.get("E1") is None
    finally:
        store.close()


def _messages_sent(trace: str) -> list[str]:
    """The frontend's protocol messages in a libpq trace (``F <length> <message> …`` lines)."""
    return [line.split("\t")[2] for line in trace.splitlines() if line.startswith("F\t")]


def test_a_batch_of_creates_costs_two_round_trips_and_its_inserts_wait_for_no_reply(
    pg_url: str, tmp_path: Path
) -> None:
    """The group commit's write on PostgreSQL: the unit's BEGIN, lock and head read are one simple
    query; the inserts and the COMMIT go out in one pipeline with a single Sync. Any statement
    more, or one waited for alone, is one more time the writer gives up the GIL holding the lock."""
    store = PostgresStore(pg_url)
    trace_file = tmp_path / "libpq.trace"
    try:
        with store.unit_of_work() as uow:  # a head to read (an empty chain reads its anchor too)
            uow.audit.append(draft(0))
            uow.commit()
        conn, _ = store.acquire()
        store.release(conn, healthy=True)  # on top of the pool: the next unit takes it
        with trace_file.open("w") as trace:
            conn.pgconn.trace(trace.fileno())
            conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
            with store.unit_of_work() as uow:
                creates = [new_create(f"E{n}", request_id=f"rid-{n}") for n in range(3)]
                assert uow.store_creates([rows for rows, _ in creates], [d for _, d in creates])
            conn.pgconn.untrace()
        sent = _messages_sent(trace_file.read_text())
        assert sent.count("Query") == 1  # BEGIN; lock; the head
        assert sent.count("Sync") == 1  # the pipeline: 4 inserts and the COMMIT, then one Sync
        assert sent.count("Execute") == 5
        assert verify(store) is None
        assert [e.estimate_id for e in read_chain(store)[2]] == [None, "E0", "E1", "E2"]
    finally:
        store.close()


@pytest.mark.parametrize("pipeline", [True, False], ids=["pipeline", "libpq_without_pipeline"])
def test_a_batch_with_a_taken_key_commits_nothing_with_or_without_pipeline_mode(
    pg_url: str, pipeline: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pipeline mode needs libpq 14; with an older one the same statements run one by one, and a
    taken key must still leave nothing of the batch and the connection fit for the pool."""
    monkeypatch.setattr(postgres, "_PIPELINE", pipeline)
    store = PostgresStore(pg_url)
    try:
        first = new_create("E1", request_id="rid-1")
        with store.unit_of_work() as uow:
            assert uow.store_creates([first[0]], [first[1]])
        batch = [new_create("E2"), new_create("E3", request_id="rid-1"), new_create("E4")]
        with store.unit_of_work() as uow:
            assert not uow.store_creates([rows for rows, _ in batch], [d for _, d in batch])
        assert [e.estimate_id for e in read_chain(store)[2]] == ["E1"]
        again = [new_create("E2"), new_create("E4")]
        with store.unit_of_work() as uow:  # the pooled connection is clean: the next batch lands
            assert uow.store_creates([rows for rows, _ in again], [d for _, d in again])
        assert [e.estimate_id for e in read_chain(store)[2]] == ["E1", "E2", "E4"]
        assert verify(store) is None
    finally:
        store.close()


def test_a_batch_aborted_by_a_taken_key_leaves_no_phantom_prepared_statement(pg_url: str) -> None:
    """The server skips every statement after the failed one in an aborted pipeline, their Parse
    too. A client that had decided to prepare one of them (psycopg does, on a statement's fifth use
    on a connection) would believe it prepared, and the connection's next use of it would fail
    with "prepared statement … does not exist". The aborted batch is tried at every count of
    earlier batches of its own size on a fresh connection, so each of its statements (the INSERTs,
    which psycopg prepares, and the COMMIT) meets its fifth use once."""
    taken = new_create("T0", request_id="rid-taken")
    first = PostgresStore(pg_url)
    try:
        with first.unit_of_work() as uow:
            assert uow.store_creates([taken[0]], [taken[1]])
    finally:
        first.close()
    for earlier in range(7):
        store = PostgresStore(pg_url, max_idle_connections=1)  # every unit on the one connection
        try:
            for i in range(earlier):
                assert store_committed(store, new_create(f"K{earlier}-{i}a"), new_create(f"K{earlier}-{i}b"))
            batch = [new_create(f"K{earlier}-a"), new_create(f"K{earlier}-b", request_id="rid-taken")]
            with store.unit_of_work() as uow:
                assert not uow.store_creates([rows for rows, _ in batch], [d for _, d in batch])
            for i in range(3):  # the same store: batches of both sizes and plain units, each with a COMMIT
                create = new_create(f"K{earlier}-after{i}")
                with store.unit_of_work() as uow:
                    assert uow.store_creates([create[0]], [create[1]])
                assert store_committed(
                    store, new_create(f"K{earlier}-after{i}a"), new_create(f"K{earlier}-after{i}b")
                )
                with store.unit_of_work() as uow:
                    uow.audit.append(draft(i))
                    uow.commit()
            assert verify(store) is None
        finally:
            store.close()


def test_a_connection_prepares_the_group_commit_inserts_of_small_batches(pg_url: str) -> None:
    """Each batch size's INSERTs are prepared on a connection's fifth batch of that size, so the
    server parses and plans them once per connection, not once per batch (the server's CPU per
    create, bench/README.md); a batch larger than PREPARED_BATCH_MAX is not, so the plans a
    connection keeps stay bounded. What they store is unchanged."""
    store = PostgresStore(pg_url, max_idle_connections=1)  # every unit on the one connection
    small, large = 3, postgres.PREPARED_BATCH_MAX + 1
    try:
        for i in range(6):
            for size in (small, large):
                batch = [
                    new_create(f"P{size}-{i}-{j}", request_id=f"rid-P{size}-{i}-{j}") for j in range(size)
                ]
                assert store_committed(store, *batch)
        conn, _ = store.acquire()
        try:
            prepared = [row[0] for row in conn.execute("SELECT statement FROM pg_prepared_statements")]
        finally:
            store.release(conn, healthy=True)
        inserts = [text for text in prepared if text.startswith("INSERT INTO")]
        assert sorted(text.split()[2] for text in inserts) == [
            "audit_events",
            "estimates",
            "evidence",
            "idempotency",
        ]
        assert {text.count("), (") + 1 for text in inserts} == {small}
        with store.lookup() as uow:
            assert uow.estimates.get(f"P{large}-5-{large - 1}") is not None
        chain = [e.estimate_id for e in read_chain(store)[2]]
        assert chain[-large:] == [f"P{large}-5-{j}" for j in range(large)]
        assert len(chain) == 6 * (small + large)
        assert verify(store) is None
    finally:
        store.close()
