"""Building the gRPC server: our services behind the interceptors, plus health and reflection."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kis_estimator.server.api.health import HealthServicer
from kis_estimator.server.api.interceptors import (
    AuthenticateSpending,
    DenialRecorder,
    ServiceInterceptor,
    current_services,
)
from kis_estimator.server.api.metrics_interceptor import services_of
from kis_estimator.server.api.quote.service import QuoteDocuments
from kis_estimator.server.api.reflection import add_reflection
from kis_estimator.server.api.server_info import ServerInfoServicer
from kis_estimator.server.api.servicers import (
    AdminServicer,
    EstimatorServicer,
    EvidenceServicer,
    ReviewServicer,
)
from kis_estimator.server.api.streams import StreamGuard, StreamPool
from kis_estimator.server.clock import Clock
from kis_estimator.server.engine.roles import ALLOWED_ROLES, Principal
from kis_estimator.server.gen.kis.estimator.v1 import (
    admin_pb2,
    estimator_pb2,
    evidence_pb2,
    review_pb2,
    server_info_pb2,
)
from kis_estimator.server.gen.kis.estimator.v1 import admin_pb2_grpc as admin_grpc
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from kis_estimator.server.gen.kis.estimator.v1 import evidence_pb2_grpc as evidence_grpc
from kis_estimator.server.gen.kis.estimator.v1 import review_pb2_grpc as review_grpc
from kis_estimator.server.gen.kis.estimator.v1 import server_info_pb2_grpc as info_grpc
from kis_estimator.server.service.admin import AdminService
from kis_estimator.server.service.caller import Caller
from kis_estimator.server.service.estimates import EstimateService
from kis_estimator.server.service.evidence import EvidenceService
from kis_estimator.server.service.rate_limit import Decision, Limiter, RateLimiter
from kis_estimator.server.service.reviews import ReviewService
from kis_estimator.server.service.sandbox import Sandboxes, ServiceSet
from kis_estimator.server.service.shared_rate_limit import SharedRateLimiter
from kis_estimator.server.service.tokens import TokenService
from kis_estimator.server.settings import Settings

SERVICE_NAMES = (
    estimator_pb2.DESCRIPTOR.services_by_name["EstimatorService"].full_name,
    review_pb2.DESCRIPTOR.services_by_name["ReviewService"].full_name,
    evidence_pb2.DESCRIPTOR.services_by_name["EvidenceService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    server_info_pb2.DESCRIPTOR.services_by_name["ServerInfoService"].full_name,
)
ESTIMATOR_SERVICE = SERVICE_NAMES[0]
MAX_STREAMS_PER_CONNECTION = 100  # the HTTP/2 value servers commonly advertise
# Health watchers hold a callback each, no thread: bounded only so that nobody can pile them up.
MAX_HEALTH_WATCHERS = 256
MAX_HEALTH_WATCHERS_PER_PEER = 32


@dataclass(frozen=True, slots=True)
class ServiceDeps:
    estimates: EstimateService
    reviews: ReviewService
    evidence: EvidenceService
    admin: AdminService
    tokens: TokenService
    clock: Clock
    rate_limiter: Limiter | None = None
    unauthenticated_limiter: RateLimiter | None = None  # per client address, calls without a valid token
    info: ServerInfoServicer | None = None  # None: version and commit only (catalog, backend unknown)
    sandboxes: Sandboxes | None = None  # None: calls with a kis-sandbox header are refused
    on_store_unavailable: Callable[[], None] | None = None  # a call met a database outage

    @property
    def production(self) -> ServiceSet:
        return ServiceSet(self.estimates, self.reviews, self.evidence, self.admin)


@dataclass(frozen=True, slots=True)
class RunningServer:
    server: grpc.Server
    port: int
    health: HealthServicer
    pool: futures.ThreadPoolExecutor  # the RPC threads (health Check has its own: server/api/streams.py)
    stream_pool: StreamPool  # the threads of streaming calls
    streams: StreamGuard
    watchers: StreamGuard

    def answers(self, timeout_s: float = 1.0) -> bool:
        """True when an RPC thread takes new work within ``timeout_s`` (the pool is not starved)."""
        try:
            self.pool.submit(lambda: None).result(timeout=timeout_s)
        except (futures.TimeoutError, RuntimeError):  # RuntimeError: the pool was shut down
            return False
        return True

    def set_serving(self, serving: bool) -> None:
        """Flip the health status of the whole server and of each service."""
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, status)


def api_services() -> list[ServiceDescriptor]:
    """Every service of the API (for the metrics interceptor's zero-initialised series)."""
    return services_of(
        estimator_pb2.DESCRIPTOR,
        review_pb2.DESCRIPTOR,
        evidence_pb2.DESCRIPTOR,
        admin_pb2.DESCRIPTOR,
        server_info_pb2.DESCRIPTOR,
    )


def server_options(settings: Settings, *, reuse_port: bool = False) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
        # A second server must fail on a busy port, not share it — except the workers of one
        # `serve --workers N`, which share it on purpose (server/workers.py).
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        # Per HTTP/2 connection; more calls on one connection wait in the client for a free stream.
        ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
    ]


