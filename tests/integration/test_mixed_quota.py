"""MIXED quota (docs/pricing-rules.md §12): atomic per KST month, grants, replays, the month boundary."""

from __future__ import annotations

import copy
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from kis_estimator.server.acceptance.runner import Outcome, outcome_of_error
from kis_estimator.server.clock import ManualClock
from kis_estimator.server.engine.months import KST
from kis_estimator.server.gen.kis.estimator.v1 import admin_pb2 as admin_pb
from kis_estimator.server.gen.kis.estimator.v1 import admin_pb2_grpc as admin_grpc
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from tests.integration.conftest import TIMEOUT_S, Served, start_app

ROOT = Path(__file__).resolve().parents[2]
M31 = json.loads((ROOT / "server/acceptance/cases/M31.json").read_text())["steps"][0]["request"]


def mixed(request_id: str) -> pb.CreateEstimateRequest:
    data: dict[str, Any] = copy.deepcopy(M31)
    data["request_id"] = request_id
    return json_format.ParseDict(data, pb.CreateEstimateRequest())


def create(served: Served, request: pb.CreateEstimateRequest) -> tuple[Outcome, Any]:
    stub = pb_grpc.EstimatorServiceStub(grpc.insecure_channel(served.address))
    try:
        return Outcome("OK"), stub.CreateEstimate(
            request, metadata=served.metadata("ESTIMATOR"), timeout=TIMEOUT_S
        )
    except grpc.RpcError as err:
        return outcome_of_error(err), None


def quota(served: Served, month: str) -> admin_pb.GetMixedQuotaResponse:
    stub = admin_grpc.AdminServiceStub(grpc.insecure_channel(served.address))
    return stub.GetMixedQuota(
        admin_pb.GetMixedQuotaRequest(month=month), metadata=served.metadata("VIEWER"), timeout=TIMEOUT_S
    )


def grant(served: Served, month: str) -> Outcome:
    stub = admin_grpc.AdminServiceStub(grpc.insecure_channel(served.address))
    try:
        stub.GrantMixedException(
            admin_pb.GrantMixedExceptionRequest(month=month, reason="hospital retrofit"),
            metadata=served.metadata("ADMIN"),
            timeout=TIMEOUT_S,
        )
    except grpc.RpcError as err:
        return outcome_of_error(err)
    return Outcome("OK")


def test_fifty_concurrent_mixed_creates_accept_exactly_two(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2031, 3, 10, 9, 0, tzinfo=KST))
    served = start_app(tmp_path, clock=clock)
    try:
        results: list[Outcome] = []
        lock = threading.Lock()
        start = threading.Barrier(50)

        def fire(i: int) -> None:
            start.wait(timeout=30)
            outcome, _ = create(served, mixed(f"mixed-{i}"))
            with lock:
                results.append(outcome)

        threads = [threading.Thread(target=fire, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        codes = sorted(r.code for r in results)
        assert codes == ["OK"] * 2 + ["RESOURCE_EXHAUSTED"] * 48
        refused = [r for r in results if r.code == "RESOURCE_EXHAUSTED"]
        assert all(r.violations[0]["code"] == "MIXED_QUOTA_EXCEEDED" for r in refused)
        assert {(r.error_info["month"], r.error_info["used"], r.error_info["quota"]) for r in refused} == {
            ("2031-03", "2", "2")
        }
        assert (quota(served, "2031-03").used, quota(served, "2031-03").quota) == (2, 2)
        blocked = served.app.metrics.registry.get_sample_value("kis_mixed_blocked_total")
        assert blocked == 48
    finally:
        served.app.stop(0)


def test_replays_do_not_count_and_a_grant_adds_exactly_one(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2031, 5, 2, 12, 0, tzinfo=KST))
    served = start_app(tmp_path, clock=clock)
    try:
        assert create(served, mixed("r-1"))[0].code == "OK"
        for _ in range(3):
            assert create(served, mixed("r-1"))[0].code == "OK"  # replays
        assert create(served, mixed("r-2"))[0].code == "OK"
        assert quota(served, "2031-05").used == 2
        refused, _ = create(served, mixed("r-3"))
        assert refused.code == "RESOURCE_EXHAUSTED"
        assert grant(served, "2031-05").code == "OK"
        assert (quota(served, "2031-05").used, quota(served, "2031-05").quota) == (2, 3)
        ok, reply = create(served, mixed("r-3"))
        assert ok.code == "OK" and reply.estimate.status == pb.ESTIMATE_STATUS_COMPLETED
        second = grant(served, "2031-05")
        assert second.code == "ALREADY_EXISTS"
        assert second.violations[0]["code"] == "MIXED_EXCEPTION_ALREADY_GRANTED"
        assert create(served, mixed("r-4"))[0].code == "RESOURCE_EXHAUSTED"
    finally:
        served.app.stop(0)


def test_month_boundary_is_kst_midnight(tmp_path: Path) -> None:
    last_second = datetime(2031, 6, 30, 23, 59, 59, tzinfo=KST)
    clock = ManualClock(last_second - timedelta(minutes=1))
    served = start_app(tmp_path, clock=clock)
    try:
        assert create(served, mixed("b-1"))[0].code == "OK"
        clock.set(last_second)
        assert create(served, mixed("b-2"))[0].code == "OK"
        assert create(served, mixed("b-3"))[0].code == "RESOURCE_EXHAUSTED"  # still June in KST
        clock.set(last_second + timedelta(seconds=1))  # 2031-07-01 00:00:00 KST = 06-30 15:00 UTC
        assert clock.now().astimezone(UTC).day == 30
        ok, _ = create(served, mixed("b-3"))
        assert ok.code == "OK"
        assert quota(served, "2031-06").used == 2 and quota(served, "2031-07").used == 1
    finally:
        served.app.stop(0)
