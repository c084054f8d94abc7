"""The one mapping from domain errors to gRPC statuses (docs/conventions.md §7, docs/pricing-rules.md §4).

Details follow the rich error model: ``google.rpc.BadRequest`` with one FieldViolation per
violation (field = path, reason = code, description = English, localized_message = Korean) and
``google.rpc.ErrorInfo`` (reason = first code, domain = ``kis.estimator.v1``, metadata = the first
violation's extra keys) and, for ``RATE_LIMITED``, ``google.rpc.RetryInfo`` from the extra key
``retry_after_ms``. The status message is the first violation's English message (docs/pricing-rules.md §4).

Trailing metadata is limited (8 KiB by default in gRPC), so violations are added until the encoded
details reach :data:`DETAILS_BUDGET_BYTES`; ErrorInfo then says ``violations_total`` and
``violations_sent`` so a client knows the list was cut. Each violation is at most a few hundred bytes,
so every real request (and at least the first 15 violations) fits.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from kis_estimator.server.engine.errors import DomainError, ErrorKind, Violation

ERROR_DOMAIN = "kis.estimator.v1"
DETAILS_BUDGET_BYTES = 5000
KOREAN_LOCALE = "ko-KR"

_STATUS_OF_KIND: Mapping[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.CONFLICT: grpc.StatusCode.ALREADY_EXISTS,
    ErrorKind.QUOTA: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}


def status_code_of(kind: ErrorKind) -> grpc.StatusCode:
    """The gRPC status code of an error kind."""
    return _STATUS_OF_KIND[kind]


def _field_violation(v: Violation) -> error_details_pb2.BadRequest.FieldViolation:
    fv = error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.message_en, reason=v.code)
    fv.localized_message.locale = KOREAN_LOCALE
    fv.localized_message.message = v.message_ko
    return fv


def _pack(
    message: error_details_pb2.BadRequest | error_details_pb2.ErrorInfo | error_details_pb2.RetryInfo,
) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_rpc_status(error: DomainError) -> status_pb2.Status:
    """The google.rpc.Status of a domain error, details cut to the metadata budget."""
    code = status_code_of(error.kind)
    first = error.violations[0]
    bad_request = error_details_pb2.BadRequest()
    sent = 0
    for v in error.violations:
        bad_request.field_violations.append(_field_violation(v))
        if sent and bad_request.ByteSize() > DETAILS_BUDGET_BYTES:
            del bad_request.field_violations[-1]
            break
        sent += 1
    metadata = dict(first.extra)
    if sent < len(error.violations):
        metadata["violations_total"] = str(len(error.violations))
        metadata["violations_sent"] = str(sent)
    info = error_details_pb2.ErrorInfo(reason=first.code, domain=ERROR_DOMAIN, metadata=metadata)
    details = [_pack(bad_request), _pack(info)]
    retry_after_ms = metadata.get("retry_after_ms")
    if retry_after_ms is not None and retry_after_ms.isdigit():
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(int(retry_after_ms))
        details.append(_pack(retry))
    return status_pb2.Status(code=code.value[0], message=first.message_en, details=details)


def to_grpc_status(error: DomainError) -> grpc.Status:
    """A ``grpc.Status`` ready for ``context.abort_with_status``."""
    return rpc_status.to_status(to_rpc_status(error))


assert grpc.StatusCode.INVALID_ARGUMENT.value[0] == code_pb2.INVALID_ARGUMENT
