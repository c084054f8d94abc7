"""The ``MetricsSource`` seam (docs/conventions.md §5) and its one real implementation, the Prometheus
HTTP API.

Every query answers with a result object, never with an exception: a failed query is a
:class:`QueryError` held by the result, so "Prometheus could not answer" can never be mistaken for
"Prometheus answered with no data" (an empty ``series``), and neither is ever a passed check.

Failure mapping (``/api/v1/query_range`` and ``/api/v1/query``):

==========================================  ==================  =========
what happened                               ``QueryErrorKind``  retried
==========================================  ==================  =========
connection refused/reset, DNS, cut reply    CONNECTION          yes
no reply within ``timeout_s``               TIMEOUT             no [1]_
HTTP 5xx (with or without a JSON error)     HTTP / PROMETHEUS   yes
HTTP 4xx, or 200 with ``"status":"error"``  HTTP / PROMETHEUS   no
a reply that is not the documented JSON     BAD_RESPONSE        no
==========================================  ==================  =========

.. [1] A slow Prometheus is usually an overloaded one; repeating the query adds load and delays
   the decision, and the criteria engine turns the error into INCONCLUSIVE (→ review) anyway.

Sample values arrive as strings (``"12.5"``, ``"NaN"``, ``"+Inf"``); they become floats with NaN and
±Inf preserved, because NaN (no requests, so no quantile) must stay visible to the caller.
"""

from __future__ import annotations

import dataclasses
import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from http.client import HTTPException
from typing import Protocol

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

__all__ = [
    "HttpReply",
    "HttpTransport",
    "InstantResult",
    "MetricsSource",
    "PrometheusSource",
    "QueryError",
    "QueryErrorKind",
    "RangeResult",
    "Sample",
    "Series",
    "TransportError",
    "UrllibTransport",
    "format_value",
    "parse_value",
    "prometheus_retrying",
]


# ---------------------------------------------------------------------------------- results


class QueryErrorKind(StrEnum):
    CONNECTION = "CONNECTION"
    TIMEOUT = "TIMEOUT"
    HTTP = "HTTP"  # an HTTP error status without a Prometheus error body
    PROMETHEUS = "PROMETHEUS"  # Prometheus answered ``"status": "error"``
    BAD_RESPONSE = "BAD_RESPONSE"


@dataclass(frozen=True, slots=True)
class QueryError:
    """Why a query has no answer; ``attempts`` counts the HTTP requests made."""

    kind: QueryErrorKind
    message: str
    http_status: int | None = None
    error_type: str | None = None  # Prometheus ``errorType``: bad_data, execution, timeout, …
    attempts: int = 1

    def __str__(self) -> str:
        """``HTTP 503: …``, ``PROMETHEUS bad_data (HTTP 400): …``, ``CONNECTION: …`` plus the attempts."""
        if self.kind is QueryErrorKind.HTTP and self.http_status is not None:
            head = f"HTTP {self.http_status}"
        else:
            head = f"{self.kind.value}{' ' + self.error_type if self.error_type else ''}"
            head += f" (HTTP {self.http_status})" if self.http_status is not None else ""
        return f"{head}: {self.message} (after {self.attempts} attempt(s))"


@dataclass(frozen=True, slots=True)
class Sample:
    at: datetime  # aware UTC
    value: float  # NaN and ±Inf preserved


@dataclass(frozen=True, slots=True)
class Series:
    labels: Mapping[str, str]
    samples: tuple[Sample, ...]


@dataclass(frozen=True, slots=True)
class RangeResult:
    """``query_range`` answer: ``series`` empty with ``error`` None means Prometheus had no data."""

    expr: str
    start: datetime
    end: datetime
    step_s: float
    series: tuple[Series, ...] = ()
    error: QueryError | None = None
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class InstantResult:
    """``query`` answer; a scalar result is one series without labels."""

    expr: str
    at: datetime
    series: tuple[Series, ...] = ()
    error: QueryError | None = None
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None


class MetricsSource(Protocol):
    """Where the workflows read metrics from. Implementations never raise for a failed query."""

    def query_range(self, expr: str, start: datetime, end: datetime, step_s: float) -> RangeResult:
        """Evaluate ``expr`` at ``start``, ``start + step_s``, … up to ``end`` (aware datetimes)."""
        ...

    def query(self, expr: str, at: datetime) -> InstantResult:
        """Evaluate ``expr`` once, at ``at``."""
        ...


