"""In-process figures: the pure engine and the evidence bundle, no gRPC and no storage.

Each figure is ``timeit`` over one call: ``Timer.autorange`` picks a loop count that takes at
least ``sample_s``, then ``repeat`` samples of that many loops are taken; the per-call times of the
samples give median, mean, stdev, min and max (µs). The median is the figure; min shows the
noise-free cost, stdev how busy the machine was.

Per panel (small = S01, large = 20 lines / 100 units / accessories, see ``payloads.py``):

* ``hash``: ``request_hash`` (canonical JSON + SHA-256, stage P2);
* ``validate``: ``validate_request`` (stage P3);
* ``price``: ``price_estimate`` (stage P6: selection, sizing, stock, pricing, totals, review,
  phase balance);
* ``compute``: the three in a row, i.e. the engine's whole per-request work in CreateEstimate;
* ``evidence``: ``build_bundle`` of the priced record, signed with an HMAC key as the server does
  (five JSON documents, manifest, signature, the ZIP); its size in bytes is reported too;
* ``reply_encode`` (not engine: server/api): the CreateEstimate reply message built from the record
  and serialised, as the servicer does before storing it with the idempotency record.
"""

from __future__ import annotations

import statistics
import timeit
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from bench.payloads import domain_request
from kis_estimator.server.api.servicers import encode_create_response
from kis_estimator.server.engine.catalog import Catalog, load_catalog
from kis_estimator.server.engine.codec import stored_request
from kis_estimator.server.engine.estimate import price_estimate
from kis_estimator.server.engine.model import EstimateRequest, Status
from kis_estimator.server.engine.records import EstimateRecord
from kis_estimator.server.engine.request import request_hash
from kis_estimator.server.engine.validation import validate_request
from kis_estimator.server.evidence.bundle import build_bundle
from kis_estimator.server.evidence.signing import KeyRing
from kis_estimator.server.service.evidence import EvidenceSummary

ACCEPTED_AT = datetime(2025, 10, 1, 3, 4, 5, 678000, tzinfo=UTC)
BENCH_KEY = KeyRing({"bench": bytes(range(32))}, "bench")


def time_call(fn: Callable[[], object], *, repeat: int, sample_s: float) -> dict[str, Any]:
    """Statistics of one call's duration in µs (see the module docstring)."""
    timer = timeit.Timer(fn)
    number = 1
    while True:  # Timer.autorange, with our sample length instead of its fixed 0.2 s
        elapsed = timer.timeit(number)
        if elapsed >= sample_s:
            break
        number *= 2 if elapsed > sample_s / 10 else 10
    samples_us = [t / number * 1e6 for t in timer.repeat(repeat=repeat, number=number)]
    return {
        "median_us": statistics.median(samples_us),
        "mean_us": statistics.fmean(samples_us),
        "stdev_us": statistics.stdev(samples_us) if len(samples_us) > 1 else 0.0,
        "min_us": min(samples_us),
        "max_us": max(samples_us),
        "loops": number,
        "repeat": repeat,
    }


def record_of(panel: str, catalog: Catalog) -> EstimateRecord:
    """The record CreateEstimate would store for ``panel`` (as EstimateService._create builds it)."""
    req = domain_request(panel, request_id=f"bench-{panel}-0001")
    quote = price_estimate(req, catalog)
    return EstimateRecord(
        estimate_id=f"est_bench{panel}",
        revision=1,
        status=quote.status,
        decision=quote.decision,
        request=stored_request(req),
        request_hash=request_hash(req),
        request_id=req.request_id,
        dedup_key=req.dedup_key,
        actor="bench",
        accepted_at=ACCEPTED_AT,
        completed_at=ACCEPTED_AT if quote.status is Status.COMPLETED else None,
        quote=quote,
    )


def compute(req: EstimateRequest, catalog: Catalog) -> object:
    """The engine's whole work for one CreateEstimate: P2's hash, P3, P6."""
    request_hash(req)
    validate_request(req, catalog)
    return price_estimate(req, catalog)


def engine_figures(*, repeat: int, sample_s: float, catalog: Catalog | None = None) -> dict[str, Any]:
    """All in-process figures for both panels: ``{panel: {figure: stats}}`` plus bundle sizes."""
    catalog = catalog or load_catalog()
    out: dict[str, Any] = {}
    for panel in ("small", "large"):
        req = domain_request(panel, request_id=f"bench-{panel}-0001")
        if validate_request(req, catalog):
            raise RuntimeError(f"the {panel} panel does not validate")
        record = record_of(panel, catalog)
        bundle = build_bundle(record, catalog, signer=BENCH_KEY)
        summary = EvidenceSummary(bundle.sha256, bundle.size_bytes)

        figures: dict[str, Callable[[], object]] = {
            "hash": partial(request_hash, req),
            "validate": partial(validate_request, req, catalog),
            "price": partial(price_estimate, req, catalog),
            "compute": partial(compute, req, catalog),
            "evidence": partial(build_bundle, record, catalog, signer=BENCH_KEY),
            "reply_encode": partial(encode_create_response, record, summary),
        }
        out[panel] = {name: time_call(fn, repeat=repeat, sample_s=sample_s) for name, fn in figures.items()}
        out[panel]["status"] = record.status.value
        out[panel]["lines"] = len(record.quote.lines)
        out[panel]["evidence"]["size_bytes"] = bundle.size_bytes
        out[panel]["evidence"]["sha256"] = bundle.sha256
    return out
