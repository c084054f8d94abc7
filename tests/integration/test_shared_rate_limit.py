"""The per-token request budget is one budget across replicas on PostgreSQL, exact under concurrency.

Two real servers on one PostgreSQL database (each with its own in-memory fallback), a token's budget
of 20 requests an hour: the 21st call is RATE_LIMITED on whichever replica receives it, also when 40
calls race on both. While the database cannot be reached, each replica falls back to its own
in-memory budget instead of refusing everyone or letting everything through.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import psycopg
import pytest

from kis_estimator.server.acceptance.runner import outcome_of_error
from kis_estimator.server.clock import SystemClock
from kis_estimator.server.engine.roles import Role
from kis_estimator.server.gen.kis.estimator.v1 import admin_pb2 as admin_pb
from kis_estimator.server.gen.kis.estimator.v1 import admin_pb2_grpc as admin_grpc
from kis_estimator.server.main import build_app
from kis_estimator.server.service.rate_limit import RateLimiter
from kis_estimator.server.service.shared_rate_limit import SharedRateLimiter
from kis_estimator.server.service.tokens import TokenService, token_digest
from kis_estimator.server.settings import Settings
from kis_estimator.server.storage.postgres import _SPEND_BUDGET, PostgresStore
from kis_estimator.server.storage.repository import StorageError
from kis_estimator.server.storage.sql_repositories import TokenRepository
from tests.integration.conftest import TIMEOUT_S, Served
from tests.integration.test_postgres_service import EVIDENCE_KEYS
from tests.integration.test_storage_contract import pg_database

BUDGET = 20


def replica(url: str, tokens: dict[str, str] | None = None) -> Served:
    settings = Settings(
        database_url=url, shutdown_grace_s=1.0, evidence_keys=EVIDENCE_KEYS, rate_limit_per_hour=BUDGET
    )
    app = build_app(settings, address="127.0.0.1:0", metrics_address="127.0.0.1:0")
    app.start()
    if tokens is None:  # the first replica issues the tokens; they live in the shared database
        tokens = {
            role.value: app.deps.tokens.create(role, f"shared-{role.value.lower()}").token for role in Role
        }
    return Served(app=app, address=f"127.0.0.1:{app.port}", tokens=tokens)


@pytest.fixture
def two_replicas() -> Iterator[tuple[Served, Served]]:
    with pg_database() as url:
        first = replica(url)
        second = replica(url, first.tokens)
        try:
            yield first, second
        finally:
            second.app.stop(0)
            first.app.stop(0)


def quota_call(served: Served, role: str = "VIEWER") -> str:
    """One cheap authenticated call: OK or the refusal's reason."""
    stub = admin_grpc.AdminServiceStub(grpc.insecure_channel(served.address))
    try:
        stub.GetMixedQuota(admin_pb.GetMixedQuotaRequest(), metadata=served.metadata(role), timeout=TIMEOUT_S)
    except grpc.RpcError as err:
        return outcome_of_error(err).error_info.get("reason", err.code().name)
    return "OK"


def test_the_twenty_first_call_anywhere_is_rate_limited(two_replicas: tuple[Served, Served]) -> None:
    first, second = two_replicas
    assert [quota_call(first if i % 2 else second) for i in range(BUDGET)] == ["OK"] * BUDGET
    assert quota_call(first) == "RATE_LIMITED"
    assert quota_call(second) == "RATE_LIMITED"
    # another token's budget is its own
    assert quota_call(second, "ADMIN") == "OK"


def test_racing_calls_on_both_replicas_get_exactly_the_budget(two_replicas: tuple[Served, Served]) -> None:
    first, second = two_replicas
    start = threading.Barrier(8)

    def call(i: int) -> str:
        if i < 8:
            start.wait()
        return quota_call(first if i % 2 else second, "ESTIMATOR")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(2 * BUDGET)))
    assert results.count("OK") == BUDGET, results
    assert results.count("RATE_LIMITED") == BUDGET, results


def test_a_database_outage_falls_back_to_the_replicas_own_budget() -> None:
    calls: list[str] = []
    down = threading.Event()

    def spend(key: str, budget: int, window_s: float) -> tuple[bool, float]:
        calls.append(key)
        if down.is_set():
            raise StorageError("connection refused", retryable=True)
        return True, 0.0

    limiter = SharedRateLimiter(spend, 3, 3600.0, RateLimiter(3, 3600.0, lambda: 0.0))
    assert [limiter.check("tok").allowed for _ in range(5)] == [True] * 5  # the shared table decides
    down.set()
    assert [limiter.check("tok").allowed for _ in range(4)] == [True, True, True, False]  # local 3/hour
    assert calls[0] == "token:tok"


def test_the_shared_bucket_refills_from_the_database_clock() -> None:
    with pg_database() as url:
        store = PostgresStore(url)
        try:
            assert store.spend_budget("k", 2, 3600.0) == (True, 0.0)
            assert store.spend_budget("k", 2, 3600.0) == (True, 0.0)
            allowed, retry_after_s = store.spend_budget("k", 2, 3600.0)
            assert not allowed
            assert 1790 < retry_after_s <= 1800  # one request back every 1800 s
            assert store.spend_budget("other", 2, 3600.0) == (True, 0.0)
            # a fast refill: 10 per second → one request is back 0.1 s after the bucket was empty
            assert store.spend_budget("fast", 1, 0.1)[0]
            time.sleep(0.15)
            assert store.spend_budget("fast", 1, 0.1)[0]
        finally:
            store.close()


