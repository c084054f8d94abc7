"""Quote and estimate-record documents: lossless JSON round trips and explicit decoding errors."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kis_estimator.server.engine.codec import (
    DocumentError,
    datetime_from_text,
    datetime_to_text,
    decimal_to_text,
    quote_from_document,
    quote_to_document,
    record_from_document,
    record_to_document,
    stored_request,
)
from kis_estimator.server.engine.model import (
    RULES_VERSION,
    AccessoryLine,
    BreakerLine,
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
from kis_estimator.server.engine.records import EstimateRecord
from kis_estimator.server.engine.request import request_hash

CATALOG_VERSION = "fa2a610274db308fa4fe87e661952877f7e19ad3cdc53598f1a90f97898f4597"
ACCEPTED = datetime(2025, 10, 1, 3, 4, 5, 123456, tzinfo=UTC)


def _via_json(doc: dict[str, object]) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(json.dumps(doc, ensure_ascii=False, sort_keys=True))
    return loaded


def review_quote() -> Quote:
    """A NEEDS_REVIEW quote exercising every optional part: None prices, kg, resolutions, trace."""
    return Quote(
        status=Status.NEEDS_REVIEW,
        decision=Decision.ABSTAIN,
        catalog_version=CATALOG_VERSION,
        rules_version=RULES_VERSION,
        enclosure=Enclosure(
            kind="CUSTOM",
            series=None,
            model=None,
            material="SUS201_1_2",
            location="OUTDOOR",
            mount="SURFACE",
            width_mm=800,
            height_mm=1500,
            depth_mm=400,
            unit_price_krw=None,
        ),
        sizing=Sizing(800, 1500, 400, 360, 250, 540, 150, 0, 1300),
        selections=(
            Selection(
                "main", "SANGDO", "MCCB", 4, 800, 1, "SBS-804", "BOTH", 800, False, 410000, False, None
            ),
            Selection("branches[0]", None, "MCCB", 3, 25, 1, None, None, None, False, None, False, "R1"),
        ),
        lines=(
            PricedLine(
                1, "ENCLOSURE", "외함", "800×1500×400", "EA", 1, None, None, None, "PRC-ENC", reason_id="R2"
            ),
            PricedLine(
                2, "BUSBAR", "BUS-BAR", "3T×15", "KG", None, Decimal("12.50"), 20000, 250000, "PRC-BUS"
            ),
            PricedLine(
                3, "LABOUR", "ASSEMBLY CHARGE", "", "식", 1, None, 90000, 90000, "PRC-ASM", notes="frame 800"
            ),
        ),
        totals=Totals(subtotal_krw=None, vat_krw=None, total_krw=None, partial_subtotal_krw=1633800),
        review_reasons=(
            ReviewReason(
                "R1",
                "NEED_KNOWLEDGE_UPDATE",
                "branches[0]",
                "No catalog model?",
                "모델이 없습니다?",
                Resolution("R1", 15600, "SBS-53"),
            ),
            ReviewReason("R2", "CUSTOM_ENCLOSURE_PRICE", "enclosure", "Price?", "단가?"),
        ),
        warnings=(Warning("PHASE_IMBALANCE", "branches", "Phase imbalance 21.43 %", "상 불평형 21.43%"),),
        phase_balance=PhaseBalance(
            True, Decimal("80.00"), Decimal("66.67"), Decimal("0.5"), Decimal("21.43")
        ),
        rules=(RuleApplication("SIZ-A", "main", "F(150)=200 → A=360"),),
        trace={
            "size": {"A": 360, "units": [{"p": 4, "h": "37.5"}], "ok": True, "none": None},
            "steps": ["normalise", "select"],
        },
        catalog_rows=(CatalogRowRef("breakers.csv", 12), CatalogRowRef("enclosures.csv", 140)),
    )


def completed_quote() -> Quote:
    return dataclasses.replace(
        review_quote(),
        status=Status.COMPLETED,
        decision=Decision.OK,
        totals=Totals(413300, 41330, 454630, 413300),
        review_reasons=(),
        warnings=(),
        phase_balance=PhaseBalance(False),
        rules=(),
        trace={},
        catalog_rows=(),
    )


def sample_request(**changes: object) -> EstimateRequest:
    req = EstimateRequest(
        brand="SANGDO",
        request_id="c0ffee01",
        customer_name="홍길동",
        location="INDOOR",
        mount="FLUSH",
        main=BreakerLine(kind="MCCB", poles=4, trip_at=150),
        branches=(
            BreakerLine(kind="MCCB", poles=4, trip_at=50, qty=4),
            BreakerLine(kind="ELB", poles=2, trip_at=20, qty=10, remark="조명"),
        ),
        accessories_enabled=True,
        accessory_items=(AccessoryLine("shunt_trip", 1),),
        dedup_key="dedup:ab12cd34",
    )
    return dataclasses.replace(req, **changes)  # type: ignore[arg-type]  # test helper: keyword overrides


def sample_record(**changes: object) -> EstimateRecord:
    req = stored_request(sample_request())
    record = EstimateRecord(
        estimate_id="E-0001",
        revision=1,
        status=Status.NEEDS_REVIEW,
        decision=Decision.ABSTAIN,
        request=req,
        request_hash=request_hash(req),
        request_id=req.request_id,
        dedup_key=req.dedup_key,
        actor="estimator@example",
        accepted_at=ACCEPTED,
        completed_at=None,
        quote=review_quote(),
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]  # test helper: keyword overrides


# --------------------------------------------------------------------------- hand-built round trips


@pytest.mark.parametrize("quote", [review_quote(), completed_quote()], ids=["needs_review", "completed"])
def test_quote_round_trips_through_json(quote: Quote) -> None:
    assert quote_from_document(_via_json(quote_to_document(quote))) == quote


def test_quote_document_owns_a_plain_json_copy_of_the_trace() -> None:
    inner = {"b": [1, None]}
    trace = {"steps": ({"x": MappingProxyType(inner), "y": ("a", True)},), "n": 3}
    quote = dataclasses.replace(completed_quote(), trace=trace)
    document = quote_to_document(quote)
    assert document["trace"] == {"steps": [{"x": {"b": [1, None]}, "y": ["a", True]}], "n": 3}
    assert type(document["trace"]["steps"][0]["x"]) is dict
    inner["b"].append(2)  # the document does not share the quote's containers
    assert document["trace"]["steps"][0]["x"] == {"b": [1, None]}


def test_quote_document_writes_decimals_as_fixed_strings_and_unknown_prices_as_null() -> None:
    doc = quote_to_document(review_quote())
    lines = doc["lines"]
    assert isinstance(lines, list)
    assert lines[1]["qty_kg"] == "12.50"
    assert lines[0]["unit_price_krw"] is None
    assert doc["phase_balance"] == {
        "applicable": True,
        "r_a": "80.00",
        "s_a": "66.67",
        "t_a": "0.5",
        "imbalance_pct": "21.43",
    }
    assert doc["totals"] == {
        "subtotal_krw": None,
        "vat_krw": None,
        "total_krw": None,
        "partial_subtotal_krw": 1633800,
    }


@pytest.mark.parametrize(
    "record",
    [
        sample_record(),
        sample_record(
            revision=2,
            status=Status.REVIEWED,
            decision=Decision.OK,
            completed_at=ACCEPTED + timedelta(minutes=3),
            quote=completed_quote(),
        ),
        sample_record(
            request=stored_request(sample_request(request_id=None, dedup_key=None)),
            request_id=None,
            dedup_key=None,
        ),
    ],
    ids=["needs_review", "reviewed_rev2", "no_keys"],
)
def test_record_round_trips_through_json(record: EstimateRecord) -> None:
    assert record_from_document(_via_json(record_to_document(record))) == record


def test_record_document_stores_canonical_request_and_utc_microsecond_timestamps() -> None:
    record = sample_record(completed_at=datetime(2025, 10, 1, 12, 6, 0, tzinfo=timezone(timedelta(hours=9))))
    doc = record_to_document(record)
    assert doc["format"] == 1
    assert doc["accepted_at"] == "2025-10-01T03:04:05.123456Z"
    assert doc["completed_at"] == "2025-10-01T03:06:00.000000Z"
    assert doc["request_id"] == "c0ffee01"
    request = doc["request"]
    assert isinstance(request, dict)
    assert "request_id" not in request
    assert request["form"] == "ECONOMIC"
    assert request["branches"][1]["sensitivity_ma"] == 30


def test_stored_request_fills_defaults_keeps_hash_and_is_idempotent() -> None:
    original = sample_request()
    stored = stored_request(original)
    assert stored != original
    assert (stored.form, stored.enclosure_kind, stored.material) == ("ECONOMIC", "STOCK", "STEEL_1_6")
    assert stored.branches[1].sensitivity_ma == 30
    assert stored.request_id == "c0ffee01"
    assert request_hash(stored) == request_hash(original)
    assert stored_request(stored) == stored


def test_record_normalises_timestamps_to_utc() -> None:
    seoul = timezone(timedelta(hours=9))
    record = sample_record(accepted_at=datetime(2025, 10, 1, 12, 4, 5, tzinfo=seoul))
    assert record.accepted_at == datetime(2025, 10, 1, 3, 4, 5, tzinfo=UTC)
    assert record.accepted_at.tzinfo is UTC


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"accepted_at": datetime(2025, 10, 1)}, "accepted_at must be timezone-aware"),  # noqa: DTZ001 - the point
        ({"completed_at": datetime(2025, 10, 1)}, "completed_at must be timezone-aware"),  # noqa: DTZ001
        ({"revision": 0}, "revision must be >= 1"),
        ({"request_id": "other"}, "request_id and dedup_key must equal"),
        ({"dedup_key": None}, "request_id and dedup_key must equal"),
    ],
    ids=["naive_accepted", "naive_completed", "revision_zero", "request_id_mismatch", "dedup_key_mismatch"],
)
def test_record_rejects_inconsistent_fields(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sample_record(**changes)


# --------------------------------------------------------------------------- scalars


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (datetime(2025, 10, 1, 3, 4, 5, tzinfo=UTC), "2025-10-01T03:04:05.000000Z"),
        (datetime(2025, 10, 1, 3, 4, 5, 7, tzinfo=UTC), "2025-10-01T03:04:05.000007Z"),
        (datetime(2025, 10, 1, 0, 0, 0, tzinfo=timezone(timedelta(hours=9))), "2025-09-30T15:00:00.000000Z"),
        (datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC), "0999-01-02T03:04:05.000000Z"),
    ],
    ids=["whole_seconds", "microseconds", "kst_to_utc", "year_padded"],
)
def test_timestamp_text_is_fixed_width_utc(value: datetime, text: str) -> None:
    assert datetime_to_text(value) == text
    assert datetime_from_text(text) == value


def test_timestamp_parse_accepts_seconds_precision() -> None:
    assert datetime_from_text("2025-10-01T03:04:05Z") == datetime(2025, 10, 1, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    "text", ["2025-10-01T03:04:05", "2025-10-01T03:04:05+09:00", "2025-10-01T03:04:05+00:00Z", "soon"]
)
def test_timestamp_parse_refuses_non_utc_text(text: str) -> None:
    with pytest.raises(ValueError):
        datetime_from_text(text)


def test_naive_timestamp_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        datetime_to_text(datetime(2025, 10, 1))  # noqa: DTZ001 - the point of the test


@pytest.mark.parametrize(
    ("value", "text"),
    [(Decimal("1.50"), "1.50"), (Decimal("1E+2"), "100"), (Decimal("-0.001"), "-0.001"), (Decimal(7), "7")],
    ids=["trailing_zero", "exponent", "negative", "integer"],
)
def test_decimal_text_is_fixed_point(value: Decimal, text: str) -> None:
    assert decimal_to_text(value) == text


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")])
def test_non_finite_decimal_is_refused(value: Decimal) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        decimal_to_text(value)


# --------------------------------------------------------------------------- decoding errors


def _broken(path: tuple[str | int, ...], value: object) -> dict[str, object]:
    doc = _via_json(record_to_document(sample_record()))
    target: object = doc
    for key in path[:-1]:
        target = target[key]  # type: ignore[index]  # walking a JSON tree in a test
    target[path[-1]] = value  # type: ignore[index]
    return doc


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("format",), 2, "format: unsupported record format 2"),
        (("revision",), "1", "revision: expected an integer"),
        (("revision",), True, "revision: expected an integer"),
        (("status",), "DONE", "status: unknown Status 'DONE'"),
        (("accepted_at",), "2025-10-01T03:04:05", "accepted_at: timestamp"),
        (("quote", "lines", 1, "qty_kg"), "twelve", r"quote.lines\[1\].qty_kg: expected a fixed-point"),
        (("quote", "lines", 1, "qty_kg"), "NaN", r"quote.lines\[1\].qty_kg: expected a finite decimal"),
        (("quote", "totals", "partial_subtotal_krw"), None, "quote.totals.partial_subtotal_krw: expected"),
        (("quote", "sizing"), [], "quote.sizing: expected an object"),
        (("quote", "warnings"), {}, "quote.warnings: expected a list"),
        (("quote", "trace"), [], "quote.trace: expected an object"),
        (("request",), {"branches": "x"}, "request: branches must be a list"),
    ],
    ids=[
        "format",
        "revision_str",
        "revision_bool",
        "status",
        "naive_time",
        "decimal_text",
        "decimal_nan",
        "null_int",
        "object",
        "list",
        "trace",
        "request",
    ],
)
def test_decoding_names_the_broken_path(path: tuple[str | int, ...], value: object, message: str) -> None:
    with pytest.raises(DocumentError, match=message):
        record_from_document(_broken(path, value))


def test_decoding_reports_a_missing_key() -> None:
    doc = _via_json(record_to_document(sample_record()))
    del doc["actor"]
    with pytest.raises(DocumentError, match="actor: missing"):
        record_from_document(doc)


# --------------------------------------------------------------------------- property-based round trips

_text = st.text(max_size=12)
_opt_text = st.none() | _text
_int = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_opt_int = st.none() | _int
_decimal = st.decimals(allow_nan=False, allow_infinity=False)
_opt_decimal = st.none() | _decimal
_json = st.recursive(
    st.none() | st.booleans() | _int | _text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_text, children, max_size=3),
    max_leaves=10,
)
_quotes = st.builds(
    Quote,
    status=st.sampled_from(Status),
    decision=st.sampled_from(Decision),
    catalog_version=_text,
    rules_version=_text,
    enclosure=st.builds(
        Enclosure, _text, _opt_text, _opt_text, _text, _text, _text, _int, _int, _int, _opt_int
    ),
    sizing=st.builds(Sizing, *[_int] * 9),
    selections=st.lists(
        st.builds(
            Selection,
            *(_text, _opt_text, _text, _int, _int, _int, _opt_text, _opt_text, _opt_int),
            *(st.booleans(), _opt_int, st.booleans(), _opt_text),
        ),
        max_size=3,
    ).map(tuple),
    lines=st.lists(
        st.builds(
            PricedLine,
            *(_int, _text, _text, _text, _text, _opt_int, _opt_decimal, _opt_int, _opt_int, _text, _text),
            _opt_text,
        ),
        max_size=3,
    ).map(tuple),
    totals=st.builds(Totals, _opt_int, _opt_int, _opt_int, _int),
    review_reasons=st.lists(
        st.builds(
            ReviewReason,
            *(_text, _text, _text, _text, _text),
            st.none() | st.builds(Resolution, _text, _int, _opt_text),
        ),
        max_size=3,
    ).map(tuple),
    warnings=st.lists(st.builds(Warning, _text, _text, _text, _text), max_size=2).map(tuple),
    phase_balance=st.builds(
        PhaseBalance, st.booleans(), _opt_decimal, _opt_decimal, _opt_decimal, _opt_decimal
    ),
    rules=st.lists(st.builds(RuleApplication, _text, _text, _text), max_size=3).map(tuple),
    trace=st.dictionaries(_text, _json, max_size=4),
    catalog_rows=st.lists(st.builds(CatalogRowRef, _text, _int), max_size=3).map(tuple),
)


@settings(max_examples=150, deadline=None)
@given(quote=_quotes)
def test_any_quote_round_trips_through_json(quote: Quote) -> None:
    assert quote_from_document(_via_json(quote_to_document(quote))) == quote


# request texts arrive trimmed and non-empty (docs/pricing-rules.md §2), so canonicalisation keeps them
_clean = st.text(min_size=1, max_size=10).map(str.strip).filter(bool)
_opt_clean = st.none() | _clean
_small = st.none() | st.integers(min_value=-5, max_value=900)
_breaker = st.builds(
    BreakerLine, _opt_clean, _small, _small, _small, _opt_clean, _opt_clean, _small, _small, _opt_clean
)
_requests = st.builds(
    EstimateRequest,
    brand=_opt_clean,
    request_id=_opt_clean,
    customer_name=_opt_clean,
    project_location=_opt_clean,
    mixed_reason=_opt_clean,
    form=_opt_clean,
    location=_opt_clean,
    mount=_opt_clean,
    floor_standing=st.booleans(),
    enclosure_kind=_opt_clean,
    material=_opt_clean,
    custom_price_krw=_small,
    steel_p_cover=st.booleans(),
    main=st.none() | _breaker,
    branches=st.lists(_breaker, max_size=3).map(tuple),
    accessories_enabled=st.none() | st.booleans(),
    accessory_items=st.lists(st.builds(AccessoryLine, _opt_clean, _small), max_size=2).map(tuple),
    dedup_key=_opt_clean,
)
_instants = st.datetimes(
    min_value=datetime(1970, 1, 2),  # noqa: DTZ001 - hypothesis bounds are naive; zone added below
    max_value=datetime(2200, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC) | st.builds(timezone, st.timedeltas(timedelta(hours=-14), timedelta(hours=14))),
)


@st.composite
def _records(draw: st.DrawFn) -> EstimateRecord:
    req = stored_request(draw(_requests))
    return EstimateRecord(
        estimate_id=draw(_text),
        revision=draw(st.integers(min_value=1, max_value=10**6)),
        status=draw(st.sampled_from(Status)),
        decision=draw(st.sampled_from(Decision)),
        request=req,
        request_hash=request_hash(req),
        request_id=req.request_id,
        dedup_key=req.dedup_key,
        actor=draw(_text),
        accepted_at=draw(_instants),
        completed_at=draw(st.none() | _instants),
        quote=draw(_quotes),
    )


@settings(max_examples=150, deadline=None)
@given(record=_records())
def test_any_record_round_trips_through_json(record: EstimateRecord) -> None:
    assert record_from_document(_via_json(record_to_document(record))) == record


@settings(max_examples=150, deadline=None)
@given(req=_requests)
def test_stored_request_is_idempotent_and_keeps_the_hash(req: EstimateRequest) -> None:
    stored = stored_request(req)
    assert stored_request(stored) == stored
    assert request_hash(stored) == request_hash(req)
