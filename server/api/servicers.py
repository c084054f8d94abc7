"""Thin gRPC adapters: convert the request, call one use case, convert the reply (STYLE.md §2.2)."""

from __future__ import annotations

import grpc

from server.api import convert
from server.api.interceptors import current_principal
from server.engine.records import EstimateRecord
from server.gen.kis.estimator.v1 import estimator_pb2 as pb
from server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from server.service.estimates import EstimateService

REPLAYED_HEADER = "kis-replayed"


def encode_create_response(record: EstimateRecord) -> bytes:
    """The CreateEstimate reply bytes stored with the idempotency record."""
    return pb.CreateEstimateResponse(estimate=convert.record_to_proto(record)).SerializeToString(
        deterministic=True
    )


class EstimatorServicer(pb_grpc.EstimatorServiceServicer):
    def __init__(self, estimates: EstimateService) -> None:
        self._estimates = estimates

    def CreateEstimate(
        self, request: pb.CreateEstimateRequest, context: grpc.ServicerContext
    ) -> pb.CreateEstimateResponse:
        created = self._estimates.create(
            convert.request_from_proto(request),
            current_principal(),
            encode_create_response,
            context.is_active,
        )
        context.send_initial_metadata(((REPLAYED_HEADER, "true" if created.replayed else "false"),))
        return pb.CreateEstimateResponse.FromString(created.response)

    def ValidateEstimate(
        self, request: pb.ValidateEstimateRequest, context: grpc.ServicerContext
    ) -> pb.ValidateEstimateResponse:
        draft = self._estimates.validate(convert.request_from_proto(request.request))
        return pb.ValidateEstimateResponse(
            estimate=convert.draft_to_proto(draft.request, draft.request_hash, draft.quote)
        )

    def GetEstimate(
        self, request: pb.GetEstimateRequest, context: grpc.ServicerContext
    ) -> pb.GetEstimateResponse:
        record = self._estimates.get(request.estimate_id.strip())
        return pb.GetEstimateResponse(estimate=convert.record_to_proto(record))

    def ListEstimates(
        self, request: pb.ListEstimatesRequest, context: grpc.ServicerContext
    ) -> pb.ListEstimatesResponse:
        status = convert.STATUS_FROM_PROTO.get(request.status)
        page = self._estimates.list(status, request.page_size, request.page_token)
        return pb.ListEstimatesResponse(
            estimates=[convert.summary_to_proto(r) for r in page.records],
            next_page_token=page.next_page_token,
        )
