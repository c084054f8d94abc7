"""Page sizes and opaque page tokens shared by every listing RPC.

Page sizes follow AIP-158: 0 (unset) means :data:`DEFAULT_PAGE_SIZE`; a size above
:data:`MAX_PAGE_SIZE` is lowered to it (a client asking for "everything" gets full pages and a
``next_page_token``, not an error); a negative size is ``PAGE_SIZE_INVALID`` (INVALID_ARGUMENT).

A token is URL-safe base64 of a small JSON object: the storage cursor plus the ``scope`` of the query
(RPC and filters) it belongs to, so a token is refused when reused with other filters.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from server.engine.errors import DomainError, ErrorCode
from server.engine.messages import violation
from server.storage.repository import EstimateCursor

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


def page_size_of(requested: int) -> int:
    """The page size to serve (AIP-158): 0 → the default, above the maximum → the maximum.

    Negative sizes are refused with ``PAGE_SIZE_INVALID`` at ``page_size``.
    """
    if requested < 0:
        raise DomainError(violation(ErrorCode.PAGE_SIZE_INVALID, "page_size", v=requested, max=MAX_PAGE_SIZE))
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def encode_token(cursor: dict[str, Any], scope: str) -> str:
    raw = json.dumps({"c": cursor, "s": scope}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(token: str, scope: str) -> dict[str, Any] | None:
    """The cursor inside ``token`` (None for an empty token); PAGE_TOKEN_INVALID otherwise."""
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if not isinstance(data, dict) or data.get("s") != scope or not isinstance(data.get("c"), dict):
            raise ValueError("token of another query")
        cursor: dict[str, Any] = data["c"]
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise DomainError(violation(ErrorCode.PAGE_TOKEN_INVALID, "page_token", v=token[:64])) from None
    return cursor


def estimate_cursor_token(cursor: EstimateCursor | None, scope: str) -> str:
    if cursor is None:
        return ""
    return encode_token({"t": cursor.accepted_at.isoformat(), "i": cursor.estimate_id}, scope)


def estimate_cursor_of(token: str, scope: str) -> EstimateCursor | None:
    data = decode_token(token, scope)
    if data is None:
        return None
    try:
        accepted_at = datetime.fromisoformat(data["t"])
        estimate_id = data["i"]
        if accepted_at.tzinfo is None or not isinstance(estimate_id, str):
            raise ValueError("malformed cursor")
    except (KeyError, TypeError, ValueError):
        raise DomainError(violation(ErrorCode.PAGE_TOKEN_INVALID, "page_token", v=token[:64])) from None
    return EstimateCursor(accepted_at=accepted_at, estimate_id=estimate_id)
