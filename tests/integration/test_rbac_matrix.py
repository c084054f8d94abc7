"""Every RPC × every role (docs/pricing-rules.md §16.4), plus no token, an unknown and a revoked token."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from kis_estimator.server.acceptance.runner import outcome_of_error
from kis_estimator.server.engine.roles import ALLOWED_ROLES, Role
from kis_estimator.server.gen.kis.estimator.v1 import admin_pb2 as admin_pb
from kis_estimator.server.gen.kis.estimator.v1 import admin_pb2_grpc as admin_grpc
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from kis_estimator.server.gen.kis.estimator.v1 import evidence_pb2 as evidence_pb
from kis_estimator.server.gen.kis.estimator.v1 import evidence_pb2_grpc as evidence_grpc
from kis_estimator.server.gen.kis.estimator.v1 import review_pb2 as review_pb
from kis_estimator.server.gen.kis.estimator.v1 import review_pb2_grpc as review_grpc
from tests.integration.conftest import TIMEOUT_S, Served, start_app

ROOT = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = json.loads((ROOT / "server/acceptance/base.json").read_text())
S19 = json.loads((ROOT / "server/acceptance/cases/S19.json").read_text())["steps"][0]["request"]


def _create(served: Served, data: dict[str, Any]) -> pb.Estimate:
    stub = pb_grpc.EstimatorServiceStub(grpc.insecure_channel(served.address))
    msg = json_format.ParseDict(data, pb.CreateEstimateRequest())
    return stub.CreateEstimate(msg, metadata=served.metadata("ADMIN"), timeout=TIMEOUT_S).estimate


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, dict[str, str]]]:
    served = start_app(tmp_path_factory.mktemp("rbac"), mixed_monthly_quota=1000)
    revoked = served.app.deps.tokens.create(Role.ADMIN, "soon-revoked")
    assert served.app.deps.tokens.revoke(revoked.token_id)
    tokens = dict(served.tokens, NONE="", UNKNOWN="kis_unknown-token", REVOKED=revoked.token)
    yield served, tokens
    served.app.stop(0)


def _review_target(served: Served) -> str:
    request = copy.deepcopy(S19)
    request.pop("request_id", None)
    return _create(served, request).estimate_id


Call = Callable[[grpc.Channel, Served, tuple[tuple[str, str | bytes], ...]], Any]


def _calls() -> dict[str, Call]:
    def base_request() -> pb.CreateEstimateRequest:
        return json_format.ParseDict(copy.deepcopy(BASE), pb.CreateEstimateRequest())

    def existing(served: Served) -> str:
        return _create(served, copy.deepcopy(BASE)).estimate_id

    return {
        "CreateEstimate": lambda ch, s, md: pb_grpc.EstimatorServiceStub(ch).CreateEstimate(
            base_request(), metadata=md, timeout=TIMEOUT_S
        ),
        "ValidateEstimate": lambda ch, s, md: pb_grpc.EstimatorServiceStub(ch).ValidateEstimate(
            pb.ValidateEstimateRequest(request=base_request()), metadata=md, timeout=TIMEOUT_S
        ),
        "GetEstimate": lambda ch, s, md: pb_grpc.EstimatorServiceStub(ch).GetEstimate(
            pb.GetEstimateRequest(estimate_id=existing(s)), metadata=md, timeout=TIMEOUT_S
        ),
        "ListEstimates": lambda ch, s, md: pb_grpc.EstimatorServiceStub(ch).ListEstimates(
            pb.ListEstimatesRequest(), metadata=md, timeout=TIMEOUT_S
        ),
        "GetQuoteDocument": lambda ch, s, md: list(
            pb_grpc.EstimatorServiceStub(ch).GetQuoteDocument(
                pb.GetQuoteDocumentRequest(estimate_id=existing(s), format=pb.QUOTE_FORMAT_XLSX),
                metadata=md,
                timeout=TIMEOUT_S,
            )
        ),
        "ListReviewQueue": lambda ch, s, md: review_grpc.ReviewServiceStub(ch).ListReviewQueue(
            review_pb.ListReviewQueueRequest(), metadata=md, timeout=TIMEOUT_S
        ),
        "CompleteReview": lambda ch, s, md: review_grpc.ReviewServiceStub(ch).CompleteReview(
            review_pb.CompleteReviewRequest(
                estimate_id=_review_target(s),
                resolutions=[
                    review_pb.ReviewResolution(reason_id="R1", model="SBS-53", unit_price_krw=15600)
                ],
            ),
            metadata=md,
            timeout=TIMEOUT_S,
        ),
        "RejectEstimate": lambda ch, s, md: review_grpc.ReviewServiceStub(ch).RejectEstimate(
            review_pb.RejectEstimateRequest(
                estimate_id=_review_target(s), reason="duplicate of a phone order"
            ),
            metadata=md,
            timeout=TIMEOUT_S,
        ),
        "GetMetrics": lambda ch, s, md: review_grpc.ReviewServiceStub(ch).GetMetrics(
            review_pb.GetMetricsRequest(), metadata=md, timeout=TIMEOUT_S
        ),
        "GetEvidenceInfo": lambda ch, s, md: evidence_grpc.EvidenceServiceStub(ch).GetEvidenceInfo(
            evidence_pb.GetEvidenceInfoRequest(estimate_id=existing(s)), metadata=md, timeout=TIMEOUT_S
        ),
        "GetEvidenceBundle": lambda ch, s, md: list(
            evidence_grpc.EvidenceServiceStub(ch).GetEvidenceBundle(
                evidence_pb.GetEvidenceBundleRequest(estimate_id=existing(s)), metadata=md, timeout=TIMEOUT_S
            )
        ),
        "GrantMixedException": lambda ch, s, md: admin_grpc.AdminServiceStub(ch).GrantMixedException(
            admin_pb.GrantMixedExceptionRequest(month=_fresh_month(), reason="site survey"),
            metadata=md,
            timeout=TIMEOUT_S,
        ),
        "GetMixedQuota": lambda ch, s, md: admin_grpc.AdminServiceStub(ch).GetMixedQuota(
            admin_pb.GetMixedQuotaRequest(), metadata=md, timeout=TIMEOUT_S
        ),
        "ListAuditEvents": lambda ch, s, md: admin_grpc.AdminServiceStub(ch).ListAuditEvents(
            admin_pb.ListAuditEventsRequest(), metadata=md, timeout=TIMEOUT_S
        ),
    }


_MONTHS = iter(f"{2100 + i // 12}-{i % 12 + 1:02d}" for i in range(10_000))


def _fresh_month() -> str:
    return next(_MONTHS)


CALLS = _calls()
WHO = ["ADMIN", "ESTIMATOR", "VIEWER", "NONE", "UNKNOWN", "REVOKED"]


def test_every_rpc_of_every_service_is_in_the_matrix() -> None:
    from kis_estimator.server.api.server import SERVICE_NAMES
    from kis_estimator.server.gen.kis.estimator.v1 import admin_pb2, estimator_pb2, evidence_pb2, review_pb2

    methods = set()
    for module in (estimator_pb2, review_pb2, evidence_pb2, admin_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            assert service.full_name in SERVICE_NAMES
            methods |= {m.name for m in service.methods}
    assert methods == set(CALLS)
    assert methods <= set(ALLOWED_ROLES)


@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize("rpc", sorted(CALLS))
def test_rbac(world: tuple[Served, dict[str, str]], rpc: str, who: str) -> None:
    served, tokens = world
    token = tokens[who]
    metadata: tuple[tuple[str, str | bytes], ...] = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(served.address) as channel:
        try:
            CALLS[rpc](channel, served, metadata)
            code = "OK"
        except grpc.RpcError as err:
            outcome = outcome_of_error(err)
            code = outcome.code
            assert outcome.violations and outcome.error_info["reason"] == outcome.violations[0]["code"]
    if who in {"NONE", "UNKNOWN", "REVOKED"}:
        assert code == "UNAUTHENTICATED"
    elif Role(who) in ALLOWED_ROLES[rpc]:
        assert code == "OK"
    else:
        assert code == "PERMISSION_DENIED"
