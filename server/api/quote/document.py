"""The 견적서 (quote document) of one estimate revision: what a customer receives, as XLSX and PDF.

:func:`quote_view` turns the API's ``Estimate`` into a neutral :class:`QuoteView` (every text in
Korean, every number an integer KRW); ``kis_estimator.server.api.quote.xlsx`` and
``kis_estimator.server.api.quote.pdf`` lay it out.

Layout (the KIS practice the builders follow):

* **표지 (cover)**: 견적서 title, 수신 (customer, 귀하), 현장명 (project and location), 견적일자 (the
  revision's acceptance day in KST), 유효기간 (the validity setting, default 30 days, as an end
  date), 견적번호 (``<estimate id>-R<revision>``), the supplier block (상호, 대표자, 사업자등록번호,
  주소, 전화: settings), the total in Korean words and figures (``일금 …원정 (₩…)``, VAT
  included) and 비고 (the estimate's warnings, in Korean).
* **내역 (itemised sheet)**: 번호/품명/규격/단위/수량/단가/금액/비고, grouped by the pricing
  sections under their Korean names, then 소계, 부가세 10 % and 합계 — exactly the estimate's totals
  (never recomputed here). 규격 is the engine's spec text (model, poles, frame and trip of a
  breaker); the enclosure line adds its W×H×D.
* A NEEDS_REVIEW (or REJECTED) estimate is a **draft** marked 검토 중: the open questions are
  listed, and no total is printed anywhere.

Determinism: the same revision gives the same bytes. The document date is the revision's
acceptance time, and the builders fix every timestamp and identifier they would otherwise take
from the clock, so a document's SHA-256 can be recorded and re-checked like an evidence bundle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from kis_estimator.server.api.quote.words import quote_amount_text
from kis_estimator.server.engine.months import KST
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb

__all__ = [
    "HEADERS",
    "SECTION_NAMES",
    "QuoteOptions",
    "QuoteRow",
    "QuoteSection",
    "QuoteView",
    "Supplier",
    "quote_view",
]

HEADERS = ("번호", "품명", "규격", "단위", "수량", "단가", "금액", "비고")
# The engine's pricing sections (docs/pricing-rules.md §9), in document order, with Korean names.
SECTION_NAMES = {
    "ENCLOSURE": "외함",
    "MAIN_BREAKER": "주차단기",
    "BRANCH_BREAKERS": "분기차단기",
    "ACCESSORIES_REQUIRED": "부속자재",
    "ACCESSORIES_OPTIONAL": "선택 부속자재",
    "BUSBAR": "부스바",
    "SUPPORTS": "기타 자재",
    "COSTS": "제작비",
}
_DRAFT_STATUSES = (pb.ESTIMATE_STATUS_NEEDS_REVIEW, pb.ESTIMATE_STATUS_REJECTED)


@dataclass(frozen=True, slots=True)
class Supplier:
    """The supplier block of the cover (settings ``KIS_QUOTE_SUPPLIER_*``)."""

    company: str = "KIS"
    representative: str = ""
    business_no: str = ""
    address: str = ""
    phone: str = ""


@dataclass(frozen=True, slots=True)
class QuoteOptions:
    validity_days: int = 30
    supplier: Supplier = field(default_factory=Supplier)


@dataclass(frozen=True, slots=True)
class QuoteRow:
    no: int
    name: str
    spec: str
    unit: str
    qty: int | float | None  # kg lines carry a decimal quantity
    unit_price: int | None
    amount: int | None
    note: str


@dataclass(frozen=True, slots=True)
class QuoteSection:
    name: str
    rows: tuple[QuoteRow, ...]


@dataclass(frozen=True, slots=True)
class QuoteView:
    """Everything a layout prints; ``draft`` means 검토 중 (no total anywhere)."""

    number: str
    title: str
    draft: bool
    issued_at: datetime  # aware (KST); also every timestamp inside the files
    valid_until: datetime
    customer: str
    site: str
    supplier: Supplier
    sections: tuple[QuoteSection, ...]
    subtotal: int | None
    vat: int | None
    total: int | None
    total_text: str  # 일금 …원정 (₩…), or the draft notice
    notes: tuple[str, ...]  # warnings (Korean)
    questions: tuple[str, ...]  # open review questions (Korean), drafts only

    @property
    def validity_days(self) -> int:
        return (self.valid_until - self.issued_at).days

    @property
    def cover_rows(self) -> tuple[tuple[str, str], ...]:
        return (
            ("수신", f"{self.customer} 귀하" if self.customer else "(수신처 미기재)"),
            ("현장명", self.site or "(현장명 미기재)"),
            ("견적일자", self.issued_at.strftime("%Y-%m-%d")),
            ("유효기간", f"{self.valid_until:%Y-%m-%d}까지 (견적일로부터 {self.validity_days}일)"),
            ("견적번호", self.number),
        )

    @property
    def supplier_rows(self) -> tuple[tuple[str, str], ...]:
        s = self.supplier
        return (
            ("상호", s.company),
            ("대표자", s.representative),
            ("사업자등록번호", s.business_no),
            ("주소", s.address),
            ("전화", s.phone),
        )


def _qty(line: pb.Line) -> int | float | None:
    which = line.WhichOneof("quantity")
    if which == "qty":
        return int(line.qty)
    if which == "qty_kg":
        return float(line.qty_kg)
    return None


def _spec(line: pb.Line, estimate: pb.Estimate) -> str:
    if line.section != "ENCLOSURE":
        return line.spec
    e = estimate.enclosure
    dims = (e.width_mm, e.height_mm, e.depth_mm)
    if any(f"{e.width_mm}{sep}{e.height_mm}{sep}{e.depth_mm}" in line.spec for sep in ("x", "×", "*")):
        return line.spec
    return f"{line.spec} {dims[0]}×{dims[1]}×{dims[2]}".strip()


_REQUEST_PATH = re.compile(r"^(main|branches\[\d+\]|accessories\.items\[\d+\])$")


def _note(line: pb.Line) -> str:
    """The engine notes a line's request path (``branches[2]``); a customer's 비고 shows the rest."""
    return "" if _REQUEST_PATH.match(line.notes) else line.notes


def quote_view(estimate: pb.Estimate, options: QuoteOptions) -> QuoteView:
    """The document of ``estimate`` (one revision); see the module doc for what it shows."""
    issued = estimate.accepted_at.ToDatetime(tzinfo=KST)
    draft = estimate.status in _DRAFT_STATUSES
    present = {line.section for line in estimate.lines}
    sections = []
    for key in [*(s for s in SECTION_NAMES if s in present), *sorted(present - set(SECTION_NAMES))]:
        rows = tuple(
            QuoteRow(
                no=line.no,
                name=line.name,
                spec=_spec(line, estimate),
                unit=line.unit,
                qty=_qty(line),
                unit_price=line.unit_price_krw if line.HasField("unit_price_krw") else None,
                amount=line.amount_krw if line.HasField("amount_krw") else None,
                note=_note(line),
            )
            for line in estimate.lines
            if line.section == key
        )
        sections.append(QuoteSection(SECTION_NAMES.get(key, key), rows))
    totals = estimate.totals
    total = None if draft or not totals.HasField("total_krw") else int(totals.total_krw)
    request = estimate.request
    site = " / ".join(p for p in (request.project.name, request.project.location) if p)
    return QuoteView(
        number=f"{estimate.estimate_id}-R{estimate.revision}",
        title="견 적 서 (검토 중)" if draft else "견 적 서",
        draft=draft,
        issued_at=issued,
        valid_until=issued + timedelta(days=options.validity_days),
        customer=request.customer.name,
        site=site,
        supplier=options.supplier,
        sections=tuple(sections),
        subtotal=None if draft or not totals.HasField("subtotal_krw") else int(totals.subtotal_krw),
        vat=None if draft or not totals.HasField("vat_krw") else int(totals.vat_krw),
        total=total,
        total_text=(
            "검토 중: 합계 금액은 검토 완료 후 확정됩니다"
            if total is None
            else f"{quote_amount_text(total)} (부가세 포함)"
        ),
        notes=tuple(w.message_ko or w.message_en for w in estimate.warnings),
        questions=tuple(r.question_ko or r.question_en for r in estimate.review_reasons) if draft else (),
    )
