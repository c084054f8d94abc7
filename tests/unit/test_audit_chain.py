"""The audit hash chain (kis_estimator.server.engine.audit): canonical hashing, draft validation,
verify_chain."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone

import pytest

from kis_estimator.server.engine import audit
from kis_estimator.server.engine.audit import (
    GENESIS_HASH,
    AuditAction,
    AuditDraft,
    AuditEvent,
    ChainBreak,
    DetailValue,
    event_hash,
    seal,
    verify_chain,
)

T0 = datetime(2025, 10, 1, 3, 4, 5, 123456, tzinfo=UTC)
KST = timezone(timedelta(hours=9))


def draft(
    n: int = 0,
    *,
    at: datetime | None = None,
    action: str = audit.ESTIMATE_ACCEPTED,
    details: Mapping[str, DetailValue] | None = None,
) -> AuditDraft:
    return AuditDraft(
        at=T0 + timedelta(seconds=n) if at is None else at,
        action=action,
        outcome="OK",
        actor="estimator-1",
        role="ESTIMATOR",
        estimate_id=f"E{n}",
        revision=1,
        details={"n": n} if details is None else details,
        peer="ipv4:127.0.0.1:5000",
    )


def chain(count: int, *, anchor_seq: int = 0, anchor_hash: str = GENESIS_HASH) -> list[AuditEvent]:
    events: list[AuditEvent] = []
    prev = anchor_hash
    for i in range(count):
        event = seal(anchor_seq + 1 + i, prev, draft(i))
        events.append(event)
        prev = event.hash
    return events


# --------------------------------------------------------------------------- hashing


def test_event_hash_is_sha256_of_the_canonical_json() -> None:
    d = AuditDraft(
        at=datetime(2025, 10, 1, 12, 4, 5, 7, tzinfo=KST),  # 03:04:05.000007 UTC
        action=AuditAction.MIXED_GRANT,
        outcome="OK",
        actor="관리자",
        role="ADMIN",
        estimate_id=None,
        revision=None,
        details={"reason": "고객 요청", "month": "2025-10", "used": 2, "grant": True, "tags": ["a", "b"]},
        peer="",
    )
    canonical = (
        '{"action":"MIXED_GRANT","actor":"관리자","at":"2025-10-01T03:04:05.000007Z",'
        '"details":{"grant":true,"month":"2025-10","reason":"고객 요청","tags":["a","b"],"used":2},'
        '"estimate_id":null,"outcome":"OK","peer":"","prev_hash":"' + "a" * 64 + '","revision":null,'
        '"role":"ADMIN","seq":7}'
    )
    expected = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    assert event_hash(7, "a" * 64, d) == expected
    assert event_hash(7, "a" * 64, dataclasses.replace(d)) == expected  # deterministic


def test_the_same_instant_in_another_zone_hashes_the_same() -> None:
    assert event_hash(1, GENESIS_HASH, draft(at=T0)) == event_hash(
        1, GENESIS_HASH, draft(at=T0.astimezone(KST))
    )


@pytest.mark.parametrize(
    "change",
    [
        {"at": T0 + timedelta(microseconds=1)},
        {"action": audit.EVIDENCE_DOWNLOAD},
        {"outcome": "DENIED"},
        {"actor": "estimator-2"},
        {"role": "ADMIN"},
        {"estimate_id": None},
        {"revision": 2},
        {"details": {"n": "0"}},
        {"details": {"n": True}},
        {"peer": ""},
    ],
    ids=[
        "at",
        "action",
        "outcome",
        "actor",
        "role",
        "estimate_id",
        "revision",
        "detail_type",
        "bool",
        "peer",
    ],
)
def test_every_field_is_covered_by_the_hash(change: dict[str, object]) -> None:
    base = draft(0, details={"n": 1})
    changed = dataclasses.replace(base, **change)  # type: ignore[arg-type]  # keys are draft fields
    assert event_hash(1, GENESIS_HASH, changed) != event_hash(1, GENESIS_HASH, base)


def test_seq_and_prev_hash_are_covered_by_the_hash() -> None:
    d = draft()
    assert (
        len({event_hash(1, GENESIS_HASH, d), event_hash(2, GENESIS_HASH, d), event_hash(1, "f" * 64, d)}) == 3
    )


def test_seal_places_a_draft_in_the_chain() -> None:
    d = draft(3)
    event = seal(4, "b" * 64, d)
    assert event == AuditEvent(
        seq=4,
        prev_hash="b" * 64,
        hash=event_hash(4, "b" * 64, d),
        at=T0 + timedelta(seconds=3),
        action="ESTIMATE_ACCEPTED",
        outcome="OK",
        actor="estimator-1",
        role="ESTIMATOR",
        estimate_id="E3",
        revision=1,
        details={"n": 3},
        peer="ipv4:127.0.0.1:5000",
    )
    assert event.draft == d


# --------------------------------------------------------------------------- drafts


def test_draft_normalises_time_and_action_and_copies_details() -> None:
    tags = ["x"]
    d = draft(at=T0.astimezone(KST), action=AuditAction.TOKEN_CREATED, details={"tags": tags})
    tags.append("y")
    assert (d.at.tzinfo, d.at, type(d.action), d.action, d.details) == (
        UTC,
        T0,
        str,
        "TOKEN_CREATED",
        {"tags": ["x"]},
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"at": datetime(2025, 10, 1)}, "timezone-aware"),  # noqa: DTZ001  # naive on purpose
        ({"action": ""}, "action"),
        ({"revision": 0}, "revision"),
        ({"revision": True}, "revision"),
        ({"details": {"kg": 1.5}}, "float"),
        ({"details": {"codes": ["A", 1]}}, "strings only"),
        ({"details": {"nested": {"a": 1}}}, "dict"),
        ({"details": {1: "a"}}, "keys"),
        ({"actor": None}, "actor"),
    ],
    ids=[
        "naive_at",
        "empty_action",
        "revision_0",
        "revision_bool",
        "float",
        "mixed_list",
        "nested",
        "int_key",
        "actor",
    ],
)
def test_invalid_drafts_are_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(draft(), **change)  # type: ignore[arg-type]  # invalid on purpose


def test_action_constants_are_the_enum_values() -> None:
    assert [getattr(audit, a.name) for a in AuditAction] == [a.value for a in AuditAction]
    assert len(AuditAction) == 10


# --------------------------------------------------------------------------- verify_chain


def _edit(events: list[AuditEvent], index: int, **change: object) -> list[AuditEvent]:
    edited = list(events)
    edited[index] = dataclasses.replace(events[index], **change)  # type: ignore[arg-type]  # event fields
    return edited


def _relinked(events: list[AuditEvent]) -> list[AuditEvent]:
    """Record 3 edited and its own hash recomputed (an attacker who knows the algorithm)."""
    changed = dataclasses.replace(events[2], outcome="DENIED")
    forged = dataclasses.replace(changed, hash=event_hash(3, changed.prev_hash, changed.draft))
    return [*events[:2], forged, *events[3:]]


EVENTS = chain(6)
CASES: list[tuple[str, list[AuditEvent], ChainBreak | None]] = [
    ("intact", EVENTS, None),
    ("empty", [], None),
    ("details_edited", _edit(EVENTS, 3, details={"n": 99}), ChainBreak(4, "record 4 was altered")),
    ("time_edited", _edit(EVENTS, 0, at=T0 - timedelta(days=1)), ChainBreak(1, "record 1 was altered")),
    ("hash_edited", _edit(EVENTS, 5, hash="c" * 64), ChainBreak(6, "record 6 was altered")),
    ("prev_hash_edited", _edit(EVENTS, 2, prev_hash="d" * 64), ChainBreak(3, "record 3 was altered")),
    ("float_smuggled", _edit(EVENTS, 1, details={"n": 1.0}), ChainBreak(2, "record 2 was altered")),
    ("naive_time", _edit(EVENTS, 1, at=datetime(2025, 1, 1)), ChainBreak(2, "record 2 was altered")),  # noqa: DTZ001
    ("relinked", _relinked(EVENTS), ChainBreak(4, "record 4 does not link to record 3")),
    ("middle_deleted", EVENTS[:2] + EVENTS[3:], ChainBreak(4, "missing record(s) before seq 4")),
    ("first_deleted", EVENTS[1:], ChainBreak(2, "missing record(s) before seq 2")),
    ("two_deleted", EVENTS[:1] + EVENTS[3:], ChainBreak(4, "missing record(s) before seq 4")),
    ("swapped", [EVENTS[0], EVENTS[2], EVENTS[1]], ChainBreak(3, "missing record(s) before seq 3")),
    ("repeated", [*EVENTS[:3], EVENTS[2]], ChainBreak(3, "record 3 is out of order (expected seq 4)")),
]


@pytest.mark.parametrize(("events", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_verify_chain_from_genesis(events: list[AuditEvent], expected: ChainBreak | None) -> None:
    assert verify_chain(events, anchor_seq=0, anchor_hash=GENESIS_HASH) == expected


def test_verify_chain_from_an_anchor() -> None:
    full = chain(8)
    anchor = full[4]
    assert verify_chain(full[5:], anchor_seq=anchor.seq, anchor_hash=anchor.hash) is None
    assert verify_chain(full[5:], anchor_seq=anchor.seq, anchor_hash="e" * 64) == ChainBreak(
        6, "record 6 does not link to the anchor"
    )
    assert verify_chain(full[6:], anchor_seq=anchor.seq, anchor_hash=anchor.hash) == ChainBreak(
        7, "missing record(s) before seq 7"
    )
    assert verify_chain([], anchor_seq=anchor.seq, anchor_hash=anchor.hash) is None


def test_verify_chain_stops_at_the_first_break_without_reading_further() -> None:
    events = _edit(chain(4), 1, outcome="forged")

    def lazily() -> Iterator[AuditEvent]:
        yield from events[:2]
        raise AssertionError("read past the break")

    assert verify_chain(lazily(), anchor_seq=0, anchor_hash=GENESIS_HASH) == ChainBreak(
        2, "record 2 was altered"
    )
