"""The rollback criteria engine: the GA 1.0 notice's "롤백 결정 기준" evaluated over sliding windows.

The GA-1.0.0 deployment notice ("🔄 롤백 결정 기준"; summarised in docs/release-notice.md) lists, and
:func:`build_criteria` encodes as data:

=========================  ===========  ======================================  ======  =====  ============
id                         class        what (notice)                           window  step   threshold
=========================  ===========  ======================================  ======  =====  ============
``service_down``           IMMEDIATE    (added) 서비스 응답 없음 (1분 지속)     1 min   15 s   ≥ 1 (down)
``errors_5xx``             IMMEDIATE    5xx 에러 > 10/분 (3분 지속)             3 min   15 s   > 10 /min
``p95_latency_200ms``      IMMEDIATE    P95 > 200ms (5분 지속)                  5 min   15 s   > 200 ms
``memory_leak``            IMMEDIATE    메모리 누수 감지                        15 min  15 s   > 1 MiB/min
``security_vulnerability`` IMMEDIATE    보안 취약점 발견                        deploy  —      ≥ 1 declared
``p95_latency_100ms``      REVIEW       P95 > 100ms (10분 지속)                 10 min  15 s   > 100 ms
``error_rate_2pct``        REVIEW       오류율 > 2% (10분 지속)                 10 min  15 s   > 0.02
``functional_bugs``        REVIEW       기능 오류 보고 3건 이상                 deploy  —      ≥ 3 reports
=========================  ===========  ======================================  ======  =====  ============

Choices (the notice is silent on them):

* **Raw series, not recording rules.** The expressions read ``grpc_server_handled_total`` and
  ``grpc_server_handling_seconds_bucket`` directly, scoped like ``deploy/prometheus/recording.rules.yml``
  (``grpc_service=~"kis[.]estimator[.].+"``; latency of unary calls only), so the engine works on a
  Prometheus without our rules loaded and agrees with them where they are.
* **Service down** is not in the notice's list; a service that stopped answering must not read as
  "no data, please review". ``up == 0`` (Prometheus could not scrape it) or no ``up`` series of the
  job at all, for a whole minute, is an immediate rollback (``KisEstimatorDown`` in
  ``deploy/prometheus/alerts.rules.yml`` is the same condition as an alert).
* **5xx** is every gRPC code except ``OK`` and the client-error set :data:`CLIENT_ERROR_CODES`
  (written "not OK and not 4xx", so a code added later counts as a server error). "5xx per minute" is
  ``increase(...[1m])`` summed over the service. When the API is scraped but no 5xx series exists yet,
  the count is 0 (``… or 0 * sum(increase(<all calls>[1m]))``), but when nothing is scraped at all
  the query stays empty, so an unscraped service is never read as "zero errors".
* **오류율 (error rate)** is the 5xx share of *all* calls (4xx included in the denominator), as
  ``job:kis_request_errors:ratio_rate1m`` records it: 4xx are the callers' doing (bad input, denied
  tokens, quota), and counting them would let one misbehaving client order a rollback.
* **Sustained** means: the window's samples cover at least ``min_coverage`` (90 %) of the expected
  ``window/step + 1`` points, none is NaN, and *every* sample breaches. One sample at or below the
  threshold makes the criterion OK. ±Inf is a value (``histogram_quantile`` answers +Inf when the
  p95 lies beyond the largest bucket) and breaches like any large one.
* **No data is never OK.** A query error, an HTTP failure, no series, a NaN sample or coverage below
  the minimum is INCONCLUSIVE, and an INCONCLUSIVE criterion makes the overall verdict at least
  REVIEW. Data quality is judged before thresholds. NaN is what ``histogram_quantile`` and the error
  ratio give for a minute without calls, so a service with no traffic reads INCONCLUSIVE on latency
  and error rate: it has not been verified, and a human should look.
* **Windows start at the deploy.** A sample of a ``[1m]`` rate reflects the minute before it, so the
  first sample that sees only the new version is at ``deployed_at + lookback_s`` (60 s); the memory
  trend additionally skips ``warmup_s`` (5 min) of start-up growth (caches, pools, JIT-free but
  allocation-heavy first requests). Earlier samples are never queried.
* **A deploy younger than the window is PENDING, not INCONCLUSIVE** (which would page on every fresh
  deploy) and not OK (nothing has been verified yet). "X for 3 minutes" cannot have happened yet, so
  the criterion cannot breach; the part of the window that exists is still queried, and missing data,
  NaN or low coverage there is INCONCLUSIVE as usual. PENDING counts as OK for the overall verdict;
  its message says how much of the breach condition holds so far. Before the first post-deploy
  sample exists nothing is queried.
* **Memory leak** = resident memory growing steadily: for each process (``job``, ``instance``) of the
  service, the least-squares slope of ``process_resident_memory_bytes`` over 15 minutes is above
  1 MiB/min *and* the fit explains the data (R² ≥ 0.8), from at least 20 samples covering half the
  window. A flat series with noise has a small slope and a low R²; start-up growth that levels off
  falls in the warm-up or gives a low R². Any process leaking is a leak.
* **Security** = a declaration in the incident ledger (``kis-release incident declare --security``)
  made since the deploy. **Functional bugs** = ledger reports (``incident report-bug``) since the
  deploy plus ``extra_bug_count(deployed_at)`` (Jira issues with the bug label). The two channels are
  added: the Jira count must not include issues the CLI filed for ledger reports. A failed source
  makes the criterion INCONCLUSIVE unless the sources that answered already reach the threshold.
* **Worst wins**: ROLLBACK > REVIEW > OK overall; INCONCLUSIVE counts as REVIEW, PENDING as OK.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from kis_estimator.workflows.incident.ledger import (
    IncidentLedger,
    IncidentLedgerError,
    IncidentRecords,
    LedgerEntry,
    LedgerEntryKind,
)
from kis_estimator.workflows.prometheus import queries
from kis_estimator.workflows.prometheus.client import MetricsSource, Sample, Series
from kis_estimator.workflows.prometheus.queries import API_MATCHER, CLIENT_ERROR_CODES
from kis_estimator.workflows.tracker.protocol import TrackerError

__all__ = [
    "API_MATCHER",
    "CLIENT_ERROR_CODES",
    "DEFAULT_CRITERIA",
    "MIB",
    "BreachSeries",
    "CheckKind",
    "Comparison",
    "Criterion",
    "CriterionResult",
    "Evaluation",
    "IncidentLedger",
    "IncidentLedgerError",
    "IncidentRecords",
    "LedgerEntry",
    "LedgerEntryKind",
    "Severity",
    "ValueSummary",
    "Verdict",
    "build_criteria",
    "evaluate",
    "least_squares",
]

MIB = 1024 * 1024


# ---------------------------------------------------------------------------------- criteria


class Severity(StrEnum):
    IMMEDIATE = "IMMEDIATE"  # 즉시 롤백
    REVIEW = "REVIEW"  # 검토 후 롤백


class CheckKind(StrEnum):
    SUSTAINED = "SUSTAINED"  # every sample of the window beyond the threshold
    TREND = "TREND"  # least-squares slope per minute beyond the threshold, with R² and sample floors
    SECURITY_DECLARED = "SECURITY_DECLARED"  # incident ledger
    BUG_REPORTS = "BUG_REPORTS"  # incident ledger + extra_bug_count


class Comparison(StrEnum):
    GT = ">"
    GE = ">="

    def holds(self, value: float, threshold: float) -> bool:
        return value > threshold if self is Comparison.GT else value >= threshold


class Verdict(StrEnum):
    OK = "OK"
    PENDING = "PENDING"  # the window has not elapsed since the deploy; counts as OK overall
    INCONCLUSIVE = "INCONCLUSIVE"  # no data, NaN, gaps or an error; counts as REVIEW overall
    REVIEW = "REVIEW"
    ROLLBACK = "ROLLBACK"


_QUERY_KINDS = (CheckKind.SUSTAINED, CheckKind.TREND)


@dataclass(frozen=True, slots=True)
class Criterion:
    """One rollback criterion; ``window_s``/``step_s``/``lookback_s``/``warmup_s`` are seconds."""

    id: str
    severity: Severity
    kind: CheckKind
    notice: str  # the notice's own words
    expr: str = ""
    window_s: float = 0.0
    step_s: float = 0.0
    threshold: float = 0.0
    comparison: Comparison = Comparison.GT
    unit: str = ""
    lookback_s: float = 0.0  # range of the expression's rate window: its first sample needs this much
    warmup_s: float = 0.0  # start-up period after the deploy that is never evaluated
    min_coverage: float = 0.9  # share of expected samples that must be present
    min_samples: int = 1
    min_r_squared: float = 0.0  # TREND only

    def __post_init__(self) -> None:
        if self.kind in _QUERY_KINDS:
            if not self.expr or self.step_s <= 0 or self.window_s < self.step_s:
                raise ValueError(f"criterion {self.id}: a query needs expr, step_s > 0, window_s ≥ step_s")
            if not math.isclose(self.window_s / self.step_s, round(self.window_s / self.step_s)):
                raise ValueError(f"criterion {self.id}: window_s must be a multiple of step_s")
            if not 0 < self.min_coverage <= 1:
                raise ValueError(f"criterion {self.id}: min_coverage must be in (0, 1]")
        if self.kind is CheckKind.TREND and self.min_samples < 3:
            raise ValueError(f"criterion {self.id}: a trend needs min_samples ≥ 3")

    @property
    def breach_verdict(self) -> Verdict:
        return Verdict.ROLLBACK if self.severity is Severity.IMMEDIATE else Verdict.REVIEW


_MATCHER = r'[a-zA-Z_]\w*\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"'
_SELECTOR = re.compile(rf"^\s*(?:{_MATCHER})(?:\s*,\s*(?:{_MATCHER}))*\s*$")


def build_criteria(selector: str = "", bug_report_threshold: int = 3) -> tuple[Criterion, ...]:
    """The notice's criteria; ``selector`` adds label matchers to every series, e.g. ``job="kis-prod"``."""
    if selector.strip() and not _SELECTOR.match(selector):
        raise ValueError(f'selector {selector!r}: expected matchers like job="kis-estimator", env!="dev"')
    matchers = re.findall(_MATCHER, selector) if selector.strip() else []
    if bug_report_threshold < 1:
        raise ValueError("bug_report_threshold must be at least 1")
    matchers = [m.strip() for m in matchers]
    extra = "".join(f", {m}" for m in matchers)
    errors_per_min = queries.errors_per_minute(extra)
    p95_ms = queries.p95_ms(extra)
    rss = queries.rss_of_api_processes(matchers)
    down = queries.service_down(matchers)
    return (
        Criterion(
            id="service_down",
            severity=Severity.IMMEDIATE,
            kind=CheckKind.SUSTAINED,
            notice="서비스 응답 없음 (1분 지속)",
            expr=down,
            window_s=60,
            step_s=15,
            threshold=1,
            comparison=Comparison.GE,
            unit="down",
            lookback_s=60,  # the new process gets a minute to come up after the deploy
        ),
        Criterion(
            id="errors_5xx",
            severity=Severity.IMMEDIATE,
            kind=CheckKind.SUSTAINED,
            notice="5xx 에러 > 10/분 (3분 지속)",
            expr=errors_per_min,
            window_s=180,
            step_s=15,
            threshold=10,
            unit="/min",
            lookback_s=60,
        ),
        Criterion(
            id="p95_latency_200ms",
            severity=Severity.IMMEDIATE,
            kind=CheckKind.SUSTAINED,
            notice="P95 > 200ms (5분 지속)",
            expr=p95_ms,
            window_s=300,
            step_s=15,
            threshold=200,
            unit="ms",
            lookback_s=60,
        ),
        Criterion(
            id="memory_leak",
            severity=Severity.IMMEDIATE,
            kind=CheckKind.TREND,
            notice="메모리 누수 감지",
            expr=rss,
            window_s=900,
            step_s=15,
            threshold=1 * MIB,
            unit="bytes/min",
            warmup_s=300,
            min_coverage=0.5,
            min_samples=20,
            min_r_squared=0.8,
        ),
        Criterion(
            id="security_vulnerability",
            severity=Severity.IMMEDIATE,
            kind=CheckKind.SECURITY_DECLARED,
            notice="보안 취약점 발견",
            threshold=1,
            comparison=Comparison.GE,
            unit="declarations",
        ),
        Criterion(
            id="p95_latency_100ms",
            severity=Severity.REVIEW,
            kind=CheckKind.SUSTAINED,
            notice="P95 > 100ms (10분 지속)",
            expr=p95_ms,
            window_s=600,
            step_s=15,
            threshold=100,
            unit="ms",
            lookback_s=60,
        ),
        Criterion(
            id="error_rate_2pct",
            severity=Severity.REVIEW,
            kind=CheckKind.SUSTAINED,
            notice="오류율 > 2% (10분 지속)",
            expr=queries.error_ratio(extra),
            window_s=600,
            step_s=15,
            threshold=0.02,
            unit="ratio",
            lookback_s=60,
        ),
        Criterion(
            id="functional_bugs",
            severity=Severity.REVIEW,
            kind=CheckKind.BUG_REPORTS,
            notice=f"기능 오류 보고 {bug_report_threshold}건 이상",
            threshold=bug_report_threshold,
            comparison=Comparison.GE,
            unit="reports",
        ),
    )


