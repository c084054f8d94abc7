"""Idempotency keys, the local ledger of filed issues, and the file primitives both rely on.

Every tracker stores an event's idempotency key twice: as a label on the issue
(``kis-idem-<first 16 hex of sha256(key)>``, searchable after a crash or on another machine) and in a
local JSON ledger (key → issue key) consulted first. The ledger is rewritten atomically (temp file +
``os.replace``) and every read-check-create sequence runs under an exclusive ``fcntl.flock`` on a
sibling ``.lock`` file, so threads and processes on this host never both create. Locks are taken
on separate ``open()`` calls, which ``flock`` treats as separate owners even inside one process.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from kis_estimator.workflows.tracker.protocol import TrackerError

__all__ = ["IdempotencyLedger", "LedgerSession", "atomic_write", "file_lock", "idem_hash", "idem_label"]

LABEL_PREFIX = "kis-idem-"


def idem_hash(key: str) -> str:
    """First 16 hex digits of SHA-256(key): short enough for a label, 64 bits against collisions."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def idem_label(key: str) -> str:
    """The dedup label stored on the issue, e.g. ``kis-idem-3f2a…`` (Jira labels allow no spaces)."""
    return LABEL_PREFIX + idem_hash(key)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new file, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)  # atomic rename (os.replace) within one directory
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # The rename itself is durable only once the directory entry is flushed.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LedgerSession:
    """The ledger while its lock is held; every change is written through at once."""

    def __init__(self, path: Path, entries: dict[str, str]) -> None:
        self._path = path
        self._entries = entries

    def get(self, key: str) -> str | None:
        return self._entries.get(key)

    def put(self, key: str, issue_key: str) -> None:
        self._entries[key] = issue_key
        self._write()

    def remove(self, key: str) -> None:
        if self._entries.pop(key, None) is not None:
            self._write()

    def _write(self) -> None:
        body = {"version": 1, "issues": dict(sorted(self._entries.items()))}
        atomic_write(self._path, (json.dumps(body, ensure_ascii=False, indent=1) + "\n").encode("utf-8"))


class IdempotencyLedger:
    """``idempotency key → issue key`` in one JSON file, shared by threads and processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")

    def lookup(self, key: str) -> str | None:
        """Read without the lock: the file is only ever replaced whole."""
        return self._read().get(key)

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """The ledger's lock alone, for other check-then-act steps (attach if absent, comment once)."""
        return file_lock(self._lock_path)

    @contextlib.contextmanager
    def locked(self) -> Iterator[LedgerSession]:
        with file_lock(self._lock_path):
            yield LedgerSession(self.path, self._read())

    def _read(self) -> dict[str, str]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # A ledger we cannot read must stop the run: guessing "empty" would file duplicates.
            raise TrackerError(
                f"idempotency ledger {self.path} is unreadable: {exc}", retryable=False
            ) from None
        issues = raw.get("issues") if isinstance(raw, dict) else None
        if not isinstance(issues, dict):
            raise TrackerError(f"idempotency ledger {self.path} has no 'issues' object", retryable=False)
        return {str(k): str(v) for k, v in issues.items()}
