"""Every metric of the service, built on a registry the caller passes in (docs/conventions.md §4).

Two naming schemes, each where it applies:

* ``grpc_server_*`` follow the common gRPC server conventions (go-grpc-prometheus) so existing
  dashboards and the recording rules in ``deploy/prometheus/`` work unchanged. They are recorded by
  :class:`kis_estimator.server.api.metrics_interceptor.MetricsInterceptor`.
* domain metrics follow ``kis_<subsystem>_<what>_<unit>``; the one exception is
  ``mixed_exceptions_used_monthly``, the seed dashboard's name, kept so the notice's panel and alert
  read it directly.

Labels are small fixed sets, never ids or free text: ``code`` is an
:class:`~kis_estimator.server.engine.errors.ErrorCode`, ``status`` a
:class:`~kis_estimator.server.engine.model.Status`, ``brand`` one of :data:`BRANDS` (anything else is counted
as ``OTHER``), ``outcome`` one of :data:`DOWNLOAD_OUTCOMES`; gRPC labels come from the registered method
table. Known label values are created at zero up front so ``rate()`` sees an event's first occurrence.

Values that live in the store (the MIXED quota use of the current KST month, the review queue) are
read at scrape time by :class:`StoreGaugesCollector`, never counted in memory: a counter would restart
at zero with the process and disagree between replicas.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from kis_estimator.server.build_info import build_info
from kis_estimator.server.engine.errors import ErrorCode
from kis_estimator.server.engine.model import RULES_VERSION, Status

log = logging.getLogger(__name__)

BRANDS = ("SANGDO", "LS", "MIXED")
OTHER = "OTHER"
DownloadOutcome = Literal["allowed", "denied", "not_found"]
DOWNLOAD_OUTCOMES: tuple[DownloadOutcome, ...] = ("allowed", "denied", "not_found")

# Fine below 30 ms (the p95 SLO) and around 50/100/200 ms (alert and rollback thresholds), so the
# interpolated quantiles are accurate where decisions are made; 2.5 s covers the worst sane call.
GRPC_LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.2,
    0.5,
    1.0,
    2.5,
)
# Turnaround from acceptance to completion: 0 for auto-processed estimates, minutes to days for
# reviewed ones; 120 s is the TAT-median SLO (seed notice) and is a bucket boundary.
TAT_BUCKETS_S = (1.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 86400.0, 259200.0)
EVIDENCE_BUNDLE_BUCKETS_BYTES = tuple(float(4**k * 1024) for k in range(10))  # 1 KiB … 256 MiB


class Metrics:
    """The service's metrics on ``registry``, plus process and platform collectors on the same registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)

        # --- RPCs (go-grpc-prometheus names and labels) ---------------------------------------------
        self.grpc_started = Counter(
            "grpc_server_started_total",
            "RPCs started on the server.",
            ["grpc_type", "grpc_service", "grpc_method"],
            registry=registry,
        )
        self.grpc_handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, regardless of success or failure, by final status code.",
            ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            registry=registry,
        )
        self.grpc_handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its final status, as seen by the server.",
            ["grpc_type", "grpc_service", "grpc_method"],
            buckets=GRPC_LATENCY_BUCKETS_S,
            registry=registry,
        )

        # --- estimates --------------------------------------------------------------------------------
        self.estimates_accepted = Counter(
            "kis_estimates_accepted_total",
            "Estimates accepted and stored (docs/pricing-rules.md §16.2), by status at acceptance and brand.",
            ["status", "brand"],
            registry=registry,
        )
        self.estimate_rejections = Counter(
            "kis_estimate_rejections_total",
            "CreateEstimate requests refused at P2-P5 (not stored), by the code of the first violation.",
            ["code"],
            registry=registry,
        )
        self.estimate_tat_seconds = Histogram(
            "kis_estimate_tat_seconds",
            "Turnaround time of an estimate, from acceptance to completion (0 when auto-processed).",
            buckets=TAT_BUCKETS_S,
            registry=registry,
        )
        self.mixed_blocked_requests = Counter(
            "kis_mixed_blocked_total",
            "MIXED-brand requests refused because the monthly exception quota was used up.",
            registry=registry,
        )

        # --- evidence ---------------------------------------------------------------------------------
        self.evidence_bundle_size_bytes = Histogram(
            "kis_evidence_bundle_size_bytes",
            "Size of each evidence ZIP bundle built.",
            buckets=EVIDENCE_BUNDLE_BUCKETS_BYTES,
            registry=registry,
        )
        self.group_commit_size = Histogram(
            "kis_store_group_commit_size",
            "Creates stored by each write transaction (group commit; 1 = written alone).",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=registry,
        )
        self.evidence_downloads = Counter(
            "kis_evidence_downloads_total",
            "Evidence bundle download attempts, by outcome (allowed, denied by RBAC, not found).",
            ["outcome"],
            registry=registry,
        )

        # --- build ------------------------------------------------------------------------------------
        # Constant 1 with the build as labels (the usual ``*_build_info`` idiom): every series can be
        # attributed to a version with ``* on(instance) group_left(version) kis_build_info``.
        self.build_info = Gauge(
            "kis_build_info",
            "The running build of the estimator: always 1, labelled with version and commit.",
            ["version", "commit", "rules_version"],
            registry=registry,
        )
        build = build_info()
        self.build_info.labels(version=build.version, commit=build.commit, rules_version=RULES_VERSION).set(1)

        for status in Status:
            for brand in (*BRANDS, OTHER):
                self.estimates_accepted.labels(status=status.value, brand=brand)
        for code in ErrorCode:
            self.estimate_rejections.labels(code=code.value)
        for outcome in DOWNLOAD_OUTCOMES:
            self.evidence_downloads.labels(outcome=outcome)

    # --- domain events (called by the services) ---------------------------------------------------------

    def estimate_accepted(self, status: str, brand: str | None) -> None:
        """An estimate was stored (after the commit) with ``status`` at acceptance."""
        self.estimates_accepted.labels(
            status=_bounded(status, _STATUSES), brand=_bounded(brand, BRANDS)
        ).inc()

    def request_rejected(self, code: str) -> None:
        """A CreateEstimate was refused with ``code`` (an ErrorCode value); nothing was stored."""
        self.estimate_rejections.labels(code=_bounded(code, _ERROR_CODES)).inc()

    def group_commit(self, size: int) -> None:
        """One write transaction stored ``size`` creates."""
        self.group_commit_size.observe(size)

    def evidence_bundle_built(self, size_bytes: int) -> None:
        """An evidence ZIP of ``size_bytes`` bytes was built."""
        self.evidence_bundle_size_bytes.observe(size_bytes)

    def evidence_download(self, outcome: DownloadOutcome) -> None:
        """A download was attempted; ``outcome`` is one of :data:`DOWNLOAD_OUTCOMES`."""
        if outcome not in DOWNLOAD_OUTCOMES:
            raise ValueError(f"unknown evidence download outcome {outcome!r}")
        self.evidence_downloads.labels(outcome=outcome).inc()

    def mixed_blocked(self) -> None:
        """A MIXED request was refused because the month's quota is used up."""
        self.mixed_blocked_requests.inc()

    def estimate_completed(self, tat_seconds: float) -> None:
        """An estimate reached a final status ``tat_seconds`` after its acceptance (≥ 0)."""
        self.estimate_tat_seconds.observe(max(0.0, tat_seconds))


