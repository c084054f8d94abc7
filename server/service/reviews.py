"""The review queue (docs/pricing-rules.md §11) and the monthly report (§16.3).

CompleteReview re-prices the stored request with the reviewer's answers as overrides (sizing and
stock choice are unchanged because they never depend on a gap), sets REVIEWED / OK, ``completed_at``,
``revision + 1``, and stores a new evidence revision whose ``rules_doc.json`` records the reviewer
and the answers (``REV-R``). RejectEstimate closes a NEEDS_REVIEW estimate as REJECTED / REJECT.

Choices where the rules are silent (docs/pricing-rules.md §20):
* a resolution must answer an open reason exactly once; ``model`` is required for a reason whose
  line has no catalog row (no model found, or a model not in the catalog), and ignored otherwise
  (a known row whose price is missing, a custom enclosure price);
* re-pricing uses the catalog the estimate was priced with; after a catalog activation such an
  estimate cannot be completed here (FAILED_PRECONDITION ESTIMATE_NOT_REVIEWABLE) — it is re-created;
* TAT median/p90: nearest-rank percentiles over the month's completions (median of an even count is
  the lower middle value); the auto-processing rate is a percentage with two decimals, half-up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

from kis_estimator.server.clock import Clock
from kis_estimator.server.engine import audit as actions
from kis_estimator.server.engine.audit import AuditDraft
from kis_estimator.server.engine.catalog import Catalog
from kis_estimator.server.engine.errors import DomainError, ErrorCode, Violation
from kis_estimator.server.engine.estimate import price_estimate
from kis_estimator.server.engine.messages import violation
from kis_estimator.server.engine.model import Decision, Resolution, RuleApplication, Status
from kis_estimator.server.engine.months import month_bounds_utc
from kis_estimator.server.engine.records import EstimateRecord
from kis_estimator.server.metrics import Metrics
from kis_estimator.server.service.caller import Caller
from kis_estimator.server.service.estimates import Stored
from kis_estimator.server.service.evidence import EvidenceArchive, summary_of
from kis_estimator.server.service.mixed_quota import mixed_usage, month_of_request, required_text
from kis_estimator.server.service.paging import PageTokens, page_size_of
from kis_estimator.server.storage.repository import StaleRevisionError, Store

MAX_TEXT = 500
REVIEWABLE = Status.NEEDS_REVIEW


@dataclass(frozen=True, slots=True)
class ReviewAnswer:
    """One resolution as the client sent it (index kept for error paths)."""

    reason_id: str
    model: str | None
    unit_price_krw: int | None


@dataclass(frozen=True, slots=True)
class QueuePage:
    records: tuple[EstimateRecord, ...]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class MonthReport:
    month: str
    accepted: int
    completed: int
    needs_review: int
    reviewed: int
    rejected: int
    auto_processing_rate_pct: Decimal | None
    tat_median_ms: int | None
    tat_p90_ms: int | None
    tat_samples: int
    oldest_open_review_age_s: int | None
    mixed_used: int
    mixed_quota: int


def nearest_rank(sorted_values: Sequence[int], pct: int) -> int | None:
    """Nearest-rank percentile of ascending values (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct * len(sorted_values) / 100))
    return sorted_values[rank - 1]


