"""Validation stage P3 (docs/pricing-rules.md §3 V1-V27), its messages (§4) and the acceptance case data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from kis_estimator.server.acceptance.cases import (
    Case,
    Step,
    apply_patch,
    build_request,
    load_base,
    load_cases,
    substitute,
)
from kis_estimator.server.engine.catalog import Catalog, load_catalog
from kis_estimator.server.engine.errors import ErrorCode, Violation
from kis_estimator.server.engine.messages import (
    ECHO_MAX_CHARS,
    TEMPLATES,
    WARNING_CODES,
    echo,
    placeholders,
    violation,
    warning_messages,
)
from kis_estimator.server.engine.model import EstimateRequest
from kis_estimator.server.engine.request import request_from_dict
from kis_estimator.server.engine.validation import (
    MAX_ACCESSORY_ITEMS,
    MAX_BRANCH_LINES,
    ModelIdentity,
    model_identity,
    validate_request,
)

RUN = "t-"
MONTH = "2025-01"

Pair = tuple[str, str]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def _validate(data: Mapping[str, Any], catalog: Catalog) -> list[Pair]:
    return [(v.code.value, v.field) for v in validate_request(request_from_dict(data), catalog)]


def _base(patch: Mapping[str, Any]) -> dict[str, Any]:
    return apply_patch(load_base(), patch)


# --------------------------------------------------------------------------- acceptance case files

CASES = load_cases()
CASE_INDEX = {c.id: c for c in CASES}


def _validation_failure(case: Case) -> Step | None:
    """The step of a case that is one CreateEstimate rejected by P3, else None."""
    if len(case.steps) != 1:
        return None
    step = case.steps[0]
    if step.rpc != "CreateEstimate" or step.expect.get("code") != "INVALID_ARGUMENT":
        return None
    return step


VALIDATION_CASES = [c for c in CASES if _validation_failure(c) is not None]


def test_case_files_cover_the_assigned_ids() -> None:
    ids = set(CASE_INDEX)
    wanted = {f"F{n}" for n in (21, *range(22, 31), *range(33, 41))}
    wanted |= {f"X{n:02d}" for n in (*range(1, 19), 22, 23)}
    assert wanted <= ids


@pytest.mark.parametrize("case", VALIDATION_CASES, ids=[c.id for c in VALIDATION_CASES])
def test_case_file_violations(case: Case, catalog: Catalog) -> None:
    step = _validation_failure(case)
    assert step is not None
    request = substitute(build_request(step, CASE_INDEX), RUN, MONTH)
    expected = [(v["code"], v["field"]) for v in step.expect["violations"]]
    assert _validate(request, catalog) == expected
    if case.id.startswith("F"):
        assert len(expected) == 1  # §17: every validation F case has exactly one violation


ACCEPTED_STEPS = [
    (f"{c.id}-{k}", s)
    for c in CASES
    for k, s in enumerate(c.steps)
    if s.rpc == "CreateEstimate" and s.expect.get("code") != "INVALID_ARGUMENT"
]


@pytest.mark.parametrize("step", [s for _, s in ACCEPTED_STEPS], ids=[i for i, _ in ACCEPTED_STEPS])
def test_requests_rejected_after_p3_pass_validation(step: Step, catalog: Catalog) -> None:
    """F21, F30, X16 fail (or pass) in P2/P4/P5: their requests are valid at P3."""
    assert _validate(substitute(build_request(step, CASE_INDEX), RUN, MONTH), catalog) == []


def test_base_request_is_valid(catalog: Catalog) -> None:
    assert validate_request(request_from_dict(load_base()), catalog) == ()


def test_case_loader_resolves_patches_and_placeholders() -> None:
    f30 = CASE_INDEX["F30"]
    request = build_request(f30.steps[2], CASE_INDEX)
    assert request["request_id"] == "{run}rid-F30"
    assert request["branches"][0]["qty"] == 2
    assert substitute(request, "r9-", MONTH)["request_id"] == "r9-rid-F30"
    assert load_base()["branches"][0]["qty"] == 1  # the patch never mutates the base
    x23 = CASE_INDEX["X23"]
    assert [(s.role, s.anonymous) for s in x23.steps] == [("VIEWER", False), (None, True)]
    assert CASE_INDEX["X16"].requires == ("GrantMixedException",)


# --------------------------------------------------------------------------- focused rows

LONG_MODEL = "S" * 41
MIXED = {"brand": "MIXED", "mixed_reason": "customer asks for LS main"}

ROWS: list[tuple[str, dict[str, Any], list[Pair]]] = [
    # V1
    ("v1_request_id_128_ok", {"request_id": "r" * 128}, []),
    ("v1_request_id_129", {"request_id": "r" * 129}, [("TEXT_TOO_LONG", "request_id")]),
    # V2
    ("v2_brand_case_sensitive", {"brand": "sangdo"}, [("BRAND_NOT_SUPPORTED", "brand")]),
    ("v2_brand_blank_is_absent", {"brand": "   "}, [("FIELD_REQUIRED", "brand")]),
    # V3
    ("v3_form_standard_ok", {"form": "STANDARD"}, []),
    ("v3_form_absent_ok", {"form": None}, []),
    ("v3_form_lower", {"form": "economic"}, [("FORM_INVALID", "form")]),
    # V4
    ("v4_reason_under_sangdo_ok", {"mixed_reason": "not needed"}, []),
    ("v4_reason_too_long_any_brand", {"mixed_reason": "m" * 501}, [("TEXT_TOO_LONG", "mixed_reason")]),
    (
        "v4_mixed_reason_too_long",
        {**MIXED, "mixed_reason": "m" * 501, "main.brand": "LS", "branches.0.brand": "LS"},
        [("TEXT_TOO_LONG", "mixed_reason")],
    ),
    ("v4_no_reason_when_brand_invalid", {"brand": "HYUNDAI"}, [("BRAND_NOT_SUPPORTED", "brand")]),
    # V5 in path order
    (
        "v5_all_header_texts",
        {
            "customer": {"name": "n" * 201, "contact": "c" * 201},
            "project": {"name": "p" * 201, "location": "l" * 201},
        },
        [
            ("TEXT_TOO_LONG", "customer.name"),
            ("TEXT_TOO_LONG", "customer.contact"),
            ("TEXT_TOO_LONG", "project.name"),
            ("TEXT_TOO_LONG", "project.location"),
        ],
    ),
    ("v5_200_chars_ok", {"customer.name": "가" * 200}, []),
    # V6, V7
    ("v6_location_absent", {"installation.location": None}, [("FIELD_REQUIRED", "installation.location")]),
    ("v7_mount_absent", {"installation.mount": None}, [("FIELD_REQUIRED", "installation.mount")]),
    ("v7_mount_lower", {"installation.mount": "flush"}, [("MOUNT_INVALID", "installation.mount")]),
    # V8-V10
    ("v8_kind_custom_ok", {"enclosure.kind": "CUSTOM"}, []),
    ("v9_material_sus_ok", {"enclosure.material": "SUS201_1_2"}, []),
    ("v10_price_max_ok", {"enclosure.custom_price_krw": 100_000_000}, []),
    (
        "v10_price_above_max",
        {"enclosure.custom_price_krw": 100_000_001},
        [("CUSTOM_PRICE_INVALID", "enclosure.custom_price_krw")],
    ),
    (
        "v10_price_negative",
        {"enclosure.custom_price_krw": -5},
        [("CUSTOM_PRICE_INVALID", "enclosure.custom_price_krw")],
    ),
    # V11
    ("v11_dedup_128_ok", {"meta.dedup_key": "k" * 128}, []),
    # V12: main absent, V13-V18 and the main's side of V22/V23 skipped
    ("v12_main_absent", {"main": None}, [("GATE_MISSING", "main")]),
    # V13-V15
    (
        "v13_to_v15_all_absent",
        {"main": {}},
        [("GATE_MISSING", "main.kind"), ("GATE_MISSING", "main.poles"), ("GATE_MISSING", "main.trip_at")],
    ),
    ("v13_elcb_rejected", {"main.kind": "ELCB"}, [("DEVICE_TYPE_INVALID", "main.kind")]),
    ("v14_poles_1_skips_v22", {"main.poles": 1}, [("POLES_MISMATCH", "main.poles")]),
    ("v15_trip_0", {"main.trip_at": 0}, [("AT_NOT_POSITIVE", "main.trip_at")]),
    ("v15_trip_801_skips_v23", {"main.trip_at": 801}, [("AT_OUT_OF_RANGE", "main.trip_at")]),
    ("v15_trip_800_ok", {"main.trip_at": 800}, []),
    # V16-V18
    ("v16_frame_catalog_ok", {"main.frame_af": 125}, []),
    ("v16_frame_not_catalog", {"main.frame_af": 225}, [("FRAME_INVALID", "main.frame_af")]),
    ("v17_line_brand_mixed", {"main.brand": "MIXED"}, [("BRAND_NOT_SUPPORTED", "main.brand")]),
    ("v18_model_41_skips_v25", {"main.model": LONG_MODEL}, [("TEXT_TOO_LONG", "main.model")]),
    # V19
    ("v19_branches_absent", {"branches": None}, [("NO_BRANCHES", "branches")]),
    ("v19_qty_absent_is_gate", {"branches.0.qty": None}, [("GATE_MISSING", "branches[0].qty")]),
    ("v19_qty_100_ok", {"branches.0.qty": 100}, []),
    ("v19_qty_negative", {"branches.0.qty": -1}, [("INVALID_COUNT", "branches[0].qty")]),
    ("v19_remark_201", {"branches.0.remark": "r" * 201}, [("TEXT_TOO_LONG", "branches[0].remark")]),
    (
        "v19_walks_each_line_completely",
        {
            "branches": [
                {
                    "kind": "X",
                    "poles": 7,
                    "trip_at": 0,
                    "qty": 0,
                    "frame_af": 7,
                    "brand": "Y",
                    "model": LONG_MODEL,
                    "remark": "r" * 201,
                },
                {},
                {"kind": "MCCB", "poles": 3, "trip_at": 900, "qty": 101},
            ]
        },
        [
            ("DEVICE_TYPE_INVALID", "branches[0].kind"),
            ("POLES_MISMATCH", "branches[0].poles"),
            ("AT_NOT_POSITIVE", "branches[0].trip_at"),
            ("INVALID_COUNT", "branches[0].qty"),
            ("FRAME_INVALID", "branches[0].frame_af"),
            ("BRAND_NOT_SUPPORTED", "branches[0].brand"),
            ("TEXT_TOO_LONG", "branches[0].model"),
            ("TEXT_TOO_LONG", "branches[0].remark"),
            ("GATE_MISSING", "branches[1].kind"),
            ("GATE_MISSING", "branches[1].poles"),
            ("GATE_MISSING", "branches[1].trip_at"),
            ("GATE_MISSING", "branches[1].qty"),
            ("AT_OUT_OF_RANGE", "branches[2].trip_at"),
            ("BRANCH_QTY_EXCEEDED", "branches[2].qty"),
        ],
    ),
    # V20
    ("v20_accessories_absent", {"accessories": None}, [("GATE_MISSING", "accessories.enabled")]),
    (
        "v20_conflict_still_checks_items_but_not_v27",
        {"accessories.items": [{"code": "timer_24h", "qty": 0}]},
        [("ACCESSORY_CONFLICT", "accessories.items"), ("INVALID_COUNT", "accessories.items[0].qty")],
    ),
    # V21: code then qty per item
    (
        "v21_code_then_qty_per_item",
        {
            "accessories": {
                "enabled": True,
                "items": [
                    {"qty": None},
                    {"code": "busbar_main", "qty": 0},
                    {"code": "shunt_trip", "qty": 101},
                    {"code": "shunt_trip", "qty": 1},
                    {"code": "spd_4p_40ka", "qty": 1},
                ],
            }
        },
        [
            ("FIELD_REQUIRED", "accessories.items[0].code"),
            ("FIELD_REQUIRED", "accessories.items[0].qty"),
            ("ACCESSORY_INVALID", "accessories.items[1].code"),
            ("INVALID_COUNT", "accessories.items[1].qty"),
            ("ACCESSORY_QTY_EXCEEDED", "accessories.items[2].qty"),
            ("ACCESSORY_DUPLICATE", "accessories.items[3].code"),
        ],
    ),
    (
        "v21_all_requestable_ok",
        {
            "accessories": {
                "enabled": True,
                "items": [
                    {"code": c, "qty": 1}
                    for c in (
                        "shunt_trip",
                        "alarm_switch",
                        "ammeter",
                        "voltmeter",
                        "emergency_stop",
                        "indicator_lamp",
                        "spd_4p_40ka",
                        "magnet_mc22",
                        "timer_24h",
                        "pbl_onoff",
                    )
                ],
            }
        },
        [],
    ),
    # V22
    ("v22_3p_main_4p_branch", {"branches.0.poles": 4}, [("POLE_TOPOLOGY_MISMATCH", "branches[0].poles")]),
    ("v22_4p_main_2p_branch_ok", {"main.poles": 4, "branches.0.poles": 2}, []),
    ("v22_2p_main_2p_branch_ok", {"main.poles": 2, "branches.0.poles": 2}, []),
    (
        "v22_skipped_when_main_poles_invalid",
        {"main.poles": 5, "branches.0.poles": 4},
        [("POLES_MISMATCH", "main.poles")],
    ),
    # V23
    ("v23_equal_allowed", {"main.trip_at": 225, "branches.0.trip_at": 225}, []),
    (
        "v23_skipped_when_branch_trip_invalid",
        {"branches.0.trip_at": 900},
        [("AT_OUT_OF_RANGE", "branches[0].trip_at")],
    ),
    (
        "v22_v23_other_sub_checks_still_run",
        {"main.trip_at": 0, "branches.0.poles": 4},
        [("AT_NOT_POSITIVE", "main.trip_at"), ("POLE_TOPOLOGY_MISMATCH", "branches[0].poles")],
    ),
    # V24: all three sub-cases, main then branches
    (
        "v24_not_15_or_30",
        {"main.kind": "ELB", "main.sensitivity_ma": 20},
        [("SENSITIVITY_INVALID", "main.sensitivity_ma")],
    ),
    ("v24_on_mccb", {"main.sensitivity_ma": 30}, [("SENSITIVITY_INVALID", "main.sensitivity_ma")]),
    (
        "v24_15_needs_2p_and_at_30",
        {
            "main.kind": "ELB",
            "main.poles": 2,
            "main.trip_at": 40,
            "main.sensitivity_ma": 15,
            "branches": [{"kind": "ELB", "poles": 2, "trip_at": 40, "qty": 1, "sensitivity_ma": 15}],
        },
        [
            ("SENSITIVITY_INVALID", "main.sensitivity_ma"),
            ("SENSITIVITY_INVALID", "branches[0].sensitivity_ma"),
        ],
    ),
    (
        "v24_15_on_2p_30a_elb_ok",
        {"branches.0": {"kind": "ELB", "poles": 2, "trip_at": 30, "qty": 7, "sensitivity_ma": 15}},
        [],
    ),
    ("v24_30_on_3p_elb_ok", {"main.kind": "ELB", "main.sensitivity_ma": 30}, []),
    (
        "v24_first_sub_check_wins",
        {"main.sensitivity_ma": 20},
        [("SENSITIVITY_INVALID", "main.sensitivity_ma")],
    ),
    (
        "v24_mccb_sub_check_skipped_when_kind_invalid",
        {"main.kind": "XX", "main.sensitivity_ma": 30},
        [("DEVICE_TYPE_INVALID", "main.kind")],
    ),
    (
        "v24_2p_sub_check_skipped_when_poles_invalid",
        {"main.kind": "ELB", "main.poles": 9, "main.sensitivity_ma": 15},
        [("POLES_MISMATCH", "main.poles")],
    ),
    # V25: order DEVICE_TYPE_MISMATCH → BRAND_CONFLICT → INVALID_MODEL_COMBO
    (
        "v25_kind_before_brand",
        {"brand": "LS", "main.model": "SEE-103"},
        [("DEVICE_TYPE_MISMATCH", "main.model")],
    ),
    (
        "v25_brand_before_combo",
        {"brand": "LS", "main.model": "SBS-204"},
        [("BRAND_CONFLICT", "main.model")],
    ),
    (
        "v25_kind_skipped_when_kind_invalid",
        {"brand": "LS", "main.kind": "XX", "main.model": "SEE-103"},
        [("DEVICE_TYPE_INVALID", "main.kind"), ("BRAND_CONFLICT", "main.model")],
    ),
    ("v25_poles", {"main.model": "SBE-104"}, [("INVALID_MODEL_COMBO", "main.model")]),
    ("v25_trip", {"main.model": "SBS-203"}, [("INVALID_MODEL_COMBO", "main.model")]),
    (
        "v25_frame",
        {"main.model": "SBS-203", "main.trip_at": 200, "main.frame_af": 100, "branches.0.trip_at": 100},
        [("INVALID_MODEL_COMBO", "main.model")],
    ),
    ("v25_model_normalised", {"main.model": " sbe 103 "}, []),
    ("v25_model_ok_with_its_frame", {"main.model": "SBE-103", "main.frame_af": 100}, []),
    (
        "v25_trip_check_skipped_when_trip_invalid",
        {"main.model": "SBE-103", "main.trip_at": 900},
        [("AT_OUT_OF_RANGE", "main.trip_at")],
    ),
    (
        "v25_poles_check_skipped_after_v22",
        {"branches.0.poles": 4, "branches.0.model": "SBE-104"},
        [("POLE_TOPOLOGY_MISMATCH", "branches[0].poles")],
    ),
    (
        "v25_high_sensitivity_twin_ok",
        {
            "branches.0": {
                "kind": "ELB",
                "poles": 2,
                "trip_at": 20,
                "qty": 1,
                "sensitivity_ma": 15,
                "model": "SIE-32",
            }
        },
        [],
    ),
    # V25 prefix-only models (not in the catalog)
    ("v25_prefix_only_ok", {"main.poles": 4, "main.trip_at": 250, "main.model": "SBS-254"}, []),
    ("v25_prefix_only_poles", {"main.model": "SBS-254"}, [("INVALID_MODEL_COMBO", "main.model")]),
    ("v25_prefix_only_trip_not_checked", {"main.model": "SBS-993"}, []),
    ("v25_prefix_bs_digit_is_ls", {"main.model": "BS-993"}, [("BRAND_CONFLICT", "main.model")]),
    ("v25_prefix_bsx_unknown", {"main.model": "BSX-3"}, []),
    ("v25_prefix_32gr_is_elb", {"main.model": "32GR-999"}, [("DEVICE_TYPE_MISMATCH", "main.model")]),
    ("v25_unknown_prefix_is_a_gap_not_an_error", {"main.model": "XYZ-104"}, []),
    ("v25_prefix_without_digits", {"main.model": "SBS"}, []),
    # V25 with a line brand (MIXED)
    (
        "v25_model_vs_line_brand",
        {**MIXED, "main.model": "SBE-103", "main.brand": "LS", "branches.0.brand": "LS"},
        [("BRAND_CONFLICT", "main.model")],
    ),
    (
        "v25_mixed_model_names_the_brand",
        {**MIXED, "main.model": "ABN-103", "branches.0.brand": "SANGDO"},
        [],
    ),
    # V26
    ("v26_line_brand_conflict", {"branches.0.brand": "LS"}, [("BRAND_CONFLICT", "branches[0].brand")]),
    ("v26_line_brand_same_ok", {"main.brand": "SANGDO"}, []),
    (
        "v26_mixed_line_without_model_or_brand",
        {**MIXED},
        [("FIELD_REQUIRED", "main.brand"), ("FIELD_REQUIRED", "branches[0].brand")],
    ),
    ("v26_skipped_when_brand_absent", {"brand": None, "main.brand": "LS"}, [("FIELD_REQUIRED", "brand")]),
    (
        "v26_skipped_when_line_brand_invalid",
        {"branches.0.brand": "HYUNDAI"},
        [("BRAND_NOT_SUPPORTED", "branches[0].brand")],
    ),
    (
        "v25_and_v26_on_one_line",
        {"brand": "LS", "branches.0.brand": "SANGDO", "branches.0.model": "SBE-103"},
        [("BRAND_CONFLICT", "branches[0].model"), ("BRAND_CONFLICT", "branches[0].brand")],
    ),
    # V27
    (
        "v27_each_dependent_item",
        {
            "accessories": {
                "enabled": True,
                "items": [
                    {"code": "pbl_onoff", "qty": 2},
                    {"code": "shunt_trip", "qty": 1},
                    {"code": "timer_24h", "qty": 1},
                ],
            }
        },
        [
            ("ACCESSORY_DEPENDENCY", "accessories.items[0].code"),
            ("ACCESSORY_DEPENDENCY", "accessories.items[2].code"),
        ],
    ),
    (
        "v27_magnet_anywhere_satisfies",
        {
            "accessories": {
                "enabled": True,
                "items": [{"code": "timer_24h", "qty": 1}, {"code": "magnet_mc22", "qty": 2}],
            }
        },
        [],
    ),
    (
        "v27_skipped_for_a_duplicate_code",
        {
            "accessories": {
                "enabled": True,
                "items": [{"code": "timer_24h", "qty": 1}, {"code": "timer_24h", "qty": 1}],
            }
        },
        [
            ("ACCESSORY_DUPLICATE", "accessories.items[1].code"),
            ("ACCESSORY_DEPENDENCY", "accessories.items[0].code"),
        ],
    ),
    # Table order across rows (X18 and more)
    (
        "table_order_across_rows",
        {
            "accessories": {"enabled": True, "items": [{"code": "timer_24h", "qty": 1}]},
            "branches.0.trip_at": 150,
            "main.sensitivity_ma": 30,
            "meta.dedup_key": "k" * 200,
            "request_id": "r" * 200,
        },
        [
            ("TEXT_TOO_LONG", "request_id"),
            ("TEXT_TOO_LONG", "meta.dedup_key"),
            ("BRANCH_AT_EXCEEDS_MAIN", "branches[0].trip_at"),
            ("SENSITIVITY_INVALID", "main.sensitivity_ma"),
            ("ACCESSORY_DEPENDENCY", "accessories.items[0].code"),
        ],
    ),
]


@pytest.mark.parametrize(("patch", "expected"), [(p, e) for _, p, e in ROWS], ids=[i for i, _, _ in ROWS])
def test_validation_rows(patch: dict[str, Any], expected: list[Pair], catalog: Catalog) -> None:
    assert _validate(_base(patch), catalog) == expected


VALID_SPEC_REQUESTS: list[tuple[str, dict[str, Any]]] = [
    (
        "S02_explicit_model_standard",
        {"form": "STANDARD", "main.trip_at": 600, "main.model": "SBS-603", "branches.0.qty": 6},
    ),
    ("S11_high_sensitivity", {"brand": "LS", "main.kind": "ELB", "branches.0": {
        "kind": "ELB", "poles": 2, "trip_at": 20, "qty": 7, "sensitivity_ma": 15}}),
    ("S13_2p_frame_filter", {"main.poles": 2, "branches": [
        {"kind": "MCCB", "poles": 2, "trip_at": 50, "qty": 4},
        {"kind": "MCCB", "poles": 2, "trip_at": 20, "qty": 2, "frame_af": 50}]}),
    ("M31_mixed_model_and_brand", {**MIXED, "main.model": "ABN-103", "branches.0": {
        "kind": "MCCB", "poles": 3, "trip_at": 100, "qty": 2, "brand": "SANGDO"}}),
    ("M32_mixed_brand_and_model", {**MIXED, "form": "STANDARD", "main.poles": 4, "main.trip_at": 600,
        "main.brand": "LS",
        "branches.0": {"kind": "MCCB", "poles": 3, "trip_at": 150, "qty": 4, "model": "SBS-203"}}),
    ("S18_accessories", {"main.poles": 4, "main.trip_at": 200, "accessories": {"enabled": True, "items": [
        {"code": "spd_4p_40ka", "qty": 1}, {"code": "magnet_mc22", "qty": 2}, {"code": "timer_24h", "qty": 1},
        {"code": "pbl_onoff", "qty": 2}, {"code": "indicator_lamp", "qty": 2}]}}),
    ("X19_prefix_only_model", {"main.poles": 4, "main.trip_at": 250, "main.model": "SBS-254"}),
    ("X20_gap_not_error", {"main.kind": "ELB",
        "branches.0": {"kind": "ELB", "poles": 2, "trip_at": 15, "qty": 1}}),
]  # fmt: skip


@pytest.mark.parametrize(
    "patch", [p for _, p in VALID_SPEC_REQUESTS], ids=[i for i, _ in VALID_SPEC_REQUESTS]
)
def test_spec_requests_that_must_pass_validation(patch: dict[str, Any], catalog: Catalog) -> None:
    assert _validate(_base(patch), catalog) == []


# --------------------------------------------------------------------------- hard caps (hostile input)


def test_too_many_branch_lines_is_one_violation_and_skips_the_lines(catalog: Catalog) -> None:
    bad_line = {"kind": "X", "poles": 9, "trip_at": -1, "qty": 0, "model": "SEE-103", "sensitivity_ma": 7}
    for n in (MAX_BRANCH_LINES + 1, 10_000):
        got = validate_request(request_from_dict(_base({"branches": [bad_line] * n})), catalog)
        assert got == (violation(ErrorCode.TOO_MANY_ITEMS, "branches", max=MAX_BRANCH_LINES),)
    assert got[0].extra == (("max", "100"),)


def test_branch_line_cap_is_inclusive(catalog: Catalog) -> None:
    line = load_base()["branches"][0]
    assert _validate(_base({"branches": [line] * MAX_BRANCH_LINES}), catalog) == []


def test_too_many_accessory_items(catalog: Catalog) -> None:
    items = [{"code": "timer_24h", "qty": 0}] * (MAX_ACCESSORY_ITEMS + 1)
    got = validate_request(
        request_from_dict(_base({"accessories": {"enabled": True, "items": items}})), catalog
    )
    assert got == (violation(ErrorCode.TOO_MANY_ITEMS, "accessories.items", max=MAX_ACCESSORY_ITEMS),)


def test_accessory_cap_not_reported_twice_on_one_field(catalog: Catalog) -> None:
    items = [{"code": "shunt_trip", "qty": 1}] * 10_000
    got = _validate(_base({"accessories": {"enabled": False, "items": items}}), catalog)
    assert got == [("ACCESSORY_CONFLICT", "accessories.items")]


def test_huge_strings_are_truncated_in_messages(catalog: Catalog) -> None:
    brand = "A" * 1_000_000
    (got,) = validate_request(request_from_dict(_base({"brand": brand})), catalog)
    shown = "A" * ECHO_MAX_CHARS + "…"
    assert got.message_en == f"Brand '{shown}' is not supported; use SANGDO, LS or MIXED."
    assert got.message_ko == f"지원하지 않는 브랜드 '{shown}'입니다. SANGDO, LS, MIXED 중에서 선택하세요."
    assert got.extra == ()


def test_echo_neutralises_control_characters_and_huge_integers() -> None:
    assert echo("a\nb\x1b[31m\u202e") == "a\ufffdb\ufffd[31m\ufffd"
    assert echo(10**5000) == "≈2^16609"
    assert echo(-(10**5000)) == "-≈2^16609"
    assert echo(False) == "false"
    assert echo("{f}") == "{f}"


def test_placeholders_in_values_are_not_expanded(catalog: Catalog) -> None:
    (got,) = validate_request(request_from_dict(_base({"form": "{f}{v}"})), catalog)
    assert got.message_en.startswith("Form '{f}{v}' is invalid")


def test_huge_integer_value_in_a_message(catalog: Catalog) -> None:
    (got,) = validate_request(request_from_dict(_base({"branches.0.qty": 10**5000})), catalog)
    assert got.message_en == "Branch quantity ≈2^16609 exceeds the maximum of 100 per line."


# --------------------------------------------------------------------------- messages and extras


def test_full_violations_of_x18(catalog: Catalog) -> None:
    req = request_from_dict(
        _base({"branches.0.poles": 5, "installation.location": "SPACE", "accessories.enabled": None})
    )
    assert validate_request(req, catalog) == (
        Violation(
            code=ErrorCode.LOCATION_INVALID,
            field="installation.location",
            message_en="Location 'SPACE' is invalid; use INDOOR or OUTDOOR.",
            message_ko="설치장소 'SPACE'이(가) 잘못되었습니다. INDOOR(옥내) 또는 OUTDOOR(옥외)를 사용하세요.",
        ),
        Violation(
            code=ErrorCode.POLES_MISMATCH,
            field="branches[0].poles",
            message_en="Poles must be 2, 3 or 4 (got 5).",
            message_ko="극수는 2P, 3P, 4P 중 하나여야 합니다 (입력값 5).",
        ),
        Violation(
            code=ErrorCode.GATE_MISSING,
            field="accessories.enabled",
            message_en="Gate 3 incomplete: accessories.enabled is required.",
            message_ko="3번 게이트 미완료: accessories.enabled 값이 필요합니다.",
            extra=(("gate", "3"),),
        ),
    )


MESSAGE_ROWS: list[tuple[str, dict[str, Any], str, str, tuple[tuple[str, str], ...]]] = [
    (
        "pole_topology",
        {"main.poles": 2, "branches.0.trip_at": 50},
        "A 2P main cannot feed a 3P branch (allowed: 2P).",
        "2P 메인 차단기에는 3P 분기를 연결할 수 없습니다 (허용: 2P).",
        (("allowed", "2P"),),
    ),
    (
        "branch_at",
        {"main.trip_at": 225, "branches.0.trip_at": 226},
        "Branch trip current 226 A exceeds the main's 225 A.",
        "분기 정격전류 226A가 메인 225A보다 큽니다.",
        (),
    ),
    (
        "text_too_long",
        {"meta.dedup_key": "d" * 129},
        "meta.dedup_key is longer than 128 characters.",
        "meta.dedup_key은(는) 128자를 넘을 수 없습니다.",
        (("max", "128"),),
    ),
    (
        "gate_1",
        {"main.trip_at": None},
        "Gate 1 incomplete: main.trip_at is required.",
        "1번 게이트 미완료: main.trip_at 값이 필요합니다.",
        (("gate", "1"),),
    ),
    (
        "accessory_qty",
        {"accessories": {"enabled": True, "items": [{"code": "spd_4p_40ka", "qty": 2}]}},
        "Quantity 2 exceeds the maximum of 1 for this item.",
        "수량 2은(는) 이 품목의 최대 수량 1을(를) 초과합니다.",
        (("max", "1"),),
    ),
    (
        "accessory_conflict",
        {"accessories.enabled": True},
        "accessories.enabled is true but 0 item(s) were given.",
        "부속자재 사용 여부(enabled=true)와 품목 0개가 맞지 않습니다.",
        (),
    ),
    (
        "device_type_mismatch",
        {"main.model": "SEE-103"},
        "Model SEE-103 is an ELB, but kind is MCCB.",
        "모델 SEE-103은(는) ELB인데 종류가 MCCB(으)로 지정되었습니다.",
        (),
    ),
    (
        "model_combo_trip",
        {"main.model": "SBS-203", "main.trip_at": 400},
        "Model SBS-203 does not match the requested trip_at (catalog: 125, 150, 175, 200, 225 A).",
        "모델 SBS-203은(는) 요청한 trip_at와(과) 맞지 않습니다 (카탈로그: 125, 150, 175, 200, 225 A).",
        (),
    ),
    (
        "model_combo_poles_prefix_only",
        {"main.model": "SBS-254"},
        "Model SBS-254 does not match the requested poles (catalog: 4P).",
        "모델 SBS-254은(는) 요청한 poles와(과) 맞지 않습니다 (카탈로그: 4P).",
        (),
    ),
    (
        "model_brand_conflict",
        {"brand": "LS", "branches.0.model": "SBE-103"},
        "SBE-103 is a SANGDO part but the estimate brand is LS; "
        "declare brand MIXED with a reason to mix brands.",
        "SBE-103은(는) SANGDO 제품인데 견적 브랜드는 LS입니다. "
        "혼용하려면 brand를 MIXED로 하고 사유를 입력하세요.",
        (),
    ),
    (
        "line_brand_conflict",
        {"branches.0.brand": "LS"},
        "branches[0] is a LS part but the estimate brand is SANGDO; "
        "declare brand MIXED with a reason to mix brands.",
        "branches[0]은(는) LS 제품인데 견적 브랜드는 SANGDO입니다. "
        "혼용하려면 brand를 MIXED로 하고 사유를 입력하세요.",
        (),
    ),
    (
        "sensitivity",
        {"main.kind": "ELB", "main.sensitivity_ma": 15},
        "Sensitivity 15 mA is not allowed: ELB only; 30 mA, or 15 mA for 2P ELBs of 30 A or less.",
        "감도 15mA는 사용할 수 없습니다. "
        "ELB에만 지정하며 30mA, 또는 30A 이하 2P ELB에 한해 15mA(고감도)입니다.",
        (),
    ),
    (
        "no_branches",
        {"branches": []},
        "At least one branch breaker line is required (gate 2).",
        "분기 차단기가 최소 1줄 필요합니다 (2번 게이트).",
        (),
    ),
]


@pytest.mark.parametrize(
    ("patch", "en", "ko", "extra"), [r[1:] for r in MESSAGE_ROWS], ids=[r[0] for r in MESSAGE_ROWS]
)
def test_messages_and_extras(
    patch: dict[str, Any], en: str, ko: str, extra: tuple[tuple[str, str], ...], catalog: Catalog
) -> None:
    (got,) = validate_request(request_from_dict(_base(patch)), catalog)
    assert (got.message_en, got.message_ko, got.extra) == (en, ko, extra)


@pytest.mark.parametrize("code", list(ErrorCode), ids=[c.value for c in ErrorCode])
def test_every_code_has_en_and_ko_templates_with_the_same_placeholders(code: ErrorCode) -> None:
    en, ko = TEMPLATES[code]
    assert en and ko and en != ko
    assert placeholders(en) == placeholders(ko)


def test_service_level_violations_put_only_named_keys_in_extra() -> None:
    got = violation(ErrorCode.MIXED_QUOTA_EXCEEDED, "brand", month="2025-01", used=2, quota=2, v="MIXED")
    assert got.message_en == "MIXED-brand quota for 2025-01 is used up (2/2)."
    assert got.message_ko == "2025-01 혼합 브랜드(MIXED) 허용 건수를 모두 사용했습니다 (2/2)."
    assert got.extra == (("month", "2025-01"), ("quota", "2"), ("used", "2"))
    dup = violation(
        ErrorCode.DUPLICATE_REQUEST, "meta.dedup_key", v="dedup:ab12cd34", existing_estimate_id="E1"
    )
    assert dup.extra == (("existing_estimate_id", "E1"),)
    assert dup.message_en == "dedup_key 'dedup:ab12cd34' was already used by estimate E1."
    bad = violation(ErrorCode.MALFORMED_REQUEST, "", v="brand must be a string\n" + "x" * 100)
    assert bad.message_en == "The request is malformed: brand must be a string\ufffd" + "x" * 41 + "…."


def test_missing_message_parameter_never_raises() -> None:
    got = violation(ErrorCode.GATE_MISSING, "main")
    assert (got.message_en, got.extra) == ("Gate ? incomplete: main is required.", ())


def test_warning_messages() -> None:
    assert {"PHASE_IMBALANCE", "MIXED_REASON_IGNORED", "MODEL_GRADE_DIFFERS_FROM_FORM"} == WARNING_CODES
    assert warning_messages("PHASE_IMBALANCE", x="21.43") == (
        "Phase imbalance 21.43 % exceeds 4.0 %.",
        "상 불평형 21.43%가 4.0%를 초과합니다.",
    )
    en, ko = warning_messages("MIXED_REASON_IGNORED", brand="LS")
    assert "LS" in en and "LS" in ko
    en, ko = warning_messages("MODEL_GRADE_DIFFERS_FROM_FORM", model="SBE-103", grade="ECO", form="STANDARD")
    assert "SBE-103" in en and "ECO" in ko and "STANDARD" in ko
    with pytest.raises(KeyError):
        warning_messages("NOT_A_WARNING")


# --------------------------------------------------------------------------- model identity (§6.2)

IDENTITY_ROWS: list[tuple[str, tuple[str, str, int | None, bool] | None]] = [
    ("SBS-203", ("SANGDO", "MCCB", 3, True)),
    ("sbs 203", ("SANGDO", "MCCB", 3, True)),
    ("SIE-32", ("SANGDO", "ELB", 2, True)),
    ("32GRHS", ("LS", "ELB", 2, True)),
    ("ABS52FB", ("LS", "MCCB", 2, True)),
    ("BS-32", ("LS", "MCCB", 2, True)),
    ("SBS-254", ("SANGDO", "MCCB", 4, False)),
    ("SEC-1003", ("SANGDO", "ELB", 3, False)),
    ("ABN-1234-56", ("LS", "MCCB", 4, False)),
    ("EBN-103 30mA", ("LS", "ELB", 3, False)),
    ("BS-7", ("LS", "MCCB", 7, False)),
    ("EBN-9", ("LS", "ELB", 9, False)),
    ("32GR-X", ("LS", "ELB", 2, False)),
    ("SBS", ("SANGDO", "MCCB", None, False)),
    ("BSX-32", None),
    ("XYZ-103", None),
    ("S-BS-103", ("SANGDO", "MCCB", 3, True)),  # normalised like a catalog lookup
]


@pytest.mark.parametrize(("model", "expected"), IDENTITY_ROWS, ids=[m for m, _ in IDENTITY_ROWS])
def test_model_identity(
    model: str, expected: tuple[str, str, int | None, bool] | None, catalog: Catalog
) -> None:
    ident = model_identity(model, catalog)
    got = None if ident is None else (ident.brand, ident.kind, ident.poles, ident.in_catalog)
    assert got == expected


def test_model_identity_of_a_twin_uses_both_rows(catalog: Catalog) -> None:
    ident = model_identity("SIB-32", catalog)
    assert isinstance(ident, ModelIdentity)
    assert len(ident.rows) == 2
    assert (ident.trip_ratings, ident.frames_af) == ((20, 30), (30,))


def test_validation_does_not_mutate_or_depend_on_request_identity(catalog: Catalog) -> None:
    req = EstimateRequest()
    first = validate_request(req, catalog)
    assert first == validate_request(req, catalog)
    assert [v.field for v in first] == [
        "brand",
        "installation.location",
        "installation.mount",
        "main",
        "branches",
        "accessories.enabled",
    ]
