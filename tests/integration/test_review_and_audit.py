"""Review queue (docs/pricing-rules.md §11), reporting (§16.3), tamper-evident audit, tokens, rate limit."""

from __future__ import annotations

import copy
import json
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from kis_estimator.server.acceptance.runner import outcome_of_error
from kis_estimator.server.cli import main
from kis_estimator.server.clock import ManualClock
from kis_estimator.server.engine.months import KST
from kis_estimator.server.engine.roles import Role
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from kis_estimator.server.gen.kis.estimator.v1 import review_pb2 as review_pb
from kis_estimator.server.gen.kis.estimator.v1 import review_pb2_grpc as review_grpc
from tests.integration.conftest import TIMEOUT_S, Served, start_app

ROOT = Path(__file__).resolve().parents[2]
S19 = json.loads((ROOT / "server/acceptance/cases/S19.json").read_text())["steps"][0]["request"]
BASE = json.loads((ROOT / "server/acceptance/base.json").read_text())


def create(served: Served, data: dict[str, Any]) -> pb.Estimate:
    stub = pb_grpc.EstimatorServiceStub(grpc.insecure_channel(served.address))
    msg = json_format.ParseDict(copy.deepcopy(data), pb.CreateEstimateRequest())
    return stub.CreateEstimate(msg, metadata=served.metadata("ESTIMATOR"), timeout=TIMEOUT_S).estimate


def reviews(served: Served) -> review_grpc.ReviewServiceStub:
    return review_grpc.ReviewServiceStub(grpc.insecure_channel(served.address))


def _s19() -> dict[str, Any]:
    data: dict[str, Any] = copy.deepcopy(S19)
    data.pop("request_id", None)
    return data


def test_queue_complete_reject_and_report(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2031, 8, 1, 9, 0, tzinfo=KST))
    served = start_app(tmp_path, clock=clock)
    md = served.metadata("ESTIMATOR")
    try:
        done = create(served, BASE)
        first = create(served, _s19())
        clock.advance(timedelta(minutes=1))
        second = create(served, _s19())
        queue = reviews(served).ListReviewQueue(
            review_pb.ListReviewQueueRequest(), metadata=md, timeout=TIMEOUT_S
        )
        assert [i.estimate_id for i in queue.items] == [first.estimate_id, second.estimate_id]
        assert queue.items[0].review_reasons[0].question_ko and queue.items[0].age_seconds == 60

        with pytest.raises(grpc.RpcError) as incomplete:
            reviews(served).CompleteReview(
                review_pb.CompleteReviewRequest(estimate_id=first.estimate_id), metadata=md, timeout=TIMEOUT_S
            )
        assert outcome_of_error(incomplete.value).violations[0]["code"] == "REVIEW_INCOMPLETE"
        no_model = review_pb.ReviewResolution(reason_id="R1", unit_price_krw=15600)
        with pytest.raises(grpc.RpcError) as missing_model:
            reviews(served).CompleteReview(
                review_pb.CompleteReviewRequest(estimate_id=first.estimate_id, resolutions=[no_model]),
                metadata=md,
                timeout=TIMEOUT_S,
            )
        assert outcome_of_error(missing_model.value).violations[0]["field"] == "resolutions[0].model"

        clock.advance(timedelta(seconds=30))
        answer = review_pb.ReviewResolution(reason_id="R1", model="SBS-53", unit_price_krw=15600)
        reviewed = (
            reviews(served)
            .CompleteReview(
                review_pb.CompleteReviewRequest(
                    estimate_id=first.estimate_id, resolutions=[answer], comment="checked"
                ),
                metadata=md,
                timeout=TIMEOUT_S,
            )
            .estimate
        )
        assert reviewed.status == pb.ESTIMATE_STATUS_REVIEWED and reviewed.decision == pb.DECISION_OK
        assert reviewed.revision == 2
        assert (reviewed.totals.subtotal_krw, reviewed.totals.vat_krw, reviewed.totals.total_krw) == (
            432700,
            43270,
            475970,
        )
        assert reviewed.evidence.sha256 and reviewed.evidence.sha256 != first.evidence.sha256
        assert reviewed.sizing == first.sizing and reviewed.enclosure == first.enclosure

        with pytest.raises(grpc.RpcError) as again:
            reviews(served).CompleteReview(
                review_pb.CompleteReviewRequest(estimate_id=first.estimate_id, resolutions=[answer]),
                metadata=md,
                timeout=TIMEOUT_S,
            )
        assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        rejected = (
            reviews(served)
            .RejectEstimate(
                review_pb.RejectEstimateRequest(estimate_id=second.estimate_id, reason="customer cancelled"),
                metadata=md,
                timeout=TIMEOUT_S,
            )
            .estimate
        )
        assert rejected.status == pb.ESTIMATE_STATUS_REJECTED and rejected.decision == pb.DECISION_REJECT
        assert rejected.revision == 2

        report = reviews(served).GetMetrics(
            review_pb.GetMetricsRequest(month="2031-08"),
            metadata=served.metadata("VIEWER"),
            timeout=TIMEOUT_S,
        )
        assert (report.accepted, report.completed, report.reviewed, report.rejected) == (3, 1, 1, 1)
        assert report.auto_processing_rate_pct == "50.00"  # 1 completed / (1 completed + 1 reviewed)
        assert report.tat_samples == 2 and report.tat_median_ms == 0 and report.tat_p90_ms == 90_000
        assert not report.HasField("oldest_open_review_age_seconds")
        assert done.status == pb.ESTIMATE_STATUS_COMPLETED
    finally:
        served.app.stop(0)


