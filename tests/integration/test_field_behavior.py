"""``google.api.field_behavior`` says what the service enforces, checked over a real channel.

The fields are read from the generated descriptors, so an annotation added without enforcement (or
dropped from an enforced field) fails here:

* every REQUIRED field of a request, cleared from an otherwise complete request, is refused, with a
  violation at that field or under it (INVALID_ARGUMENT), or NOT_FOUND for an empty ``estimate_id``;
* every OPTIONAL field of CreateEstimateRequest, cleared, leaves the request valid (checked with
  ValidateEstimate, which stores nothing), except the fields that are required only under a condition
  the complete request meets (AIP-203 marks those OPTIONAL and documents the condition);
* the annotation is the one of googleapis-common-protos (one module and one descriptor at run time).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import pytest
from google.api import field_behavior_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from kis_estimator.server.acceptance.runner import Outcome, outcome_of_error
from kis_estimator.server.gen.kis.estimator.v1 import admin_pb2, evidence_pb2, review_pb2
from kis_estimator.server.gen.kis.estimator.v1 import admin_pb2_grpc as admin_grpc
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from kis_estimator.server.gen.kis.estimator.v1 import evidence_pb2_grpc as evidence_grpc
from kis_estimator.server.gen.kis.estimator.v1 import review_pb2_grpc as review_grpc
from tests.integration.conftest import TIMEOUT_S, Served

M = TypeVar("M", bound=Message)
REQUIRED = field_behavior_pb2.REQUIRED
OPTIONAL = field_behavior_pb2.OPTIONAL

# Every field of CreateEstimateRequest set, and valid.
FULL_REQUEST: dict[str, Any] = {
    "request_id": "fb-1",
    "customer": {"name": "KIS", "contact": "010-0000-0000"},
    "project": {"name": "Panel", "location": "Seoul"},
    "brand": "SANGDO",
    "mixed_reason": "not mixed",
    "form": "ECONOMIC",
    "installation": {"location": "INDOOR", "mount": "FLUSH", "floor_standing": True},
    "enclosure": {
        "kind": "STOCK",
        "material": "STEEL_1_6",
        "custom_price_krw": 100000,
        "steel_p_cover": True,
    },
    "main": {
        "kind": "ELB",
        "poles": 3,
        "trip_at": 100,
        "frame_af": 100,
        "model": "SEE-103",
        "brand": "SANGDO",
        "sensitivity_ma": 30,
    },
    "branches": [
        {
            "kind": "ELB",
            "poles": 2,
            "trip_at": 20,
            "qty": 2,
            "frame_af": 30,
            "model": "SIE-32",
            "brand": "SANGDO",
            "sensitivity_ma": 15,
            "remark": "lights",
        }
    ],
    "accessories": {"enabled": True, "items": [{"code": "ammeter", "qty": 1}]},
    "meta": {"dedup_key": "fb-dedup-1"},
}
# OPTIONAL fields required under a condition FULL_REQUEST meets: (code, field) when cleared.
CONDITIONAL = {"accessories.items": ("ACCESSORY_CONFLICT", "accessories.items")}


def behaviors(field: Any) -> list[int]:
    return list(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def annotated_paths(message: Message, behavior: int, prefix: str = "") -> Iterator[str]:
    """Request paths (``branches[0].qty``) of the fields with ``behavior`` that ``message`` sets or
    could set, walking into the sub-messages it holds (the first element of a repeated one)."""
    for field in message.DESCRIPTOR.fields:
        path = f"{prefix}{field.name}"
        if behavior in behaviors(field):
            yield path
        if field.message_type is None or field.message_type.full_name.startswith("google.protobuf."):
            continue
        value = getattr(message, field.name)
        if field.is_repeated:
            if len(value):
                yield from annotated_paths(value[0], behavior, f"{path}[0].")
        elif message.HasField(field.name):
            yield from annotated_paths(value, behavior, f"{path}.")


def cleared(message: M, path: str) -> M:
    """A copy of ``message`` with the field at ``path`` cleared (a repeated field: emptied)."""
    out = copy.deepcopy(message)
    *parents, last = path.split(".")
    target: Any = out
    for part in parents:
        name, index = re.fullmatch(r"(\w+)(?:\[(\d+)\])?", part).groups()  # type: ignore[union-attr]
        target = getattr(target, name)
        if index is not None:
            target = target[int(index)]
    target.ClearField(last)
    return out


def _refusal_matches(outcome: Outcome, path: str) -> bool:
    """A refusal naming ``path`` or a field under it; NOT_FOUND for an empty estimate id."""
    if outcome.code == "NOT_FOUND":
        return path == "estimate_id" and outcome.violations[0]["field"] == "estimate_id"
    if outcome.code != "INVALID_ARGUMENT":
        return False
    if path == "request":  # ValidateEstimateRequest.request absent: an empty request, refused whole
        return bool(outcome.violations)
    inner = path.removeprefix("request.")  # violations name paths inside the CreateEstimateRequest
    return any(
        v["field"] == inner or v["field"].startswith((f"{inner}.", f"{inner}[")) for v in outcome.violations
    )


@dataclass(frozen=True)
class Rpc:
    """One RPC, its role, and a request with every field set for (estimate id, review reason id)."""

    role: str
    full: Callable[[str, str], Message]
    invoke: Callable[[grpc.Channel, Any, Any], Any]


def full_create() -> pb.CreateEstimateRequest:
    return json_format.ParseDict(FULL_REQUEST, pb.CreateEstimateRequest())


RPCS: dict[str, Rpc] = {
    "ValidateEstimate": Rpc(
        "ESTIMATOR",
        lambda _e, _r: pb.ValidateEstimateRequest(request=full_create()),
        lambda ch, r, m: pb_grpc.EstimatorServiceStub(ch).ValidateEstimate(r, metadata=m, timeout=TIMEOUT_S),
    ),
    "GetEstimate": Rpc(
        "VIEWER",
        lambda e, _r: pb.GetEstimateRequest(estimate_id=e),
        lambda ch, r, m: pb_grpc.EstimatorServiceStub(ch).GetEstimate(r, metadata=m, timeout=TIMEOUT_S),
    ),
    "GetQuoteDocument": Rpc(
        "VIEWER",
        lambda e, _r: pb.GetQuoteDocumentRequest(estimate_id=e, revision=1, format=pb.QUOTE_FORMAT_XLSX),
        lambda ch, r, m: list(
            pb_grpc.EstimatorServiceStub(ch).GetQuoteDocument(r, metadata=m, timeout=TIMEOUT_S)
        ),
    ),
    "CompleteReview": Rpc(
        "ESTIMATOR",
        lambda e, r: review_pb2.CompleteReviewRequest(
            estimate_id=e,
            resolutions=[review_pb2.ReviewResolution(reason_id=r, model="SBS-33", unit_price_krw=15000)],
            comment="checked",
        ),
        lambda ch, r, m: review_grpc.ReviewServiceStub(ch).CompleteReview(r, metadata=m, timeout=TIMEOUT_S),
    ),
    "RejectEstimate": Rpc(
        "ESTIMATOR",
        lambda e, _r: review_pb2.RejectEstimateRequest(estimate_id=e, reason="a duplicate of another panel"),
        lambda ch, r, m: review_grpc.ReviewServiceStub(ch).RejectEstimate(r, metadata=m, timeout=TIMEOUT_S),
    ),
    "GrantMixedException": Rpc(
        "ADMIN",
        lambda _e, _r: admin_pb2.GrantMixedExceptionRequest(month="2031-01", reason="a large order"),
        lambda ch, r, m: admin_grpc.AdminServiceStub(ch).GrantMixedException(
            r, metadata=m, timeout=TIMEOUT_S
        ),
    ),
    "GetEvidenceInfo": Rpc(
        "VIEWER",
        lambda e, _r: evidence_pb2.GetEvidenceInfoRequest(estimate_id=e, revision=1),
        lambda ch, r, m: evidence_grpc.EvidenceServiceStub(ch).GetEvidenceInfo(
            r, metadata=m, timeout=TIMEOUT_S
        ),
    ),
    "GetEvidenceBundle": Rpc(
        "ADMIN",
        lambda e, _r: evidence_pb2.GetEvidenceBundleRequest(estimate_id=e, revision=1),
        lambda ch, r, m: list(
            evidence_grpc.EvidenceServiceStub(ch).GetEvidenceBundle(r, metadata=m, timeout=TIMEOUT_S)
        ),
    ),
}
# The paths do not depend on the ids a live server hands out: enumerate them on placeholders.
REQUIRED_CASES = [
    (rpc, path) for rpc in sorted(RPCS) for path in annotated_paths(RPCS[rpc].full("est_x", "R1"), REQUIRED)
]
OPTIONAL_CASES = list(annotated_paths(full_create(), OPTIONAL))


def create_needs_review(served: Served) -> tuple[str, str]:
    """A stored NEEDS_REVIEW estimate (no catalog row for SANGDO MCCB 3P 25 A) and its first reason."""
    request = pb.CreateEstimateRequest(
        brand="SANGDO",
        installation=pb.Installation(location="INDOOR", mount="FLUSH"),
        main=pb.BreakerSpec(kind="MCCB", poles=3, trip_at=175),
        branches=[pb.BranchBreakerSpec(kind="MCCB", poles=3, trip_at=25, qty=1)],
        accessories=pb.Accessories(enabled=False),
    )
    with grpc.insecure_channel(served.address) as channel:
        reply = pb_grpc.EstimatorServiceStub(channel).CreateEstimate(
            request, metadata=served.metadata("ESTIMATOR"), timeout=TIMEOUT_S
        )
    assert reply.estimate.status == pb.ESTIMATE_STATUS_NEEDS_REVIEW
    return reply.estimate.estimate_id, reply.estimate.review_reasons[0].reason_id


@pytest.fixture
def needs_review(served: Served) -> tuple[str, str]:
    return create_needs_review(served)


def _call(served: Served, rpc: str, request: Message) -> Outcome:
    spec = RPCS[rpc]
    with grpc.insecure_channel(served.address) as channel:
        try:
            spec.invoke(channel, request, served.metadata(spec.role))
        except grpc.RpcError as err:
            return outcome_of_error(err)
    return Outcome("OK")


def test_the_complete_requests_are_accepted(served: Served) -> None:
    """The baseline of the clearing tests: with every field set, each request succeeds (each on an
    estimate of its own, since CompleteReview and RejectEstimate change theirs)."""
    for rpc in sorted(RPCS):
        assert _call(served, rpc, RPCS[rpc].full(*create_needs_review(served))).code == "OK", rpc


@pytest.mark.parametrize(("rpc", "path"), REQUIRED_CASES, ids=[f"{r}:{p}" for r, p in REQUIRED_CASES])
def test_clearing_a_required_field_is_refused_at_that_field(
    served: Served, needs_review: tuple[str, str], rpc: str, path: str
) -> None:
    request = cleared(RPCS[rpc].full(*needs_review), path)
    outcome = _call(served, rpc, request)
    assert _refusal_matches(outcome, path), (outcome.code, outcome.violations)


@pytest.mark.parametrize("path", OPTIONAL_CASES)
def test_clearing_an_optional_field_keeps_create_estimate_valid(served: Served, path: str) -> None:
    outcome = _call(
        served, "ValidateEstimate", pb.ValidateEstimateRequest(request=cleared(full_create(), path))
    )
    if path in CONDITIONAL:
        assert [(v["code"], v["field"]) for v in outcome.violations] == [CONDITIONAL[path]]
    else:
        assert outcome.code == "OK", outcome.violations


def test_the_annotation_is_the_one_of_googleapis_common_protos() -> None:
    """Generated code imports google.api.field_behavior_pb2; no second copy of the file exists."""
    dependencies = {d.name: d for d in pb.DESCRIPTOR.dependencies}
    assert dependencies["google/api/field_behavior.proto"] is field_behavior_pb2.DESCRIPTOR
    brand = pb.CreateEstimateRequest.DESCRIPTOR.fields_by_name["brand"]
    assert behaviors(brand) == [REQUIRED]
    estimate_id = pb.Estimate.DESCRIPTOR.fields_by_name["estimate_id"]
    assert behaviors(estimate_id) == [field_behavior_pb2.OUTPUT_ONLY]


def test_every_request_field_says_whether_it_is_required() -> None:
    """AIP-203: each field of a request message, and of the messages a request holds, is annotated."""
    requests = [
        m
        for module in (pb, review_pb2, admin_pb2, evidence_pb2)
        for name, m in module.DESCRIPTOR.message_types_by_name.items()
        if name.endswith("Request")
    ]
    seen: set[str] = set()
    unannotated = []
    pending = list(requests)
    while pending:
        message = pending.pop()
        if message.full_name in seen or message.full_name.startswith("google.protobuf."):
            continue
        seen.add(message.full_name)
        for field in message.fields:
            if not {REQUIRED, OPTIONAL} & set(behaviors(field)):
                unannotated.append(field.full_name)
            if field.message_type is not None:
                pending.append(field.message_type)
    assert unannotated == []
    assert "kis.estimator.v1.AccessoryItem" in seen
