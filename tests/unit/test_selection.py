"""Model selection (docs/pricing-rules.md §6): §6.1 check table, explicit models, effective brand, [SEL-5]."""

from __future__ import annotations

import pytest

from kis_estimator.server.engine.catalog import Catalog, load_catalog
from kis_estimator.server.engine.selection import Gap, LineRequest, effective_brand, select_line, select_lines


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def _line(
    brand: str,
    kind: str,
    poles: int,
    trip_at: int,
    *,
    hs: bool = False,
    frame_af: int | None = None,
    model: str | None = None,
) -> LineRequest:
    return LineRequest("branches[0]", brand, kind, poles, trip_at, 1, hs, frame_af, model)


# (id, line, ECONOMIC (model, price) or None = gap, STANDARD likewise): §6.1 check table.
CHECK_TABLE = [
    ("SANGDO MCCB 2P 20", _line("SANGDO", "MCCB", 2, 20), ("SIB-32", 3300), ("SIB-32", 3300)),
    ("SANGDO ELB 2P 40", _line("SANGDO", "ELB", 2, 40), ("SEC-52", 9400), ("SEC-52", 9400)),
    ("SANGDO MCCB 3P 40", _line("SANGDO", "MCCB", 3, 40), ("SBS-53", 15600), ("SBS-53", 15600)),
    ("SANGDO MCCB 3P 100", _line("SANGDO", "MCCB", 3, 100), ("SBE-103", 17500), ("SBS-103", 27000)),
    ("SANGDO ELB 3P 125", _line("SANGDO", "ELB", 3, 125), ("SES-103", 64400), ("SES-103", 64400)),
    ("SANGDO ELB 2P 60", _line("SANGDO", "ELB", 2, 60), ("SEE-102", 32000), None),
    ("SANGDO MCCB 4P 150", _line("SANGDO", "MCCB", 4, 150), ("SBS-204", 53000), ("SBS-204", 53000)),
    ("SANGDO MCCB 3P 25", _line("SANGDO", "MCCB", 3, 25), None, None),
    ("LS MCCB 4P 50", _line("LS", "MCCB", 4, 50), ("ABN-54", 37290), ("ABS-54", 42240)),
    ("LS ELB 4P 30", _line("LS", "ELB", 4, 30), ("EBS-54", 87340), ("EBS-54", 87340)),
    ("LS ELB 2P 20 15mA", _line("LS", "ELB", 2, 20, hs=True), ("32GRHS", 10300), ("32GRHS", 10300)),
    ("LS MCCB 4P 100", _line("LS", "MCCB", 4, 100), ("ABN-104", 54300), ("ABS-104", 87300)),
    ("LS MCCB 3P 250", _line("LS", "MCCB", 3, 250), ("ABN-203", 132000), ("ABS-203", 151800)),
]


@pytest.mark.parametrize(
    ("line", "economic", "standard"), [row[1:] for row in CHECK_TABLE], ids=[row[0] for row in CHECK_TABLE]
)
@pytest.mark.parametrize("form", ["ECONOMIC", "STANDARD"])
def test_auto_selection_matches_the_check_table(
    catalog: Catalog,
    line: LineRequest,
    economic: tuple[str, int] | None,
    standard: tuple[str, int] | None,
    form: str,
) -> None:
    expected = economic if form == "ECONOMIC" else standard
    choice = select_line(line, form, catalog)
    if expected is None:
        assert (choice.row, choice.unit_price_krw, choice.gap) == (None, None, Gap.NO_MODEL)
    else:
        assert choice.row is not None
        assert (choice.row.model, choice.unit_price_krw, choice.gap) == (*expected, None)
        assert choice.row.high_sensitivity == line.high_sensitivity


def test_high_sensitivity_selection_uses_the_15ma_twin_row(catalog: Catalog) -> None:
    choice = select_line(_line("SANGDO", "ELB", 2, 20, hs=True), "ECONOMIC", catalog)
    assert choice.row is not None
    assert (choice.row.model, choice.row.high_sensitivity) == ("SIE-32", True)


def test_frame_filter_restricts_candidates(catalog: Catalog) -> None:
    choice = select_line(_line("SANGDO", "MCCB", 2, 20, frame_af=50), "ECONOMIC", catalog)
    assert choice.row is not None
    assert (choice.row.model, choice.unit_price_krw) == ("SBC-52", 6700)


def test_compact_models_are_never_auto_selected_for_3p(catalog: Catalog) -> None:
    choice = select_line(_line("SANGDO", "MCCB", 3, 40, frame_af=50), "ECONOMIC", catalog)
    assert choice.row is not None
    assert choice.row.model == "SBS-53"  # SBC-53 (compact, 10,500) is cheaper but excluded
    assert choice.trace["candidates"] and all(not c["compact"] for c in choice.trace["candidates"])


SEL5 = [
    ("SBS-204", 225, 53000),
    ("SBS-204", 250, 78000),
    ("SBS-103", 100, 27000),
    ("SBS-103", 125, 35000),
    ("SBS-104", 100, 32000),
    ("SBS-104", 125, 49000),
    ("ABS-102", 100, 39930),
    ("ABS-102", 125, 49000),
    ("ABS-103", 75, 39930),
    ("ABS-103", 125, 62700),
    ("ABN-203", 225, 128700),
    ("ABN-203", 250, 132000),
    ("ABN-104", 100, 54300),
]


