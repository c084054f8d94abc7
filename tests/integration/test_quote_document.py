"""GetQuoteDocument and `kis-estimator quote` against a real server: the 견적서 as XLSX and PDF.

The XLSX is read back with openpyxl and the PDF with poppler's pdftotext; a page of the PDF is rendered
with pdftoppm and must not be blank. Worked examples 1 and 2 (docs/pricing-rules.md §7.5, §10.1) and
S01: every line and total of the estimate, and the total in Korean words.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import openpyxl
import pytest
from google.protobuf import json_format

from kis_estimator.server.api.quote.pdf import FontMissing, find_font
from kis_estimator.server.api.quote.words import amount_in_words
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from tests.integration.conftest import TIMEOUT_S, Served, start_app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_1: dict[str, Any] = json.loads((ROOT / "examples" / "example1.json").read_text(encoding="utf-8"))
EXAMPLE_2: dict[str, Any] = {
    **EXAMPLE_1,
    "main": {"kind": "MCCB", "poles": 4, "trip_at": 100},
    "branches": [{"kind": "ELB", "poles": 2, "trip_at": 20, "qty": 12}],
}
S01: dict[str, Any] = {
    "brand": "LS",
    "customer": {"name": "대한전기(주)", "contact": "02-123-4567"},
    "project": {"name": "OO빌딩 신축공사", "location": "서울 강남구"},
    "installation": {"location": "INDOOR", "mount": "FLUSH"},
    "main": {"kind": "MCCB", "poles": 3, "trip_at": 100},
    "branches": [{"kind": "MCCB", "poles": 3, "trip_at": 100, "qty": 4}],
    "accessories": {"enabled": False},
}
CASES = {"example-1": (EXAMPLE_1, 1_134_100), "example-2": (EXAMPLE_2, 454_630), "S01": (S01, 495_385)}
WORDS = {
    1_134_100: "일금 일백일십삼만사천일백원정 (₩1,134,100)",
    454_630: "일금 사십오만사천육백삼십원정 (₩454,630)",
    495_385: "일금 사십구만오천삼백팔십오원정 (₩495,385)",
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = start_app(
        tmp_path_factory.mktemp("quote"),
        quote_supplier_company="케이아이에스 전기(주)",
        quote_supplier_representative="홍길동",
        quote_supplier_business_no="123-45-67890",
        quote_supplier_address="서울특별시 중구 세종대로 1",
        quote_supplier_phone="02-000-0000",
    )
    yield s
    s.app.stop(0)


@pytest.fixture(scope="module")
def stub(served: Served) -> Iterator[pb_grpc.EstimatorServiceStub]:
    with grpc.insecure_channel(served.address) as channel:
        yield pb_grpc.EstimatorServiceStub(channel)


def _create(stub: pb_grpc.EstimatorServiceStub, served: Served, request: dict[str, Any]) -> pb.Estimate:
    msg = json_format.ParseDict(request, pb.CreateEstimateRequest())
    msg.request_id = uuid.uuid4().hex  # every document test prices its own estimate
    reply = stub.CreateEstimate(msg, metadata=served.metadata("ESTIMATOR"), timeout=TIMEOUT_S)
    return reply.estimate


def _document(
    stub: pb_grpc.EstimatorServiceStub, served: Served, estimate_id: str, fmt: int, role: str = "VIEWER"
) -> tuple[bytes, pb.GetQuoteDocumentResponse]:
    request = pb.GetQuoteDocumentRequest(estimate_id=estimate_id, format=fmt)  # type: ignore[arg-type]
    chunks = list(stub.GetQuoteDocument(request, metadata=served.metadata(role), timeout=TIMEOUT_S))
    data = b"".join(c.chunk for c in chunks)
    head = chunks[0]
    assert head.size_bytes == len(data) and head.sha256 == hashlib.sha256(data).hexdigest()
    return data, head


def _sheet_rows(data: bytes, title: str) -> list[tuple[Any, ...]]:
    workbook = openpyxl.load_workbook(io.BytesIO(data))
    return [r for r in workbook[title].iter_rows(values_only=True) if any(c is not None for c in r)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_xlsx_shows_every_line_and_total_and_the_total_in_words(
    stub: pb_grpc.EstimatorServiceStub, served: Served, case: str
) -> None:
    request, total = CASES[case]
    estimate = _create(stub, served, request)
    assert estimate.totals.total_krw == total
    data, head = _document(stub, served, estimate.estimate_id, pb.QUOTE_FORMAT_XLSX)
    assert head.filename == f"견적서_{estimate.estimate_id}_R1.xlsx" and head.revision == 1

    cover = dict(r[:2] for r in _sheet_rows(data, "표지"))
    assert cover["견적번호"] == f"{estimate.estimate_id}-R1"
    assert cover["합계 금액"] == f"{WORDS[total]} (부가세 포함)"
    assert cover["합계 (숫자)"] == total
    assert cover["상호"] == "케이아이에스 전기(주)" and cover["사업자등록번호"] == "123-45-67890"
    assert cover["유효기간"].endswith("(견적일로부터 30일)")
    if case == "S01":
        assert cover["수신"] == "대한전기(주) 귀하" and cover["현장명"] == "OO빌딩 신축공사 / 서울 강남구"

    rows = _sheet_rows(data, "내역")
    assert rows[0] == ("번호", "품명", "규격", "단위", "수량", "단가", "금액", "비고")
    items = {r[0]: r for r in rows if isinstance(r[0], int)}
    assert sorted(items) == [line.no for line in estimate.lines]
    for line in estimate.lines:
        _no, name, spec, unit, qty, unit_price, amount, _note = items[line.no]
        assert (name, unit, unit_price, amount) == (
            line.name,
            line.unit,
            line.unit_price_krw,
            line.amount_krw,
        )
        assert line.spec in (spec or "")
        expected_qty = line.qty if line.WhichOneof("quantity") == "qty" else float(line.qty_kg)
        assert qty == expected_qty
    assert "[외함]" in [r[0] for r in rows] and "[분기차단기]" in [r[0] for r in rows]
    enclosure = estimate.enclosure
    assert any(
        f"{enclosure.width_mm}" in str(r[2]) and f"{enclosure.height_mm}" in str(r[2]) for r in items.values()
    )
    sums = {r[5]: r[6] for r in rows if r[5] in ("소계", "부가세 10%", "합계")}
    assert sums == {
        "소계": estimate.totals.subtotal_krw,
        "부가세 10%": estimate.totals.vat_krw,
        "합계": estimate.totals.total_krw,
    }
    assert sum(line.amount_krw for line in estimate.lines) == estimate.totals.subtotal_krw

    sheet = openpyxl.load_workbook(io.BytesIO(data))["내역"]
    assert sheet.print_title_rows == "$1:$1"  # the header row repeats on every printed page
    assert str(sheet.page_setup.paperSize) == str(sheet.PAPERSIZE_A4)
    assert sheet.page_setup.orientation == "portrait" and sheet.page_setup.fitToWidth == 1
    money = [c for c in sheet["G"] if isinstance(c.value, int)]
    assert money and all(c.number_format == "#,##0" for c in money)
    assert all(c.font.name == "NanumGothic" for c in sheet["B"] if c.value)


def test_the_same_revision_gives_the_same_bytes(stub: pb_grpc.EstimatorServiceStub, served: Served) -> None:
    _require_pdf_tools()
    estimate = _create(stub, served, EXAMPLE_2)
    for fmt in (pb.QUOTE_FORMAT_XLSX, pb.QUOTE_FORMAT_PDF):
        first, _ = _document(stub, served, estimate.estimate_id, fmt)
        second, _ = _document(stub, served, estimate.estimate_id, fmt, role="ADMIN")
        assert first == second


def _require_pdf_tools() -> None:
    try:
        find_font()
    except FontMissing as exc:
        pytest.skip(f"{exc} (make setup installs fonts-nanum)")
    if not (shutil.which("pdftotext") and shutil.which("pdftoppm")):
        pytest.skip("poppler-utils (pdftotext, pdftoppm) not installed; make setup installs them")


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_pdf_shows_every_line_and_total_in_hangul_and_renders(
    stub: pb_grpc.EstimatorServiceStub, served: Served, case: str, tmp_path: Path
) -> None:
    _require_pdf_tools()
    request, total = CASES[case]
    estimate = _create(stub, served, request)
    data, head = _document(stub, served, estimate.estimate_id, pb.QUOTE_FORMAT_PDF)
    assert head.content_type == "application/pdf" and data.startswith(b"%PDF-")
    path = tmp_path / head.filename
    path.write_bytes(data)
    text = subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    flat = " ".join(text.split())
    assert "견적서" in flat and WORDS[total] in flat and "부가세 포함" in flat
    for line in estimate.lines:
        assert f"{line.amount_krw:,}" in flat and line.name.split()[0] in flat
    for amount in (estimate.totals.subtotal_krw, estimate.totals.vat_krw, estimate.totals.total_krw):
        assert f"{amount:,}" in flat
    subprocess.run(
        ["pdftoppm", "-r", "60", "-png", "-f", "1", "-l", "1", str(path), str(tmp_path / "page")],
        check=True,
        timeout=60,
    )
    (png,) = tmp_path.glob("page*.png")
    assert _ink_share(png) > 0.001  # text was drawn (a blank page is 0)


def _ink_share(png: Path) -> float:
    """The share of dark pixels of a PNG page (pdftoppm's 8-bit RGB), read with matplotlib."""
    from matplotlib import image

    pixels = image.imread(str(png))
    gray = pixels[..., :3].mean(axis=2)
    return float((gray < 0.5).mean())


def test_a_needs_review_estimate_is_a_draft_without_a_total(
    stub: pb_grpc.EstimatorServiceStub, served: Served
) -> None:
    request = {**EXAMPLE_1, "enclosure": {"kind": "CUSTOM"}}  # no stock box: priced by hand
    estimate = _create(stub, served, request)
    assert estimate.status == pb.ESTIMATE_STATUS_NEEDS_REVIEW and estimate.review_reasons
    data, _ = _document(stub, served, estimate.estimate_id, pb.QUOTE_FORMAT_XLSX)
    cover = _sheet_rows(data, "표지")
    assert cover[0][0] == "견 적 서 (검토 중)"
    values = [str(c) for row in cover for c in row if c is not None]
    assert "검토 중: 합계 금액은 검토 완료 후 확정됩니다" in values
    assert all("일금" not in v and "원정" not in v for v in values)  # never a total
    assert any(estimate.review_reasons[0].question_ko in v for v in values)
    rows = _sheet_rows(data, "내역")
    assert not any(r[5] == "합계" for r in rows)


def test_errors_are_clear(stub: pb_grpc.EstimatorServiceStub, served: Served) -> None:
    estimate = _create(stub, served, S01)
    cases = [
        (pb.GetQuoteDocumentRequest(estimate_id="est_nope", format=pb.QUOTE_FORMAT_PDF), "NOT_FOUND"),
        (pb.GetQuoteDocumentRequest(estimate_id=estimate.estimate_id), "INVALID_ARGUMENT"),
        (
            pb.GetQuoteDocumentRequest(
                estimate_id=estimate.estimate_id, revision=7, format=pb.QUOTE_FORMAT_XLSX
            ),
            "NOT_FOUND",
        ),
        (
            pb.GetQuoteDocumentRequest(
                estimate_id=estimate.estimate_id, revision=-1, format=pb.QUOTE_FORMAT_XLSX
            ),
            "INVALID_ARGUMENT",
        ),
    ]
    for request, code in cases:
        with pytest.raises(grpc.RpcError) as err:
            list(stub.GetQuoteDocument(request, metadata=served.metadata("ESTIMATOR"), timeout=TIMEOUT_S))
        assert err.value.code().name == code, request
    with pytest.raises(grpc.RpcError) as denied:
        list(stub.GetQuoteDocument(cases[0][0], timeout=TIMEOUT_S))  # no token
    assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_cli_writes_the_document_it_names(served: Served, tmp_path: Path) -> None:
    with grpc.insecure_channel(served.address) as channel:
        estimate = _create(pb_grpc.EstimatorServiceStub(channel), served, S01)
    out = tmp_path / "견적서.xlsx"
    env = {"KIS_TOKEN": served.tokens["VIEWER"], "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kis_estimator.server.cli",
            "quote",
            estimate.estimate_id,
            "-o",
            str(out),
            "--target",
            served.address,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "(verified)" in done.stdout and out.read_bytes().startswith(b"PK")
    cover = dict(r[:2] for r in _sheet_rows(out.read_bytes(), "표지"))
    assert cover["합계 (숫자)"] == 495_385 and amount_in_words(495_385) in cover["합계 금액"]
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "kis_estimator.server.cli",
            "quote",
            estimate.estimate_id,
            "-o",
            str(tmp_path / "q.doc"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert bad.returncode == 2 and ".xlsx 또는 .pdf" in bad.stderr