DEFAULT_CRITERIA = build_criteria()


# ---------------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class ValueSummary:
    """Over the non-NaN samples of the deciding series."""

    min: float
    max: float
    last: float


@dataclass(frozen=True, slots=True)
class CriterionResult:
    """What one criterion saw and decided; ``start``/``end`` are the queried range (None: not queried)."""

    criterion_id: str
    severity: Severity
    notice: str
    query: str
    window_s: float
    step_s: float
    threshold: float
    comparison: Comparison
    unit: str
    verdict: Verdict
    message: str
    start: datetime | None = None
    end: datetime | None = None
    samples: int = 0
    expected_samples: int = 0
    coverage: float | None = None  # None for ledger criteria
    summary: ValueSummary | None = None
    labels: Mapping[str, str] = field(default_factory=dict)  # of the deciding series
    points: tuple[Sample, ...] = ()  # of the deciding series, in the queried range
    stats: Mapping[str, float] = field(default_factory=dict)  # e.g. slope_per_min, r_squared

    def to_dict(self) -> dict[str, object]:
        return {
            "criterion": self.criterion_id,
            "class": self.severity.value,
            "notice": self.notice,
            "query": self.query,
            "window_s": self.window_s,
            "step_s": self.step_s,
            "threshold": _json_number(self.threshold),
            "comparison": self.comparison.value,
            "unit": self.unit,
            "verdict": self.verdict.value,
            "message": self.message,
            "start": _iso(self.start) if self.start else None,
            "end": _iso(self.end) if self.end else None,
            "samples": self.samples,
            "expected_samples": self.expected_samples,
            "coverage": self.coverage,
            "summary": (
                {k: _json_number(getattr(self.summary, k)) for k in ("min", "max", "last")}
                if self.summary
                else None
            ),
            "labels": dict(sorted(self.labels.items())),
            "points": [[_iso(p.at), _json_number(p.value)] for p in self.points],
            "stats": {k: _json_number(v) for k, v in sorted(self.stats.items())},
        }


