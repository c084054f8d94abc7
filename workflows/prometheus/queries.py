"""Every PromQL expression the workflows read, in one place.

The rollback criteria (``kis_estimator.workflows.incident.criteria``), the promotion's SLO gate
(``kis_estimator.workflows.release.promote``) and the SLO report (``kis-estimator slo``, ``server/slo.py``)
build their queries here, from the same definitions as ``deploy/prometheus/recording.rules.yml``: API calls
are the ``kis.estimator.*`` services; a "5xx" is every gRPC code except ``OK`` and the client-error class
:data:`CLIENT_ERROR_CODES` (written "not OK and not 4xx", so a code added later counts as a server error);
latency is that of unary calls. ``extra`` adds label matchers (``, job="kis-prod"``) to every selector.
"""

from __future__ import annotations

__all__ = [
    "API_MATCHER",
    "CLIENT_ERROR_CODES",
    "DEFAULT_JOB",
    "NOT_5XX",
    "error_ratio",
    "errors_per_minute",
    "p95_ms",
    "release_queries",
    "rss_of_api_processes",
    "service_down",
    "slo_queries",
]

# The 4xx class (the caller's doing); every other non-OK code is 5xx. Same set as recording.rules.yml.
CLIENT_ERROR_CODES = (
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "OUT_OF_RANGE",
    "CANCELLED",
    "DEADLINE_EXCEEDED",  # the client stopped waiting: not a server error (recording.rules.yml)
)
API_MATCHER = 'grpc_service=~"kis[.]estimator[.].+"'
DEFAULT_JOB = "kis-estimator"  # the scrape job of deploy/prometheus/prometheus.yml
NOT_5XX = "|".join(("OK", *CLIENT_ERROR_CODES))


def _handled(extra: str = "") -> str:
    return f"grpc_server_handled_total{{{API_MATCHER}{extra}}}"


def _handled_5xx(extra: str = "") -> str:
    return f'grpc_server_handled_total{{{API_MATCHER}, grpc_code!~"{NOT_5XX}"{extra}}}'


def _buckets(extra: str = "") -> str:
    return f'grpc_server_handling_seconds_bucket{{{API_MATCHER}, grpc_type="unary"{extra}}}'


def errors_per_minute(extra: str = "") -> str:
    """5xx calls per minute; 0 (not empty) when calls are scraped but no 5xx series exists yet."""
    return f"sum(increase({_handled_5xx(extra)}[1m])) or (0 * sum(increase({_handled(extra)}[1m])))"


def error_ratio(extra: str = "") -> str:
    """The 5xx share of all calls over a minute (4xx in the denominator)."""
    return f"({errors_per_minute(extra)}) / sum(increase({_handled(extra)}[1m]))"


def p95_ms(extra: str = "") -> str:
    """p95 latency of unary API calls over a minute, in milliseconds."""
    return f"1000 * histogram_quantile(0.95, sum by (le) (rate({_buckets(extra)}[1m])))"


def rss_of_api_processes(matchers: list[str]) -> str:
    """Resident memory of every process (job, instance) that serves the API."""
    scope = f"{{{', '.join(matchers)}}}" if matchers else ""
    return (
        f"process_resident_memory_bytes{scope}"
        f" and on (job, instance) group by (job, instance) ({_handled(''.join(f', {m}' for m in matchers))})"
    )


def service_down(matchers: list[str]) -> str:
    """1 while Prometheus cannot scrape the service (``up == 0``) or has no ``up`` series for it.

    ``up`` carries only job/instance, so ``matchers`` (or the job of deploy/prometheus/prometheus.yml)
    scope it. No ``up`` series at all reads as down, like a failed scrape: a service Prometheus cannot
    see is not a healthy one.
    """
    scope = ", ".join(matchers) if matchers else f'job="{DEFAULT_JOB}"'
    return f"(1 - max(up{{{scope}}})) or on() vector(1)"


def slo_queries(window: str) -> dict[str, str]:
    """The SLO report's four targets (``kis-estimator slo``), one sample each over ``window``.

    p95 of unary API calls; the 5xx share of API calls; the TAT median; the auto-processing rate
    (COMPLETED ÷ COMPLETED + NEEDS_REVIEW at acceptance). ``window`` is a checked PromQL duration.
    """
    w = window
    return {
        "p95_latency_ms": f"1000 * histogram_quantile(0.95, sum by (le) (rate({_buckets()}[{w}])))",
        "error_ratio": f"sum(increase({_handled_5xx()}[{w}])) / sum(increase({_handled()}[{w}]))",
        "tat_median_s": f"histogram_quantile(0.5, sum by (le) (rate(kis_estimate_tat_seconds_bucket[{w}])))",
        "auto_processing_ratio": (
            f'sum(increase(kis_estimates_accepted_total{{status="COMPLETED"}}[{w}]))'
            f' / sum(increase(kis_estimates_accepted_total{{status=~"COMPLETED|NEEDS_REVIEW"}}[{w}]))'
        ),
    }


def _promql_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def release_queries(version: str, window_s: int) -> dict[str, str]:
    """p95 (ms), 5xx share and scrape count of the processes running ``version``, last ``window_s``.

    Every series is joined with ``kis_build_info{version=…}`` on its instance, so only processes that
    run ``version`` count (another replica, or the previous release behind the same address, does
    not); the caller starts the window at the release's start, so the samples of the process it
    replaced are outside it too. ``scrapes`` counts the release's scrapes in the window.
    """
    window = f"{max(1, window_s)}s"
    build = f'kis_build_info{{version="{_promql_string(version)}"}}'
    joined = f"* on(instance, job) group_left() {build}"
    handled_all = f"(increase({_handled()}[{window}]) {joined})"
    handled_5xx = f"(increase({_handled_5xx()}[{window}]) {joined})"
    buckets = f"rate({_buckets()}[{window}])"
    return {
        "p95_ms": f"1000 * histogram_quantile(0.95, sum by (le) ({buckets} {joined}))",
        "error_rate": f"(sum({handled_5xx}) or (0 * sum({handled_all}))) / sum({handled_all})",
        "scrapes": f"min(count_over_time({build}[{window}]))",
    }
