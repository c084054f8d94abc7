"""The server interceptor: request ids, authentication + RBAC, hostile-input guards, error mapping, logs.

It rewraps every method handler so that all of this runs in the worker thread that serves the
call (``intercept_service`` itself runs before a worker is chosen):

1. request id: the client's ``x-request-id`` (if sane) or a new one; every log line carries it;
2. P1 of docs/pricing-rules.md §3: exactly one ``authorization: Bearer <token>`` header → :class:`Principal`
   (two or more → AUTHORIZATION_AMBIGUOUS); no, unknown or revoked token → UNAUTHENTICATED, after a
   per-address budget for such calls (over it → UNAUTHENTICATED_RATE_LIMITED); a role the §16.4 table
   does not allow → PERMISSION_DENIED; then the per-token budget (RATE_LIMITED). Health checks and
   reflection are public. Every refusal here of an operation in :data:`AUDITED_DENIALS` is handed
   to the denial recorder, whatever refused it (server/service/denials.py aggregates repeats);
3. request bytes that do not decode, carry fields this server does not know, or strings with a NUL
   character, are answered INVALID_ARGUMENT ``MALFORMED_REQUEST`` (grpcio would otherwise answer
   INTERNAL). Unknown fields
   are refused rather than ignored: a client built from a newer schema must not get a quote that
   silently ignores what it asked for;
4. servicers never call ``context.abort`` (grpcio signals it with a bare ``Exception``); they raise
   :class:`DomainError`, which becomes its rich status (``server/api/status.py``); any other exception is a
   bug: logged with a trace id and answered INTERNAL ``INTERNAL_ERROR`` naming that id;
5. a call whose client stopped waiting (``server/api/calls.py``) ends CANCELLED or DEADLINE_EXCEEDED
   whatever the handler did or raised (grpcio raises ``RpcError`` from ``send_initial_metadata`` and
   stops pulling stream chunks), logged at INFO: impatient clients are not server errors.
"""

from __future__ import annotations

import contextvars
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf import message as pb_message
from google.protobuf import unknown_fields

from kis_estimator.server.api.calls import client_gone
from kis_estimator.server.api.status import status_code_of, to_grpc_status
from kis_estimator.server.api.streams import (
    Stream,
    StreamGuard,
    StreamPool,
    carry_serving_mode,
    health_pool,
    refused_here,
)
from kis_estimator.server.engine.errors import DomainError, ErrorCode
from kis_estimator.server.engine.messages import violation
from kis_estimator.server.engine.roles import Principal, may_call
from kis_estimator.server.service import sandbox
from kis_estimator.server.service.caller import Caller, RejectedToken
from kis_estimator.server.service.estimates import CallAbandoned
from kis_estimator.server.service.rate_limit import Decision, Limiter, RateLimiter, peer_key
from kis_estimator.server.service.sandbox import Sandboxes, ServiceSet
from kis_estimator.server.storage.repository import StorageError

log = logging.getLogger(__name__)

HEALTH_SERVICE = "grpc.health.v1.Health"
HEALTH_WATCH = f"/{HEALTH_SERVICE}/Watch"
PUBLIC_SERVICES = frozenset(
    {
        HEALTH_SERVICE,
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
        "kis.estimator.v1.ServerInfoService",
    }
)
REQUEST_ID_HEADER = "x-request-id"
AUTHORIZATION_FIELD = "metadata.authorization"
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)
_services: contextvars.ContextVar[ServiceSet | None] = contextvars.ContextVar("services", default=None)
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

Authenticator = Callable[[str], Principal | None]
# (token, operation) -> (principal, the budget's decision): the token looked up and, when its role
# may call the operation, one request of its budget spent, in one step (PostgreSQL: server/api/server.py);
# the decision is None when nothing was spent.
AuthenticateSpending = Callable[[str, str], tuple[Principal | None, Decision | None]]
# The stored token behind a refused one (revoked), so its refusal is audited under its id.
RejectedTokenLookup = Callable[[str], RejectedToken | None]
# (operation, request, caller, outcome) of a call refused here, for operations whose refusals must
# be audited (GetEvidenceBundle: every attempt, whatever stops it). ``outcome`` is UNAUTHENTICATED,
# DENIED (role) or the refusal's error code (RATE_LIMITED, MALFORMED_REQUEST, …).
DenialRecorder = Callable[[str, Any, Caller, str], None]
AUDITED_DENIALS = frozenset({"GetEvidenceBundle"})
_OUTCOME_OF_CODE = {ErrorCode.PERMISSION_DENIED: "DENIED"}  # else the code itself (UNAUTHENTICATED, …)


