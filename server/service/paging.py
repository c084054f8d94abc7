"""Page sizes and signed, opaque page tokens shared by every listing RPC.

Page sizes follow AIP-158: 0 (unset) means :data:`DEFAULT_PAGE_SIZE`; a size above
:data:`MAX_PAGE_SIZE` is lowered to it (a client asking for "everything" gets full pages and a
``next_page_token``, not an error); a negative size is ``PAGE_SIZE_INVALID`` (INVALID_ARGUMENT).

A token is URL-safe base64 (no padding) of a 16-byte HMAC-SHA256 tag followed by a small JSON
object: the storage cursor plus the ``scope`` of the query (RPC and filters) it belongs to, so a
token is refused when reused with other filters. Tokens were plain base64 JSON before; a client
could then forge a cursor holding a year-1 time, an integer of 10**30 or a lone surrogate, which
reached the SQL layer and came back as INTERNAL. Now:

* the tag is checked first (constant time): a token this server did not issue is
  ``PAGE_TOKEN_INVALID`` before anything is parsed or sent to storage;
* the cursor of a genuine token is still range-checked (a time that converts to UTC inside years
  1 … 9999, an id of at most 128 characters that encodes as UTF-8 without NUL, a positive 63-bit
  sequence number), so a bug in issuing can never turn into a storage error either;
* tokens longer than :data:`MAX_TOKEN_CHARS` are refused unread.

The key is derived from the evidence signing key ring (``KeyRing.derived_key(PAGE_TOKEN_KEY_PURPOSE)``),
which every replica of a deployment shares, so a token issued by one replica is accepted by the others.
Rotating the
active evidence key invalidates outstanding page tokens: their holders get ``PAGE_TOKEN_INVALID``
("invalid or expired; list again without a page token"), which is the documented recovery.
Tokens do not expire otherwise: they only name a position in a listing, and grant nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from datetime import UTC, datetime
from typing import Any

from kis_estimator.server.engine.errors import DomainError, ErrorCode
from kis_estimator.server.engine.messages import violation
from kis_estimator.server.storage.repository import EstimateCursor

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
MAX_TOKEN_CHARS = 1024
TAG_BYTES = 16
MAX_CURSOR_ID_CHARS = 128
MAX_SEQ = 2**63 - 1
PAGE_TOKEN_KEY_PURPOSE = b"kis-estimator/page-token/v1"  # KeyRing.derived_key: domain separation


def page_size_of(requested: int) -> int:
    """The page size to serve (AIP-158): 0 → the default, above the maximum → the maximum.

    Negative sizes are refused with ``PAGE_SIZE_INVALID`` at ``page_size``.
    """
    if requested < 0:
        raise DomainError(violation(ErrorCode.PAGE_SIZE_INVALID, "page_size", v=requested, max=MAX_PAGE_SIZE))
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def _invalid(token: str) -> DomainError:
    return DomainError(violation(ErrorCode.PAGE_TOKEN_INVALID, "page_token", v=token[:64]))


def _storable_text(value: object) -> bool:
    """A string every store keeps as given: UTF-8 encodable (no lone surrogate), no NUL, bounded."""
    if not isinstance(value, str) or not value or len(value) > MAX_CURSOR_ID_CHARS or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class PageTokens:
    """Issues and checks the page tokens of one deployment (see the module docstring)."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("page token key must be at least 32 bytes")
        self._key = key

    @classmethod
    def random(cls) -> PageTokens:
        """A process-local key: tokens are accepted only by this process (tests, single replicas)."""
        return cls(secrets.token_bytes(32))

    def __repr__(self) -> str:
        return "PageTokens(key=***)"

    def _tag(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:TAG_BYTES]

    def encode(self, cursor: dict[str, Any], scope: str) -> str:
        payload = json.dumps({"c": cursor, "s": scope}, separators=(",", ":"), sort_keys=True).encode()
        return base64.urlsafe_b64encode(self._tag(payload) + payload).decode().rstrip("=")

    def decode(self, token: str, scope: str) -> dict[str, Any] | None:
        """The cursor inside ``token`` (None for an empty token); PAGE_TOKEN_INVALID otherwise."""
        if not token:
            return None
        if len(token) > MAX_TOKEN_CHARS:
            raise _invalid(token)
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, binascii.Error):
            raise _invalid(token) from None
        tag, payload = raw[:TAG_BYTES], raw[TAG_BYTES:]
        if len(tag) < TAG_BYTES or not hmac.compare_digest(tag, self._tag(payload)):
            raise _invalid(token)
        try:
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise _invalid(token) from None
        if not isinstance(data, dict) or data.get("s") != scope or not isinstance(data.get("c"), dict):
            raise _invalid(token)  # a token of another query (other RPC or other filters)
        cursor: dict[str, Any] = data["c"]
        return cursor

    def estimate_token(self, cursor: EstimateCursor | None, scope: str) -> str:
        if cursor is None:
            return ""
        return self.encode({"t": cursor.accepted_at.isoformat(), "i": cursor.estimate_id}, scope)

    def estimate_cursor(self, token: str, scope: str) -> EstimateCursor | None:
        data = self.decode(token, scope)
        if data is None:
            return None
        try:
            accepted_at = datetime.fromisoformat(data["t"])
            if accepted_at.tzinfo is None:
                raise ValueError("naive time")
            accepted_at = accepted_at.astimezone(UTC)  # OverflowError outside years 1 … 9999 in UTC
        except (KeyError, TypeError, ValueError, OverflowError):
            raise _invalid(token) from None
        estimate_id = data.get("i")
        if not _storable_text(estimate_id):
            raise _invalid(token)
        assert isinstance(estimate_id, str)
        return EstimateCursor(accepted_at=accepted_at, estimate_id=estimate_id)

    def seq_token(self, before_seq: int | None, scope: str) -> str:
        return "" if before_seq is None else self.encode({"b": before_seq}, scope)

    def seq_cursor(self, token: str, scope: str) -> int | None:
        """The audit sequence number inside ``token`` (exclusive upper bound), or None."""
        data = self.decode(token, scope)
        if data is None:
            return None
        before = data.get("b")
        if isinstance(before, bool) or not isinstance(before, int) or not 1 <= before <= MAX_SEQ:
            raise _invalid(token)
        return before
