"""A container/orchestrator health probe: the standard gRPC health check, as an exit status.

    python -m kis_estimator.server.healthcheck [HOST:PORT] [--service NAME] [--timeout SECONDS]

Exit 0 when ``grpc.health.v1.Health/Check`` answers SERVING within the timeout, 1 otherwise (with
one line on stderr saying why). HOST:PORT defaults to the server's own ``KIS_GRPC_ADDRESS`` (127.0.0.1:8787) —
a wildcard listen address (0.0.0.0, [::]) is probed on loopback. Used by the Dockerfile's
HEALTHCHECK; it needs nothing but grpcio and grpcio-health-checking.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kis_estimator.server.settings import Settings, SettingsError


def probe_address(address: str) -> str:
    """Where to probe a server that listens on ``address`` (wildcards become loopback)."""
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", "", "[::]", "::"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def check(address: str, service: str = "", timeout_s: float = 3.0) -> tuple[bool, str]:
    """(serving?, what was seen) for one health check of ``service`` at ``address``."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            return False, f"{address}: {exc.code().name}: {exc.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{address}: {status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kis_estimator.server.healthcheck", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("address", nargs="?", default=None, help="default: KIS_GRPC_ADDRESS")
    parser.add_argument("--service", default="", help="service name to check ('' = the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    args = parser.parse_args(argv)
    address = args.address
    if address is None:
        try:
            address = Settings.from_process_env().grpc_address
        except SettingsError as exc:
            sys.stderr.write(f"unhealthy: {exc}\n")
            return 1
    serving, seen = check(probe_address(address), args.service, args.timeout)
    if not serving:
        sys.stderr.write(f"unhealthy: {seen}\n")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
