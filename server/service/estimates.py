"""Estimate use cases: create (stages P2-P6 of DOMAIN.md §3), validate (dry run), get, list.

The engine computes; this module orders the stages, owns the transaction and turns storage races
into the domain answers of DOMAIN.md §13:

* P2 idempotency: a known ``request_id`` with the same canonical hash is answered with the stored
  reply bytes (nothing recomputed); a different hash is ``IDEMPOTENCY_MISMATCH``.
* P3 validation, P4 ``meta.dedup_key`` (``DUPLICATE_REQUEST``), P5 MIXED quota, P6 pricing and one
  write transaction holding the estimate, its dedup key and its idempotency record. The reply is
  returned only after the commit.
* Two concurrent creates racing on one ``request_id`` or ``dedup_key`` are decided by the unique
  indexes: the loser re-reads and answers as if it had arrived second.

ValidateEstimate (silent in DOMAIN.md) runs P3 and P6's pricing, and reports a ``dedup_key`` that is
already taken (P4) so a dry run never says OK to a request CreateEstimate would refuse; it stores
nothing and uses no quota.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import CollectorRegistry

from server.clock import Clock
from server.engine.catalog import Catalog
from server.engine.codec import stored_request
from server.engine.errors import DomainError, ErrorCode
from server.engine.estimate import price_estimate
from server.engine.messages import violation
from server.engine.model import EstimateRequest, Quote, Status
from server.engine.records import EstimateRecord
from server.engine.request import request_hash
from server.engine.roles import Principal
from server.engine.validation import validate_request
from server.metrics import Metrics
from server.storage.repository import DuplicateKeyError, EstimateCursor, IdempotencyRecord, Store

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100

ResponseEncoder = Callable[[EstimateRecord], bytes]


@dataclass(frozen=True, slots=True)
class Created:
    """Result of CreateEstimate: the stored reply bytes and whether they were replayed."""

    response: bytes
    replayed: bool
    estimate_id: str


@dataclass(frozen=True, slots=True)
class Draft:
    """Result of ValidateEstimate."""

    request: EstimateRequest
    request_hash: str
    quote: Quote


@dataclass(frozen=True, slots=True)
class Page:
    records: tuple[EstimateRecord, ...]
    next_page_token: str


class CallAbandoned(Exception):
    """The caller gave up (deadline or cancel) before the estimate was stored; nothing was."""


def new_estimate_id() -> str:
    """Opaque, unguessable estimate id."""
    return f"est_{secrets.token_hex(10)}"


class EstimateService:
    """CreateEstimate / ValidateEstimate / GetEstimate / ListEstimates."""

    def __init__(
        self,
        store: Store,
        catalog: Catalog,
        clock: Clock,
        *,
        metrics: Metrics | None = None,
        id_factory: Callable[[], str] = new_estimate_id,
    ) -> None:
        self._metrics = metrics or Metrics(CollectorRegistry())
        self._store = store
        self._catalog = catalog
        self._clock = clock
        self._new_id = id_factory

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    def _replay_or_mismatch(self, req: EstimateRequest, digest: str) -> Created | None:
        if req.request_id is None:
            return None
        with self._store.unit_of_work(read_only=True) as uow:
            known = uow.idempotency.get(req.request_id)
        if known is None:
            return None
        if known.request_hash != digest:
            raise DomainError(
                violation(
                    ErrorCode.IDEMPOTENCY_MISMATCH,
                    "request_id",
                    v=req.request_id,
                    existing_estimate_id=known.estimate_id,
                )
            )
        return Created(response=known.response, replayed=True, estimate_id=known.estimate_id)

    def _validate(self, req: EstimateRequest) -> None:
        violations = validate_request(req, self._catalog)
        if violations:
            raise DomainError(violations)

    def _check_dedup(self, req: EstimateRequest) -> None:
        if req.dedup_key is None:
            return
        with self._store.unit_of_work(read_only=True) as uow:
            existing = uow.estimates.find_by_dedup_key(req.dedup_key)
        if existing is not None:
            raise _duplicate(req.dedup_key, existing)

    def create(
        self,
        req: EstimateRequest,
        actor: Principal,
        encode: ResponseEncoder,
        still_wanted: Callable[[], bool] = lambda: True,
    ) -> Created:
        """CreateEstimate, stages P2-P6 (P1 is the caller's).

        ``still_wanted`` is asked just before the write: a caller whose deadline passed or who
        cancelled gets nothing stored (its retry starts afresh instead of meeting a phantom estimate).
        """
        try:
            created = self._create(req, actor, encode, still_wanted)
        except DomainError as refused:
            self._metrics.estimate_rejections.labels(code=refused.code.value).inc()
            raise
        return created

    def _create(
        self,
        req: EstimateRequest,
        actor: Principal,
        encode: ResponseEncoder,
        still_wanted: Callable[[], bool],
    ) -> Created:
        digest = request_hash(req)
        replay = self._replay_or_mismatch(req, digest)
        if replay is not None:
            return replay
        self._validate(req)
        self._check_dedup(req)
        quote = price_estimate(req, self._catalog)
        accepted_at = self._clock.now()
        record = EstimateRecord(
            estimate_id=self._new_id(),
            revision=1,
            status=quote.status,
            decision=quote.decision,
            request=stored_request(req),
            request_hash=digest,
            request_id=req.request_id,
            dedup_key=req.dedup_key,
            actor=actor.name,
            accepted_at=accepted_at,
            completed_at=accepted_at if quote.status is Status.COMPLETED else None,
            quote=quote,
        )
        response = encode(record)
        if not still_wanted():
            raise CallAbandoned
        try:
            with self._store.unit_of_work() as uow:
                uow.estimates.add(record)
                if req.request_id is not None:
                    uow.idempotency.add(
                        IdempotencyRecord(req.request_id, digest, record.estimate_id, response), accepted_at
                    )
                uow.commit()
        except DuplicateKeyError as race:
            if race.kind == "request_id":
                replay = self._replay_or_mismatch(req, digest)
                if replay is not None:
                    return replay
            raise _duplicate(req.dedup_key or "", race.existing_estimate_id) from None
        self._metrics.estimates_accepted.labels(status=record.status.value, brand=req.brand or "").inc()
        return Created(response=response, replayed=False, estimate_id=record.estimate_id)

    def validate(self, req: EstimateRequest) -> Draft:
        """ValidateEstimate: P3, P4 (read only) and pricing; nothing stored."""
        self._validate(req)
        self._check_dedup(req)
        return Draft(request=req, request_hash=request_hash(req), quote=price_estimate(req, self._catalog))

    def get(self, estimate_id: str) -> EstimateRecord:
        """GetEstimate; ESTIMATE_NOT_FOUND for an unknown id."""
        record = None
        if estimate_id:
            with self._store.unit_of_work(read_only=True) as uow:
                record = uow.estimates.get(estimate_id)
        if record is None:
            raise DomainError(violation(ErrorCode.ESTIMATE_NOT_FOUND, "estimate_id", v=estimate_id))
        return record

    def list(self, status: Status | None, page_size: int, page_token: str) -> Page:
        """ListEstimates: newest first, keyset-paged; ``page_size`` 0 means the default."""
        if page_size == 0:
            page_size = DEFAULT_PAGE_SIZE
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise DomainError(
                violation(ErrorCode.PAGE_SIZE_INVALID, "page_size", v=page_size, max=MAX_PAGE_SIZE)
            )
        cursor = _decode_token(page_token, status)
        with self._store.unit_of_work(read_only=True) as uow:
            records, next_cursor = uow.estimates.list(status, page_size, cursor)
        token = _encode_token(next_cursor, status) if next_cursor is not None else ""
        return Page(records=tuple(records), next_page_token=token)


def _duplicate(dedup_key: str, existing_id: str) -> DomainError:
    return DomainError(
        violation(
            ErrorCode.DUPLICATE_REQUEST, "meta.dedup_key", v=dedup_key, existing_estimate_id=existing_id
        )
    )


def _encode_token(cursor: EstimateCursor, status: Status | None) -> str:
    data = {"t": cursor.accepted_at.isoformat(), "i": cursor.estimate_id, "s": status.value if status else ""}
    raw = json.dumps(data, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_token(token: str, status: Status | None) -> EstimateCursor | None:
    """The storage cursor inside a page token; the token must come from the same status filter."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        accepted_at = datetime.fromisoformat(data["t"])
        estimate_id, token_status = data["i"], data["s"]
        if accepted_at.tzinfo is None or not isinstance(estimate_id, str):
            raise ValueError("malformed cursor")
        if token_status != (status.value if status else ""):
            raise ValueError("token of another query")
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise DomainError(violation(ErrorCode.PAGE_TOKEN_INVALID, "page_token", v=token[:64])) from None
    return EstimateCursor(accepted_at=accepted_at, estimate_id=estimate_id)


__all__ = ["CallAbandoned", "Created", "Draft", "EstimateService", "Page"]
