"""Conversion between protobuf messages and domain objects; no logic beyond mapping."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from google.protobuf import json_format, timestamp_pb2

from kis_estimator.server.engine.audit import AuditEvent
from kis_estimator.server.engine.errors import DomainError, ErrorCode
from kis_estimator.server.engine.messages import violation
from kis_estimator.server.engine.model import (
    AccessoryLine,
    BreakerLine,
    Decision,
    EstimateRequest,
    PricedLine,
    Quote,
    ReviewReason,
    Status,
)
from kis_estimator.server.engine.records import EstimateRecord
from kis_estimator.server.engine.request import canonical_request, clean_text
from kis_estimator.server.gen.kis.estimator.v1 import admin_pb2 as admin_pb
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.gen.kis.estimator.v1 import evidence_pb2 as evidence_pb
from kis_estimator.server.gen.kis.estimator.v1 import review_pb2 as review_pb
from kis_estimator.server.service.estimates import Stored
from kis_estimator.server.service.evidence import EvidenceSummary
from kis_estimator.server.service.reviews import MonthReport, ReviewAnswer
from kis_estimator.server.storage.repository import EvidenceRecord

STATUS_TO_PROTO = {
    Status.COMPLETED: pb.ESTIMATE_STATUS_COMPLETED,
    Status.NEEDS_REVIEW: pb.ESTIMATE_STATUS_NEEDS_REVIEW,
    Status.REVIEWED: pb.ESTIMATE_STATUS_REVIEWED,
    Status.REJECTED: pb.ESTIMATE_STATUS_REJECTED,
}
STATUS_FROM_PROTO = {v: k for k, v in STATUS_TO_PROTO.items()}
DECISION_TO_PROTO = {
    Decision.OK: pb.DECISION_OK,
    Decision.ABSTAIN: pb.DECISION_ABSTAIN,
    Decision.REJECT: pb.DECISION_REJECT,
}


def _opt_int(msg: Any, name: str) -> int | None:
    return int(getattr(msg, name)) if msg.HasField(name) else None


def _breaker_from_proto(msg: pb.BreakerSpec | pb.BranchBreakerSpec, *, branch: bool) -> BreakerLine:
    return BreakerLine(
        kind=clean_text(msg.kind),
        poles=_opt_int(msg, "poles"),
        trip_at=_opt_int(msg, "trip_at"),
        frame_af=_opt_int(msg, "frame_af"),
        model=clean_text(msg.model),
        brand=clean_text(msg.brand),
        sensitivity_ma=_opt_int(msg, "sensitivity_ma"),
        qty=_opt_int(msg, "qty") if branch else None,
        remark=clean_text(msg.remark) if isinstance(msg, pb.BranchBreakerSpec) else None,
    )


def request_from_proto(msg: pb.CreateEstimateRequest) -> EstimateRequest:
    """The engine's view of a CreateEstimate request (strings trimmed, empty = absent)."""
    accessories = msg.accessories if msg.HasField("accessories") else None
    return EstimateRequest(
        brand=clean_text(msg.brand),
        request_id=clean_text(msg.request_id),
        customer_name=clean_text(msg.customer.name),
        customer_contact=clean_text(msg.customer.contact),
        project_name=clean_text(msg.project.name),
        project_location=clean_text(msg.project.location),
        mixed_reason=clean_text(msg.mixed_reason),
        form=clean_text(msg.form),
        location=clean_text(msg.installation.location),
        mount=clean_text(msg.installation.mount),
        floor_standing=msg.installation.floor_standing,
        enclosure_kind=clean_text(msg.enclosure.kind),
        material=clean_text(msg.enclosure.material),
        custom_price_krw=_opt_int(msg.enclosure, "custom_price_krw"),
        steel_p_cover=msg.enclosure.steel_p_cover,
        main=_breaker_from_proto(msg.main, branch=False) if msg.HasField("main") else None,
        branches=tuple(_breaker_from_proto(b, branch=True) for b in msg.branches),
        accessories_enabled=(
            accessories.enabled if accessories is not None and accessories.HasField("enabled") else None
        ),
        accessory_items=tuple(
            AccessoryLine(code=clean_text(it.code), qty=_opt_int(it, "qty"))
            for it in (accessories.items if accessories is not None else ())
        ),
        dedup_key=clean_text(msg.meta.dedup_key),
    )


def canonical_request_to_proto(req: EstimateRequest) -> pb.CreateEstimateRequest:
    """The canonical request (docs/pricing-rules.md §13) as a message, with its request_id."""
    data = canonical_request(req)
    if req.request_id is not None:
        data["request_id"] = req.request_id
    return json_format.ParseDict(data, pb.CreateEstimateRequest())


def timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


