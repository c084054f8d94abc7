"""SLO report: the GA 1.0 notice's four targets, measured through the Prometheus HTTP API.

``kis-estimator slo --prometheus URL [--window 1d]`` prints one line per target and exits with
:func:`run_slo_report`'s status. The targets (seed notice, docs/pricing-rules.md §16.3):

* p95 latency ≤ 30 ms: unary API calls (``grpc_service`` ``kis.estimator.*``), health checks excluded;
* error rate < 0.5 %: 5xx-class responses ÷ all API responses, with the gRPC-code classes of
  ``deploy/prometheus/recording.rules.yml`` (client errors such as INVALID_ARGUMENT are not errors);
* TAT median ≤ 2 min: over estimates completed in the window;
* auto-processing ≥ 70 %: COMPLETED ÷ (COMPLETED + NEEDS_REVIEW) by status at acceptance.

Every value is computed over the same ``window`` from the raw exported series (not the recording
rules, whose windows are fixed), so the report works against any Prometheus that scrapes the service.
A target with no data (no traffic in the window, or Prometheus unreachable) is reported as
``NO DATA``, never as a pass (docs/conventions.md §5).

Exit status: 0 every target met; 1 at least one missed; 2 none missed but at least one undecided.
"""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from kis_estimator.workflows.prometheus import queries

DEFAULT_WINDOW = "1d"
QUERY_TIMEOUT_S = 10.0
_DURATION = re.compile(r"^(?:[0-9]+(?:ms|s|m|h|d|w|y))+$")

# Every PromQL expression lives in workflows/prometheus/queries.py (one place for the criteria,
# the promotion gate and this report).


class SloError(Exception):
    """Prometheus could not answer (unreachable, HTTP error, malformed reply, query error)."""