def test_spending_commits_without_a_flush_and_leaves_the_pooled_connection_as_it_was() -> None:
    """The spend's transaction alone runs ``synchronous_commit`` off: the connection goes back to the
    pool in the server's own setting, so the next write unit on it still waits for its flush."""
    with pg_database() as url:
        store = PostgresStore(url, max_idle_connections=1)
        try:
            conn, _ = store.acquire()
            default = conn.execute("SHOW synchronous_commit").fetchone()
            store.release(conn, healthy=True)
            assert default == ("on",)
            assert store.spend_budget("k", 5, 3600.0) == (True, 0.0)
            conn, pooled = store.acquire()  # the one idle connection: the spend's
            try:
                assert pooled
                assert conn.execute("SHOW synchronous_commit").fetchone() == default
                assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                row = conn.execute("SELECT tokens FROM rate_buckets WHERE bucket_key = 'k'").fetchone()
                assert row is not None and float(row[0]) == pytest.approx(4.0, abs=0.01)  # committed
            finally:
                store.release(conn, healthy=True)
        finally:
            store.close()


def test_the_spend_statement_runs_its_own_transaction_without_a_flush_wait() -> None:
    """The spend is one statement whose CTE sets ``synchronous_commit`` off for its transaction
    only: the same statement, returning the setting instead of the bucket, sees "off" (the commit
    is what reads it), and the session's setting after it is the server's again."""
    probe = _SPEND_BUDGET.replace(
        "RETURNING tokens, last_allowed", "RETURNING current_setting('synchronous_commit')"
    )
    assert probe != _SPEND_BUDGET
    with pg_database() as url:
        PostgresStore(url).close()  # the schema
        with psycopg.connect(url, autocommit=True) as conn:
            for _ in range(7):  # past psycopg's prepare threshold: the prepared statement too
                params = {"key": "k", "budget": 5.0, "rate": 1.0}
                assert conn.execute(probe, params).fetchone() == ("off",)
                assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)


def test_the_token_look_up_spends_only_for_a_live_token_whose_role_may_call() -> None:
    """``find_token_and_spend``: no token or a revoked one → nothing found, nothing spent; a role
    that may not call → the token, nothing spent; else the spend, on the same bucket
    ``spend_budget`` keeps for the token (``token:<id>``)."""
    with pg_database() as url:
        store = PostgresStore(url)
        try:
            tokens = TokenService(store, SystemClock())
            viewer = tokens.create(Role.VIEWER, "viewer")
            digest = token_digest(viewer.token)

            def buckets() -> list[tuple[str, float]]:
                with psycopg.connect(url, autocommit=True) as conn:
                    rows = conn.execute("SELECT bucket_key, tokens FROM rate_buckets ORDER BY 1").fetchall()
                return [(key, round(float(level))) for key, level in rows]

            spend = store.find_token_and_spend
            assert spend(token_digest("kis_unknown"), ["VIEWER"], "token:", 3, 3600.0) == (None, None)
            found, spent = spend(digest, ["ADMIN", "ESTIMATOR"], "token:", 3, 3600.0)
            assert found is not None and (found.token_id, found.role, spent) == (
                viewer.token_id,
                "VIEWER",
                None,
            )
            assert buckets() == []  # a role that may not call spends nothing
            assert spend(digest, ["VIEWER"], "token:", 3, 3600.0)[1] == (True, 0.0)
            assert store.spend_budget(f"token:{viewer.token_id}", 3, 3600.0) == (True, 0.0)  # one bucket
            assert spend(digest, ["VIEWER"], "token:", 3, 3600.0)[1] == (True, 0.0)
            found, spent = spend(digest, ["VIEWER"], "token:", 3, 3600.0)
            assert found is not None and spent is not None and not spent[0] and 1190 < spent[1] <= 1200
            assert buckets() == [(f"token:{viewer.token_id}", 0)]
            assert tokens.revoke(viewer.token_id)
            assert spend(digest, ["VIEWER"], "token:", 3, 3600.0) == (None, None)
            assert buckets() == [(f"token:{viewer.token_id}", 0)]
        finally:
            store.close()


def test_an_authenticated_call_looks_its_token_up_and_spends_in_one_statement(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On PostgreSQL the interceptor neither reads the token on its own nor spends separately; a
    refused role spends nothing and is still PERMISSION_DENIED."""
    counted: dict[str, int] = {"find_token_and_spend": 0, "spend_budget": 0, "find_by_hash": 0}
    for cls, name in (
        (PostgresStore, "find_token_and_spend"),
        (PostgresStore, "spend_budget"),
        (TokenRepository, "find_by_hash"),
    ):
        original = getattr(cls, name)

        def spy(*args: Any, __original: Any = original, __name: str = name, **kwargs: Any) -> Any:
            counted[__name] += 1
            return __original(*args, **kwargs)

        monkeypatch.setattr(cls, name, spy)
    with pg_database() as url:
        served = replica(url)
        try:
            counted.update(dict.fromkeys(counted, 0))  # creating the tokens read nothing of these
            assert [quota_call(served) for _ in range(3)] == ["OK"] * 3
            assert counted == {"find_token_and_spend": 3, "spend_budget": 0, "find_by_hash": 0}
            stub = admin_grpc.AdminServiceStub(grpc.insecure_channel(served.address))
            with pytest.raises(grpc.RpcError) as refused:  # VIEWER may not list the audit log
                stub.ListAuditEvents(
                    admin_pb.ListAuditEventsRequest(), metadata=served.metadata("VIEWER"), timeout=TIMEOUT_S
                )
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert counted["find_token_and_spend"] == 4 and counted["spend_budget"] == 0
            assert [quota_call(served) for _ in range(BUDGET)].count("RATE_LIMITED") == 3  # 20 - 3 left
        finally:
            served.app.stop(0)