@dataclass(frozen=True, slots=True)
class BreachSeries:
    """A breaching criterion's samples for a chart; ``threshold`` None when not on the value axis."""

    criterion_id: str
    notice: str
    unit: str
    verdict: Verdict
    timestamps: tuple[datetime, ...]
    values: tuple[float, ...]
    threshold: float | None


@dataclass(frozen=True, slots=True)
class Evaluation:
    now: datetime
    deployed_at: datetime
    results: tuple[CriterionResult, ...]

    @property
    def verdict(self) -> Verdict:
        """ROLLBACK, REVIEW or OK: worst wins; INCONCLUSIVE counts as REVIEW, PENDING as OK."""
        verdicts = {r.verdict for r in self.results}
        if Verdict.ROLLBACK in verdicts:
            return Verdict.ROLLBACK
        if verdicts & {Verdict.REVIEW, Verdict.INCONCLUSIVE}:
            return Verdict.REVIEW
        return Verdict.OK

    def result(self, criterion_id: str) -> CriterionResult:
        for r in self.results:
            if r.criterion_id == criterion_id:
                return r
        raise KeyError(criterion_id)

    def to_dict(self) -> dict[str, object]:
        return {
            "verdict": self.verdict.value,
            "now": _iso(self.now),
            "deployed_at": _iso(self.deployed_at),
            "criteria": [r.to_dict() for r in self.results],
        }

    def to_json(self) -> str:
        """Deterministic JSON (sorted keys); NaN/±Inf as the strings Prometheus uses."""
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2, sort_keys=True, allow_nan=False)

    def breaching_series(self) -> tuple[BreachSeries, ...]:
        """Series of the criteria that breached (ROLLBACK or REVIEW), for charts."""
        return tuple(
            BreachSeries(
                r.criterion_id,
                r.notice,
                r.unit,
                r.verdict,
                tuple(p.at for p in r.points),
                tuple(p.value for p in r.points),
                # A trend's threshold is a slope, not a level: it has no place on the value axis.
                r.threshold if r.query and "slope_per_min" not in r.stats else None,
            )
            for r in self.results
            if r.verdict in (Verdict.ROLLBACK, Verdict.REVIEW) and r.points
        )


