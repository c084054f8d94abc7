"""OutboxTracker: nothing is lost when the tracker is unreachable.

It wraps any IssueTracker. When a call still fails with a *retryable* TrackerError after the inner
tracker's own retries, the operation is written to ``outbox_dir`` as a JSON record (attachments as
files beside it) and the workflow carries on: ``file`` returns ``IssueRef(key="PENDING-<hash>",
pending=True)``. Later operations on a pending key — or on any key with records still queued — are
queued behind it, so their order is kept. ``kis-release outbox flush`` replays the records in order
(:meth:`OutboxTracker.flush`), mapping each pending key to the real one.

Replays are safe to repeat: ``file`` is idempotent by its key, comments by their marker, attachments
by name, transitions by the current status. So a crash between delivering a record and deleting it
costs one redundant call, never a duplicate.

Dead letters: when the tracker refuses an operation for good (a 4xx other than 408/429: an unknown
priority or issue type, missing rights, bad credentials), the operation is still written to the
outbox, in state ``dead`` with the tracker's answer as its reason; the ``on_dead_letter`` hook pages
on-call and :class:`DeadLettered` is raised, so the command fails loudly. ``kis-release outbox list``
shows every record with its state and reason; once the configuration is fixed, ``outbox flush``
files it (once: replays are idempotent), and a record refused again stays dead with the new reason.

Files::

    <outbox_dir>/records/000001-file-<hash>.json     the record (written last: the commit point)
    <outbox_dir>/records/000001-file-<hash>.files/   its attachments (000, 001, …)
    <outbox_dir>/keys.json                           PENDING-<hash> -> real key, once filed
    <outbox_dir>/.lock                               flock for every read-modify-write
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kis_estimator.workflows.tracker.idempotency import atomic_write, file_lock, idem_hash
from kis_estimator.workflows.tracker.protocol import (
    Attachment,
    Block,
    Check,
    Code,
    DeadLettered,
    Document,
    Field,
    IssueDraft,
    IssueRef,
    IssueTracker,
    Section,
    Text,
    TrackerError,
)

__all__ = ["PENDING_PREFIX", "FlushReport", "OutboxEntry", "OutboxTracker"]

LOG = logging.getLogger(__name__)
PENDING_PREFIX = "PENDING-"


@dataclass(frozen=True, slots=True)
class FlushReport:
    """``filed``: records delivered; ``remaining``: records still queued; ``keys``: pending → real."""

    filed: int
    remaining: int
    errors: tuple[str, ...]
    keys: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One record as ``kis-release outbox list`` shows it."""

    name: str
    op: str
    target: str  # the pending key of a ticket, or the issue an operation is for
    state: str  # "queued" (tracker unreachable or behind another record) | "dead" (refused)
    reason: str


@dataclass(frozen=True, slots=True)
class _Record:
    path: Path
    body: dict[str, Any]

    @property
    def files(self) -> Path:
        return self.path.with_suffix(".files")


