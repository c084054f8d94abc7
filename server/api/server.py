"""Building the gRPC server: our services behind the interceptor, plus health and reflection."""

from __future__ import annotations

from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.api.interceptors import ServiceInterceptor
from server.api.servicers import EstimatorServicer
from server.gen.kis.estimator.v1 import estimator_pb2 as pb
from server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from server.service.estimates import EstimateService
from server.service.tokens import TokenService
from server.settings import Settings

ESTIMATOR_SERVICE = pb.DESCRIPTOR.services_by_name["EstimatorService"].full_name


@dataclass(frozen=True, slots=True)
class ServiceDeps:
    estimates: EstimateService
    tokens: TokenService


@dataclass(frozen=True, slots=True)
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer

    def set_serving(self, serving: bool) -> None:
        """Flip the health status of the whole server and of each service."""
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", ESTIMATOR_SERVICE):
            self.health.set(name, status)


def server_options(settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
        ("grpc.so_reuseport", 0),  # a second server must fail on a busy port, not share it
        ("grpc.max_concurrent_streams", 256),
    ]


def create_server(settings: Settings, deps: ServiceDeps, address: str | None = None) -> RunningServer:
    """Build and bind (not start) the server; health starts NOT_SERVING until ``set_serving``."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="rpc"),
        interceptors=[ServiceInterceptor(deps.tokens.authenticate)],
        options=server_options(settings),
        maximum_concurrent_rpcs=settings.max_workers * 8,
    )
    pb_grpc.add_EstimatorServiceServicer_to_server(EstimatorServicer(deps.estimates), server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            ESTIMATOR_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    port = server.add_insecure_port(address or settings.grpc_address)
    if port == 0:
        raise OSError(f"cannot bind {address or settings.grpc_address}")
    running = RunningServer(server=server, port=port, health=health_servicer)
    running.set_serving(False)
    return running
