"""Estimate use cases: create (stages P2-P6 of docs/pricing-rules.md §3), validate (dry run), get, list.

The engine computes; this module orders the stages, owns the transaction and turns storage races
into the domain answers of docs/pricing-rules.md §13:

* P2 idempotency: a known ``request_id`` with the same canonical hash is answered with the stored
  reply bytes (nothing recomputed); a different hash is ``IDEMPOTENCY_MISMATCH``.
* P3 validation, P4 ``meta.dedup_key`` (``DUPLICATE_REQUEST``), P6 pricing, then one write
  transaction holding P5 (the MIXED quota is counted and checked inside it: SQLite's BEGIN IMMEDIATE
  serialises writers, so check and insert are atomic), the estimate, its evidence bundle, its
  idempotency record and its audit record. The reply is returned only after the commit.
* Two concurrent creates racing on one ``request_id`` or ``dedup_key`` are decided by the unique
  indexes: the loser re-reads and answers as if it had arrived second.

ValidateEstimate (a choice, docs/pricing-rules.md §20) runs P3 and P6's pricing, and reports a ``dedup_key``
that is already taken (P4) so a dry run never says OK to a request CreateEstimate would refuse; it
stores nothing and uses no quota.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from kis_estimator.server.clock import Clock
from kis_estimator.server.engine import audit as actions
from kis_estimator.server.engine.audit import AuditDraft
from kis_estimator.server.engine.catalog import Catalog
from kis_estimator.server.engine.codec import stored_request
from kis_estimator.server.engine.errors import DomainError, ErrorCode
from kis_estimator.server.engine.estimate import price_estimate
from kis_estimator.server.engine.messages import violation
from kis_estimator.server.engine.model import EstimateRequest, Quote, RuleApplication, Status
from kis_estimator.server.engine.months import kst_month_of
from kis_estimator.server.engine.records import EstimateRecord
from kis_estimator.server.engine.request import request_hash
from kis_estimator.server.engine.validation import validate_request
from kis_estimator.server.metrics import Metrics
from kis_estimator.server.service.caller import Caller
from kis_estimator.server.service.evidence import EvidenceArchive, EvidenceSummary, summary_of
from kis_estimator.server.service.group_commit import (
    DEFAULT_MAX_BATCH,
    CallAbandoned,
    GroupCommit,
    NewEstimate,
    store_one,
)
from kis_estimator.server.service.mixed_quota import MIXED_BRAND, mixed_usage
from kis_estimator.server.service.paging import PageTokens, page_size_of
from kis_estimator.server.storage.repository import (
    DuplicateKeyError,
    EvidenceRecord,
    IdempotencyRecord,
    StorageError,
    Store,
    UnitOfWork,
)
from kis_estimator.server.storage.rows import document_text

ResponseEncoder = Callable[[EstimateRecord, EvidenceSummary | None], bytes]
log = logging.getLogger(__name__)


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
class Stored:
    """A stored estimate with the summary of its current evidence bundle."""

    record: EstimateRecord
    evidence: EvidenceSummary | None


@dataclass(frozen=True, slots=True)
class Page:
    records: tuple[EstimateRecord, ...]
    next_page_token: str


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
        archive: EvidenceArchive,
        metrics: Metrics,
        mixed_monthly_quota: int = 2,
        id_factory: Callable[[], str] = new_estimate_id,
        page_tokens: PageTokens | None = None,
        max_stored_bytes: int = 1024 * 1024,
        group_commit_max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        self._pages = page_tokens or PageTokens.random()
        self._writer = GroupCommit(store, max_batch=group_commit_max_batch, on_batch=metrics.group_commit)
        self._max_stored_bytes = max_stored_bytes
        self._metrics = metrics
        self._archive = archive
        self._mixed_quota = mixed_monthly_quota
        self._store = store
        self._catalog = catalog
        self._clock = clock
        self._new_id = id_factory

    def _replay_or_mismatch(self, req: EstimateRequest, digest: str) -> Created | None:
        if req.request_id is None:
            return None
        with self._store.lookup() as uow:  # one statement: no transaction around it
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
        with self._store.lookup() as uow:  # one statement: no transaction around it
            existing = uow.estimates.find_by_dedup_key(req.dedup_key)
        if existing is not None:
            raise _duplicate(req.dedup_key, existing)

    def create(
        self,
        req: EstimateRequest,
        caller: Caller,
        encode: ResponseEncoder,
        still_wanted: Callable[[], bool] = lambda: True,
    ) -> Created:
        """CreateEstimate, stages P2-P6 (P1 is the caller's).

        ``still_wanted`` is asked just before the write: a caller whose deadline passed or who
        cancelled gets nothing stored (its retry starts afresh instead of meeting a phantom estimate).
        Refused requests are not stored; they are counted and written to the audit log with codes.
        """
        try:
            return self._create(req, caller, encode, still_wanted)
        except DomainError as refused:
            self._record_refusal(req, caller, refused)
            raise

    def _record_refusal(self, req: EstimateRequest, caller: Caller, refused: DomainError) -> None:
        self._metrics.request_rejected(refused.code.value)
        if refused.code is ErrorCode.MIXED_QUOTA_EXCEEDED:
            self._metrics.mixed_blocked()
        codes = sorted({v.code.value for v in refused.violations})
        draft = caller.audit(
            self._clock.now(),
            actions.REQUEST_REJECTED,
            "REJECTED",
            first_code=refused.code.value,
            codes=codes[:50],
            violations=len(refused.violations),
            request_id=(req.request_id or "")[:128] or None,
            brand=(req.brand or "")[:16] or None,
        )
        try:
            with self._store.unit_of_work() as uow:
                uow.audit.append(draft)
                uow.commit()
        except StorageError:
            # The refusal itself must reach the client; a failed audit write is logged loudly.
            log.exception("could not audit a rejected request", extra={"code": refused.code.value})

    def _create(
        self,
        req: EstimateRequest,
        caller: Caller,
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
            actor=caller.actor,
            accepted_at=accepted_at,
            completed_at=accepted_at if quote.status is Status.COMPLETED else None,
            quote=quote,
        )
        mixed = req.brand == MIXED_BRAND
        try:
            if mixed:
                response = self._store_mixed(req, caller, record, digest, encode, still_wanted)
            else:
                # Everything that needs no stored state is computed before the write, which
                # serialises writers (across processes and replicas too); the write itself is
                # shared with the other creates waiting for it (group commit).
                evidence = self._archive.build(record)
                response = self._reply(record, evidence, encode)
                self._writer.write(
                    NewEstimate(
                        record,
                        evidence,
                        self._idempotency(req, digest, record, response),
                        self._accepted(caller, req, record, evidence),
                        still_wanted,
                    )
                )
        except DuplicateKeyError as race:
            if race.kind == "request_id":
                replay = self._replay_or_mismatch(req, digest)
                if replay is not None:
                    return replay
            raise _duplicate(req.dedup_key or "", race.existing_estimate_id) from None
        self._metrics.estimate_accepted(record.status.value, req.brand or "")
        if record.completed_at is not None:
            self._metrics.estimate_completed(0.0)
        return Created(response=response, replayed=False, estimate_id=record.estimate_id)

    def pending_writes(self) -> int:
        """Creates waiting for the next group commit."""
        return self._writer.waiting()

    def _store_mixed(
        self,
        req: EstimateRequest,
        caller: Caller,
        record: EstimateRecord,
        digest: str,
        encode: ResponseEncoder,
        still_wanted: Callable[[], bool],
    ) -> bytes:
        """A MIXED create on its own: its evidence names its quota count, taken in the write unit."""
        with self._store.unit_of_work() as uow:
            evidence = self._archive.build(record, self._take_mixed_quota(uow, req, record.accepted_at))
            response = self._reply(record, evidence, encode)
            if not still_wanted():
                raise CallAbandoned
            idempotency = self._idempotency(req, digest, record, response)
            store_one(
                uow, NewEstimate(record, evidence, idempotency, self._accepted(caller, req, record, evidence))
            )
            uow.commit()
        return response

    @staticmethod
    def _idempotency(
        req: EstimateRequest, digest: str, record: EstimateRecord, response: bytes
    ) -> IdempotencyRecord | None:
        if req.request_id is None:
            return None
        return IdempotencyRecord(req.request_id, digest, record.estimate_id, response)

    @staticmethod
    def _accepted(
        caller: Caller, req: EstimateRequest, record: EstimateRecord, evidence: EvidenceRecord
    ) -> AuditDraft:
        return caller.audit(
            record.accepted_at,
            actions.ESTIMATE_ACCEPTED,
            "ACCEPTED",
            estimate_id=record.estimate_id,
            revision=record.revision,
            status=record.status.value,
            brand=req.brand,
            request_id=req.request_id,
            sha256=evidence.sha256,
        )

    def _reply(self, record: EstimateRecord, evidence: EvidenceRecord, encode: ResponseEncoder) -> bytes:
        """The reply bytes, once the estimate is known to fit the store (ESTIMATE_TOO_LARGE)."""
        response = encode(record, summary_of(evidence))
        self._check_stored_size(record, evidence.size_bytes, len(response))
        return response

    def _check_stored_size(self, record: EstimateRecord, bundle_bytes: int, response_bytes: int) -> None:
        """ESTIMATE_TOO_LARGE when the estimate would add more than the bound to the store.

        Counted: the evidence ZIP, the JSON document (UTF-8) and the stored reply — over 99 % of
        what an estimate occupies (bench/store_size.py; the index and audit entries are < 1 KiB).
        """
        stored = bundle_bytes + response_bytes + len(document_text(record).encode("utf-8"))
        if stored > self._max_stored_bytes:
            raise DomainError(
                violation(ErrorCode.ESTIMATE_TOO_LARGE, "", v=stored, max=self._max_stored_bytes)
            )

    def _take_mixed_quota(
        self, uow: UnitOfWork, req: EstimateRequest, accepted_at: datetime
    ) -> list[RuleApplication]:
        """P5 (docs/pricing-rules.md §12): count and check in the write transaction, which serialises."""
        usage = mixed_usage(uow, kst_month_of(accepted_at), self._mixed_quota)
        month, used, quota, grant = usage.month, usage.used, usage.quota, usage.grant
        if used >= quota:
            raise DomainError(
                violation(ErrorCode.MIXED_QUOTA_EXCEEDED, "brand", month=month, used=used, quota=quota)
            )
        why = f"reason: {req.mixed_reason}; month {month}; counter {used + 1}/{quota}"
        if grant is not None:
            why += f"; grant {grant.grant_id}"
        return [RuleApplication("MIX-1", "quota", why)]

    def validate(self, req: EstimateRequest) -> Draft:
        """ValidateEstimate: P3, P4 (read only) and pricing; nothing stored."""
        self._validate(req)
        self._check_dedup(req)
        return Draft(request=req, request_hash=request_hash(req), quote=price_estimate(req, self._catalog))

    def get(self, estimate_id: str) -> Stored:
        """GetEstimate; ESTIMATE_NOT_FOUND for an unknown id."""
        record = evidence = None
        if estimate_id:
            with self._store.unit_of_work(read_only=True) as uow:
                record = uow.estimates.get(estimate_id)
                if record is not None:
                    evidence = uow.evidence.get_info(estimate_id, record.revision)
        if record is None:
            raise DomainError(violation(ErrorCode.ESTIMATE_NOT_FOUND, "estimate_id", v=estimate_id))
        return Stored(record, summary_of(evidence))

    def list(self, status: Status | None, page_size: int, page_token: str) -> Page:
        """ListEstimates: newest first, keyset-paged; ``page_size`` 0 means the default."""
        size = page_size_of(page_size)
        scope = f"estimates:{status.value if status else ''}"
        cursor = self._pages.estimate_cursor(page_token, scope)
        with self._store.unit_of_work(read_only=True) as uow:
            records, next_cursor = uow.estimates.list(status, size, cursor)
        return Page(records=tuple(records), next_page_token=self._pages.estimate_token(next_cursor, scope))


def _duplicate(dedup_key: str, existing_id: str) -> DomainError:
    return DomainError(
        violation(
            ErrorCode.DUPLICATE_REQUEST, "meta.dedup_key", v=dedup_key, existing_estimate_id=existing_id
        )
    )


__all__ = ["CallAbandoned", "Created", "Draft", "EstimateService", "Page", "Stored"]
