"""Stock enclosure selection (docs/pricing-rules.md §8, rules ``[STK-*]``).

``STK-1`` series order for (location, material), ``STK-2`` cheapest fitting stock row,
``STK-3`` custom enclosure (requested, or no series has a fitting row).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kis_estimator.server.engine.catalog import Catalog, EnclosureRow
from kis_estimator.server.engine.model import Enclosure, RuleApplication, Sizing

__all__ = [
    "SERIES_BY_PLACE",
    "StockResult",
    "choose_enclosure",
]

KIND_STOCK = "STOCK"
KIND_CUSTOM = "CUSTOM"

# §8 series searched, in order; OUTDOOR + STEEL_1_0 has none (always custom, §20).
SERIES_BY_PLACE: Mapping[tuple[str, str], tuple[str, ...]] = {
    ("INDOOR", "STEEL_1_0"): ("HB",),
    ("INDOOR", "STEEL_1_6"): ("HS", "HDS"),
    ("INDOOR", "SUS201_1_2"): ("SHDS",),
    ("OUTDOOR", "STEEL_1_6"): ("HT",),
    ("OUTDOOR", "SUS201_1_2"): ("SC",),
    ("OUTDOOR", "STEEL_1_0"): (),
}


@dataclass(frozen=True, slots=True)
class StockResult:
    """The final enclosure (price None = unknown custom price), its row, trace step and rules."""

    enclosure: Enclosure
    row: EnclosureRow | None
    trace: dict[str, Any]
    rules: tuple[RuleApplication, ...]


def _rank(row: EnclosureRow) -> tuple[int, int, str]:
    # §8 [STK-2]: cheapest, then smaller volume, then model in ASCII order.
    return (row.price_krw, row.width_mm * row.height_mm * row.depth_mm, row.model)


def choose_enclosure(
    sizing: Sizing,
    *,
    location: str,
    mount: str,
    material: str,
    kind: str,
    custom_price_krw: int | None,
    catalog: Catalog,
) -> StockResult:
    """Final enclosure of §8 for the computed size; mount has no effect on the choice."""
    w, h, d = sizing.width_mm, sizing.height_mm, sizing.depth_mm
    tried: list[dict[str, Any]] = []
    rules: list[RuleApplication] = []
    chosen: EnclosureRow | None = None
    if kind == KIND_STOCK:
        series_order = SERIES_BY_PLACE[(location, material)]
        rules.append(
            RuleApplication(
                "STK-1",
                "enclosure",
                f"{location}/{material} → series {', '.join(series_order) if series_order else 'none'}",
            )
        )
        for series in series_order:
            fits = [
                row
                for row in catalog.enclosures_of(series)
                if row.width_mm >= w and row.height_mm >= h and row.depth_mm >= d
            ]
            tried.append({"series": series, "fits": len(fits)})
            if fits:
                chosen = min(fits, key=_rank)
                break
    size = f"{w}x{h}x{d}"
    if chosen is not None:
        rules.append(
            RuleApplication(
                "STK-2",
                "enclosure",
                f"{size}: {chosen.series} has {tried[-1]['fits']} fitting rows "
                f"→ {chosen.model} {chosen.width_mm}x{chosen.height_mm}x{chosen.depth_mm} "
                f"at {chosen.price_krw}",
            )
        )
        enclosure = Enclosure(
            kind=KIND_STOCK,
            series=chosen.series,
            model=chosen.model,
            material=material,
            location=location,
            mount=mount,
            width_mm=chosen.width_mm,
            height_mm=chosen.height_mm,
            depth_mm=chosen.depth_mm,
            unit_price_krw=chosen.price_krw,
        )
        result: dict[str, Any] = {"kind": KIND_STOCK, "model": chosen.model, "line": chosen.line}
    else:
        why = "custom requested" if kind == KIND_CUSTOM else "no stock row fits"
        price = "unknown" if custom_price_krw is None else str(custom_price_krw)
        rules.append(RuleApplication("STK-3", "enclosure", f"{size}: {why} → custom at {price}"))
        enclosure = Enclosure(
            kind=KIND_CUSTOM,
            series=None,
            model=None,
            material=material,
            location=location,
            mount=mount,
            width_mm=w,
            height_mm=h,
            depth_mm=d,
            unit_price_krw=custom_price_krw,
        )
        result = {"kind": KIND_CUSTOM, "reason": why, "custom_price_krw": custom_price_krw}
    trace: dict[str, Any] = {
        "step": "stock",
        "requested_kind": kind,
        "location": location,
        "material": material,
        "computed_size": [w, h, d],
        "series_tried": tried,
        "chosen": result,
        "final_size": [enclosure.width_mm, enclosure.height_mm, enclosure.depth_mm],
    }
    return StockResult(enclosure=enclosure, row=chosen, trace=trace, rules=tuple(rules))
