"""What the ``kis-estimator`` client prints: estimates and lists in Korean (or English), and local errors.

Tables default to Korean headers and section names, as a KIS estimator reads them (``--lang en`` for
English); status and error codes stay the API's stable codes in both. Local errors — a request file
that is not what the API takes, no token, a server that does not answer — are bilingual, name the
field path the API would name (``branches[2].qty``), and say how to fix it.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from kis_estimator.server.acceptance import runner
from kis_estimator.server.api.quote.document import SECTION_NAMES
from kis_estimator.server.engine.months import KST
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb

__all__ = [
    "Lang",
    "LocalError",
    "check_request_json",
    "format_estimate",
    "format_list",
]

Lang = Literal["ko", "en"]

_TEXT: Mapping[str, Mapping[str, str]] = {
    "ko": {
        "estimate": "견적",
        "unsaved": "(저장 안 됨)",
        "revision": "개정",
        "catalog": "카탈로그",
        "rules": "규칙",
        "size": "산출 크기 {}x{}x{} mm; 외함 {} {} {}x{}x{}",
        "customer": "수신",
        "site": "현장명",
        "no": "번호",
        "section": "구분",
        "item": "품명 / 규격",
        "qty": "수량",
        "unit": "단위",
        "unit_price": "단가",
        "amount": "금액",
        "subtotal": "소계",
        "vat": "부가세 10%",
        "total": "합계 (원)",
        "partial": "단가 확정분 소계",
        "questions": "검토 질문:",
        "warnings": "경고:",
        "phase": "상 평형 R {} A, S {} A, T {} A: 불평형 {} %",
        "custom": "(주문 제작)",
        "list_header": "견적번호|개정|상태|브랜드|접수 (KST)|합계 (원)",
        "none": "(견적이 없습니다)",
        "next": "다음 페이지: --page-token {}",
    },
    "en": {
        "estimate": "Estimate",
        "unsaved": "(not stored)",
        "revision": "revision",
        "catalog": "Catalog",
        "rules": "rules",
        "size": "Computed size {}x{}x{} mm; enclosure {} {} {}x{}x{}",
        "customer": "Customer",
        "site": "Site",
        "no": "no",
        "section": "section",
        "item": "item",
        "qty": "qty",
        "unit": "unit",
        "unit_price": "unit price",
        "amount": "amount",
        "subtotal": "subtotal",
        "vat": "VAT 10%",
        "total": "total KRW",
        "partial": "partial subtotal (known prices)",
        "questions": "Review questions:",
        "warnings": "Warnings:",
        "phase": "Phase balance R {} A, S {} A, T {} A: {} %",
        "custom": "(custom)",
        "list_header": "estimate|rev|status|brand|accepted (KST)|total KRW",
        "none": "(no estimates)",
        "next": "next page: --page-token {}",
    },
}
ITEM_COLUMNS = 58
SECTION_COLUMNS = 22


def _money(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _columns(text: str) -> int:
    """Terminal columns of ``text``: Hangul and other wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def pad(text: str, columns: int, *, right: bool = False) -> str:
    """``text`` cut and padded to exactly ``columns`` terminal columns."""
    out, used = "", 0
    for ch in text:
        w = _columns(ch)
        if used + w > columns:
            break
        out, used = out + ch, used + w
    fill = " " * (columns - used)
    return fill + out if right else out + fill


