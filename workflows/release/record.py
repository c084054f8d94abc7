"""The release record: ``<release_dir>/<version>/promotion.json``, owned by this module alone.

Every reader and writer of a promotion's record goes through here: written atomically (temp file,
fsync, rename, directory fsync: readers see the old or the new record, never half of one), with a
schema number, and read into a typed :class:`ReleaseRecord`. The JSON state files beside it
(``checks.json``, ``rollback.json``, ``incidents.json`` …) use the same :func:`read_json` /
:func:`write_json`, so there is one way to keep state on disk.

Schema 1 (keys, all written by ``kis_estimator.workflows.release.promote``): ``schema``, ``version``,
``status`` (``promoted`` | ``refused``), ``environment``, ``target``, ``artifact`` (wheel file name),
``artifact_sha256``, ``manifest_sha256``, ``catalog_version``, ``approved_by``, ``attempts``, ``started_at``,
``promoted_at`` / ``refused_at`` (ISO 8601 UTC), ``adopted`` (promoted without a deploy: the target already
served it), ``issue_key`` / ``issue_url`` (the DEPLOY issue), ``failed_checks``, ``rolled_back``,
``previous_version``, ``message``, ``rollback_issue_key``. A record without ``schema`` is read as schema 1
(records written before the number existed); a newer schema is refused rather than misread.

The record says what *this* workflow did; which version serves is the target's word
(``GetServerInfo``), and the workflows read it from there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kis_estimator.workflows.errors import EXIT_CONFIG, WorkflowError
from kis_estimator.workflows.tracker.idempotency import atomic_write

__all__ = [
    "RECORD_NAME",
    "SCHEMA",
    "ReleaseRecord",
    "StateFileError",
    "promoted_records",
    "read_json",
    "read_record",
    "record_path",
    "write_json",
    "write_record",
]

RECORD_NAME = "promotion.json"
SCHEMA = 1
PROMOTED = "promoted"


class StateFileError(WorkflowError, ValueError):
    """A state file is unreadable, not a JSON object, or of a newer schema; the message names it."""

    exit_code = EXIT_CONFIG


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when the file does not exist."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateFileError(f"{path}: unreadable state file: {exc}") from None
    if not isinstance(data, dict):
        raise StateFileError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """``data`` as sorted, indented UTF-8 JSON, atomically (see module doc)."""
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"
    atomic_write(path, text.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class ReleaseRecord:
    """One promotion's record; ``data`` keeps every key (also those a later schema adds)."""

    version: str
    status: str
    promoted_at: datetime | None
    issue_key: str | None
    issue_url: str
    artifact: str | None
    data: Mapping[str, Any]

    @property
    def promoted(self) -> bool:
        return self.status == PROMOTED

    @classmethod
    def from_json(cls, path: Path, raw: Mapping[str, Any]) -> ReleaseRecord:
        schema = raw.get("schema", SCHEMA)
        if not isinstance(schema, int) or schema > SCHEMA:
            raise StateFileError(f"{path}: schema {schema!r} is newer than this tool's {SCHEMA}: upgrade it")
        try:
            promoted_at = raw.get("promoted_at")
            return cls(
                version=str(raw.get("version") or path.parent.name),
                status=str(raw.get("status", "")),
                promoted_at=(
                    datetime.fromisoformat(str(promoted_at).replace("Z", "+00:00")) if promoted_at else None
                ),
                issue_key=str(raw["issue_key"]) if raw.get("issue_key") else None,
                issue_url=str(raw.get("issue_url") or ""),
                artifact=str(raw["artifact"]) if raw.get("artifact") else None,
                data=dict(raw),
            )
        except ValueError as exc:
            raise StateFileError(f"{path}: {exc}") from None


def record_path(release_dir: Path, version: str) -> Path:
    return release_dir / version / RECORD_NAME


def read_record(release_dir: Path, version: str) -> ReleaseRecord | None:
    """The record of ``version``; None when it was never promoted or refused here."""
    path = record_path(release_dir, version)
    raw = read_json(path)
    return None if raw is None else ReleaseRecord.from_json(path, raw)


def write_record(release_dir: Path, version: str, data: Mapping[str, Any]) -> None:
    """Replace the record of ``version`` atomically, stamped with the schema."""
    write_json(record_path(release_dir, version), {**data, "schema": SCHEMA, "version": version})


def promoted_records(release_dir: Path, *, skip_unreadable: bool = True) -> list[ReleaseRecord]:
    """Every promoted record under ``release_dir``, oldest promotion first."""
    out = []
    for path in sorted(release_dir.glob(f"*/{RECORD_NAME}")):
        try:
            record = read_record(release_dir, path.parent.name)
        except StateFileError:
            if skip_unreadable:
                continue
            raise
        if record is not None and record.promoted and record.promoted_at is not None:
            out.append(record)
    return sorted(out, key=lambda r: r.promoted_at.timestamp() if r.promoted_at else 0.0)
