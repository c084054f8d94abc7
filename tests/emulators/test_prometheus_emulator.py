"""The Prometheus query emulator answers like Prometheus, over real HTTP, and fails when scripted to."""

from __future__ import annotations

import http.client
import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from tests.emulators.prometheus import PrometheusEmulator, RecordedRequest, series_fn, series_points

TIMEOUT_S = 5.0
T0 = 1_758_596_400.0  # 2025-09-23T03:00:00Z


@pytest.fixture
def emulator() -> Iterator[PrometheusEmulator]:
    emulator = PrometheusEmulator()
    with emulator.serving():
        yield emulator


def call(
    emulator: PrometheusEmulator,
    path: str,
    params: Mapping[str, str] | None = None,
    *,
    timeout_s: float = TIMEOUT_S,
    data: bytes | None = None,
) -> tuple[int, str, Any]:
    url = f"{emulator.url}{path}?{urllib.parse.urlencode(params or {})}"
    try:
        with urllib.request.urlopen(url, data=data, timeout=timeout_s) as reply:
            status, content_type, body = reply.status, reply.headers["Content-Type"], reply.read()
    except urllib.error.HTTPError as exc:
        status, content_type, body = exc.code, exc.headers["Content-Type"], exc.read()
        exc.close()
    return status, content_type, json.loads(body) if content_type == "application/json" else body


def query_range(emulator: PrometheusEmulator, expr: str, start: float, end: float, step: str) -> Any:
    return call(
        emulator, "/api/v1/query_range", {"query": expr, "start": str(start), "end": str(end), "step": step}
    )


def test_range_points_sit_at_start_plus_k_steps_with_prometheus_value_strings(
    emulator: PrometheusEmulator,
) -> None:
    values: dict[float, float | str | None] = {
        T0: 1.5,
        T0 + 15: math.nan,
        T0 + 30: None,
        T0 + 45: math.inf,
        T0 + 60: -math.inf,
    }
    emulator.register(
        "up",
        series_fn(lambda t: values.get(t, 0.0), job="kis", instance="a"),
        series_fn(lambda t: None, job="x"),
    )
    status, _, body = query_range(emulator, "up", T0, T0 + 70, "15")
    assert status == 200
    assert body == {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [
                {
                    "metric": {"job": "kis", "instance": "a"},
                    "values": [[T0, "1.5"], [T0 + 15, "NaN"], [T0 + 45, "+Inf"], [T0 + 60, "-Inf"]],
                }
            ],  # the gap at T0+30 is left out, and so is the series without points
        },
    }


def test_an_explicitly_empty_result_is_a_success(emulator: PrometheusEmulator) -> None:
    emulator.register("absent_metric")
    assert query_range(emulator, "absent_metric", T0, T0 + 60, "15s") == (
        200,
        "application/json",
        {"status": "success", "data": {"resultType": "matrix", "result": []}},
    )


def test_an_unregistered_query_is_bad_data_not_an_empty_result(emulator: PrometheusEmulator) -> None:
    status, _, body = query_range(emulator, "typo_metric", T0, T0 + 60, "15")
    assert (status, body["status"], body["errorType"]) == (400, "error", "bad_data")
    assert "'typo_metric'" in body["error"]


def test_scripted_prometheus_errors_and_raw_replies(emulator: PrometheusEmulator) -> None:
    emulator.register_error("slow_query", "timeout", "query timed out in expression evaluation", 503)
    emulator.register_raw("proxied", 502, b"<html>bad gateway</html>", "text/html")
    assert query_range(emulator, "slow_query", T0, T0, "15") == (
        503,
        "application/json",
        {"status": "error", "errorType": "timeout", "error": "query timed out in expression evaluation"},
    )
    assert query_range(emulator, "proxied", T0, T0, "15") == (502, "text/html", b"<html>bad gateway</html>")