# ---------------------------------------------------------------------------------- evaluation


def evaluate(
    source: MetricsSource,
    now: datetime,
    deployed_at: datetime,
    ledger: IncidentRecords,
    *,
    criteria: Sequence[Criterion] = DEFAULT_CRITERIA,
    extra_bug_count: Callable[[datetime], int] | None = None,
) -> Evaluation:
    """Evaluate ``criteria`` at ``now`` for a deploy at ``deployed_at`` (both aware).

    ``extra_bug_count(deployed_at)`` counts functional bug reports outside the ledger (Jira issues with
    the bug label created since the deploy); it signals failure by raising ``TrackerError`` or ``OSError``.
    """
    _require_aware(now, "now")
    _require_aware(deployed_at, "deployed_at")
    if deployed_at > now:
        raise ValueError(f"deployed_at {_iso(deployed_at)} is after now {_iso(now)}")
    results = []
    for c in criteria:
        if c.kind in _QUERY_KINDS:
            results.append(_evaluate_query(c, source, now, deployed_at))
        elif c.kind is CheckKind.SECURITY_DECLARED:
            results.append(_evaluate_security(c, ledger, now, deployed_at))
        else:
            results.append(_evaluate_bugs(c, ledger, extra_bug_count, now, deployed_at))
    return Evaluation(now, deployed_at, tuple(results))


