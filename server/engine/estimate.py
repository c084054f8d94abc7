"""The pricing pipeline for a validated request (docs/pricing-rules.md §3 stage P6).

selection §6 → sizing §7 → stock §8 → pricing §9 → totals §10 → review reasons §11 → phase
balance §14, plus the rule applications and the trace of the evidence bundle (§15).

Choices where the spec is silent (docs/conventions.md §10):
* rule ids not spelled out by the spec: ``GATE-1..3`` (applied to ``main``, ``branches``,
  ``accessories``), ``DUP-1`` the transport idempotency key ``request_id`` and ``DUP-2`` the
  business key ``meta.dedup_key`` (recorded when present), ``REV-1`` / ``REV-R`` (see review.py),
  ``SEL-1``..``SEL-5`` (see selection.py), ``STK-1``..``STK-3`` (see stock.py);
* ``PRC-<n>`` rules are applied to ``line <no>``; rules are sorted by (rule_id, applied_to) as
  plain strings;
* warning paths: ``mixed_reason``, ``<line path>.model`` and ``phase_balance``;
* a reviewed breaker line keeps its reason id on the Selection and on the quote line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, TypeVar

from kis_estimator.server.engine.catalog import (
    ACCESSORIES_FILE,
    BREAKERS_FILE,
    ENCLOSURES_FILE,
    SMALL_2P_MODELS,
    Catalog,
    normalise_model,
)
from kis_estimator.server.engine.enclosure_sizing import size_enclosure
from kis_estimator.server.engine.messages import warning_messages
from kis_estimator.server.engine.model import (
    RULES_VERSION,
    BreakerLine,
    CatalogRowRef,
    Decision,
    EstimateRequest,
    Quote,
    Resolution,
    RuleApplication,
    Selection,
    Status,
    Warning,
)
from kis_estimator.server.engine.phase_balance import phase_balance
from kis_estimator.server.engine.pricing import BreakerItem, PricingInput, price_lines, totals
from kis_estimator.server.engine.request import DEFAULT_ENCLOSURE_KIND, DEFAULT_FORM, DEFAULT_MATERIAL
from kis_estimator.server.engine.review import (
    CUSTOM_ENCLOSURE_PRICE,
    NEED_KNOWLEDGE_UPDATE,
    ReviewBook,
    question_custom_enclosure,
    question_no_model,
    question_no_price,
    question_unknown_model,
)
from kis_estimator.server.engine.selection import Gap, LineChoice, LineRequest, effective_brand, select_lines
from kis_estimator.server.engine.stock import choose_enclosure

__all__ = ["price_estimate"]

_T = TypeVar("_T")

SPD_CODE = "spd_4p_40ka"
SPD_MCCB_POLES = 4  # §9 line 4: auto-selected MCCB 4P 40 A
SPD_MCCB_TRIP_AT = 40


def _need(value: _T | None, path: str) -> _T:
    if value is None:
        raise ValueError(f"{path} is absent; price_estimate needs a validated request")
    return value


def _line_request(path: str, line: BreakerLine, brand: str | None, qty: int) -> LineRequest:
    kind = _need(line.kind, f"{path}.kind")
    return LineRequest(
        path=path,
        brand=brand,
        kind=kind,
        poles=_need(line.poles, f"{path}.poles"),
        trip_at=_need(line.trip_at, f"{path}.trip_at"),
        qty=qty,
        high_sensitivity=kind == "ELB" and line.sensitivity_ma == 15,
        frame_af=line.frame_af,
        model=line.model,
    )


def _question(choice: LineChoice, form: str, catalog_version: str) -> tuple[str, str, str]:
    """(path, question_en, question_ko) of a breaker-line gap (§11)."""
    line = choice.line
    if choice.gap is Gap.MODEL_NOT_IN_CATALOG:
        en, ko = question_unknown_model(catalog_version=catalog_version, model=line.model or "")
        return f"{line.path}.model", en, ko
    if choice.gap is Gap.NO_PRICE and choice.row is not None:
        en, ko = question_no_price(catalog_version=catalog_version, item=choice.row.model)
        return line.path, en, ko
    en, ko = question_no_model(
        catalog_version=catalog_version,
        brand=line.brand,
        kind=line.kind,
        poles=line.poles,
        trip_at=line.trip_at,
        frame_af=line.frame_af,
        high_sensitivity=line.high_sensitivity,
        form=form,
    )
    return line.path, en, ko


def _breaker_item(
    choice: LineChoice, index: int, reason_id: str | None, resolution: Resolution | None
) -> tuple[BreakerItem, Selection]:
    """The priced form of a line choice, with a reviewer's answer applied (§11)."""
    line, row = choice.line, choice.row
    price = choice.unit_price_krw
    if row is not None:
        model: str | None = row.model
    else:
        model = line.model  # the requested model of an explicit-model gap, else None
    if resolution is not None:
        price = resolution.unit_price_krw
        if resolution.model is not None:
            model = resolution.model
    # §9 lines 23/27 count the selected row, or a reviewer's model string (§11); never a bare request.
    counted = resolution.model if resolution is not None and resolution.model is not None else None
    if counted is None and row is not None:
        counted = row.model
    small = counted is not None and normalise_model(counted) in SMALL_2P_MODELS
    item = BreakerItem(
        path=line.path,
        index=index,
        kind=line.kind,
        poles=line.poles,
        trip_at=line.trip_at,
        qty=line.qty,
        high_sensitivity=line.high_sensitivity,
        model=model,
        merge_key=normalise_model(row.model) if row is not None and choice.gap is None else None,
        from_catalog=row is not None and (resolution is None or resolution.model is None),
        small_2p=small,
        unit_price_krw=price,
        reason_id=reason_id,
    )
    selection = Selection(
        path=line.path,
        brand=line.brand,
        kind=line.kind,
        poles=line.poles,
        trip_at=line.trip_at,
        qty=line.qty,
        model=model if (row is not None or resolution is not None) else None,
        grade=row.grade if row is not None else None,
        frame_af=row.frame_af if row is not None else None,
        high_sensitivity=line.high_sensitivity,
        unit_price_krw=price,
        explicit_model=line.model is not None,
        reason_id=reason_id,
    )
    return item, selection


