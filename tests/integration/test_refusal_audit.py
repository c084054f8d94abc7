"""Every evidence-bundle attempt is audited whatever stops it, and refusals cannot flood the log.

Over a real channel on SQLite (the aggregation is store-independent; test_no_internal.py covers the
PostgreSQL-specific refusals): malformed, rate-limited, revoked token (recorded under its token id),
a bad sandbox header; the per-address budget of calls without a valid token; and the aggregation of
identical refusals into one record plus one count per window.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from kis_estimator.server.acceptance.runner import Outcome, outcome_of_error
from kis_estimator.server.clock import ManualClock
from kis_estimator.server.engine.audit import AuditDraft, AuditEvent
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from kis_estimator.server.gen.kis.estimator.v1 import evidence_pb2 as evidence_pb
from kis_estimator.server.gen.kis.estimator.v1 import evidence_pb2_grpc as evidence_grpc
from kis_estimator.server.service.denials import DenialAudit
from kis_estimator.server.storage.repository import AuditFilter
from kis_estimator.server.storage.sqlite import SqliteStore
from tests.integration.conftest import TIMEOUT_S, Served, start_app

BUNDLE = "/kis.estimator.v1.EvidenceService/GetEvidenceBundle"
T0 = datetime(2025, 10, 1, 3, 0, tzinfo=UTC)


Metadata = tuple[tuple[str, str | bytes], ...]


def bundle(served: Served, metadata: Metadata = (), estimate_id: str = "est_x", **fields: Any) -> Outcome:
    stub = evidence_grpc.EvidenceServiceStub(grpc.insecure_channel(served.address))
    request = evidence_pb.GetEvidenceBundleRequest(estimate_id=estimate_id, **fields)
    try:
        list(stub.GetEvidenceBundle(request, metadata=metadata, timeout=TIMEOUT_S))
    except grpc.RpcError as err:
        return outcome_of_error(err)
    return Outcome("OK")


DOWNLOADS = AuditFilter(action="EVIDENCE_DOWNLOAD", estimate_id=None, since=None, until=None)


def downloads(served: Served) -> list[AuditEvent]:
    """EVIDENCE_DOWNLOAD records, oldest first (read in-process: the ADMIN token may be limited)."""
    with served.app.store.unit_of_work(read_only=True) as uow:
        events, _ = uow.audit.list(DOWNLOADS, 1000, None)
    return list(reversed(events))


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


# --- every kind of refusal is audited ----------------------------------------------------------------


def test_undecodable_bundle_request_is_audited(fresh: Served) -> None:
    fn = grpc.insecure_channel(fresh.address).unary_stream(
        BUNDLE, request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.RpcError) as info:
        list(fn(b"\xff\xff\xff", metadata=fresh.metadata("ADMIN"), timeout=TIMEOUT_S))
    assert outcome_of_error(info.value).error_info["reason"] == "MALFORMED_REQUEST"
    [event] = downloads(fresh)
    assert (event.actor, event.outcome, event.estimate_id) == ("test-admin", "MALFORMED_REQUEST", None)


def test_rate_limited_bundle_request_is_audited(tmp_path: Path) -> None:
    served = start_app(tmp_path, rate_limit_per_hour=1)
    try:
        assert bundle(served, served.metadata("ADMIN")).code == "NOT_FOUND"
        limited = bundle(served, served.metadata("ADMIN"))
        assert limited.code == "RESOURCE_EXHAUSTED" and limited.error_info["reason"] == "RATE_LIMITED"
        assert [(e.actor, e.outcome) for e in downloads(served)] == [
            ("test-admin", "NOT_FOUND"),
            ("test-admin", "RATE_LIMITED"),
        ]
    finally:
        served.app.stop(0)


def test_revoked_token_is_audited_under_its_token_id(fresh: Served) -> None:
    [viewer] = [t for t in fresh.app.deps.tokens.list() if t.name == "test-viewer"]
    assert fresh.app.deps.tokens.revoke(viewer.token_id)
    refused = bundle(fresh, fresh.metadata("VIEWER"), estimate_id="est_r")
    assert refused.code == "UNAUTHENTICATED"
    unknown = bundle(fresh, bearer("kis_never-issued"), estimate_id="est_r")
    assert unknown.code == "UNAUTHENTICATED"
    revoked, anonymous = downloads(fresh)
    assert (revoked.actor, revoked.role, revoked.outcome) == ("test-viewer", "", "UNAUTHENTICATED")
    assert dict(revoked.details) == {"token_id": viewer.token_id, "token_state": "REVOKED"}
    assert (anonymous.actor, anonymous.outcome, dict(anonymous.details)) == (
        "anonymous",
        "UNAUTHENTICATED",
        {},
    )


def test_bad_sandbox_header_on_a_bundle_request_is_audited(fresh: Served) -> None:
    refused = bundle(fresh, (*fresh.metadata("ADMIN"), ("kis-sandbox", "bad id!")))
    assert refused.code == "INVALID_ARGUMENT" and refused.error_info["reason"] == "SANDBOX_INVALID"
    assert [(e.actor, e.outcome) for e in downloads(fresh)] == [("test-admin", "SANDBOX_INVALID")]


# --- two authorization headers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "order", ["wrong-then-valid", "valid-then-wrong", "valid-twice", "basic-then-valid"], ids=str
)
def test_two_authorization_headers_are_refused(fresh: Served, order: str) -> None:
    valid = f"Bearer {fresh.tokens['ADMIN']}"
    headers = {
        "wrong-then-valid": ["Bearer kis_wrong", valid],
        "valid-then-wrong": [valid, "Bearer kis_wrong"],
        "valid-twice": [valid, valid],
        "basic-then-valid": ["Basic YWRtaW46YWRtaW4=", valid],
    }[order]
    metadata: Metadata = tuple(("authorization", h) for h in headers)
    stub = pb_grpc.EstimatorServiceStub(grpc.insecure_channel(fresh.address))
    with pytest.raises(grpc.RpcError) as info:
        stub.ListEstimates(pb.ListEstimatesRequest(), metadata=metadata, timeout=TIMEOUT_S)
    got = outcome_of_error(info.value)
    assert got.code == "UNAUTHENTICATED" and got.error_info["reason"] == "AUTHORIZATION_AMBIGUOUS"
    assert got.violations[0]["field"] == "metadata.authorization" and "2 authorization headers" in got.message
    assert bundle(fresh, metadata).error_info["reason"] == "AUTHORIZATION_AMBIGUOUS"
    [event] = downloads(fresh)
    assert (event.actor, event.outcome) == ("anonymous", "AUTHORIZATION_AMBIGUOUS")
    # one header still works
    stub.ListEstimates(pb.ListEstimatesRequest(), metadata=(("authorization", valid),), timeout=TIMEOUT_S)


# --- calls without a valid token have a budget per address -----------------------------------------


def test_calls_without_a_valid_token_are_limited_per_address(tmp_path: Path) -> None:
    served = start_app(tmp_path, unauthenticated_rate_limit_per_hour=4)
    try:
        stub = pb_grpc.EstimatorServiceStub(grpc.insecure_channel(served.address))
        codes = []
        for metadata in [(), bearer("kis_bogus"), (), bearer("kis_bogus"), (), bearer("kis_bogus")]:
            try:
                stub.ListEstimates(pb.ListEstimatesRequest(), metadata=metadata, timeout=TIMEOUT_S)
            except grpc.RpcError as err:
                codes.append(outcome_of_error(err).error_info["reason"])
                last = err
        assert codes == ["UNAUTHENTICATED"] * 4 + ["UNAUTHENTICATED_RATE_LIMITED"] * 2
        status = rpc_status.from_call(last)  # type: ignore[arg-type]  # an RpcError of a unary call is a Call
        assert status is not None and last.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
        assert len(retry) == 1
        # valid tokens from the same address, health and reflection are not affected
        reply = stub.ListEstimates(
            pb.ListEstimatesRequest(), metadata=served.metadata("VIEWER"), timeout=TIMEOUT_S
        )
        assert reply is not None
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(served.address))
        for _ in range(10):
            health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
        limited = bundle(served)
        assert limited.error_info["reason"] == "UNAUTHENTICATED_RATE_LIMITED"
        assert [e.outcome for e in downloads(served)] == ["UNAUTHENTICATED_RATE_LIMITED"]
    finally:
        served.app.stop(0)


# --- identical refusals are aggregated --------------------------------------------------------------


def test_a_flood_of_identical_refusals_costs_two_records_per_window(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    served = start_app(tmp_path, clock=clock, unauthenticated_rate_limit_per_hour=10_000)
    try:
        for _ in range(50):
            assert bundle(served, estimate_id="est_flood").code == "UNAUTHENTICATED"
        assert bundle(served, estimate_id="est_other").code == "UNAUTHENTICATED"
        for _ in range(3):
            assert (
                bundle(served, served.metadata("VIEWER"), estimate_id="est_flood").code == "PERMISSION_DENIED"
            )
        first = downloads(served)
        assert [(e.actor, e.outcome, e.estimate_id) for e in first] == [
            ("anonymous", "UNAUTHENTICATED", "est_flood"),
            ("anonymous", "UNAUTHENTICATED", "est_other"),
            ("test-viewer", "DENIED", "est_flood"),
        ]
        assert first[0].peer.startswith("ipv4:127.0.0.1:")  # the first record keeps the whole peer
        assert served.app.denials.flush_due() == 0  # the window has not passed
        clock.advance(timedelta(seconds=61))
        assert (
            served.app.denials.flush_due() == 2
        )  # est_flood (49 repeats), the VIEWER (2); est_other had none
        summaries = downloads(served)[3:]
        details = [dict(e.details) for e in summaries]
        assert [(e.actor, e.outcome, e.estimate_id, e.peer) for e in summaries] == [
            ("anonymous", "UNAUTHENTICATED", "est_flood", "ipv4:127.0.0.1"),
            ("test-viewer", "DENIED", "est_flood", "ipv4:127.0.0.1"),
        ]
        assert [d["repeats"] for d in details] == [49, 2]
        assert details[0]["first_repeat_at"] == details[0]["last_repeat_at"] == "2025-10-01T03:00:00.000000Z"
        # after the window a new refusal of the same kind is written at once again
        assert bundle(served, estimate_id="est_flood").code == "UNAUTHENTICATED"
        assert len(downloads(served)) == 6
        scraped = served.app.metrics.registry.get_sample_value(
            "kis_evidence_downloads_total", {"outcome": "denied"}
        )
        assert scraped == 55  # every attempt is counted, written or aggregated
    finally:
        served.app.stop(0)


def test_counts_not_yet_written_are_written_when_the_server_stops(tmp_path: Path) -> None:
    served = start_app(tmp_path)
    try:
        for _ in range(5):
            bundle(served, estimate_id="est_stop")
    finally:
        served.app.stop(0)
    store = SqliteStore(tmp_path / "kis.db")
    try:
        with store.unit_of_work(read_only=True) as uow:
            events, _ = uow.audit.list(DOWNLOADS, 10, None)
        assert [(e.outcome, e.details.get("repeats")) for e in reversed(events)] == [
            ("UNAUTHENTICATED", None),
            ("UNAUTHENTICATED", 4),
        ]
    finally:
        store.close()


def _draft(i: int, outcome: str = "UNAUTHENTICATED") -> AuditDraft:
    return AuditDraft(
        at=T0,
        action="EVIDENCE_DOWNLOAD",
        outcome=outcome,
        actor="anonymous",
        role="",
        estimate_id=f"est_{i}",
        revision=None,
        details={},
        peer=f"ipv4:10.0.0.{i % 250}:{1000 + i}",
    )


def test_pending_counts_are_bounded_and_overflow_is_still_recorded(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kis.db")
    clock = ManualClock(T0)
    try:
        denials = DenialAudit(store, clock, window_s=60, max_pending=10)
        for i in range(10):
            denials.record(_draft(i))  # ten kinds: each written once
        for i in range(10, 1010):
            denials.record(_draft(i))  # a thousand more kinds while the table is full
            denials.record(_draft(i, "DENIED"))
        assert denials.pending() == 12  # ten kinds plus one overflow counter per outcome
        clock.advance(timedelta(seconds=60))
        assert denials.flush_due() == 2
        with store.unit_of_work(read_only=True) as uow:
            events, _ = uow.audit.list(DOWNLOADS, 100, None)
        overflow = [e for e in events if e.details.get("overflow")]
        assert sorted((e.outcome, e.details["repeats"], e.estimate_id) for e in overflow) == [
            ("DENIED", 1000, None),
            ("UNAUTHENTICATED", 1000, None),
        ]
        assert len(events) == 12 and denials.pending() == 0
    finally:
        store.close()