def format_estimate(est: pb.Estimate, lang: Lang = "ko") -> str:
    """A readable quote: header, customer and site, lines, totals, review questions, warnings."""
    t = _TEXT[lang]
    view = runner.estimate_view(est)
    enc = view["enclosure"]
    request = est.request
    out = [
        f"{t['estimate']} {est.estimate_id or t['unsaved']}  {t['revision']} {est.revision}  "
        f"{view['status']} / {view['decision']}",
        f"{t['catalog']} {est.catalog_version[:8]}  {t['rules']} {est.rules_version}",
        t["size"].format(
            *view["size_mm"],
            enc["kind"],
            enc["model"] or t["custom"],
            enc["width_mm"],
            enc["height_mm"],
            enc["depth_mm"],
        ),
    ]
    if request.customer.name or request.customer.contact:
        out.append(
            f"{t['customer']}: {' '.join(p for p in (request.customer.name, request.customer.contact) if p)}"
        )
    if request.project.name or request.project.location:
        out.append(
            f"{t['site']}: {' / '.join(p for p in (request.project.name, request.project.location) if p)}"
        )
    out += [
        "",
        f"{pad(t['no'], 4, right=True)}  {pad(t['section'], SECTION_COLUMNS)} {pad(t['item'], ITEM_COLUMNS)} "
        f"{pad(t['qty'], 7, right=True)} {pad(t['unit'], 4)} {pad(t['unit_price'], 12, right=True)} "
        f"{pad(t['amount'], 12, right=True)}",
    ]
    for line in view["lines"]:
        qty = line["qty_kg"] if line["qty_kg"] is not None else str(line["qty"])
        item = f"{line['name']} {line['spec']}".strip()
        section = SECTION_NAMES.get(line["section"], line["section"]) if lang == "ko" else line["section"]
        out.append(
            f"{line['no']:>4}  {pad(section, SECTION_COLUMNS)} {pad(item, ITEM_COLUMNS)} {qty:>7} "
            f"{pad(line['unit'], 4)} {_money(line['unit_price_krw']):>12} {_money(line['amount_krw']):>12}"
            + (f"  ({line['reason_id']})" if line["reason_id"] else "")
        )
    totals = view["totals"]
    width = 4 + 2 + SECTION_COLUMNS + 1 + ITEM_COLUMNS + 1 + 7 + 1 + 4 + 1 + 12
    out += [
        "",
        f"{pad(t['subtotal'], width, right=True)} {_money(totals['subtotal_krw']):>12}",
        f"{pad(t['vat'], width, right=True)} {_money(totals['vat_krw']):>12}",
        f"{pad(t['total'], width, right=True)} {_money(totals['total_krw']):>12}",
    ]
    if totals["total_krw"] is None:
        out.append(f"{pad(t['partial'], width, right=True)} {_money(totals['partial_subtotal_krw']):>12}")
    if est.review_reasons:
        out += ["", t["questions"]]
        for r in est.review_reasons:
            first, second = (r.question_ko, r.question_en) if lang == "ko" else (r.question_en, r.question_ko)
            out += [f"  {r.reason_id} {r.code} at {r.path}", f"     {first}", f"     {second}"]
    if est.warnings:
        out += ["", t["warnings"]]
        for w in est.warnings:
            first, second = (w.message_ko, w.message_en) if lang == "ko" else (w.message_en, w.message_ko)
            out.append(f"  {w.code} at {w.path or '-'}: {first} / {second}")
    pbal = est.phase_balance
    if pbal.applicable:
        out.append("\n" + t["phase"].format(pbal.r_a, pbal.s_a, pbal.t_a, pbal.imbalance_pct))
    return "\n".join(out)


