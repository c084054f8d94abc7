"""Acceptance against a live server leaves no trace (the sandbox of server/service/sandbox.py).

A real ``kis-estimator serve`` process with data of its own: ``regress`` three times and ``smoke``
three times with the CLI, each run 40/40 and 3/3, and afterwards the month's MIXED quota, its report,
the estimates a user can list and the domain metrics are exactly what they were. Then the edges: a
malformed run id, the sandbox limit, a server with sandboxes disabled, concurrent runs, and the same
on PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from kis_estimator.server.acceptance.runner import (
    GrpcCaller,
    SandboxUnavailable,
    outcome_of_error,
    run_smoke,
    run_suites,
)
from kis_estimator.server.gen.kis.estimator.v1 import admin_pb2 as admin_pb
from kis_estimator.server.gen.kis.estimator.v1 import admin_pb2_grpc as admin_grpc
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from kis_estimator.server.gen.kis.estimator.v1 import review_pb2 as review_pb
from kis_estimator.server.gen.kis.estimator.v1 import review_pb2_grpc as review_grpc
from tests.integration.conftest import Served, start_app
from tests.integration.test_postgres_service import start_on_postgres
from tests.integration.test_storage_contract import pg_database

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 30.0
MIXED = {
    "request_id": "prod-mixed-1",
    "brand": "MIXED",
    "mixed_reason": "retrofit of an existing panel",
    "installation": {"location": "INDOOR", "mount": "FLUSH"},
    "main": {"kind": "MCCB", "poles": 3, "trip_at": 100, "model": "ABN-103"},
    "branches": [{"kind": "MCCB", "poles": 3, "trip_at": 100, "qty": 2, "brand": "SANGDO"}],
    "accessories": {"enabled": False},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Live:
    target: str
    metrics_url: str
    token: str
    env: dict[str, str]


def _cli(live: Live, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "kis_estimator.server.cli",
            *args,
            "--target",
            live.target,
            "--token",
            live.token,
        ],
        env=live.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    port, metrics_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIS_")}
    env |= {
        "KIS_DATABASE_URL": f"sqlite:///{tmp_path / 'kis.db'}",
        "KIS_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
        "KIS_SANDBOX_MAX_OPEN": "3",
    }
    token = subprocess.run(
        [
            sys.executable,
            "-m",
            "kis_estimator.server.cli",
            "token",
            "create",
            "--role",
            "ADMIN",
            "--name",
            "release",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    with (tmp_path / "server.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kis_estimator.server.cli", "serve", "--listen", f"127.0.0.1:{port}"],
            env=env,
            cwd=REPO,
            stderr=log,
        )
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                grpc.channel_ready_future(channel).result(timeout=TIMEOUT_S)
            yield Live(f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics", token, env)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def _production_view(target: str, token: str) -> dict[str, object]:
    """What users and the report see of the current month."""
    meta = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(target) as channel:
        quota = admin_grpc.AdminServiceStub(channel).GetMixedQuota(
            admin_pb.GetMixedQuotaRequest(), metadata=meta, timeout=TIMEOUT_S
        )
        listed = pb_grpc.EstimatorServiceStub(channel).ListEstimates(
            pb.ListEstimatesRequest(page_size=100), metadata=meta, timeout=TIMEOUT_S
        )
        report = review_grpc.ReviewServiceStub(channel).GetMetrics(
            review_pb.GetMetricsRequest(), metadata=meta, timeout=TIMEOUT_S
        )
    return {
        "quota": (quota.used, quota.quota),
        "estimates": sorted(e.estimate_id for e in listed.estimates),
        "report": report.SerializeToString(deterministic=True),
    }


def _domain_metrics(url: str) -> list[str]:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        text = response.read().decode()
    return sorted(
        line
        for line in text.splitlines()
        if line.startswith(
            ("kis_estimates_accepted_total", "kis_estimate_tat_seconds_count", "mixed_exceptions")
        )
    )


def _create_in_production(live: Live) -> None:
    """Real data first: one MIXED estimate uses 1 of the month's 2."""
    from google.protobuf import json_format

    meta = (("authorization", f"Bearer {live.token}"),)
    with grpc.insecure_channel(live.target) as channel:
        pb_grpc.EstimatorServiceStub(channel).CreateEstimate(
            json_format.ParseDict(MIXED, pb.CreateEstimateRequest()), metadata=meta, timeout=TIMEOUT_S
        )


