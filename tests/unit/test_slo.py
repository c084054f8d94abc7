"""The SLO report: verdicts, rendering, exit status, and the Prometheus API client via a fake transport."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
from email.message import Message
from typing import Any

import pytest

from kis_estimator.server.slo import (
    TARGETS,
    PrometheusApi,
    SloError,
    Verdict,
    evaluate,
    exit_status,
    render,
    run_slo_report,
    slo_queries,
)

GOOD = {"p95_latency_ms": 12.0, "error_ratio": 0.001, "tat_median_s": 45.0, "auto_processing_ratio": 0.82}


def verdicts(values: dict[str, float | None]) -> list[Verdict]:
    return [r.verdict for r in evaluate(values)]


P, F, N = Verdict.PASS, Verdict.FAIL, Verdict.NO_DATA
EVALUATE_CASES = [
    pytest.param(GOOD, [P, P, P, P], 0, id="all-met"),
    pytest.param({**GOOD, "p95_latency_ms": 30.0}, [P, P, P, P], 0, id="p95-at-30ms-meets"),
    pytest.param({**GOOD, "p95_latency_ms": 30.01}, [F, P, P, P], 1, id="p95-over"),
    pytest.param({**GOOD, "error_ratio": 0.005}, [P, F, P, P], 1, id="error-rate-at-0.5pct-misses"),
    pytest.param({**GOOD, "tat_median_s": 120.0}, [P, P, P, P], 0, id="tat-at-2min-meets"),
    pytest.param({**GOOD, "auto_processing_ratio": 0.6999}, [P, P, P, F], 1, id="auto-below-70pct"),
    pytest.param({**GOOD, "auto_processing_ratio": 0.70}, [P, P, P, P], 0, id="auto-at-70pct-meets"),
    pytest.param({**GOOD, "tat_median_s": None}, [P, P, N, P], 2, id="no-data-is-not-a-pass"),
    pytest.param({**GOOD, "error_ratio": math.nan}, [P, N, P, P], 2, id="nan-is-no-data"),
    pytest.param({**GOOD, "p95_latency_ms": 99.0, "tat_median_s": None}, [F, P, N, P], 1, id="fail-wins"),
]


@pytest.mark.parametrize(("values", "expected", "status"), EVALUATE_CASES)
def test_each_target_is_judged_against_the_notice(
    values: dict[str, float | None], expected: list[Verdict], status: int
) -> None:
    results = evaluate(values)
    assert [r.verdict for r in results] == expected
    assert exit_status(results) == status


def test_report_lines() -> None:
    lines = render(evaluate({**GOOD, "p95_latency_ms": 41.5, "tat_median_s": None}), "1d")
    assert lines == [
        "SLO report, window 1d",
        "  FAIL     p95 latency         41.50 ms  target <= 30.00 ms",
        "  PASS     error rate           0.10 %   target < 0.50 %",
        "  NO DATA  TAT median              -     target <= 120.00 s   (no data in the window)",
        "  PASS     auto-processing     82.00 %   target >= 70.00 %",
        "2/4 targets met",
    ]


def test_queries_use_the_window_and_the_api_scope() -> None:
    queries = slo_queries("7d")
    assert set(queries) == {t.key for t in TARGETS}
    assert all("[7d]" in q for q in queries.values())
    assert 'grpc_type="unary"' in queries["p95_latency_ms"]
    assert 'grpc_service=~"kis[.]estimator[.].+"' in queries["error_ratio"]
    assert 'grpc_code!~"OK|INVALID_ARGUMENT|' in queries["error_ratio"]


@pytest.mark.parametrize("window", ["", "1 d", "1d) or vector(1", "5", "-1h"])
def test_a_window_that_is_not_a_duration_is_refused(window: str) -> None:
    with pytest.raises(ValueError, match="window"):
        slo_queries(window)


# --- the API client ---------------------------------------------------------------------------------


def vector(*values: str) -> bytes:
    result = [{"metric": {}, "value": [1700000000.0, v]} for v in values]
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()


def replying(body: bytes) -> Any:
    def fetch(url: str, timeout_s: float) -> bytes:
        return body

    return fetch


def failing(exc: Exception) -> Any:
    def fetch(url: str, timeout_s: float) -> bytes:
        raise exc

    return fetch


SCALAR_CASES = [
    pytest.param(replying(vector("12.5")), 12.5, id="one-sample"),
    pytest.param(replying(vector()), None, id="empty-is-no-data"),
    pytest.param(replying(vector("NaN")), None, id="nan-is-no-data"),
    pytest.param(
        replying(
            json.dumps({"status": "success", "data": {"resultType": "scalar", "result": [1, "3"]}}).encode()
        ),
        3.0,
        id="scalar",
    ),
]


@pytest.mark.parametrize(("fetch", "expected"), SCALAR_CASES)
def test_query_scalar_reads_one_sample(fetch: Any, expected: float | None) -> None:
    assert PrometheusApi("http://prom:9090", fetch=fetch).query_scalar("up") == expected


ERROR_CASES = [
    pytest.param(replying(vector("1", "2")), "2 series", id="several-series"),
    pytest.param(
        replying(json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"}).encode()),
        "bad_data: parse error",
        id="query-error",
    ),
    pytest.param(replying(b"<html>"), "malformed reply", id="not-json"),
    pytest.param(
        failing(urllib.error.HTTPError("http://prom", 503, "unavailable", Message(), None)),
        "HTTP 503",
        id="http-error",
    ),
    pytest.param(failing(urllib.error.URLError("connection refused")), "unreachable", id="unreachable"),
    pytest.param(failing(TimeoutError("timed out")), "unreachable", id="timeout"),
]


@pytest.mark.parametrize(("fetch", "message"), ERROR_CASES)
def test_query_failures_become_slo_errors(fetch: Any, message: str) -> None:
    with pytest.raises(SloError, match=message):
        PrometheusApi("http://prom:9090", fetch=fetch).query_scalar("up")


def test_query_url_encodes_the_expression() -> None:
    seen: list[str] = []

    def fetch(url: str, timeout_s: float) -> bytes:
        seen.append(url)
        return vector("1")

    PrometheusApi("http://prom:9090/", fetch=fetch).query_scalar('sum(x{a="b"}[5m])')
    parts = urllib.parse.urlsplit(seen[0])
    assert parts.path == "/api/v1/query"
    assert urllib.parse.parse_qs(parts.query) == {"query": ['sum(x{a="b"}[5m])']}


@pytest.mark.parametrize("url", ["prom:9090", "file:///etc/passwd", "ftp://prom"])
def test_only_http_urls_are_accepted(url: str) -> None:
    lines: list[str] = []
    assert run_slo_report(url, "1d", lines.append) == 2
    assert lines[0].startswith("error: prometheus URL")


# --- the whole report --------------------------------------------------------------------------------


def test_report_against_a_scripted_prometheus() -> None:
    answers = {query: vector(str(GOOD[key])) for key, query in slo_queries("1d").items()}
    answers[slo_queries("1d")["tat_median_s"]] = vector()

    def fetch(url: str, timeout_s: float) -> bytes:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["query"][0]
        return answers[query]

    lines: list[str] = []
    assert run_slo_report("http://prom:9090", "1d", lines.append, fetch=fetch) == 2
    assert [line.split()[0] for line in lines[1:5]] == ["PASS", "PASS", "NO", "PASS"]


def test_unreachable_prometheus_is_no_data_with_the_reason() -> None:
    lines: list[str] = []
    status = run_slo_report(
        "http://127.0.0.1:9", "1d", lines.append, fetch=failing(urllib.error.URLError("refused"))
    )
    assert status == 2
    assert all("NO DATA" in line and "unreachable" in line for line in lines[1:5])
    assert lines[-1] == "0/4 targets met"


def test_bad_window_is_reported_not_raised() -> None:
    lines: list[str] = []
    assert run_slo_report("http://prom:9090", "yesterday", lines.append, fetch=replying(vector())) == 2
    assert lines == ["error: window 'yesterday': expected a Prometheus duration such as 30m, 1d, 1h30m"]