def format_list(reply: pb.ListEstimatesResponse, lang: Lang = "ko") -> str:
    t = _TEXT[lang]
    widths = (26, 4, 14, 8, 17, 14)
    heads = t["list_header"].split("|")
    out = [" ".join(pad(h, w, right=i in (1, 5)) for i, (h, w) in enumerate(zip(heads, widths, strict=True)))]
    for s in reply.estimates:
        accepted = (
            s.accepted_at.ToDatetime(tzinfo=KST).strftime("%Y-%m-%d %H:%M")
            if s.HasField("accepted_at")
            else ""
        )
        total = _money(s.total_krw if s.HasField("total_krw") else None)
        cells = (
            s.estimate_id,
            str(s.revision),
            pb.EstimateStatus.Name(s.status).removeprefix("ESTIMATE_STATUS_"),
            s.brand,
            accepted,
            total,
        )
        out.append(
            " ".join(pad(c, w, right=i in (1, 5)) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        )
    if not reply.estimates:
        out.append(t["none"])
    if reply.next_page_token:
        out.append(t["next"].format(reply.next_page_token))
    return "\n".join(out)


# ------------------------------------------------------------------------------------ local errors


class LocalError(Exception):
    """A problem found before any call: the field path, both messages, and the fix."""

    def __init__(self, path: str, message_en: str, message_ko: str, fix: str = "") -> None:
        super().__init__(f"{path}: {message_en}")
        self.path, self.message_en, self.message_ko, self.fix = path, message_en, message_ko, fix

    def lines(self) -> list[str]:
        out = [f"error: {self.path}: {self.message_en}", f"       {self.path}: {self.message_ko}"]
        return [*out, f"       {self.fix}"] if self.fix else out

    def to_json(self) -> dict[str, Any]:
        return {
            "error": {
                "code": "LOCAL_INPUT_INVALID",
                "field": self.path,
                "message_en": self.message_en,
                "message_ko": self.message_ko,
                "fix": self.fix,
            }
        }


_SCALARS = {
    FieldDescriptor.TYPE_STRING: ("a string", "문자열", (str,)),
    FieldDescriptor.TYPE_BOOL: ("true or false", "true 또는 false", (bool,)),
    FieldDescriptor.TYPE_INT32: ("an integer", "정수", (int,)),
    FieldDescriptor.TYPE_INT64: ("an integer", "정수", (int, str)),
}


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def _problems(value: Any, descriptor: Descriptor, path: str) -> Iterator[LocalError]:
    if not isinstance(value, dict):
        yield LocalError(path or "(request)", "expected a JSON object", "JSON 객체여야 합니다")
        return
    by_name = {f.name: f for f in descriptor.fields} | {f.json_name: f for f in descriptor.fields}
    for key, item in value.items():
        field = by_name.get(key)
        where = f"{path}.{_snake(key)}" if path else _snake(key)
        if field is None:
            known = ", ".join(sorted(f.name for f in descriptor.fields))
            yield LocalError(
                where, "unknown field", "알 수 없는 필드입니다", f"fields here / 사용할 수 있는 필드: {known}"
            )
            continue
        if item is None:
            continue
        repeated = bool(getattr(field, "is_repeated", False))  # protobuf ≥ 6: the label API is gone
        items = item if repeated and isinstance(item, list) else None
        if repeated and items is None:
            yield LocalError(where, "expected a JSON list", "JSON 목록([...])이어야 합니다")
            continue
        for index, element in enumerate(items if items is not None else [item]):
            at = f"{where}[{index}]" if items is not None else where
            if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
                yield from _problems(element, field.message_type, at)
            elif field.type in _SCALARS:
                en, ko, kinds = _SCALARS[field.type]
                ok = isinstance(element, kinds) and not (bool not in kinds and isinstance(element, bool))
                if isinstance(element, str) and int in kinds and str in kinds:
                    ok = element.strip().lstrip("-").isdigit()
                if not ok:
                    yield LocalError(
                        at,
                        f"expected {en}, got {json.dumps(element, ensure_ascii=False)}",
                        f"{ko}여야 합니다 (입력값 {json.dumps(element, ensure_ascii=False)})",
                    )


def check_request_json(text: str, source: str) -> dict[str, Any]:
    """The request file as JSON, checked against CreateEstimateRequest; LocalError for the first problem."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LocalError(
            f"{source}:{exc.lineno}:{exc.colno}",
            f"not JSON: {exc.msg}",
            f"JSON 형식이 아닙니다: {exc.msg}",
            "fix the file / 파일을 고치세요",
        ) from None
    for problem in _problems(data, pb.CreateEstimateRequest.DESCRIPTOR, ""):
        raise problem
    return dict(data)
