"""Sizing, algorithm A (docs/pricing-rules.md §7): F(AT), terms A–E, pairing, width, depth, examples."""

from __future__ import annotations

import random
from decimal import ROUND_HALF_EVEN, Decimal

import pytest

from kis_estimator.server.engine.enclosure_sizing import (
    BranchRow,
    UnitType,
    ceil100,
    depth_mm,
    frame_class,
    pair_branch_units,
    size_enclosure,
    term_d,
    term_e,
    width_mm,
)
from kis_estimator.server.engine.model import Sizing

# ---------------------------------------------------------------- §7.1 F(AT)

FRAME_BOUNDS = [
    (1, 30),
    (30, 30),
    (31, 50),
    (50, 50),
    (51, 60),
    (60, 60),
    (61, 100),
    (100, 100),
    (101, 125),
    (125, 125),
    (126, 200),
    (200, 200),
    (201, 250),
    (250, 250),
    (251, 400),
    (400, 400),
    (401, 600),
    (600, 600),
    (601, 800),
    (800, 800),
]


@pytest.mark.parametrize(("trip_at", "frame"), FRAME_BOUNDS, ids=[f"AT{a}" for a, _ in FRAME_BOUNDS])
def test_frame_class_follows_the_table_at_every_boundary(trip_at: int, frame: int) -> None:
    assert frame_class(trip_at) == frame


def test_frame_class_rejects_trip_current_outside_1_to_800() -> None:
    with pytest.raises(ValueError, match="801"):
        frame_class(801)


# ---------------------------------------------------------------- §7.2 terms


def test_term_e_is_half_even_of_a_quarter_plus_40() -> None:
    for c_mm in range(0, 2000):
        expected = int((Decimal(c_mm) * Decimal("0.25")).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)) + 40
        assert term_e(c_mm) == expected, c_mm
    assert (term_e(150), term_e(700), term_e(240)) == (78, 215, 100)


@pytest.mark.parametrize(
    ("main_at", "d"),
    [(1, 150), (225, 150), (226, 200), (400, 200), (401, 250), (800, 250)],
    ids=["1", "225", "226", "400", "401", "800"],
)
def test_term_d_by_main_trip_current(main_at: int, d: int) -> None:
    assert term_d(main_at) == d


def test_ceil100_rounds_up_to_the_next_multiple_of_100() -> None:
    assert [ceil100(x) for x in (0, 1, 100, 101, 1455, 810)] == [0, 100, 100, 200, 1500, 900]


# ---------------------------------------------------------------- §7.4 width and depth


def _units(*pairs: tuple[int, int]) -> list[UnitType]:
    return [UnitType(p, a) for p, a in pairs]


WIDTH_ROWS = [
    ("2P main F50, all small 2P", 2, 50, _units((2, 20), (2, 30)), 400),
    ("2P main F50, a 2P F50 branch", 2, 50, _units((2, 20), (2, 40)), 600),
    ("2P main F100", 2, 100, _units((2, 20)), 600),
    ("3P main, class 0", 3, 100, _units((2, 20), (3, 30)), 500),
    ("3P main, class 1", 3, 100, _units((3, 100), (3, 30)), 600),
    ("4P main, class 2", 4, 200, _units((3, 125)), 700),
    ("3P main, class 3", 3, 250, _units((3, 250)), 800),
    ("3P main F400, class 3", 3, 400, _units((3, 200)), 900),
    ("3P main, class 4", 3, 400, _units((3, 400)), 900),
    ("3P main F600, class 4", 3, 600, _units((3, 400)), 1300),
    ("3P main F800, class 4", 3, 800, _units((3, 300)), 1300),
    ("3P main, class 5", 3, 600, _units((3, 600)), 1000),
    ("3P main, class 6 with a F400 unit", 4, 800, _units((3, 800), (3, 400)), 1300),
]


