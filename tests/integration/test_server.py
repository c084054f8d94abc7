"""The gRPC surface over a real server: auth, RBAC, hostile input, idempotency, paging, shutdown."""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from kis_estimator.server.acceptance.runner import Outcome, outcome_of_error
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from tests.integration.conftest import TIMEOUT_S, Served, start_app

BASE: dict[str, Any] = json.loads((Path(__file__).parents[2] / "server/acceptance/base.json").read_text())
CREATE = "/kis.estimator.v1.EstimatorService/CreateEstimate"


def base(**changes: Any) -> pb.CreateEstimateRequest:
    data = copy.deepcopy(BASE)
    data.update(changes)
    return json_format.ParseDict(data, pb.CreateEstimateRequest())


def call(served: Served, rpc: str, request: Any, role: str | None = "ESTIMATOR") -> tuple[Outcome, Any]:
    stub = pb_grpc.EstimatorServiceStub(grpc.insecure_channel(served.address))
    try:
        reply = getattr(stub, rpc)(request, metadata=served.metadata(role), timeout=TIMEOUT_S)
    except grpc.RpcError as err:
        return outcome_of_error(err), None
    return Outcome("OK"), reply


def raw_call(served: Served, method: str, payload: bytes, role: str | None = "ESTIMATOR") -> tuple[str, Any]:
    channel = grpc.insecure_channel(served.address)
    fn = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        reply, call_ = fn.with_call(payload, metadata=served.metadata(role), timeout=TIMEOUT_S)
    except grpc.RpcError as err:
        return "ERR", outcome_of_error(err)
    return "OK", (reply, dict(call_.initial_metadata()))


# --- public services ------------------------------------------------------------------------------


