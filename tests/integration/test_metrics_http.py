"""The metrics endpoint over real HTTP, fed by the wired service (metrics interceptor first).

The store gauges read real data: the fixture seeds one MIXED estimate and three open reviews through
the service layer (so they are not counted as RPCs).
"""

from __future__ import annotations

import copy
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from kis_estimator.server.api.servicers import encode_create_response
from kis_estimator.server.engine.request import request_from_dict
from kis_estimator.server.engine.roles import Role
from kis_estimator.server.gen.kis.estimator.v1 import admin_pb2, evidence_pb2, review_pb2
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from kis_estimator.server.main import App
from kis_estimator.server.metrics import Metrics
from kis_estimator.server.metrics_http import start_metrics_http
from kis_estimator.server.service.caller import Caller
from tests.integration.conftest import TIMEOUT_S, Served, start_app

ROOT = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = json.loads((ROOT / "server/acceptance/base.json").read_text())
SERVICE = "kis.estimator.v1.EstimatorService"
API_FILES = (pb.DESCRIPTOR, review_pb2.DESCRIPTOR, evidence_pb2.DESCRIPTOR, admin_pb2.DESCRIPTOR)


def base(**changes: Any) -> pb.CreateEstimateRequest:
    data = copy.deepcopy(BASE)
    data.update(changes)
    return json_format.ParseDict(data, pb.CreateEstimateRequest())


@dataclass
class Instrumented:
    """The wired service (``start_app``: metrics interceptor first, /metrics endpoint) plus seed data."""

    served: Served

    @property
    def app(self) -> App:
        return self.served.app

    @property
    def tokens(self) -> dict[str, str]:
        return self.served.tokens

    @property
    def metrics(self) -> Metrics:
        return self.app.metrics

    @property
    def address(self) -> str:
        return self.served.address

    @property
    def http_port(self) -> int:
        return self.app.metrics_port

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def metadata(self, role: str | None) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens[role]}"),) if role else ()

    def create(self, request: pb.CreateEstimateRequest, role: str | None = "ESTIMATOR") -> str:
        """CreateEstimate through a real channel; the status code name."""
        with grpc.insecure_channel(self.address) as channel:
            try:
                pb_grpc.EstimatorServiceStub(channel).CreateEstimate(
                    request, metadata=self.metadata(role), timeout=TIMEOUT_S
                )
            except grpc.RpcError as err:
                return str(err.code().name)
        return "OK"

    def stop(self) -> None:
        self.app.stop(0)


def _seed(app: App) -> None:
    """One MIXED estimate and three open reviews, through the service (not counted as RPCs)."""
    cases = ROOT / "server/acceptance/cases"
    mixed = json.loads((cases / "M31.json").read_text())["steps"][0]["request"]
    review = json.loads((cases / "S19.json").read_text())["steps"][0]["request"]
    principal = app.deps.tokens.authenticate(app.deps.tokens.create(Role.ESTIMATOR, "seed").token)
    caller = Caller(principal, "seed")
    for i, data in enumerate([mixed, review, review, review]):
        request = request_from_dict({**data, "request_id": f"seed-{i}"})
        app.deps.estimates.create(request, caller, encode_create_response)


def start_instrumented(db_dir: Path) -> Instrumented:
    """A started service with its metrics endpoint and real data behind the store gauges."""
    served = start_app(db_dir)
    _seed(served.app)
    return Instrumented(served)


@pytest.fixture
def instrumented(tmp_path: Path) -> Iterator[Instrumented]:
    running = start_instrumented(tmp_path)
    yield running
    running.stop()


