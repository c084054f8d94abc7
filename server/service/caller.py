"""Who is calling: the authenticated principal (if any) and the peer address, for audit records."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from server.engine.audit import AuditDraft
from server.engine.roles import Principal

ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Caller:
    principal: Principal | None
    peer: str = ""

    @property
    def actor(self) -> str:
        return self.principal.name if self.principal else ANONYMOUS

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
        """An audit draft of this caller's action (docs/pricing-rules.md §15): actor, time, outcome, facts."""
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