@pytest.mark.parametrize(
    ("main_poles", "main_frame", "units", "width"),
    [row[1:] for row in WIDTH_ROWS],
    ids=[row[0] for row in WIDTH_ROWS],
)
def test_width_follows_the_section_7_4_table(
    main_poles: int, main_frame: int, units: list[UnitType], width: int
) -> None:
    assert width_mm(main_poles, main_frame, units) == width


DEPTH_ROWS = [
    ("F100", 100, 1, 150),
    ("F200", 200, 1, 150),
    ("F250", 250, 1, 200),
    ("F400", 400, 1, 250),
    ("F600-24", 600, 24, 350),
    ("F600-25", 600, 25, 400),
    ("F800-24", 800, 24, 400),
    ("F800-25", 800, 25, 500),
]


@pytest.mark.parametrize(
    ("main_frame", "units", "depth"), [row[1:] for row in DEPTH_ROWS], ids=[row[0] for row in DEPTH_ROWS]
)
def test_depth_by_main_frame_and_branch_units(main_frame: int, units: int, depth: int) -> None:
    assert depth_mm(main_frame, units) == depth


# ---------------------------------------------------------------- §7.5 worked examples


def test_worked_example_1_sizes_600x1500x150() -> None:
    result = size_enclosure(4, 150, [(4, 50, 4), (4, 30, 4), (2, 20, 10)])
    assert result.sizing == Sizing(
        width_mm=600,
        height_mm=1500,
        depth_mm=150,
        a_mm=360,
        b_mm=30,
        c_mm=700,
        d_mm=150,
        e_mm=215,
        h_raw_mm=1455,
    )
    four_30, two_20, four_50 = UnitType(4, 30), UnitType(2, 20), UnitType(4, 50)
    assert result.pairing.groups == ((four_30, 4), (two_20, 10), (four_50, 4))
    assert result.pairing.rows == (
        BranchRow(four_30, four_30, 125, 2),
        BranchRow(two_20, two_20, 40, 5),
        BranchRow(four_50, four_50, 125, 2),
    )
    assert result.trace["pairs"] == [
        {"first": "4P 30A", "second": "4P 30A", "height": 125, "count": 2},
        {"first": "2P 20A", "second": "2P 20A", "height": 40, "count": 5},
        {"first": "4P 50A", "second": "4P 50A", "height": 125, "count": 2},
    ]


def test_worked_example_2_sizes_500x900x150() -> None:
    result = size_enclosure(4, 100, [(2, 20, 12)])
    assert result.sizing == Sizing(500, 900, 150, 290, 30, 240, 150, 100, 810)


def test_odd_unit_pairs_with_the_lowest_compatible_later_unit() -> None:
    # 3P 100 ×1 (h 75) then 3P 50 ×1 (h 75, same F class group) and 4P 60 ×1 (h 100):
    # sorted: 4P60 (class 1, poles 4), 3P100, 3P50. 4P60 scans 3P100 (75) → best; 3P50 (75) not lower.
    pairing = pair_branch_units([(3, 100, 1), (3, 50, 1), (4, 60, 1)])
    assert [(r.first.label(), r.second.label() if r.second else None, r.height_mm) for r in pairing.rows] == [
        ("4P 60A", "3P 100A", 100),
        ("3P 50A", None, 75),
    ]
    assert pairing.c_mm == 175


def test_frame_30_units_never_pair_with_other_frames() -> None:
    pairing = pair_branch_units([(2, 20, 1), (2, 40, 1)])
    assert pairing.c_mm == 40 + 50
    assert all(row.second is None for row in pairing.rows)


# ---------------------------------------------------------------- pairing equivalence

_PITCH = {30: 25, 50: 25, 60: 25, 100: 25, 125: 30, 200: 33, 250: 33, 400: 50, 600: 70, 800: 70}
_CLASS = {30: 0, 50: 1, 60: 1, 100: 1, 125: 2, 200: 3, 250: 3, 400: 4, 600: 5, 800: 6}


