"""The incident ledger: security declarations and functional bug reports the criteria count.

``kis-release incident declare --security`` and ``incident report-bug`` write it; the criteria
``security_vulnerability`` and ``functional_bugs`` read it (through :class:`IncidentRecords`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from kis_estimator.workflows.errors import WorkflowError
from kis_estimator.workflows.tracker.idempotency import atomic_write

__all__ = ["IncidentLedger", "IncidentLedgerError", "IncidentRecords", "LedgerEntry", "LedgerEntryKind"]


def _require_aware(when: datetime, name: str) -> None:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{name}={when!r}: expected an aware datetime")


class IncidentLedgerError(WorkflowError):
    """The ledger file cannot be read or written; the message names the file."""


class LedgerEntryKind(StrEnum):
    SECURITY = "security"
    BUG = "bug"


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    id: str  # deterministic: the same declaration recorded twice is one entry
    kind: LedgerEntryKind
    text: str
    by: str
    at: datetime  # aware


class IncidentRecords(Protocol):
    """What the engine reads from the incident ledger; ``since``/``until`` are inclusive."""

    def security_declarations(self, since: datetime, until: datetime) -> tuple[LedgerEntry, ...]: ...

    def bug_reports(self, since: datetime, until: datetime) -> tuple[LedgerEntry, ...]: ...


class IncidentLedger:
    """Security declarations and functional bug reports in ``<state_dir>/incident_ledger.json``.

    Writers take an exclusive ``flock`` on a sibling lock file and replace the file atomically, so
    concurrent ``kis-release incident`` runs never lose an entry and readers never see half a file.
    A missing file is an empty ledger (nothing was ever declared); a corrupt one is an error.
    """

    FILENAME = "incident_ledger.json"

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / self.FILENAME

    def declare_security(self, text: str, by: str, at: datetime) -> LedgerEntry:
        """Record a declared security vulnerability (an immediate-rollback criterion)."""
        return self._append(LedgerEntryKind.SECURITY, text, by, at)

    def report_bug(self, text: str, by: str, at: datetime) -> LedgerEntry:
        """Record a functional error report."""
        return self._append(LedgerEntryKind.BUG, text, by, at)

    def entries(self) -> tuple[LedgerEntry, ...]:
        """Every entry, oldest first."""
        return self._read()

    def security_declarations(self, since: datetime, until: datetime) -> tuple[LedgerEntry, ...]:
        return self._between(LedgerEntryKind.SECURITY, since, until)

    def bug_reports(self, since: datetime, until: datetime) -> tuple[LedgerEntry, ...]:
        return self._between(LedgerEntryKind.BUG, since, until)

    def _between(self, kind: LedgerEntryKind, since: datetime, until: datetime) -> tuple[LedgerEntry, ...]:
        _require_aware(since, "since")
        _require_aware(until, "until")
        return tuple(e for e in self._read() if e.kind is kind and since <= e.at <= until)

    def _append(self, kind: LedgerEntryKind, text: str, by: str, at: datetime) -> LedgerEntry:
        _require_aware(at, "at")
        if not text.strip() or not by.strip():
            raise ValueError("text and by must not be empty")
        at = at.astimezone(UTC)
        digest = hashlib.sha256(
            f"{kind}\0{text.strip()}\0{by.strip()}\0{at.isoformat()}".encode()
        ).hexdigest()
        entry = LedgerEntry(f"{kind.value}-{digest[:12]}", kind, text.strip(), by.strip(), at)
        with self._locked():
            current = self._read()
            if any(e.id == entry.id for e in current):
                return entry
            self._write((*current, entry))
        return entry

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            lock = (self.state_dir / f"{self.FILENAME}.lock").open("a")
        except OSError as exc:
            raise IncidentLedgerError(f"{self.path}: cannot lock: {exc}") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _read(self) -> tuple[LedgerEntry, ...]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ()
        except OSError as exc:
            raise IncidentLedgerError(f"{self.path}: cannot read: {exc}") from None
        try:
            data = json.loads(text)
            if (
                not isinstance(data, dict)
                or data.get("version") != 1
                or not isinstance(data.get("entries"), list)
            ):
                raise ValueError("expected {'version': 1, 'entries': [...]}")
            out = []
            for raw in data["entries"]:
                at = datetime.fromisoformat(raw["at"])
                _require_aware(at, "at")
                out.append(LedgerEntry(raw["id"], LedgerEntryKind(raw["kind"]), raw["text"], raw["by"], at))
        except (ValueError, KeyError, TypeError) as exc:
            raise IncidentLedgerError(f"{self.path}: corrupt: {exc}") from None
        return tuple(sorted(out, key=lambda e: (e.at, e.id)))

    def _write(self, entries: Sequence[LedgerEntry]) -> None:
        data = {
            "version": 1,
            "entries": [
                {"id": e.id, "kind": e.kind.value, "text": e.text, "by": e.by, "at": e.at.isoformat()}
                for e in entries
            ],
        }
        try:
            atomic_write(self.path, json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True).encode())
        except OSError as exc:
            raise IncidentLedgerError(f"{self.path}: cannot write: {exc}") from None