class Verdict(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    NO_DATA = "NO DATA"


@dataclass(frozen=True, slots=True)
class SloTarget:
    """One objective: ``value <op> threshold``; ``scale``/``unit`` only shape the printed numbers."""

    key: str
    title: str
    op: str  # "<=", "<" or ">="
    threshold: float
    unit: str
    scale: float = 1.0

    def met_by(self, value: float) -> bool:
        if self.op == "<=":
            return value <= self.threshold
        if self.op == "<":
            return value < self.threshold
        return value >= self.threshold

    def show(self, value: float, width: int = 0) -> str:
        return f"{value * self.scale:>{width}.2f} {self.unit}"


TARGETS = (
    SloTarget("p95_latency_ms", "p95 latency", "<=", 30.0, "ms"),
    SloTarget("error_ratio", "error rate", "<", 0.005, "%", scale=100.0),
    SloTarget("tat_median_s", "TAT median", "<=", 120.0, "s"),
    SloTarget("auto_processing_ratio", "auto-processing", ">=", 0.70, "%", scale=100.0),
)


@dataclass(frozen=True, slots=True)
class SloResult:
    target: SloTarget
    value: float | None  # None: no data
    verdict: Verdict
    note: str = ""


def validate_window(window: str) -> str:
    """A PromQL duration such as ``1d`` or ``1h30m``; ValueError otherwise (it is put into queries)."""
    if not _DURATION.match(window):
        raise ValueError(f"window {window!r}: expected a Prometheus duration such as 30m, 1d, 1h30m")
    return window


def slo_queries(window: str) -> dict[str, str]:
    """One PromQL expression per target key, each giving a single sample over ``window``."""
    return queries.slo_queries(validate_window(window))


def evaluate(values: Mapping[str, float | None], notes: Mapping[str, str] | None = None) -> list[SloResult]:
    """Judge each target; a missing or non-finite value is NO DATA."""
    results = []
    for target in TARGETS:
        value = values.get(target.key)
        note = (notes or {}).get(target.key, "")
        if value is None or not math.isfinite(value):
            results.append(SloResult(target, None, Verdict.NO_DATA, note or "no data in the window"))
        else:
            verdict = Verdict.PASS if target.met_by(value) else Verdict.FAIL
            results.append(SloResult(target, value, verdict, note))
    return results


def exit_status(results: list[SloResult]) -> int:
    verdicts = {r.verdict for r in results}
    if Verdict.FAIL in verdicts:
        return 1
    if Verdict.NO_DATA in verdicts:
        return 2
    return 0


def render(results: list[SloResult], window: str) -> list[str]:
    """The report's lines: one per target, then a summary."""
    lines = [f"SLO report, window {window}"]
    for r in results:
        measured = r.target.show(r.value, width=8) if r.value is not None else f"{'-':>8}   "
        objective = f"{r.target.op} {r.target.show(r.target.threshold)}"
        line = f"  {r.verdict.value:<7}  {r.target.title:<16} {measured:<11}  target {objective}"
        lines.append(f"{line}   ({r.note})" if r.note else line)
    passed = sum(r.verdict is Verdict.PASS for r in results)
    lines.append(f"{passed}/{len(results)} targets met")
    return lines


Fetch = Callable[[str, float], bytes]


def _urlopen(url: str, timeout_s: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as reply:  # http(s) only: checked in PrometheusApi
        body: bytes = reply.read()
        return body


class PrometheusApi:
    """A narrow client of ``/api/v1/query``; ``fetch`` is the transport seam (tests pass a fake)."""

    def __init__(self, base_url: str, *, fetch: Fetch = _urlopen, timeout_s: float = QUERY_TIMEOUT_S) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"prometheus URL {base_url!r}: expected http(s)://host:port")
        self._base = base_url.rstrip("/")
        self._fetch = fetch
        self._timeout_s = timeout_s

    def query_scalar(self, expr: str) -> float | None:
        """The single sample of an instant query; None when the result is empty or NaN."""
        url = f"{self._base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        try:
            body = self._fetch(url, self._timeout_s)
        except urllib.error.HTTPError as exc:
            raise SloError(f"prometheus answered HTTP {exc.code} for {expr!r}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise SloError(f"prometheus unreachable at {self._base}: {exc}") from None
        try:
            reply = json.loads(body)
            if reply.get("status") != "success":
                raise SloError(f"query failed: {reply.get('errorType')}: {reply.get('error')}")
            data = reply["data"]
            if data["resultType"] == "scalar":
                samples = [data["result"]]
            elif data["resultType"] == "vector":
                samples = [item["value"] for item in data["result"]]
            else:
                raise SloError(f"unexpected result type {data['resultType']!r} for {expr!r}")
            if len(samples) > 1:
                raise SloError(f"{len(samples)} series for {expr!r}; expected one")
            value = float(samples[0][1]) if samples else None
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise SloError(f"malformed reply for {expr!r}: {exc}") from None
        return value if value is not None and math.isfinite(value) else None


def measure(api: PrometheusApi, window: str) -> tuple[dict[str, float | None], dict[str, str]]:
    """Query every target; a failed query is no data with the reason as its note."""
    values: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    for key, expr in slo_queries(window).items():
        try:
            values[key] = api.query_scalar(expr)
        except SloError as exc:
            values[key] = None
            notes[key] = str(exc)
    return values, notes


def run_slo_report(
    prometheus_url: str,
    window: str,
    out: Callable[[str], None],
    *,
    fetch: Fetch = _urlopen,
) -> int:
    """Measure, print through ``out`` and return the exit status (see the module docstring)."""
    try:
        api = PrometheusApi(prometheus_url, fetch=fetch)
        values, notes = measure(api, window)
    except ValueError as exc:
        out(f"error: {exc}")
        return 2
    results = evaluate(values, notes)
    for line in render(results, window):
        out(line)
    return exit_status(results)


__all__ = [
    "DEFAULT_WINDOW",
    "TARGETS",
    "PrometheusApi",
    "SloError",
    "SloResult",
    "SloTarget",
    "Verdict",
    "evaluate",
    "exit_status",
    "render",
    "run_slo_report",
    "slo_queries",
]