def _f(at: int) -> int:
    for bound in (30, 50, 60, 100, 125, 200, 250, 400, 600, 800):
        if at <= bound:
            return bound
    raise AssertionError(at)


def reference_pairing(lines: list[tuple[int, int, int]]) -> tuple[int, list[tuple[str, str | None, int]]]:
    """§7.3 literally, one unit at a time (O(units²)): the oracle for the grouped scan."""
    units = [(p, a, _f(a)) for p, a, q in lines for _ in range(q)]
    units.sort(key=lambda u: (_CLASS[u[2]], -u[0], -u[1]))

    def h(u: tuple[int, int, int]) -> int:
        return 40 if u[0] == 2 and u[2] == 30 else u[0] * _PITCH[u[2]]

    def compatible(u: tuple[int, int, int], v: tuple[int, int, int]) -> bool:
        mid, big = {50, 60, 100}, {200, 250}
        return u[2] == v[2] or (u[2] in mid and v[2] in mid) or (u[2] in big and v[2] in big)

    def ph(u: tuple[int, int, int], v: tuple[int, int, int]) -> int:
        if u[0] == 4 and v[0] == 4:
            return 5 * max(_PITCH[u[2]], _PITCH[v[2]])
        return max(h(u), h(v))

    used = [False] * len(units)
    c = 0
    rows: list[tuple[str, str | None, int]] = []
    for i, u in enumerate(units):
        if used[i]:
            continue
        best: int | None = None
        best_h = 0
        for j in range(i + 1, len(units)):
            v = units[j]
            if used[j] or not compatible(u, v):
                continue
            height = ph(u, v)
            if best is None or height < best_h:
                best, best_h = j, height
                if v[2] == u[2] and v[0] == u[0]:
                    break
        used[i] = True
        if best is None:
            c += h(u)
            rows.append((f"{u[0]}P {u[1]}A", None, h(u)))
        else:
            used[best] = True
            c += best_h
            v = units[best]
            rows.append((f"{u[0]}P {u[1]}A", f"{v[0]}P {v[1]}A", best_h))
    return c, rows


def _expand(rows: tuple[BranchRow, ...]) -> list[tuple[str, str | None, int]]:
    out: list[tuple[str, str | None, int]] = []
    for row in rows:
        second = row.second.label() if row.second is not None else None
        out.extend([(row.first.label(), second, row.height_mm)] * row.count)
    return out


_ATS = [
    1,
    15,
    20,
    30,
    31,
    40,
    50,
    55,
    60,
    75,
    100,
    110,
    125,
    150,
    200,
    225,
    250,
    300,
    400,
    500,
    600,
    700,
    800,
]


@pytest.mark.parametrize("seed", range(300))
def test_grouped_pairing_equals_unit_by_unit_reference(seed: int) -> None:
    rnd = random.Random(seed)
    ats = rnd.sample(_ATS, rnd.randint(1, 8))
    lines = [
        (rnd.choice((2, 3, 4)), rnd.choice(ats), rnd.choice((1, 1, 2, 3, 5, 8, 13)))
        for _ in range(rnd.randint(1, 12))
    ]
    c, rows = reference_pairing(lines)
    pairing = pair_branch_units(lines)
    assert pairing.c_mm == c
    assert _expand(pairing.rows) == rows


@pytest.mark.parametrize("seed", range(20))
def test_grouped_pairing_equals_reference_with_large_quantities(seed: int) -> None:
    rnd = random.Random(1000 + seed)
    lines = [
        (rnd.choice((2, 3, 4)), rnd.choice(_ATS), rnd.randint(1, 100)) for _ in range(rnd.randint(5, 12))
    ]
    c, rows = reference_pairing(lines)
    pairing = pair_branch_units(lines)
    assert (pairing.c_mm, _expand(pairing.rows)) == (c, rows)
