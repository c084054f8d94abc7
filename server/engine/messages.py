"""Bilingual message templates of docs/pricing-rules.md §4 and the warnings of §2, §6.2 and §14.

``violation(code, field, **params)`` renders ``message_en`` / ``message_ko`` of a code and
builds the :class:`~kis_estimator.server.engine.errors.Violation`. Placeholders: ``{f}`` is always the field
path; every other placeholder is a keyword parameter (``v`` = offending value).

Hostile input: every parameter rendered into a message goes through :func:`echo`, which cuts
strings to :data:`ECHO_MAX_CHARS` characters plus "…", replaces non-printable characters (line
breaks, control and format characters) by U+FFFD, and never calls ``str()`` on an integer too
large to print (Python refuses above 4,300 digits; such a value is shown as ``≈2^N``).
``Violation.extra`` holds only the detail keys §4 names (:data:`EXTRA_KEYS`), as
``(key, str(value))`` sorted by key; the offending value and the field path are never extra keys.

Templates of the service-added codes (``errors.py``) are this module's own wording:
``MALFORMED_REQUEST`` ``{v}`` (what could not be decoded), ``TOO_MANY_ITEMS`` ``{max}``,
``PAGE_TOKEN_INVALID`` (none), ``PAGE_SIZE_INVALID`` ``{v}`` ``{max}``, ``RATE_LIMITED`` ``{max}``
``{retry_after_ms}``, ``REVISION_INVALID`` ``{v}`` ``{max}``, ``UNAUTHENTICATED_RATE_LIMITED`` ``{max}``
``{retry_after_ms}``, ``AUTHORIZATION_AMBIGUOUS`` ``{n}``, ``ESTIMATE_TOO_LARGE`` ``{v}`` ``{max}``,
``STREAMS_EXHAUSTED`` ``{max}``.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from types import MappingProxyType

from kis_estimator.server.engine.errors import ErrorCode, Violation

__all__ = [
    "ECHO_MAX_CHARS",
    "EXTRA_KEYS",
    "MISSING_PARAM",
    "TEMPLATES",
    "WARNING_CODES",
    "WARNING_TEMPLATES",
    "echo",
    "placeholders",
    "violation",
    "warning_messages",
]

ECHO_MAX_CHARS = 64
MISSING_PARAM = "?"
# Integers above this many bits are not printed (about 64 decimal digits).
_ECHO_MAX_INT_BITS = 212

# Detail keys docs/pricing-rules.md §4 lists ("extra key ..."), plus ``max`` of the service-added codes.
# ``retry_after_ms`` (RATE_LIMITED) and ``trace_id`` (INTERNAL_ERROR) are this service's additions.
EXTRA_KEYS = frozenset(
    {"gate", "max", "allowed", "existing_estimate_id", "month", "used", "quota", "retry_after_ms", "trace_id"}
)

_C = ErrorCode

# (message_en, message_ko) exactly as docs/pricing-rules.md §4 writes them.
_TEMPLATES: dict[ErrorCode, tuple[str, str]] = {
    _C.FIELD_REQUIRED: ("{f} is required.", "{f} 값이 필요합니다."),
    _C.GATE_MISSING: (
        "Gate {gate} incomplete: {f} is required.",
        "{gate}번 게이트 미완료: {f} 값이 필요합니다.",
    ),
    _C.TEXT_TOO_LONG: (
        "{f} is longer than {max} characters.",
        "{f}은(는) {max}자를 넘을 수 없습니다.",
    ),
    _C.BRAND_NOT_SUPPORTED: (
        "Brand '{v}' is not supported; use SANGDO, LS or MIXED.",
        "지원하지 않는 브랜드 '{v}'입니다. SANGDO, LS, MIXED 중에서 선택하세요.",
    ),
    _C.FORM_INVALID: (
        "Form '{v}' is invalid; use ECONOMIC or STANDARD (custom boxes: enclosure.kind=CUSTOM).",
        "형식 '{v}'은(는) 잘못되었습니다. ECONOMIC 또는 STANDARD를 사용하세요 "
        "(주문제작함은 enclosure.kind=CUSTOM).",
    ),
    _C.LOCATION_INVALID: (
        "Location '{v}' is invalid; use INDOOR or OUTDOOR.",
        "설치장소 '{v}'이(가) 잘못되었습니다. INDOOR(옥내) 또는 OUTDOOR(옥외)를 사용하세요.",
    ),
    _C.MOUNT_INVALID: (
        "Mount '{v}' is invalid; use FLUSH or SURFACE.",
        "설치방식 '{v}'이(가) 잘못되었습니다. FLUSH(매입) 또는 SURFACE(노출)를 사용하세요.",
    ),
    _C.MATERIAL_INVALID: (
        "Material '{v}' is invalid; use STEEL_1_0, STEEL_1_6 or SUS201_1_2.",
        "외함 재질 '{v}'이(가) 잘못되었습니다. STEEL_1_0, STEEL_1_6, SUS201_1_2 중에서 선택하세요.",
    ),
    _C.ENCLOSURE_KIND_INVALID: (
        "Enclosure kind '{v}' is invalid; use STOCK or CUSTOM.",
        "외함 종류 '{v}'이(가) 잘못되었습니다. STOCK(기성함) 또는 CUSTOM(주문제작함)을 사용하세요.",
    ),
    _C.CUSTOM_PRICE_INVALID: (
        "custom_price_krw must be between 1 and 100,000,000 KRW.",
        "주문제작함 단가는 1원 이상 100,000,000원 이하여야 합니다.",
    ),
    _C.DEVICE_TYPE_INVALID: (
        "Breaker kind '{v}' is invalid; use MCCB or ELB.",
        "차단기 종류 '{v}'이(가) 잘못되었습니다. MCCB 또는 ELB를 사용하세요.",
    ),
    _C.POLES_MISMATCH: (
        "Poles must be 2, 3 or 4 (got {v}).",
        "극수는 2P, 3P, 4P 중 하나여야 합니다 (입력값 {v}).",
    ),
    _C.AT_NOT_POSITIVE: (
        "Trip current must be greater than 0 A (got {v}).",
        "정격전류(AT)는 0A보다 커야 합니다 (입력값 {v}).",
    ),
    _C.AT_OUT_OF_RANGE: (
        "Trip current {v} A is above the supported maximum of 800 A.",
        "정격전류 {v}A는 지원 최대값 800A를 초과합니다.",
    ),
    _C.FRAME_INVALID: (
        "Frame {v} AF is not a catalog frame.",
        "프레임 {v}AF는 카탈로그에 없는 값입니다.",
    ),
    _C.SENSITIVITY_INVALID: (
        "Sensitivity {v} mA is not allowed: ELB only; 30 mA, or 15 mA for 2P ELBs of 30 A or less.",
        "감도 {v}mA는 사용할 수 없습니다. "
        "ELB에만 지정하며 30mA, 또는 30A 이하 2P ELB에 한해 15mA(고감도)입니다.",
    ),
    _C.INVALID_COUNT: (
        "Quantity must be at least 1 (got {v}).",
        "수량은 1 이상이어야 합니다 (입력값 {v}).",
    ),
    _C.BRANCH_QTY_EXCEEDED: (
        "Branch quantity {v} exceeds the maximum of 100 per line.",
        "분기 수량 {v}은(는) 한 줄당 최대 100개를 초과합니다.",
    ),
    _C.NO_BRANCHES: (
        "At least one branch breaker line is required (gate 2).",
        "분기 차단기가 최소 1줄 필요합니다 (2번 게이트).",
    ),
    _C.POLE_TOPOLOGY_MISMATCH: (
        "A {main}P main cannot feed a {v}P branch (allowed: {allowed}).",
        "{main}P 메인 차단기에는 {v}P 분기를 연결할 수 없습니다 (허용: {allowed}).",
    ),
    _C.BRANCH_AT_EXCEEDS_MAIN: (
        "Branch trip current {v} A exceeds the main's {main} A.",
        "분기 정격전류 {v}A가 메인 {main}A보다 큽니다.",
    ),
    _C.INVALID_MODEL_COMBO: (
        "Model {v} does not match the requested {what} (catalog: {catalog}).",
        "모델 {v}은(는) 요청한 {what}와(과) 맞지 않습니다 (카탈로그: {catalog}).",
    ),
    _C.DEVICE_TYPE_MISMATCH: (
        "Model {v} is an {model_kind}, but kind is {kind}.",
        "모델 {v}은(는) {model_kind}인데 종류가 {kind}(으)로 지정되었습니다.",
    ),
    _C.BRAND_CONFLICT: (
        "{v} is a {model_brand} part but the estimate brand is {brand}; "
        "declare brand MIXED with a reason to mix brands.",
        "{v}은(는) {model_brand} 제품인데 견적 브랜드는 {brand}입니다. "
        "혼용하려면 brand를 MIXED로 하고 사유를 입력하세요.",
    ),
    _C.ACCESSORY_CONFLICT: (
        "accessories.enabled is {enabled} but {n} item(s) were given.",
        "부속자재 사용 여부(enabled={enabled})와 품목 {n}개가 맞지 않습니다.",
    ),
    _C.ACCESSORY_DUPLICATE: (
        "Accessory '{v}' is listed twice; give one line with the total quantity.",
        "부속자재 '{v}'이(가) 중복되었습니다. 한 줄에 합계 수량으로 입력하세요.",
    ),
    _C.ACCESSORY_INVALID: (
        "Unknown accessory code '{v}'.",
        "알 수 없는 부속자재 코드 '{v}'입니다.",
    ),
    _C.ACCESSORY_QTY_EXCEEDED: (
        "Quantity {v} exceeds the maximum of {max} for this item.",
        "수량 {v}은(는) 이 품목의 최대 수량 {max}을(를) 초과합니다.",
    ),
    _C.ACCESSORY_DEPENDENCY: (
        "'{v}' requires at least one magnet contactor (magnet_mc22).",
        "'{v}'은(는) 마그네트(magnet_mc22)가 있어야만 추가할 수 있습니다.",
    ),
    _C.REVIEW_INCOMPLETE: (
        "Review reason {reason_id} needs a resolution.",
        "검토 항목 {reason_id}에 대한 답변이 필요합니다.",
    ),
    _C.DUPLICATE_REQUEST: (
        "dedup_key '{v}' was already used by estimate {existing_estimate_id}.",
        "중복 요청입니다. dedup_key '{v}'은(는) 견적 {existing_estimate_id}에서 이미 사용되었습니다.",
    ),
    _C.IDEMPOTENCY_MISMATCH: (
        "request_id '{v}' was already used with a different request.",
        "request_id '{v}'은(는) 다른 요청 내용으로 이미 사용되었습니다.",
    ),
    _C.MIXED_EXCEPTION_ALREADY_GRANTED: (
        "An extra MIXED exception was already granted for {v}.",
        "{v}에는 이미 혼합 브랜드 추가 예외가 승인되었습니다.",
    ),
    _C.MIXED_QUOTA_EXCEEDED: (
        "MIXED-brand quota for {month} is used up ({used}/{quota}).",
        "{month} 혼합 브랜드(MIXED) 허용 건수를 모두 사용했습니다 ({used}/{quota}).",
    ),
    _C.ESTIMATE_NOT_FOUND: (
        "Estimate {v} does not exist.",
        "견적 {v}을(를) 찾을 수 없습니다.",
    ),
    _C.ESTIMATE_NOT_REVIEWABLE: (
        "Estimate {v} is {status}; only NEEDS_REVIEW estimates can be reviewed.",
        "견적 {v}은(는) {status} 상태입니다. NEEDS_REVIEW 상태만 검토할 수 있습니다.",
    ),
    _C.PERMISSION_DENIED: (
        "Your role {role} may not call {operation}.",
        "{role} 권한으로는 {operation}을(를) 호출할 수 없습니다.",
    ),
    _C.UNAUTHENTICATED: ("Authentication required.", "인증이 필요합니다."),
    _C.INTERNAL_ERROR: (
        "Internal error; trace {trace_id}.",
        "내부 오류입니다 (추적 ID {trace_id}).",
    ),
    # Service-added codes (errors.py); not in docs/pricing-rules.md §4, wording is ours.
    _C.MALFORMED_REQUEST: (
        "The request is malformed: {v}.",
        "요청 형식이 잘못되었습니다: {v}.",
    ),
    _C.TOO_MANY_ITEMS: (
        "{f} has more than {max} entries; split the request.",
        "{f} 항목은 최대 {max}개까지 입력할 수 있습니다. 요청을 나누어 보내세요.",
    ),
    _C.PAGE_TOKEN_INVALID: (
        "page_token is invalid or expired; list again without a page token.",
        "page_token이 잘못되었거나 만료되었습니다. page_token 없이 처음부터 다시 조회하세요.",
    ),
    _C.PAGE_SIZE_INVALID: (
        "page_size must not be negative (got {v}); 0 means the default, sizes above {max} serve {max}.",
        "page_size는 음수일 수 없습니다 (입력값 {v}). 0은 기본값이며, {max}보다 크면 {max}건씩 조회됩니다.",
    ),
    _C.RATE_LIMITED: (
        "Request budget of this token is used up ({max} per hour); retry in {retry_after_ms} ms.",
        "이 토큰의 요청 한도(시간당 {max}건)를 모두 사용했습니다. {retry_after_ms}ms 후 다시 시도하세요.",
    ),
    _C.SANDBOX_INVALID: (
        "The kis-sandbox run id must be 8-64 characters of A-Z, a-z, 0-9, '_' or '-' (got {v}).",
        "kis-sandbox 실행 ID는 A-Z, a-z, 0-9, '_', '-' 로 된 8~64자여야 합니다 (입력값 {v}).",
    ),
    _C.SANDBOX_LIMIT: (
        "{max} acceptance sandboxes are open; retry when a run has finished.",
        "인수 시험용 샌드박스가 이미 {max}개 열려 있습니다. 실행 중인 시험이 끝난 뒤 다시 시도하세요.",
    ),
    _C.QUOTE_FORMAT_INVALID: (
        "format must be QUOTE_FORMAT_XLSX or QUOTE_FORMAT_PDF (got {v}).",
        "format은 QUOTE_FORMAT_XLSX 또는 QUOTE_FORMAT_PDF여야 합니다 (입력값 {v}).",
    ),
    _C.STORE_UNAVAILABLE: (
        "The estimate store cannot be reached right now; nothing was stored. Retry shortly.",
        "견적 저장소에 지금 연결할 수 없습니다. 저장된 것은 없습니다. 잠시 후 다시 시도하세요.",
    ),
    _C.QUOTE_UNAVAILABLE: (
        "The quote document cannot be built here: {reason}.",
        "견적서를 만들 수 없습니다: {reason}.",
    ),
    _C.UNAUTHENTICATED_RATE_LIMITED: (
        "Too many calls without a valid token from this address ({max} per hour); "
        "retry in {retry_after_ms} ms.",
        "이 주소에서 유효한 토큰 없이 보낸 호출이 너무 많습니다(시간당 {max}건). "
        "{retry_after_ms}ms 후 다시 시도하세요.",
    ),
    _C.AUTHORIZATION_AMBIGUOUS: (
        "{n} authorization headers were sent; send exactly one 'authorization: Bearer <token>'.",
        "authorization 헤더가 {n}개 전송되었습니다. 'authorization: Bearer <토큰>' 헤더를 하나만 보내세요.",
    ),
    _C.ESTIMATE_TOO_LARGE: (
        "The estimate would take {v} bytes in the store, more than the {max} allowed per estimate; "
        "split the request.",
        "이 견적은 저장 공간을 {v}바이트 차지하여 견적당 허용치 {max}바이트를 넘습니다. "
        "요청을 나누어 보내세요.",
    ),
    _C.STREAMS_EXHAUSTED: (
        "Too many streaming calls are open (at most {max} from this address or on this server); "
        "retry when one has ended.",
        "열려 있는 스트리밍 호출이 너무 많습니다(이 주소 또는 이 서버에서 최대 {max}개). "
        "진행 중인 호출이 끝난 뒤 다시 시도하세요.",
    ),
    _C.REVISION_INVALID: (
        "revision must be 0 (the current revision) or 1 … {max} (got {v}).",
        "revision은 0(현재 리비전) 또는 1 … {max} 사이여야 합니다 (입력값 {v}).",
    ),
}
TEMPLATES: Mapping[ErrorCode, tuple[str, str]] = MappingProxyType(_TEMPLATES)

# Warnings (code, path, message_en, message_ko), docs/pricing-rules.md §4. PHASE_IMBALANCE is §14's text;
# the other two are ours: MIXED_REASON_IGNORED (§2) ``{brand}``; MODEL_GRADE_DIFFERS_FROM_FORM
# (§6.2) ``{model}`` ``{grade}`` ``{form}``.
_WARNING_TEMPLATES: dict[str, tuple[str, str]] = {
    "PHASE_IMBALANCE": (
        "Phase imbalance {x} % exceeds 4.0 %.",
        "상 불평형 {x}%가 4.0%를 초과합니다.",
    ),
    "MIXED_REASON_IGNORED": (
        "mixed_reason is ignored because the estimate brand is {brand}, not MIXED.",
        "견적 브랜드가 MIXED가 아닌 {brand}이므로 mixed_reason은 무시되었습니다.",
    ),
    "MODEL_GRADE_DIFFERS_FROM_FORM": (
        "Model {model} is catalog grade {grade}, which differs from form {form}; it is used as requested.",
        "모델 {model}은(는) 카탈로그 등급이 {grade}로 형식 {form}와(과) 다릅니다. 요청대로 사용합니다.",
    ),
}
WARNING_TEMPLATES: Mapping[str, tuple[str, str]] = MappingProxyType(_WARNING_TEMPLATES)
WARNING_CODES = frozenset(_WARNING_TEMPLATES)


def echo(value: object) -> str:
    """``value`` as safe message text: at most 64 characters + "…", printable characters only."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if value.bit_length() > _ECHO_MAX_INT_BITS:
            return f"{'-' if value < 0 else ''}≈2^{value.bit_length() - 1}"
        return str(value)
    text = value if isinstance(value, str) else str(value)
    if len(text) > ECHO_MAX_CHARS:
        text = text[:ECHO_MAX_CHARS] + "…"
    return "".join(ch if ch.isprintable() else "\ufffd" for ch in text)