class OutboxTracker:
    """IssueTracker that queues what the inner tracker could not deliver and replays it later."""

    def __init__(
        self,
        inner: IssueTracker,
        outbox_dir: Path,
        *,
        on_dead_letter: Callable[[str], None] | None = None,
    ) -> None:
        self.inner = inner
        self.outbox_dir = outbox_dir
        self._on_dead_letter = on_dead_letter
        self._records_dir = outbox_dir / "records"
        self._keys_path = outbox_dir / "keys.json"
        self._lock_path = outbox_dir / ".lock"

    def close(self) -> None:
        closer = getattr(self.inner, "close", None)
        if callable(closer):
            closer()

    # ------------------------------------------------------------------ IssueTracker

    def file(self, draft: IssueDraft) -> IssueRef:
        pending_key = PENDING_PREFIX + idem_hash(draft.idempotency_key)
        fields = {"pending_key": pending_key, "draft": _draft_to_json(draft)}
        if self._update_queued_file(pending_key, fields, draft.attachments):
            # Not in the tracker yet: the queued ticket becomes this newer picture of it (an
            # incident that escalated from "needs decision" to a rollback while Jira was down
            # arrives as the ROLLBACK issue, once).
            return _pending_ref(pending_key)
        try:
            return self.inner.file(draft)
        except TrackerError as exc:
            if not exc.retryable:
                self._dead_letter("file", fields, draft.attachments, exc, f"ticket {draft.summary!r}")
            self._enqueue("file", fields, draft.attachments, exc)
            return _pending_ref(pending_key)

    def comment(self, key: str, body: Document, idempotency_key: str) -> None:
        fields = {"target": key, "body": _doc_to_json(body), "idempotency_key": idempotency_key}
        self._deliver_or_queue(
            "comment", key, fields, (), lambda real: self.inner.comment(real, body, idempotency_key)
        )

    def attach(self, key: str, attachments: Sequence[Attachment]) -> None:
        self._deliver_or_queue(
            "attach", key, {"target": key}, attachments, lambda r: self.inner.attach(r, attachments)
        )

    def transition(self, key: str, status: str) -> None:
        fields = {"target": key, "status": status}
        self._deliver_or_queue(
            "transition", key, fields, (), lambda real: self.inner.transition(real, status)
        )

    def find(self, idempotency_key: str) -> IssueRef | None:
        """The inner tracker's answer; a ticket still in the outbox is returned as its pending ref."""
        pending_key = PENDING_PREFIX + idem_hash(idempotency_key)
        try:
            ref = self.inner.find(idempotency_key)
        except TrackerError as exc:
            if not exc.retryable:
                raise
            if self._queued_file(pending_key):
                return _pending_ref(pending_key)
            raise
        if ref is None and self._queued_file(pending_key):
            return _pending_ref(pending_key)
        return ref

    def search_labels(self, label: str, since_iso: str | None = None) -> list[IssueRef]:
        return self.inner.search_labels(label, since_iso)

    # ------------------------------------------------------------------ outbox

    def pending(self) -> int:
        """How many records wait in the outbox."""
        with file_lock(self._lock_path):
            return len(self._records())

    def resolve(self, key: str) -> str:
        """The real key for a pending key once it was filed, else ``key`` unchanged."""
        return self._keys().get(key, key)

    def flush(self) -> FlushReport:
        """Replay queued records in order; stop at the first retryable failure (still unreachable)."""
        filed = 0
        errors: list[str] = []
        mapped: list[tuple[str, str]] = []
        with file_lock(self._lock_path):
            records = self._records()
            keys = self._keys()
            blocked: set[str] = set()  # targets behind a kept record: their order must hold
            for index, record in enumerate(records):
                body = record.body
                target = body["pending_key"] if body["op"] == "file" else body["target"]
                real = keys.get(target, target)
                waiting = body["op"] != "file" and real.startswith(PENDING_PREFIX)
                if target in blocked or real in blocked or waiting:
                    if waiting and not any(r.body.get("pending_key") == real for r in records):
                        errors.append(
                            f"{record.path.name}: {real} is not in the outbox; the record cannot be placed"
                        )
                    blocked.update({target, real})
                    continue
                try:
                    result = self._replay(record, real)
                except TrackerError as exc:
                    errors.append(f"{record.path.name}: {exc}")
                    if exc.retryable:
                        LOG.warning("outbox flush stopped at %s: %s", record.path.name, exc)
                        break
                    atomic_write(record.path, _json_bytes(body | {"state": "dead", "reason": str(exc)}))
                    blocked.update({target, real})
                    continue
                if result is not None:
                    keys[target] = result
                    mapped.append((target, result))
                    atomic_write(self._keys_path, _json_bytes(keys))
                _remove(record)
                filed += 1
                LOG.info("outbox delivered %s (%d of %d)", record.path.name, index + 1, len(records))
            remaining = len(self._records())
        return FlushReport(filed=filed, remaining=remaining, errors=tuple(errors), keys=tuple(mapped))

    def _replay(self, record: _Record, real: str) -> str | None:
        body = record.body
        attachments = _load_attachments(record)
        match body["op"]:
            case "file":
                draft = _draft_from_json(body["draft"], attachments)
                return self.inner.file(draft).key
            case "comment":
                self.inner.comment(real, _doc_from_json(body["body"]), str(body["idempotency_key"]))
            case "attach":
                self.inner.attach(real, attachments)
            case "transition":
                self.inner.transition(real, str(body["status"]))
            case other:
                raise TrackerError(f"{record.path.name}: unknown outbox operation {other!r}", retryable=False)
        return None

    def _deliver_or_queue(
        self,
        op: str,
        key: str,
        fields: dict[str, Any],
        attachments: Sequence[Attachment],
        deliver: Callable[[str], None],
    ) -> None:
        real = self.resolve(key)
        with file_lock(self._lock_path):
            behind = real.startswith(PENDING_PREFIX) or any(
                r.body.get("target") in (key, real) or r.body.get("pending_key") in (key, real)
                for r in self._records()
            )
        if behind:
            self._enqueue(op, fields, attachments, None)
            return
        try:
            deliver(real)
        except TrackerError as exc:
            if not exc.retryable:
                self._dead_letter(op, fields, attachments, exc, f"{op} on {real}")
            self._enqueue(op, fields, attachments, exc)

    def _dead_letter(
        self,
        op: str,
        fields: dict[str, Any],
        attachments: Sequence[Attachment],
        exc: TrackerError,
        what: str,
    ) -> None:
        """Keep the refused operation as a dead letter, page, and raise :class:`DeadLettered`."""
        name = self._enqueue(op, fields, attachments, exc, state="dead")
        message = (
            f"the tracker refused the {what}: {exc} — kept in the outbox as {name} (dead letter); "
            "fix the setting it names, then run `kis-release outbox flush`"
        )
        LOG.error("%s", message)
        if self._on_dead_letter is not None:
            self._on_dead_letter(message)
        raise DeadLettered(message, status=exc.status, record=name)

    def _update_queued_file(
        self, pending_key: str, fields: dict[str, Any], attachments: Sequence[Attachment]
    ) -> bool:
        """Replace the draft and attachments of a queued ``file`` record; False when none is queued."""
        with file_lock(self._lock_path):
            record = next(
                (
                    r
                    for r in self._records()
                    if r.body["op"] == "file" and r.body["pending_key"] == pending_key
                ),
                None,
            )
            if record is None:
                return False
            files = record.path.with_suffix(".files")
            old = {a["file"] for a in record.body.get("attachments", [])}
            generation = int(record.body.get("generation", 0)) + 1
            stored = []
            for i, att in enumerate(attachments):
                name = f"g{generation}-{i:03d}"
                atomic_write(files / name, att.data)
                stored.append({"name": att.name, "content_type": att.content_type, "file": name})
            body = {**record.body, **fields, "attachments": stored, "generation": generation}
            atomic_write(record.path, _json_bytes(body))  # the switch: old files are unused from here
            for name in old:
                with contextlib.suppress(OSError):
                    (files / name).unlink()
        return True

    def _queued_file(self, pending_key: str) -> bool:
        with file_lock(self._lock_path):
            return any(
                r.body["op"] == "file" and r.body["pending_key"] == pending_key for r in self._records()
            )

    def _enqueue(
        self,
        op: str,
        fields: dict[str, Any],
        attachments: Sequence[Attachment],
        reason: TrackerError | None,
        *,
        state: str = "queued",
    ) -> str:
        with file_lock(self._lock_path):
            records = self._records()
            if op == "file":
                for r in records:
                    if r.body.get("pending_key") == fields["pending_key"]:
                        return r.path.name  # a concurrent run queued the same ticket first
            seq = max((int(r.path.name.split("-", 1)[0]) for r in records), default=0) + 1
            hint = str(fields.get("pending_key") or fields.get("target") or "")
            path = self._records_dir / f"{seq:06d}-{op}-{idem_hash(hint + str(seq))}.json"
            files = path.with_suffix(".files")
            stored = []
            for i, att in enumerate(attachments):
                atomic_write(files / f"{i:03d}", att.data)
                stored.append({"name": att.name, "content_type": att.content_type, "file": f"{i:03d}"})
            body = {"version": 1, "seq": seq, "op": op, **fields, "attachments": stored, "state": state}
            body["reason"] = str(reason) if reason is not None else "queued behind an earlier record"
            atomic_write(path, _json_bytes(body))  # written last: the record exists only when complete
        if state == "queued":
            LOG.warning("tracker unavailable; %s kept in the outbox as %s", op, path.name)
        return path.name

    def entries(self) -> list[OutboxEntry]:
        """Every record, oldest first (``kis-release outbox list``)."""
        with file_lock(self._lock_path):
            records = self._records()
        return [
            OutboxEntry(
                name=r.path.name,
                op=str(r.body["op"]),
                target=str(r.body.get("pending_key") or r.body.get("target") or ""),
                state=str(r.body.get("state", "queued")),
                reason=str(r.body.get("reason", "")),
            )
            for r in records
        ]

    def _records(self) -> list[_Record]:
        if not self._records_dir.is_dir():
            return []
        out = []
        for path in sorted(self._records_dir.glob("*.json")):
            try:
                out.append(_Record(path, json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError) as exc:
                raise TrackerError(f"outbox record {path} is unreadable: {exc}", retryable=False) from None
        return out

    def _keys(self) -> dict[str, str]:
        try:
            raw = json.loads(self._keys_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise TrackerError(
                f"outbox key map {self._keys_path} is unreadable: {exc}", retryable=False
            ) from None
        return {str(k): str(v) for k, v in raw.items()}


def _pending_ref(pending_key: str) -> IssueRef:
    return IssueRef(key=pending_key, url="", created=False, pending=True, status="")


def _remove(record: _Record) -> None:
    record.path.unlink(missing_ok=True)  # the record first: without it the files are just leftovers
    shutil.rmtree(record.files, ignore_errors=True)


def _load_attachments(record: _Record) -> tuple[Attachment, ...]:
    out = []
    for item in record.body.get("attachments", []):
        path = record.files / str(item["file"])
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise TrackerError(
                f"{record.path.name}: attachment {item['name']} is missing: {exc}", retryable=False
            ) from None
        out.append(Attachment(str(item["name"]), data, str(item["content_type"])))
    return tuple(out)


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, ensure_ascii=False, indent=1, sort_keys=True) + "\n").encode("utf-8")


