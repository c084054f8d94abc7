"""Value objects of the estimator domain (docs/pricing-rules.md §2, §9-§16).

Pure data: no gRPC, SQL or clock. Requests arrive here already trimmed, with empty strings
turned into ``None`` (docs/pricing-rules.md §2: "an empty string counts as absent"); anything else about
them may still be invalid — :mod:`kis_estimator.server.engine.validation` says what.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

RULES_VERSION = "KIS-RULES-1.0"


class Status(StrEnum):
    COMPLETED = "COMPLETED"
    NEEDS_REVIEW = "NEEDS_REVIEW"
    REVIEWED = "REVIEWED"
    REJECTED = "REJECTED"


class Decision(StrEnum):
    OK = "OK"
    ABSTAIN = "ABSTAIN"
    REJECT = "REJECT"


# --------------------------------------------------------------------------- request (§2)


@dataclass(frozen=True, slots=True)
class BreakerLine:
    """The main breaker or one branch line; ``qty`` and ``remark`` exist on branches only."""

    kind: str | None = None
    poles: int | None = None
    trip_at: int | None = None
    frame_af: int | None = None
    model: str | None = None
    brand: str | None = None
    sensitivity_ma: int | None = None
    qty: int | None = None
    remark: str | None = None


@dataclass(frozen=True, slots=True)
class AccessoryLine:
    code: str | None = None
    qty: int | None = None


@dataclass(frozen=True, slots=True)
class EstimateRequest:
    """A CreateEstimate request as the engine sees it (field names follow docs/pricing-rules.md §2 paths).

    ``accessories_present`` distinguishes an absent ``accessories`` message from one whose
    ``enabled`` is absent; both are GATE_MISSING at ``accessories.enabled`` (V20).
    """

    brand: str | None = None
    request_id: str | None = None
    customer_name: str | None = None
    customer_contact: str | None = None
    project_name: str | None = None
    project_location: str | None = None
    mixed_reason: str | None = None
    form: str | None = None
    location: str | None = None
    mount: str | None = None
    floor_standing: bool = False
    enclosure_kind: str | None = None
    material: str | None = None
    custom_price_krw: int | None = None
    steel_p_cover: bool = False
    main: BreakerLine | None = None
    branches: tuple[BreakerLine, ...] = ()
    accessories_enabled: bool | None = None
    accessory_items: tuple[AccessoryLine, ...] = ()
    dedup_key: str | None = None


# --------------------------------------------------------------------------- result (§7-§14)


@dataclass(frozen=True, slots=True)
class Sizing:
    """Computed size of algorithm A (docs/pricing-rules.md §7); all values in millimetres."""

    width_mm: int
    height_mm: int
    depth_mm: int
    a_mm: int
    b_mm: int
    c_mm: int
    d_mm: int
    e_mm: int
    h_raw_mm: int


@dataclass(frozen=True, slots=True)
class Enclosure:
    """The final enclosure (docs/pricing-rules.md §8): a stock row, or custom at the computed size."""

    kind: str  # STOCK or CUSTOM
    series: str | None
    model: str | None
    material: str
    location: str
    mount: str
    width_mm: int
    height_mm: int
    depth_mm: int
    unit_price_krw: int | None


@dataclass(frozen=True, slots=True)
class Selection:
    """The catalog row chosen for one breaker line (path ``main``, ``spd_mccb``, ``branches[i]``)."""

    path: str
    brand: str | None
    kind: str
    poles: int
    trip_at: int
    qty: int
    model: str | None
    grade: str | None
    frame_af: int | None
    high_sensitivity: bool
    unit_price_krw: int | None
    explicit_model: bool
    reason_id: str | None


@dataclass(frozen=True, slots=True)
class PricedLine:
    """One quote line (docs/pricing-rules.md §9). Exactly one of ``qty`` / ``qty_kg`` is set (kg: BUSBAR)."""

    no: int
    section: str
    name: str
    spec: str
    unit: str
    qty: int | None
    qty_kg: Decimal | None
    unit_price_krw: int | None
    amount_krw: int | None
    rule_id: str
    notes: str = ""
    reason_id: str | None = None


@dataclass(frozen=True, slots=True)
class Totals:
    """docs/pricing-rules.md §10: subtotal/VAT/total are ``None`` while any line price is unknown."""

    subtotal_krw: int | None
    vat_krw: int | None
    total_krw: int | None
    partial_subtotal_krw: int


@dataclass(frozen=True, slots=True)
class Resolution:
    """A reviewer's answer to one review reason (docs/pricing-rules.md §11)."""

    reason_id: str
    unit_price_krw: int
    model: str | None = None


@dataclass(frozen=True, slots=True)
class ReviewReason:
    reason_id: str
    code: str  # NEED_KNOWLEDGE_UPDATE or CUSTOM_ENCLOSURE_PRICE
    path: str
    question_en: str
    question_ko: str
    resolution: Resolution | None = None


@dataclass(frozen=True, slots=True)
class Warning:
    code: str
    path: str
    message_en: str
    message_ko: str


@dataclass(frozen=True, slots=True)
class PhaseBalance:
    """docs/pricing-rules.md §14; currents in A and the imbalance in %, each half-up to 2 decimals."""

    applicable: bool
    r_a: Decimal | None = None
    s_a: Decimal | None = None
    t_a: Decimal | None = None
    imbalance_pct: Decimal | None = None


@dataclass(frozen=True, slots=True)
class RuleApplication:
    """One applied rule for ``rules_doc.json`` (docs/pricing-rules.md §15)."""

    rule_id: str
    applied_to: str
    why: str


@dataclass(frozen=True, slots=True)
class CatalogRowRef:
    """A catalog row used by an estimate: file name and 1-based line number including the header."""

    file: str
    line: int


@dataclass(frozen=True, slots=True)
class Quote:
    """Everything the engine computes for one valid request (docs/pricing-rules.md §6-§14).

    ``trace`` is JSON-ready (str/int/bool/list/dict only; non-integers as fixed-decimal strings).
    """

    status: Status
    decision: Decision
    catalog_version: str
    rules_version: str
    enclosure: Enclosure
    sizing: Sizing
    selections: tuple[Selection, ...]
    lines: tuple[PricedLine, ...]
    totals: Totals
    review_reasons: tuple[ReviewReason, ...]
    warnings: tuple[Warning, ...]
    phase_balance: PhaseBalance
    rules: tuple[RuleApplication, ...] = ()
    trace: dict[str, Any] = field(default_factory=dict)
    catalog_rows: tuple[CatalogRowRef, ...] = ()
