"""API tokens: creation (plaintext shown once, only its SHA-256 stored), authentication, revocation.

Revocation takes effect on the next call: every call looks its token up in the store (no cache).
Creation and revocation are audited in the same transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from kis_estimator.server.clock import Clock
from kis_estimator.server.engine import audit as actions
from kis_estimator.server.engine.roles import Principal, Role
from kis_estimator.server.service.caller import Caller, RejectedToken
from kis_estimator.server.service.rate_limit import Decision
from kis_estimator.server.service.shared_rate_limit import SharedRateLimiter
from kis_estimator.server.storage.repository import Store, TokenRecord

TOKEN_PREFIX = "kis_"
_MAX_TOKEN_CHARS = 512


@dataclass(frozen=True, slots=True)
class NewToken:
    token_id: str
    token: str  # plaintext; never stored


def token_digest(token: str) -> str:
    """Lowercase hex SHA-256 of a token's UTF-8 bytes (what the store keeps)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _digest_of_well_formed(token: str) -> str | None:
    """The digest to look ``token`` up by; None for a string that cannot be one of ours."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > _MAX_TOKEN_CHARS:
        return None
    return token_digest(token)


def _principal(record: TokenRecord | None, digest: str) -> Principal | None:
    """The principal of a stored token found by ``digest`` (compared in constant time)."""
    if record is None or not hmac.compare_digest(record.token_sha256, digest):
        return None
    return Principal(token_id=record.token_id, name=record.name, role=Role(record.role))


class TokenService:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def create(self, role: Role, name: str, caller: Caller | None = None) -> NewToken:
        """A new random bearer token for ``role``; returns the plaintext once."""
        name = name.strip()
        if not name or len(name) > 200:
            raise ValueError("token name must be 1-200 characters")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_id = f"tok_{secrets.token_hex(6)}"
        now = self._clock.now()
        with self._store.unit_of_work() as uow:
            uow.tokens.add(token_id, name, role.value, token_digest(token), now)
            uow.audit.append(
                (caller or Caller(None, "local")).audit(
                    now, actions.TOKEN_CREATED, "CREATED", token_id=token_id, name=name, token_role=role.value
                )
            )
            uow.commit()
        return NewToken(token_id=token_id, token=token)

    def list(self) -> Sequence[TokenRecord]:
        with self._store.unit_of_work(read_only=True) as uow:
            return list(uow.tokens.list())

    def revoke(self, token_id: str, caller: Caller | None = None) -> bool:
        """Revoke a token at once; False if unknown or already revoked."""
        now = self._clock.now()
        with self._store.unit_of_work() as uow:
            done = uow.tokens.revoke(token_id, now)
            if done:
                uow.audit.append(
                    (caller or Caller(None, "local")).audit(
                        now, actions.TOKEN_REVOKED, "REVOKED", token_id=token_id
                    )
                )
            uow.commit()
        return done

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a valid, unrevoked token, else None."""
        digest = _digest_of_well_formed(token)
        if digest is None:
            return None
        with self._store.lookup() as uow:  # one statement, every call: no transaction around it
            return _principal(uow.tokens.find_by_hash(digest), digest)

    def authenticate_spending(
        self, token: str, roles: Sequence[str], budget: SharedRateLimiter
    ) -> tuple[Principal | None, Decision | None]:
        """:meth:`authenticate`, and when the token's role is one of ``roles`` one request spent
        from its budget, in one statement (``SharedRateLimiter.find_token_and_spend``). The
        decision is None when nothing was spent: no such token, or a role that may not call."""
        digest = _digest_of_well_formed(token)
        if digest is None:
            return None, None
        record, decision = budget.find_token_and_spend(digest, roles)
        principal = _principal(record, digest)
        return principal, None if principal is None else decision

    def identify_rejected(self, token: str) -> RejectedToken | None:
        """The stored token behind a token :meth:`authenticate` refused (revoked), for the audit log.

        None for a string that was never issued here. Called only to audit a refused call.
        """
        digest = _digest_of_well_formed(token)
        if digest is None:
            return None
        with self._store.lookup() as uow:  # one statement, every call: no transaction around it
            record = uow.tokens.find_by_hash(digest, include_revoked=True)
        if record is None or record.revoked_at is None:
            return None
        if not hmac.compare_digest(record.token_sha256, digest):
            return None
        return RejectedToken(token_id=record.token_id, name=record.name, state="REVOKED")
