"""Requests that used to be answered INTERNAL, over a real channel, on SQLite and PostgreSQL.

Each case was a bug report: a negative evidence revision, a NUL in an audited estimate id on
PostgreSQL, doctored page tokens reaching the SQL layer, out-of-range audit filters, and the health
service's List method advertised by reflection but not implemented. Every answer must be a rich
status with a stable code, never INTERNAL, and every evidence-bundle attempt must be audited.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kis_estimator.server.acceptance.runner import Outcome, outcome_of_error
from kis_estimator.server.api.server import SERVICE_NAMES
from kis_estimator.server.gen.kis.estimator.v1 import admin_pb2 as admin_pb
from kis_estimator.server.gen.kis.estimator.v1 import admin_pb2_grpc as admin_grpc
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from kis_estimator.server.gen.kis.estimator.v1 import evidence_pb2 as evidence_pb
from kis_estimator.server.gen.kis.estimator.v1 import evidence_pb2_grpc as evidence_grpc
from kis_estimator.server.gen.kis.estimator.v1 import review_pb2 as review_pb
from kis_estimator.server.gen.kis.estimator.v1 import review_pb2_grpc as review_grpc
from tests.integration.conftest import TIMEOUT_S, Served, start_app
from tests.integration.test_evidence_api import _s01, create


def outcome(fn: Any, request: Any, served: Served, role: str | None) -> Outcome:
    """The call's outcome; server-streaming calls are drained."""
    try:
        reply = fn(request, metadata=served.metadata(role), timeout=TIMEOUT_S)
        if not hasattr(reply, "ListFields"):
            list(reply)
    except grpc.RpcError as err:
        return outcome_of_error(err)
    return Outcome("OK")


def bundle(served: Served, role: str | None, **fields: Any) -> Outcome:
    stub = evidence_grpc.EvidenceServiceStub(grpc.insecure_channel(served.address))
    return outcome(stub.GetEvidenceBundle, evidence_pb.GetEvidenceBundleRequest(**fields), served, role)


def downloads(served: Served) -> list[admin_pb.AuditEvent]:
    stub = admin_grpc.AdminServiceStub(grpc.insecure_channel(served.address))
    reply = stub.ListAuditEvents(
        admin_pb.ListAuditEventsRequest(page_size=100, action="EVIDENCE_DOWNLOAD"),
        metadata=served.metadata("ADMIN"),
        timeout=TIMEOUT_S,
    )
    return list(reversed(reply.events))  # oldest first


