"""Evidence bundles of estimate revisions (docs/pricing-rules.md §15): building, storing, serving with audit.

Bundles are built once, when a revision is accepted (in the transaction that stores it), and their
bytes are stored: the same revision therefore always yields the same bytes and SHA-256, across
restarts, catalog activations and signing-key rotations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kis_estimator.server.clock import Clock
from kis_estimator.server.engine import audit as actions
from kis_estimator.server.engine.audit import AuditDraft
from kis_estimator.server.engine.catalog import Catalog
from kis_estimator.server.engine.errors import DomainError, ErrorCode
from kis_estimator.server.engine.messages import echo, violation
from kis_estimator.server.engine.model import RuleApplication
from kis_estimator.server.engine.records import EstimateRecord
from kis_estimator.server.evidence.bundle import build_bundle
from kis_estimator.server.evidence.signing import ManifestSigner
from kis_estimator.server.metrics import Metrics
from kis_estimator.server.service.caller import Caller
from kis_estimator.server.service.denials import DenialAudit
from kis_estimator.server.storage.repository import EvidenceRecord, Store, UnitOfWork


@dataclass(frozen=True, slots=True)
class EvidenceSummary:
    sha256: str
    size_bytes: int


class EvidenceArchive:
    """Builds the bundle of a record and stages it in a unit of work."""

    def __init__(
        self, catalog: Catalog, signer: ManifestSigner | None, clock: Clock, metrics: Metrics
    ) -> None:
        self._catalog = catalog
        self._signer = signer
        self._clock = clock
        self._metrics = metrics

    def build(self, record: EstimateRecord, extra_rules: Sequence[RuleApplication] = ()) -> EvidenceRecord:
        bundle = build_bundle(record, self._catalog, signer=self._signer, extra_rules=extra_rules)
        self._metrics.evidence_bundle_built(bundle.size_bytes)
        return EvidenceRecord(
            estimate_id=record.estimate_id,
            revision=record.revision,
            sha256=bundle.sha256,
            size_bytes=bundle.size_bytes,
            bundle=bundle.zip_bytes,
            manifest_json=bundle.manifest_json,
            signature_key_id=bundle.signature.key_id if bundle.signature else None,
            signature=bundle.signature.signature if bundle.signature else None,
            created_at=self._clock.now(),
        )


def summary_of(evidence: EvidenceRecord | None) -> EvidenceSummary | None:
    return None if evidence is None else EvidenceSummary(evidence.sha256, evidence.size_bytes)


class EvidenceService:
    """GetEvidenceInfo (any role) and GetEvidenceBundle (ADMIN; every request audited)."""

    def __init__(
        self, store: Store, clock: Clock, metrics: Metrics, denials: DenialAudit | None = None
    ) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._denials = denials or DenialAudit(store, clock)

    def info(self, estimate_id: str, revision: int) -> EvidenceRecord:
        """Manifest, SHA-256 and size of a revision (0 = current); the blob is not loaded."""
        _check_revision(revision)
        with self._store.unit_of_work(read_only=True) as uow:
            found = uow.evidence.get_info(estimate_id, revision or None) if estimate_id else None
        if found is None:
            raise _not_found(estimate_id, revision)
        return found

    def bundle(self, estimate_id: str, revision: int, caller: Caller) -> EvidenceRecord:
        """The bundle bytes, after the download is audited (same transaction as the read).

        A revision outside 0 … MAX_REVISION is refused (REVISION_INVALID) and audited as such.
        """
        try:
            _check_revision(revision)
        except DomainError as refused:
            self.record_denied(estimate_id, revision, caller, refused.code.value)
            raise
        with self._store.unit_of_work() as uow:
            found = uow.evidence.get(estimate_id, revision or None) if estimate_id else None
            outcome = "ALLOWED" if found is not None else "NOT_FOUND"
            _audit_download(uow, caller, self._clock, estimate_id, revision, outcome, found)
            uow.commit()
        self._metrics.evidence_download("allowed" if found is not None else "not_found")
        if found is None:
            raise _not_found(estimate_id, revision)
        return found

    def record_denied(self, estimate_id: str, revision: int, caller: Caller, outcome: str) -> None:
        """Audit a refused bundle request, whatever refused it (``outcome``: UNAUTHENTICATED, DENIED
        or the error code); identical repeats are aggregated (server/service/denials.py)."""
        self._denials.record(_download_draft(caller, self._clock, estimate_id, revision, outcome, None))
        self._metrics.evidence_download("denied")


MAX_REVISION = 2**31 - 1  # the stores keep revisions as 32-bit integers
MAX_AUDITED_ID_CHARS = 128


def _check_revision(revision: int) -> None:
    if not 0 <= revision <= MAX_REVISION:
        raise DomainError(violation(ErrorCode.REVISION_INVALID, "revision", v=revision, max=MAX_REVISION))


def audited_text(value: str, max_chars: int = MAX_AUDITED_ID_CHARS) -> str:
    """``value`` as every store can keep it: cut to ``max_chars``, NUL and lone surrogates replaced.

    Refused requests are audited with what the caller sent, and PostgreSQL rejects NUL in text (so
    an audit write of a NUL-bearing id failed and the refusal became INTERNAL).
    """
    cut = value[:max_chars].replace("\x00", "\ufffd")
    return cut.encode("utf-8", "replace").decode("utf-8") if not cut.isascii() else cut


def _audit_download(
    uow: UnitOfWork,
    caller: Caller,
    clock: Clock,
    estimate_id: str,
    revision: int,
    outcome: str,
    found: EvidenceRecord | None,
) -> None:
    uow.audit.append(_download_draft(caller, clock, estimate_id, revision, outcome, found))


def _download_draft(
    caller: Caller,
    clock: Clock,
    estimate_id: str,
    revision: int,
    outcome: str,
    found: EvidenceRecord | None,
) -> AuditDraft:
    valid_revision = 1 <= revision <= MAX_REVISION
    return caller.audit(
        clock.now(),
        actions.EVIDENCE_DOWNLOAD,
        outcome,
        estimate_id=audited_text(estimate_id) or None,
        revision=found.revision if found else (revision if valid_revision else None),
        sha256=found.sha256 if found else None,
        size_bytes=found.size_bytes if found else None,
        # a revision no store column can hold is kept as text, bounded like any echoed value
        requested_revision=None if valid_revision or revision == 0 else echo(revision),
    )


def _not_found(estimate_id: str, revision: int) -> DomainError:
    shown = f"{estimate_id} revision {revision}" if revision else estimate_id
    return DomainError(violation(ErrorCode.ESTIMATE_NOT_FOUND, "estimate_id", v=shown))