# ---------------------------------------------------------------------------------- values


def parse_value(text: object) -> float:
    """A Prometheus sample value (a string such as ``"1.5"``, ``"NaN"``, ``"+Inf"``) as a float."""
    if not isinstance(text, str):
        raise ValueError(f"sample value {text!r} is not a string")
    return float(text)  # float() reads "NaN", "+Inf", "-Inf" and Go's exponent forms


def format_value(value: float) -> str:
    """A float the way Prometheus writes it (``NaN``, ``+Inf``, ``-Inf``, shortest round-trip)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


# ---------------------------------------------------------------------------------- transport


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    body: bytes


class TransportError(Exception):
    """No HTTP reply at all; ``kind`` is CONNECTION or TIMEOUT."""

    def __init__(self, kind: QueryErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class HttpTransport(Protocol):
    """One GET: returns any HTTP reply (errors included) or raises :class:`TransportError`."""

    def __call__(self, url: str, timeout_s: float, /) -> HttpReply: ...


class UrllibTransport:
    """The real transport: ``urllib`` with the given opener (default honours the proxy variables)."""

    def __init__(self, opener: urllib.request.OpenerDirector | None = None) -> None:
        self._opener = opener or urllib.request.build_opener()

    def __call__(self, url: str, timeout_s: float) -> HttpReply:
        request = urllib.request.Request(
            url, headers={"Accept": "application/json", "User-Agent": "kis-release/1"}
        )
        try:
            with self._opener.open(request, timeout=timeout_s) as reply:
                return HttpReply(reply.status, reply.read())
        except urllib.error.HTTPError as exc:
            try:
                body = exc.read()
            except (OSError, HTTPException):
                body = b""
            finally:
                exc.close()
            return HttpReply(exc.code, body)
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise TransportError(QueryErrorKind.TIMEOUT, f"no connection within {timeout_s} s") from None
            raise TransportError(QueryErrorKind.CONNECTION, str(exc.reason)) from None
        except TimeoutError:
            raise TransportError(QueryErrorKind.TIMEOUT, f"no reply within {timeout_s} s") from None
        except (OSError, HTTPException) as exc:
            raise TransportError(QueryErrorKind.CONNECTION, f"{type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------------------------- retries


class _Failed(Exception):
    """Internal: carries a QueryError through tenacity; never leaves this module."""

    def __init__(self, error: QueryError, *, retryable: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.retryable = retryable


def prometheus_retrying(sleep: Callable[[float], None], attempts: int = 4) -> Retrying:
    """Retry a query on connection errors and HTTP 5xx only: 0.5 s, 1 s, 2 s, … (max 8 s) between tries."""
    return Retrying(
        stop=stop_after_attempt(attempts),  # attempts, not seconds: delay stops read time.monotonic()
        wait=wait_exponential(multiplier=0.5, max=8.0),
        retry=retry_if_exception(lambda e: isinstance(e, _Failed) and e.retryable),
        reraise=True,
        sleep=sleep,
    )


# ---------------------------------------------------------------------------------- the source


class PrometheusSource:
    """:class:`MetricsSource` over the Prometheus HTTP API: ``/api/v1/query_range`` and ``/api/v1/query``."""

    def __init__(
        self,
        base_url: str,
        *,
        sleep: Callable[[float], None],
        timeout_s: float = 10.0,
        attempts: int = 4,
        transport: HttpTransport | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"prometheus url {base_url!r}: expected an http(s) URL")
        if timeout_s <= 0 or attempts < 1:
            raise ValueError("timeout_s must be positive and attempts at least 1")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._sleep = sleep
        self._attempts = attempts
        self._transport: HttpTransport = transport or UrllibTransport()

    def query_range(self, expr: str, start: datetime, end: datetime, step_s: float) -> RangeResult:
        params = {
            "query": expr,
            "start": _unix_text(start),
            "end": _unix_text(end),
            "step": _seconds_text(step_s),
        }
        series, warnings, error = self._get("/api/v1/query_range", params, ("matrix",))
        return RangeResult(expr, start, end, step_s, series=series, error=error, warnings=warnings)

    def query(self, expr: str, at: datetime) -> InstantResult:
        params = {"query": expr, "time": _unix_text(at)}
        series, warnings, error = self._get("/api/v1/query", params, ("vector", "scalar", "matrix"))
        return InstantResult(expr, at, series=series, error=error, warnings=warnings)

    def _get(
        self, path: str, params: Mapping[str, str], result_types: Sequence[str]
    ) -> tuple[tuple[Series, ...], tuple[str, ...], QueryError | None]:
        url = f"{self.base_url}{path}?{urllib.parse.urlencode(params)}"
        attempts = 0

        def once() -> tuple[tuple[Series, ...], tuple[str, ...]]:
            nonlocal attempts
            attempts += 1
            return self._once(url, result_types)

        try:
            series, warnings = prometheus_retrying(self._sleep, self._attempts)(once)
        except _Failed as failed:
            return (), (), dataclasses.replace(failed.error, attempts=attempts)
        return series, warnings, None

    def _once(self, url: str, result_types: Sequence[str]) -> tuple[tuple[Series, ...], tuple[str, ...]]:
        try:
            reply = self._transport(url, self.timeout_s)
        except TransportError as exc:
            retryable = exc.kind is QueryErrorKind.CONNECTION
            raise _Failed(QueryError(exc.kind, exc.message), retryable=retryable) from None
        retryable = reply.status >= 500
        try:
            payload = json.loads(reply.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            payload = None
        if not isinstance(payload, dict):
            if reply.status >= 400:
                snippet = reply.body[:200].decode("utf-8", "replace").strip()
                error = QueryError(QueryErrorKind.HTTP, snippet or "no body", http_status=reply.status)
            else:
                error = QueryError(QueryErrorKind.BAD_RESPONSE, "reply is not a JSON object", reply.status)
            raise _Failed(error, retryable=retryable)
        raw_warnings = payload.get("warnings")
        warnings = tuple(str(w) for w in raw_warnings) if isinstance(raw_warnings, list) else ()
        if payload.get("status") == "error" or reply.status >= 400:
            error_type = payload.get("errorType")
            error = QueryError(
                QueryErrorKind.PROMETHEUS if payload.get("status") == "error" else QueryErrorKind.HTTP,
                str(payload.get("error") or f"HTTP {reply.status}"),
                http_status=reply.status,
                error_type=str(error_type) if error_type is not None else None,
            )
            raise _Failed(error, retryable=retryable)
        if payload.get("status") != "success" or "data" not in payload:
            error = QueryError(
                QueryErrorKind.BAD_RESPONSE, "reply lacks status 'success' and data", reply.status
            )
            raise _Failed(error, retryable=False)
        try:
            return _parse_data(payload["data"], result_types), warnings
        except ValueError as exc:
            raise _Failed(
                QueryError(QueryErrorKind.BAD_RESPONSE, str(exc), reply.status), retryable=False
            ) from None


# ---------------------------------------------------------------------------------- parsing


def _parse_data(data: object, expected: Sequence[str]) -> tuple[Series, ...]:
    if not isinstance(data, dict):
        raise ValueError("data is not an object")
    result_type = data.get("resultType")
    result = data.get("result")
    if result_type not in expected:
        raise ValueError(f"resultType {result_type!r}, expected one of {', '.join(expected)}")
    if result_type == "scalar":
        return (Series({}, (_parse_point(result),)),)
    if not isinstance(result, list):
        raise ValueError("result is not a list")
    out = []
    for item in result:
        if not isinstance(item, dict) or not isinstance(item.get("metric", {}), dict):
            raise ValueError("result item is not an object with a metric")
        labels = {str(k): str(v) for k, v in item.get("metric", {}).items()}
        if result_type == "matrix":
            values = item.get("values")
            if not isinstance(values, list):
                raise ValueError("matrix item has no values list")
            points = tuple(_parse_point(p) for p in values)
        else:
            points = (_parse_point(item.get("value")),)
        out.append(Series(labels, points))
    return tuple(out)


def _parse_point(point: object) -> Sample:
    if not isinstance(point, list) or len(point) != 2:
        raise ValueError(f"sample {point!r} is not [timestamp, value]")
    ts, text = point
    if not isinstance(ts, int | float) or isinstance(ts, bool) or not math.isfinite(ts):
        raise ValueError(f"sample timestamp {ts!r} is not a number")
    try:
        value = parse_value(text)
    except ValueError:
        raise ValueError(f"sample value {text!r} is not a number") from None
    return Sample(datetime.fromtimestamp(ts, UTC), value)


def _unix_text(when: datetime) -> str:
    if when.tzinfo is None:
        raise ValueError(f"{when!r}: expected an aware datetime")
    return _seconds_text(when.timestamp())


def _seconds_text(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".")