def _decimal_text(value: Decimal | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _line_to_proto(line: PricedLine) -> pb.Line:
    out = pb.Line(
        no=line.no,
        section=line.section,
        name=line.name,
        spec=line.spec,
        unit=line.unit,
        rule_id=line.rule_id,
        notes=line.notes,
        reason_id=line.reason_id or "",
    )
    if line.qty_kg is not None:
        out.qty_kg = f"{line.qty_kg:.2f}"
    else:
        out.qty = line.qty or 0
    if line.unit_price_krw is not None:
        out.unit_price_krw = line.unit_price_krw
    if line.amount_krw is not None:
        out.amount_krw = line.amount_krw
    return out


def reason_to_proto(r: ReviewReason) -> pb.ReviewReason:
    return pb.ReviewReason(
        reason_id=r.reason_id, code=r.code, path=r.path, question_en=r.question_en, question_ko=r.question_ko
    )


def quote_to_proto(quote: Quote, out: pb.Estimate) -> None:
    """Fill the priced part of an Estimate message from a quote."""
    out.status = STATUS_TO_PROTO[quote.status]
    out.decision = DECISION_TO_PROTO[quote.decision]
    out.catalog_version = quote.catalog_version
    out.rules_version = quote.rules_version
    enc = quote.enclosure
    out.enclosure.CopyFrom(
        pb.Enclosure(
            kind=enc.kind,
            series=enc.series or "",
            model=enc.model or "",
            material=enc.material,
            location=enc.location,
            mount=enc.mount,
            width_mm=enc.width_mm,
            height_mm=enc.height_mm,
            depth_mm=enc.depth_mm,
        )
    )
    if enc.unit_price_krw is not None:
        out.enclosure.unit_price_krw = enc.unit_price_krw
    s = quote.sizing
    out.sizing.CopyFrom(
        pb.Sizing(
            width_mm=s.width_mm,
            height_mm=s.height_mm,
            depth_mm=s.depth_mm,
            a_mm=s.a_mm,
            b_mm=s.b_mm,
            c_mm=s.c_mm,
            d_mm=s.d_mm,
            e_mm=s.e_mm,
            h_raw_mm=s.h_raw_mm,
        )
    )
    for sel in quote.selections:
        row = out.selections.add(
            path=sel.path,
            brand=sel.brand or "",
            kind=sel.kind,
            poles=sel.poles,
            trip_at=sel.trip_at,
            qty=sel.qty,
            model=sel.model or "",
            grade=sel.grade or "",
            frame_af=sel.frame_af or 0,
            high_sensitivity=sel.high_sensitivity,
            explicit_model=sel.explicit_model,
            reason_id=sel.reason_id or "",
        )
        if sel.unit_price_krw is not None:
            row.unit_price_krw = sel.unit_price_krw
    out.lines.extend(_line_to_proto(line) for line in quote.lines)
    t = quote.totals
    out.totals.partial_subtotal_krw = t.partial_subtotal_krw
    if t.subtotal_krw is not None:
        out.totals.subtotal_krw = t.subtotal_krw
    if t.vat_krw is not None:
        out.totals.vat_krw = t.vat_krw
    if t.total_krw is not None:
        out.totals.total_krw = t.total_krw
    out.review_reasons.extend(reason_to_proto(r) for r in quote.review_reasons)
    for w in quote.warnings:
        out.warnings.add(code=w.code, path=w.path, message_en=w.message_en, message_ko=w.message_ko)
    pbal = quote.phase_balance
    out.phase_balance.CopyFrom(
        pb.PhaseBalance(
            applicable=pbal.applicable,
            r_a=_decimal_text(pbal.r_a),
            s_a=_decimal_text(pbal.s_a),
            t_a=_decimal_text(pbal.t_a),
            imbalance_pct=_decimal_text(pbal.imbalance_pct),
        )
    )


def draft_to_proto(req: EstimateRequest, request_hash: str, quote: Quote) -> pb.Estimate:
    """An unstored estimate (ValidateEstimate): no id, revision 0."""
    out = pb.Estimate(
        request_hash=request_hash, request_id=req.request_id or "", dedup_key=req.dedup_key or ""
    )
    out.request.CopyFrom(canonical_request_to_proto(req))
    quote_to_proto(quote, out)
    return out


def record_to_proto(record: EstimateRecord, evidence: EvidenceSummary | None = None) -> pb.Estimate:
    """A stored estimate as returned by GetEstimate."""
    out = pb.Estimate(
        estimate_id=record.estimate_id,
        revision=record.revision,
        request_hash=record.request_hash,
        request_id=record.request_id or "",
        dedup_key=record.dedup_key or "",
    )
    out.accepted_at.CopyFrom(timestamp(record.accepted_at))
    if record.completed_at is not None:
        out.completed_at.CopyFrom(timestamp(record.completed_at))
    out.request.CopyFrom(canonical_request_to_proto(record.request))
    quote_to_proto(record.quote, out)
    # The record's lifecycle status wins over the quote's (review changes it later).
    out.status = STATUS_TO_PROTO[record.status]
    out.decision = DECISION_TO_PROTO[record.decision]
    if evidence is not None:
        out.evidence.sha256 = evidence.sha256
        out.evidence.size_bytes = evidence.size_bytes
    return out


def stored_to_proto(stored: Stored) -> pb.Estimate:
    return record_to_proto(stored.record, stored.evidence)


def review_item_to_proto(record: EstimateRecord, now: datetime) -> review_pb.ReviewItem:
    item = review_pb.ReviewItem(
        estimate_id=record.estimate_id,
        revision=record.revision,
        brand=record.request.brand or "",
        age_seconds=max(0, int((now - record.accepted_at).total_seconds())),
        partial_subtotal_krw=record.quote.totals.partial_subtotal_krw,
    )
    item.accepted_at.CopyFrom(timestamp(record.accepted_at))
    item.review_reasons.extend(reason_to_proto(r) for r in record.quote.review_reasons)
    return item


def resolutions_from_proto(items: Sequence[review_pb.ReviewResolution]) -> list[ReviewAnswer]:
    return [
        ReviewAnswer(
            reason_id=r.reason_id,
            model=clean_text(r.model),
            unit_price_krw=r.unit_price_krw if r.HasField("unit_price_krw") else None,
        )
        for r in items
    ]


def report_to_proto(report: MonthReport) -> review_pb.GetMetricsResponse:
    out = review_pb.GetMetricsResponse(
        month=report.month,
        accepted=report.accepted,
        completed=report.completed,
        needs_review=report.needs_review,
        reviewed=report.reviewed,
        rejected=report.rejected,
        auto_processing_rate_pct=_decimal_text(report.auto_processing_rate_pct),
        tat_samples=report.tat_samples,
        mixed_used=report.mixed_used,
        mixed_quota=report.mixed_quota,
    )
    if report.tat_median_ms is not None:
        out.tat_median_ms = report.tat_median_ms
    if report.tat_p90_ms is not None:
        out.tat_p90_ms = report.tat_p90_ms
    if report.oldest_open_review_age_s is not None:
        out.oldest_open_review_age_seconds = report.oldest_open_review_age_s
    return out


def evidence_info_to_proto(found: EvidenceRecord) -> evidence_pb.GetEvidenceInfoResponse:
    out = evidence_pb.GetEvidenceInfoResponse(
        estimate_id=found.estimate_id,
        revision=found.revision,
        sha256=found.sha256,
        size_bytes=found.size_bytes,
        manifest_json=found.manifest_json,
    )
    json_format.Parse(found.manifest_json.decode("utf-8"), out.manifest, ignore_unknown_fields=True)
    if found.signature is not None:
        out.signature.CopyFrom(
            evidence_pb.ManifestSignature(
                key_id=found.signature_key_id or "", algorithm="hmac-sha256", signature=found.signature
            )
        )
    return out


def audit_event_to_proto(event: AuditEvent) -> admin_pb.AuditEvent:
    out = admin_pb.AuditEvent(
        seq=event.seq,
        action=event.action,
        outcome=event.outcome,
        actor=event.actor,
        role=event.role,
        estimate_id=event.estimate_id or "",
        revision=event.revision or 0,
        details_json=json.dumps(dict(event.details), ensure_ascii=False, sort_keys=True),
        peer=event.peer,
        prev_hash=event.prev_hash,
        hash=event.hash,
    )
    out.at.CopyFrom(timestamp(event.at))
    return out


def optional_time(msg: Any, name: str) -> datetime | None:
    """The aware UTC time of Timestamp field ``name``, None when unset.

    A Timestamp outside its documented range (0001-01-01 … 9999-12-31 UTC, nanos 0 … 999,999,999)
    is MALFORMED_REQUEST at that field, not a conversion error.
    """
    if not msg.HasField(name):
        return None
    try:
        value: datetime = getattr(msg, name).ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise DomainError(
            violation(ErrorCode.MALFORMED_REQUEST, name, v=f"{name} is outside 0001-01-01 … 9999-12-31 UTC")
        ) from None
    return value


def summary_to_proto(record: EstimateRecord) -> pb.EstimateSummary:
    out = pb.EstimateSummary(
        estimate_id=record.estimate_id,
        revision=record.revision,
        status=STATUS_TO_PROTO[record.status],
        decision=DECISION_TO_PROTO[record.decision],
        brand=record.request.brand or "",
        partial_subtotal_krw=record.quote.totals.partial_subtotal_krw,
        request_id=record.request_id or "",
    )
    out.accepted_at.CopyFrom(timestamp(record.accepted_at))
    if record.quote.totals.total_krw is not None:
        out.total_krw = record.quote.totals.total_krw
    return out
