"""The 견적서 as PDF (reportlab): the cover page, then the itemised table, A4 portrait.

Hangul needs a real font: NanumGothic from Debian's ``fonts-nanum`` (``make setup`` installs it;
``KIS_QUOTE_FONT`` names another TrueType file), embedded as a subset. Without one the build raises
:class:`FontMissing` (the API answers FAILED_PRECONDITION) rather than print boxes. reportlab's
invariant mode fixes the creation date and the document id, so one revision gives the same bytes.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import Flowable, PageBreak, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from kis_estimator.server.api.quote.document import HEADERS, QuoteView

__all__ = ["CONTENT_TYPE", "FONT_CANDIDATES", "FontMissing", "build_pdf", "find_font"]

CONTENT_TYPE = "application/pdf"
FONT_NAME = "KisHangul"
FONT_CANDIDATES = (
    Path("/usr/share/fonts/truetype/nanum/NanumGothic.ttf"),  # Debian fonts-nanum
    Path("/usr/share/fonts/nanum/NanumGothic.ttf"),
    Path("/usr/local/share/fonts/NanumGothic.ttf"),
)


class FontMissing(RuntimeError):
    """No Hangul TrueType font to embed."""


def find_font(configured: Path | None = None) -> Path:
    for path in (configured, *FONT_CANDIDATES):
        if path is not None and path.is_file():
            return path
    raise FontMissing(
        "no Hangul font for the PDF: install Debian's fonts-nanum (make setup does) or set KIS_QUOTE_FONT"
    )


def _register(font: Path) -> None:
    if FONT_NAME not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(TTFont(FONT_NAME, str(font)))


def _money(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def _qty(value: int | float | None) -> str:
    if value is None:
        return ""
    return f"{value:,}" if isinstance(value, int) else f"{value:,.3f}".rstrip("0").rstrip(".")


def build_pdf(view: QuoteView, font: Path | None = None) -> bytes:
    """The PDF of ``view`` (module doc); the same view gives the same bytes."""
    _register(find_font(font))
    body = ParagraphStyle("body", fontName=FONT_NAME, fontSize=9.5, leading=13)
    small = ParagraphStyle("small", parent=body, fontSize=8, leading=10)
    title = ParagraphStyle("title", parent=body, fontSize=24, leading=30, alignment=1)
    heading = ParagraphStyle("heading", parent=body, fontSize=12, leading=16)
    total_style = ParagraphStyle("total", parent=body, fontSize=12, leading=16)

    story: list[Flowable] = [Paragraph(view.title, title), Spacer(1, 10 * mm)]
    cover = Table(
        [[Paragraph(k, body), Paragraph(v, body)] for k, v in view.cover_rows],
        colWidths=(35 * mm, 135 * mm),
    )
    cover.setStyle(TableStyle([("LINEBELOW", (0, 0), (-1, -1), 0.3, colors.grey)]))
    story += [cover, Spacer(1, 8 * mm), Paragraph("공급자", heading)]
    supplier = Table(
        [[Paragraph(k, body), Paragraph(v, body)] for k, v in view.supplier_rows],
        colWidths=(35 * mm, 135 * mm),
    )
    supplier.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 0.5, colors.grey)]))
    story += [supplier, Spacer(1, 8 * mm), Paragraph(f"합계 금액: {view.total_text}", total_style)]
    if view.questions:
        story += [Spacer(1, 5 * mm), Paragraph("검토 사항", heading)]
        story += [Paragraph(f"• {q}", body) for q in view.questions]
    story += [Spacer(1, 5 * mm), Paragraph("비고", heading)]
    story += [Paragraph(note, body) for note in view.notes or ("-",)]
    story.append(PageBreak())

    rows: list[list[object]] = [[Paragraph(h, small) for h in HEADERS]]
    section_rows: list[int] = []
    for section in view.sections:
        section_rows.append(len(rows))
        rows.append([Paragraph(f"[{section.name}]", small), "", "", "", "", "", "", ""])
        for item in section.rows:
            rows.append(
                [
                    str(item.no),
                    Paragraph(item.name, small),
                    Paragraph(item.spec, small),
                    Paragraph(item.unit, small),
                    _qty(item.qty),
                    _money(item.unit_price),
                    _money(item.amount),
                    Paragraph(item.note, small),
                ]
            )
    if view.draft:
        rows.append(
            [
                "",
                Paragraph("검토 중: 소계·부가세·합계는 검토 완료 후 확정됩니다", small),
                "",
                "",
                "",
                "",
                "",
                "",
            ]
        )
    else:
        for label, amount in (("소계", view.subtotal), ("부가세 10%", view.vat), ("합계", view.total)):
            rows.append(["", "", "", "", "", Paragraph(label, small), _money(amount), ""])
    table = Table(
        rows,
        colWidths=(10 * mm, 34 * mm, 48 * mm, 11 * mm, 14 * mm, 20 * mm, 23 * mm, 20 * mm),
        repeatRows=1,
    )
    style: list[Any] = [
        ("FONTNAME", (0, 0), (-1, -1), FONT_NAME),
        ("FONTSIZE", (0, 0), (-1, -1), 8),
        ("GRID", (0, 0), (-1, -1), 0.3, colors.grey),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#D9E1F2")),
        ("ALIGN", (4, 1), (6, -1), "RIGHT"),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
    ]
    style += [("BACKGROUND", (0, r), (-1, r), colors.HexColor("#F2F2F2")) for r in section_rows]
    style += [("SPAN", (0, r), (-1, r)) for r in section_rows]
    table.setStyle(TableStyle(style))
    story += [Paragraph(f"견적 내역 — {view.number}", heading), Spacer(1, 3 * mm), table]

    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=15 * mm,
        bottomMargin=15 * mm,
        title=f"견적서 {view.number}",
        author=view.supplier.company,
        creator="KIS Estimator",
        invariant=1,
    )
    doc.build(story)
    return buffer.getvalue()
