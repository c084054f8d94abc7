"""Pricing pipeline (docs/pricing-rules.md §9–§11, §14, §17, §18) through ``price_estimate``.

The regression rows are read from ``server/acceptance/cases/*.json`` (plain ``json.load`` of the
request and ``expect``), so the acceptance data and these tests cannot drift apart.
"""

from __future__ import annotations

import json
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kis_estimator.server.engine.catalog import Catalog, load_catalog
from kis_estimator.server.engine.estimate import price_estimate
from kis_estimator.server.engine.model import (
    CatalogRowRef,
    Decision,
    PhaseBalance,
    Quote,
    Resolution,
    Status,
    Totals,
)
from kis_estimator.server.engine.phase_balance import _half_up_2_of_ratio, half_up_2, phase_balance
from kis_estimator.server.engine.pricing import busbar_kg, half_up_100, steps, vat_krw
from kis_estimator.server.engine.request import request_from_dict

CASES_DIR = Path(__file__).resolve().parents[2] / "server" / "acceptance" / "cases"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def _case(case_id: str) -> dict[str, Any]:
    with (CASES_DIR / f"{case_id}.json").open(encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def _price(request: dict[str, Any], catalog: Catalog, **kw: Any) -> Quote:
    return price_estimate(request_from_dict(request), catalog, **kw)


EXAMPLE_1: dict[str, Any] = {
    "request_id": "c0ffee01",
    "brand": "SANGDO",
    "form": "ECONOMIC",
    "installation": {"location": "INDOOR", "mount": "FLUSH"},
    "main": {"kind": "MCCB", "poles": 4, "trip_at": 150},
    "branches": [
        {"kind": "MCCB", "poles": 4, "trip_at": 50, "qty": 4},
        {"kind": "ELB", "poles": 4, "trip_at": 30, "qty": 4},
        {"kind": "ELB", "poles": 2, "trip_at": 20, "qty": 10},
    ],
    "accessories": {"enabled": False},
}
EXAMPLE_2: dict[str, Any] = {
    **EXAMPLE_1,
    "main": {"kind": "MCCB", "poles": 4, "trip_at": 100},
    "branches": [{"kind": "ELB", "poles": 2, "trip_at": 20, "qty": 12}],
}

# (no, section, name, spec, unit, qty, qty_kg, unit price, amount, rule_id)
LineRow = tuple[int, str, str, str, str, int | None, Decimal | None, int | None, int | None, str]


def _rows(quote: Quote) -> list[LineRow]:
    return [
        (
            line.no,
            line.section,
            line.name,
            line.spec,
            line.unit,
            line.qty,
            line.qty_kg,
            line.unit_price_krw,
            line.amount_krw,
            line.rule_id,
        )
        for line in quote.lines
    ]


def test_worked_example_1_prices_every_line(catalog: Catalog) -> None:
    quote = _price(EXAMPLE_1, catalog)
    assert _rows(quote) == [
        (
            1,
            "ENCLOSURE",
            "외함",
            "옥내매입 STEEL 1.6T, (HDS 70 150 20), 700x1500x200",
            "면",
            1,
            None,
            225000,
            225000,
            "PRC-1",
        ),
        (2, "MAIN_BREAKER", "MCCB", "4P 150A (SBS-204)", "EA", 1, None, 53000, 53000, "PRC-3"),
        (3, "BRANCH_BREAKERS", "MCCB", "4P 50A (SBS-54)", "EA", 4, None, 18000, 72000, "PRC-5"),
        (4, "BRANCH_BREAKERS", "ELB", "4P 30A (SES-54)", "EA", 4, None, 33400, 133600, "PRC-5"),
        (5, "BRANCH_BREAKERS", "ELB", "2P 20A (SIE-32)", "EA", 10, None, 3800, 38000, "PRC-5"),
        (6, "BUSBAR", "MAIN BUS-BAR", "5T*20", "KG", None, Decimal("7.35"), 20000, 147000, "PRC-16"),
        (7, "BUSBAR", "BUS-BAR", "5T*20", "KG", None, Decimal("4.73"), 20000, 94600, "PRC-17"),
        (8, "SUPPORTS", "E.T", "", "EA", 2, None, 4500, 9000, "PRC-18"),
        (9, "SUPPORTS", "N.T", "", "EA", 1, None, 3000, 3000, "PRC-19"),
        (10, "SUPPORTS", "N.P", "3T*40*200", "EA", 1, None, 4000, 4000, "PRC-20"),
        (11, "SUPPORTS", "N.P CARD HOLDER", "", "EA", 18, None, 800, 14400, "PRC-21"),
        (12, "SUPPORTS", "INSULATOR", "EPOXY 40*40", "EA", 4, None, 1100, 4400, "PRC-22"),
        (13, "SUPPORTS", "ELB지지대", "", "EA", 10, None, 500, 5000, "PRC-23"),
        (14, "SUPPORTS", "COATING", "PVC", "EA", 1, None, 5000, 5000, "PRC-24"),
        (15, "SUPPORTS", "P-COVER", "아크릴", "EA", 1, None, 32000, 32000, "PRC-25"),
        (16, "COSTS", "잡자재비", "", "식", 1, None, 16000, 16000, "PRC-26"),
        (17, "COSTS", "ASSEMBLY CHARGE", "", "식", 1, None, 175000, 175000, "PRC-27"),
    ]
    assert quote.totals == Totals(1031000, 103100, 1134100, 1031000)
    assert quote.phase_balance == PhaseBalance(
        True, Decimal("176.67"), Decimal("176.67"), Decimal("166.67"), Decimal("5.77")
    )
    assert [(w.code, w.path, w.message_en) for w in quote.warnings] == [
        ("PHASE_IMBALANCE", "phase_balance", "Phase imbalance 5.77 % exceeds 4.0 %.")
    ]
    assert (quote.status, quote.decision, quote.review_reasons) == (Status.COMPLETED, Decision.OK, ())
    assert (quote.sizing.width_mm, quote.sizing.height_mm, quote.sizing.depth_mm) == (600, 1500, 150)
    assert (quote.enclosure.model, quote.enclosure.width_mm, quote.enclosure.height_mm) == (
        "HDS 70 150 20",
        700,
        1500,
    )


def test_worked_example_2_prices_every_line(catalog: Catalog) -> None:
    quote = _price(EXAMPLE_2, catalog)
    assert _rows(quote) == [
        (
            1,
            "ENCLOSURE",
            "외함",
            "옥내매입 STEEL 1.6T, (HS 60 90 15), 600x900x150",
            "면",
            1,
            None,
            70000,
            70000,
            "PRC-1",
        ),
        (2, "MAIN_BREAKER", "MCCB", "4P 100A (SBE-104)", "EA", 1, None, 20000, 20000, "PRC-3"),
        (3, "BRANCH_BREAKERS", "ELB", "2P 20A (SIE-32)", "EA", 12, None, 3800, 45600, "PRC-5"),
        (4, "BUSBAR", "MAIN BUS-BAR", "3T*15", "KG", None, Decimal("3.78"), 20000, 75600, "PRC-16"),
        (5, "BUSBAR", "BUS-BAR", "3T*15", "KG", None, Decimal("2.43"), 20000, 48600, "PRC-17"),
        (6, "SUPPORTS", "E.T", "", "EA", 1, None, 4500, 4500, "PRC-18"),
        (7, "SUPPORTS", "N.T", "", "EA", 1, None, 3000, 3000, "PRC-19"),
        (8, "SUPPORTS", "N.P", "3T*40*200", "EA", 1, None, 4000, 4000, "PRC-20"),
        (9, "SUPPORTS", "N.P CARD HOLDER", "", "EA", 12, None, 800, 9600, "PRC-21"),
        (10, "SUPPORTS", "INSULATOR", "EPOXY 40*40", "EA", 4, None, 1100, 4400, "PRC-22"),
        (11, "SUPPORTS", "ELB지지대", "", "EA", 12, None, 500, 6000, "PRC-23"),
        (12, "SUPPORTS", "COATING", "PVC", "EA", 1, None, 5000, 5000, "PRC-24"),
        (13, "SUPPORTS", "P-COVER", "아크릴", "EA", 1, None, 18000, 18000, "PRC-25"),
        (14, "COSTS", "잡자재비", "", "식", 1, None, 9000, 9000, "PRC-26"),
        (15, "COSTS", "ASSEMBLY CHARGE", "", "식", 1, None, 90000, 90000, "PRC-27"),
    ]
    assert quote.totals == Totals(413300, 41330, 454630, 413300)
    assert quote.phase_balance == PhaseBalance(
        True, Decimal("80.00"), Decimal("80.00"), Decimal("80.00"), Decimal("0.00")
    )
    assert quote.warnings == ()


# ---------------------------------------------------------------- regression (§17, §18)


def _matches(obj: object, expected: dict[str, Any]) -> bool:
    for key, value in expected.items():
        got = getattr(obj, key)
        if isinstance(got, Decimal):
            got = str(got)
        if got != value:
            return False
    return True


def _check(quote: Quote, expect: dict[str, Any]) -> None:
    """Compare a quote with a case's ``expect`` as server/acceptance/README.md defines it."""
    assert quote.status == expect["status"]
    assert quote.decision == expect["decision"]
    if "size_mm" in expect:
        assert [quote.sizing.width_mm, quote.sizing.height_mm, quote.sizing.depth_mm] == expect["size_mm"]
    for key, value in expect.get("enclosure", {}).items():
        assert getattr(quote.enclosure, key) == value, key
    for key, value in expect.get("totals", {}).items():
        assert getattr(quote.totals, key) == value, key
    if "review_reasons" in expect:
        assert [{"code": r.code, "path": r.path} for r in quote.review_reasons] == expect["review_reasons"]
    for warning in expect.get("warnings", []):
        assert any(_matches(w, warning) for w in quote.warnings), warning
    for key, value in expect.get("phase_balance", {}).items():
        got = getattr(quote.phase_balance, key)
        assert (str(got) if isinstance(got, Decimal) else got) == value, key
    for line in expect.get("lines", []):
        assert any(_matches(q, line) for q in quote.lines), line
    for selection in expect.get("selections", []):
        assert any(_matches(s, selection) for s in quote.selections), selection


REGRESSION = [f"S{i:02d}" for i in range(1, 21)] + ["M31", "M32", "X19", "X20"]


@pytest.mark.parametrize("case_id", REGRESSION)
def test_regression_case_prices_as_the_spec_says(catalog: Catalog, case_id: str) -> None:
    (step,) = _case(case_id)["steps"]
    assert step["rpc"] == "CreateEstimate"
    assert step["expect"]["code"] == "OK"
    _check(_price(step["request"], catalog), step["expect"])


def test_x21_review_of_s19_completes_with_the_answer(catalog: Catalog) -> None:
    create, review, again = _case("X21")["steps"]
    assert create["request"] == {**_case("S19")["steps"][0]["request"], "request_id": "{run}X21"}
    first = _price(create["request"], catalog)
    _check(first, create["expect"])
    answers = {
        r["reason_id"]: Resolution(r["reason_id"], r["unit_price_krw"], r.get("model"))
        for r in review["request"]["resolutions"]
    }
    reviewed = _price(create["request"], catalog, resolutions=answers)
    _check(reviewed, review["expect"])
    assert reviewed.sizing == first.sizing
    assert reviewed.enclosure == first.enclosure
    (reason,) = reviewed.review_reasons
    assert reason.resolution == Resolution("R1", 15600, "SBS-53")
    (line,) = [line for line in reviewed.lines if line.reason_id == "R1"]
    assert (line.spec, line.qty, line.unit_price_krw, line.amount_krw) == ("3P 25A (SBS-53)", 1, 15600, 15600)
    assert again["expect"]["violations"] == [{"code": "ESTIMATE_NOT_REVIEWABLE", "field": "estimate_id"}]


def test_needs_review_lines_carry_null_prices_and_the_reason_id(catalog: Catalog) -> None:
    quote = _price(_case("S19")["steps"][0]["request"], catalog)
    (reason,) = quote.review_reasons
    assert reason.reason_id == "R1"
    assert reason.question_en == (
        "No catalog model (catalog fa2a6102) for SANGDO MCCB 3P 25 A, form ECONOMIC. "
        "Which model should be used and what is its quote price in KRW?"
    )
    assert reason.question_ko == (
        "카탈로그(fa2a6102)에 SANGDO MCCB 3P 25A ECONOMIC 모델이 없습니다. "
        "사용할 모델명과 견적 단가(원)를 알려 주세요."
    )
    (line,) = [line for line in quote.lines if line.reason_id is not None]
    assert (line.spec, line.unit_price_krw, line.amount_krw, line.reason_id) == ("3P 25A", None, None, "R1")
    selection = quote.selections[2]
    assert (selection.path, selection.model, selection.unit_price_krw, selection.reason_id) == (
        "branches[1]",
        None,
        None,
        "R1",
    )


def test_custom_enclosure_without_price_asks_for_the_fabrication_price(catalog: Catalog) -> None:
    quote = _price(_case("S08")["steps"][0]["request"], catalog)
    (reason,) = quote.review_reasons
    assert reason.question_en == (
        "No stock enclosure fits 800×1500×400 mm (SUS201_1_2, OUTDOOR) or a custom box was requested. "
        "What is the fabrication price in KRW?"
    )
    assert reason.question_ko.startswith("800×1500×400mm(SUS201 1.2T, 옥외)에 맞는 기성함이")
    assert quote.lines[0].spec == "옥외노출 SUS201 1.2T, (제작함), 800x1500x400"
    assert (quote.lines[0].unit_price_krw, quote.lines[0].reason_id) == (None, "R1")
    reviewed = _price(
        _case("S08")["steps"][0]["request"], catalog, resolutions={"R1": Resolution("R1", 500000)}
    )
    assert reviewed.status is Status.REVIEWED
    assert reviewed.totals.subtotal_krw == 1633800 + 500000
    assert reviewed.enclosure.unit_price_krw == 500000


def test_explicit_model_gap_asks_about_the_model(catalog: Catalog) -> None:
    quote = _price(_case("X19")["steps"][0]["request"], catalog)
    (reason,) = quote.review_reasons
    assert (reason.path, reason.question_en) == (
        "main.model",
        "Model SBS-254 is not in catalog fa2a6102. "
        "Please give its brand, kind, poles, frame, trip ratings and quote price.",
    )
    assert quote.lines[1].spec == "4P 250A (SBS-254)"


def test_s18_spd_magnet_timer_and_pbl_lines(catalog: Catalog) -> None:
    quote = _price(_case("S18")["steps"][0]["request"], catalog)
    by_rule = {line.rule_id: line for line in quote.lines if line.rule_id != "PRC-5"}
    assert (by_rule["PRC-4"].spec, by_rule["PRC-4"].unit_price_krw) == ("4P 40A (SBS-54) (SPD용)", 18000)
    assert by_rule["PRC-4"].section == "MAIN_BREAKER"
    assert (by_rule["PRC-14"].spec, by_rule["PRC-14"].qty) == ("ON/OFF/SS", 3)
    assert (by_rule["PRC-11"].qty, by_rule["PRC-12"].qty, by_rule["PRC-9"].qty) == (4, 2, 1)
    assert (by_rule["PRC-28"].spec, by_rule["PRC-28"].amount_krw) == ("MC x2", 40000)
    assert by_rule["PRC-26"].unit_price_krw == 42000
    # the SPD MCCB is not a branch unit: N = 8 card holders
    assert by_rule["PRC-21"].qty == 8
    rule_order = [line.rule_id for line in quote.lines]
    assert rule_order == sorted(rule_order, key=lambda r: int(r.split("-")[1]))


def test_s13_two_pole_main_has_no_phase_balance(catalog: Catalog) -> None:
    quote = _price(_case("S13")["steps"][0]["request"], catalog)
    assert quote.phase_balance == PhaseBalance(applicable=False)
    assert [w.code for w in quote.warnings] == []


# ---------------------------------------------------------------- rules, trace, rows, warnings


def test_rules_are_sorted_and_cover_every_stage(catalog: Catalog) -> None:
    quote = _price(EXAMPLE_1, catalog)
    keys = [(r.rule_id, r.applied_to) for r in quote.rules]
    assert keys == sorted(keys)
    ids = {r.rule_id for r in quote.rules}
    assert {
        "GATE-1",
        "GATE-2",
        "GATE-3",
        "SEL-1",
        "SEL-2",
        "SEL-3",
        "SEL-5",
        "TOT-1",
        "PHB-1",
        "DUP-1",
    } <= ids
    assert {"SIZ-F", "SIZ-A", "SIZ-B", "SIZ-C", "SIZ-D", "SIZ-E", "SIZ-H", "SIZ-W", "SIZ-DEPTH"} <= ids
    assert {"STK-1", "STK-2"} <= ids
    assert {f"PRC-{line.rule_id[4:]}" for line in quote.lines} <= ids
    assert "MIX-1" not in ids
    assert any(r.rule_id == "SIZ-A" and r.why == "F(150)=200 → A=360" for r in quote.rules)


def test_trace_is_json_ready_and_ordered(catalog: Catalog) -> None:
    quote = _price(_case("S18")["steps"][0]["request"], catalog)
    text = json.dumps(quote.trace, ensure_ascii=False, sort_keys=True)  # no float/Decimal allowed
    assert '"qty": "2.43"' in text  # busbar kg as a fixed-decimal string
    steps_ = [step["step"] for step in quote.trace["steps"]]
    assert steps_ == ["normalise", "select", "size", "stock", "price", "totals", "phase_balance"]

    def walk(node: object) -> None:
        assert not isinstance(node, float | Decimal)
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(quote.trace)


def test_catalog_rows_list_breakers_enclosure_and_priced_accessories(catalog: Catalog) -> None:
    quote = _price(EXAMPLE_2, catalog)
    sbe104 = catalog.breaker("SBE-104", False)
    sie32 = catalog.breaker("SIE-32", False)
    assert sbe104 is not None and sie32 is not None
    enclosure_line = next(row.line for row in catalog.enclosures if row.model == "HS 60 90 15")
    codes = [
        "et_250af",
        "nt",
        "np_3t_40_200",
        "np_card_holder",
        "insulator_250af",
        "elb_support",
        "coating_250af",
        "p_cover_acrylic_100af",
        "busbar_main",
        "busbar_branch",
    ]
    expected = {CatalogRowRef("accessories.csv", catalog.accessory(code).line) for code in codes}
    expected |= {CatalogRowRef("breakers.csv", sbe104.line), CatalogRowRef("breakers.csv", sie32.line)}
    expected.add(CatalogRowRef("enclosures.csv", enclosure_line))
    assert quote.catalog_rows == tuple(sorted(expected, key=lambda r: (r.file, r.line)))


def test_mixed_reason_on_a_single_brand_estimate_is_ignored_with_a_warning(catalog: Catalog) -> None:
    request = {**EXAMPLE_2, "mixed_reason": "because"}
    quote = _price(request, catalog)
    assert [(w.code, w.path) for w in quote.warnings] == [("MIXED_REASON_IGNORED", "mixed_reason")]


def test_eco_model_on_standard_form_warns_in_line_order(catalog: Catalog) -> None:
    request = {
        **EXAMPLE_1,
        "brand": "LS",
        "form": "STANDARD",
        "mixed_reason": "x",
        "main": {"kind": "MCCB", "poles": 4, "trip_at": 150, "model": "ABN-204"},
        "branches": [{"kind": "MCCB", "poles": 3, "trip_at": 100, "qty": 2, "model": "ABN-103"}],
    }
    quote = _price(request, catalog)
    assert [(w.code, w.path) for w in quote.warnings] == [
        ("MIXED_REASON_IGNORED", "mixed_reason"),
        ("MODEL_GRADE_DIFFERS_FROM_FORM", "main.model"),
        ("MODEL_GRADE_DIFFERS_FROM_FORM", "branches[0].model"),
    ]
    assert quote.status is Status.COMPLETED


def test_mixed_estimate_records_mix_rule(catalog: Catalog) -> None:
    quote = _price(_case("M31")["steps"][0]["request"], catalog)
    (mix,) = [r for r in quote.rules if r.rule_id == "MIX-1"]
    assert mix.applied_to == "brand"
    assert "Customer supplies" in mix.why


def test_review_reasons_are_numbered_main_spd_branches_enclosure(catalog: Catalog) -> None:
    request = {
        "brand": "MIXED",
        "mixed_reason": "test",
        "installation": {"location": "OUTDOOR", "mount": "SURFACE"},
        "enclosure": {"kind": "CUSTOM"},
        "main": {"kind": "MCCB", "poles": 4, "trip_at": 100, "model": "XYZ-104"},
        "branches": [
            {"kind": "MCCB", "poles": 3, "trip_at": 25, "qty": 1, "brand": "SANGDO"},
            {"kind": "MCCB", "poles": 3, "trip_at": 50, "qty": 1, "brand": "LS"},
            {"kind": "ELB", "poles": 2, "trip_at": 15, "qty": 2, "brand": "SANGDO"},
        ],
        "accessories": {"enabled": True, "items": [{"code": "spd_4p_40ka", "qty": 1}]},
    }
    quote = _price(request, catalog)
    assert [(r.reason_id, r.code, r.path) for r in quote.review_reasons] == [
        ("R1", "NEED_KNOWLEDGE_UPDATE", "main.model"),
        ("R2", "NEED_KNOWLEDGE_UPDATE", "spd_mccb"),
        ("R3", "NEED_KNOWLEDGE_UPDATE", "branches[0]"),
        ("R4", "NEED_KNOWLEDGE_UPDATE", "branches[2]"),
        ("R5", "CUSTOM_ENCLOSURE_PRICE", "enclosure"),
    ]
    assert "unknown brand MCCB 4P 40 A" in quote.review_reasons[1].question_en
    assert (quote.status, quote.decision) == (Status.NEEDS_REVIEW, Decision.ABSTAIN)
    assert quote.totals.total_krw is None
    partial = {r.reason_id: Resolution(r.reason_id, 1000, "M") for r in quote.review_reasons[:4]}
    still_open = _price(request, catalog, resolutions=partial)
    assert still_open.status is Status.NEEDS_REVIEW
    assert [line.no for line in still_open.lines if line.amount_krw is None] == [1]


def test_resolved_small_2p_model_counts_for_support_and_assembly(catalog: Catalog) -> None:
    request = {
        "brand": "SANGDO",
        "installation": {"location": "INDOOR", "mount": "FLUSH"},
        "main": {"kind": "ELB", "poles": 3, "trip_at": 100},
        "branches": [{"kind": "ELB", "poles": 2, "trip_at": 15, "qty": 3}],
        "accessories": {"enabled": False},
    }
    before = _price(request, catalog)
    assert "PRC-23" not in [line.rule_id for line in before.lines]
    after = _price(request, catalog, resolutions={"R1": Resolution("R1", 4000, "sie 32")})
    support = [line for line in after.lines if line.rule_id == "PRC-23"]
    assert [(line.qty, line.amount_krw) for line in support] == [(3, 1500)]
    (assembly,) = [line for line in after.lines if line.rule_id == "PRC-27"]
    assert assembly.unit_price_krw is not None and before.lines[-1].unit_price_krw is not None
    assert assembly.unit_price_krw == before.lines[-1].unit_price_krw + 10000
    assert after.status is Status.REVIEWED


def test_branch_lines_merge_by_model_hs_and_trip_current(catalog: Catalog) -> None:
    request = {
        "brand": "SANGDO",
        "installation": {"location": "INDOOR", "mount": "FLUSH"},
        "main": {"kind": "MCCB", "poles": 4, "trip_at": 200},
        "branches": [
            {"kind": "ELB", "poles": 2, "trip_at": 20, "qty": 2},
            {"kind": "MCCB", "poles": 3, "trip_at": 50, "qty": 1},
            {"kind": "ELB", "poles": 2, "trip_at": 20, "qty": 3, "sensitivity_ma": 15},
            {"kind": "ELB", "poles": 2, "trip_at": 20, "qty": 4},
            {"kind": "MCCB", "poles": 3, "trip_at": 25, "qty": 1},
            {"kind": "MCCB", "poles": 3, "trip_at": 50, "qty": 2, "model": "SBS-53"},
            {"kind": "ELB", "poles": 3, "trip_at": 50, "qty": 1},
            {"kind": "MCCB", "poles": 3, "trip_at": 25, "qty": 1},
        ],
        "accessories": {"enabled": False},
    }
    quote = _price(request, catalog)
    branch_lines = [(line.spec, line.qty, line.notes) for line in quote.lines if line.rule_id == "PRC-5"]
    assert branch_lines == [
        ("3P 50A (SBS-53)", 3, "branches[1], branches[5]"),
        ("3P 50A (SES-53)", 1, "branches[6]"),
        ("3P 25A", 1, "branches[4]"),
        ("3P 25A", 1, "branches[7]"),
        ("2P 20A (SIE-32)", 6, "branches[0], branches[3]"),
        ("2P 20A (SIE-32) 고감도", 3, "branches[2]"),
    ]


# ---------------------------------------------------------------- arithmetic helpers


@pytest.mark.parametrize(
    ("subtotal", "vat"),
    [(0, 0), (4, 0), (5, 1), (14, 1), (15, 2), (413300, 41330), (1011670 * 10 // 11, 91970)],
)
def test_vat_is_ten_percent_half_up(subtotal: int, vat: int) -> None:
    assert vat_krw(subtotal) == vat


def test_steel_p_cover_and_base_round_half_up_to_100() -> None:
    assert half_up_100(800 * 1200 * 12000, 90000) == 128000
    assert half_up_100(900 * 200 * 32000, 90000) == 64000
    assert half_up_100(600 * 200 * 32000, 90000) == 42700  # 42,666.67
    assert half_up_100(150, 1) == 200  # an exact tie goes up
    assert half_up_100(149, 1) == 100


def test_busbar_kg_is_half_up_to_two_decimals() -> None:
    assert busbar_kg(700, 1500, Decimal("0.0000045")) == Decimal("4.73")  # 4.725
    assert busbar_kg(700, 1500, Decimal("0.000007")) == Decimal("7.35")
    assert str(busbar_kg(600, 900, Decimal("0.000007"))) == "3.78"


def test_steps_counts_started_hundreds_above_the_base() -> None:
    assert [steps(x, 700) for x in (0, 700, 701, 800, 801, 1500)] == [0, 0, 1, 1, 2, 8]


@given(st.integers(min_value=0, max_value=10**9), st.integers(min_value=1, max_value=10**9))
def test_phase_rounding_in_integers_equals_the_exact_rounding(numerator: int, denominator: int) -> None:
    assert _half_up_2_of_ratio(numerator, denominator) == half_up_2(Fraction(numerator, denominator))
    assert str(_half_up_2_of_ratio(numerator, denominator)) == str(
        half_up_2(Fraction(numerator, denominator))
    )


@given(
    st.sampled_from([3, 4]),
    st.lists(
        st.tuples(st.sampled_from([2, 3, 4]), st.integers(min_value=1, max_value=800), st.integers(1, 100)),
        max_size=12,
    ),
)
def test_phase_balance_reports_its_exact_imbalance_rounded_half_up(
    main_poles: int, branches: list[tuple[int, int, int]]
) -> None:
    result = phase_balance(main_poles, branches)
    assert result.exact_pct is not None
    assert result.balance.imbalance_pct == half_up_2(result.exact_pct)
    assert result.exceeds_limit == (result.exact_pct > 4)
    assert result.trace["imbalance_pct"] == str(result.balance.imbalance_pct)