def _base(
    c: Criterion,
    *,
    verdict: Verdict,
    message: str,
    query: str | None = None,
    window_s: float | None = None,
    span: _Span | None = None,
    samples: int = 0,
    coverage: float | None = None,
    summary: ValueSummary | None = None,
    labels: Mapping[str, str] | None = None,
    points: tuple[Sample, ...] = (),
    stats: Mapping[str, float] | None = None,
) -> CriterionResult:
    return CriterionResult(
        criterion_id=c.id,
        severity=c.severity,
        notice=c.notice,
        query=c.expr if query is None else query,
        window_s=c.window_s if window_s is None else window_s,
        step_s=c.step_s,
        threshold=c.threshold,
        comparison=c.comparison,
        unit=c.unit,
        verdict=verdict,
        message=message,
        start=span.start if span else None,
        end=span.end if span else None,
        samples=samples,
        expected_samples=span.expected if span else 0,
        coverage=coverage,
        summary=summary,
        labels=dict(labels or {}),
        points=points,
        stats=dict(stats or {}),
    )


@dataclass(frozen=True, slots=True)
class _Span:
    """The queried range: aligned to the step; ``partial`` when the deploy cut the window short."""

    start: datetime
    end: datetime
    expected: int
    partial: bool


def _evaluate_query(
    c: Criterion, source: MetricsSource, now: datetime, deployed_at: datetime
) -> CriterionResult:
    step = c.step_s
    end_s = math.floor(now.timestamp() / step) * step
    full_start_s = end_s - c.window_s
    earliest_s = deployed_at.timestamp() + c.lookback_s + c.warmup_s
    first_s = math.ceil(earliest_s / step - 1e-9) * step
    start_s = max(full_start_s, first_s)
    partial = start_s > full_start_s
    if start_s > end_s:
        return _base(
            c,
            verdict=Verdict.PENDING,
            message=(
                f"pending: the first sample after the deploy is due at {_iso(_at(first_s))} "
                f"(deploy + {c.lookback_s + c.warmup_s:g} s); nothing queried"
            ),
        )
    span = _Span(_at(start_s), _at(end_s), round((end_s - start_s) / step) + 1, partial)
    answer = source.query_range(c.expr, span.start, span.end, step)
    if answer.error is not None:
        return _base(c, verdict=Verdict.INCONCLUSIVE, message=f"query failed: {answer.error}", span=span)
    if not answer.series:
        return _base(
            c,
            verdict=Verdict.INCONCLUSIVE,
            message="no data: Prometheus returned no series",
            span=span,
            coverage=0.0,
        )
    judged = [_judge_series(c, s, span) for s in answer.series]
    return max(judged, key=lambda r: _RANK[r.verdict])  # the first of the worst


