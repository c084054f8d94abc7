"""Who is calling: the authenticated principal (if any) and the peer address, for audit records."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kis_estimator.server.engine.audit import AuditDraft
from kis_estimator.server.engine.roles import Principal

ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class RejectedToken:
    """A stored token that was presented but not accepted (revoked): who tried, for the audit log."""

    token_id: str
    name: str
    state: str  # "REVOKED"


@dataclass(frozen=True, slots=True)
class Caller:
    """``principal`` when authenticated; otherwise ``rejected`` names a known token that was refused."""

    principal: Principal | None
    peer: str = ""
    rejected: RejectedToken | None = None

    @property
    def actor(self) -> str:
        if self.principal:
            return self.principal.name
        return self.rejected.name if self.rejected else ANONYMOUS

    @property
    def role(self) -> str:
        return self.principal.role.value if self.principal else ""

    def audit(
        self,
        at: datetime,
        action: str,
        outcome: str,
        *,
        estimate_id: str | None = None,
        revision: int | None = None,
        **details: Any,
    ) -> AuditDraft:
        """An audit draft of this caller's action (docs/pricing-rules.md §15): actor, time, outcome, facts.

        A refused token adds ``token_id`` and ``token_state`` to the details (its role is not granted,
        so ``role`` stays empty).
        """
        if self.rejected is not None:
            details = {**details, "token_id": self.rejected.token_id, "token_state": self.rejected.state}
        return AuditDraft(
            at=at,
            action=action,
            outcome=outcome,
            actor=self.actor,
            role=self.role,
            estimate_id=estimate_id,
            revision=revision,
            details={k: v for k, v in details.items() if v is not None},
            peer=self.peer,
        )
