"""JSON documents for quotes and stored estimates: a lossless round trip, for storage.

Encoding choices (the spec is silent on the stored form; docs/pricing-rules.md §15 governs evidence only):

* every document is a JSON object of str/int/bool/None/list/dict values, ready for ``json.dumps``;
* money and counts are JSON integers; ``Decimal`` values (kg, amperes, %) are fixed-point strings
  (``format(d, "f")``, so ``Decimal("1.50")`` stays ``"1.50"``); NaN and infinities are refused;
* timestamps are RFC 3339 UTC with exactly six fractional digits (``2025-10-01T03:04:05.000000Z``):
  lossless for Python datetimes, fixed width so the strings sort chronologically. Evidence
  (docs/pricing-rules.md §15) renders seconds precision itself; decoding also accepts that shorter form;
* the request is stored as its canonical dict (docs/pricing-rules.md §13) plus ``request_id``, so it reads
  back with the defaults of §2 filled in (:func:`stored_request`); its hash is unchanged by that;
* a record document carries ``"format": 1``; decoding refuses other formats.

Decoding checks every value's JSON type and raises :class:`DocumentError` naming the path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from kis_estimator.server.engine.model import (
    CatalogRowRef,
    Decision,
    Enclosure,
    EstimateRequest,
    PhaseBalance,
    PricedLine,
    Quote,
    Resolution,
    ReviewReason,
    RuleApplication,
    Selection,
    Sizing,
    Status,
    Totals,
    Warning,
)
from kis_estimator.server.engine.records import EstimateRecord, as_utc
from kis_estimator.server.engine.request import canonical_request, request_from_dict

RECORD_FORMAT = 1

Document = dict[str, object]
_E = TypeVar("_E", Status, Decision)


class DocumentError(ValueError):
    """A stored document does not have the shape this codec writes."""


# --------------------------------------------------------------------------- scalars


def decimal_to_text(value: Decimal) -> str:
    """Fixed-point text of a finite Decimal, keeping its exponent (``1.50`` stays ``"1.50"``)."""
    if not value.is_finite():
        raise ValueError(f"cannot store non-finite Decimal {value}")
    return format(value, "f")


def datetime_to_text(value: datetime) -> str:
    """RFC 3339 UTC with microseconds, e.g. ``2025-10-01T03:04:05.000000Z``; refuses naive values."""
    # isoformat, not strftime: it zero-pads years below 1000 on every platform
    return as_utc(value, "timestamp").replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def datetime_from_text(text: str) -> datetime:
    """Parse an RFC 3339 UTC timestamp written with ``Z`` (with or without a fraction)."""
    if not text.endswith("Z"):
        raise ValueError(f"timestamp {text!r} must be UTC with a 'Z' suffix")
    value = datetime.fromisoformat(text[:-1])
    if value.tzinfo is not None:
        raise ValueError(f"timestamp {text!r} has two zone designators")
    return value.replace(tzinfo=UTC)


def _opt_decimal(value: Decimal | None) -> str | None:
    return None if value is None else decimal_to_text(value)


def _opt_datetime(value: datetime | None) -> str | None:
    return None if value is None else datetime_to_text(value)


_MISSING = object()


class _Reader:
    """Typed access to one JSON object; errors name the path of the offending value."""

    __slots__ = ("_obj", "_path")

    def __init__(self, obj: object, path: str) -> None:
        # ``type(obj) is dict`` first: json.loads gives dicts, and the ABC check is slow
        if type(obj) is not dict and not isinstance(obj, Mapping):
            raise DocumentError(f"{path or 'document'}: expected an object")
        self._obj: Mapping[str, object] = obj
        self._path = path

    def _where(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _get(self, key: str) -> object:
        value = self._obj.get(key, _MISSING)
        if value is _MISSING:
            raise DocumentError(f"{self._where(key)}: missing")
        return value

    def _fail(self, key: str, expected: str) -> DocumentError:
        return DocumentError(f"{self._where(key)}: expected {expected}")

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise self._fail(key, "a string")
        return value

    def opt_text(self, key: str) -> str | None:
        return None if self._get(key) is None else self.text(key)

    def integer(self, key: str) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, "an integer")
        return value

    def opt_integer(self, key: str) -> int | None:
        return None if self._get(key) is None else self.integer(key)

    def flag(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise self._fail(key, "a boolean")
        return value

    def opt_decimal(self, key: str) -> Decimal | None:
        if self._get(key) is None:
            return None
        try:
            value = Decimal(self.text(key))
        except InvalidOperation:
            raise self._fail(key, "a fixed-point decimal string") from None
        if not value.is_finite():
            raise self._fail(key, "a finite decimal")
        return value

    def timestamp(self, key: str) -> datetime:
        try:
            return datetime_from_text(self.text(key))
        except ValueError as exc:
            raise DocumentError(f"{self._where(key)}: {exc}") from None

    def opt_timestamp(self, key: str) -> datetime | None:
        return None if self._get(key) is None else self.timestamp(key)

    def child(self, key: str) -> _Reader:
        return _Reader(self._get(key), self._where(key))

    def opt_child(self, key: str) -> _Reader | None:
        return None if self._get(key) is None else self.child(key)

    def raw_mapping(self, key: str) -> dict[str, Any]:
        value = self._get(key)
        if not isinstance(value, Mapping):
            raise self._fail(key, "an object")
        return dict(value)

    def children(self, key: str) -> list[_Reader]:
        value = self._get(key)
        if not isinstance(value, list):
            raise self._fail(key, "a list")
        return [_Reader(item, f"{self._where(key)}[{i}]") for i, item in enumerate(value)]


# --------------------------------------------------------------------------- quote parts


def enclosure_document(e: Enclosure) -> Document:
    return {
        "kind": e.kind,
        "series": e.series,
        "model": e.model,
        "material": e.material,
        "location": e.location,
        "mount": e.mount,
        "width_mm": e.width_mm,
        "height_mm": e.height_mm,
        "depth_mm": e.depth_mm,
        "unit_price_krw": e.unit_price_krw,
    }


def _enclosure(r: _Reader) -> Enclosure:
    return Enclosure(
        kind=r.text("kind"),
        series=r.opt_text("series"),
        model=r.opt_text("model"),
        material=r.text("material"),
        location=r.text("location"),
        mount=r.text("mount"),
        width_mm=r.integer("width_mm"),
        height_mm=r.integer("height_mm"),
        depth_mm=r.integer("depth_mm"),
        unit_price_krw=r.opt_integer("unit_price_krw"),
    )


_SIZING_FIELDS = ("width_mm", "height_mm", "depth_mm", "a_mm", "b_mm", "c_mm", "d_mm", "e_mm", "h_raw_mm")


def sizing_document(s: Sizing) -> Document:
    return {name: getattr(s, name) for name in _SIZING_FIELDS}


def _sizing(r: _Reader) -> Sizing:
    return Sizing(**{name: r.integer(name) for name in _SIZING_FIELDS})


def selection_document(s: Selection) -> Document:
    return {
        "path": s.path,
        "brand": s.brand,
        "kind": s.kind,
        "poles": s.poles,
        "trip_at": s.trip_at,
        "qty": s.qty,
        "model": s.model,
        "grade": s.grade,
        "frame_af": s.frame_af,
        "high_sensitivity": s.high_sensitivity,
        "unit_price_krw": s.unit_price_krw,
        "explicit_model": s.explicit_model,
        "reason_id": s.reason_id,
    }


def _selection(r: _Reader) -> Selection:
    return Selection(
        path=r.text("path"),
        brand=r.opt_text("brand"),
        kind=r.text("kind"),
        poles=r.integer("poles"),
        trip_at=r.integer("trip_at"),
        qty=r.integer("qty"),
        model=r.opt_text("model"),
        grade=r.opt_text("grade"),
        frame_af=r.opt_integer("frame_af"),
        high_sensitivity=r.flag("high_sensitivity"),
        unit_price_krw=r.opt_integer("unit_price_krw"),
        explicit_model=r.flag("explicit_model"),
        reason_id=r.opt_text("reason_id"),
    )


def _line_doc(line: PricedLine) -> Document:
    return {
        "no": line.no,
        "section": line.section,
        "name": line.name,
        "spec": line.spec,
        "unit": line.unit,
        "qty": line.qty,
        "qty_kg": _opt_decimal(line.qty_kg),
        "unit_price_krw": line.unit_price_krw,
        "amount_krw": line.amount_krw,
        "rule_id": line.rule_id,
        "notes": line.notes,
        "reason_id": line.reason_id,
    }


def _line(r: _Reader) -> PricedLine:
    return PricedLine(
        no=r.integer("no"),
        section=r.text("section"),
        name=r.text("name"),
        spec=r.text("spec"),
        unit=r.text("unit"),
        qty=r.opt_integer("qty"),
        qty_kg=r.opt_decimal("qty_kg"),
        unit_price_krw=r.opt_integer("unit_price_krw"),
        amount_krw=r.opt_integer("amount_krw"),
        rule_id=r.text("rule_id"),
        notes=r.text("notes"),
        reason_id=r.opt_text("reason_id"),
    )


def totals_document(t: Totals) -> Document:
    return {
        "subtotal_krw": t.subtotal_krw,
        "vat_krw": t.vat_krw,
        "total_krw": t.total_krw,
        "partial_subtotal_krw": t.partial_subtotal_krw,
    }


def _totals(r: _Reader) -> Totals:
    return Totals(
        subtotal_krw=r.opt_integer("subtotal_krw"),
        vat_krw=r.opt_integer("vat_krw"),
        total_krw=r.opt_integer("total_krw"),
        partial_subtotal_krw=r.integer("partial_subtotal_krw"),
    )


def reason_document(reason: ReviewReason) -> Document:
    res = reason.resolution
    return {
        "reason_id": reason.reason_id,
        "code": reason.code,
        "path": reason.path,
        "question_en": reason.question_en,
        "question_ko": reason.question_ko,
        "resolution": None
        if res is None
        else {"reason_id": res.reason_id, "unit_price_krw": res.unit_price_krw, "model": res.model},
    }


def _reason(r: _Reader) -> ReviewReason:
    res = r.opt_child("resolution")
    return ReviewReason(
        reason_id=r.text("reason_id"),
        code=r.text("code"),
        path=r.text("path"),
        question_en=r.text("question_en"),
        question_ko=r.text("question_ko"),
        resolution=None
        if res is None
        else Resolution(
            reason_id=res.text("reason_id"),
            unit_price_krw=res.integer("unit_price_krw"),
            model=res.opt_text("model"),
        ),
    )


def _warning_doc(w: Warning) -> Document:
    return {"code": w.code, "path": w.path, "message_en": w.message_en, "message_ko": w.message_ko}


def _warning(r: _Reader) -> Warning:
    return Warning(
        code=r.text("code"),
        path=r.text("path"),
        message_en=r.text("message_en"),
        message_ko=r.text("message_ko"),
    )


def phase_document(p: PhaseBalance) -> Document:
    return {
        "applicable": p.applicable,
        "r_a": _opt_decimal(p.r_a),
        "s_a": _opt_decimal(p.s_a),
        "t_a": _opt_decimal(p.t_a),
        "imbalance_pct": _opt_decimal(p.imbalance_pct),
    }


def _phase(r: _Reader) -> PhaseBalance:
    return PhaseBalance(
        applicable=r.flag("applicable"),
        r_a=r.opt_decimal("r_a"),
        s_a=r.opt_decimal("s_a"),
        t_a=r.opt_decimal("t_a"),
        imbalance_pct=r.opt_decimal("imbalance_pct"),
    )


def _enum(r: _Reader, key: str, enum: type[_E]) -> _E:
    text = r.text(key)
    try:
        return enum(text)
    except ValueError:
        raise DocumentError(f"{key}: unknown {enum.__name__} {text!r}") from None


# --------------------------------------------------------------------------- quote


def quote_to_document(q: Quote) -> Document:
    """JSON-ready document of a quote; :func:`quote_from_document` restores an equal Quote."""
    return {
        "status": q.status.value,
        "decision": q.decision.value,
        "catalog_version": q.catalog_version,
        "rules_version": q.rules_version,
        "enclosure": enclosure_document(q.enclosure),
        "sizing": sizing_document(q.sizing),
        "selections": [selection_document(s) for s in q.selections],
        "lines": [_line_doc(line) for line in q.lines],
        "totals": totals_document(q.totals),
        "review_reasons": [reason_document(reason) for reason in q.review_reasons],
        "warnings": [_warning_doc(w) for w in q.warnings],
        "phase_balance": phase_document(q.phase_balance),
        "rules": [{"rule_id": a.rule_id, "applied_to": a.applied_to, "why": a.why} for a in q.rules],
        # Quote.trace is JSON-ready by contract (model.py); copied so the document owns its data.
        "trace": _copy_json(q.trace),
        "catalog_rows": [{"file": c.file, "line": c.line} for c in q.catalog_rows],
    }


def quote_from_document(doc: Mapping[str, object]) -> Quote:
    """Rebuild a Quote from :func:`quote_to_document`'s output (after a JSON round trip)."""
    return _quote(_Reader(doc, ""))


