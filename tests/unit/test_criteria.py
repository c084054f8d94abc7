"""The rollback criteria engine against the Prometheus query emulator, in-process (no sockets).

``PrometheusSource`` talks to :class:`PrometheusEmulator` through its in-process transport, so the
real request building, JSON parsing, error mapping and retries run; only the socket is skipped.
``tests/integration/test_prometheus_source.py`` runs the same table over real HTTP.
"""

from __future__ import annotations

import json
import math
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kis_estimator.workflows.incident.criteria import (
    DEFAULT_CRITERIA,
    MIB,
    CheckKind,
    Criterion,
    Evaluation,
    IncidentLedger,
    IncidentLedgerError,
    LedgerEntryKind,
    Severity,
    ValueSummary,
    Verdict,
    build_criteria,
    evaluate,
    least_squares,
)
from kis_estimator.workflows.prometheus.client import PrometheusSource
from kis_estimator.workflows.tracker.protocol import TrackerError
from tests.emulators.prometheus import PrometheusEmulator, series_fn

DEPLOYED_AT = datetime(2025, 9, 23, 3, 0, tzinfo=UTC)  # the notice's 2025-09-23 12:00:00 KST
D = DEPLOYED_AT.timestamp()
NOW = DEPLOYED_AT + timedelta(minutes=30)
N = NOW.timestamp()

BY_ID = {c.id: c for c in DEFAULT_CRITERIA}
EXPR = {
    "5xx": BY_ID["errors_5xx"].expr,
    "p95": BY_ID["p95_latency_200ms"].expr,
    "rss": BY_ID["memory_leak"].expr,
    "ratio": BY_ID["error_rate_2pct"].expr,
    "down": BY_ID["service_down"].expr,
}
assert EXPR["p95"] == BY_ID["p95_latency_100ms"].expr
IDS = tuple(c.id for c in DEFAULT_CRITERIA)
Script = Callable[[PrometheusEmulator, str], None]


def noise(t: float, amplitude: float) -> float:
    """Deterministic noise in [-amplitude, amplitude] for unix time t."""
    return random.Random(int(t)).uniform(-amplitude, amplitude)


# ------------------------------------------------------------------------------------ scripts


def const(value: float) -> Script:
    return lambda emu, expr: emu.register_function(expr, lambda t: value)


def fn(f: Callable[[float], float | str | None]) -> Script:
    return lambda emu, expr: emu.register_function(expr, f)


def empty() -> Script:
    return lambda emu, expr: emu.register(expr)


def prom_error(error_type: str, status: int) -> Script:
    return lambda emu, expr: emu.register_error(expr, error_type, "emulated failure", status)


def http_status(status: int) -> Script:
    return lambda emu, expr: emu.register_raw(expr, status, b"<html>upstream unavailable</html>", "text/html")


def leaking(rate_mib_per_min: float, noise_mib: float) -> Callable[[float], float]:
    return lambda t: 200 * MIB + rate_mib_per_min * MIB * (t - D) / 60 + noise(t, noise_mib * MIB)


HEALTHY: dict[str, Script] = {
    "5xx": const(0.0),
    "p95": fn(lambda t: 25 + noise(t, 3)),
    "rss": fn(leaking(0.0, 2.0)),
    "ratio": const(0.001),
    "down": const(0.0),
}


@dataclass(frozen=True)
class Case:
    id: str
    scripts: Mapping[str, Script] = field(default_factory=dict)  # overrides of HEALTHY, by EXPR key
    verdicts: Mapping[str, Verdict] = field(default_factory=dict)  # criteria not listed: OK
    overall: Verdict = Verdict.OK
    security_at: tuple[datetime, ...] = ()
    bugs_at: tuple[datetime, ...] = ()
    extra_bugs: int | None = None
    now: datetime = NOW

    def expected(self) -> dict[str, Verdict]:
        return {i: self.verdicts.get(i, Verdict.OK) for i in IDS}


INC = Verdict.INCONCLUSIVE
P = Verdict.PENDING
QUERIED = tuple(c.id for c in DEFAULT_CRITERIA if c.expr)
SINCE = DEPLOYED_AT + timedelta(minutes=10)