_RANK = {
    Verdict.OK: 0,
    Verdict.PENDING: 1,
    Verdict.INCONCLUSIVE: 2,
    Verdict.REVIEW: 3,
    Verdict.ROLLBACK: 4,
}


def _judge_series(c: Criterion, series: Series, span: _Span) -> CriterionResult:
    start_s, end_s = span.start.timestamp(), span.end.timestamp()
    points = tuple(p for p in series.samples if start_s - 1e-3 <= p.at.timestamp() <= end_s + 1e-3)
    values = [p.value for p in points if not math.isnan(p.value)]
    nan_count = len(points) - len(values)
    coverage = min(1.0, len(points) / span.expected)
    summary = ValueSummary(min(values), max(values), values[-1]) if values else None
    who = _label_text(series.labels)

    def result(verdict: Verdict, message: str, stats: Mapping[str, float] | None = None) -> CriterionResult:
        return _base(
            c,
            verdict=verdict,
            message=f"{who}{message}",
            span=span,
            samples=len(points),
            coverage=coverage,
            summary=summary,
            labels=series.labels,
            points=points,
            stats=stats,
        )

    if nan_count:
        return result(
            Verdict.INCONCLUSIVE, f"{nan_count} of {len(points)} samples are NaN (no calls to measure?)"
        )
    if coverage < c.min_coverage:
        return result(
            Verdict.INCONCLUSIVE,
            f"{len(points)} of {span.expected} expected samples "
            f"({coverage:.0%} < {c.min_coverage:.0%} required)",
        )
    elapsed = f"{end_s - start_s:g} of {c.window_s:g} s elapsed since the deploy"
    if c.kind is CheckKind.TREND:
        return _judge_trend(c, points, span.partial, elapsed, result)
    breaching = sum(1 for v in values if c.comparison.holds(v, c.threshold))
    condition = f"{c.comparison.value} {_fmt(c.threshold, c.unit)}"
    if span.partial:
        return result(
            Verdict.PENDING, f"pending: {elapsed}; {breaching} of {len(points)} samples {condition} so far"
        )
    if breaching == len(points):
        return result(
            c.breach_verdict,
            f"all {len(points)} samples over {c.window_s:g} s {condition} "
            f"(min {_fmt(min(values), c.unit)}, last {_fmt(values[-1], c.unit)})",
        )
    return result(
        Verdict.OK,
        f"not sustained: {len(points) - breaching} of {len(points)} samples not {condition} "
        f"(min {_fmt(min(values), c.unit)}, last {_fmt(values[-1], c.unit)})",
    )


def _judge_trend(
    c: Criterion,
    points: Sequence[Sample],
    partial: bool,
    elapsed: str,
    result: Callable[[Verdict, str, Mapping[str, float] | None], CriterionResult],
) -> CriterionResult:
    if any(math.isinf(p.value) for p in points):
        return result(Verdict.INCONCLUSIVE, "infinite samples: cannot fit a trend", None)
    if len(points) < c.min_samples:
        if partial:
            return result(Verdict.PENDING, f"pending: {elapsed}; {len(points)} samples so far", None)
        return result(
            Verdict.INCONCLUSIVE, f"{len(points)} samples, a trend needs at least {c.min_samples}", None
        )
    slope_per_s, r_squared = least_squares([p.at.timestamp() for p in points], [p.value for p in points])
    slope = slope_per_s * 60
    stats = {"slope_per_min": slope, "r_squared": r_squared}
    fit = f"slope {_fmt(slope, c.unit)}, R² {r_squared:.2f} over {len(points)} samples"
    leaking = c.comparison.holds(slope, c.threshold) and r_squared >= c.min_r_squared
    if partial:
        return result(Verdict.PENDING, f"pending: {elapsed}; {fit} so far", stats)
    if leaking:
        return result(
            c.breach_verdict,
            f"steady growth: {fit} ({c.comparison.value} {_fmt(c.threshold, c.unit)}, "
            f"R² ≥ {c.min_r_squared:.2f})",
            stats,
        )
    return result(Verdict.OK, f"no steady growth: {fit}", stats)


