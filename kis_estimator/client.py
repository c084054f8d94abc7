"""The Python client of the KIS Estimator API: typed stubs, the messages, and what a refusal says.

::

    import grpc
    from kis_estimator.client import CallError, Client, estimator_pb2

    with Client.connect("127.0.0.1:8787", token=token) as kis:
        try:
            estimate = kis.estimator.CreateEstimate(request, timeout=10)
        except grpc.RpcError as exc:
            error = CallError.of(exc)  # status, stable code, field paths, Korean messages

The message and stub modules are the ones generated from ``proto/kis/estimator/v1`` (with mypy
stubs, so every request, reply and stub method is typed); they are re-exported here under their
generated names. :class:`Client` owns one channel and a stub per service; the token travels as the
``authorization: Bearer <token>`` header on every call, plaintext or TLS (a client interceptor, not
call credentials, which gRPC refuses on a plaintext channel to a non-local address).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NamedTuple

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from kis_estimator.server.gen.kis.estimator.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    estimator_pb2,
    estimator_pb2_grpc,
    evidence_pb2,
    evidence_pb2_grpc,
    review_pb2,
    review_pb2_grpc,
    server_info_pb2,
    server_info_pb2_grpc,
)

__all__ = [
    "CallError",
    "Client",
    "FieldViolation",
    "admin_pb2",
    "admin_pb2_grpc",
    "estimator_pb2",
    "estimator_pb2_grpc",
    "evidence_pb2",
    "evidence_pb2_grpc",
    "health_pb2",
    "review_pb2",
    "review_pb2_grpc",
    "server_info_pb2",
    "server_info_pb2_grpc",
]

DEFAULT_TARGET = "127.0.0.1:8787"
# Evidence bundles of large panels stream in 64 KiB chunks, but a quote document is one message.
MAX_RECEIVE_BYTES = 16 * 1024 * 1024


# ------------------------------------------------------------------------------ the token header


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str | bytes]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds ``authorization: Bearer <token>`` to every call that does not carry its own."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: grpc.ClientCallDetails) -> _CallDetails:
        metadata = list(details.metadata or ())
        if not any(key == "authorization" for key, _ in metadata):
            metadata.append(self._header)
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)


# ------------------------------------------------------------------------------------ the client


class Client:
    """One channel to the estimator and a typed stub per service; close it (or use ``with``)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.estimator = estimator_pb2_grpc.EstimatorServiceStub(channel)
        self.review = review_pb2_grpc.ReviewServiceStub(channel)
        self.evidence = evidence_pb2_grpc.EvidenceServiceStub(channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(channel)
        self.server_info = server_info_pb2_grpc.ServerInfoServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)

    @classmethod
    def connect(
        cls,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> Client:
        """A client of ``target`` (``host:port``).

        TLS when ``root_certificates`` (the PEM of the CA that signed the server's certificate) is
        given, with a client certificate for mutual TLS when ``private_key`` and
        ``certificate_chain`` are too; plaintext otherwise (loopback, or behind a trusted network).
        """
        opts = [("grpc.max_receive_message_length", MAX_RECEIVE_BYTES), *options]
        if root_certificates is None and (private_key or certificate_chain):
            raise ValueError("a client certificate needs root_certificates (TLS)")
        if root_certificates is None:
            channel = grpc.insecure_channel(target, options=opts)
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
            channel = grpc.secure_channel(target, credentials, options=opts)
        if token:
            channel = grpc.intercept_channel(channel, _BearerToken(token))
        return cls(channel)

    def evidence_bundle(self, estimate_id: str, revision: int = 0, *, timeout: float = 60.0) -> bytes:
        """The evidence ZIP of an estimate (ADMIN only), its streamed chunks joined."""
        request = evidence_pb2.GetEvidenceBundleRequest(estimate_id=estimate_id, revision=revision)
        replies = self.evidence.GetEvidenceBundle(request, timeout=timeout)
        return b"".join(reply.chunk for reply in replies)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# ------------------------------------------------------------------------------------- refusals


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One reason a request was refused: the field path, its stable code, English and Korean text."""

    field: str
    code: str
    message_en: str
    message_ko: str = ""


@dataclass(frozen=True, slots=True)
class CallError:
    """A failed call as the service explains it (the google.rpc.Status details, README "Errors")."""

    status: grpc.StatusCode
    message: str
    reason: str = ""  # the stable code of the first violation (ErrorInfo.reason), "" without details
    domain: str = ""  # ErrorInfo.domain: kis.estimator.v1 for the service's own refusals
    violations: tuple[FieldViolation, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)  # ErrorInfo.metadata
    retry_after_s: float | None = None  # RetryInfo (RATE_LIMITED)

    @classmethod
    def of(cls, exc: grpc.RpcError) -> CallError:
        call: Any = exc  # a failed call's RpcError is also its grpc.Call
        violations: list[FieldViolation] = []
        reason, domain, metadata, retry_after_s = "", "", {}, None
        status = rpc_status.from_call(call)
        for detail in status.details if status is not None else ():
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations.extend(
                    FieldViolation(fv.field, fv.reason, fv.description, fv.localized_message.message)
                    for fv in bad.field_violations
                )
            elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after_s = retry.retry_delay.ToMilliseconds() / 1000
        return cls(
            call.code(), call.details() or "", reason, domain, tuple(violations), metadata, retry_after_s
        )