def test_regress_and_smoke_run_any_number_of_times_and_leave_no_trace(live: Live) -> None:
    _create_in_production(live)
    before = _production_view(live.target, live.token)
    assert before["quota"] == (1, 2) and len(before["estimates"]) == 1  # type: ignore[arg-type]
    metrics_before = _domain_metrics(live.metrics_url)
    for _ in range(3):
        regress = _cli(live, "regress")
        assert regress.returncode == 0, regress.stdout + regress.stderr
        assert "regression: 40/40 passed" in regress.stdout
        smoke = _cli(live, "smoke")
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
        assert "smoke: 3/3 passed" in smoke.stdout
    assert _production_view(live.target, live.token) == before
    assert _domain_metrics(live.metrics_url) == metrics_before


def test_two_runs_at_once_both_pass(live: Live) -> None:
    results: list[subprocess.CompletedProcess[str]] = []
    threads = [threading.Thread(target=lambda: results.append(_cli(live, "regress"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert [r.returncode for r in results] == [0, 0], [r.stdout[-500:] for r in results]


def test_the_real_store_is_still_reachable_on_purpose(live: Live) -> None:
    regress = _cli(live, "regress", "--no-sandbox")
    assert "regression: 40/40 passed" in regress.stdout  # the store was empty
    assert _production_view(live.target, live.token)["quota"] == (2, 2)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = start_app(tmp_path, sandbox_max_open=2)
    yield s
    s.app.stop(0)


def _quota_call(served: Served, sandbox: str) -> grpc.RpcError | None:
    with grpc.insecure_channel(served.address) as channel:
        try:
            admin_grpc.AdminServiceStub(channel).GetMixedQuota(
                admin_pb.GetMixedQuotaRequest(),
                metadata=(*served.metadata("VIEWER"), ("kis-sandbox", sandbox)),
                timeout=TIMEOUT_S,
            )
        except grpc.RpcError as err:
            return err
    return None


@pytest.mark.parametrize("run_id", ["short", "x" * 65, "has space-123", "a/slash-1234"])
def test_a_malformed_run_id_is_invalid_argument_with_its_field(served: Served, run_id: str) -> None:
    err = _quota_call(served, run_id)
    assert err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT
    outcome = outcome_of_error(err)
    assert [(v["code"], v["field"]) for v in outcome.violations] == [
        ("SANDBOX_INVALID", "metadata.kis-sandbox")
    ]


def test_the_sandbox_limit_is_resource_exhausted_and_idle_sandboxes_close(served: Served) -> None:
    assert _quota_call(served, "run-aaaaaaaa") is None
    assert _quota_call(served, "run-bbbbbbbb") is None
    assert _quota_call(served, "run-aaaaaaaa") is None  # an open one is reused
    err = _quota_call(served, "run-cccccccc")
    assert err is not None and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert outcome_of_error(err).violations[0]["code"] == "SANDBOX_LIMIT"
    sandboxes = served.app.deps.sandboxes
    assert sandboxes is not None and sandboxes.open_count() == 2
    audit = served.app.deps.admin.audit_events(
        50, "", action="SANDBOX_OPENED", estimate_id=None, since=None, until=None
    )
    assert len(audit.events) == 2


def test_a_server_without_sandboxes_refuses_them_and_the_runner_stops(tmp_path: Path) -> None:
    s = start_app(tmp_path, sandbox_max_open=0)
    try:
        err = _quota_call(s, "run-aaaaaaaa")
        assert err is not None and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with grpc.insecure_channel(s.address) as channel:
            caller = GrpcCaller(channel, s.tokens, sandbox="run-aaaaaaaa")
            with pytest.raises(SandboxUnavailable, match=r"SANDBOX_LIMIT|RESOURCE_EXHAUSTED"):
                caller.open_sandbox()
    finally:
        s.app.stop(0)


def test_on_postgresql_the_suites_leave_no_trace_either() -> None:
    with pg_database() as url:
        served = start_on_postgres(url)
        try:
            before = _production_view(served.address, served.tokens["ADMIN"])
            for _ in range(2):
                with (
                    grpc.insecure_channel(served.address) as channel,
                    GrpcCaller(channel, served.tokens, sandbox=f"pg-run-{_}-abcdef") as caller,
                ):
                    results = run_suites(caller, ("regression",))
                    assert {r.case_id: r.failures for r in results if not r.passed} == {}
                    assert all(r.passed for r in run_smoke(channel, caller))
            assert _production_view(served.address, served.tokens["ADMIN"]) == before
        finally:
            served.app.stop(0)