_STATUSES = tuple(s.value for s in Status)
_ERROR_CODES = tuple(c.value for c in ErrorCode)


def _bounded(value: str | None, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``, else ``OTHER``: a label never takes a free-text value."""
    return value if value in allowed else OTHER


@dataclass(frozen=True, slots=True)
class StoreGauges:
    """What the store says at scrape time (the caller reads it in one short read-only transaction)."""

    mixed_used_current_month: int  # MIXED exceptions granted in the current KST month
    mixed_quota_current_month: int
    review_queue_depth: int  # estimates waiting for review
    review_oldest_age_seconds: float  # age of the oldest one; 0 when the queue is empty
    store_size_bytes: int  # bytes the store occupies on disk (Store.size_bytes)


class StoreGaugesCollector:
    """Gauges read from the store on every scrape: correct across restarts and between replicas.

    Register with ``registry.register(StoreGaugesCollector(read))``. If ``read`` fails, the scrape
    still succeeds: these gauges are left out and ``kis_store_gauges_up`` is 0 (an alert watches it,
    because the MIXED alert cannot fire without them).
    """

    def __init__(self, read: Callable[[], StoreGauges]) -> None:
        self._read = read

    def describe(self) -> Iterable[Metric]:
        """The families without samples, so registration checks names without reading the store."""
        return [*(family for family, _ in _store_families()), _up(None)]

    def collect(self) -> Iterable[Metric]:
        try:
            gauges = self._read()
        except Exception:  # scrape boundary (logged): one failing source must not fail the whole scrape
            log.warning("store gauges unavailable for this scrape", exc_info=True)
            return [_up(0.0)]
        families = []
        for family, value_of in _store_families():
            family.add_metric([], float(value_of(gauges)))
            families.append(family)
        return [*families, _up(1.0)]


def _store_families() -> list[tuple[GaugeMetricFamily, Callable[[StoreGauges], float]]]:
    return [
        (
            GaugeMetricFamily(
                "mixed_exceptions_used_monthly",
                "MIXED-brand exceptions granted in the current KST calendar month (read from the store).",
            ),
            lambda g: g.mixed_used_current_month,
        ),
        (
            GaugeMetricFamily(
                "kis_mixed_quota_monthly", "MIXED-brand exceptions allowed per KST calendar month."
            ),
            lambda g: g.mixed_quota_current_month,
        ),
        (
            GaugeMetricFamily("kis_review_queue_depth", "Estimates waiting for review."),
            lambda g: g.review_queue_depth,
        ),
        (
            GaugeMetricFamily(
                "kis_review_oldest_age_seconds", "Age of the oldest estimate waiting for review (0 if none)."
            ),
            lambda g: g.review_oldest_age_seconds,
        ),
        (
            GaugeMetricFamily(
                "kis_store_size_bytes",
                "Bytes the store occupies on disk (SQLite: database + WAL + shm files; "
                "PostgreSQL: pg_database_size), read at scrape time.",
            ),
            lambda g: g.store_size_bytes,
        ),
    ]


def _up(value: float | None) -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "kis_store_gauges_up", "1 if the store gauges were read for this scrape, 0 if the read failed.", value
    )


__all__ = [
    "BRANDS",
    "DOWNLOAD_OUTCOMES",
    "GRPC_LATENCY_BUCKETS_S",
    "DownloadOutcome",
    "Metrics",
    "StoreGauges",
    "StoreGaugesCollector",
]
