"""The standard health service (grpc.health.v1.Health) with ``List`` as well as Check and Watch.

grpcio-health-checking's servicer implements Check and Watch only, while reflection advertises the
whole service of its descriptor, List included; a List call then reached the base class stub, whose
``NotImplementedError`` came back as INTERNAL. List here answers the status of every registered
service name ("" is the whole server), as the health protocol describes.
"""

from __future__ import annotations

import threading

import grpc
from grpc_health.v1 import health, health_pb2


class HealthServicer(health.HealthServicer):
    """grpcio's health servicer plus ``List`` (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(experimental_non_blocking=True)
        self._listed_lock = threading.Lock()
        self._listed: dict[str, health_pb2.HealthCheckResponse.ServingStatus] = {
            "": health_pb2.HealthCheckResponse.SERVING
        }

    def set(self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        """Set the status of ``service`` (what Check, Watch and List answer)."""
        super().set(service, status)
        with self._listed_lock:
            self._listed[service] = status

    def List(
        self, request: health_pb2.HealthListRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthListResponse:
        with self._listed_lock:
            listed = dict(self._listed)
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=status) for name, status in listed.items()}
        )
