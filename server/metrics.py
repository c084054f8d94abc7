"""Every metric of the service, built on a registry the caller passes in (STYLE.md §2.4).

Labels are small fixed sets: ``code`` is an :class:`~server.engine.errors.ErrorCode`, ``status`` a
:class:`~server.engine.model.Status`, ``brand`` one of SANGDO/LS/MIXED. The HTTP exposition
endpoint comes with the observability issue (#4); tests read values with ``get_sample_value``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.estimates_accepted = Counter(
            "kis_estimates_accepted_total",
            "Estimates accepted and stored (DOMAIN.md §16.2), by status at acceptance and brand.",
            ["status", "brand"],
            registry=registry,
        )
        self.estimate_rejections = Counter(
            "kis_estimate_rejections_total",
            "CreateEstimate requests refused at P2-P5 (not stored), by the code of the first violation.",
            ["code"],
            registry=registry,
        )
