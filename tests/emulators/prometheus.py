"""A Prometheus query emulator: canned series behind ``/api/v1/query_range`` and ``/api/v1/query``.

It answers the way Prometheus does (JSON envelope, ``[unix_ts, "value"]`` pairs, ``"NaN"``/``"+Inf"``
strings, points at ``start + k*step``, series without points left out, the 11 000-points limit, the
``bad_data`` checks on ``start``/``end``/``step``) from series registered per *exact* expression
string. A query nobody registered is a ``bad_data`` error, not an empty result, so a typo in a test
or in a criterion shows up as an error instead of passing as "no data". Register an empty result
explicitly with ``register(expr)``.

Scripting: canned series as functions of time (``None`` = a gap), per-expression ``status: error``
replies or raw bodies, the next N replies failing with an HTTP status or a dropped connection, and
held (slow) replies. Every request is recorded.

Two ways in: :meth:`PrometheusEmulator.start` serves it over real HTTP on ``127.0.0.1:0`` (a
``ThreadingHTTPServer``); :meth:`PrometheusEmulator.transport` plugs the same handler into
:class:`kis_estimator.workflows.prometheus.client.PrometheusSource` in-process, for unit tests that open no
sockets.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kis_estimator.workflows.prometheus.client import HttpReply, QueryErrorKind, TransportError, format_value

__all__ = [
    "CannedSeries",
    "EmulatedReply",
    "PrometheusEmulator",
    "RecordedRequest",
    "series_fn",
    "series_points",
]

MAX_POINTS = 11_000  # Prometheus refuses range queries with more points per series
HOLD_LIMIT_S = 30.0  # a held reply is released after this at the latest, so a forgotten hold ends

ValueAt = Callable[[float], float | str | None]
"""A series value at a unix time: a float (NaN/±Inf allowed), a raw string sent as is, or None (gap)."""


@dataclass(frozen=True, slots=True)
class CannedSeries:
    labels: Mapping[str, str]
    value_at: ValueAt


def series_fn(fn: ValueAt, **labels: str) -> CannedSeries:
    """A series whose value at unix time ``t`` is ``fn(t)``."""
    return CannedSeries(dict(labels), fn)


def series_points(points: Mapping[float, float | str], **labels: str) -> CannedSeries:
    """A series with values only at the given unix timestamps (a gap everywhere else)."""
    table = {round(t, 3): v for t, v in points.items()}
    return CannedSeries(dict(labels), lambda t: table.get(round(t, 3)))


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    params: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class EmulatedReply:
    status: int
    body: bytes
    content_type: str = "application/json"


@dataclass
class _Script:
    series: dict[str, tuple[CannedSeries, ...]] = field(default_factory=dict)
    replies: dict[str, EmulatedReply] = field(default_factory=dict)
    failures: list[EmulatedReply | None] = field(default_factory=list)  # None: drop the connection
    held: bool = False


class PrometheusEmulator:
    """Canned Prometheus query API; thread-safe; usable in-process or over HTTP."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._script = _Script()
        self._requests: list[RecordedRequest] = []
        self._released = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------ scripting

    def register(self, expr: str, *series: CannedSeries) -> None:
        """Answer ``expr`` from ``series`` (none: an empty, successful result); replaces earlier scripts."""
        with self._lock:
            self._script.series[expr] = series
            self._script.replies.pop(expr, None)

    def register_function(self, expr: str, fn: ValueAt, labels: Mapping[str, str] | None = None) -> None:
        """Answer ``expr`` with one series whose value at unix time ``t`` is ``fn(t)``."""
        self.register(expr, CannedSeries(dict(labels or {}), fn))

    def register_error(
        self, expr: str, error_type: str = "bad_data", message: str = "parse error", http_status: int = 400
    ) -> None:
        """Answer ``expr`` with ``{"status": "error", ...}`` and ``http_status``, as Prometheus does."""
        body = {"status": "error", "errorType": error_type, "error": message}
        self.register_raw(expr, http_status, json.dumps(body).encode())

    def register_raw(
        self, expr: str, http_status: int, body: bytes, content_type: str = "application/json"
    ) -> None:
        """Answer ``expr`` with exactly this status and body (malformed replies, proxies' HTML pages)."""
        with self._lock:
            self._script.replies[expr] = EmulatedReply(http_status, body, content_type)
            self._script.series.pop(expr, None)

    def fail_next(self, http_status: int, count: int = 1, body: bytes | None = None) -> None:
        """The next ``count`` requests, whatever they ask, get ``http_status`` (default body: plain text)."""
        reply = EmulatedReply(http_status, body if body is not None else b"emulated failure\n", "text/plain")
        with self._lock:
            self._script.failures.extend([reply] * count)

    def drop_next(self, count: int = 1) -> None:
        """The next ``count`` requests get no reply: the connection is closed (a connection error)."""
        with self._lock:
            self._script.failures.extend([None] * count)

    def hold_replies(self) -> None:
        """Replies wait until :meth:`release_replies` (or ``HOLD_LIMIT_S``): a slow Prometheus."""
        with self._lock:
            self._script.held = True
            self._released.clear()

    def release_replies(self) -> None:
        with self._lock:
            self._script.held = False
        self._released.set()

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    # ------------------------------------------------------------------------------ the API

    def handle(self, method: str, path: str, params: Mapping[str, str]) -> EmulatedReply | None:
        """One request; ``None`` means "drop the connection"."""
        with self._lock:
            self._requests.append(RecordedRequest(method, path, dict(params)))
            if self._script.failures:
                return self._script.failures.pop(0)
            expr = params.get("query")
            raw = self._script.replies.get(expr) if expr is not None else None
            canned = self._script.series.get(expr) if expr is not None else None
        if path not in ("/api/v1/query_range", "/api/v1/query"):
            return EmulatedReply(404, b"404 page not found\n", "text/plain")
        if method not in ("GET", "POST"):
            return EmulatedReply(405, b"method not allowed\n", "text/plain")
        if expr is None or not expr.strip():
            return _error(
                400,
                "bad_data",
                'invalid parameter "query": unknown position: parse error: no expression found in input',
            )
        if raw is not None:
            return raw
        if canned is None:
            return _error(400, "bad_data", f"emulator: no canned series registered for query {expr!r}")
        try:
            if path == "/api/v1/query_range":
                return _success(_matrix(canned, params))
            return _success(_vector(canned, params))
        except _BadData as exc:
            return _error(400, "bad_data", str(exc))

    def transport(self) -> Callable[[str, float], HttpReply]:
        """An in-process :class:`kis_estimator.workflows.prometheus.client.HttpTransport`: calls
        :meth:`handle`."""

        def call(url: str, timeout_s: float) -> HttpReply:
            parts = urllib.parse.urlsplit(url)
            params = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
            with self._lock:
                held = self._script.held
            if held:
                self.handle("GET", parts.path, params)
                raise TransportError(QueryErrorKind.TIMEOUT, f"no reply within {timeout_s} s")
            reply = self.handle("GET", parts.path, params)
            if reply is None:
                raise TransportError(
                    QueryErrorKind.CONNECTION, "Remote end closed connection without response"
                )
            return HttpReply(reply.status, reply.body)

        return call

    # ------------------------------------------------------------------------------ HTTP

    def start(self) -> str:
        """Serve on ``127.0.0.1:0``; returns the base URL."""
        if self._server is not None:
            raise RuntimeError("emulator already started")
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        server.daemon_threads = True
        self._server = server
        # poll_interval bounds how long shutdown() waits for the serving loop to notice.
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="prometheus-emulator",
            daemon=True,
        )
        self._thread.start()
        return self.url

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("emulator not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def stop(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    @contextmanager
    def serving(self) -> Iterator[str]:
        """``with emulator.serving() as url:`` start, yield the URL, stop."""
        url = self.start()
        try:
            yield url
        finally:
            self.stop()

    def _wait_if_held(self) -> None:
        with self._lock:
            held = self._script.held
        if held:
            self._released.wait(HOLD_LIMIT_S)


def _handler_class(emulator: PrometheusEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            self._answer("GET", parts.path, parts.query)

        def do_POST(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            form = self.rfile.read(length).decode("utf-8")
            self._answer("POST", parts.path, "&".join(q for q in (parts.query, form) if q))

        def _answer(self, method: str, path: str, query: str) -> None:
            params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
            emulator._wait_if_held()
            reply = emulator.handle(method, path, params)
            if reply is None:
                self.close_connection = True
                return
            # The client may have given up (its timeout) while the reply was held: nobody to answer.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: requests are recorded, not logged."""

    return Handler


# ---------------------------------------------------------------------------------- evaluation


class _BadData(ValueError):
    pass


def _matrix(canned: tuple[CannedSeries, ...], params: Mapping[str, str]) -> dict[str, object]:
    start = _time(params, "start")
    end = _time(params, "end")
    step = _duration(params, "step")
    if end < start:
        raise _BadData("end timestamp must not be before start time")
    if step <= 0:
        raise _BadData(
            "zero or negative query resolution step widths are not accepted. Try a positive integer"
        )
    if (end - start) / step > MAX_POINTS:
        raise _BadData(
            "exceeded maximum resolution of 11,000 points per timeseries. "
            "Try decreasing the query resolution (?step=XX)"
        )
    times = []
    k = 0
    while start + k * step <= end + 1e-9:
        times.append(round(start + k * step, 3))
        k += 1
    result = []
    for series in canned:
        values = [[t, text] for t in times if (text := _text(series.value_at(t))) is not None]
        if values:
            result.append({"metric": dict(series.labels), "values": values})
    return {"resultType": "matrix", "result": result}


def _vector(canned: tuple[CannedSeries, ...], params: Mapping[str, str]) -> dict[str, object]:
    at = round(_time(params, "time"), 3)
    result = []
    for series in canned:
        text = _text(series.value_at(at))
        if text is not None:
            result.append({"metric": dict(series.labels), "value": [at, text]})
    return {"resultType": "vector", "result": result}


def _text(value: float | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return format_value(value)


def _time(params: Mapping[str, str], name: str) -> float:
    text = params.get(name)
    if text is None:
        # Real Prometheus defaults `time` to its own now; the emulator has no clock, so it insists.
        raise _BadData(f'invalid parameter "{name}": emulator requires it')
    try:
        number = float(text)
    except ValueError:
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise _BadData(
                f'invalid parameter "{name}": cannot parse "{text}" to a valid timestamp'
            ) from None
    if not math.isfinite(number):
        raise _BadData(f'invalid parameter "{name}": cannot parse "{text}" to a valid timestamp')
    return number


_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(params: Mapping[str, str], name: str) -> float:
    text = params.get(name)
    if text is None:
        raise _BadData(f'invalid parameter "{name}": missing')
    try:
        return float(text)
    except ValueError:
        match = _DURATION.match(text)
        if match is None:
            raise _BadData(f'invalid parameter "{name}": cannot parse "{text}" to a valid duration') from None
        return int(match.group(1)) * _UNIT_S[match.group(2)]


def _success(data: Mapping[str, object]) -> EmulatedReply:
    return EmulatedReply(200, json.dumps({"status": "success", "data": data}).encode())


def _error(status: int, error_type: str, message: str) -> EmulatedReply:
    return EmulatedReply(
        status, json.dumps({"status": "error", "errorType": error_type, "error": message}).encode()
    )
