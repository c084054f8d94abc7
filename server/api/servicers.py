"""Thin gRPC adapters: convert the request, call one use case, convert the reply (docs/conventions.md §2).

Servicers never call ``context.abort``: use cases raise DomainError, the interceptor maps it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc

from kis_estimator.server.api import convert
from kis_estimator.server.api.interceptors import current_principal
from kis_estimator.server.api.quote.service import QuoteDocuments
from kis_estimator.server.clock import Clock
from kis_estimator.server.engine.records import EstimateRecord
from kis_estimator.server.gen.kis.estimator.v1 import admin_pb2 as admin_pb
from kis_estimator.server.gen.kis.estimator.v1 import admin_pb2_grpc as admin_grpc
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from kis_estimator.server.gen.kis.estimator.v1 import evidence_pb2 as evidence_pb
from kis_estimator.server.gen.kis.estimator.v1 import evidence_pb2_grpc as evidence_grpc
from kis_estimator.server.gen.kis.estimator.v1 import review_pb2 as review_pb
from kis_estimator.server.gen.kis.estimator.v1 import review_pb2_grpc as review_grpc
from kis_estimator.server.service.admin import AdminService
from kis_estimator.server.service.caller import Caller
from kis_estimator.server.service.estimates import EstimateService
from kis_estimator.server.service.evidence import EvidenceService, EvidenceSummary
from kis_estimator.server.service.reviews import ReviewService
from kis_estimator.server.service.sandbox import ServiceSet

REPLAYED_HEADER = "kis-replayed"
CHUNK_BYTES = 64 * 1024


def encode_create_response(record: EstimateRecord, evidence: EvidenceSummary | None) -> bytes:
    """The CreateEstimate reply bytes stored with the idempotency record."""
    reply = pb.CreateEstimateResponse(estimate=convert.record_to_proto(record, evidence))
    return reply.SerializeToString(deterministic=True)


def caller_of(context: grpc.ServicerContext) -> Caller:
    return Caller(current_principal(), context.peer() or "")


Services = Callable[[], ServiceSet]  # the use cases of the call being served (production or sandbox)


class EstimatorServicer(pb_grpc.EstimatorServiceServicer):
    def __init__(self, services: Services, quotes: QuoteDocuments) -> None:
        self._services = services
        self._quotes = quotes

    @property
    def _estimates(self) -> EstimateService:
        estimates: EstimateService = self._services().estimates
        return estimates

    def CreateEstimate(
        self, request: pb.CreateEstimateRequest, context: grpc.ServicerContext
    ) -> pb.CreateEstimateResponse:
        req = convert.request_from_proto(request)
        created = self._estimates.create(req, caller_of(context), encode_create_response, context.is_active)
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
        return pb.GetEstimateResponse(
            estimate=convert.stored_to_proto(self._estimates.get(request.estimate_id.strip()))
        )

    def ListEstimates(
        self, request: pb.ListEstimatesRequest, context: grpc.ServicerContext
    ) -> pb.ListEstimatesResponse:
        status = convert.STATUS_FROM_PROTO.get(request.status)
        page = self._estimates.list(status, request.page_size, request.page_token)
        summaries = [convert.summary_to_proto(r) for r in page.records]
        return pb.ListEstimatesResponse(estimates=summaries, next_page_token=page.next_page_token)

    def GetQuoteDocument(
        self, request: pb.GetQuoteDocumentRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.GetQuoteDocumentResponse]:
        estimate = convert.stored_to_proto(self._estimates.get(request.estimate_id.strip()))
        found = self._quotes.build(estimate, request.revision, request.format)
        data = found.data
        for offset in range(0, max(len(data), 1), CHUNK_BYTES):
            first = offset == 0
            yield pb.GetQuoteDocumentResponse(
                offset=offset,
                chunk=data[offset : offset + CHUNK_BYTES],
                filename=found.filename if first else "",
                content_type=found.content_type if first else "",
                size_bytes=len(data) if first else 0,
                sha256=found.sha256 if first else "",
                revision=found.revision if first else 0,
            )


class ReviewServicer(review_grpc.ReviewServiceServicer):
    def __init__(self, services: Services, clock: Clock) -> None:
        self._services = services
        self._clock = clock

    @property
    def _reviews(self) -> ReviewService:
        reviews: ReviewService = self._services().reviews
        return reviews

    def ListReviewQueue(
        self, request: review_pb.ListReviewQueueRequest, context: grpc.ServicerContext
    ) -> review_pb.ListReviewQueueResponse:
        page = self._reviews.queue(request.page_size, request.page_token)
        now = self._clock.now()
        items = [convert.review_item_to_proto(r, now) for r in page.records]
        return review_pb.ListReviewQueueResponse(items=items, next_page_token=page.next_page_token)

    def CompleteReview(
        self, request: review_pb.CompleteReviewRequest, context: grpc.ServicerContext
    ) -> review_pb.CompleteReviewResponse:
        answers = convert.resolutions_from_proto(request.resolutions)
        stored = self._reviews.complete(
            request.estimate_id.strip(), answers, request.comment, caller_of(context)
        )
        return review_pb.CompleteReviewResponse(estimate=convert.stored_to_proto(stored))

    def RejectEstimate(
        self, request: review_pb.RejectEstimateRequest, context: grpc.ServicerContext
    ) -> review_pb.RejectEstimateResponse:
        stored = self._reviews.reject(request.estimate_id.strip(), request.reason, caller_of(context))
        return review_pb.RejectEstimateResponse(estimate=convert.stored_to_proto(stored))

    def GetMetrics(
        self, request: review_pb.GetMetricsRequest, context: grpc.ServicerContext
    ) -> review_pb.GetMetricsResponse:
        return convert.report_to_proto(self._reviews.report(request.month))


class EvidenceServicer(evidence_grpc.EvidenceServiceServicer):
    def __init__(self, services: Services) -> None:
        self._services = services

    @property
    def _evidence(self) -> EvidenceService:
        evidence: EvidenceService = self._services().evidence
        return evidence

    def GetEvidenceInfo(
        self, request: evidence_pb.GetEvidenceInfoRequest, context: grpc.ServicerContext
    ) -> evidence_pb.GetEvidenceInfoResponse:
        return convert.evidence_info_to_proto(
            self._evidence.info(request.estimate_id.strip(), request.revision)
        )

    def GetEvidenceBundle(
        self, request: evidence_pb.GetEvidenceBundleRequest, context: grpc.ServicerContext
    ) -> Iterator[evidence_pb.GetEvidenceBundleResponse]:
        found = self._evidence.bundle(request.estimate_id.strip(), request.revision, caller_of(context))
        data = found.bundle
        for offset in range(0, max(len(data), 1), CHUNK_BYTES):
            first = offset == 0
            yield evidence_pb.GetEvidenceBundleResponse(
                offset=offset,
                chunk=data[offset : offset + CHUNK_BYTES],
                sha256=found.sha256 if first else "",
                size_bytes=found.size_bytes if first else 0,
                revision=found.revision if first else 0,
            )


class AdminServicer(admin_grpc.AdminServiceServicer):
    def __init__(self, services: Services) -> None:
        self._services = services

    @property
    def _admin(self) -> AdminService:
        admin: AdminService = self._services().admin
        return admin

    def GrantMixedException(
        self, request: admin_pb.GrantMixedExceptionRequest, context: grpc.ServicerContext
    ) -> admin_pb.GrantMixedExceptionResponse:
        q = self._admin.grant(request.month, request.reason, caller_of(context))
        return admin_pb.GrantMixedExceptionResponse(
            grant_id=q.grant_id or "", month=q.month, quota=q.quota, used=q.used
        )

    def GetMixedQuota(
        self, request: admin_pb.GetMixedQuotaRequest, context: grpc.ServicerContext
    ) -> admin_pb.GetMixedQuotaResponse:
        q = self._admin.quota(request.month)
        return admin_pb.GetMixedQuotaResponse(
            month=q.month, used=q.used, quota=q.quota, grant_id=q.grant_id or ""
        )

    def ListAuditEvents(
        self, request: admin_pb.ListAuditEventsRequest, context: grpc.ServicerContext
    ) -> admin_pb.ListAuditEventsResponse:
        page = self._admin.audit_events(
            request.page_size,
            request.page_token,
            action=request.action.strip() or None,
            estimate_id=request.estimate_id.strip() or None,
            since=convert.optional_time(request, "since"),
            until=convert.optional_time(request, "until"),
        )
        events = [convert.audit_event_to_proto(e) for e in page.events]
        return admin_pb.ListAuditEventsResponse(events=events, next_page_token=page.next_page_token)