def stream_guards(settings: Settings) -> tuple[StreamGuard, StreamGuard]:
    """The guard of thread-holding streams and the guard of health watchers (server/api/streams.py)."""
    streams = StreamGuard(
        settings.max_streams, settings.max_streams_per_peer, settings.stream_idle_s, kind="rpc"
    )
    watchers = StreamGuard(MAX_HEALTH_WATCHERS, MAX_HEALTH_WATCHERS_PER_PEER, None, kind="health_watch")
    return streams, watchers


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (mutual with ``tls_client_ca``) from the settings' PEM files; None: plaintext."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    try:
        cert, key = settings.tls_cert.read_bytes(), settings.tls_key.read_bytes()
        ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    except OSError as exc:
        raise OSError(f"TLS files: {exc}") from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def _authenticate_spending(deps: ServiceDeps) -> AuthenticateSpending | None:
    """Token look-up and budget spend in one statement where the budget lives in the store
    (PostgreSQL, shared by the replicas); None elsewhere (two steps, the budget in memory)."""
    budget = deps.rate_limiter
    if not isinstance(budget, SharedRateLimiter) or not budget.finds_tokens:
        return None
    tokens = deps.tokens
    roles = {
        operation: sorted(role.value for role in allowed) for operation, allowed in ALLOWED_ROLES.items()
    }

    def authenticate_spending(token: str, operation: str) -> tuple[Principal | None, Decision | None]:
        return tokens.authenticate_spending(token, roles.get(operation, []), budget)

    return authenticate_spending


def _denial_recorder(evidence: EvidenceService) -> DenialRecorder:
    def record(operation: str, request: Any, caller: Caller, outcome: str) -> None:
        # a MalformedRequest (bytes that did not decode) has neither field
        estimate_id = getattr(request, "estimate_id", "")
        revision = getattr(request, "revision", 0)
        evidence.record_denied(
            estimate_id.strip() if isinstance(estimate_id, str) else "",
            revision if isinstance(revision, int) else 0,
            caller,
            outcome,
        )

    return record


def create_server(
    settings: Settings,
    deps: ServiceDeps,
    address: str | None = None,
    *,
    outer_interceptors: Sequence[grpc.ServerInterceptor] = (),  # type: ignore[type-arg]
) -> RunningServer:
    """Build and bind (not start) the server; health starts NOT_SERVING until ``set_serving``.

    ``outer_interceptors`` run before the service interceptor (metrics: they see its final status).
    """
    streams, watchers = stream_guards(settings)
    stream_pool = StreamPool(settings.max_streams)
    interceptor = ServiceInterceptor(
        deps.tokens.authenticate,
        streams=streams,
        watchers=watchers,
        stream_pool=stream_pool,
        rate_limiter=deps.rate_limiter,
        unauthenticated_limiter=deps.unauthenticated_limiter,
        record_denial=_denial_recorder(deps.evidence),
        rejected_token=deps.tokens.identify_rejected,
        sandboxes=deps.sandboxes,
        on_store_unavailable=deps.on_store_unavailable,
        authenticate_spending=_authenticate_spending(deps),
    )
    production = deps.production

    def services() -> ServiceSet:
        return current_services() or production

    pool = futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="rpc")
    server = grpc.server(
        pool,
        interceptors=[*outer_interceptors, interceptor],
        options=server_options(settings, reuse_port=settings.workers != 1),
        # calls in flight, queued ones included: beyond it grpcio answers RESOURCE_EXHAUSTED at once
        maximum_concurrent_rpcs=settings.max_workers * 8,
    )
    pb_grpc.add_EstimatorServiceServicer_to_server(
        EstimatorServicer(services, QuoteDocuments.from_settings(settings)), server
    )
    review_grpc.add_ReviewServiceServicer_to_server(ReviewServicer(services, deps.clock), server)
    evidence_grpc.add_EvidenceServiceServicer_to_server(EvidenceServicer(services), server)
    admin_grpc.add_AdminServiceServicer_to_server(AdminServicer(services), server)
    info = deps.info or ServerInfoServicer(
        catalog_version="", started_at=deps.clock.now(), database_backend=""
    )
    info_grpc.add_ServerInfoServiceServicer_to_server(info, server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    add_reflection((*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server)
    bind = address or settings.grpc_address
    credentials = server_credentials(settings)
    port = server.add_secure_port(bind, credentials) if credentials else server.add_insecure_port(bind)
    if port == 0:
        raise OSError(f"cannot bind {bind}")
    running = RunningServer(
        server=server,
        port=port,
        health=health_servicer,
        pool=pool,
        stream_pool=stream_pool,
        streams=streams,
        watchers=watchers,
    )
    running.set_serving(False)
    return running