CASES = [
    Case("all healthy"),
    Case(
        "service down (scrape up == 0 or no up series) for 1 min",
        {"down": const(1.0)},
        {"service_down": Verdict.ROLLBACK},
        Verdict.ROLLBACK,
    ),
    Case(
        "service down for 45 s of the minute (a restart)", {"down": fn(lambda t: 1.0 if t > N - 45 else 0.0)}
    ),
    Case("5xx sustained 3 min", {"5xx": const(25)}, {"errors_5xx": Verdict.ROLLBACK}, Verdict.ROLLBACK),
    Case(
        "5xx breach with one sample at the threshold",
        {"5xx": fn(lambda t: 10.0 if t == N - 90 else 25.0)},
    ),
    Case("5xx breach for 2.5 of 3 min", {"5xx": fn(lambda t: 25.0 if t > N - 150 else 2.0)}),
    Case("5xx just below threshold throughout", {"5xx": const(10.0)}),
    Case(
        "5xx sustained with one gap (92 % coverage)",
        {"5xx": fn(lambda t: None if t == N - 60 else 25.0)},
        {"errors_5xx": Verdict.ROLLBACK},
        Verdict.ROLLBACK,
    ),
    Case(
        "5xx gaps below coverage",
        {"5xx": fn(lambda t: None if int(t) % 30 else 25.0)},
        {"errors_5xx": INC},
        Verdict.REVIEW,
    ),
    Case("5xx empty result", {"5xx": empty()}, {"errors_5xx": INC}, Verdict.REVIEW),
    Case("5xx query bad_data", {"5xx": prom_error("bad_data", 400)}, {"errors_5xx": INC}, Verdict.REVIEW),
    Case(
        "p95 over 200 ms for 4 of 5 min",
        {"p95": fn(lambda t: 250.0 if t > N - 240 else 25.0)},
    ),
    Case(
        "p95 over 200 ms for 6 min",
        {"p95": fn(lambda t: 250.0 if t >= N - 360 else 25.0)},
        {"p95_latency_200ms": Verdict.ROLLBACK},
        Verdict.ROLLBACK,
    ),
    Case(
        "p95 over 100 ms for 11 min",
        {"p95": fn(lambda t: 150.0 if t >= N - 660 else 25.0)},
        {"p95_latency_100ms": Verdict.REVIEW},
        Verdict.REVIEW,
    ),
    Case(
        "p95 +Inf throughout",
        {"p95": const(math.inf)},
        {"p95_latency_200ms": Verdict.ROLLBACK, "p95_latency_100ms": Verdict.REVIEW},
        Verdict.ROLLBACK,
    ),
    Case(
        "p95 one NaN sample",
        {"p95": fn(lambda t: "NaN" if t == N - 30 else 25.0)},
        {"p95_latency_200ms": INC, "p95_latency_100ms": INC},
        Verdict.REVIEW,
    ),
    Case(
        "p95 NaN sample alongside a breach",
        {"p95": fn(lambda t: math.nan if t == N - 30 else 250.0)},
        {"p95_latency_200ms": INC, "p95_latency_100ms": INC},
        Verdict.REVIEW,
    ),
    Case(
        "p95 HTTP 503",
        {"p95": http_status(503)},
        {"p95_latency_200ms": INC, "p95_latency_100ms": INC},
        Verdict.REVIEW,
    ),
    Case(
        "error rate 5 % for 11 min",
        {"ratio": fn(lambda t: 0.05 if t >= N - 660 else 0.001)},
        {"error_rate_2pct": Verdict.REVIEW},
        Verdict.REVIEW,
    ),
    Case(
        "error rate execution error",
        {"ratio": prom_error("execution", 422)},
        {"error_rate_2pct": INC},
        Verdict.REVIEW,
    ),
    Case(
        "memory grows 2 MiB/min with noise",
        {"rss": fn(leaking(2.0, 1.0))},
        {"memory_leak": Verdict.ROLLBACK},
        Verdict.ROLLBACK,
    ),
    Case("memory grows 0.5 MiB/min steadily", {"rss": fn(leaking(0.5, 0.1))}),
    Case("memory flat with large noise", {"rss": fn(leaking(0.0, 8.0))}),
    Case(
        "memory too few samples",
        {"rss": fn(lambda t: 200.0 * MIB if int(t) % 90 == 0 else None)},
        {"memory_leak": INC},
        Verdict.REVIEW,
    ),
    Case(
        "memory NaN sample",
        {"rss": fn(lambda t: math.nan if t == N else 200.0 * MIB)},
        {"memory_leak": INC},
        Verdict.REVIEW,
    ),
    Case(
        "memory: one of two processes leaks",
        {
            "rss": lambda emu, expr: emu.register(
                expr,
                series_fn(leaking(0.0, 1.0), job="kis", instance="a:9100"),
                series_fn(leaking(3.0, 1.0), job="kis", instance="b:9100"),
            )
        },
        {"memory_leak": Verdict.ROLLBACK},
        Verdict.ROLLBACK,
    ),
    Case(
        "security declared since the deploy",
        security_at=(SINCE,),
        verdicts={"security_vulnerability": Verdict.ROLLBACK},
        overall=Verdict.ROLLBACK,
    ),
    Case("security declared before the deploy", security_at=(DEPLOYED_AT - timedelta(days=1),)),
    Case("two bug reports", bugs_at=(SINCE, SINCE + timedelta(minutes=1))),
    Case(
        "three bug reports",
        bugs_at=(SINCE, SINCE + timedelta(minutes=1), SINCE + timedelta(minutes=2)),
        verdicts={"functional_bugs": Verdict.REVIEW},
        overall=Verdict.REVIEW,
    ),
    Case(
        "two ledger reports and one Jira issue",
        bugs_at=(SINCE, SINCE + timedelta(minutes=1)),
        extra_bugs=1,
        verdicts={"functional_bugs": Verdict.REVIEW},
        overall=Verdict.REVIEW,
    ),
    Case(
        "three bug reports, two of them before the deploy",
        bugs_at=(DEPLOYED_AT - timedelta(hours=2), DEPLOYED_AT - timedelta(hours=1), SINCE),
    ),
    Case(
        "worst wins: rollback over review and inconclusive",
        {"5xx": const(25), "ratio": const(0.05), "rss": empty()},
        {"errors_5xx": Verdict.ROLLBACK, "error_rate_2pct": Verdict.REVIEW, "memory_leak": INC},
        Verdict.ROLLBACK,
    ),
    Case(
        "worst wins: inconclusive counts as review",
        {"p95": http_status(503)},
        {"p95_latency_200ms": INC, "p95_latency_100ms": INC, "functional_bugs": Verdict.REVIEW},
        Verdict.REVIEW,
        bugs_at=(SINCE, SINCE, SINCE + timedelta(seconds=1)),
    ),
    Case(
        "deploy 2 min ago, 5xx breaching: pending, not rollback",
        {"5xx": const(25)},
        {i: P for i in QUERIED if i != "service_down"},  # its one-minute window has elapsed
        Verdict.OK,
        now=DEPLOYED_AT + timedelta(minutes=2),
    ),
    Case(
        "deploy 2 min ago, no data: inconclusive",
        {"5xx": empty(), "p95": empty(), "ratio": empty()},
        {
            "errors_5xx": INC,
            "p95_latency_200ms": INC,
            "p95_latency_100ms": INC,
            "error_rate_2pct": INC,
            "memory_leak": P,
        },
        Verdict.REVIEW,
        now=DEPLOYED_AT + timedelta(minutes=2),
    ),
    Case(
        "deploy 30 s ago: nothing to query yet",
        {"5xx": empty(), "p95": empty(), "ratio": empty(), "rss": empty()},
        dict.fromkeys(QUERIED, P),
        Verdict.OK,
        now=DEPLOYED_AT + timedelta(seconds=30),
    ),
]