def test_report_cli_prints_the_table(fresh: Served, capsys: pytest.CaptureFixture[str]) -> None:
    create(fresh, BASE)
    create(fresh, _s19())
    assert main(["report", "--target", fresh.address, "--token", fresh.tokens["VIEWER"]]) == 0
    out = capsys.readouterr().out
    assert "auto-processing rate" in out and "50.00 %" in out and "oldest open review age" in out


def test_audit_chain_verifies_and_names_an_edited_row(
    fresh: Served, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(3):
        create(fresh, BASE)
    with pytest.raises(grpc.RpcError):
        create(fresh, dict(BASE, brand="HYUNDAI"))
    monkeypatch.setenv("KIS_DATABASE_URL", fresh.app.settings.database_url)
    assert main(["audit", "verify"]) == 0
    out = capsys.readouterr().out
    assert "audit chain OK" in out
    db = fresh.app.settings.sqlite_path
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT seq, action FROM audit_events ORDER BY seq").fetchall()
        rejected_seq = next(seq for seq, action in rows if action == "REQUEST_REJECTED")
        triggers = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")]
        for name in triggers:
            conn.execute(f'DROP TRIGGER "{name}"')
        conn.execute("UPDATE audit_events SET actor = 'someone-else' WHERE seq = ?", (rejected_seq,))
    assert main(["audit", "verify"]) == 1
    assert f"BROKEN at record {rejected_seq}" in capsys.readouterr().out


def test_revoked_token_is_refused_at_once(fresh: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    new = fresh.app.deps.tokens.create(Role.VIEWER, "short-lived")
    stub = pb_grpc.EstimatorServiceStub(grpc.insecure_channel(fresh.address))
    md = (("authorization", f"Bearer {new.token}"),)
    stub.ListEstimates(pb.ListEstimatesRequest(), metadata=md, timeout=TIMEOUT_S)
    monkeypatch.setenv("KIS_DATABASE_URL", fresh.app.settings.database_url)
    assert main(["token", "revoke", new.token_id]) == 0
    with pytest.raises(grpc.RpcError) as info:
        stub.ListEstimates(pb.ListEstimatesRequest(), metadata=md, timeout=TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_token_list_shows_no_secrets(
    fresh: Served, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KIS_DATABASE_URL", fresh.app.settings.database_url)
    assert main(["token", "list"]) == 0
    out = capsys.readouterr().out
    assert "test-admin" in out and "ADMIN" in out
    assert not any(token in out for token in fresh.tokens.values())


def test_rate_limit_answers_resource_exhausted_with_retry_info(tmp_path: Path) -> None:
    served = start_app(tmp_path, rate_limit_per_hour=3)
    try:
        stub = pb_grpc.EstimatorServiceStub(grpc.insecure_channel(served.address))
        md = served.metadata("VIEWER")
        for _ in range(3):
            stub.ListEstimates(pb.ListEstimatesRequest(), metadata=md, timeout=TIMEOUT_S)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListEstimates(pb.ListEstimatesRequest(), metadata=md, timeout=TIMEOUT_S)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status = rpc_status.from_call(info.value)  # type: ignore[arg-type]
        assert status is not None
        retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
        assert len(retry) == 1
        delay = error_details_pb2.RetryInfo()
        retry[0].Unpack(delay)
        assert 1000 <= delay.retry_delay.ToMilliseconds() <= 1_200_000  # one request refills in 20 min
        # another token has its own budget; health is never limited
        stub.ListEstimates(pb.ListEstimatesRequest(), metadata=served.metadata("ADMIN"), timeout=TIMEOUT_S)
    finally:
        served.app.stop(0)