def least_squares(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Slope (y per x) and R² of the least-squares line; R² is 0 when y is constant (nothing explained)."""
    n = len(xs)
    if n < 2 or n != len(ys):
        raise ValueError("least_squares needs two or more (x, y) pairs")
    mean_x = sum(xs) / n
    mean_y = sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    syy = sum((y - mean_y) ** 2 for y in ys)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    if sxx == 0:
        raise ValueError("least_squares needs two or more distinct x values")
    slope = sxy / sxx
    r_squared = (sxy * sxy) / (sxx * syy) if syy > 0 else 0.0
    return slope, r_squared


def _evaluate_security(
    c: Criterion, ledger: IncidentRecords, now: datetime, deployed_at: datetime
) -> CriterionResult:
    query = f"incident ledger: security declarations since {_iso(deployed_at)}"
    window = (now - deployed_at).total_seconds()
    try:
        found = ledger.security_declarations(deployed_at, now)
    except IncidentLedgerError as exc:
        return _base(c, query=query, window_s=window, verdict=Verdict.INCONCLUSIVE, message=str(exc))
    if c.comparison.holds(len(found), c.threshold):
        latest = found[-1]
        message = (
            f"{len(found)} security declaration(s) since the deploy; latest by {latest.by} "
            f"at {_iso(latest.at)}: {latest.text}"
        )
        verdict = c.breach_verdict
    else:
        message, verdict = "no security declaration since the deploy", Verdict.OK
    return _base(c, query=query, window_s=window, samples=len(found), verdict=verdict, message=message)


def _evaluate_bugs(
    c: Criterion,
    ledger: IncidentRecords,
    extra_bug_count: Callable[[datetime], int] | None,
    now: datetime,
    deployed_at: datetime,
) -> CriterionResult:
    query = f"incident ledger: bug reports since {_iso(deployed_at)}"
    if extra_bug_count is not None:
        query += " + extra_bug_count (tracker issues with the bug label)"
    window = (now - deployed_at).total_seconds()
    counts: list[str] = []
    failures: list[str] = []
    total = 0
    try:
        in_ledger = len(ledger.bug_reports(deployed_at, now))
        total += in_ledger
        counts.append(f"{in_ledger} in the ledger")
    except IncidentLedgerError as exc:
        failures.append(str(exc))
    if extra_bug_count is not None:
        try:
            extra = extra_bug_count(deployed_at)
            if extra < 0:
                raise ValueError(f"extra_bug_count returned {extra}")
            total += extra
            counts.append(f"{extra} in the tracker")
        except (TrackerError, OSError, ValueError) as exc:
            failures.append(f"tracker count failed: {exc}")
    condition = f"{c.comparison.value} {c.threshold:g}"
    detail = ", ".join(counts) or "no source answered"
    if c.comparison.holds(total, c.threshold):
        verdict, message = (
            c.breach_verdict,
            f"{total} functional bug report(s) since the deploy {condition} ({detail})",
        )
    elif failures:
        verdict = Verdict.INCONCLUSIVE
        message = f"{total} bug report(s) counted ({detail}) but {'; '.join(failures)}"
    else:
        verdict, message = Verdict.OK, f"{total} functional bug report(s) since the deploy ({detail})"
    return _base(c, query=query, window_s=window, samples=total, verdict=verdict, message=message)


# ---------------------------------------------------------------------------------- formatting


def _require_aware(when: datetime, name: str) -> None:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{name}={when!r}: expected an aware datetime")


def _at(unix_s: float) -> datetime:
    return datetime.fromtimestamp(unix_s, UTC)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _json_number(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return value


def _fmt(value: float, unit: str) -> str:
    if math.isinf(value) or math.isnan(value):
        return f"{value} {unit}"
    if unit == "ratio":
        return f"{value:.2%}"
    if unit.startswith("bytes"):
        return f"{value / MIB:.2f} MiB{unit.removeprefix('bytes')}"
    return f"{value:.4g} {unit}".rstrip()


def _label_text(labels: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}: " if labels else ""
