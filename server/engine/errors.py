"""Error codes of docs/pricing-rules.md §4 and the one domain error type.

Each :class:`ErrorCode` has exactly one :class:`ErrorKind`; ``server/api/status.py`` is the only
place that maps a kind to a gRPC status code. Codes are stable strings clients branch on.

Codes added by this service where the rules are silent (transport-level hostile input;
docs/pricing-rules.md §4.3):
``MALFORMED_REQUEST`` (bytes that do not decode, unknown fields), ``TOO_MANY_ITEMS`` (a repeated
field above its hard cap; extra key ``max``), ``PAGE_TOKEN_INVALID`` and ``PAGE_SIZE_INVALID``
(listing RPCs; only a negative ``page_size``, since AIP-158 lowers one above the maximum),
``RATE_LIMITED`` (per-token budget), ``SANDBOX_INVALID`` and ``SANDBOX_LIMIT`` (the acceptance
sandbox: a malformed ``kis-sandbox`` run id, too many sandboxes open), ``QUOTE_FORMAT_INVALID``
(GetQuoteDocument without XLSX or PDF) and ``QUOTE_UNAVAILABLE`` (the PDF needs a Hangul font the
server does not have; the message says which), ``REVISION_INVALID`` (an evidence revision below 0
or above 2**31 - 1; extra key ``max``), ``UNAUTHENTICATED_RATE_LIMITED`` (calls without a valid
token over the per-address budget; extra keys ``max``, ``retry_after_ms``) and
``AUTHORIZATION_AMBIGUOUS`` (more than one ``authorization`` header), ``ESTIMATE_TOO_LARGE`` (an
estimate whose stored bytes would exceed ``KIS_MAX_STORED_BYTES_PER_ESTIMATE``; extra key ``max``),
``STREAMS_EXHAUSTED`` (RESOURCE_EXHAUSTED: too many streaming calls open, per address or in total;
extra key ``max``; server/api/streams.py) and ``STORE_UNAVAILABLE`` (UNAVAILABLE: the database
cannot be reached right now; nothing was stored, retry).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class ErrorKind(StrEnum):
    INVALID = "INVALID"  # INVALID_ARGUMENT
    NOT_FOUND = "NOT_FOUND"  # NOT_FOUND
    CONFLICT = "CONFLICT"  # ALREADY_EXISTS
    QUOTA = "QUOTA"  # RESOURCE_EXHAUSTED
    PRECONDITION = "PRECONDITION"  # FAILED_PRECONDITION
    DENIED = "DENIED"  # PERMISSION_DENIED
    UNAUTHENTICATED = "UNAUTHENTICATED"  # UNAUTHENTICATED
    UNAVAILABLE = "UNAVAILABLE"  # UNAVAILABLE: the store cannot be reached; retry later
    INTERNAL = "INTERNAL"  # INTERNAL: a bug, never a knowledge gap


class ErrorCode(StrEnum):
    FIELD_REQUIRED = "FIELD_REQUIRED"
    GATE_MISSING = "GATE_MISSING"
    TEXT_TOO_LONG = "TEXT_TOO_LONG"
    BRAND_NOT_SUPPORTED = "BRAND_NOT_SUPPORTED"
    FORM_INVALID = "FORM_INVALID"
    LOCATION_INVALID = "LOCATION_INVALID"
    MOUNT_INVALID = "MOUNT_INVALID"
    MATERIAL_INVALID = "MATERIAL_INVALID"
    ENCLOSURE_KIND_INVALID = "ENCLOSURE_KIND_INVALID"
    CUSTOM_PRICE_INVALID = "CUSTOM_PRICE_INVALID"
    DEVICE_TYPE_INVALID = "DEVICE_TYPE_INVALID"
    POLES_MISMATCH = "POLES_MISMATCH"
    AT_NOT_POSITIVE = "AT_NOT_POSITIVE"
    AT_OUT_OF_RANGE = "AT_OUT_OF_RANGE"
    FRAME_INVALID = "FRAME_INVALID"
    SENSITIVITY_INVALID = "SENSITIVITY_INVALID"
    INVALID_COUNT = "INVALID_COUNT"
    BRANCH_QTY_EXCEEDED = "BRANCH_QTY_EXCEEDED"
    NO_BRANCHES = "NO_BRANCHES"
    POLE_TOPOLOGY_MISMATCH = "POLE_TOPOLOGY_MISMATCH"
    BRANCH_AT_EXCEEDS_MAIN = "BRANCH_AT_EXCEEDS_MAIN"
    INVALID_MODEL_COMBO = "INVALID_MODEL_COMBO"
    DEVICE_TYPE_MISMATCH = "DEVICE_TYPE_MISMATCH"
    BRAND_CONFLICT = "BRAND_CONFLICT"
    ACCESSORY_CONFLICT = "ACCESSORY_CONFLICT"
    ACCESSORY_DUPLICATE = "ACCESSORY_DUPLICATE"
    ACCESSORY_INVALID = "ACCESSORY_INVALID"
    ACCESSORY_QTY_EXCEEDED = "ACCESSORY_QTY_EXCEEDED"
    ACCESSORY_DEPENDENCY = "ACCESSORY_DEPENDENCY"
    REVIEW_INCOMPLETE = "REVIEW_INCOMPLETE"
    DUPLICATE_REQUEST = "DUPLICATE_REQUEST"
    IDEMPOTENCY_MISMATCH = "IDEMPOTENCY_MISMATCH"
    MIXED_EXCEPTION_ALREADY_GRANTED = "MIXED_EXCEPTION_ALREADY_GRANTED"
    MIXED_QUOTA_EXCEEDED = "MIXED_QUOTA_EXCEEDED"
    ESTIMATE_NOT_FOUND = "ESTIMATE_NOT_FOUND"
    ESTIMATE_NOT_REVIEWABLE = "ESTIMATE_NOT_REVIEWABLE"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    # Added by this service (see the module docstring).
    MALFORMED_REQUEST = "MALFORMED_REQUEST"
    TOO_MANY_ITEMS = "TOO_MANY_ITEMS"
    PAGE_TOKEN_INVALID = "PAGE_TOKEN_INVALID"
    PAGE_SIZE_INVALID = "PAGE_SIZE_INVALID"
    RATE_LIMITED = "RATE_LIMITED"
    SANDBOX_INVALID = "SANDBOX_INVALID"
    SANDBOX_LIMIT = "SANDBOX_LIMIT"
    QUOTE_FORMAT_INVALID = "QUOTE_FORMAT_INVALID"
    QUOTE_UNAVAILABLE = "QUOTE_UNAVAILABLE"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    REVISION_INVALID = "REVISION_INVALID"
    UNAUTHENTICATED_RATE_LIMITED = "UNAUTHENTICATED_RATE_LIMITED"
    AUTHORIZATION_AMBIGUOUS = "AUTHORIZATION_AMBIGUOUS"
    ESTIMATE_TOO_LARGE = "ESTIMATE_TOO_LARGE"
    STREAMS_EXHAUSTED = "STREAMS_EXHAUSTED"


_KIND_OVERRIDES: Mapping[ErrorCode, ErrorKind] = {
    ErrorCode.DUPLICATE_REQUEST: ErrorKind.CONFLICT,
    ErrorCode.IDEMPOTENCY_MISMATCH: ErrorKind.CONFLICT,
    ErrorCode.MIXED_EXCEPTION_ALREADY_GRANTED: ErrorKind.CONFLICT,
    ErrorCode.MIXED_QUOTA_EXCEEDED: ErrorKind.QUOTA,
    ErrorCode.RATE_LIMITED: ErrorKind.QUOTA,
    ErrorCode.SANDBOX_LIMIT: ErrorKind.QUOTA,
    ErrorCode.UNAUTHENTICATED_RATE_LIMITED: ErrorKind.QUOTA,
    ErrorCode.STREAMS_EXHAUSTED: ErrorKind.QUOTA,
    ErrorCode.AUTHORIZATION_AMBIGUOUS: ErrorKind.UNAUTHENTICATED,
    ErrorCode.ESTIMATE_NOT_FOUND: ErrorKind.NOT_FOUND,
    ErrorCode.ESTIMATE_NOT_REVIEWABLE: ErrorKind.PRECONDITION,
    ErrorCode.QUOTE_UNAVAILABLE: ErrorKind.PRECONDITION,
    ErrorCode.STORE_UNAVAILABLE: ErrorKind.UNAVAILABLE,
    ErrorCode.PERMISSION_DENIED: ErrorKind.DENIED,
    ErrorCode.UNAUTHENTICATED: ErrorKind.UNAUTHENTICATED,
    ErrorCode.INTERNAL_ERROR: ErrorKind.INTERNAL,
}


def kind_of(code: ErrorCode) -> ErrorKind:
    """The kind of a code (docs/pricing-rules.md §4 "gRPC status" column); every other code is INVALID."""
    return _KIND_OVERRIDES.get(code, ErrorKind.INVALID)


@dataclass(frozen=True, slots=True)
class Violation:
    """One violation: stable code, request path, English and Korean messages, extra detail keys."""

    code: ErrorCode
    field: str
    message_en: str
    message_ko: str
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def kind(self) -> ErrorKind:
        return kind_of(self.code)


class DomainError(Exception):
    """The one domain error: one or more violations of the same kind, first one leading."""

    def __init__(self, violations: tuple[Violation, ...] | list[Violation] | Violation) -> None:
        if isinstance(violations, Violation):
            violations = (violations,)
        if not violations:
            raise ValueError("DomainError needs at least one violation")
        self.violations: tuple[Violation, ...] = tuple(violations)
        first = self.violations[0]
        self.code: ErrorCode = first.code
        self.field: str = first.field
        self.message: str = first.message_en
        super().__init__(f"{self.code} {self.field}: {self.message}")

    @property
    def kind(self) -> ErrorKind:
        return kind_of(self.code)