def test_health_is_public_and_serving(grpc_channel: grpc.Channel) -> None:
    reply = health_pb2_grpc.HealthStub(grpc_channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    named = health_pb2_grpc.HealthStub(grpc_channel).Check(
        health_pb2.HealthCheckRequest(service="kis.estimator.v1.EstimatorService"), timeout=TIMEOUT_S
    )
    assert named.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_describes_the_estimator_service(grpc_channel: grpc.Channel) -> None:
    db = ProtoReflectionDescriptorDatabase(grpc_channel)
    assert "kis.estimator.v1.EstimatorService" in db.get_services()
    file_desc = db.FindFileContainingSymbol("kis.estimator.v1.CreateEstimateRequest")
    assert "CreateEstimateRequest" in [m.name for m in file_desc.message_type]


def test_pytest_grpc_stub_reaches_the_real_server(
    grpc_stub: pb_grpc.EstimatorServiceStub, served: Served
) -> None:
    reply = grpc_stub.CreateEstimate(base(), metadata=served.metadata("ESTIMATOR"), timeout=TIMEOUT_S)
    assert reply.estimate.totals.total_krw > 0


# --- RBAC matrix (docs/pricing-rules.md §16.4) ---------------------------------------------------

ROLES = [None, "BOGUS", "ADMIN", "ESTIMATOR", "VIEWER"]
ALLOWED = {
    "CreateEstimate": {"ADMIN", "ESTIMATOR"},
    "ValidateEstimate": {"ADMIN", "ESTIMATOR"},
    "GetEstimate": {"ADMIN", "ESTIMATOR", "VIEWER"},
    "ListEstimates": {"ADMIN", "ESTIMATOR", "VIEWER"},
}


@pytest.mark.parametrize("role", ROLES, ids=[str(r) for r in ROLES])
@pytest.mark.parametrize("rpc", sorted(ALLOWED))
def test_rbac_matrix(served: Served, rpc: str, role: str | None) -> None:
    _, created = call(served, "CreateEstimate", base())
    requests = {
        "CreateEstimate": base(),
        "ValidateEstimate": pb.ValidateEstimateRequest(request=base()),
        "GetEstimate": pb.GetEstimateRequest(estimate_id=created.estimate.estimate_id),
        "ListEstimates": pb.ListEstimatesRequest(),
    }
    tokens = dict(served.tokens, BOGUS="kis_not-a-real-token")
    metadata: tuple[tuple[str, str | bytes], ...] = (
        (("authorization", f"Bearer {tokens[role]}"),) if role else ()
    )
    stub = pb_grpc.EstimatorServiceStub(grpc.insecure_channel(served.address))
    try:
        getattr(stub, rpc)(requests[rpc], metadata=metadata, timeout=TIMEOUT_S)
        code = "OK"
        outcome = None
    except grpc.RpcError as err:
        outcome = outcome_of_error(err)
        code = outcome.code
    if role in (None, "BOGUS"):
        assert code == "UNAUTHENTICATED"
        assert outcome is not None and outcome.error_info["reason"] == "UNAUTHENTICATED"
    elif role in ALLOWED[rpc]:
        assert code == "OK"
    else:
        assert code == "PERMISSION_DENIED"
        assert outcome is not None and outcome.violations[0]["code"] == "PERMISSION_DENIED"
        assert rpc in outcome.message and role in outcome.message


def test_malformed_authorization_headers_are_unauthenticated(served: Served) -> None:
    stub = pb_grpc.EstimatorServiceStub(grpc.insecure_channel(served.address))
    for header in ["Basic abc", "Bearer", "Bearer    ", "bearer " + "x" * 5000, served.tokens["ADMIN"]]:
        with pytest.raises(grpc.RpcError) as info:
            stub.ListEstimates(
                pb.ListEstimatesRequest(), metadata=(("authorization", header),), timeout=TIMEOUT_S
            )
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --- hostile input --------------------------------------------------------------------------------


def test_undecodable_bytes_are_invalid_argument_not_internal(served: Served) -> None:
    kind, outcome = raw_call(served, CREATE, b"\xff\xff\xff\xff")
    assert kind == "ERR" and outcome.code == "INVALID_ARGUMENT"
    assert outcome.error_info["reason"] == "MALFORMED_REQUEST"


def test_unknown_fields_are_refused_with_their_path(served: Served) -> None:
    payload = base().SerializeToString() + b"\xf8\x06\x01"  # field 111, varint 1
    kind, outcome = raw_call(served, CREATE, payload)
    assert kind == "ERR" and outcome.code == "INVALID_ARGUMENT"
    assert outcome.violations[0]["code"] == "MALFORMED_REQUEST"
    assert outcome.violations[0]["field"] == "#111"
    nested = pb.CreateEstimateRequest()
    nested.CopyFrom(base())
    main_bytes = nested.main.SerializeToString() + b"\xa0\x06\x07"  # field 100 inside main
    nested.ClearField("main")
    payload = nested.SerializeToString() + b"\x4a" + bytes([len(main_bytes)]) + main_bytes
    kind, outcome = raw_call(served, CREATE, payload)
    assert kind == "ERR" and outcome.violations[0]["field"] == "main.#100"


def test_wrong_wire_type_is_invalid_argument(served: Served) -> None:
    payload = b"\x48\x05" + base().SerializeToString()  # field 9 (main, a message) sent as a varint
    kind, outcome = raw_call(served, CREATE, payload)
    assert kind == "ERR" and outcome.code == "INVALID_ARGUMENT"


def test_oversized_message_is_resource_exhausted(served: Served) -> None:
    outcome, _ = call(served, "CreateEstimate", base(mixed_reason="x" * (2 * 1024 * 1024)))
    assert outcome.code == "RESOURCE_EXHAUSTED"


def test_ten_thousand_branches_are_refused_quickly(served: Served) -> None:
    request = base(branches=[{"kind": "MCCB", "poles": 3, "trip_at": 50, "qty": 100}] * 10_000)
    outcome, _ = call(served, "CreateEstimate", request)
    assert outcome.code == "INVALID_ARGUMENT"
    assert {"code": "TOO_MANY_ITEMS", "field": "branches"} in [
        {"code": v["code"], "field": v["field"]} for v in outcome.violations
    ]


def test_huge_strings_are_not_echoed_whole(served: Served) -> None:
    outcome, _ = call(served, "CreateEstimate", base(brand="B" * 300_000))
    assert outcome.code == "INVALID_ARGUMENT"
    assert outcome.violations[0]["code"] == "BRAND_NOT_SUPPORTED"
    assert len(outcome.message) < 400


def test_hundreds_of_violations_fit_the_trailer_and_say_so(served: Served) -> None:
    bad_line = {
        "kind": "X",
        "poles": 9,
        "trip_at": -1,
        "qty": 0,
        "frame_af": 7,
        "brand": "Y",
        "remark": "r" * 300,
    }
    outcome, _ = call(served, "CreateEstimate", base(branches=[bad_line] * 100))
    assert outcome.code == "INVALID_ARGUMENT"
    assert int(outcome.error_info["violations_total"]) >= 700
    assert 10 <= int(outcome.error_info["violations_sent"]) == len(outcome.violations)
    assert (outcome.violations[0]["code"], outcome.violations[0]["field"]) == (
        "DEVICE_TYPE_INVALID",
        "branches[0].kind",
    )


def test_bad_input_of_every_kind_is_never_internal(served: Served) -> None:
    for request in [pb.CreateEstimateRequest(), base(form="CUSTOM"), base(branches=[]), base(main=None)]:
        outcome, _ = call(served, "CreateEstimate", request)
        assert outcome.code == "INVALID_ARGUMENT", request


# --- idempotency, duplicates, storage (docs/pricing-rules.md §13) ----------------------------------


def test_request_id_replay_is_byte_identical_and_flagged(fresh: Served) -> None:
    payload = base(request_id="rid-1").SerializeToString()
    kind1, (first, md1) = raw_call(fresh, CREATE, payload)
    kind2, (second, md2) = raw_call(fresh, CREATE, payload)
    assert kind1 == kind2 == "OK"
    assert first == second
    assert md1["kis-replayed"] == "false" and md2["kis-replayed"] == "true"


def test_request_id_with_another_body_is_idempotency_mismatch(fresh: Served) -> None:
    _, created = call(fresh, "CreateEstimate", base(request_id="rid-2"))
    outcome, _ = call(fresh, "CreateEstimate", base(request_id="rid-2", form="STANDARD"))
    assert outcome.code == "ALREADY_EXISTS"
    assert [(v["code"], v["field"]) for v in outcome.violations] == [("IDEMPOTENCY_MISMATCH", "request_id")]
    assert outcome.error_info["existing_estimate_id"] == created.estimate.estimate_id


def test_rejected_request_leaves_no_idempotency_record(fresh: Served) -> None:
    bad, _ = call(fresh, "CreateEstimate", base(request_id="rid-3", brand="HYUNDAI"))
    assert bad.code == "INVALID_ARGUMENT"
    ok, reply = call(fresh, "CreateEstimate", base(request_id="rid-3"))
    assert ok.code == "OK" and reply.estimate.request_id == "rid-3"


def test_dedup_key_duplicate_names_the_existing_estimate(fresh: Served) -> None:
    _, first = call(fresh, "CreateEstimate", base(meta={"dedup_key": "k-1"}))
    outcome, _ = call(fresh, "CreateEstimate", base(meta={"dedup_key": "k-1"}, form="STANDARD"))
    assert outcome.code == "ALREADY_EXISTS"
    assert outcome.error_info["reason"] == "DUPLICATE_REQUEST"
    assert outcome.error_info["domain"] == "kis.estimator.v1"
    assert outcome.error_info["existing_estimate_id"] == first.estimate.estimate_id
    assert [(v["code"], v["field"]) for v in outcome.violations] == [("DUPLICATE_REQUEST", "meta.dedup_key")]
    dry, _ = call(
        fresh, "ValidateEstimate", pb.ValidateEstimateRequest(request=base(meta={"dedup_key": "k-1"}))
    )
    assert dry.code == "ALREADY_EXISTS"


def test_concurrent_creates_with_one_dedup_key_store_exactly_one(fresh: Served) -> None:
    results: list[str] = []
    lock = threading.Lock()

    def create(i: int) -> None:
        outcome, _ = call(fresh, "CreateEstimate", base(request_id=f"race-{i}", meta={"dedup_key": "race"}))
        with lock:
            results.append(outcome.code)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == ["ALREADY_EXISTS"] * 15 + ["OK"]


def test_concurrent_replays_of_one_request_id_return_one_estimate(fresh: Served) -> None:
    ids: list[str] = []
    lock = threading.Lock()

    def create() -> None:
        outcome, reply = call(fresh, "CreateEstimate", base(request_id="same"))
        assert outcome.code == "OK"
        with lock:
            ids.append(reply.estimate.estimate_id)

    threads = [threading.Thread(target=create) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(ids) == 12 and len(set(ids)) == 1


def test_validate_stores_nothing(fresh: Served) -> None:
    outcome, reply = call(
        fresh, "ValidateEstimate", pb.ValidateEstimateRequest(request=base(request_id="dry"))
    )
    assert outcome.code == "OK" and reply.estimate.estimate_id == "" and reply.estimate.totals.total_krw > 0
    _, listed = call(fresh, "ListEstimates", pb.ListEstimatesRequest(), role="VIEWER")
    assert list(listed.estimates) == []
    ok, created = call(fresh, "CreateEstimate", base(request_id="dry"))
    assert ok.code == "OK" and created.estimate.totals == reply.estimate.totals


def test_get_returns_what_create_returned(fresh: Served) -> None:
    _, created = call(fresh, "CreateEstimate", base(request_id="g-1"))
    _, got = call(
        fresh, "GetEstimate", pb.GetEstimateRequest(estimate_id=created.estimate.estimate_id), role="VIEWER"
    )
    assert got.estimate == created.estimate
    missing, _ = call(fresh, "GetEstimate", pb.GetEstimateRequest(estimate_id="est_nope"), role="VIEWER")
    assert missing.code == "NOT_FOUND" and missing.violations[0]["code"] == "ESTIMATE_NOT_FOUND"


def test_list_pages_newest_first_and_filters_by_status(fresh: Served) -> None:
    created = []
    for i in range(7):
        _, reply = call(fresh, "CreateEstimate", base(request_id=f"l-{i}"))
        created.append(reply.estimate.estimate_id)
    review_request = base(request_id="l-review", main={"kind": "MCCB", "poles": 3, "trip_at": 175})
    review_request.branches[0].trip_at = 25  # no SANGDO MCCB 3P 25 A: a knowledge gap
    _, review = call(fresh, "CreateEstimate", review_request)
    assert review.estimate.status == pb.ESTIMATE_STATUS_NEEDS_REVIEW
    seen: list[str] = []
    token = ""
    while True:
        _, page = call(
            fresh, "ListEstimates", pb.ListEstimatesRequest(page_size=3, page_token=token), role="VIEWER"
        )
        seen += [e.estimate_id for e in page.estimates]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted([*created, review.estimate.estimate_id]) and len(seen) == len(set(seen))
    _, only = call(
        fresh, "ListEstimates", pb.ListEstimatesRequest(status=pb.ESTIMATE_STATUS_NEEDS_REVIEW), role="VIEWER"
    )
    assert [e.estimate_id for e in only.estimates] == [review.estimate.estimate_id]
    bad_token, _ = call(fresh, "ListEstimates", pb.ListEstimatesRequest(page_token="garbage!"), role="VIEWER")
    assert bad_token.code == "INVALID_ARGUMENT" and bad_token.violations[0]["code"] == "PAGE_TOKEN_INVALID"
    # AIP-158: a size above the maximum is lowered, a negative one refused (more in test_paging.py)
    _, big = call(fresh, "ListEstimates", pb.ListEstimatesRequest(page_size=101), role="VIEWER")
    assert len(big.estimates) == len(seen) and not big.next_page_token
    bad_size, _ = call(fresh, "ListEstimates", pb.ListEstimatesRequest(page_size=-1), role="VIEWER")
    assert bad_size.code == "INVALID_ARGUMENT" and bad_size.violations[0]["code"] == "PAGE_SIZE_INVALID"


def test_estimates_and_replays_survive_a_restart(tmp_path: Path) -> None:
    first = start_app(tmp_path)
    payload = base(request_id="persist").SerializeToString()
    _, (reply, _) = raw_call(first, CREATE, payload)
    first.app.stop(0)
    second = start_app(tmp_path)
    try:
        _, (again, md) = raw_call(second, CREATE, payload)
        assert again == reply and md["kis-replayed"] == "true"
        est = pb.CreateEstimateResponse.FromString(reply).estimate
        _, got = call(
            second, "GetEstimate", pb.GetEstimateRequest(estimate_id=est.estimate_id), role="VIEWER"
        )
        assert got.estimate == est
    finally:
        second.app.stop(0)


def test_graceful_stop_loses_nothing_that_was_accepted(tmp_path: Path) -> None:
    served = start_app(tmp_path)
    accepted: list[str] = []
    codes: list[str] = []
    lock = threading.Lock()

    def create(i: int) -> None:
        outcome, reply = call(served, "CreateEstimate", base(request_id=f"drain-{i}"))
        with lock:
            codes.append(outcome.code)
            if reply is not None:
                accepted.append(reply.estimate.estimate_id)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    served.app.stop(5.0)
    for t in threads:
        t.join(timeout=30)
    assert "INTERNAL" not in codes and "UNKNOWN" not in codes
    again = start_app(tmp_path)
    try:
        for estimate_id in accepted:
            outcome, _ = call(
                again, "GetEstimate", pb.GetEstimateRequest(estimate_id=estimate_id), role="VIEWER"
            )
            assert outcome.code == "OK"
    finally:
        again.app.stop(0)


def test_a_caller_that_gave_up_gets_nothing_stored(fresh: Served) -> None:
    from kis_estimator.server.api.servicers import encode_create_response
    from kis_estimator.server.engine.request import request_from_dict
    from kis_estimator.server.service.caller import Caller
    from kis_estimator.server.service.estimates import CallAbandoned

    principal = fresh.app.deps.tokens.authenticate(fresh.tokens["ESTIMATOR"])
    request = request_from_dict({**BASE, "request_id": "gone", "meta": {"dedup_key": "gone"}})
    with pytest.raises(CallAbandoned):
        fresh.app.deps.estimates.create(
            request, Caller(principal, "t"), encode_create_response, lambda: False
        )
    ok, reply = call(fresh, "CreateEstimate", base(request_id="gone", meta={"dedup_key": "gone"}))
    assert ok.code == "OK" and reply.estimate.request_id == "gone"  # no phantom record, no duplicate


def test_expired_deadline_is_deadline_exceeded_not_internal(served: Served) -> None:
    stub = pb_grpc.EstimatorServiceStub(grpc.insecure_channel(served.address))
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateEstimate(base(), metadata=served.metadata("ESTIMATOR"), timeout=0.0001)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_nul_characters_in_text_are_refused_with_their_path(served: Served) -> None:
    outcome, _ = call(served, "CreateEstimate", base(request_id="a\x00b"))
    assert outcome.code == "INVALID_ARGUMENT"
    assert (outcome.violations[0]["code"], outcome.violations[0]["field"]) == (
        "MALFORMED_REQUEST",
        "request_id",
    )
    request = base()
    request.branches[0].remark = "x\x00"
    outcome, _ = call(served, "CreateEstimate", request)
    assert outcome.violations[0]["field"] == "branches[0].remark"
