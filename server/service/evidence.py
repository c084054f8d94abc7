"""Evidence bundles of estimate revisions (docs/pricing-rules.md §15): building, storing, serving with audit.

Bundles are built once, when a revision is accepted (in the transaction that stores it), and their
bytes are stored: the same revision therefore always yields the same bytes and SHA-256, across
restarts, catalog activations and signing-key rotations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from server.clock import Clock
from server.engine import audit as actions
from server.engine.catalog import Catalog
from server.engine.errors import DomainError, ErrorCode
from server.engine.messages import violation
from server.engine.model import RuleApplication
from server.engine.records import EstimateRecord
from server.evidence.bundle import build_bundle
from server.evidence.signing import ManifestSigner
from server.metrics import Metrics
from server.service.caller import Caller
from server.storage.repository import EvidenceRecord, Store, UnitOfWork


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

    def __init__(self, store: Store, clock: Clock, metrics: Metrics) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics

    def info(self, estimate_id: str, revision: int) -> EvidenceRecord:
        """Manifest, SHA-256 and size of a revision (0 = current); the blob is not loaded."""
        with self._store.unit_of_work(read_only=True) as uow:
            found = uow.evidence.get_info(estimate_id, revision or None) if estimate_id else None
        if found is None:
            raise _not_found(estimate_id, revision)
        return found

    def bundle(self, estimate_id: str, revision: int, caller: Caller) -> EvidenceRecord:
        """The bundle bytes, after the download is audited (same transaction as the read)."""
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
        """Audit a refused bundle request (no token, or a role other than ADMIN)."""
        with self._store.unit_of_work() as uow:
            _audit_download(uow, caller, self._clock, estimate_id[:128], revision, outcome, None)
            uow.commit()
        self._metrics.evidence_download("denied")


def _audit_download(
    uow: UnitOfWork,
    caller: Caller,
    clock: Clock,
    estimate_id: str,
    revision: int,
    outcome: str,
    found: EvidenceRecord | None,
) -> None:
    uow.audit.append(
        caller.audit(
            clock.now(),
            actions.EVIDENCE_DOWNLOAD,
            outcome,
            estimate_id=estimate_id or None,
            revision=found.revision if found else (revision or None),
            sha256=found.sha256 if found else None,
            size_bytes=found.size_bytes if found else None,
        )
    )


def _not_found(estimate_id: str, revision: int) -> DomainError:
    shown = f"{estimate_id} revision {revision}" if revision else estimate_id
    return DomainError(violation(ErrorCode.ESTIMATE_NOT_FOUND, "estimate_id", v=shown))
