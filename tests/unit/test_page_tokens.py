"""Signed page tokens (server/service/paging.py): what is issued pages, nothing else reaches storage."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from kis_estimator.server.engine.errors import DomainError, ErrorCode
from kis_estimator.server.evidence.signing import parse_keyring
from kis_estimator.server.service.paging import MAX_TOKEN_CHARS, PAGE_TOKEN_KEY_PURPOSE, TAG_BYTES, PageTokens
from kis_estimator.server.storage.repository import EstimateCursor

KEY = b"k" * 32
CURSOR = EstimateCursor(datetime(2025, 10, 1, 3, 4, 5, 123456, tzinfo=UTC), "est_0123456789abcdef0123")


def _refused(call: Any) -> None:
    with pytest.raises(DomainError) as info:
        call()
    assert info.value.code is ErrorCode.PAGE_TOKEN_INVALID and info.value.field == "page_token"


def _resigned(tokens: PageTokens, cursor: dict[str, Any], scope: str) -> str:
    """A token the server itself signed over a cursor it would never issue (defence in depth)."""
    return tokens.encode(cursor, scope)


def test_round_trip_of_both_cursor_kinds() -> None:
    tokens = PageTokens(KEY)
    assert tokens.estimate_cursor(tokens.estimate_token(CURSOR, "estimates:"), "estimates:") == CURSOR
    assert tokens.seq_cursor(tokens.seq_token(42, "audit::::"), "audit::::") == 42
    assert tokens.estimate_token(None, "estimates:") == tokens.seq_token(None, "x") == ""
    assert tokens.estimate_cursor("", "estimates:") is None and tokens.seq_cursor("", "x") is None


def test_token_of_another_key_or_scope_is_refused() -> None:
    token = PageTokens(KEY).estimate_token(CURSOR, "estimates:")
    _refused(lambda: PageTokens(b"o" * 32).estimate_cursor(token, "estimates:"))
    _refused(lambda: PageTokens(KEY).estimate_cursor(token, "estimates:COMPLETED"))


@pytest.mark.parametrize(
    "token",
    [
        "garbage!",
        "a",
        base64.urlsafe_b64encode(b'{"c":{"b":1},"s":"audit::::"}').decode(),  # the old, unsigned form
        base64.urlsafe_b64encode(b"\x00" * TAG_BYTES + b'{"c":{"b":1},"s":"audit::::"}').decode(),
        "A" * (MAX_TOKEN_CHARS + 4),
    ],
    ids=["not-base64", "too-short", "unsigned-json", "zero-tag", "too-long"],
)
def test_unsigned_or_forged_tokens_are_refused(token: str) -> None:
    _refused(lambda: PageTokens(KEY).seq_cursor(token, "audit::::"))


def test_every_bit_of_an_issued_token_matters() -> None:
    tokens = PageTokens(KEY)
    raw = base64.urlsafe_b64decode(tokens.seq_token(7, "audit::::") + "==")
    for i in range(len(raw)):
        flipped = bytearray(raw)
        flipped[i] ^= 0x40
        token = base64.urlsafe_b64encode(bytes(flipped)).decode().rstrip("=")
        _refused(lambda token=token: tokens.seq_cursor(token, "audit::::"))


@pytest.mark.parametrize(
    "cursor",
    [
        {"t": "0001-01-01T00:00:00+01:00", "i": "est_x"},
        {"t": "9999-12-31T23:59:59-01:00", "i": "est_x"},
        {"t": "2025-01-01T00:00:00", "i": "est_x"},
        {"t": "not a time", "i": "est_x"},
        {"t": "2025-01-01T00:00:00+00:00", "i": "\ud800"},
        {"t": "2025-01-01T00:00:00+00:00", "i": "est_\x00"},
        {"t": "2025-01-01T00:00:00+00:00", "i": "e" * 129},
        {"t": "2025-01-01T00:00:00+00:00", "i": ""},
        {"t": "2025-01-01T00:00:00+00:00", "i": 5},
        {"i": "est_x"},
    ],
    ids=repr,
)
def test_signed_estimate_cursors_out_of_range_are_still_refused(cursor: dict[str, Any]) -> None:
    tokens = PageTokens(KEY)
    _refused(lambda: tokens.estimate_cursor(_resigned(tokens, cursor, "estimates:"), "estimates:"))


@pytest.mark.parametrize("before", [10**30, 2**63, 0, -1, True, "7", 1.5, None], ids=repr)
def test_signed_seq_cursors_out_of_range_are_still_refused(before: object) -> None:
    tokens = PageTokens(KEY)
    _refused(lambda: tokens.seq_cursor(_resigned(tokens, {"b": before}, "a"), "a"))


def test_cursor_times_are_normalised_to_utc() -> None:
    tokens = PageTokens(KEY)
    token = _resigned(tokens, {"t": "2025-01-01T09:00:00+09:00", "i": "est_x"}, "s")
    assert tokens.estimate_cursor(token, "s") == EstimateCursor(datetime(2025, 1, 1, tzinfo=UTC), "est_x")


def test_key_is_derived_from_the_evidence_key_ring_and_follows_its_active_key() -> None:
    ring = parse_keyring(f"k1:{'11' * 32},k2:{'22' * 32}")
    same = parse_keyring(f"k1:{'11' * 32}")
    rotated = parse_keyring(f"k1:{'11' * 32},k2:{'22' * 32}", active="k2")
    key = ring.derived_key(PAGE_TOKEN_KEY_PURPOSE)
    assert key == same.derived_key(PAGE_TOKEN_KEY_PURPOSE) != rotated.derived_key(PAGE_TOKEN_KEY_PURPOSE)
    assert key not in (bytes.fromhex("11" * 32), bytes.fromhex("22" * 32))
    token = PageTokens(key).seq_token(3, "s")
    assert PageTokens(same.derived_key(PAGE_TOKEN_KEY_PURPOSE)).seq_cursor(token, "s") == 3
    _refused(lambda: PageTokens(rotated.derived_key(PAGE_TOKEN_KEY_PURPOSE)).seq_cursor(token, "s"))
    assert repr(PageTokens(KEY)) == "PageTokens(key=***)"


def test_payload_is_json_with_scope_and_cursor() -> None:
    tokens = PageTokens(KEY)
    raw = base64.urlsafe_b64decode(tokens.seq_token(9, "audit:x") + "==")
    assert json.loads(raw[TAG_BYTES:]) == {"c": {"b": 9}, "s": "audit:x"}
