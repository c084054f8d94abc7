"""The RPC metrics interceptor: ``grpc_server_started_total``, ``…_handled_total``, ``…_handling_seconds``.

Names and labels follow go-grpc-prometheus (``grpc_type``, ``grpc_service``, ``grpc_method``,
``grpc_code``) so the usual gRPC dashboards and the rules in ``deploy/prometheus/`` apply.

It must be the **first** interceptor of the server, so that it wraps the handler the service
interceptor returns and sees every call's final status, including calls that interceptor refuses.
That interceptor ends calls with ``context.abort_with_status``, which in grpcio sets the code on the
context and raises a bare ``Exception``; so the final code is read from ``context.code()`` after the
behaviour returns or raises: no code and no exception is OK, no code and an exception is UNKNOWN (what
grpcio answers then), a generator closed early (the client went away mid-stream) is CANCELLED, or
DEADLINE_EXCEEDED when the call's deadline had passed (``server/api/calls.py``).

Only methods the server registered are counted: an unknown method has no handler, grpcio answers
UNIMPLEMENTED without us, and counting it would let callers choose label values. A method's series
are created for every status code at zero, so ``rate()`` sees the first error too: at construction
for the services passed in ``services`` (a fresh process then exports zeros before its first call,
and the first 5xx burst after a deploy is not lost to a series appearing mid-window), else at the
method's first call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import FileDescriptor, MethodDescriptor, ServiceDescriptor
from prometheus_client import Counter, Histogram

from kis_estimator.server.api.calls import client_gone
from kis_estimator.server.api.streams import carry_serving_mode, is_non_blocking
from kis_estimator.server.metrics import Metrics

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class _MethodSeries:
    """The label children of one method, created once."""

    started: Counter
    handled: dict[grpc.StatusCode, Counter]
    seconds: Histogram


def _rpc_type(request_streaming: bool, response_streaming: bool) -> str:
    if request_streaming and response_streaming:
        return "bidi_stream"
    if request_streaming:
        return "client_stream"
    if response_streaming:
        return "server_stream"
    return "unary"


def _method_type(method: MethodDescriptor) -> str:
    return _rpc_type(method.client_streaming, method.server_streaming)


def services_of(*files: FileDescriptor) -> list[ServiceDescriptor]:
    """Every service declared in the given proto files (``estimator_pb2.DESCRIPTOR``, …)."""
    return [service for file in files for service in file.services_by_name.values()]


def _final_code(context: grpc.ServicerContext, raised: bool) -> grpc.StatusCode:
    # grpc-stubs omits ServicerContext.code(); grpcio has it (the code set by set_code/abort, or None).
    code: grpc.StatusCode | None = context.code()  # type: ignore[attr-defined]
    if code is None:
        return grpc.StatusCode.UNKNOWN if raised else grpc.StatusCode.OK
    return code


class MetricsInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]  # grpc-stubs: generic in stubs only
    """See the module docstring. ``clock`` returns seconds from a monotonic origin (tests pass a fake)."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        services: Iterable[ServiceDescriptor] = (),
        clock: Clock = time.perf_counter,
    ) -> None:
        self._metrics = metrics
        self._clock = clock
        self._series: dict[str, _MethodSeries] = {}
        self._lock = threading.Lock()
        for service in services:
            for method in service.methods:
                self._series_of(f"/{service.full_name}/{method.name}", _method_type(method))

    def _series_of(self, full_method: str, rpc_type: str) -> _MethodSeries:
        with self._lock:
            found = self._series.get(full_method)
            if found is None:
                service, _, method = full_method.lstrip("/").rpartition("/")
                labels = {"grpc_type": rpc_type, "grpc_service": service, "grpc_method": method}
                found = _MethodSeries(
                    started=self._metrics.grpc_started.labels(**labels),
                    handled={
                        code: self._metrics.grpc_handled.labels(**labels, grpc_code=code.name)
                        for code in grpc.StatusCode
                    },
                    seconds=self._metrics.grpc_handling_seconds.labels(**labels),
                )
                self._series[full_method] = found
            return found

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        rpc_type = _rpc_type(handler.request_streaming, handler.response_streaming)
        series = self._series_of(handler_call_details.method, rpc_type)
        deserialize, serialize = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, series), deserialize, serialize
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, series), deserialize, serialize
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, series), deserialize, serialize
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(handler.stream_stream, series), deserialize, serialize
            )
        return handler

    def _done(self, series: _MethodSeries, started: float, code: grpc.StatusCode) -> None:
        series.handled[code].inc()
        series.seconds.observe(max(0.0, self._clock() - started))

    def _wrap_unary(
        self, behavior: Callable[[Any, grpc.ServicerContext], Any], series: _MethodSeries
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            series.started.inc()
            started = self._clock()
            try:
                response = behavior(request, context)
            except BaseException:
                self._done(series, started, _final_code(context, raised=True))
                raise
            self._done(series, started, _final_code(context, raised=False))
            return response

        return carry_serving_mode(behavior, wrapped)

    def _wrap_stream(
        self, behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]], series: _MethodSeries
    ) -> Callable[..., Any]:
        if is_non_blocking(behavior):
            return self._wrap_non_blocking(behavior, series)

        def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            series.started.inc()
            started = self._clock()
            try:
                yield from behavior(request, context)
            except GeneratorExit:
                self._done(series, started, client_gone(context) or grpc.StatusCode.CANCELLED)
                raise
            except BaseException:
                self._done(series, started, _final_code(context, raised=True))
                raise
            self._done(series, started, _final_code(context, raised=False))

        return wrapped

    def _wrap_non_blocking(self, behavior: Callable[..., Any], series: _MethodSeries) -> Callable[..., Any]:
        """A non-blocking stream (health Watch) returns at once; it is handled when the call ends."""

        def wrapped(
            request: Any,
            context: grpc.ServicerContext,
            send_response_callback: Callable[[Any], None] | None = None,
        ) -> Any:
            series.started.inc()
            started = self._clock()

            def ended() -> None:
                self._done(series, started, client_gone(context) or _final_code(context, raised=False))

            if not context.add_callback(ended):
                ended()
            return behavior(request, context, send_response_callback=send_response_callback)

        return carry_serving_mode(behavior, wrapped)


__all__ = ["MetricsInterceptor", "services_of"]
