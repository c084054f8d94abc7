"""Quote lines and totals (docs/pricing-rules.md §9 ``[PRC-*]`` and §10 ``[TOT-1]``).

Lines follow the ``#`` column of the §9 table and are numbered 1…n; a line whose qty would be 0 is
omitted. Each line's ``rule_id`` is ``PRC-<#>``. Size-dependent prices use the *final* enclosure's
W and H (§8, §20). Money is integer KRW; busbar kg is an exact 2-decimal ``Decimal``; the base and
the steel P-cover use exact fractions rounded half-up to 100 KRW.

Choices where the spec is silent (documented here, docs/conventions.md §10):
* a breaker line with no catalog row prints ``{p}P {AT}A`` (auto-selection gap) or the requested
  model (explicit gap); after review it prints the reviewer's model. Lines not resolved from the
  catalog are never merged and sort after catalog models, also after review, so a reviewed quote
  keeps the line order of the quote it answers;
* a knowledge gap of an accessory row (empty ``price_krw``) is raised in line order, at path
  ``accessories.items[j]`` for a requested item, else at the catalog code (an automatic row);
* ACCESSORIES_OPTIONAL lines carry the catalog name as ``name`` and an empty ``spec``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from kis_estimator.server.engine.catalog import AccessoryRow, Catalog
from kis_estimator.server.engine.enclosure_sizing import frame_class
from kis_estimator.server.engine.model import Enclosure, PricedLine, RuleApplication, Totals
from kis_estimator.server.engine.review import NEED_KNOWLEDGE_UPDATE, ReviewBook, question_no_price

__all__ = [
    "BreakerItem",
    "PricingInput",
    "PricingResult",
    "busbar_kg",
    "half_up_100",
    "price_lines",
    "steps",
    "totals",
    "vat_krw",
]

ENCLOSURE = "ENCLOSURE"
MAIN_BREAKER = "MAIN_BREAKER"
BRANCH_BREAKERS = "BRANCH_BREAKERS"
ACCESSORIES_REQUIRED = "ACCESSORIES_REQUIRED"
ACCESSORIES_OPTIONAL = "ACCESSORIES_OPTIONAL"
BUSBAR = "BUSBAR"
SUPPORTS = "SUPPORTS"
COSTS = "COSTS"

# §9 line 15 order.
OPTIONAL_ACCESSORIES = (
    "shunt_trip",
    "alarm_switch",
    "ammeter",
    "voltmeter",
    "emergency_stop",
    "indicator_lamp",
)
_LOCATION_TEXT = {"INDOOR": "옥내", "OUTDOOR": "옥외"}
_MOUNT_TEXT = {"FLUSH": "매입", "SURFACE": "노출"}
_MATERIAL_TEXT = {"STEEL_1_0": "STEEL 1.0T", "STEEL_1_6": "STEEL 1.6T", "SUS201_1_2": "SUS201 1.2T"}
_KG = Decimal("0.01")
_MAIN_BUSBAR_K = (Decimal("0.000007"), Decimal("0.000013"), Decimal("0.000015"))  # §9 line 16
_BRANCH_BUSBAR_K = (Decimal("0.0000045"), Decimal("0.000007"), Decimal("0.000009"))  # §9 line 17
_FACE_RATE_MM2 = 90_000  # base and steel P-cover: rate per 90,000 mm² (§9 lines 2, 25)
_BASE_HEIGHT_MM = 200
_CONSUMABLES_CAP_KRW = 42_000  # §9 line 26
_CONSUMABLES_BASE_KRW = 7_000
_CONSUMABLES_STEP_KRW = 1_000
_CONSUMABLES_PER_ACCESSORY_KRW = 12_000
_ACRYLIC_STEP_KRW = 1_000  # §9 line 25
_MAGNET_LABOUR_KRW = 20_000  # §9 line 28
_ET_UNITS_PER_TERMINAL = 12  # §9 line 18


def steps(x: int, base: int) -> int:
    """steps(x, base) = ceil(max(0, x − base) / 100) (§1)."""
    return -(-max(0, x - base) // 100)


def half_up_100(numerator: int, denominator: int) -> int:
    """numerator/denominator (≥ 0) rounded half-up to a multiple of 100 KRW."""
    return (2 * numerator + 100 * denominator) // (200 * denominator) * 100


def busbar_kg(width_mm: int, height_mm: int, factor: Decimal) -> Decimal:
    """kg = half-up₂(W × H × k), exact decimal (§9 lines 16–17)."""
    return (Decimal(width_mm * height_mm) * factor).quantize(_KG, rounding=ROUND_HALF_UP)


def vat_krw(subtotal_krw: int) -> int:
    """10 % VAT half-up to 1 KRW = (subtotal + 5) div 10 (§10)."""
    return (subtotal_krw + 5) // 10


def totals(lines: Sequence[PricedLine]) -> Totals:
    """§10 ``[TOT-1]``: null totals while any price is unknown; partial = Σ known amounts."""
    known = sum(line.amount_krw for line in lines if line.amount_krw is not None)
    if any(line.amount_krw is None for line in lines):
        return Totals(None, None, None, known)
    vat = vat_krw(known)
    return Totals(known, vat, known + vat, known)


@dataclass(frozen=True, slots=True)
class BreakerItem:
    """A breaker line ready to price (§9 lines 3–5).

    ``model`` is the printed model (catalog spelling, the reviewer's model, or the requested model
    of an explicit-model gap; None for an unresolved auto-selection). ``from_catalog`` marks a line
    resolved from the catalog (mergeable). ``index`` is the branch line index (0 for main/SPD).
    """

    path: str
    index: int
    kind: str
    poles: int
    trip_at: int
    qty: int
    high_sensitivity: bool
    model: str | None
    merge_key: str | None
    from_catalog: bool
    small_2p: bool
    unit_price_krw: int | None
    reason_id: str | None


@dataclass(frozen=True, slots=True)
class PricingInput:
    """Everything §9 needs once selection, sizing, stock and review ids are known."""

    location: str
    mount: str
    material: str
    floor_standing: bool
    steel_p_cover: bool
    enclosure: Enclosure
    enclosure_reason_id: str | None
    main: BreakerItem
    spd_mccb: BreakerItem | None
    branches: tuple[BreakerItem, ...]
    accessories: Mapping[str, int]  # requested code -> qty
    accessory_paths: Mapping[str, str]  # requested code -> ``accessories.items[j]``


@dataclass(frozen=True, slots=True)
class PricingResult:
    lines: tuple[PricedLine, ...]
    accessory_rows: tuple[AccessoryRow, ...]
    trace: dict[str, Any]
    rules: tuple[RuleApplication, ...]


class _Lines:
    """Numbers the lines and records trace entries, rules and accessory rows used."""

    def __init__(self, catalog: Catalog, book: ReviewBook, paths: Mapping[str, str]) -> None:
        self.catalog = catalog
        self.book = book
        self.paths = paths
        self.lines: list[PricedLine] = []
        self.trace: list[dict[str, Any]] = []
        self.rules: list[RuleApplication] = []
        self.rows: dict[str, AccessoryRow] = {}
        self.reasons: dict[str, tuple[str, int | None]] = {}

    def price_of(self, code: str) -> tuple[int | None, str | None]:
        """Catalog price of an accessory row, raising a review reason once if it is empty (§5.3)."""
        row = self.catalog.accessory(code)
        self.rows[code] = row
        if row.price_krw is not None:
            return row.price_krw, None
        if code not in self.reasons:
            path = self.paths.get(code, code)
            question = question_no_price(catalog_version=self.catalog.version, item=f"{row.name} ({code})")
            reason_id, resolution = self.book.raise_reason(NEED_KNOWLEDGE_UPDATE, path, question)
            self.reasons[code] = (reason_id, None if resolution is None else resolution.unit_price_krw)
        reason_id, answered = self.reasons[code]
        return answered, reason_id

    def add(
        self,
        rule: int,
        section: str,
        name: str,
        spec: str,
        unit: str,
        qty: int,
        unit_price: int | None,
        *,
        reason_id: str | None = None,
        notes: str = "",
        why: str = "",
        inputs: Mapping[str, Any] | None = None,
    ) -> None:
        if qty == 0:
            return
        amount = None if unit_price is None else qty * unit_price
        self._append(
            rule, section, name, spec, unit, qty, None, unit_price, amount, reason_id, notes, why, inputs
        )

    def add_kg(
        self,
        rule: int,
        name: str,
        spec: str,
        kg: Decimal,
        unit_price: int | None,
        *,
        reason_id: str | None,
        why: str,
        inputs: Mapping[str, Any],
    ) -> None:
        amount = None if unit_price is None else int(kg * unit_price)
        self._append(rule, BUSBAR, name, spec, "KG", None, kg, unit_price, amount, reason_id, "", why, inputs)

    def _append(
        self,
        rule: int,
        section: str,
        name: str,
        spec: str,
        unit: str,
        qty: int | None,
        kg: Decimal | None,
        unit_price: int | None,
        amount: int | None,
        reason_id: str | None,
        notes: str,
        why: str,
        inputs: Mapping[str, Any] | None,
    ) -> None:
        no = len(self.lines) + 1
        rule_id = f"PRC-{rule}"
        self.lines.append(
            PricedLine(
                no=no,
                section=section,
                name=name,
                spec=spec,
                unit=unit,
                qty=qty,
                qty_kg=kg,
                unit_price_krw=unit_price,
                amount_krw=amount,
                rule_id=rule_id,
                notes=notes,
                reason_id=reason_id,
            )
        )
        price_text = "unknown" if unit_price is None else str(unit_price)
        qty_text = str(kg) if kg is not None else str(qty)
        detail = f"{why} → " if why else ""
        self.rules.append(RuleApplication(rule_id, f"line {no}", f"{detail}{qty_text} × {price_text}"))
        entry: dict[str, Any] = {
            "no": no,
            "rule_id": rule_id,
            "name": name,
            "spec": spec,
            "unit": unit,
            "qty": str(kg) if kg is not None else qty,
            "unit_price_krw": unit_price,
            "amount_krw": amount,
        }
        if reason_id is not None:
            entry["reason_id"] = reason_id
        if inputs:
            entry["inputs"] = dict(inputs)
        self.trace.append(entry)


def _breaker_spec(item: BreakerItem) -> str:
    text = f"{item.poles}P {item.trip_at}A"
    if item.model is not None:
        text += f" ({item.model})"
    if item.high_sensitivity:
        text += " 고감도"
    return text


def _branch_order(group: Sequence[BreakerItem]) -> tuple[int, int, int, int, str, int, int]:
    # §9 line 5: poles desc, AT desc, MCCB before ELB, model ASCII (unresolved last), hs 0 before 1,
    # first line index.
    first = group[0]
    model = first.model if first.from_catalog and first.model is not None else ""
    return (
        -first.poles,
        -first.trip_at,
        0 if first.kind == "MCCB" else 1,
        0 if first.from_catalog else 1,
        model,
        int(first.high_sensitivity),
        first.index,
    )


def _merge_branches(branches: Sequence[BreakerItem]) -> list[list[BreakerItem]]:
    """§9 line 5: merge lines with equal (normalised model, hs, AT); unresolved lines never merge."""
    groups: dict[tuple[str, bool, int], list[BreakerItem]] = {}
    out: list[list[BreakerItem]] = []
    for item in branches:
        if item.from_catalog and item.merge_key is not None:
            key = (item.merge_key, item.high_sensitivity, item.trip_at)
            if key in groups:
                groups[key].append(item)
                continue
            groups[key] = [item]
            out.append(groups[key])
        else:
            out.append([item])
    out.sort(key=_branch_order)
    return out


def _frame_tier(frame: int) -> int:
    """Tier of the main frame class F for E.T prices (§9 line 18): 0 F ≤ 250, 1 F = 400, 2 F ≥ 600."""
    if frame <= 250:
        return 0
    if frame == 400:
        return 1
    return 2


def _busbar_tier(main_trip_at: int) -> int:
    """Busbar factor tier by main AT (§9 lines 16–17): ≤ 250, 251–400, ≥ 401."""
    if main_trip_at <= 250:
        return 0
    if main_trip_at <= 400:
        return 1
    return 2


def _busbar_spec(main_trip_at: int) -> str:
    """Busbar spec by main AT (§9 line 16)."""
    if main_trip_at <= 100:
        return "3T*15"
    if main_trip_at <= 250:
        return "5T*20"
    if main_trip_at <= 400:
        return "6T*30"
    return "8T*40"


def _enclosure_spec(inp: PricingInput) -> str:
    enc = inp.enclosure
    place = f"{_LOCATION_TEXT[inp.location]}{_MOUNT_TEXT[inp.mount]} {_MATERIAL_TEXT[inp.material]}"
    box = enc.model if enc.model is not None else "제작함"
    return f"{place}, ({box}), {enc.width_mm}x{enc.height_mm}x{enc.depth_mm}"


def price_lines(inp: PricingInput, catalog: Catalog, book: ReviewBook) -> PricingResult:
    """All §9 lines in order for one estimate; unknown prices stay None with their reason id."""
    out = _Lines(catalog, book, inp.accessory_paths)
    enc = inp.enclosure
    w, h = enc.width_mm, enc.height_mm
    main_at = inp.main.trip_at
    f = frame_class(main_at)
    n = sum(item.qty for item in inp.branches)
    acc = inp.accessories
    magnets = acc.get("magnet_mc22", 0)
    timers = acc.get("timer_24h", 0)
    pbl = acc.get("pbl_onoff", 0)
    acc_total = sum(acc.values())

    # 1 enclosure
    out.add(
        1,
        ENCLOSURE,
        "외함",
        _enclosure_spec(inp),
        "면",
        1,
        enc.unit_price_krw,
        reason_id=inp.enclosure_reason_id,
        why=f"{enc.kind} {enc.model or 'custom'}",
    )
    # 2 base
    if inp.floor_standing:
        rate, reason = out.price_of("base")
        price = None if rate is None else half_up_100(w * _BASE_HEIGHT_MM * rate, _FACE_RATE_MM2)
        out.add(
            2,
            ENCLOSURE,
            "베이스",
            f"{w}x{_BASE_HEIGHT_MM}x{enc.depth_mm}",
            "EA",
            1,
            price,
            reason_id=reason,
            why=f"{w}×200/90000×{rate} half-up 100",
            inputs={"W": w, "rate_krw": rate},
        )
    # 3 main breaker, 4 SPD MCCB
    main = inp.main
    out.add(
        3,
        MAIN_BREAKER,
        main.kind,
        _breaker_spec(main),
        "EA",
        1,
        main.unit_price_krw,
        reason_id=main.reason_id,
        notes=main.path,
        why=f"{main.path} {main.model or 'unresolved'}",
    )
    if inp.spd_mccb is not None:
        spd = inp.spd_mccb
        model = f" ({spd.model})" if spd.model is not None else ""
        out.add(
            4,
            MAIN_BREAKER,
            "MCCB",
            f"4P 40A{model} (SPD용)",
            "EA",
            1,
            spd.unit_price_krw,
            reason_id=spd.reason_id,
            notes=spd.path,
            why=f"spd_mccb {spd.model or 'unresolved'}",
        )
    # 5 branch breakers
    for group in _merge_branches(inp.branches):
        first = group[0]
        qty = sum(item.qty for item in group)
        paths = ", ".join(item.path for item in group)
        out.add(
            5,
            BRANCH_BREAKERS,
            first.kind,
            _breaker_spec(first),
            "EA",
            qty,
            first.unit_price_krw,
            reason_id=first.reason_id,
            notes=paths,
            why=f"{paths} {first.model or 'unresolved'}",
        )
    # 6-14 required accessories and their sub-materials
    spd_qty = acc.get("spd_4p_40ka", 0)
    if spd_qty:
        price, reason = out.price_of("spd_4p_40ka")
        out.add(6, ACCESSORIES_REQUIRED, "SPD 직결형", "4P 40kA", "EA", spd_qty, price, reason_id=reason)
        price, reason = out.price_of("cable_wire_spd")
        out.add(7, ACCESSORIES_REQUIRED, "CABLE/WIRE", "KIV (SPD)", "식", 1, price, reason_id=reason)
    if magnets:
        price, reason = out.price_of("magnet_mc22")
        out.add(8, ACCESSORIES_REQUIRED, "MAG.CONTACTOR", "MC-22", "EA", magnets, price, reason_id=reason)
        price, reason = out.price_of("fuse_holder_4a")
        out.add(9, ACCESSORIES_REQUIRED, "FUSEHOLDER", "4A", "EA", 1, price, reason_id=reason)
        price, reason = out.price_of("terminal_block_600v")
        out.add(10, ACCESSORIES_REQUIRED, "TERMINAL BLOCK", "600V", "EA", magnets, price, reason_id=reason)
        price, reason = out.price_of("pvc_duct_40")
        out.add(
            11,
            ACCESSORIES_REQUIRED,
            "PVC DUCT",
            "40mm",
            "EA",
            2 * magnets,
            price,
            reason_id=reason,
            why="2 × M",
        )
        price, reason = out.price_of("cable_wire_magnet")
        out.add(
            12, ACCESSORIES_REQUIRED, "CABLE/WIRE", "KIV (MAGNET)", "식", magnets, price, reason_id=reason
        )
    if timers:
        price, reason = out.price_of("timer_24h")
        out.add(13, ACCESSORIES_REQUIRED, "TIMER", "24H", "EA", timers, price, reason_id=reason)
    if pbl + timers:
        price, reason = out.price_of("pbl_onoff")
        out.add(
            14,
            ACCESSORIES_REQUIRED,
            "PBL",
            "ON/OFF/SS" if timers else "ON/OFF",
            "EA",
            pbl + timers,
            price,
            reason_id=reason,
            why=f"Pq {pbl} + Tm {timers}",
        )
    # 15 optional accessories
    for code in OPTIONAL_ACCESSORIES:
        qty = acc.get(code, 0)
        if qty:
            price, reason = out.price_of(code)
            name = catalog.accessory(code).name
            out.add(15, ACCESSORIES_OPTIONAL, name, "", "EA", qty, price, reason_id=reason, notes=code)
    # 16-17 busbars
    spec = _busbar_spec(main_at)
    tier = _busbar_tier(main_at)
    for rule, name, code, factor in (
        (16, "MAIN BUS-BAR", "busbar_main", _MAIN_BUSBAR_K[tier]),
        (17, "BUS-BAR", "busbar_branch", _BRANCH_BUSBAR_K[tier]),
    ):
        kg = busbar_kg(w, h, factor)
        price, reason = out.price_of(code)
        out.add_kg(
            rule,
            name,
            spec,
            kg,
            price,
            reason_id=reason,
            why=f"{w}×{h}×{factor} = {Decimal(w * h) * factor} → {kg} kg",
            inputs={
                "W": w,
                "H": h,
                "k": str(factor),
                "kg_exact": str(Decimal(w * h) * factor),
                "kg": str(kg),
            },
        )
    # 18-25 supports
    frame_tier = _frame_tier(f)
    et_code = ("et_250af", "et_400af", "et_800af")[frame_tier]
    price, reason = out.price_of(et_code)
    et_qty = -(-n // _ET_UNITS_PER_TERMINAL)
    out.add(
        18, SUPPORTS, "E.T", "", "EA", et_qty, price, reason_id=reason, why=f"ceil({n}/12), F={f} → {et_code}"
    )
    price, reason = out.price_of("nt")
    out.add(19, SUPPORTS, "N.T", "", "EA", 1, price, reason_id=reason)
    price, reason = out.price_of("np_3t_40_200")
    out.add(20, SUPPORTS, "N.P", "3T*40*200", "EA", 1, price, reason_id=reason)
    price, reason = out.price_of("np_card_holder")
    out.add(21, SUPPORTS, "N.P CARD HOLDER", "", "EA", n, price, reason_id=reason, why=f"N={n}")
    insulator = "insulator_250af" if f <= 250 else "insulator_800af"
    price, reason = out.price_of(insulator)
    out.add(22, SUPPORTS, "INSULATOR", "EPOXY 40*40", "EA", 4, price, reason_id=reason, why=f"F={f}")
    small_units = sum(item.qty for item in inp.branches if item.small_2p)
    supports = small_units + (1 if main.small_2p else 0)
    if supports:
        price, reason = out.price_of("elb_support")
        out.add(
            23,
            SUPPORTS,
            "ELB지지대",
            "",
            "EA",
            supports,
            price,
            reason_id=reason,
            why="small 2P units (main + branches)",
        )
    coating = "coating_250af" if f <= 250 else "coating_800af"
    price, reason = out.price_of(coating)
    out.add(24, SUPPORTS, "COATING", "PVC", "EA", 1, price, reason_id=reason, why=f"F={f}")
    _p_cover(out, inp, f, w, h)
    # 26-28 costs
    steps_w, steps_h = steps(w, 600), steps(h, 700)
    raw = (
        _CONSUMABLES_BASE_KRW
        + _CONSUMABLES_STEP_KRW * (steps_w + steps_h)
        + _CONSUMABLES_PER_ACCESSORY_KRW * acc_total
    )
    consumables = min(_CONSUMABLES_CAP_KRW, raw)
    out.add(
        26,
        COSTS,
        "잡자재비",
        "",
        "식",
        1,
        consumables,
        why=f"min(42000, 7000+1000×({steps_w}+{steps_h})+12000×{acc_total}={raw})",
        inputs={"steps_w": steps_w, "steps_h": steps_h, "accessory_count": acc_total, "uncapped_krw": raw},
    )
    assembly, why = _assembly(f, h, small_units, n)
    out.add(
        27, COSTS, "ASSEMBLY CHARGE", "", "식", 1, assembly, why=why, inputs={"small_2p_units": small_units}
    )
    if magnets:
        out.add(
            28,
            COSTS,
            "MAGNET LABOUR",
            f"MC x{magnets}",
            "식",
            1,
            _MAGNET_LABOUR_KRW * magnets,
            why=f"20000 × {magnets}",
        )
    trace: dict[str, Any] = {
        "step": "price",
        "final_size": {"W": w, "H": h, "D": enc.depth_mm},
        "main_frame_class": f,
        "branch_units": n,
        "accessory_count": acc_total,
        "lines": out.trace,
    }
    rows = tuple(sorted(out.rows.values(), key=lambda row: row.line))
    return PricingResult(lines=tuple(out.lines), accessory_rows=rows, trace=trace, rules=tuple(out.rules))


def _p_cover(out: _Lines, inp: PricingInput, f: int, w: int, h: int) -> None:
    """§9 line 25: steel by face area (half-up 100 KRW) or acrylic by frame tier."""
    if inp.steel_p_cover:
        rate, reason = out.price_of("p_cover_steel")
        price = None if rate is None else half_up_100(w * h * rate, _FACE_RATE_MM2)
        why = f"{w}×{h}/90000×{rate} half-up 100"
        out.add(25, SUPPORTS, "P-COVER", "STEEL", "EA", 1, price, reason_id=reason, why=why)
        return
    if f <= 100:
        code, step = "p_cover_acrylic_100af", steps(h, 600)
    elif f <= 250:
        code, step = "p_cover_acrylic_250af", steps(h, 800)
    elif f == 400:
        code, step = "p_cover_acrylic_400af", 0
    else:
        code, step = "p_cover_acrylic_800af", 0
    base, reason = out.price_of(code)
    price = None if base is None else base + _ACRYLIC_STEP_KRW * step
    why = f"F={f}: {code} {base} + 1000×{step}"
    out.add(25, SUPPORTS, "P-COVER", "아크릴", "EA", 1, price, reason_id=reason, why=why)


def _assembly(f: int, h: int, small_units: int, n: int) -> tuple[int, str]:
    """§9 line 27 unit price and its ``why``; the small-breaker exception is added (§20)."""
    if f <= 100:
        base, rate, step = 50_000, 15_000, steps(h, 700)
    elif f <= 250:
        base, rate, step = 60_000, 15_000, steps(h, 800)
    elif f == 400:
        base, rate, step = 130_000, 20_000, steps(h, 1200)
    else:
        base, rate, step = 250_000, 40_000, steps(h, 1600)
    price = base + rate * step
    why = f"F={f}: {base}+{rate}×{step}"
    if 2 * small_units > n:
        extra = 10_000 if f <= 250 else 15_000
        price += extra
        why += f" + {extra} (small 2P {small_units} of {n})"
    return price, why
