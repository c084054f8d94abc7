"""GetQuoteDocument's use case: one estimate revision → the bytes of its 견적서 (XLSX or PDF)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from kis_estimator.server.api.quote.document import QuoteOptions, Supplier, quote_view
from kis_estimator.server.api.quote.pdf import CONTENT_TYPE as PDF_TYPE
from kis_estimator.server.api.quote.pdf import FontMissing, build_pdf
from kis_estimator.server.api.quote.xlsx import CONTENT_TYPE as XLSX_TYPE
from kis_estimator.server.api.quote.xlsx import build_xlsx
from kis_estimator.server.engine.errors import DomainError, ErrorCode
from kis_estimator.server.engine.messages import violation
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.service.evidence import MAX_REVISION
from kis_estimator.server.settings import Settings

__all__ = ["QuoteDocuments", "QuoteFile"]


@dataclass(frozen=True, slots=True)
class QuoteFile:
    filename: str
    content_type: str
    data: bytes
    sha256: str
    revision: int


@dataclass(frozen=True, slots=True)
class QuoteDocuments:
    options: QuoteOptions
    font: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> QuoteDocuments:
        supplier = Supplier(
            company=settings.quote_supplier_company,
            representative=settings.quote_supplier_representative,
            business_no=settings.quote_supplier_business_no,
            address=settings.quote_supplier_address,
            phone=settings.quote_supplier_phone,
        )
        return cls(QuoteOptions(settings.quote_validity_days, supplier), settings.quote_font)

    def build(self, estimate: pb.Estimate, revision: int, fmt: pb.QuoteFormat.ValueType) -> QuoteFile:
        """The document of ``estimate`` (its current revision); ``revision`` 0 means that one.

        A negative revision is REVISION_INVALID; older revisions are not served: ESTIMATE_NOT_FOUND
        at ``revision`` (their figures stay in their evidence bundles). An unspecified format is
        QUOTE_FORMAT_INVALID; a PDF without a Hangul font is QUOTE_UNAVAILABLE (FAILED_PRECONDITION).
        """
        if fmt not in (pb.QUOTE_FORMAT_XLSX, pb.QUOTE_FORMAT_PDF):
            name = pb.QuoteFormat.Name(fmt) if fmt in pb.QuoteFormat.values() else str(fmt)
            raise DomainError(violation(ErrorCode.QUOTE_FORMAT_INVALID, "format", v=name))
        if revision < 0:
            raise DomainError(violation(ErrorCode.REVISION_INVALID, "revision", v=revision, max=MAX_REVISION))
        if revision not in (0, estimate.revision):
            raise DomainError(
                violation(ErrorCode.ESTIMATE_NOT_FOUND, "revision", v=f"{estimate.estimate_id} R{revision}")
            )
        view = quote_view(estimate, self.options)
        stem = f"견적서_{estimate.estimate_id}_R{estimate.revision}"
        if fmt == pb.QUOTE_FORMAT_XLSX:
            data, content_type, filename = build_xlsx(view), XLSX_TYPE, f"{stem}.xlsx"
        else:
            try:
                data = build_pdf(view, self.font)
            except FontMissing as exc:
                raise DomainError(violation(ErrorCode.QUOTE_UNAVAILABLE, "format", reason=str(exc))) from None
            content_type, filename = PDF_TYPE, f"{stem}.pdf"
        return QuoteFile(filename, content_type, data, hashlib.sha256(data).hexdigest(), estimate.revision)