class ReviewService:
    def __init__(
        self,
        store: Store,
        catalog: Catalog,
        clock: Clock,
        archive: EvidenceArchive,
        metrics: Metrics,
        mixed_monthly_quota: int,
        page_tokens: PageTokens | None = None,
    ) -> None:
        self._pages = page_tokens or PageTokens.random()
        self._store = store
        self._catalog = catalog
        self._clock = clock
        self._archive = archive
        self._metrics = metrics
        self._mixed_quota = mixed_monthly_quota

    def queue(self, page_size: int, page_token: str) -> QueuePage:
        """NEEDS_REVIEW estimates, oldest first."""
        size = page_size_of(page_size)
        cursor = self._pages.estimate_cursor(page_token, "review-queue")
        with self._store.unit_of_work(read_only=True) as uow:
            records, next_cursor = uow.estimates.list_oldest(REVIEWABLE, size, cursor)
        return QueuePage(tuple(records), self._pages.estimate_token(next_cursor, "review-queue"))

    def _load_reviewable(self, estimate_id: str) -> EstimateRecord:
        with self._store.unit_of_work(read_only=True) as uow:
            record = uow.estimates.get(estimate_id) if estimate_id else None
        if record is None:
            raise DomainError(violation(ErrorCode.ESTIMATE_NOT_FOUND, "estimate_id", v=estimate_id))
        if record.status is not REVIEWABLE:
            raise DomainError(
                violation(
                    ErrorCode.ESTIMATE_NOT_REVIEWABLE,
                    "estimate_id",
                    v=estimate_id,
                    status=record.status.value,
                )
            )
        return record

    def _resolutions(self, record: EstimateRecord, answers: Sequence[ReviewAnswer]) -> dict[str, Resolution]:
        """Every open reason answered exactly once with a valid answer, else REVIEW_INCOMPLETE."""
        open_ids = [r.reason_id for r in record.quote.review_reasons if r.resolution is None]
        needs_model = {s.reason_id for s in record.quote.selections if s.reason_id and s.model is None}
        problems: list[Violation] = []
        chosen: dict[str, Resolution] = {}
        for k, answer in enumerate(answers):
            path = f"resolutions[{k}]"
            rid = answer.reason_id.strip()
            if rid not in open_ids or rid in chosen:
                problems.append(
                    violation(ErrorCode.REVIEW_INCOMPLETE, f"{path}.reason_id", reason_id=rid or "?")
                )
                continue
            model = (answer.model or "").strip() or None
            price = answer.unit_price_krw
            if price is None or not 0 < price <= 1_000_000_000:
                problems.append(
                    violation(ErrorCode.REVIEW_INCOMPLETE, f"{path}.unit_price_krw", reason_id=rid)
                )
                continue
            if rid in needs_model and (model is None or len(model) > 40):
                problems.append(violation(ErrorCode.REVIEW_INCOMPLETE, f"{path}.model", reason_id=rid))
                continue
            chosen[rid] = Resolution(
                reason_id=rid, unit_price_krw=price, model=model if rid in needs_model else None
            )
        problems += [
            violation(ErrorCode.REVIEW_INCOMPLETE, "resolutions", reason_id=rid)
            for rid in open_ids
            if rid not in chosen
        ]
        if problems:
            raise DomainError(problems)
        return chosen

    def complete(
        self, estimate_id: str, answers: Sequence[ReviewAnswer], comment: str, caller: Caller
    ) -> Stored:
        """CompleteReview (docs/pricing-rules.md §11)."""
        record = self._load_reviewable(estimate_id)
        if record.quote.catalog_version != self._catalog.version:
            raise DomainError(
                violation(
                    ErrorCode.ESTIMATE_NOT_REVIEWABLE,
                    "estimate_id",
                    v=estimate_id,
                    status="PRICED_ON_OLD_CATALOG",
                )
            )
        resolutions = self._resolutions(record, answers)
        comment = comment.strip()[:MAX_TEXT]
        quote = price_estimate(record.request, self._catalog, resolutions)
        now = self._clock.now()
        updated = replace(
            record,
            revision=record.revision + 1,
            status=Status.REVIEWED,
            decision=Decision.OK,
            completed_at=now,
            quote=quote,
        )
        answers_text = "; ".join(
            f"{r.reason_id}: {r.model + ' ' if r.model else ''}{r.unit_price_krw} KRW"
            for r in resolutions.values()
        )
        rules = [
            RuleApplication(
                "REV-R", "review", f"reviewed by {caller.actor} at {now:%Y-%m-%dT%H:%M:%SZ}: {answers_text}"
            )
        ]
        if comment:
            rules.append(RuleApplication("REV-R", "comment", comment))
        stored = self._commit(
            record,
            updated,
            rules,
            caller.audit(
                now,
                actions.REVIEW_COMPLETED,
                "REVIEWED",
                estimate_id=estimate_id,
                revision=updated.revision,
                answers=[f"{r.reason_id}={r.model or ''}@{r.unit_price_krw}" for r in resolutions.values()],
                comment=comment or None,
            ),
        )
        self._metrics.estimate_completed((now - record.accepted_at).total_seconds())
        return stored

    def reject(self, estimate_id: str, reason: str, caller: Caller) -> Stored:
        """RejectEstimate (docs/pricing-rules.md §11): NEEDS_REVIEW → REJECTED."""
        reason = required_text(reason, "reason", MAX_TEXT)
        record = self._load_reviewable(estimate_id)
        now = self._clock.now()
        updated = replace(
            record, revision=record.revision + 1, status=Status.REJECTED, decision=Decision.REJECT
        )
        rules = [
            RuleApplication(
                "REV-R", "rejection", f"rejected by {caller.actor} at {now:%Y-%m-%dT%H:%M:%SZ}: {reason}"
            )
        ]
        return self._commit(
            record,
            updated,
            rules,
            caller.audit(
                now,
                actions.ESTIMATE_REJECTED,
                "REJECTED",
                estimate_id=estimate_id,
                revision=updated.revision,
                reason=reason,
            ),
        )

    def _commit(
        self, before: EstimateRecord, after: EstimateRecord, rules: list[RuleApplication], draft: AuditDraft
    ) -> Stored:
        evidence = self._archive.build(after, rules)
        try:
            with self._store.unit_of_work() as uow:
                uow.estimates.update(after)
                uow.evidence.add(evidence)
                uow.audit.append(draft)
                uow.commit()
        except StaleRevisionError:
            raise DomainError(
                violation(
                    ErrorCode.ESTIMATE_NOT_REVIEWABLE,
                    "estimate_id",
                    v=before.estimate_id,
                    status="CHANGED_CONCURRENTLY",
                )
            ) from None
        return Stored(after, summary_of(evidence))

    def report(self, month: str) -> MonthReport:
        """docs/pricing-rules.md §16.3 figures for a KST month (empty: the current month)."""
        month = month_of_request(month, self._clock)
        start, end = month_bounds_utc(month)
        now = self._clock.now()
        with self._store.unit_of_work(read_only=True) as uow:
            counts = uow.estimates.count_by_status(start, end)
            tats = sorted(uow.estimates.tat_seconds(start, end))
            oldest = uow.estimates.oldest_accepted_at(REVIEWABLE)
            mixed = mixed_usage(uow, month, self._mixed_quota)
        completed = counts.get(Status.COMPLETED, 0)
        denominator = completed + counts.get(Status.NEEDS_REVIEW, 0) + counts.get(Status.REVIEWED, 0)
        rate = None
        if denominator:
            rate = (Decimal(completed * 100) / Decimal(denominator)).quantize(Decimal("0.01"), ROUND_HALF_UP)
        median = nearest_rank(tats, 50)
        p90 = nearest_rank(tats, 90)
        return MonthReport(
            month=month,
            accepted=sum(counts.values()),
            completed=completed,
            needs_review=counts.get(Status.NEEDS_REVIEW, 0),
            reviewed=counts.get(Status.REVIEWED, 0),
            rejected=counts.get(Status.REJECTED, 0),
            auto_processing_rate_pct=rate,
            tat_median_ms=None if median is None else median // 1000,
            tat_p90_ms=None if p90 is None else p90 // 1000,
            tat_samples=len(tats),
            oldest_open_review_age_s=None if oldest is None else int((now - oldest) / timedelta(seconds=1)),
            mixed_used=mixed.used,
            mixed_quota=mixed.quota,
        )