@pytest.mark.parametrize(("model", "trip_at", "price"), SEL5, ids=[f"{m}@{a}" for m, a, _ in SEL5])
def test_explicit_model_uses_the_two_price_rule(
    catalog: Catalog, model: str, trip_at: int, price: int
) -> None:
    row = catalog.breaker(model, False)
    assert row is not None
    line = _line(row.brand, row.kind, row.poles, trip_at, model=model)
    choice = select_line(line, "ECONOMIC", catalog)
    assert (choice.unit_price_krw, choice.gap) == (price, None)
    assert [r.rule_id for r in choice.rules] == ["SEL-4", "SEL-5"]


def test_explicit_model_is_found_by_its_normalised_spelling(catalog: Catalog) -> None:
    choice = select_line(_line("SANGDO", "MCCB", 3, 600, model="sbs 603"), "STANDARD", catalog)
    assert choice.row is not None
    assert (choice.row.model, choice.unit_price_krw, choice.grade_differs) == ("SBS-603", 290000, False)


def test_explicit_model_not_in_catalog_is_a_knowledge_gap(catalog: Catalog) -> None:
    choice = select_line(_line("SANGDO", "MCCB", 4, 250, model="SBS-254"), "ECONOMIC", catalog)
    assert (choice.row, choice.unit_price_krw, choice.gap) == (None, None, Gap.MODEL_NOT_IN_CATALOG)


def test_explicit_model_without_the_15ma_twin_is_a_knowledge_gap(catalog: Catalog) -> None:
    choice = select_line(_line("SANGDO", "ELB", 2, 20, hs=True, model="SEC-52"), "ECONOMIC", catalog)
    assert choice.gap is Gap.MODEL_NOT_IN_CATALOG


def test_eco_model_on_a_standard_estimate_is_flagged(catalog: Catalog) -> None:
    choice = select_line(_line("LS", "MCCB", 3, 100, model="ABN-103"), "STANDARD", catalog)
    assert choice.row is not None
    assert (choice.row.model, choice.grade_differs) == ("ABN-103", True)
    economic = select_line(_line("LS", "MCCB", 3, 100, model="ABN-103"), "ECONOMIC", catalog)
    assert economic.grade_differs is False


def test_unknown_brand_under_mixed_is_a_knowledge_gap(catalog: Catalog) -> None:
    line = LineRequest("spd_mccb", None, "MCCB", 4, 40, 1, False)
    assert select_line(line, "ECONOMIC", catalog).gap is Gap.NO_MODEL


@pytest.mark.parametrize(
    ("estimate_brand", "line_brand", "model", "expected"),
    [
        ("SANGDO", None, None, "SANGDO"),
        ("LS", "LS", "ABN-103", "LS"),
        ("MIXED", None, "ABN-103", "LS"),
        ("MIXED", None, "SBS-254", "SANGDO"),
        ("MIXED", None, "BS-99", "LS"),
        ("MIXED", None, "XYZ-1", None),
        ("MIXED", "SANGDO", None, "SANGDO"),
    ],
    ids=[
        "single",
        "single-with-line",
        "mixed-catalog",
        "mixed-prefix",
        "mixed-bs",
        "mixed-unknown",
        "mixed-line",
    ],
)
def test_effective_brand_follows_section_6_3(
    catalog: Catalog, estimate_brand: str, line_brand: str | None, model: str | None, expected: str | None
) -> None:
    assert effective_brand(estimate_brand, line_brand, model, catalog) == expected


def test_repeated_lines_share_one_selection_but_keep_their_paths(catalog: Catalog) -> None:
    lines = [LineRequest(f"branches[{i}]", "SANGDO", "MCCB", 3, 100, i + 1, False) for i in range(3)]
    choices = select_lines(lines, "ECONOMIC", catalog)
    assert [c.line.path for c in choices] == ["branches[0]", "branches[1]", "branches[2]"]
    assert [c.line.qty for c in choices] == [1, 2, 3]
    assert {r.applied_to for c in choices for r in c.rules} == {"branches[0]", "branches[1]", "branches[2]"}
    assert all(c.row is not None and c.row.model == "SBE-103" for c in choices)


def test_catalog_indexes_hold_exactly_the_rows_of_a_full_scan_in_catalog_order(catalog: Catalog) -> None:
    keys = {(r.brand, r.kind, r.poles, r.high_sensitivity) for r in catalog.breakers}
    for brand, kind, poles, hs in keys | {("LS", "MCCB", 5, False), ("", "ELB", 2, True)}:
        scanned = tuple(
            r
            for r in catalog.breakers
            if r.brand == brand and r.kind == kind and r.poles == poles and r.high_sensitivity == hs
        )
        assert catalog.breakers_for(brand, kind, poles, hs) == scanned
    for series in {e.series for e in catalog.enclosures} | {"NONE"}:
        assert catalog.enclosures_of(series) == tuple(e for e in catalog.enclosures if e.series == series)
    for file, rows in (
        ("breakers.csv", catalog.breakers),
        ("enclosures.csv", catalog.enclosures),
        ("accessories.csv", tuple(catalog.accessories.values())),
    ):
        assert all(catalog.raw_row(file, r.line) is r.raw for r in rows)
        assert catalog.raw_row(file, 1) is None  # the header line holds no row
