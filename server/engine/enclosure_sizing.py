"""Enclosure sizing, the owner's algorithm A (docs/pricing-rules.md §7, rules ``[SIZ-*]``).

Sizing reads only the main (poles, trip_at) and the branch units (poles, trip_at): never catalog
dimensions, selected models or breaker kinds (§7). All arithmetic is on integers.

Branch pairing (§7.3) works on *groups* of identical units instead of single units. Units with
equal (poles, AT) are interchangeable for sizing, and the §7.3 sort key (class, -poles, -AT) is
equal exactly for such units, so every group is one contiguous run of the sorted unit list. In the
greedy scan only the first unused unit of a group can become the *best* partner (a later unit of
the same group has the same pair height, which is never strictly lower), so the scan visits one
candidate per group with the stop rule unchanged. Within a group the used units are always a
prefix, so a group is fully described by its count of unused units. When the unit ``u`` still
has an unused twin in its own group, that twin is the first candidate scanned, becomes the best
and has u's F and poles, so the scan stops there: u pairs with its twin. Hence a group with
``r`` unused units first makes ``r // 2`` identical self-pairs in one step, and only a lone last
unit scans the later groups. The work is O(groups²), independent of the quantities.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kis_estimator.server.engine.model import RuleApplication, Sizing

__all__ = [
    "BranchRow",
    "Pairing",
    "SizingResult",
    "UnitType",
    "ceil100",
    "class_order",
    "compatible",
    "depth_mm",
    "frame_class",
    "pair_branch_units",
    "pair_height",
    "size_enclosure",
    "sorted_groups",
    "term_d",
    "term_e",
    "width_mm",
]

# §7.1 frame class F(AT): (upper AT bound, F), total over 1..800 (§20).
_FRAME_TABLE: tuple[tuple[int, int], ...] = (
    (30, 30),
    (50, 50),
    (60, 60),
    (100, 100),
    (125, 125),
    (200, 200),
    (250, 250),
    (400, 400),
    (600, 600),
    (800, 800),
)
# §7.1 class order.
_CLASS_ORDER = {30: 0, 50: 1, 60: 1, 100: 1, 125: 2, 200: 3, 250: 3, 400: 4, 600: 5, 800: 6}
# §7.2 term A by main F.
_A_BY_FRAME = {
    30: 250,
    50: 250,
    60: 250,
    100: 290,
    125: 310,
    200: 360,
    250: 360,
    400: 620,
    600: 780,
    800: 880,
}
# §7.3 pitch by F.
_PITCH_BY_FRAME = {30: 25, 50: 25, 60: 25, 100: 25, 125: 30, 200: 33, 250: 33, 400: 50, 600: 70, 800: 70}
_B_MM = 30  # §7.2 gap main -> first branch row
_PVC_DUCT_MM = 40  # §7.2 term E allowance
_MIDDLE_FRAMES = frozenset({50, 60, 100})
_LARGE_FRAMES = frozenset({200, 250})


def frame_class(trip_at: int) -> int:
    """F(AT) of docs/pricing-rules.md §7.1 ``[SIZ-F]``; ``trip_at`` in 1..800 A."""
    for upper, frame in _FRAME_TABLE:
        if trip_at <= upper:
            return frame
    raise ValueError(f"trip_at {trip_at} A is outside 1..800")


def class_order(frame: int) -> int:
    """Class order of a frame class (§7.1): 30 → 0; 50/60/100 → 1; 125 → 2; … 800 → 6."""
    return _CLASS_ORDER[frame]


def ceil100(value: int) -> int:
    """Smallest multiple of 100 ≥ value (§1)."""
    return -(-value // 100) * 100


def term_e(c_mm: int) -> int:
    """E = round_half_even(C × 0.25) + 40 (§7.2, the only half-even rounding)."""
    q, r = divmod(c_mm, 4)
    if r == 3 or (r == 2 and q % 2 == 1):
        q += 1
    return q + _PVC_DUCT_MM


def term_d(main_trip_at: int) -> int:
    """D by main AT (§7.2): ≤ 225 → 150; 226–400 → 200; ≥ 401 → 250."""
    if main_trip_at <= 225:
        return 150
    if main_trip_at <= 400:
        return 200
    return 250


@dataclass(frozen=True, slots=True, order=True)
class UnitType:
    """One kind of branch unit for sizing: poles and trip current (F derives from AT)."""

    poles: int
    trip_at: int

    @property
    def frame(self) -> int:
        return frame_class(self.trip_at)

    @property
    def height_mm(self) -> int:
        """h(u) of §7.3: 40 for a small 2P unit (2P, F 30), else poles × pitch(F)."""
        frame = self.frame
        if self.poles == 2 and frame == 30:
            return 40
        return self.poles * _PITCH_BY_FRAME[frame]

    def sort_key(self) -> tuple[int, int, int]:
        """§7.3 step 2: class ascending, poles descending, AT descending."""
        return (_CLASS_ORDER[self.frame], -self.poles, -self.trip_at)

    def label(self) -> str:
        return f"{self.poles}P {self.trip_at}A"


def compatible(u: UnitType, v: UnitType) -> bool:
    """§7.3 step 4: same F, or both F in {50, 60, 100}, or both in {200, 250}."""
    fu, fv = u.frame, v.frame
    return (
        fu == fv
        or (fu in _MIDDLE_FRAMES and fv in _MIDDLE_FRAMES)
        or (fu in _LARGE_FRAMES and fv in _LARGE_FRAMES)
    )


def pair_height(u: UnitType, v: UnitType) -> int:
    """§7.3 step 5: both 4P → 5 × max pitch; otherwise max(h(u), h(v))."""
    if u.poles == 4 and v.poles == 4:
        return 5 * max(_PITCH_BY_FRAME[u.frame], _PITCH_BY_FRAME[v.frame])
    return max(u.height_mm, v.height_mm)


@dataclass(frozen=True, slots=True)
class BranchRow:
    """``count`` identical branch rows: unit ``first`` faced by ``second`` (None = single unit)."""

    first: UnitType
    second: UnitType | None
    height_mm: int
    count: int


@dataclass(frozen=True, slots=True)
class Pairing:
    """Result of §7.3: C and the rows in greedy order, plus the sorted unit groups."""

    c_mm: int
    rows: tuple[BranchRow, ...]
    groups: tuple[tuple[UnitType, int], ...]


def sorted_groups(units: Iterable[tuple[int, int, int]]) -> tuple[tuple[UnitType, int], ...]:
    """Branch lines (poles, trip_at, qty) as runs of identical units in §7.3 sort order."""
    counts: dict[UnitType, int] = {}
    for poles, trip_at, qty in units:
        if qty > 0:
            key = UnitType(poles, trip_at)
            counts[key] = counts.get(key, 0) + qty
    return tuple(sorted(counts.items(), key=lambda item: item[0].sort_key()))


def pair_branch_units(units: Iterable[tuple[int, int, int]]) -> Pairing:
    """Greedy face-to-face pairing of §7.3 ``[SIZ-C]`` over (poles, trip_at, qty) lines."""
    groups = sorted_groups(units)
    kinds = [unit for unit, _ in groups]
    left = [count for _, count in groups]
    rows: list[BranchRow] = []
    c_mm = 0
    for i, u in enumerate(kinds):
        while left[i] > 0:
            if left[i] >= 2:
                # The twin is scanned first, becomes best with u's F and poles: stop (module doc).
                n = left[i] // 2
                height = pair_height(u, u)
                rows.append(BranchRow(u, u, height, n))
                c_mm += n * height
                left[i] -= 2 * n
                continue
            best: int | None = None
            best_height = 0
            for j in range(i + 1, len(kinds)):
                v = kinds[j]
                if left[j] == 0 or not compatible(u, v):
                    continue
                height = pair_height(u, v)
                if best is None or height < best_height:
                    best, best_height = j, height
                    if v.frame == u.frame and v.poles == u.poles:
                        break
            left[i] = 0
            if best is None:
                rows.append(BranchRow(u, None, u.height_mm, 1))
                c_mm += u.height_mm
            else:
                left[best] -= 1
                rows.append(BranchRow(u, kinds[best], best_height, 1))
                c_mm += best_height
    return Pairing(c_mm=c_mm, rows=tuple(rows), groups=groups)


def width_mm(main_poles: int, main_frame: int, branch_units: Sequence[UnitType]) -> int:
    """Width W of §7.4 ``[SIZ-W]`` from the main and the distinct branch unit types."""
    if main_poles == 2:
        if main_frame == 50 and all(u.poles == 2 and u.frame == 30 for u in branch_units):
            return 400
        return 600
    top = max((_CLASS_ORDER[u.frame] for u in branch_units), default=0)
    if top == 0:
        return 500
    if top == 1:
        return 600
    if top == 2:
        return 700
    if top == 3:
        return 900 if main_frame == 400 else 800
    if top == 4:
        return 1300 if main_frame in (600, 800) else 900
    return 1300 if any(u.frame == 400 for u in branch_units) else 1000


def depth_mm(main_frame: int, branch_units_total: int) -> int:
    """Depth of §7.4 ``[SIZ-DEPTH]`` by main F; 600/800 deepen at ≥ 25 branch units (Σ qty, §20)."""
    if main_frame <= 200:
        return 150
    if main_frame == 250:
        return 200
    if main_frame == 400:
        return 250
    if main_frame == 600:
        return 400 if branch_units_total >= 25 else 350
    return 500 if branch_units_total >= 25 else 400


@dataclass(frozen=True, slots=True)
class SizingResult:
    """Sizing plus the ``size`` trace step and the ``SIZ-*`` rule applications."""

    sizing: Sizing
    pairing: Pairing
    trace: dict[str, Any]
    rules: tuple[RuleApplication, ...]


def size_enclosure(
    main_poles: int, main_trip_at: int, branches: Sequence[tuple[int, int, int]]
) -> SizingResult:
    """Computed size W × H × depth (docs/pricing-rules.md §7) from the main and branch (poles, AT, qty)."""
    main_frame = frame_class(main_trip_at)
    a = _A_BY_FRAME[main_frame]
    pairing = pair_branch_units(branches)
    c = pairing.c_mm
    d = term_d(main_trip_at)
    e = term_e(c)
    h_raw = a + _B_MM + c + d + e
    h = ceil100(h_raw)
    unit_types = [unit for unit, _ in pairing.groups]
    total_units = sum(count for _, count in pairing.groups)
    w = width_mm(main_poles, main_frame, unit_types)
    depth = depth_mm(main_frame, total_units)
    top_class = max((_CLASS_ORDER[u.frame] for u in unit_types), default=0)
    sizing = Sizing(
        width_mm=w,
        height_mm=h,
        depth_mm=depth,
        a_mm=a,
        b_mm=_B_MM,
        c_mm=c,
        d_mm=d,
        e_mm=e,
        h_raw_mm=h_raw,
    )
    rules = (
        RuleApplication("SIZ-F", "main", f"F({main_trip_at})={main_frame}"),
        RuleApplication("SIZ-A", "sizing", f"F({main_trip_at})={main_frame} → A={a}"),
        RuleApplication("SIZ-B", "sizing", f"B={_B_MM}"),
        RuleApplication(
            "SIZ-C", "sizing", f"{total_units} branch units in {len(pairing.rows)} row groups → C={c}"
        ),
        RuleApplication("SIZ-D", "sizing", f"main AT {main_trip_at} → D={d}"),
        RuleApplication("SIZ-E", "sizing", f"round_half_even({c}×0.25)+40 → E={e}"),
        RuleApplication("SIZ-H", "sizing", f"H_raw={a}+{_B_MM}+{c}+{d}+{e}={h_raw} → H={h}"),
        RuleApplication(
            "SIZ-W", "sizing", f"main {main_poles}P F={main_frame}, highest branch class {top_class} → W={w}"
        ),
        RuleApplication(
            "SIZ-DEPTH", "sizing", f"main F={main_frame}, {total_units} branch units → depth={depth}"
        ),
    )
    trace: dict[str, Any] = {
        "step": "size",
        "main": {"poles": main_poles, "trip_at": main_trip_at, "frame_class": main_frame},
        "A": a,
        "B": _B_MM,
        "C": c,
        "D": d,
        "E": e,
        "H_raw": h_raw,
        "H": h,
        "W": w,
        "depth": depth,
        "branch_units": total_units,
        "sorted_units": [
            {
                "poles": unit.poles,
                "trip_at": unit.trip_at,
                "frame_class": unit.frame,
                "height": unit.height_mm,
                "count": count,
            }
            for unit, count in pairing.groups
        ],
        "pairs": [
            {
                "first": row.first.label(),
                "second": row.second.label() if row.second is not None else None,
                "height": row.height_mm,
                "count": row.count,
            }
            for row in pairing.rows
        ],
    }
    return SizingResult(sizing=sizing, pairing=pairing, trace=trace, rules=rules)
