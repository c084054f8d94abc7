"""Model selection of a breaker line (docs/pricing-rules.md §6, rules ``[SEL-1]``–``[SEL-5]``).

Every breaker line (main, each branch line and the SPD MCCB of §9 line 4) resolves to one catalog
row or to a knowledge gap (§11). A gap is not an error: the request already passed validation.

Rule ids as this module records them (§6.1 names the range, not each step):
``SEL-1`` candidate filter (brand, kind, poles, AT, hs, frame), ``SEL-2`` compact models only for
2P lines, ``SEL-3`` smallest frame, grade pool and cheapest row, ``SEL-4`` explicit model,
``SEL-5`` applicable price (two-price rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kis_estimator.server.engine.catalog import BreakerRow, Catalog, normalise_model
from kis_estimator.server.engine.model import RuleApplication
from kis_estimator.server.engine.models_prefix import model_identity

__all__ = [
    "Gap",
    "LineChoice",
    "LineRequest",
    "effective_brand",
    "select_line",
    "select_lines",
]

FORM_ECONOMIC = "ECONOMIC"
FORM_STANDARD = "STANDARD"


def effective_brand(
    estimate_brand: str, line_brand: str | None, model: str | None, catalog: Catalog
) -> str | None:
    """Effective brand of a line (§6.3); None only under MIXED with an unknown model prefix."""
    if estimate_brand != "MIXED":
        return estimate_brand
    if model is not None:
        identity = model_identity(model, catalog)
        return None if identity is None else identity.brand
    return line_brand


class Gap(StrEnum):
    """Why a line has no usable catalog row or price (§11)."""

    NO_MODEL = "NO_MODEL"  # auto-selection found no row (§6.1)
    MODEL_NOT_IN_CATALOG = "MODEL_NOT_IN_CATALOG"  # explicit model unknown / unknown prefix / no hs twin
    NO_PRICE = "NO_PRICE"  # the chosen row has an empty price


@dataclass(frozen=True, slots=True)
class LineRequest:
    """One breaker line to select: path ``main``, ``spd_mccb`` or ``branches[i]``."""

    path: str
    brand: str | None
    kind: str
    poles: int
    trip_at: int
    qty: int
    high_sensitivity: bool
    frame_af: int | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class LineChoice:
    """The outcome of §6 for one line, with its trace entry and rule applications."""

    line: LineRequest
    row: BreakerRow | None
    unit_price_krw: int | None
    gap: Gap | None
    grade_differs: bool
    trace: dict[str, Any]
    rules: tuple[RuleApplication, ...]


def _describe(row: BreakerRow, trip_at: int) -> dict[str, Any]:
    return {
        "model": row.model,
        "line": row.line,
        "grade": row.grade,
        "frame_af": row.frame_af,
        "compact": row.compact,
        "price_krw": row.price_at(trip_at),
    }


def _sort_price(row: BreakerRow, trip_at: int) -> tuple[int, int, str]:
    # Unknown prices sort last: a row with a known price is preferred (§5.3: empty = unknown).
    price = row.price_at(trip_at)
    return (0 if price is not None else 1, price if price is not None else 0, row.model)


def _auto_select(line: LineRequest, form: str, catalog: Catalog) -> LineChoice:
    """§6.1 auto-selection ``[SEL-1]``–``[SEL-3]`` and the price rule ``[SEL-5]``."""
    path, a = line.path, line.trip_at
    brand = line.brand or ""  # no row has an empty brand: a line without one matches none
    base = [
        row
        for row in catalog.breakers_for(brand, line.kind, line.poles, line.high_sensitivity)
        if a in row.trip_ratings and (line.frame_af is None or row.frame_af == line.frame_af)
    ]
    candidates = [row for row in base if not row.compact or line.poles == 2]
    rules = [
        RuleApplication(
            "SEL-1",
            path,
            f"{line.brand} {line.kind} {line.poles}P {a}A hs={int(line.high_sensitivity)}"
            f"{'' if line.frame_af is None else f' frame {line.frame_af}AF'} → {len(base)} rows",
        ),
        RuleApplication(
            "SEL-2",
            path,
            f"{line.poles}P: compact {'allowed' if line.poles == 2 else 'excluded'} "
            f"→ {len(candidates)} candidates",
        ),
    ]
    trace: dict[str, Any] = {
        "path": path,
        "mode": "auto",
        "brand": line.brand,
        "kind": line.kind,
        "poles": line.poles,
        "trip_at": a,
        "high_sensitivity": line.high_sensitivity,
        "frame_af": line.frame_af,
        "form": form,
        "candidates": [_describe(row, a) for row in candidates],
    }
    pool: list[BreakerRow] = []
    f_star: int | None = None
    pool_grade = ""
    if form == FORM_STANDARD:
        standard = [row for row in candidates if row.grade in ("STD", "BOTH")]
        if standard:
            f_star = min(row.frame_af for row in standard)
            pool = [row for row in standard if row.frame_af == f_star]
            pool_grade = "STD/BOTH"
    elif candidates:
        f_star = min(row.frame_af for row in candidates)
        pool = [row for row in candidates if row.frame_af == f_star and row.grade in ("ECO", "BOTH")]
        pool_grade = "ECO/BOTH"
        if not pool:
            pool = [row for row in candidates if row.frame_af == f_star and row.grade == "STD"]
            pool_grade = "STD (fallback)"
    trace["frame_star"] = f_star
    trace["grade_pool"] = pool_grade
    trace["pool"] = [row.model for row in pool]
    if not pool:
        rules.append(RuleApplication("SEL-3", path, f"form {form}: no candidate → knowledge gap"))
        trace["chosen"] = None
        return LineChoice(line, None, None, Gap.NO_MODEL, False, trace, tuple(rules))
    row = min(pool, key=lambda r: _sort_price(r, a))
    price = row.price_at(a)
    rules.append(
        RuleApplication(
            "SEL-3", path, f"form {form}: F*={f_star}, pool {pool_grade} {len(pool)} rows → {row.model}"
        )
    )
    return _finish(line, row, price, False, trace, rules)


def _finish(
    line: LineRequest,
    row: BreakerRow,
    price: int | None,
    grade_differs: bool,
    trace: dict[str, Any],
    rules: list[RuleApplication],
) -> LineChoice:
    a = line.trip_at
    top = max(row.trip_ratings)
    high = row.price_high_krw is not None and a == top and top > 100
    rules.append(
        RuleApplication(
            "SEL-5",
            line.path,
            f"{row.model} at {a}A (top rating {top}A) → "
            f"{'price_high_krw' if high else 'price_krw'}={'unknown' if price is None else price}",
        )
    )
    trace["chosen"] = _describe(row, a)
    trace["applicable_price_krw"] = price
    gap = Gap.NO_PRICE if price is None else None
    return LineChoice(line, row, price, gap, grade_differs, trace, tuple(rules))


def _explicit_select(line: LineRequest, form: str, catalog: Catalog) -> LineChoice:
    """§6.2 explicit model ``[SEL-4]``: the row (normalised model, hs), else a knowledge gap."""
    path = line.path
    model = line.model or ""
    row = catalog.breaker(model, line.high_sensitivity)
    trace: dict[str, Any] = {
        "path": path,
        "mode": "explicit",
        "model": model,
        "normalised_model": normalise_model(model),
        "high_sensitivity": line.high_sensitivity,
        "brand": line.brand,
        "form": form,
    }
    if row is None:
        why = "no row for this high-sensitivity variant" if catalog.has_model(model) else "not in catalog"
        rules = [RuleApplication("SEL-4", path, f"model {model}: {why} → knowledge gap")]
        trace["chosen"] = None
        return LineChoice(line, None, None, Gap.MODEL_NOT_IN_CATALOG, False, trace, tuple(rules))
    grade_differs = form == FORM_STANDARD and row.grade == "ECO"
    rules = [RuleApplication("SEL-4", path, f"model {model} → {row.model} (grade {row.grade}, form {form})")]
    return _finish(line, row, row.price_at(line.trip_at), grade_differs, trace, rules)


def select_line(line: LineRequest, form: str, catalog: Catalog) -> LineChoice:
    """Resolve one breaker line per §6: explicit model (§6.2) or auto-selection (§6.1)."""
    if line.model is not None:
        return _explicit_select(line, form, catalog)
    if line.brand is None:
        # §6.3: the SPD MCCB under MIXED when the main's model prefix is unknown.
        trace: dict[str, Any] = {"path": line.path, "mode": "auto", "brand": None, "chosen": None}
        rule = RuleApplication("SEL-1", line.path, "effective brand unknown → knowledge gap")
        return LineChoice(line, None, None, Gap.NO_MODEL, False, trace, (rule,))
    return _auto_select(line, form, catalog)


def select_lines(lines: Sequence[LineRequest], form: str, catalog: Catalog) -> tuple[LineChoice, ...]:
    """Resolve many lines; identical auto-selection inputs are computed once."""
    cache: dict[LineRequest, LineChoice] = {}
    out = []
    for line in lines:
        key = LineRequest(
            "",
            line.brand,
            line.kind,
            line.poles,
            line.trip_at,
            0,
            line.high_sensitivity,
            line.frame_af,
            line.model,
        )
        hit = cache.get(key)
        if hit is None:
            hit = select_line(key, form, catalog)
            cache[key] = hit
        out.append(_relabel(hit, line))
    return tuple(out)


def _relabel(choice: LineChoice, line: LineRequest) -> LineChoice:
    trace = dict(choice.trace)
    trace["path"] = line.path
    rules = tuple(RuleApplication(r.rule_id, line.path, r.why) for r in choice.rules)
    return LineChoice(line, choice.row, choice.unit_price_krw, choice.gap, choice.grade_differs, trace, rules)