def test_fail_next_fails_that_many_requests_then_answers(emulator: PrometheusEmulator) -> None:
    emulator.register_function("up", lambda t: 1.0)
    emulator.fail_next(503, count=2)
    statuses = [query_range(emulator, "up", T0, T0, "15")[0] for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert len(emulator.requests) == 3


def test_drop_next_closes_the_connection_without_a_reply(emulator: PrometheusEmulator) -> None:
    emulator.register_function("up", lambda t: 1.0)
    emulator.drop_next()
    with pytest.raises(http.client.RemoteDisconnected):
        query_range(emulator, "up", T0, T0, "15")
    assert query_range(emulator, "up", T0, T0, "15")[0] == 200


def test_held_replies_time_the_client_out_until_released(emulator: PrometheusEmulator) -> None:
    emulator.register_function("up", lambda t: 1.0)
    emulator.hold_replies()
    with pytest.raises(TimeoutError):
        call(emulator, "/api/v1/query", {"query": "up", "time": str(T0)}, timeout_s=0.2)
    emulator.release_replies()
    assert call(emulator, "/api/v1/query", {"query": "up", "time": str(T0)})[0] == 200


def test_instant_queries_answer_a_vector_at_the_given_time(emulator: PrometheusEmulator) -> None:
    emulator.register(
        "rss", series_points({T0: 1024.0}, instance="a"), series_points({T0 + 15: 1.0}, instance="b")
    )
    status, _, body = call(emulator, "/api/v1/query", {"query": "rss", "time": "2025-09-23T03:00:00Z"})
    assert (status, body["data"]) == (
        200,
        {"resultType": "vector", "result": [{"metric": {"instance": "a"}, "value": [T0, "1024.0"]}]},
    )


def params(start: float | str, end: float, step: str) -> dict[str, str]:
    return {"start": str(start), "end": str(end), "step": step}


BAD_PARAMS = [
    pytest.param(params(T0 + 60, T0, "15"), "end timestamp must not be before", id="end<start"),
    pytest.param(params(T0, T0, "0"), "zero or negative", id="zero step"),
    pytest.param(params(T0, T0 + 86_400, "1"), "11,000 points", id="too many points"),
    pytest.param(params("yesterday", T0, "15"), "valid timestamp", id="bad time"),
    pytest.param(params(T0, T0, "fast"), "valid duration", id="bad step"),
]


@pytest.mark.parametrize(("given", "message"), BAD_PARAMS)
def test_range_parameters_are_checked_like_prometheus(
    emulator: PrometheusEmulator, given: dict[str, str], message: str
) -> None:
    emulator.register_function("up", lambda t: 1.0)
    status, _, body = call(emulator, "/api/v1/query_range", {"query": "up", **given})
    assert (status, body["errorType"]) == (400, "bad_data")
    assert message in body["error"]


def test_durations_and_post_forms_are_accepted(emulator: PrometheusEmulator) -> None:
    emulator.register_function("up", lambda t: 1.0)
    form = urllib.parse.urlencode(
        {"query": "up", "start": str(T0), "end": str(T0 + 60), "step": "30s"}
    ).encode()
    status, _, body = call(emulator, "/api/v1/query_range", data=form)
    assert status == 200
    assert [p[0] for p in body["data"]["result"][0]["values"]] == [T0, T0 + 30, T0 + 60]
    assert emulator.requests[-1] == RecordedRequest(
        "POST", "/api/v1/query_range", {"query": "up", "start": str(T0), "end": str(T0 + 60), "step": "30s"}
    )


def test_unknown_paths_are_not_found(emulator: PrometheusEmulator) -> None:
    assert call(emulator, "/api/v1/series")[0] == 404


def test_the_in_process_transport_gives_the_http_answer(emulator: PrometheusEmulator) -> None:
    emulator.register_function("up", lambda t: (t - T0) / 15)
    params = urllib.parse.urlencode({"query": "up", "start": str(T0), "end": str(T0 + 45), "step": "15"})
    reply = emulator.transport()(f"http://ignored/api/v1/query_range?{params}", 1.0)
    assert (reply.status, json.loads(reply.body)) == query_range(emulator, "up", T0, T0 + 45, "15")[::2]