def script(emulator: PrometheusEmulator, case: Case) -> None:
    for key, expr in EXPR.items():
        case.scripts.get(key, HEALTHY[key])(emulator, expr)


def run_case(
    case: Case, source: PrometheusSource, emulator: PrometheusEmulator, tmp_path: Path
) -> Evaluation:
    script(emulator, case)
    ledger = IncidentLedger(tmp_path / "state")
    for i, at in enumerate(case.security_at):
        ledger.declare_security(f"CVE-2025-{i:04d} in the evidence endpoint", "secops", at)
    for i, at in enumerate(case.bugs_at):
        ledger.report_bug(f"wrong enclosure size #{i}", "ops", at)
    extra = None if case.extra_bugs is None else (lambda since: case.extra_bugs or 0)
    return evaluate(source, case.now, DEPLOYED_AT, ledger, extra_bug_count=extra)


def in_process(emulator: PrometheusEmulator, sleeps: list[float]) -> PrometheusSource:
    return PrometheusSource(
        "http://prometheus.emulated:9090", sleep=sleeps.append, transport=emulator.transport()
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_criteria_table(case: Case, tmp_path: Path) -> None:
    emulator = PrometheusEmulator()
    evaluation = run_case(case, in_process(emulator, []), emulator, tmp_path)
    got = {r.criterion_id: r.verdict for r in evaluation.results}
    assert (got, evaluation.verdict) == (case.expected(), case.overall), [
        r.message for r in evaluation.results
    ]


# ------------------------------------------------------------------------------------ details


def evaluate_with(tmp: Path, scripts: Mapping[str, Script], now: datetime = NOW) -> Evaluation:
    emulator = PrometheusEmulator()
    case = Case("detail", scripts, now=now)
    return run_case(case, in_process(emulator, []), emulator, tmp)


def test_a_sustained_breach_records_query_window_samples_and_summary(tmp_path: Path) -> None:
    result = evaluate_with(tmp_path, {"5xx": fn(lambda t: 20.0 + (t - N + 180) / 15)}).result("errors_5xx")
    assert result.verdict is Verdict.ROLLBACK
    assert (result.query, result.window_s, result.step_s, result.threshold) == (EXPR["5xx"], 180, 15, 10)
    assert (result.start, result.end) == (NOW - timedelta(minutes=3), NOW)
    assert (result.samples, result.expected_samples, result.coverage) == (13, 13, 1.0)
    assert result.summary == ValueSummary(min=20.0, max=32.0, last=32.0)
    assert [p.at for p in result.points][:2] == [NOW - timedelta(minutes=3), NOW - timedelta(seconds=165)]
    assert result.message == "all 13 samples over 180 s > 10 /min (min 20 /min, last 32 /min)"


def test_a_query_failure_says_why_and_retries_only_5xx(tmp_path: Path) -> None:
    emulator = PrometheusEmulator()
    sleeps: list[float] = []
    evaluation = run_case(
        Case("503", {"p95": http_status(503)}), in_process(emulator, sleeps), emulator, tmp_path
    )
    result = evaluation.result("p95_latency_200ms")
    assert result.verdict is Verdict.INCONCLUSIVE
    assert result.message == "query failed: HTTP 503: <html>upstream unavailable</html> (after 4 attempt(s))"
    # Two p95 criteria, each 4 attempts with 3 waits; nothing else retried.
    assert sleeps == [0.5, 1.0, 2.0] * 2


def test_the_window_never_reaches_before_the_deploy(tmp_path: Path) -> None:
    """Old-version errors right before the deploy are never queried; the window starts at deploy + 1m."""
    emulator = PrometheusEmulator()
    now = DEPLOYED_AT + timedelta(minutes=4)
    case = Case("pre-deploy", {"5xx": fn(lambda t: 50.0 if t < D + 60 else 1.0)}, now=now)
    evaluation = run_case(case, in_process(emulator, []), emulator, tmp_path)
    result = evaluation.result("errors_5xx")
    assert (result.verdict, result.start, result.samples) == (
        Verdict.OK,
        DEPLOYED_AT + timedelta(minutes=1),
        13,
    )
    p95 = evaluation.result("p95_latency_200ms")  # 5-minute window, 3 minutes of post-deploy samples
    assert (p95.verdict, p95.start, p95.expected_samples) == (
        Verdict.PENDING,
        DEPLOYED_AT + timedelta(minutes=1),
        13,
    )
    starts = {float(r.params["start"]) for r in emulator.requests}
    assert min(starts) == D + 60


def test_pending_reports_the_breach_so_far(tmp_path: Path) -> None:
    result = evaluate_with(tmp_path, {"5xx": const(25)}, now=DEPLOYED_AT + timedelta(minutes=2)).result(
        "errors_5xx"
    )
    assert result.verdict is Verdict.PENDING
    assert result.message == "pending: 60 of 180 s elapsed since the deploy; 5 of 5 samples > 10 /min so far"


def test_nothing_is_queried_before_the_first_post_deploy_sample(tmp_path: Path) -> None:
    emulator = PrometheusEmulator()
    now = DEPLOYED_AT + timedelta(seconds=59)
    evaluation = run_case(Case("fresh", now=now), in_process(emulator, []), emulator, tmp_path)
    assert (evaluation.verdict, emulator.requests) == (Verdict.OK, [])
    assert evaluation.result("errors_5xx").message == (
        "pending: the first sample after the deploy is due at 2025-09-23T03:01:00Z (deploy + 60 s); "
        "nothing queried"
    )


def test_memory_leak_records_slope_and_fit(tmp_path: Path) -> None:
    result = evaluate_with(tmp_path, {"rss": fn(leaking(2.0, 1.0))}).result("memory_leak")
    assert result.verdict is Verdict.ROLLBACK
    assert result.stats["slope_per_min"] == pytest.approx(2 * MIB, rel=0.05)
    assert result.stats["r_squared"] > 0.95
    assert (result.samples, result.expected_samples, result.start) == (61, 61, NOW - timedelta(minutes=15))


def test_memory_flat_noise_has_a_low_fit(tmp_path: Path) -> None:
    result = evaluate_with(tmp_path, {"rss": fn(leaking(0.0, 8.0))}).result("memory_leak")
    assert result.verdict is Verdict.OK
    assert result.stats["r_squared"] < 0.8


def test_a_trend_with_coverage_but_too_few_samples_is_inconclusive(tmp_path: Path) -> None:
    criterion = Criterion(
        id="rss_short",
        severity=Severity.IMMEDIATE,
        kind=CheckKind.TREND,
        notice="test",
        expr="rss",
        window_s=300,
        step_s=15,
        threshold=MIB,
        min_coverage=0.5,
        min_samples=20,
        min_r_squared=0.8,
    )
    emulator = PrometheusEmulator()
    emulator.register_function("rss", lambda t: 200.0 * MIB + (t - D) * MIB if int(t) % 30 == 0 else None)
    evaluation = evaluate(
        in_process(emulator, []), NOW, DEPLOYED_AT, IncidentLedger(tmp_path), criteria=[criterion]
    )
    result = evaluation.result("rss_short")
    assert (result.verdict, result.samples, result.expected_samples) == (Verdict.INCONCLUSIVE, 11, 21)
    assert result.message == "11 samples, a trend needs at least 20"


def test_a_failing_tracker_count_is_inconclusive_unless_the_ledger_already_reaches_the_threshold(
    tmp_path: Path,
) -> None:
    def broken(since: datetime) -> int:
        raise TrackerError("jira down", retryable=True, status=503)

    emulator = PrometheusEmulator()
    script(emulator, Case("healthy"))
    ledger = IncidentLedger(tmp_path)
    source = in_process(emulator, [])
    first = evaluate(source, NOW, DEPLOYED_AT, ledger, extra_bug_count=broken).result("functional_bugs")
    assert (first.verdict, first.samples) == (Verdict.INCONCLUSIVE, 0)
    assert first.message == "0 bug report(s) counted (0 in the ledger) but tracker count failed: jira down"
    for minute in range(3):
        ledger.report_bug(f"bug {minute}", "ops", SINCE + timedelta(minutes=minute))
    second = evaluate(source, NOW, DEPLOYED_AT, ledger, extra_bug_count=broken).result("functional_bugs")
    assert (second.verdict, second.samples) == (Verdict.REVIEW, 3)


def test_a_corrupt_ledger_is_inconclusive(tmp_path: Path) -> None:
    emulator = PrometheusEmulator()
    script(emulator, Case("healthy"))
    ledger = IncidentLedger(tmp_path)
    ledger.path.write_text("{not json", encoding="utf-8")
    evaluation = evaluate(in_process(emulator, []), NOW, DEPLOYED_AT, ledger)
    assert evaluation.result("security_vulnerability").verdict is Verdict.INCONCLUSIVE
    assert evaluation.result("functional_bugs").verdict is Verdict.INCONCLUSIVE
    assert evaluation.verdict is Verdict.REVIEW


def test_to_json_is_a_complete_snapshot(tmp_path: Path) -> None:
    evaluation = evaluate_with(tmp_path, {"5xx": const(25), "p95": fn(lambda t: "NaN" if t == N else 25.0)})
    data = json.loads(evaluation.to_json())
    assert data["verdict"] == "ROLLBACK"
    assert (data["now"], data["deployed_at"]) == ("2025-09-23T03:30:00Z", "2025-09-23T03:00:00Z")
    rows = {row["criterion"]: row for row in data["criteria"]}
    assert list(rows) == list(IDS)
    assert set(rows["errors_5xx"]) == {
        "criterion", "class", "notice", "query", "window_s", "step_s", "threshold", "comparison", "unit",
        "verdict", "message", "start", "end", "samples", "expected_samples", "coverage", "summary", "labels",
        "points", "stats",
    }  # fmt: skip
    assert rows["errors_5xx"]["points"][0] == ["2025-09-23T03:27:00Z", 25.0]
    assert rows["p95_latency_200ms"]["points"][-1] == ["2025-09-23T03:30:00Z", "NaN"]
    assert rows["p95_latency_200ms"]["verdict"] == "INCONCLUSIVE"
    assert rows["memory_leak"]["stats"].keys() == {"slope_per_min", "r_squared"}
    assert evaluation.to_json() == evaluation.to_json()


def test_breaching_series_lists_only_breaches(tmp_path: Path) -> None:
    evaluation = evaluate_with(tmp_path, {"5xx": const(25), "rss": fn(leaking(2.0, 1.0))})
    charts = {s.criterion_id: s for s in evaluation.breaching_series()}
    assert list(charts) == ["errors_5xx", "memory_leak"]
    assert (charts["errors_5xx"].threshold, len(charts["errors_5xx"].values)) == (10, 13)
    assert charts["errors_5xx"].timestamps[-1] == NOW
    assert charts["memory_leak"].threshold is None  # a slope has no place on the bytes axis


def test_evaluate_refuses_naive_or_future_times(tmp_path: Path) -> None:
    source = in_process(PrometheusEmulator(), [])
    ledger = IncidentLedger(tmp_path)
    with pytest.raises(ValueError, match="aware"):
        evaluate(source, NOW.replace(tzinfo=None), DEPLOYED_AT, ledger)
    with pytest.raises(ValueError, match="after now"):
        evaluate(source, DEPLOYED_AT, NOW, ledger)


# ------------------------------------------------------------------------------------ definitions

API = 'grpc_service=~"kis[.]estimator[.].+"'
NOT_5XX = (
    "OK|INVALID_ARGUMENT|NOT_FOUND|ALREADY_EXISTS|PERMISSION_DENIED|UNAUTHENTICATED|"
    "RESOURCE_EXHAUSTED|FAILED_PRECONDITION|OUT_OF_RANGE|CANCELLED|DEADLINE_EXCEEDED"
)


def test_the_criteria_table() -> None:
    table = [
        (c.id, c.severity, c.kind, c.window_s, c.step_s, c.threshold, c.comparison.value)
        for c in DEFAULT_CRITERIA
    ]
    assert table == [
        ("service_down", Severity.IMMEDIATE, CheckKind.SUSTAINED, 60, 15, 1, ">="),
        ("errors_5xx", Severity.IMMEDIATE, CheckKind.SUSTAINED, 180, 15, 10, ">"),
        ("p95_latency_200ms", Severity.IMMEDIATE, CheckKind.SUSTAINED, 300, 15, 200, ">"),
        ("memory_leak", Severity.IMMEDIATE, CheckKind.TREND, 900, 15, MIB, ">"),
        ("security_vulnerability", Severity.IMMEDIATE, CheckKind.SECURITY_DECLARED, 0, 0, 1, ">="),
        ("p95_latency_100ms", Severity.REVIEW, CheckKind.SUSTAINED, 600, 15, 100, ">"),
        ("error_rate_2pct", Severity.REVIEW, CheckKind.SUSTAINED, 600, 15, 0.02, ">"),
        ("functional_bugs", Severity.REVIEW, CheckKind.BUG_REPORTS, 0, 0, 3, ">="),
    ]
    errors = (
        f'sum(increase(grpc_server_handled_total{{{API}, grpc_code!~"{NOT_5XX}"}}[1m]))'
        f" or (0 * sum(increase(grpc_server_handled_total{{{API}}}[1m])))"
    )
    assert EXPR["5xx"] == errors
    assert EXPR["down"] == '(1 - max(up{job="kis-estimator"})) or on() vector(1)'
    assert EXPR["ratio"] == f"({errors}) / sum(increase(grpc_server_handled_total{{{API}}}[1m]))"
    assert EXPR["p95"] == (
        "1000 * histogram_quantile(0.95, sum by (le) "
        f'(rate(grpc_server_handling_seconds_bucket{{{API}, grpc_type="unary"}}[1m])))'
    )
    assert EXPR["rss"] == (
        "process_resident_memory_bytes and on (job, instance) group by (job, instance) "
        f"(grpc_server_handled_total{{{API}}})"
    )


def test_the_5xx_set_matches_the_recording_rules() -> None:
    rules = (Path(__file__).resolve().parents[2] / "deploy/prometheus/recording.rules.yml").read_text("utf-8")
    assert f'grpc_code!~"{NOT_5XX}"' in rules


def test_a_selector_scopes_every_series() -> None:
    scoped = {c.id: c.expr for c in build_criteria('job="kis-prod", env!="staging"', bug_report_threshold=5)}
    for expr in filter(None, scoped.values()):
        assert expr.count('job="kis-prod"') == expr.count("{") > 0
    assert scoped["memory_leak"].startswith(
        'process_resident_memory_bytes{job="kis-prod", env!="staging"} and'
    )
    assert build_criteria(bug_report_threshold=5)[-1].threshold == 5


@pytest.mark.parametrize("selector", ['job="a"} or vector(1) or {x="', "job=kis", 'job="a", ,'])
def test_a_malformed_selector_is_refused(selector: str) -> None:
    with pytest.raises(ValueError, match="selector"):
        build_criteria(selector)


def test_a_criterion_window_must_be_whole_steps() -> None:
    with pytest.raises(ValueError, match="multiple of step_s"):
        Criterion("x", Severity.REVIEW, CheckKind.SUSTAINED, "x", expr="up", window_s=100, step_s=15)


LSQ_CASES = [
    pytest.param([0, 1, 2, 3], [1, 3, 5, 7], (2.0, 1.0), id="exact line"),
    pytest.param([0, 1, 2, 3], [5, 5, 5, 5], (0.0, 0.0), id="constant: nothing explained"),
    pytest.param([0, 1, 2, 3], [0, 1, 0, 1], (0.2, 0.2), id="zigzag"),
]


@pytest.mark.parametrize(("xs", "ys", "expected"), LSQ_CASES)
def test_least_squares(xs: list[float], ys: list[float], expected: tuple[float, float]) -> None:
    assert least_squares(xs, ys) == pytest.approx(expected)


# ------------------------------------------------------------------------------------ ledger


def test_the_ledger_persists_and_filters_by_time(tmp_path: Path) -> None:
    ledger = IncidentLedger(tmp_path / "state")
    first = ledger.declare_security("CVE-2025-0001", "secops", SINCE)
    ledger.report_bug("wrong price", "ops", SINCE + timedelta(minutes=1))
    ledger.report_bug("old bug", "ops", DEPLOYED_AT - timedelta(minutes=1))
    again = IncidentLedger(tmp_path / "state")
    assert [e.kind for e in again.entries()] == [
        LedgerEntryKind.BUG,
        LedgerEntryKind.SECURITY,
        LedgerEntryKind.BUG,
    ]
    assert again.security_declarations(DEPLOYED_AT, NOW) == (first,)
    assert [e.text for e in again.bug_reports(DEPLOYED_AT, NOW)] == ["wrong price"]


def test_the_same_report_recorded_twice_is_one_entry(tmp_path: Path) -> None:
    ledger = IncidentLedger(tmp_path)
    a = ledger.report_bug("wrong price", "ops", SINCE)
    b = ledger.report_bug("wrong price", "ops", SINCE)
    assert a == b
    assert len(ledger.entries()) == 1


def test_the_ledger_refuses_naive_times_and_empty_text(tmp_path: Path) -> None:
    ledger = IncidentLedger(tmp_path)
    with pytest.raises(ValueError, match="aware"):
        ledger.report_bug("x", "ops", datetime(2025, 9, 23, 12, 0))  # noqa: DTZ001 - the naive time is the point
    with pytest.raises(ValueError, match="empty"):
        ledger.declare_security(" ", "ops", SINCE)


def test_a_missing_ledger_is_empty_and_a_corrupt_one_is_an_error(tmp_path: Path) -> None:
    ledger = IncidentLedger(tmp_path / "never-written")
    assert ledger.entries() == ()
    ledger.state_dir.mkdir()
    ledger.path.write_text('{"version": 1, "entries": [{"id": "x"}]}', encoding="utf-8")
    with pytest.raises(IncidentLedgerError, match="corrupt"):
        ledger.entries()


def test_concurrent_writers_lose_no_entry(tmp_path: Path) -> None:
    ledger = IncidentLedger(tmp_path)
    threads = [
        threading.Thread(target=ledger.report_bug, args=(f"bug {i}", "ops", SINCE + timedelta(seconds=i)))
        for i in range(16)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(e.text for e in IncidentLedger(tmp_path).entries()) == sorted(f"bug {i}" for i in range(16))
