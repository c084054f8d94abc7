"""End to end with a real Prometheus: it scrapes a running estimator and evaluates deploy/prometheus rules.

The ``prometheus`` binary (Debian package, installed by ``tools/ensure_prometheus.sh`` when missing)
runs on loopback with a 1 s scrape and evaluation interval and its storage in ``tmp_path``. The
test drives real RPCs, then polls the HTTP API (bounded, the only waiting in the suite) until the
recording rules have produced the notice's series, and checks their values and the SLO report.
"""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kis_estimator.server.slo import run_slo_report
from tests.integration.test_metrics_http import Instrumented, base, start_instrumented
from tests.unit.test_promtool_rules import PROMTOOL_TIMEOUT_S, RULE_FILES, prometheus_binary

JOB = "kis-estimator"
DEADLINE_S = 45.0  # every wait below shares it
POLL_S = 0.25
OK_CALLS = 120
INVALID_CALLS = 60
UNAUTHENTICATED_CALLS = 20


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_config(directory: Path, target_port: int) -> Path:
    """Prometheus configuration (JSON is YAML) scraping the estimator's metrics endpoint."""
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in RULE_FILES],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}],
    }
    path = directory / "prometheus.yml"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


@dataclass
class Prometheus:
    url: str
    deadline: float

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """Instant query: (labels, value) per series; raises on an API error."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        with urllib.request.urlopen(url, timeout=5) as reply:
            body = json.loads(reply.read())
        assert body["status"] == "success", body
        return [(item["metric"], float(item["value"][1])) for item in body["data"]["result"]]

    def wait_for(self, what: str, ready: Callable[[], bool]) -> None:
        """Poll ``ready`` until it holds or the shared deadline passes."""
        pause = threading.Event()
        while not ready():
            if time.monotonic() > self.deadline:
                pytest.fail(f"timed out waiting for {what}")
            pause.wait(POLL_S)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
def instrumented(tmp_path: Path) -> Iterator[Instrumented]:
    running = start_instrumented(tmp_path / "kis-db")
    yield running
    running.stop()


@pytest.fixture
def prometheus(tmp_path: Path, instrumented: Instrumented) -> Iterator[Prometheus]:
    binary = prometheus_binary("prometheus")
    config = write_config(tmp_path, instrumented.http_port)
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w", encoding="utf-8")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Prometheus(url=f"http://127.0.0.1:{port}", deadline=time.monotonic() + DEADLINE_S)
    try:
        server.wait_for(
            "prometheus to be ready", lambda: process.poll() is None and _answers(f"{server.url}/-/ready")
        )
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def test_test_configuration_passes_promtool_check(tmp_path: Path) -> None:
    promtool = prometheus_binary("promtool")
    config = write_config(tmp_path, 8788)
    result = subprocess.run(
        [promtool, "check", "config", str(config)],
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


def _one(prom: Prometheus, expr: str) -> float | None:
    found = prom.query(expr)
    return found[0][1] if len(found) == 1 and math.isfinite(found[0][1]) else None


def test_recording_rules_produce_the_notice_series_from_real_traffic(
    prometheus: Prometheus, instrumented: Instrumented
) -> None:
    # A scrape before any traffic: the counters' zero baseline, so increase() counts every call.
    prometheus.wait_for(
        "a first scrape with the pre-created series",
        lambda: _one(prometheus, f'sum(grpc_server_handled_total{{job="{JOB}",grpc_code="OK"}})') == 0,
    )
    calls = 0
    for i in range(max(OK_CALLS, INVALID_CALLS, UNAUTHENTICATED_CALLS)):
        for wanted, limit, request, role in (
            ("OK", OK_CALLS, base(), "ESTIMATOR"),
            ("INVALID_ARGUMENT", INVALID_CALLS, base(brand="HYUNDAI"), "ESTIMATOR"),
            ("UNAUTHENTICATED", UNAUTHENTICATED_CALLS, base(), None),
        ):
            if i < limit:
                assert instrumented.create(request, role=role) == wanted
                calls += 1

    seed = ("http_2xx_count", "http_4xx_count", "http_5xx_count", "latency_p95_ms", "evidence_zip_bytes_avg")
    selector = f'{{job="{JOB}"}}'
    total = f'sum(grpc_server_handled_total{{job="{JOB}",grpc_service=~"kis[.]estimator[.].+"}})'

    def settled() -> bool:
        # every series recorded, and computed from a scrape that saw all of the calls
        scraped = _one(prometheus, total) == calls
        return scraped and all(_one(prometheus, name + selector) is not None for name in seed)

    prometheus.wait_for("the recording rules over all calls", settled)
    # one more evaluation after the last scrape
    evaluated = time.monotonic() + 2.5
    prometheus.wait_for("one more rule evaluation", lambda: time.monotonic() > evaluated)
    values = {name: _one(prometheus, name + selector) for name in seed}
    values["mixed_exceptions_used_monthly"] = _one(prometheus, "mixed_exceptions_used_monthly" + selector)
    values["error_ratio"] = _one(prometheus, "job:kis_request_errors:ratio_rate1m" + selector)
    values["auto_ratio"] = _one(prometheus, "job:kis_estimates_auto_processed:ratio_1h" + selector)
    # increase() over 1m extrapolates a little past the first and last sample: allow that margin.
    client_errors = INVALID_CALLS + UNAUTHENTICATED_CALLS
    assert OK_CALLS * 0.8 <= (values["http_2xx_count"] or 0) <= OK_CALLS * 1.6, values
    assert client_errors * 0.8 <= (values["http_4xx_count"] or 0) <= client_errors * 1.6, values
    assert values["http_5xx_count"] == 0, values
    assert values["error_ratio"] == 0, values
    assert 0 < (values["latency_p95_ms"] or 0) < 1000, values
    assert 1024 < (values["evidence_zip_bytes_avg"] or 0) < 16 * 1024 * 1024, values
    assert values["mixed_exceptions_used_monthly"] == 1, values  # the fixture's seeded MIXED estimate
    assert values["auto_ratio"] == 1.0, values  # the base request is auto-completed


def test_slo_report_reads_a_real_prometheus(prometheus: Prometheus, instrumented: Instrumented) -> None:
    prometheus.wait_for(
        "a first scrape with the pre-created series",
        lambda: _one(prometheus, f'sum(grpc_server_handled_total{{job="{JOB}",grpc_code="OK"}})') == 0,
    )
    for _ in range(20):
        assert instrumented.create(base()) == "OK"
    latency = f'sum(grpc_server_handling_seconds_count{{job="{JOB}",grpc_method="CreateEstimate"}})'
    prometheus.wait_for("a scrape of all calls", lambda: _one(prometheus, latency) == 20)

    lines: list[str] = []
    status = run_slo_report(prometheus.url, "5m", lines.append)

    verdicts = {
        m.group(2): m.group(1)
        for line in lines
        if (m := re.match(r"\s+(PASS|FAIL|NO DATA)\s+(\S+(?: \S+)?)", line))
    }
    assert status in (0, 1), lines  # measured: p95 may or may not meet 30 ms on a loaded machine
    assert verdicts["error rate"] == "PASS", lines
    assert verdicts["TAT median"] == "PASS", lines  # auto-completed: TAT 0, in the first bucket
    assert verdicts["auto-processing"] == "PASS", lines
    assert verdicts["p95 latency"] in ("PASS", "FAIL"), lines
    assert lines[-1].endswith("targets met"), lines
