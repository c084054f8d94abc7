"""Roles and the operation table of docs/pricing-rules.md §16.4."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    ADMIN = "ADMIN"
    ESTIMATOR = "ESTIMATOR"
    VIEWER = "VIEWER"


_ALL = frozenset(Role)
_WRITERS = frozenset({Role.ADMIN, Role.ESTIMATOR})
_ADMIN = frozenset({Role.ADMIN})

# Operation name -> roles allowed to call it. Operations not listed are denied to every role.
# ValidateEstimate is a dry run of CreateEstimate and gets its roles (docs/pricing-rules.md §20).
ALLOWED_ROLES: Mapping[str, frozenset[Role]] = {
    "CreateEstimate": _WRITERS,
    "ValidateEstimate": _WRITERS,
    "GetEstimate": _ALL,
    "ListEstimates": _ALL,
    "GetQuoteDocument": _ALL,
    "GetEvidenceInfo": _ALL,
    "GetMetrics": _ALL,
    "ListReviewQueue": _WRITERS,
    "CompleteReview": _WRITERS,
    "RejectEstimate": _WRITERS,
    "GetEvidenceBundle": _ADMIN,
    "GrantMixedException": _ADMIN,
    "GetMixedQuota": _ALL,
    "ListAuditEvents": _ADMIN,
    "ActivateCatalog": _ADMIN,
}


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: the token's id, name and role."""

    token_id: str
    name: str
    role: Role


def may_call(role: Role, operation: str) -> bool:
    """True if ``role`` may call ``operation`` (deny by default)."""
    return role in ALLOWED_ROLES.get(operation, frozenset())