def current_principal() -> Principal:
    """The caller of the RPC being served (set by the interceptor before the servicer runs)."""
    principal = _principal.get()
    if principal is None:
        raise RuntimeError("no authenticated principal in this context")
    return principal


def current_request_id() -> str:
    return _request_id.get()


def current_services() -> ServiceSet | None:
    """The acceptance sandbox serving this call, or None for production (server/service/sandbox.py)."""
    return _services.get()


@dataclass(frozen=True, slots=True)
class MalformedRequest:
    """Stands in for a request whose bytes did not decode."""

    error: str


def _safe_deserializer(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        if deserialize is None:
            return data
        try:
            return deserialize(data)
        except pb_message.DecodeError as exc:
            return MalformedRequest(str(exc) or "undecodable message")

    return parse


def _malformed_field(msg: pb_message.Message, prefix: str = "") -> tuple[str, str] | None:
    """(path, what) of the first field this server refuses, depth first, in one walk: a field it
    does not know, or a string with a NUL character (no store keeps NUL in text; PostgreSQL refuses it)."""
    unknown = unknown_fields.UnknownFieldSet(msg)
    if len(unknown):
        path = f"{prefix}#{unknown[0].field_number}"
        return path, f"unknown field {path}"
    for fd, value in msg.ListFields():
        items = value if fd.is_repeated else [value]
        for i, item in enumerate(items):
            name = f"{prefix}{fd.name}[{i}]" if fd.is_repeated else f"{prefix}{fd.name}"
            if fd.message_type is not None:
                found = _malformed_field(item, name + ".")
                if found:
                    return found
            elif fd.type == fd.TYPE_STRING and "\x00" in item:
                return name, "a NUL character"
    return None


def _bearer_token(metadata: tuple[tuple[str, str | bytes], ...]) -> str | None:
    """The token of the one ``authorization: Bearer <token>`` header, None without a usable one.

    More than one ``authorization`` header is refused (AUTHORIZATION_AMBIGUOUS): which of them a
    proxy or a server reads is not defined, and "the first valid one" let a wrong one pass unseen.
    """
    values = [value for key, value in metadata if key == "authorization"]
    if len(values) > 1:
        raise DomainError(violation(ErrorCode.AUTHORIZATION_AMBIGUOUS, AUTHORIZATION_FIELD, n=len(values)))
    if not values or not isinstance(values[0], str):
        return None
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def _metadata_value(metadata: tuple[tuple[str, str | bytes], ...], name: str) -> str | None:
    for key, value in metadata:
        if key == name and isinstance(value, str):
            return value
    return None


class ServiceInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]  # grpc-stubs: generic in stubs only
    """See the module docstring."""

    def __init__(
        self,
        authenticate: Authenticator,
        *,
        rate_limiter: Limiter | None = None,
        unauthenticated_limiter: RateLimiter | None = None,
        record_denial: DenialRecorder | None = None,
        rejected_token: RejectedTokenLookup | None = None,
        sandboxes: Sandboxes | None = None,
        on_store_unavailable: Callable[[], None] | None = None,
        streams: StreamGuard | None = None,
        watchers: StreamGuard | None = None,
        stream_pool: StreamPool | None = None,
        authenticate_spending: AuthenticateSpending | None = None,
    ) -> None:
        self._authenticate = authenticate
        self._authenticate_spending = authenticate_spending
        self._streams = streams
        self._stream_pool = stream_pool
        self._watchers = watchers
        self._on_store_unavailable = on_store_unavailable
        self._limiter = rate_limiter
        self._unauthenticated_limiter = unauthenticated_limiter
        self._record_denial = record_denial
        self._rejected_token = rejected_token
        self._sandboxes = sandboxes

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        service, _, operation = method.lstrip("/").rpartition("/")
        public = service in PUBLIC_SERVICES
        if handler.stream_stream is not None:
            # reflection, public: no client-streaming or bidirectional RPCs of ours
            return grpc.stream_stream_rpc_method_handler(
                self._on_stream_pool(self._wrap_bidi(handler.stream_stream, method)),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.request_streaming:
            return handler
        if handler.unary_unary is not None:
            wrapped = self._wrap_unary(handler.unary_unary, method, operation, public)
            if service == HEALTH_SERVICE:
                wrapped.experimental_thread_pool = health_pool()  # type: ignore[attr-defined]
            return grpc.unary_unary_rpc_method_handler(
                wrapped,
                request_deserializer=_safe_deserializer(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            behavior = (
                self._wrap_watch(handler.unary_stream)
                if method == HEALTH_WATCH
                else self._on_stream_pool(self._wrap_stream(handler.unary_stream, method, operation, public))
            )
            return grpc.unary_stream_rpc_method_handler(
                behavior,
                request_deserializer=_safe_deserializer(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler

    def _admit(
        self, request: Any, context: grpc.ServicerContext, operation: str, public: bool
    ) -> Principal | None:
        """P1 and the input guards; raises DomainError to refuse the call (audited where required)."""
        metadata = tuple(context.invocation_metadata() or ())
        peer = context.peer() or ""
        token: str | None = None
        principal: Principal | None = None
        try:
            if not public:
                token = _bearer_token(metadata)
                principal, spent = self._identify(token, operation)
                if principal is None:
                    self._spend_unauthenticated(peer)
                    raise DomainError(violation(ErrorCode.UNAUTHENTICATED, ""))
                if not may_call(principal.role, operation):
                    raise DomainError(
                        violation(
                            ErrorCode.PERMISSION_DENIED, "", role=principal.role.value, operation=operation
                        )
                    )
                self._spend(principal.token_id, spent)
            self._check_request(request)
            run_id = None if public else _metadata_value(metadata, sandbox.HEADER)
            if run_id is not None:
                self._enter_sandbox(context, metadata, sandbox.parse_run_id(run_id), Caller(principal, peer))
        except DomainError as refused:
            if self._record_denial is not None and operation in AUDITED_DENIALS:
                outcome = _OUTCOME_OF_CODE.get(refused.code, refused.code.value)
                self._record_denial(operation, request, self._refused_caller(principal, peer, token), outcome)
            raise
        return principal

    def _refused_caller(self, principal: Principal | None, peer: str, token: str | None) -> Caller:
        """Who was refused: the principal, else the stored token behind a refused token (revoked)."""
        rejected = None
        if principal is None and token and self._rejected_token is not None:
            rejected = self._rejected_token(token)
        return Caller(principal, peer, rejected)

    def _identify(self, token: str | None, operation: str) -> tuple[Principal | None, Decision | None]:
        """The token's principal, and the budget's decision when the look-up spent it too."""
        if not token:
            return None, None
        if self._authenticate_spending is not None:
            return self._authenticate_spending(token, operation)
        return self._authenticate(token), None

    def _spend(self, token_id: str, spent: Decision | None = None) -> None:
        """One request of the token's budget (unless the look-up ``spent`` it), or RATE_LIMITED."""
        if self._limiter is None:
            return
        decision = spent if spent is not None else self._limiter.check(token_id)
        if not decision.allowed:
            retry_ms = max(1, math.ceil(decision.retry_after_s * 1000))
            raise DomainError(
                violation(ErrorCode.RATE_LIMITED, "", max=self._limiter.budget, retry_after_ms=retry_ms)
            )

    def _spend_unauthenticated(self, peer: str) -> None:
        """One call of the address's budget for calls without a valid token, or refused."""
        if self._unauthenticated_limiter is None:
            return
        decision = self._unauthenticated_limiter.check(peer_key(peer))
        if not decision.allowed:
            retry_ms = max(1, math.ceil(decision.retry_after_s * 1000))
            budget = self._unauthenticated_limiter.budget
            raise DomainError(
                violation(ErrorCode.UNAUTHENTICATED_RATE_LIMITED, "", max=budget, retry_after_ms=retry_ms)
            )

    @staticmethod
    def _check_request(request: Any) -> None:
        if isinstance(request, MalformedRequest):
            raise DomainError(violation(ErrorCode.MALFORMED_REQUEST, "", v=request.error))
        if isinstance(request, pb_message.Message):
            malformed = _malformed_field(request)
            if malformed is not None:
                path, what = malformed
                raise DomainError(violation(ErrorCode.MALFORMED_REQUEST, path, v=what))

    def _enter_sandbox(
        self,
        context: grpc.ServicerContext,
        metadata: tuple[tuple[str, str | bytes], ...],
        run_id: str,
        caller: Caller,
    ) -> None:
        if self._sandboxes is None or self._sandboxes.max_open == 0:
            raise DomainError(violation(ErrorCode.SANDBOX_LIMIT, sandbox.FIELD, max=0))
        sandboxes = self._sandboxes
        _services.set(sandboxes.services(run_id, caller))
        if _metadata_value(metadata, sandbox.END_HEADER) == "1":
            context.add_callback(lambda: sandboxes.end(run_id))  # when this last call is over
        # echoed on every successful sandbox call: a client can tell it was not served by production
        context.set_trailing_metadata(((sandbox.HEADER, run_id),))

    def _enter(self, context: grpc.ServicerContext) -> str:
        metadata = tuple(context.invocation_metadata() or ())
        given = _metadata_value(metadata, REQUEST_ID_HEADER)
        request_id = given if given and _SANE_REQUEST_ID.match(given) else secrets.token_hex(8)
        _request_id.set(request_id)
        _principal.set(None)
        _services.set(None)
        return request_id

    def _fail(self, context: grpc.ServicerContext, exc: Exception, method: str) -> NoReturn:
        if isinstance(exc, DomainError):
            context.abort_with_status(to_grpc_status(exc))
        trace_id = secrets.token_hex(8)
        log.error("unhandled error", extra={"trace_id": trace_id, "method": method}, exc_info=exc)
        context.abort_with_status(
            to_grpc_status(DomainError(violation(ErrorCode.INTERNAL_ERROR, "", trace_id=trace_id)))
        )
        raise AssertionError("abort_with_status returned")  # pragma: no cover

    def _end_with_error(
        self,
        context: grpc.ServicerContext,
        exc: Exception,
        method: str,
        started: float,
        principal: Principal | None,
    ) -> NoReturn:
        """End the call for ``exc`` (always raises): the client left, a domain refusal, or a bug."""
        gone = client_gone(context)
        if gone is not None or isinstance(exc, CallAbandoned):
            code = gone or grpc.StatusCode.CANCELLED
            self._log(method, code.name, started, principal)
            # abort on a call the client left sends nothing; it records the code for the metrics and
            # keeps grpcio from logging the exception (an RpcError of send_initial_metadata included)
            context.abort(code, "the client ended the call")
        if isinstance(exc, StorageError) and exc.retryable:
            # The database is down or restarting: the caller may retry, health turns NOT_SERVING
            # until the store answers again (server/main.py StoreWatch). Not a bug: no traceback.
            log.warning("store unavailable", extra={"method": method, "error": str(exc)})
            if self._on_store_unavailable is not None:
                self._on_store_unavailable()
            exc = DomainError(violation(ErrorCode.STORE_UNAVAILABLE, ""))
        if isinstance(exc, DomainError):
            self._log(method, status_code_of(exc.kind).name, started, principal, exc.code.value)
        else:
            self._log(method, "INTERNAL", started, principal, ErrorCode.INTERNAL_ERROR.value)
        self._fail(context, exc, method)

    def _log(
        self, method: str, code: str, started: float, principal: Principal | None, extra_code: str = ""
    ) -> None:
        log.info(
            "rpc",
            extra={
                "method": method,
                "grpc_code": code,
                "error_code": extra_code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                "actor": principal.name if principal else "",
                "role": principal.role.value if principal else "",
            },
        )

    def _wrap_unary(
        self, behavior: Callable[[Any, grpc.ServicerContext], Any], method: str, operation: str, public: bool
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            self._enter(context)
            principal = None
            try:
                principal = self._admit(request, context, operation, public)
                _principal.set(principal)
                response = behavior(request, context)
            except Exception as exc:  # noqa: BLE001 - the boundary of docs/conventions.md §7: log, convert, never swallow
                self._end_with_error(context, exc, method, started, principal)
            gone = client_gone(context)
            if gone is not None:
                self._log(method, gone.name, started, principal)
                context.set_code(gone)  # nobody reads the reply; the metrics see what happened
                return response
            self._log(method, "OK", started, principal)
            return response

        return wrapped

    def _open_stream(
        self, request: Any, context: grpc.ServicerContext, operation: str, principal: Principal | None
    ) -> Stream | None:
        """A slot of the stream guard (server/api/streams.py), or DomainError STREAMS_EXHAUSTED
        (audited like every other refusal of an audited operation)."""
        if self._streams is None:
            return None
        peer = context.peer() or ""
        try:
            if refused_here():  # every stream thread was taken (server/api/streams.py StreamPool)
                raise self._streams.refuse(
                    self._stream_pool.slots if self._stream_pool else self._streams.total
                )
            return self._streams.open(peer, context)
        except DomainError as refused:
            if self._record_denial is not None and operation in AUDITED_DENIALS:
                self._record_denial(operation, request, Caller(principal, peer), refused.code.value)
            raise

    def _on_stream_pool(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        """Run a streaming behavior on the stream threads, never on the RPC pool's."""
        if self._stream_pool is not None:
            behavior.experimental_thread_pool = self._stream_pool  # type: ignore[attr-defined]
        return behavior

    def _close_stream(self, stream: Stream | None) -> None:
        if stream is not None and self._streams is not None:
            self._streams.close(stream)

    def _wrap_stream(
        self,
        behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]],
        method: str,
        operation: str,
        public: bool,
    ) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
        def admit(request: Any, context: grpc.ServicerContext) -> tuple[Any, Principal | None, Stream | None]:
            principal = self._admit(request, context, operation, public)
            _principal.set(principal)
            return request, principal, self._open_stream(request, context, operation, principal)

        return self._streaming(behavior, method, admit)

    def _wrap_bidi(
        self, behavior: Callable[[Iterator[Any], grpc.ServicerContext], Iterator[Any]], method: str
    ) -> Callable[[Iterator[Any], grpc.ServicerContext], Iterator[Any]]:
        """Reflection: public, no request checks of ours; the guard counts each request as progress."""

        def admit(
            requests: Iterator[Any], context: grpc.ServicerContext
        ) -> tuple[Iterator[Any], Principal | None, Stream | None]:
            stream = self._open_stream(None, context, "", None)
            return (requests if stream is None else stream.requests(requests)), None, stream

        return self._streaming(behavior, method, admit)

    def _streaming(
        self,
        behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]],
        method: str,
        admit: Callable[[Any, grpc.ServicerContext], tuple[Any, Principal | None, Stream | None]],
    ) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
        """A response-streaming behavior behind ``admit`` (which refuses by raising DomainError);
        each reply chunk the client took counts as progress against the idle deadline."""

        def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.perf_counter()
            self._enter(context)
            principal: Principal | None = None
            stream: Stream | None = None
            try:
                request, principal, stream = admit(request, context)
                for chunk in behavior(request, context):
                    yield chunk
                    if stream is not None:
                        stream.progress()
            except GeneratorExit:
                # grpcio stopped pulling chunks: the client went away mid-stream (or idled out).
                self._log(
                    method, (client_gone(context) or grpc.StatusCode.CANCELLED).name, started, principal
                )
                raise
            except Exception as exc:  # noqa: BLE001 - the boundary of docs/conventions.md §7: log, convert, never swallow
                self._end_with_error(context, exc, method, started, principal)
            finally:
                self._close_stream(stream)
            gone = client_gone(context)
            if gone is not None:
                self._log(method, gone.name, started, principal)
                context.set_code(gone)
                return
            self._log(method, "OK", started, principal)

        return wrapped

    def _wrap_watch(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        """Health Watch, served non-blocking (a watcher holds a callback, not a thread), bounded."""
        watchers = self._watchers

        def wrapped(
            request: Any,
            context: grpc.ServicerContext,
            send_response_callback: Callable[[Any], None] | None = None,
        ) -> Any:
            try:
                self._check_request(request)
                watcher = watchers.open(context.peer() or "", None) if watchers is not None else None
            except DomainError as refused:
                context.abort_with_status(to_grpc_status(refused))
            if (
                watcher is not None
                and watchers is not None
                and not context.add_callback(lambda: watchers.close(watcher))
            ):
                watchers.close(watcher)  # the call already ended
            return behavior(request, context, send_response_callback=send_response_callback)

        return carry_serving_mode(behavior, wrapped)