def forged(cursor: dict[str, Any], scope: str) -> str:
    """A page token as the server used to issue them: unsigned base64 JSON."""
    raw = json.dumps({"c": cursor, "s": scope}, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# --- GetEvidenceBundle: bad revisions and NUL ids, for every kind of caller ------------------------

BAD_REVISIONS = [-1, -(2**31)]  # revision is an int32: every negative value is the bad case


@pytest.mark.parametrize("revision", BAD_REVISIONS, ids=str)
def test_bad_revision_is_refused_and_audited_for_every_caller(backend: Served, revision: int) -> None:
    est = create(backend, _s01("rev-"))
    expected = {
        None: ("UNAUTHENTICATED", "UNAUTHENTICATED"),
        "VIEWER": ("PERMISSION_DENIED", "DENIED"),
        "ADMIN": ("INVALID_ARGUMENT", "REVISION_INVALID"),
    }
    for role, (code, _) in expected.items():
        got = bundle(backend, role, estimate_id=est.estimate_id, revision=revision)
        assert got.code == code, (role, got)
        assert got.error_info["reason"] == (code if role != "ADMIN" else "REVISION_INVALID")
        if role == "ADMIN":
            assert got.violations[0]["field"] == "revision"
            assert got.error_info["max"] == str(2**31 - 1)
    events = downloads(backend)
    assert [(e.actor, e.outcome) for e in events] == [
        ("anonymous", "UNAUTHENTICATED"),
        ("test-viewer", "DENIED"),
        ("test-admin", "REVISION_INVALID"),
    ]
    for event in events:
        assert event.estimate_id == est.estimate_id and event.revision == 0  # no valid revision to store
        assert json.loads(event.details_json)["requested_revision"] == str(revision)


def test_bad_revision_of_evidence_info_is_invalid_argument(backend: Served) -> None:
    stub = evidence_grpc.EvidenceServiceStub(grpc.insecure_channel(backend.address))
    got = outcome(
        stub.GetEvidenceInfo,
        evidence_pb.GetEvidenceInfoRequest(estimate_id="est_x", revision=-1),
        backend,
        "VIEWER",
    )
    assert got.code == "INVALID_ARGUMENT" and got.error_info["reason"] == "REVISION_INVALID"


@pytest.mark.parametrize("role", [None, "VIEWER", "ADMIN"], ids=str)
def test_nul_in_estimate_id_is_refused_and_audited(backend: Served, role: str | None) -> None:
    got = bundle(backend, role, estimate_id="est_\x00evil")
    expected = {None: "UNAUTHENTICATED", "VIEWER": "PERMISSION_DENIED", "ADMIN": "INVALID_ARGUMENT"}[role]
    assert got.code == expected, got
    if role == "ADMIN":
        assert got.error_info["reason"] == "MALFORMED_REQUEST"
        assert got.violations[0]["field"] == "estimate_id"
    [event] = downloads(backend)
    assert event.estimate_id == "est_\ufffdevil"  # what the caller sent, storable in every store
    assert event.outcome == {None: "UNAUTHENTICATED", "VIEWER": "DENIED", "ADMIN": "MALFORMED_REQUEST"}[role]


# --- page tokens ---------------------------------------------------------------------------------

DOCTORED_ESTIMATE_CURSORS = [
    {"t": "0001-01-01T00:00:00+01:00", "i": "est_x"},
    {"t": "9999-12-31T23:59:59-01:00", "i": "est_x"},
    {"t": "2025-01-01T00:00:00+00:00", "i": "\ud800"},
    {"t": "2025-01-01T00:00:00+00:00", "i": "est_\x00"},
    {"t": "2025-01-01T00:00:00", "i": "est_x"},
    {"t": 5, "i": "est_x"},
]


@pytest.mark.parametrize("cursor", DOCTORED_ESTIMATE_CURSORS, ids=lambda c: repr(c)[:40])
def test_doctored_list_tokens_are_page_token_invalid(backend: Served, cursor: dict[str, Any]) -> None:
    stub = pb_grpc.EstimatorServiceStub(grpc.insecure_channel(backend.address))
    got = outcome(
        stub.ListEstimates,
        pb.ListEstimatesRequest(page_token=forged(cursor, "estimates:")),
        backend,
        "VIEWER",
    )
    assert got.code == "INVALID_ARGUMENT" and got.error_info["reason"] == "PAGE_TOKEN_INVALID"
    assert got.violations[0]["field"] == "page_token"
    queue = review_grpc.ReviewServiceStub(grpc.insecure_channel(backend.address))
    got = outcome(
        queue.ListReviewQueue,
        review_pb.ListReviewQueueRequest(page_token=forged(cursor, "review-queue")),
        backend,
        "ADMIN",
    )
    assert got.code == "INVALID_ARGUMENT" and got.error_info["reason"] == "PAGE_TOKEN_INVALID"


def test_issued_tokens_page_but_an_altered_one_is_refused(backend: Served) -> None:
    for i in range(3):
        create(backend, _s01(f"page-{i}-"))
    stub = pb_grpc.EstimatorServiceStub(grpc.insecure_channel(backend.address))
    first = stub.ListEstimates(
        pb.ListEstimatesRequest(page_size=2), metadata=backend.metadata("VIEWER"), timeout=TIMEOUT_S
    )
    token = first.next_page_token
    second = stub.ListEstimates(
        pb.ListEstimatesRequest(page_size=2, page_token=token),
        metadata=backend.metadata("VIEWER"),
        timeout=TIMEOUT_S,
    )
    assert len(second.estimates) == 1 and not second.next_page_token
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[-3] ^= 0x01  # one bit of the cursor
    altered = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    got = outcome(stub.ListEstimates, pb.ListEstimatesRequest(page_token=altered), backend, "VIEWER")
    assert got.code == "INVALID_ARGUMENT" and got.error_info["reason"] == "PAGE_TOKEN_INVALID"


def audit_events(served: Served, request: admin_pb.ListAuditEventsRequest) -> Outcome:
    stub = admin_grpc.AdminServiceStub(grpc.insecure_channel(served.address))
    return outcome(stub.ListAuditEvents, request, served, "ADMIN")


@pytest.mark.parametrize(
    ("field", "seconds", "nanos"),
    [
        ("since", -62135596800 - 86400 * 400, 0),
        ("until", 253402300799 + 86400 * 400, 0),
        ("since", 0, 2_000_000_000),
        ("until", -(2**62), 0),
    ],
    ids=["since-before-year-1", "until-after-9999", "nanos-over-1s", "until-huge-negative"],
)
def test_audit_filters_out_of_range_are_malformed(
    backend: Served, field: str, seconds: int, nanos: int
) -> None:
    request = admin_pb.ListAuditEventsRequest()
    getattr(request, field).seconds = seconds
    getattr(request, field).nanos = nanos
    got = audit_events(backend, request)
    assert got.code == "INVALID_ARGUMENT" and got.error_info["reason"] == "MALFORMED_REQUEST"
    assert got.violations[0]["field"] == field


@pytest.mark.parametrize("before", [10**30, -1, 0, "7", True, 2**63], ids=repr)
def test_doctored_audit_page_tokens_are_page_token_invalid(backend: Served, before: object) -> None:
    request = admin_pb.ListAuditEventsRequest(page_token=forged({"b": before}, "audit::::"))
    got = audit_events(backend, request)
    assert got.code == "INVALID_ARGUMENT" and got.error_info["reason"] == "PAGE_TOKEN_INVALID"


def test_audit_events_page_with_issued_tokens(backend: Served) -> None:
    request = admin_pb.ListAuditEventsRequest(page_size=2)
    stub = admin_grpc.AdminServiceStub(grpc.insecure_channel(backend.address))
    seen = []
    while True:
        page = stub.ListAuditEvents(request, metadata=backend.metadata("ADMIN"), timeout=TIMEOUT_S)
        seen += [e.seq for e in page.events]
        if not page.next_page_token:
            break
        request = admin_pb.ListAuditEventsRequest(page_size=2, page_token=page.next_page_token)
    assert seen == sorted(seen, reverse=True) and len(seen) >= 3  # the three token creations


# --- health ----------------------------------------------------------------------------------------


def test_health_list_is_answered_for_every_service(tmp_path: Path) -> None:
    served = start_app(tmp_path)
    try:
        stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(served.address))
        reply = stub.List(health_pb2.HealthListRequest(), timeout=TIMEOUT_S)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert {name: s.status for name, s in reply.statuses.items()} == dict.fromkeys(
            ("", *SERVICE_NAMES), serving
        )
        served.app.set_serving(False)
        reply = stub.List(health_pb2.HealthListRequest(), timeout=TIMEOUT_S)
        assert {s.status for s in reply.statuses.values()} == {health_pb2.HealthCheckResponse.NOT_SERVING}
    finally:
        served.app.stop(0)
