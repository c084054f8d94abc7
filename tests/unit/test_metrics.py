"""server/metrics.py and the RPC metrics interceptor, on a fresh registry each (no sockets)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kis_estimator.server.api.metrics_interceptor import MetricsInterceptor, services_of
from kis_estimator.server.engine.errors import ErrorCode
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2, evidence_pb2
from kis_estimator.server.metrics import GRPC_LATENCY_BUCKETS_S, Metrics, StoreGauges, StoreGaugesCollector

SERVICE = "kis.estimator.v1.EstimatorService"


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


# --- the registry -----------------------------------------------------------------------------------


def test_two_instances_on_fresh_registries_do_not_clash() -> None:
    first, second = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    first.mixed_blocked()
    assert value(first, "kis_mixed_blocked_total") == 1
    assert value(second, "kis_mixed_blocked_total") == 0


def test_process_and_platform_metrics_are_on_the_given_registry(metrics: Metrics) -> None:
    names = {family.name for family in metrics.registry.collect()}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info"} <= names


def test_known_label_values_start_at_zero(metrics: Metrics) -> None:
    assert value(metrics, "kis_estimates_accepted_total", status="NEEDS_REVIEW", brand="MIXED") == 0
    assert value(metrics, "kis_estimate_rejections_total", code="MIXED_QUOTA_EXCEEDED") == 0
    assert value(metrics, "kis_evidence_downloads_total", outcome="denied") == 0


# --- domain events ----------------------------------------------------------------------------------

EVENTS: list[Any] = [
    pytest.param(
        lambda m: m.estimate_accepted("COMPLETED", "LS"),
        ("kis_estimates_accepted_total", {"status": "COMPLETED", "brand": "LS"}, 1.0),
        id="accepted",
    ),
    pytest.param(
        lambda m: m.estimate_accepted("COMPLETED", None),
        ("kis_estimates_accepted_total", {"status": "COMPLETED", "brand": "OTHER"}, 1.0),
        id="accepted-without-brand-is-OTHER",
    ),
    pytest.param(
        lambda m: m.estimate_accepted("est_0123456789", "free text"),
        ("kis_estimates_accepted_total", {"status": "OTHER", "brand": "OTHER"}, 1.0),
        id="accepted-unknown-values-are-bounded",
    ),
    pytest.param(
        lambda m: m.request_rejected(ErrorCode.BRAND_NOT_SUPPORTED.value),
        ("kis_estimate_rejections_total", {"code": "BRAND_NOT_SUPPORTED"}, 1.0),
        id="rejected",
    ),
    pytest.param(
        lambda m: m.request_rejected("not a code"),
        ("kis_estimate_rejections_total", {"code": "OTHER"}, 1.0),
        id="rejected-unknown-code-is-OTHER",
    ),
    pytest.param(
        lambda m: m.evidence_bundle_built(5000),
        ("kis_evidence_bundle_size_bytes_sum", {}, 5000.0),
        id="bundle-size",
    ),
    pytest.param(
        lambda m: m.evidence_bundle_built(5000),
        ("kis_evidence_bundle_size_bytes_bucket", {"le": "16384.0"}, 1.0),
        id="bundle-size-bucket",
    ),
    pytest.param(
        lambda m: m.evidence_download("not_found"),
        ("kis_evidence_downloads_total", {"outcome": "not_found"}, 1.0),
        id="download",
    ),
    pytest.param(lambda m: m.mixed_blocked(), ("kis_mixed_blocked_total", {}, 1.0), id="mixed-blocked"),
    pytest.param(
        lambda m: m.estimate_completed(95.0),
        ("kis_estimate_tat_seconds_bucket", {"le": "120.0"}, 1.0),
        id="tat",
    ),
    pytest.param(
        lambda m: m.estimate_completed(-3.0),
        ("kis_estimate_tat_seconds_sum", {}, 0.0),
        id="tat-never-negative",
    ),
]


@pytest.mark.parametrize(("event", "expected"), EVENTS)
def test_domain_event_updates_its_series(
    metrics: Metrics, event: Callable[[Metrics], None], expected: tuple[str, dict[str, str], float]
) -> None:
    name, labels, expected_value = expected
    event(metrics)
    assert value(metrics, name, **labels) == expected_value


def test_unknown_download_outcome_is_a_programming_error(metrics: Metrics) -> None:
    with pytest.raises(ValueError, match="outcome"):
        metrics.evidence_download("stolen")  # type: ignore[arg-type]


# --- store gauges -----------------------------------------------------------------------------------


def _exposed(registry: CollectorRegistry) -> dict[str, float]:
    """The classic text exposition, parsed back: sample name (+labels) → value."""
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            key = s.name + (
                "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}" if s.labels else ""
            )
            out[key] = s.value
    return out


def test_store_gauges_are_read_at_scrape_time(metrics: Metrics) -> None:
    reads = iter([StoreGauges(1, 2, 3, 40.5, 123_456), StoreGauges(2, 2, 0, 0.0, 123_457)])
    metrics.registry.register(StoreGaugesCollector(lambda: next(reads)))
    first, second = _exposed(metrics.registry), _exposed(metrics.registry)
    assert {k: first[k] for k in _STORE_KEYS} == {
        "mixed_exceptions_used_monthly": 1,
        "kis_mixed_quota_monthly": 2,
        "kis_review_queue_depth": 3,
        "kis_review_oldest_age_seconds": 40.5,
        "kis_store_size_bytes": 123_456,
        "kis_store_gauges_up": 1,
    }
    assert second["mixed_exceptions_used_monthly"] == 2
    assert second["kis_review_queue_depth"] == 0
    assert second["kis_store_size_bytes"] == 123_457


_STORE_KEYS = (
    "mixed_exceptions_used_monthly",
    "kis_mixed_quota_monthly",
    "kis_review_queue_depth",
    "kis_review_oldest_age_seconds",
    "kis_store_size_bytes",
    "kis_store_gauges_up",
)


def test_failing_store_read_leaves_out_its_gauges_but_not_the_scrape(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> StoreGauges:
        raise RuntimeError("database is locked")

    metrics.registry.register(StoreGaugesCollector(broken))
    metrics.mixed_blocked()
    exposed = _exposed(metrics.registry)
    assert exposed["kis_store_gauges_up"] == 0
    assert "mixed_exceptions_used_monthly" not in exposed
    assert exposed["kis_mixed_blocked_total"] == 1
    assert "store gauges unavailable" in caplog.text


def test_store_gauge_names_are_checked_at_registration_without_reading() -> None:
    registry = CollectorRegistry()

    def never() -> StoreGauges:
        raise AssertionError("read at registration")

    registry.register(StoreGaugesCollector(never))
    with pytest.raises(ValueError, match="Duplicated"):
        registry.register(StoreGaugesCollector(never))


# --- the interceptor --------------------------------------------------------------------------------


class FakeContext:
    """Just what the interceptor reads: the code grpcio's context holds after set_code/abort, and
    whether the client still waits (``is_active``) with the time left before its deadline."""

    def __init__(self) -> None:
        self._code: grpc.StatusCode | None = None
        self.active = True
        self.remaining_s = 30.0

    def is_active(self) -> bool:
        return self.active

    def time_remaining(self) -> float:
        return self.remaining_s

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self._code = code
        raise Exception(details)  # what grpcio raises


@dataclass
class FakeClock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Details:
    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


def _serialize(x: Any) -> bytes:
    return b"s"


def _deserialize(b: bytes) -> str:
    return "d"


def _intercept(
    m: Metrics, method: str, handler: grpc.RpcMethodHandler[Any, Any] | None, clock: FakeClock
) -> grpc.RpcMethodHandler[Any, Any] | None:
    return MetricsInterceptor(m, clock=clock).intercept_service(lambda _details: handler, Details(method))  # type: ignore[arg-type]


def _unary(behavior: Callable[[Any, Any], Any]) -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.unary_unary_rpc_method_handler(behavior, _deserialize, _serialize)


def _ok(clock: FakeClock, took_s: float) -> Callable[[Any, Any], Any]:
    def behavior(request: Any, context: Any) -> Any:
        clock.now += took_s
        return "reply"

    return behavior


def _aborts(clock: FakeClock, took_s: float, code: grpc.StatusCode) -> Callable[[Any, Any], Any]:
    def behavior(request: Any, context: Any) -> Any:
        clock.now += took_s
        context.abort(code, "refused")

    return behavior


def _raises(request: Any, context: Any) -> Any:
    raise RuntimeError("bug")


def _sets_code(request: Any, context: Any) -> Any:
    context.set_code(grpc.StatusCode.NOT_FOUND)
    return "empty"


UNARY_CASES: list[Any] = [
    pytest.param(lambda c: _ok(c, 0.004), "OK", "0.005", None, id="ok"),
    pytest.param(
        lambda c: _aborts(c, 0.012, grpc.StatusCode.INVALID_ARGUMENT),
        "INVALID_ARGUMENT",
        "0.015",
        "refused",
        id="abort",
    ),
    pytest.param(
        lambda c: _aborts(c, 0.3, grpc.StatusCode.INTERNAL), "INTERNAL", "0.5", "refused", id="abort-internal"
    ),
    pytest.param(lambda c: _raises, "UNKNOWN", "0.0005", "bug", id="exception-without-code-is-UNKNOWN"),
    pytest.param(lambda c: _sets_code, "NOT_FOUND", "0.0005", None, id="set-code-without-exception"),
]


@pytest.mark.parametrize(("make", "code", "smallest_bucket", "error"), UNARY_CASES)
def test_unary_call_is_counted_with_its_final_code_and_duration(
    metrics: Metrics, make: Callable[[FakeClock], Any], code: str, smallest_bucket: str, error: str | None
) -> None:
    clock = FakeClock()
    wrapped = _intercept(metrics, f"/{SERVICE}/CreateEstimate", _unary(make(clock)), clock)
    assert wrapped is not None and wrapped.unary_unary is not None
    assert wrapped.request_deserializer is _deserialize and wrapped.response_serializer is _serialize
    # the interceptor re-raises what the behaviour raised: grpcio turns it into the status
    expectation = pytest.raises(Exception, match=error) if error else contextlib.nullcontext()
    with expectation:
        wrapped.unary_unary("req", FakeContext())  # type: ignore[arg-type]
    labels = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "CreateEstimate"}
    assert value(metrics, "grpc_server_started_total", **labels) == 1
    assert value(metrics, "grpc_server_handled_total", **labels, grpc_code=code) == 1
    assert (
        sum(
            value(metrics, "grpc_server_handled_total", **labels, grpc_code=c.name) or 0
            for c in grpc.StatusCode
        )
        == 1
    )
    buckets = {
        le: value(metrics, "grpc_server_handling_seconds_bucket", **labels, le=le)
        for le in [str(b) for b in GRPC_LATENCY_BUCKETS_S] + ["+Inf"]
    }
    assert min((float(le) for le, n in buckets.items() if n == 1), default=None) == float(smallest_bucket)


def test_first_call_creates_every_code_at_zero(metrics: Metrics) -> None:
    clock = FakeClock()
    wrapped = _intercept(metrics, f"/{SERVICE}/GetEstimate", _unary(_ok(clock, 0.001)), clock)
    assert wrapped is not None and wrapped.unary_unary is not None
    wrapped.unary_unary("req", FakeContext())  # type: ignore[arg-type]
    labels = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "GetEstimate"}
    zeros = {
        c.name
        for c in grpc.StatusCode
        if value(metrics, "grpc_server_handled_total", **labels, grpc_code=c.name) == 0
    }
    assert zeros == {c.name for c in grpc.StatusCode} - {"OK"}


def test_unknown_method_is_not_counted(metrics: Metrics) -> None:
    assert _intercept(metrics, "/attacker.Chosen/Name", None, FakeClock()) is None
    assert "attacker.Chosen" not in generate_latest(metrics.registry).decode()


def _stream_of(n: int, fail_with: grpc.StatusCode | None = None) -> Callable[[Any, Any], Iterator[str]]:
    def behavior(request: Any, context: Any) -> Iterator[str]:
        for i in range(n):
            yield f"chunk {i}"
        if fail_with is not None:
            context.abort(fail_with, "stop")

    return behavior


STREAM_CASES: list[Any] = [
    pytest.param(_stream_of(3), None, 30.0, "OK", id="completed"),
    pytest.param(
        _stream_of(3, grpc.StatusCode.PERMISSION_DENIED), None, 30.0, "PERMISSION_DENIED", id="aborted"
    ),
    pytest.param(_stream_of(3), 1, 30.0, "CANCELLED", id="client-went-away"),
    pytest.param(_stream_of(3), 1, 0.0, "DEADLINE_EXCEEDED", id="deadline-passed"),
]


@pytest.mark.parametrize(("behavior", "stop_after", "remaining_s", "code"), STREAM_CASES)
def test_server_stream_is_counted_once_with_its_final_code(
    metrics: Metrics,
    behavior: Callable[[Any, Any], Iterator[str]],
    stop_after: int | None,
    remaining_s: float,
    code: str,
) -> None:
    handler = grpc.unary_stream_rpc_method_handler(behavior, _deserialize, _serialize)
    wrapped = _intercept(metrics, "/kis.estimator.v1.EvidenceService/GetEvidenceBundle", handler, FakeClock())
    assert wrapped is not None and wrapped.unary_stream is not None
    context = FakeContext()
    chunks = wrapped.unary_stream("req", context)  # type: ignore[arg-type]
    try:
        for i, _ in enumerate(chunks):
            if stop_after is not None and i + 1 >= stop_after:
                context.active, context.remaining_s = False, remaining_s  # grpcio saw the client leave
                chunks.close()  # type: ignore[attr-defined]  # a generator: grpcio closes it on cancel
                break
    except Exception:  # noqa: BLE001 - the aborting case raises, as grpcio's abort does
        pass
    labels = {
        "grpc_type": "server_stream",
        "grpc_service": "kis.estimator.v1.EvidenceService",
        "grpc_method": "GetEvidenceBundle",
    }
    assert value(metrics, "grpc_server_started_total", **labels) == 1
    assert value(metrics, "grpc_server_handled_total", **labels, grpc_code=code) == 1
    assert value(metrics, "grpc_server_handling_seconds_count", **labels) == 1


def test_services_passed_at_construction_export_zeros_before_any_call(metrics: Metrics) -> None:
    MetricsInterceptor(metrics, services=services_of(estimator_pb2.DESCRIPTOR, evidence_pb2.DESCRIPTOR))
    create = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "CreateEstimate"}
    bundle = {
        "grpc_type": "server_stream",
        "grpc_service": "kis.estimator.v1.EvidenceService",
        "grpc_method": "GetEvidenceBundle",
    }
    assert value(metrics, "grpc_server_handled_total", **create, grpc_code="INTERNAL") == 0
    assert value(metrics, "grpc_server_handled_total", **bundle, grpc_code="OK") == 0
    assert value(metrics, "grpc_server_handling_seconds_count", **create) == 0
    assert value(metrics, "grpc_server_started_total", **bundle) == 0
