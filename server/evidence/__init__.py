"""Evidence bundles of estimate revisions (docs/pricing-rules.md §15): building, signing, verification.

Imports only the stdlib and :mod:`kis_estimator.server.engine` (docs/conventions.md §1).
"""

from kis_estimator.server.evidence.bundle import EvidenceBundle, EvidenceError, build_bundle
from kis_estimator.server.evidence.signing import (
    KeyRing,
    ManifestSigner,
    Signature,
    SignatureStatus,
    parse_keyring,
)
from kis_estimator.server.evidence.verify import Finding, FindingCode, VerificationReport, verify_bundle

__all__ = [
    "EvidenceBundle",
    "EvidenceError",
    "Finding",
    "FindingCode",
    "KeyRing",
    "ManifestSigner",
    "Signature",
    "SignatureStatus",
    "VerificationReport",
    "build_bundle",
    "parse_keyring",
    "verify_bundle",
]