def price_estimate(
    req: EstimateRequest, catalog: Catalog, resolutions: Mapping[str, Resolution] | None = None
) -> Quote:
    """Price a request that passed validation (docs/pricing-rules.md §6–§14).

    With ``resolutions`` (reason id → answer) the estimate is re-priced with the answers as
    overrides (§11); sizing and the stock choice never depend on them. Status: COMPLETED/OK without
    review reasons, REVIEWED/OK when every reason is answered, else NEEDS_REVIEW/ABSTAIN.
    """
    brand = _need(req.brand, "brand")
    form = req.form or DEFAULT_FORM
    location = _need(req.location, "installation.location")
    mount = _need(req.mount, "installation.mount")
    material = req.material or DEFAULT_MATERIAL
    enclosure_kind = req.enclosure_kind or DEFAULT_ENCLOSURE_KIND
    main_line = _need(req.main, "main")
    accessories: dict[str, int] = {}
    accessory_paths: dict[str, str] = {}
    if req.accessories_enabled:
        for j, acc_line in enumerate(req.accessory_items):
            code = _need(acc_line.code, f"accessories.items[{j}].code")
            qty = _need(acc_line.qty, f"accessories.items[{j}].qty")
            accessories[code] = accessories.get(code, 0) + qty
            accessory_paths.setdefault(code, f"accessories.items[{j}]")
    warnings: list[Warning] = []
    rules: list[RuleApplication] = []

    # normalise (§2 defaults, §6.3 effective brands)
    if brand != "MIXED" and req.mixed_reason is not None:
        en, ko = warning_messages("MIXED_REASON_IGNORED", brand=brand)
        warnings.append(Warning("MIXED_REASON_IGNORED", "mixed_reason", en, ko))
    main_brand = effective_brand(brand, main_line.brand, main_line.model, catalog)
    lines = [_line_request("main", main_line, main_brand, 1)]
    if accessories.get(SPD_CODE):
        lines.append(LineRequest("spd_mccb", main_brand, "MCCB", SPD_MCCB_POLES, SPD_MCCB_TRIP_AT, 1, False))
    for i, branch in enumerate(req.branches):
        path = f"branches[{i}]"
        line_brand = effective_brand(brand, branch.brand, branch.model, catalog)
        lines.append(_line_request(path, branch, line_brand, _need(branch.qty, f"{path}.qty")))
    branch_units = sum(line.qty for line in lines if line.path.startswith("branches"))
    normalise_trace: dict[str, Any] = {
        "step": "normalise",
        "brand": brand,
        "form": form,
        "location": location,
        "mount": mount,
        "material": material,
        "enclosure_kind": enclosure_kind,
        "custom_price_krw": req.custom_price_krw,
        "floor_standing": req.floor_standing,
        "steel_p_cover": req.steel_p_cover,
        "lines": [
            {
                "path": line.path,
                "effective_brand": line.brand,
                "kind": line.kind,
                "poles": line.poles,
                "trip_at": line.trip_at,
                "qty": line.qty,
                "high_sensitivity": line.high_sensitivity,
                "frame_af": line.frame_af,
                "model": line.model,
                "normalised_model": None if line.model is None else normalise_model(line.model),
            }
            for line in lines
        ],
        "accessories": dict(sorted(accessories.items())),
        "branch_units": branch_units,
    }
    rules.append(
        RuleApplication("GATE-1", "main", f"main {lines[0].kind} {lines[0].poles}P {lines[0].trip_at}A")
    )
    rules.append(RuleApplication("GATE-2", "branches", f"{len(req.branches)} lines, {branch_units} units"))
    rules.append(
        RuleApplication(
            "GATE-3",
            "accessories",
            f"enabled={str(bool(req.accessories_enabled)).lower()}, {len(accessories)} items",
        )
    )

    # select (§6)
    choices = select_lines(lines, form, catalog)
    for choice in choices:
        rules.extend(choice.rules)
        if choice.grade_differs and choice.row is not None:
            en, ko = warning_messages(
                "MODEL_GRADE_DIFFERS_FROM_FORM", model=choice.row.model, grade=choice.row.grade, form=form
            )
            warnings.append(Warning("MODEL_GRADE_DIFFERS_FROM_FORM", f"{choice.line.path}.model", en, ko))

    # size (§7) and stock (§8): never depend on a gap or an answer
    branch_specs = [
        (line.poles, line.trip_at, line.qty) for line in lines if line.path.startswith("branches")
    ]
    sized = size_enclosure(lines[0].poles, lines[0].trip_at, branch_specs)
    rules.extend(sized.rules)
    stock = choose_enclosure(
        sized.sizing,
        location=location,
        mount=mount,
        material=material,
        kind=enclosure_kind,
        custom_price_krw=req.custom_price_krw,
        catalog=catalog,
    )
    rules.extend(stock.rules)

    # review reasons (§11): main, spd_mccb, branches by index, enclosure; accessories while pricing
    book = ReviewBook(resolutions)
    branch_index = {f"branches[{i}]": i for i in range(len(req.branches))}
    items: list[BreakerItem] = []
    selections: list[Selection] = []
    for choice in choices:
        reason_id: str | None = None
        resolution: Resolution | None = None
        if choice.gap is not None:
            path, en, ko = _question(choice, form, catalog.version)
            reason_id, resolution = book.raise_reason(NEED_KNOWLEDGE_UPDATE, path, (en, ko))
        item, selection = _breaker_item(choice, branch_index.get(choice.line.path, 0), reason_id, resolution)
        items.append(item)
        selections.append(selection)
    enclosure = stock.enclosure
    enclosure_reason: str | None = None
    if enclosure.unit_price_krw is None:
        question = question_custom_enclosure(
            width_mm=enclosure.width_mm,
            height_mm=enclosure.height_mm,
            depth_mm=enclosure.depth_mm,
            material=material,
            location=location,
        )
        enclosure_reason, answer = book.raise_reason(CUSTOM_ENCLOSURE_PRICE, "enclosure", question)
        if answer is not None:
            enclosure = replace(enclosure, unit_price_krw=answer.unit_price_krw)

    # price (§9) and totals (§10)
    spd_item = next((item for item in items if item.path == "spd_mccb"), None)
    priced = price_lines(
        PricingInput(
            location=location,
            mount=mount,
            material=material,
            floor_standing=req.floor_standing,
            steel_p_cover=req.steel_p_cover,
            enclosure=enclosure,
            enclosure_reason_id=enclosure_reason,
            main=items[0],
            spd_mccb=spd_item,
            branches=tuple(item for item in items if item.path.startswith("branches")),
            accessories=accessories,
            accessory_paths=accessory_paths,
        ),
        catalog,
        book,
    )
    rules.extend(priced.rules)
    quote_totals = totals(priced.lines)
    unknown = [line.no for line in priced.lines if line.amount_krw is None]
    if quote_totals.total_krw is not None:
        tot_why = (
            f"subtotal {quote_totals.subtotal_krw}, VAT ({quote_totals.subtotal_krw}+5) div 10 = "
            f"{quote_totals.vat_krw}, total {quote_totals.total_krw}"
        )
    else:
        tot_why = f"unknown prices on lines {unknown}: partial subtotal {quote_totals.partial_subtotal_krw}"
    rules.append(RuleApplication("TOT-1", "totals", tot_why))
    rules.extend(book.rules())

    # phase balance (§14)
    phases = phase_balance(lines[0].poles, branch_specs)
    rules.append(
        RuleApplication(
            "PHB-1",
            "phase_balance",
            "main 2P → not applicable"
            if not phases.balance.applicable
            else f"R {phases.balance.r_a}, S {phases.balance.s_a}, T {phases.balance.t_a} → "
            f"{phases.balance.imbalance_pct} %{' > 4.0 %' if phases.exceeds_limit else ''}",
        )
    )
    if phases.exceeds_limit:
        en, ko = warning_messages("PHASE_IMBALANCE", x=str(phases.balance.imbalance_pct))
        warnings.append(Warning("PHASE_IMBALANCE", "phase_balance", en, ko))

    if req.request_id is not None:
        rules.append(RuleApplication("DUP-1", "request_id", f"idempotency key {req.request_id}"))
    if req.dedup_key is not None:
        rules.append(RuleApplication("DUP-2", "meta.dedup_key", f"business duplicate key {req.dedup_key}"))
    if brand == "MIXED":
        rules.append(RuleApplication("MIX-1", "brand", f"MIXED: {req.mixed_reason or ''}"))

    reasons = book.reasons
    if not reasons:
        status, decision = Status.COMPLETED, Decision.OK
    elif book.all_resolved:
        status, decision = Status.REVIEWED, Decision.OK
    else:
        status, decision = Status.NEEDS_REVIEW, Decision.ABSTAIN

    used: set[CatalogRowRef] = {
        CatalogRowRef(BREAKERS_FILE, c.row.line) for c in choices if c.row is not None
    }
    if stock.row is not None:
        used.add(CatalogRowRef(ENCLOSURES_FILE, stock.row.line))
    used.update(CatalogRowRef(ACCESSORIES_FILE, row.line) for row in priced.accessory_rows)

    trace: dict[str, Any] = {
        "catalog_version": catalog.version,
        "rules_version": RULES_VERSION,
        "steps": [
            normalise_trace,
            {"step": "select", "lines": [choice.trace for choice in choices]},
            sized.trace,
            stock.trace,
            priced.trace,
            {
                "step": "totals",
                "subtotal_krw": quote_totals.subtotal_krw,
                "vat_krw": quote_totals.vat_krw,
                "total_krw": quote_totals.total_krw,
                "partial_subtotal_krw": quote_totals.partial_subtotal_krw,
                "unknown_price_lines": unknown,
            },
            phases.trace,
        ],
    }
    return Quote(
        status=status,
        decision=decision,
        catalog_version=catalog.version,
        rules_version=RULES_VERSION,
        enclosure=enclosure,
        sizing=sized.sizing,
        selections=tuple(selections),
        lines=priced.lines,
        totals=quote_totals,
        review_reasons=reasons,
        warnings=tuple(warnings),
        phase_balance=phases.balance,
        rules=tuple(sorted(rules, key=lambda r: (r.rule_id, r.applied_to))),
        trace=trace,
        catalog_rows=tuple(sorted(used, key=lambda ref: (ref.file, ref.line))),
    )