def get(url: str, accept: str | None = None, method: str = "GET") -> tuple[int, str, str]:
    """(status, content type, body) of a request to the metrics endpoint."""
    request = urllib.request.Request(url, method=method, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def handled(exposed: dict[tuple[str, frozenset[tuple[str, str]]], float], method: str, code: str) -> float:
    labels = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": method, "grpc_code": code}
    return exposed[("grpc_server_handled_total", frozenset(labels.items()))]


def test_metrics_count_every_rpc_with_its_final_code(instrumented: Instrumented) -> None:
    codes = [instrumented.create(base()) for _ in range(3)]
    codes += [instrumented.create(base(brand="HYUNDAI"))]  # refused by the service: INVALID_ARGUMENT
    codes += [instrumented.create(base(), role=None)]  # refused by the service interceptor
    codes += [instrumented.create(base(), role="VIEWER")]  # RBAC
    assert codes == ["OK"] * 3 + ["INVALID_ARGUMENT", "UNAUTHENTICATED", "PERMISSION_DENIED"]
    with grpc.insecure_channel(instrumented.address) as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)

    status, content_type, body = get(f"{instrumented.metrics_url}/metrics")

    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    exposed = samples(body)
    assert handled(exposed, "CreateEstimate", "OK") == 3
    assert handled(exposed, "CreateEstimate", "INVALID_ARGUMENT") == 1
    assert handled(exposed, "CreateEstimate", "UNAUTHENTICATED") == 1
    assert handled(exposed, "CreateEstimate", "PERMISSION_DENIED") == 1
    assert handled(exposed, "CreateEstimate", "INTERNAL") == 0
    call_labels = frozenset(
        {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "CreateEstimate"}.items()
    )
    assert exposed[("grpc_server_started_total", call_labels)] == 6
    assert exposed[("grpc_server_handling_seconds_count", call_labels)] == 6
    health_labels = {"grpc_type": "unary", "grpc_service": "grpc.health.v1.Health", "grpc_method": "Check"}
    assert (
        exposed[("grpc_server_handled_total", frozenset({**health_labels, "grpc_code": "OK"}.items()))] == 1
    )
    accepted = {"status": "COMPLETED", "brand": "SANGDO"}
    assert exposed[("kis_estimates_accepted_total", frozenset(accepted.items()))] == 3
    assert exposed[("kis_estimate_rejections_total", frozenset({"code": "BRAND_NOT_SUPPORTED"}.items()))] == 1
    assert exposed[("mixed_exceptions_used_monthly", frozenset())] == 1
    assert exposed[("kis_review_queue_depth", frozenset())] == 3
    assert exposed[("process_cpu_seconds_total", frozenset())] > 0


def test_openmetrics_is_served_to_a_prometheus_server(instrumented: Instrumented) -> None:
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    status, content_type, body = get(f"{instrumented.metrics_url}/metrics", accept=accept)
    assert status == 200
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith("# EOF\n")
    assert "# TYPE grpc_server_handling_seconds histogram" in body


HEALTH_CASES = [
    pytest.param(True, "GET", (200, "ok\n"), id="serving"),
    pytest.param(False, "GET", (503, "not serving\n"), id="draining"),
    pytest.param(True, "HEAD", (200, ""), id="head"),
]


@pytest.mark.parametrize(("serving", "method", "expected"), HEALTH_CASES)
def test_healthz_follows_the_serving_state(
    instrumented: Instrumented, serving: bool, method: str, expected: tuple[int, str]
) -> None:
    if not serving:
        instrumented.app.set_serving(False)
    status, _, body = get(f"{instrumented.metrics_url}/healthz", method=method)
    assert (status, body) == expected


@pytest.mark.parametrize("path", ["/", "/metrics/extra", "/health", "/../etc/passwd"])
def test_other_paths_are_not_found(instrumented: Instrumented, path: str) -> None:
    status, _, body = get(f"{instrumented.metrics_url}{path}")
    assert (status, body) == (404, "not found\n")


def test_a_failing_health_check_reads_as_unhealthy(tmp_path: Path) -> None:
    def broken() -> bool:
        raise RuntimeError("store gone")

    endpoint = start_metrics_http("127.0.0.1:0", CollectorRegistry(), broken)
    try:
        status, _, _ = get(f"http://127.0.0.1:{endpoint.port}/healthz")
    finally:
        endpoint.stop()
    assert status == 503


def test_stop_releases_the_port() -> None:
    endpoint = start_metrics_http("127.0.0.1:0", CollectorRegistry(), lambda: True)
    port = endpoint.port
    endpoint.stop()
    again = start_metrics_http(f"127.0.0.1:{port}", CollectorRegistry(), lambda: True)
    again.stop()
    with pytest.raises(urllib.error.URLError):
        get(f"http://127.0.0.1:{port}/healthz")


def test_a_busy_port_is_an_error_at_start() -> None:
    endpoint = start_metrics_http("127.0.0.1:0", CollectorRegistry(), lambda: True)
    try:
        with pytest.raises(OSError):
            start_metrics_http(f"127.0.0.1:{endpoint.port}", CollectorRegistry(), lambda: True)
    finally:
        endpoint.stop()


@pytest.mark.parametrize("address", ["localhost", "127.0.0.1:http", ":9090", "127.0.0.1:70000"])
def test_malformed_addresses_are_refused(address: str) -> None:
    with pytest.raises(ValueError, match="metrics address"):
        start_metrics_http(address, CollectorRegistry(), lambda: True)
