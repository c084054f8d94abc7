"""PrometheusSource over real HTTP: against the emulator (parsing, error mapping, retries with recorded
sleeps, the criteria table end to end) and, where the binary exists, against a real Prometheus that
scrapes nothing, which proves every criterion's PromQL parses and that no data reads INCONCLUSIVE.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kis_estimator.workflows.incident.criteria import DEFAULT_CRITERIA, IncidentLedger, Verdict, evaluate
from kis_estimator.workflows.prometheus.client import (
    InstantResult,
    PrometheusSource,
    QueryError,
    QueryErrorKind,
    RangeResult,
    Sample,
    Series,
)
from tests.emulators.prometheus import PrometheusEmulator, series_fn
from tests.unit.test_criteria import CASES, DEPLOYED_AT, NOW, Case, run_case

T0 = DEPLOYED_AT
START, END = T0, T0 + timedelta(seconds=45)


@dataclass
class Served:
    emulator: PrometheusEmulator
    source: PrometheusSource
    sleeps: list[float]


@pytest.fixture
def served() -> Iterator[Served]:
    emulator = PrometheusEmulator()
    sleeps: list[float] = []
    with emulator.serving() as url:
        yield Served(emulator, PrometheusSource(url, sleep=sleeps.append, timeout_s=5.0), sleeps)


def at(offset_s: float) -> datetime:
    return T0 + timedelta(seconds=offset_s)


def test_a_range_query_keeps_labels_nan_and_inf(served: Served) -> None:
    values = {0: 1.5, 15: math.nan, 30: None, 45: math.inf}
    served.emulator.register("up", series_fn(lambda t: values[round(t - T0.timestamp())], job="kis"))
    result = served.source.query_range("up", START, END, 15)
    assert result.series[0].samples[1].value != result.series[0].samples[1].value  # NaN survives
    nan_free = [s for s in result.series[0].samples if not math.isnan(s.value)]
    assert nan_free == [Sample(at(0), 1.5), Sample(at(45), math.inf)]
    assert (result.expr, result.start, result.end, result.step_s, result.error) == (
        "up",
        START,
        END,
        15,
        None,
    )
    assert result.series[0].labels == {"job": "kis"}
    assert served.emulator.requests[0].params == {
        "query": "up",
        "start": "1758596400",
        "end": "1758596445",
        "step": "15",
    }


def test_an_instant_query_reads_a_vector(served: Served) -> None:
    served.emulator.register(
        "up", series_fn(lambda t: 1.0, instance="a"), series_fn(lambda t: 0.0, instance="b")
    )
    assert served.source.query("up", T0) == InstantResult(
        "up",
        T0,
        (Series({"instance": "a"}, (Sample(T0, 1.0),)), Series({"instance": "b"}, (Sample(T0, 0.0),))),
    )


def test_an_instant_query_reads_a_scalar_and_warnings(served: Served) -> None:
    body = {
        "status": "success",
        "data": {"resultType": "scalar", "result": [T0.timestamp(), "2"]},
        "warnings": ["partial response"],
    }
    served.emulator.register_raw("2", 200, json.dumps(body).encode())
    assert served.source.query("2", T0) == InstantResult(
        "2", T0, (Series({}, (Sample(T0, 2.0),)),), warnings=("partial response",)
    )


Script = Callable[[PrometheusEmulator], None]


def fail(status: int, count: int = 99) -> Script:
    return lambda emu: emu.fail_next(status, count)


def drop(count: int) -> Script:
    return lambda emu: emu.drop_next(count)


def error(error_type: str, status: int) -> Script:
    return lambda emu: emu.register_error("up", error_type, f"emulated {error_type}", status)


def raw(status: int, body: bytes) -> Script:
    return lambda emu: emu.register_raw("up", status, body)


HTTP, PROM, BAD = QueryErrorKind.HTTP, QueryErrorKind.PROMETHEUS, QueryErrorKind.BAD_RESPONSE


def qe(
    kind: QueryErrorKind, message: str, status: int | None, attempts: int, type_: str | None = None
) -> QueryError:
    return QueryError(kind, message, http_status=status, error_type=type_, attempts=attempts)


MATRIX_NUMBER = (
    b'{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,2]]}]}}'
)
VECTOR = b'{"status":"success","data":{"resultType":"vector","result":[]}}'
RETRIED = [0.5, 1.0, 2.0]
ERROR_CASES = [
    pytest.param(fail(503), qe(HTTP, "emulated failure", 503, 4), RETRIED, id="503 always"),
    pytest.param(fail(503, 2), None, [0.5, 1.0], id="503 twice then success"),
    pytest.param(drop(2), None, [0.5, 1.0], id="dropped connection twice then success"),
    pytest.param(
        error("internal", 500), qe(PROM, "emulated internal", 500, 4, "internal"), RETRIED, id="500 json"
    ),
    pytest.param(
        error("bad_data", 400), qe(PROM, "emulated bad_data", 400, 1, "bad_data"), [], id="400 bad_data"
    ),
    pytest.param(error("execution", 422), qe(PROM, "emulated execution", 422, 1, "execution"), [], id="422"),
    pytest.param(
        error("execution", 200), qe(PROM, "emulated execution", 200, 1, "execution"), [], id="200 error"
    ),
    pytest.param(fail(404), qe(HTTP, "emulated failure", 404, 1), [], id="404 text"),
    pytest.param(
        raw(200, b"<html>login</html>"), qe(BAD, "reply is not a JSON object", 200, 1), [], id="200 html"
    ),
    pytest.param(
        raw(200, VECTOR), qe(BAD, "resultType 'vector', expected one of matrix", 200, 1), [], id="vector"
    ),
    pytest.param(
        raw(200, MATRIX_NUMBER), qe(BAD, "sample value 2 is not a number", 200, 1), [], id="value number"
    ),
    pytest.param(
        lambda emu: (emu.fail_next(503), emu.register_raw("up", 200, b"[]")),
        qe(BAD, "reply is not a JSON object", 200, 2),
        [0.5],
        id="503 then a malformed reply: attempts counted",
    ),
    pytest.param(
        raw(200, b'{"status":"success"}'),
        qe(BAD, "reply lacks status 'success' and data", 200, 1),
        [],
        id="no data",
    ),
]


@pytest.mark.parametrize(("scripted", "expected", "sleeps"), ERROR_CASES)
def test_failures_become_query_errors_and_only_connection_errors_and_5xx_are_retried(
    served: Served, scripted: Script, expected: QueryError | None, sleeps: list[float]
) -> None:
    served.emulator.register_function("up", lambda t: 1.0)
    scripted(served.emulator)
    result = served.source.query_range("up", START, END, 15)
    assert (result.error, served.sleeps) == (expected, sleeps)
    assert len(served.emulator.requests) == len(sleeps) + 1
    if expected is None:
        assert len(result.series[0].samples) == 4
    else:
        assert result == RangeResult("up", START, END, 15, error=expected)


def test_connection_refused_is_a_connection_error_after_all_attempts() -> None:
    emulator = PrometheusEmulator()
    with emulator.serving() as url:
        pass  # the port is closed again: nothing listens there now
    sleeps: list[float] = []
    result = PrometheusSource(url, sleep=sleeps.append, timeout_s=2.0).query("up", T0)
    assert result.error is not None
    assert (result.error.kind, result.error.attempts, result.series, sleeps) == (
        QueryErrorKind.CONNECTION,
        4,
        (),
        [0.5, 1.0, 2.0],
    )
    assert "refused" in result.error.message.lower()


def test_a_slow_prometheus_times_out_once_without_retry(served: Served) -> None:
    served.emulator.register_function("up", lambda t: 1.0)
    served.emulator.hold_replies()
    source = PrometheusSource(served.emulator.url, sleep=served.sleeps.append, timeout_s=0.2)
    try:
        result = source.query("up", T0)
    finally:
        served.emulator.release_replies()
    assert (result.error, served.sleeps) == (
        QueryError(QueryErrorKind.TIMEOUT, "no reply within 0.2 s", attempts=1),
        [],
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_criteria_table_over_http(case: Case, served: Served, tmp_path: Path) -> None:
    evaluation = run_case(case, served.source, served.emulator, tmp_path)
    got = {r.criterion_id: r.verdict for r in evaluation.results}
    assert (got, evaluation.verdict) == (case.expected(), case.overall), [
        r.message for r in evaluation.results
    ]


# ------------------------------------------------------------------------------------ real Prometheus

READY_LINE = "Server is ready to receive web requests."


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def real_prometheus(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is not installed (tools/ensure_prometheus.sh installs it)")
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 15s\nscrape_configs: []\n", encoding="utf-8")
    address = f"127.0.0.1:{_free_port()}"
    command = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address={address}",
    ]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as process:
        ready = threading.Event()
        log: list[str] = []

        def follow() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                log.append(line)
                if READY_LINE in line:
                    ready.set()

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        try:
            if not ready.wait(timeout=60) or process.poll() is not None:
                pytest.fail("prometheus did not become ready:\n" + "".join(log[-20:]))
            yield f"http://{address}"
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)
            reader.join(timeout=5)


def test_every_criterion_query_runs_on_a_real_prometheus_and_no_data_is_inconclusive(
    real_prometheus: str, tmp_path: Path
) -> None:
    sleeps: list[float] = []
    source = PrometheusSource(real_prometheus, sleep=sleeps.append, timeout_s=10.0)
    for criterion in DEFAULT_CRITERIA:
        if not criterion.expr:
            continue
        ranged = source.query_range(
            criterion.expr, NOW - timedelta(seconds=criterion.window_s), NOW, criterion.step_s
        )
        instant = source.query(criterion.expr, NOW)
        if criterion.id == "service_down":  # no `up` series at all reads as down, never as no data
            assert ranged.error is None and instant.error is None
            assert [s.value for s in ranged.series[0].samples] == [1.0] * 5
            continue
        assert (ranged.error, ranged.series, instant.error, instant.series) == (None, (), None, ()), (
            criterion.id
        )
    evaluation = evaluate(source, NOW, DEPLOYED_AT, IncidentLedger(tmp_path))
    assert {r.criterion_id: r.verdict for r in evaluation.results} == {
        "service_down": Verdict.ROLLBACK,
        "errors_5xx": Verdict.INCONCLUSIVE,
        "p95_latency_200ms": Verdict.INCONCLUSIVE,
        "memory_leak": Verdict.INCONCLUSIVE,
        "security_vulnerability": Verdict.OK,
        "p95_latency_100ms": Verdict.INCONCLUSIVE,
        "error_rate_2pct": Verdict.INCONCLUSIVE,
        "functional_bugs": Verdict.OK,
    }
    assert evaluation.verdict is Verdict.ROLLBACK
    assert sleeps == []


def test_a_real_prometheus_error_and_special_values_map_as_documented(real_prometheus: str) -> None:
    sleeps: list[float] = []
    source = PrometheusSource(real_prometheus, sleep=sleeps.append, timeout_s=10.0)
    broken = source.query("sum(rate(grpc_server_handled_total[1m])", NOW)
    assert broken.error is not None
    assert (broken.error.kind, broken.error.error_type, broken.error.http_status, broken.error.attempts) == (
        QueryErrorKind.PROMETHEUS,
        "bad_data",
        400,
        1,
    )
    values = {expr: source.query(expr, NOW).series[0].samples[0].value for expr in ("2", "1/0", "-1/0")}
    assert values == {"2": 2.0, "1/0": math.inf, "-1/0": -math.inf}
    assert math.isnan(source.query("0/0", NOW).series[0].samples[0].value)
    ranged = source.query_range("vector(1)", NOW - timedelta(minutes=1), NOW, 15)
    assert [s.value for s in ranged.series[0].samples] == [1.0] * 5
    assert ranged.series[0].samples[0].at == (NOW - timedelta(minutes=1)).astimezone(UTC)
    assert sleeps == []
