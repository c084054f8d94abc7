"""The 견적서 as a spreadsheet (openpyxl): a cover sheet and the itemised sheet, ready to print.

Numbers are numbers (``#,##0``), amounts are the estimate's own values (consistent with its totals
by construction; the sheet recomputes nothing), both sheets print on A4 portrait fitted to the page
width, the item sheet repeats its header row on every printed page, and every cell uses a Korean
font (NanumGothic, falling back to the viewer's default). Deterministic: the workbook's
created/modified times are the document date, and the ZIP is rewritten with that date on every
entry in a fixed order, so one revision always gives the same bytes.
"""

from __future__ import annotations

import io
import re
import zipfile
from datetime import UTC, datetime

from openpyxl import Workbook
from openpyxl.styles import Alignment, Border, Font, PatternFill, Side
from openpyxl.worksheet.properties import PageSetupProperties
from openpyxl.worksheet.worksheet import Worksheet

from kis_estimator.server.api.quote.document import HEADERS, QuoteView

__all__ = ["CONTENT_TYPE", "build_xlsx"]

CONTENT_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
FONT = "NanumGothic"
MONEY = "#,##0"
_THIN = Side(style="thin", color="808080")
_BOX = Border(left=_THIN, right=_THIN, top=_THIN, bottom=_THIN)
_HEAD_FILL = PatternFill("solid", fgColor="D9E1F2")
_SECTION_FILL = PatternFill("solid", fgColor="F2F2F2")
_WIDTHS = (6, 26, 30, 6, 8, 13, 15, 18)


def _font(size: float = 10, bold: bool = False) -> Font:
    return Font(name=FONT, size=size, bold=bold)


def _print_setup(ws: Worksheet, last_col: str, last_row: int) -> None:
    ws.print_area = f"A1:{last_col}{max(last_row, 1)}"
    ws.page_setup.paperSize = ws.PAPERSIZE_A4
    ws.page_setup.orientation = "portrait"
    ws.page_setup.fitToWidth = 1
    ws.page_setup.fitToHeight = 0
    ws.sheet_properties.pageSetUpPr = PageSetupProperties(fitToPage=True)
    ws.print_options.horizontalCentered = True


def _cover(ws: Worksheet, view: QuoteView) -> None:
    ws.title = "표지"
    ws.column_dimensions["A"].width = 18
    ws.column_dimensions["B"].width = 70
    ws["A1"] = view.title
    ws["A1"].font = _font(22, bold=True)
    ws["A1"].alignment = Alignment(horizontal="center")
    ws.merge_cells("A1:B1")
    row = 3
    for label, value in view.cover_rows:
        ws.cell(row, 1, label).font = _font(bold=True)
        ws.cell(row, 2, value).font = _font()
        row += 1
    row += 1
    ws.cell(row, 1, "공급자").font = _font(12, bold=True)
    row += 1
    for label, value in view.supplier_rows:
        ws.cell(row, 1, label).font = _font(bold=True)
        ws.cell(row, 2, value).font = _font()
        row += 1
    row += 1
    ws.cell(row, 1, "합계 금액").font = _font(12, bold=True)
    ws.cell(row, 2, view.total_text).font = _font(12, bold=True)
    row += 1
    if view.total is not None:
        ws.cell(row, 1, "합계 (숫자)").font = _font(bold=True)
        cell = ws.cell(row, 2, view.total)
        cell.number_format = MONEY
        cell.font = _font()
        cell.alignment = Alignment(horizontal="left")
        row += 1
    if view.questions:
        row += 1
        ws.cell(row, 1, "검토 사항").font = _font(12, bold=True)
        for question in view.questions:
            row += 1
            ws.cell(row, 2, f"• {question}").font = _font()
    row += 2
    ws.cell(row, 1, "비고").font = _font(12, bold=True)
    for note in view.notes or ("-",):
        row += 1
        ws.cell(row, 2, note).font = _font()
    _print_setup(ws, "B", row)


def _items(ws: Worksheet, view: QuoteView) -> None:
    ws.title = "내역"
    for i, width in enumerate(_WIDTHS, start=1):
        ws.column_dimensions[chr(64 + i)].width = width
    for col, text in enumerate(HEADERS, start=1):
        cell = ws.cell(1, col, text)
        cell.font = _font(bold=True)
        cell.fill = _HEAD_FILL
        cell.border = _BOX
        cell.alignment = Alignment(horizontal="center")
    row = 2
    for section in view.sections:
        cell = ws.cell(row, 1, f"[{section.name}]")
        cell.font = _font(bold=True)
        for col in range(1, 9):
            ws.cell(row, col).fill = _SECTION_FILL
            ws.cell(row, col).border = _BOX
        row += 1
        for item in section.rows:
            values = (
                item.no,
                item.name,
                item.spec,
                item.unit,
                item.qty,
                item.unit_price,
                item.amount,
                item.note,
            )
            for col, value in enumerate(values, start=1):
                cell = ws.cell(row, col, value)
                cell.font = _font()
                cell.border = _BOX
                if col in (6, 7) and value is not None:
                    cell.number_format = MONEY
                elif col == 5 and isinstance(value, float):
                    cell.number_format = "#,##0.0##"
            row += 1
    if view.draft:
        ws.cell(row, 2, "검토 중: 소계·부가세·합계는 검토 완료 후 확정됩니다").font = _font(bold=True)
    else:
        for label, amount in (("소계", view.subtotal), ("부가세 10%", view.vat), ("합계", view.total)):
            ws.cell(row, 6, label).font = _font(bold=True)
            cell = ws.cell(row, 7, amount)
            cell.number_format = MONEY
            cell.font = _font(bold=True)
            cell.border = _BOX
            row += 1
        row -= 1
    ws.freeze_panes = "A2"
    ws.print_title_rows = "1:1"
    _print_setup(ws, "H", row)


_MODIFIED = re.compile(rb"(<dcterms:modified[^>]*>)[^<]*(</dcterms:modified>)")


def _normalise_zip(data: bytes, stamp: datetime) -> bytes:
    """The same entries in name order, each stamped with the document date: no clock time left.

    openpyxl writes the save time into ``docProps/core.xml`` (dcterms:modified) and onto every ZIP
    entry; both become the document date.
    """
    when = (max(stamp.year, 1980), stamp.month, stamp.day, stamp.hour, stamp.minute, stamp.second)
    iso = stamp.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in sorted(src.namelist()):
            body = src.read(name)
            if name == "docProps/core.xml":
                body = _MODIFIED.sub(rb"\g<1>" + iso + rb"\g<2>", body)
            info = zipfile.ZipInfo(name, date_time=when)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            dst.writestr(info, body)
    return out.getvalue()


def build_xlsx(view: QuoteView) -> bytes:
    """The workbook of ``view`` (module doc); the same view gives the same bytes."""
    workbook = Workbook()
    cover = workbook.active
    assert isinstance(cover, Worksheet)
    _cover(cover, view)
    _items(workbook.create_sheet(), view)
    stamp = view.issued_at.replace(tzinfo=None, microsecond=0)
    workbook.properties.creator = view.supplier.company or "KIS"
    workbook.properties.title = f"견적서 {view.number}"
    workbook.properties.created = stamp
    workbook.properties.modified = stamp
    workbook.properties.lastModifiedBy = view.supplier.company or "KIS"
    buffer = io.BytesIO()
    workbook.save(buffer)
    return _normalise_zip(buffer.getvalue(), view.issued_at.astimezone(UTC).replace(microsecond=0))