def placeholders(template: str) -> frozenset[str]:
    """The placeholder names of a template (``{f}``, ``{v}``, ...)."""
    return frozenset(name for _, name, _, _ in string.Formatter().parse(template) if name)


class _Params(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return MISSING_PARAM


def _render(template: str, values: dict[str, str]) -> str:
    return template.format_map(_Params(values))


def violation(code: ErrorCode, field: str, /, **params: object) -> Violation:
    """Build the violation of ``code`` at ``field`` with both messages rendered.

    A placeholder without a parameter renders as ``?``: a caller's slip must not turn the
    error it is reporting into INTERNAL (tests assert the rendered messages instead).
    """
    en, ko = _TEMPLATES[code]
    values = {key: echo(value) for key, value in params.items()}
    values["f"] = field
    extra = tuple(sorted((key, _extra_text(value)) for key, value in params.items() if key in EXTRA_KEYS))
    return Violation(
        code=code,
        field=field,
        message_en=_render(en, values),
        message_ko=_render(ko, values),
        extra=extra,
    )


def _extra_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def warning_messages(code: str, **params: object) -> tuple[str, str]:
    """(message_en, message_ko) of a warning code; ``KeyError`` for an unknown code."""
    en, ko = _WARNING_TEMPLATES[code]
    values = {key: echo(value) for key, value in params.items()}
    return _render(en, values), _render(ko, values)
