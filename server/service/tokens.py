"""API tokens: creation (plaintext shown once, only its SHA-256 stored) and authentication."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from server.clock import Clock
from server.engine.roles import Principal, Role
from server.storage.repository import Store

TOKEN_PREFIX = "kis_"
_MAX_TOKEN_CHARS = 512


@dataclass(frozen=True, slots=True)
class NewToken:
    token_id: str
    token: str  # plaintext; never stored


def token_digest(token: str) -> str:
    """Lowercase hex SHA-256 of a token's UTF-8 bytes (what the store keeps)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenService:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def create(self, role: Role, name: str) -> NewToken:
        """A new random bearer token for ``role``; returns the plaintext once."""
        name = name.strip()
        if not name or len(name) > 200:
            raise ValueError("token name must be 1-200 characters")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_id = f"tok_{secrets.token_hex(6)}"
        with self._store.unit_of_work() as uow:
            uow.tokens.add(token_id, name, role.value, token_digest(token), self._clock.now())
            uow.commit()
        return NewToken(token_id=token_id, token=token)

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a valid, unrevoked token, else None."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > _MAX_TOKEN_CHARS:
            return None
        digest = token_digest(token)
        with self._store.unit_of_work(read_only=True) as uow:
            record = uow.tokens.find_by_hash(digest)
        if record is None or not hmac.compare_digest(record.token_sha256, digest):
            return None
        return Principal(token_id=record.token_id, name=record.name, role=Role(record.role))
