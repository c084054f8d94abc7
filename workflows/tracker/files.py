"""FileIssueTracker: issues as folders under ``var/tracker/``, the default when no Jira is configured.

Layout (one folder per issue, keys ``KIS-1``, ``KIS-2`` … in the configured project)::

    <root>/ledger.json              idempotency key -> issue key (see
    kis_estimator.workflows.tracker.idempotency) <root>/KIS-1/issue.md           the rendered Markdown issue
    (header fields + body + attachments) <root>/KIS-1/meta.json          fields, status history, labels (incl.
    kis-idem-<hash>), comments <root>/KIS-1/attachments/<name> <root>/KIS-1/comments/001.md

Same idempotency semantics as Jira: the ledger first, then the ``kis-idem-…`` label in every
``meta.json`` (the "search"), and only then a new folder, all under the ledger's ``flock``. A new
issue is assembled in a temporary folder and renamed into place, so a crash leaves either no issue
or a whole one, which the label scan finds on the next run even if the ledger write was lost.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any
from uuid import uuid4

from kis_estimator.workflows.clock import Clock, SystemClock
from kis_estimator.workflows.tracker.idempotency import (
    IdempotencyLedger,
    LedgerSession,
    atomic_write,
    idem_hash,
    idem_label,
)
from kis_estimator.workflows.tracker.protocol import (
    Attachment,
    Document,
    IssueDraft,
    IssueRef,
    TrackerError,
    TrackerOptions,
)
from kis_estimator.workflows.tracker.render import render_markdown

__all__ = ["FileIssueTracker"]

INITIAL_STATUS = "Open"


class FileIssueTracker:
    """IssueTracker writing Markdown folders; safe for concurrent threads and processes on one host."""

    def __init__(
        self, root: Path, options: TrackerOptions | None = None, *, clock: Clock | None = None
    ) -> None:
        self.root = root
        self._options = options or TrackerOptions()
        self._clock = clock or SystemClock()
        self._ledger = IdempotencyLedger(root / "ledger.json")
        self._key_pattern = re.compile(rf"^{re.escape(self._options.project)}-(\d+)$")

    def close(self) -> None:
        """Nothing to release; present so every tracker can be closed the same way."""

    # ------------------------------------------------------------------ IssueTracker

    def file(self, draft: IssueDraft) -> IssueRef:
        """Create the issue folder once per idempotency key; re-runs add missing attachments/status."""
        with self._ledger.locked() as ledger:
            key = self._known(ledger, draft.idempotency_key)
            if key is None:
                key = self._create(draft)
                ledger.put(draft.idempotency_key, key)
                created = True
            else:
                created = False
                meta = self._meta(key)
                self._add_attachments(key, meta, draft.attachments)
                if draft.status and meta["status"] != draft.status:
                    self._set_status(meta, draft.status)
                self._save(key, meta)
            return self._ref(key, created)

    def comment(self, key: str, body: Document, idempotency_key: str) -> None:
        token = f"kis-idem:{idem_hash(idempotency_key)}"
        with self._ledger.locked():
            meta = self._meta(key)
            if any(c["idem"] == token for c in meta["comments"]):
                return
            name = f"{len(meta['comments']) + 1:03d}.md"
            text = f"<!-- {token} -->\n_{self._now()}_\n\n{render_markdown(body)}"
            atomic_write(self._dir(key) / "comments" / name, text.encode("utf-8"))
            meta["comments"].append({"file": name, "idem": token, "at": self._now()})
            self._save(key, meta)

    def attach(self, key: str, attachments: Sequence[Attachment]) -> None:
        with self._ledger.locked():
            meta = self._meta(key)
            self._add_attachments(key, meta, attachments)
            self._save(key, meta)

    def transition(self, key: str, status: str) -> None:
        with self._ledger.locked():
            meta = self._meta(key)
            if meta["status"] != status:
                self._set_status(meta, status)
                self._save(key, meta)

    def find(self, idempotency_key: str) -> IssueRef | None:
        key = self._ledger.lookup(idempotency_key)
        if key is None or not (self._dir(key) / "meta.json").is_file():
            key = self._scan(idem_label(idempotency_key))
        return None if key is None else self._ref(key, created=False)

    def search_labels(self, label: str, since_iso: str | None = None) -> list[IssueRef]:
        since = datetime.fromisoformat(since_iso) if since_iso else None
        if since is not None and since.tzinfo is None:
            raise TrackerError(f"since_iso={since_iso!r}: expected a time with a UTC offset", retryable=False)
        refs = []
        for key in self._keys():
            meta = self._meta(key)
            if label in meta["labels"] and (
                since is None or datetime.fromisoformat(meta["created"]) >= since
            ):
                refs.append(self._ref(key, created=False, meta=meta))
        return refs

    # ------------------------------------------------------------------ storage

    def _known(self, ledger: LedgerSession, idempotency_key: str) -> str | None:
        key = ledger.get(idempotency_key)
        if key is not None and (self._dir(key) / "meta.json").is_file():
            return key
        key = self._scan(idem_label(idempotency_key))
        if key is not None:
            ledger.put(idempotency_key, key)
        return key

    def _scan(self, label: str) -> str | None:
        for key in self._keys():
            if label in self._meta(key)["labels"]:
                return key
        return None

    def _keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = [
            (int(m.group(1)), p.name) for p in self.root.iterdir() if (m := self._key_pattern.match(p.name))
        ]
        return [name for _, name in sorted(found) if (self.root / name / "meta.json").is_file()]

    def _create(self, draft: IssueDraft) -> str:
        numbers = [int(m.group(1)) for p in self._all_dirs() if (m := self._key_pattern.match(p.name))]
        key = f"{self._options.project}-{max(numbers, default=0) + 1}"
        now = self._now()
        labels = list(dict.fromkeys([*(re.sub(r"\s+", "-", x.strip()) for x in draft.labels if x.strip())]))
        labels.append(idem_label(draft.idempotency_key))
        meta: dict[str, Any] = {
            "key": key,
            "summary": " ".join(draft.summary.split()),
            "issue_type": self._options.issue_type(draft.issue_type),
            "priority": self._options.priority(draft.priority),
            "labels": labels,
            "status": INITIAL_STATUS,
            "assignee": draft.assignee,
            "components": list(draft.components),
            "watchers": list(draft.watchers),
            "idempotency_key": draft.idempotency_key,
            "created": now,
            "updated": now,
            "description": render_markdown(draft.body),
            "attachments": [],
            "comments": [],
            "history": [{"at": now, "status": INITIAL_STATUS}],
        }
        tmp = self.root / f".tmp-{key}-{uuid4().hex}"
        (tmp / "attachments").mkdir(parents=True)
        (tmp / "comments").mkdir()
        self._add_attachments(key, meta, draft.attachments, base=tmp)
        if draft.status and draft.status != INITIAL_STATUS:
            self._set_status(meta, draft.status)
        self._save(key, meta, base=tmp)
        tmp.rename(self.root / key)  # the commit point: the issue appears whole or not at all
        return key

    def _all_dirs(self) -> list[Path]:
        return [p for p in self.root.iterdir() if p.is_dir()] if self.root.is_dir() else []

    def _add_attachments(
        self, key: str, meta: dict[str, Any], attachments: Sequence[Attachment], base: Path | None = None
    ) -> None:
        folder = (base or self._dir(key)) / "attachments"
        present = {a["name"] for a in meta["attachments"]}
        for att in _prepared(attachments):
            if att.name in present:
                continue
            atomic_write(folder / att.name, att.data)
            meta["attachments"].append(
                {"name": att.name, "size": len(att.data), "content_type": att.content_type}
            )
            present.add(att.name)

    def _set_status(self, meta: dict[str, Any], status: str) -> None:
        meta["status"] = status
        meta["history"].append({"at": self._now(), "status": status})

    def _save(self, key: str, meta: dict[str, Any], base: Path | None = None) -> None:
        folder = base or self._dir(key)
        meta["updated"] = self._now()
        atomic_write(folder / "issue.md", _issue_markdown(meta).encode("utf-8"))
        atomic_write(
            folder / "meta.json", (json.dumps(meta, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
        )

    def _meta(self, key: str) -> dict[str, Any]:
        path = self._dir(key) / "meta.json"
        try:
            meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TrackerError(f"no issue {key} under {self.root}", retryable=False, status=404) from None
        except (OSError, ValueError) as exc:
            raise TrackerError(f"issue {key}: unreadable meta.json ({exc})", retryable=False) from None
        return meta

    def _dir(self, key: str) -> Path:
        if not self._key_pattern.match(key):
            raise TrackerError(
                f"{key!r} is not an issue key of project {self._options.project}", retryable=False
            )
        return self.root / key

    def _ref(self, key: str, created: bool, meta: dict[str, Any] | None = None) -> IssueRef:
        meta = meta or self._meta(key)
        url = (self._dir(key) / "issue.md").resolve().as_uri()
        return IssueRef(key=key, url=url, created=created, status=str(meta["status"]))

    def _now(self) -> str:
        return self._clock.now().isoformat()


def _prepared(attachments: Sequence[Attachment]) -> list[Attachment]:
    """Safe, unique file names; an empty attachment becomes a note (as on Jira)."""
    out: list[Attachment] = []
    seen: set[str] = set()
    for att in attachments:
        name = PurePosixPath(att.name.replace("\\", "/")).name.strip()
        name = re.sub(r"[\x00-\x1f]", "_", name).lstrip(".") or "attachment"
        data, kind = att.data, att.content_type
        if not data:
            name, data, kind = (
                f"{name}.empty.txt",
                f"{name} was empty when it was filed; nothing to attach.\n".encode(),
                "text/plain",
            )
        unique, n = name, 1
        while unique in seen:
            n += 1
            stem, dot, suffix = name.partition(".")
            unique = f"{stem}-{n}{dot}{suffix}"
        seen.add(unique)
        out.append(Attachment(unique, data, kind))
    return out


def _issue_markdown(meta: dict[str, Any]) -> str:
    lines = [
        f"# [{meta['key']}] {meta['summary']}",
        "",
        f"- Type: {meta['issue_type']}",
        f"- Priority: {meta['priority']}",
        f"- Status: {meta['status']}",
        f"- Labels: {', '.join(meta['labels'])}",
    ]
    for title, name in (("Assignee", "assignee"), ("Components", "components"), ("Watchers", "watchers")):
        value = meta.get(name)
        if value:
            lines.append(f"- {title}: {', '.join(value) if isinstance(value, list) else value}")
    lines += [f"- Created: {meta['created']}", "", str(meta["description"]).rstrip("\n")]
    if meta["attachments"]:
        lines += ["", "## Attachments", ""]
        lines += [
            f"- [{a['name']}](<attachments/{a['name']}>) ({a['size']} bytes)" for a in meta["attachments"]
        ]
    return "\n".join(lines) + "\n"