# ---------------------------------------------------------------------------------- (de)serialization


def _block_to_json(block: Block) -> dict[str, Any]:
    match block:
        case Text(text=text):
            return {"kind": "text", "text": text}
        case Field(label=label, value=value):
            return {"kind": "field", "label": label, "value": value}
        case Check(done=done, text=text):
            return {"kind": "check", "done": done, "text": text}
        case Code(text=text, language=language):
            return {"kind": "code", "text": text, "language": language}
    raise TypeError(f"unknown block {block!r}")  # pragma: no cover - Block is a closed union


def _block_from_json(raw: dict[str, Any]) -> Block:
    kind = raw.get("kind")
    if kind == "text":
        return Text(str(raw["text"]))
    if kind == "field":
        return Field(str(raw["label"]), str(raw["value"]))
    if kind == "check":
        return Check(bool(raw["done"]), str(raw["text"]))
    if kind == "code":
        return Code(str(raw["text"]), str(raw.get("language", "")))
    raise TrackerError(f"outbox record has an unknown block kind {kind!r}", retryable=False)


def _doc_to_json(doc: Document) -> list[dict[str, Any]]:
    return [{"heading": s.heading, "blocks": [_block_to_json(b) for b in s.blocks]} for s in doc.sections]


def _doc_from_json(raw: list[dict[str, Any]]) -> Document:
    return Document(
        tuple(Section(str(s["heading"]), tuple(_block_from_json(b) for b in s["blocks"])) for s in raw)
    )


def _draft_to_json(draft: IssueDraft) -> dict[str, Any]:
    return {
        "idempotency_key": draft.idempotency_key,
        "summary": draft.summary,
        "body": _doc_to_json(draft.body),
        "issue_type": draft.issue_type,
        "priority": draft.priority,
        "labels": list(draft.labels),
        "status": draft.status,
        "assignee": draft.assignee,
        "watchers": list(draft.watchers),
        "components": list(draft.components),
    }


def _draft_from_json(raw: dict[str, Any], attachments: tuple[Attachment, ...]) -> IssueDraft:
    return IssueDraft(
        idempotency_key=str(raw["idempotency_key"]),
        summary=str(raw["summary"]),
        body=_doc_from_json(raw["body"]),
        issue_type=str(raw["issue_type"]),
        priority=str(raw["priority"]),
        labels=tuple(raw["labels"]),
        attachments=attachments,
        status=raw.get("status"),
        assignee=raw.get("assignee"),
        watchers=tuple(raw.get("watchers", ())),
        components=tuple(raw.get("components", ())),
    )