def _quote(r: _Reader) -> Quote:
    return Quote(
        status=_enum(r, "status", Status),
        decision=_enum(r, "decision", Decision),
        catalog_version=r.text("catalog_version"),
        rules_version=r.text("rules_version"),
        enclosure=_enclosure(r.child("enclosure")),
        sizing=_sizing(r.child("sizing")),
        selections=tuple(_selection(x) for x in r.children("selections")),
        lines=tuple(_line(x) for x in r.children("lines")),
        totals=_totals(r.child("totals")),
        review_reasons=tuple(_reason(x) for x in r.children("review_reasons")),
        warnings=tuple(_warning(x) for x in r.children("warnings")),
        phase_balance=_phase(r.child("phase_balance")),
        rules=tuple(
            RuleApplication(rule_id=x.text("rule_id"), applied_to=x.text("applied_to"), why=x.text("why"))
            for x in r.children("rules")
        ),
        trace=_copy_json(r.raw_mapping("trace")),
        catalog_rows=tuple(
            CatalogRowRef(file=x.text("file"), line=x.integer("line")) for x in r.children("catalog_rows")
        ),
    )


_JSON_SCALARS = frozenset({str, int, bool, type(None)})


def _copy_json(value: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy with dicts for mappings and lists for sequences (a trace holds JSON values)."""

    def copy(v: object) -> object:
        kind = type(v)
        # exact types first: scalars and dicts are nearly all of a trace, and the Mapping ABC
        # check is the slow one
        if kind in _JSON_SCALARS:
            return v
        if kind is dict or isinstance(v, Mapping):
            return {str(k): copy(x) for k, x in v.items()}  # type: ignore[attr-defined]  # a Mapping
        if kind is list or kind is tuple or isinstance(v, list | tuple):
            return [copy(x) for x in v]  # type: ignore[attr-defined]  # a list or tuple
        return v

    return {str(k): copy(v) for k, v in value.items()}


# --------------------------------------------------------------------------- request and record


def stored_request(req: EstimateRequest) -> EstimateRequest:
    """The request as storage gives it back: canonical (docs/pricing-rules.md §13) plus request_id.

    Idempotent, and ``request_hash(stored_request(r)) == request_hash(r)``.
    """
    return dataclasses.replace(request_from_dict(canonical_request(req)), request_id=req.request_id)


def _request(r: _Reader) -> EstimateRequest:
    canonical = r.raw_mapping("request")
    try:
        req = request_from_dict(canonical)
    except ValueError as exc:
        raise DocumentError(f"request: {exc}") from None
    return dataclasses.replace(req, request_id=r.opt_text("request_id"))


def record_to_document(record: EstimateRecord) -> Document:
    """JSON-ready document of a stored estimate (format 1)."""
    return {
        "format": RECORD_FORMAT,
        "estimate_id": record.estimate_id,
        "revision": record.revision,
        "status": record.status.value,
        "decision": record.decision.value,
        "request": canonical_request(record.request),
        "request_id": record.request_id,
        "request_hash": record.request_hash,
        "dedup_key": record.dedup_key,
        "actor": record.actor,
        "accepted_at": datetime_to_text(record.accepted_at),
        "completed_at": _opt_datetime(record.completed_at),
        "quote": quote_to_document(record.quote),
    }


def record_from_document(doc: Mapping[str, object]) -> EstimateRecord:
    """Rebuild a stored estimate; its request is :func:`stored_request` of the original."""
    r = _Reader(doc, "")
    fmt = r.integer("format")
    if fmt != RECORD_FORMAT:
        raise DocumentError(f"format: unsupported record format {fmt} (this build reads {RECORD_FORMAT})")
    try:
        return EstimateRecord(
            estimate_id=r.text("estimate_id"),
            revision=r.integer("revision"),
            status=_enum(r, "status", Status),
            decision=_enum(r, "decision", Decision),
            request=_request(r),
            request_hash=r.text("request_hash"),
            request_id=r.opt_text("request_id"),
            dedup_key=r.opt_text("dedup_key"),
            actor=r.text("actor"),
            accepted_at=r.timestamp("accepted_at"),
            completed_at=r.opt_timestamp("completed_at"),
            quote=_quote(r.child("quote")),
        )
    except DocumentError:
        raise
    except ValueError as exc:  # EstimateRecord's own checks (revision)
        raise DocumentError(str(exc)) from None


__all__ = [
    "RECORD_FORMAT",
    "Document",
    "DocumentError",
    "datetime_from_text",
    "datetime_to_text",
    "decimal_to_text",
    "quote_from_document",
    "quote_to_document",
    "record_from_document",
    "record_to_document",
    "stored_request",
]
