"""OutboxTracker over a real FileIssueTracker that can be switched "unreachable" or "unauthorized"."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kis_estimator.workflows.settings import WorkflowSettings
from kis_estimator.workflows.tracker.build import build_tracker, run_outbox_flush
from kis_estimator.workflows.tracker.files import FileIssueTracker
from kis_estimator.workflows.tracker.idempotency import idem_hash
from kis_estimator.workflows.tracker.jira import JiraIssueTracker
from kis_estimator.workflows.tracker.outbox import FlushReport, OutboxTracker
from kis_estimator.workflows.tracker.protocol import (
    Attachment,
    Check,
    Code,
    DeadLettered,
    Document,
    Field,
    IssueDraft,
    IssueRef,
    Section,
    Text,
    TrackerError,
)
from kis_estimator.workflows.tracker.render import render_markdown

BODY = Document(
    (
        Section("Description", (Field("Version", "GA-1.0.0"), Text("free text"), Code("x = 1", "python"))),
        Section("Verification", (Check(True, "Smoke tests: 3/3 passed"), Check(False, "p95"))),
    )
)
DRAFT = IssueDraft(
    idempotency_key="deploy:GA-1.0.0:Production",
    summary="[DEPLOY] KIS Estimator GA 1.0.0 - Production",
    body=BODY,
    issue_type="Deployment",
    priority="High",
    labels=("kis-deploy",),
    attachments=(
        Attachment("deploy.log", b"log\n", "text/plain"),
        Attachment("shot.png", b"\x89PNG", "image/png"),
    ),
    status="Done",
    assignee="alice",
    watchers=("bob",),
    components=("estimator",),
)
PENDING = "PENDING-" + idem_hash(DRAFT.idempotency_key)
NOTE = Document((Section("T+15", (Check(True, "P95 < 30ms"),)),))


class FixedClock:
    def now(self) -> datetime:
        return datetime(2025, 9, 23, 3, 0, tzinfo=UTC)


class Switchable:
    """The real file tracker behind a switch: ``down`` → retryable errors, ``denied`` → 401."""

    def __init__(self, inner: FileIssueTracker) -> None:
        self.inner = inner
        self.down = False
        self.denied = False
        self.calls: list[str] = []

    def _gate(self, name: str) -> None:
        self.calls.append(name)
        if self.denied:
            raise TrackerError("Jira refused the credentials (HTTP 401)", retryable=False, status=401)
        if self.down:
            raise TrackerError("cannot reach Jira (ConnectionError)", retryable=True)

    def file(self, draft: IssueDraft) -> IssueRef:
        self._gate("file")
        return self.inner.file(draft)

    def comment(self, key: str, body: Document, idempotency_key: str) -> None:
        self._gate("comment")
        self.inner.comment(key, body, idempotency_key)

    def attach(self, key: str, attachments: Sequence[Attachment]) -> None:
        self._gate("attach")
        self.inner.attach(key, attachments)

    def transition(self, key: str, status: str) -> None:
        self._gate("transition")
        self.inner.transition(key, status)

    def find(self, idempotency_key: str) -> IssueRef | None:
        self._gate("find")
        return self.inner.find(idempotency_key)

    def search_labels(self, label: str, since_iso: str | None = None) -> list[IssueRef]:
        self._gate("search_labels")
        return self.inner.search_labels(label, since_iso)


@pytest.fixture
def files(tmp_path: Path) -> FileIssueTracker:
    return FileIssueTracker(tmp_path / "tracker", clock=FixedClock())


@pytest.fixture
def switch(files: FileIssueTracker) -> Switchable:
    return Switchable(files)


@pytest.fixture
def outbox(switch: Switchable, tmp_path: Path) -> OutboxTracker:
    return OutboxTracker(switch, tmp_path / "outbox")


def records(tmp_path: Path) -> list[dict[str, object]]:
    folder = tmp_path / "outbox" / "records"
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]


def test_passes_through_while_the_tracker_is_up(outbox: OutboxTracker, tmp_path: Path) -> None:
    ref = outbox.file(DRAFT)
    assert (ref.key, ref.pending, ref.created) == ("KIS-1", False, True)
    outbox.comment("KIS-1", NOTE, "standby:15")
    assert outbox.pending() == 0
    assert not (tmp_path / "outbox" / "records").exists()


def test_unreachable_keeps_the_ticket_and_everything_queued_behind_it(
    outbox: OutboxTracker, switch: Switchable, files: FileIssueTracker, tmp_path: Path
) -> None:
    switch.down = True
    ref = outbox.file(DRAFT)
    assert ref == IssueRef(key=PENDING, url="", created=False, pending=True, status="")
    outbox.comment(ref.key, NOTE, "standby:15")
    outbox.attach(ref.key, [Attachment("later.log", b"later")])
    outbox.transition(ref.key, "In Progress")
    assert switch.calls == ["file"]  # queued behind the pending key without trying
    assert [(r["op"], r.get("target")) for r in records(tmp_path)] == [
        ("file", None),
        ("comment", PENDING),
        ("attach", PENDING),
        ("transition", PENDING),
    ]
    assert outbox.find(DRAFT.idempotency_key) == ref
    assert outbox.file(DRAFT) == ref and outbox.pending() == 4  # a re-run adds nothing

    switch.down = False
    report = outbox.flush()
    assert report == FlushReport(filed=4, remaining=0, errors=(), keys=((PENDING, "KIS-1"),))
    assert outbox.resolve(PENDING) == "KIS-1"
    issue = files.root / "KIS-1"
    assert sorted(p.name for p in (issue / "attachments").iterdir()) == [
        "deploy.log",
        "later.log",
        "shot.png",
    ]
    assert (issue / "attachments" / "shot.png").read_bytes() == b"\x89PNG"
    assert [p.name for p in (issue / "comments").iterdir()] == ["001.md"]
    meta = json.loads((issue / "meta.json").read_text(encoding="utf-8"))
    assert (meta["status"], meta["assignee"], meta["watchers"], meta["components"]) == (
        "In Progress",
        "alice",
        ["bob"],
        ["estimator"],
    )
    assert meta["description"] == render_markdown(BODY)  # the Document survived the JSON round trip
    assert outbox.flush() == FlushReport(filed=0, remaining=0, errors=())
    assert list((tmp_path / "outbox" / "records").iterdir()) == []


def test_a_newer_draft_of_a_queued_ticket_replaces_it_and_is_filed_once(
    outbox: OutboxTracker, switch: Switchable, files: FileIssueTracker, tmp_path: Path
) -> None:
    switch.down = True
    first = outbox.file(DRAFT)
    newer = replace(
        DRAFT, summary="[DEPLOY] escalated", attachments=(Attachment("rollback.log", b"rolled back\n"),)
    )
    assert outbox.file(newer) == first and switch.calls == ["file"]  # queued, not sent
    (record,) = records(tmp_path)
    assert record["draft"]["summary"] == "[DEPLOY] escalated"  # type: ignore[index]
    stored = sorted(p.name for p in (tmp_path / "outbox" / "records").glob("*.files/*"))
    assert stored == ["g1-000"]  # the replaced draft's attachments are gone

    switch.down = False
    assert outbox.flush().filed == 1
    (issue,) = [p for p in files.root.iterdir() if p.is_dir()]
    meta = json.loads((issue / "meta.json").read_text(encoding="utf-8"))
    assert meta["summary"] == "[DEPLOY] escalated"
    assert [p.name for p in (issue / "attachments").iterdir()] == ["rollback.log"]
    assert outbox.file(newer).key == issue.name and outbox.pending() == 0  # filed once


def test_operations_on_a_filed_pending_key_go_to_the_real_issue(
    outbox: OutboxTracker, switch: Switchable
) -> None:
    switch.down = True
    outbox.file(DRAFT)
    switch.down = False
    outbox.flush()
    outbox.transition(PENDING, "In Progress")
    assert (switch.calls[-1], outbox.pending()) == ("transition", 0)
    found = switch.inner.find(DRAFT.idempotency_key)
    assert found is not None and (found.key, found.status) == ("KIS-1", "In Progress")


def test_a_retryable_failure_on_a_real_key_queues_and_keeps_order(
    outbox: OutboxTracker, switch: Switchable, tmp_path: Path
) -> None:
    outbox.file(DRAFT)
    switch.down = True
    outbox.comment("KIS-1", NOTE, "c1")
    switch.down = False
    outbox.transition("KIS-1", "In Progress")  # queued behind the comment, not sent ahead of it
    assert [r["op"] for r in records(tmp_path)] == ["comment", "transition"]
    assert outbox.flush().filed == 2


def test_flush_stops_at_the_first_retryable_failure(outbox: OutboxTracker, switch: Switchable) -> None:
    switch.down = True
    outbox.file(DRAFT)
    outbox.comment(PENDING, NOTE, "c1")
    report = outbox.flush()
    assert (report.filed, report.remaining) == (0, 2)
    assert report.errors[0].endswith("cannot reach Jira (ConnectionError)")


def test_non_retryable_errors_are_reported_and_the_records_kept(
    outbox: OutboxTracker, switch: Switchable
) -> None:
    switch.down = True
    outbox.file(DRAFT)
    outbox.comment(PENDING, NOTE, "c1")
    outbox.file(IssueDraft("other", "other", BODY, "Incident", "Critical"))
    switch.down = False
    switch.denied = True
    report = outbox.flush()
    assert (report.filed, report.remaining, len(report.errors)) == (0, 3, 2)
    assert all("HTTP 401" in e for e in report.errors)
    assert switch.calls.count("comment") == 0  # never sent ahead of its blocked ticket
    switch.denied = False
    assert outbox.flush() == FlushReport(
        filed=3,
        remaining=0,
        errors=(),
        keys=((PENDING, "KIS-1"), ("PENDING-" + idem_hash("other"), "KIS-2")),
    )


def test_a_refused_ticket_is_a_dead_letter_raised_paged_and_filed_once_after_the_fix(
    tmp_path: Path, switch: Switchable, files: FileIssueTracker
) -> None:
    pages: list[str] = []
    outbox = OutboxTracker(switch, tmp_path / "outbox", on_dead_letter=pages.append)
    switch.denied = True
    with pytest.raises(DeadLettered) as caught:
        outbox.file(DRAFT)
    assert caught.value.status == 401 and not caught.value.retryable
    assert len(pages) == 1 and caught.value.record in pages[0]
    [entry] = outbox.entries()
    assert (entry.op, entry.state, entry.target) == ("file", "dead", PENDING)
    assert "401" in entry.reason
    assert outbox.file(DRAFT).pending  # a re-run finds it kept, files nothing and pages no more
    assert len(pages) == 1
    report = outbox.flush()  # still refused: stays dead, with the new answer
    assert (report.filed, report.remaining) == (0, 1) and outbox.entries()[0].state == "dead"
    switch.denied = False  # the setting is fixed
    assert outbox.flush().filed == 1
    assert outbox.flush().filed == 0 and outbox.entries() == []
    assert [p.name for p in files.root.iterdir() if p.is_dir()] == ["KIS-1"]


def test_an_unknown_pending_key_is_reported(outbox: OutboxTracker) -> None:
    outbox.comment("PENDING-0000000000000000", NOTE, "c1")
    report = outbox.flush()
    assert (report.filed, report.remaining) == (0, 1)
    assert "PENDING-0000000000000000 is not in the outbox" in report.errors[0]


def test_a_crash_after_delivery_replays_without_duplicates(
    outbox: OutboxTracker, switch: Switchable, files: FileIssueTracker, tmp_path: Path
) -> None:
    switch.down = True
    outbox.file(DRAFT)
    outbox.comment(PENDING, NOTE, "c1")
    saved = {p: p.read_bytes() for p in (tmp_path / "outbox").rglob("*") if p.is_file()}
    switch.down = False
    outbox.flush()
    for path, data in saved.items():  # the records come back, as if the process died before deleting them
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    assert outbox.flush().filed == 2
    assert [p.name for p in files.root.iterdir() if p.is_dir()] == ["KIS-1"]
    assert [p.name for p in (files.root / "KIS-1" / "comments").iterdir()] == ["001.md"]


def test_find_while_down_without_a_record_raises(outbox: OutboxTracker, switch: Switchable) -> None:
    switch.down = True
    with pytest.raises(TrackerError):
        outbox.find("nothing")
    switch.down = False
    assert outbox.find("nothing") is None


def test_build_tracker_defaults_to_files_behind_the_outbox(tmp_path: Path) -> None:
    settings = WorkflowSettings(tracker_dir=tmp_path / "tracker", outbox_dir=tmp_path / "outbox")
    tracker = build_tracker(settings, sleep=lambda s: None)
    assert isinstance(tracker, OutboxTracker) and isinstance(tracker.inner, FileIssueTracker)
    assert tracker.file(DRAFT).key == "KIS-1"
    assert (tmp_path / "tracker" / "KIS-1" / "issue.md").is_file()
    lines: list[str] = []
    assert run_outbox_flush(settings, lines.append) == 0
    assert lines == [f"outbox {tmp_path / 'outbox'}: empty, nothing to file"]


def test_build_tracker_picks_jira_and_refuses_a_user_without_a_token(tmp_path: Path) -> None:
    jira = WorkflowSettings(jira_url="https://jira.example.com", jira_token="t", tracker_dir=tmp_path)
    tracker = build_tracker(jira, sleep=lambda s: None)
    assert isinstance(tracker.inner, JiraIssueTracker)
    tracker.close()
    with pytest.raises(TrackerError, match="KIS_JIRA_USER is set but KIS_JIRA_TOKEN is not"):
        build_tracker(replace(jira, jira_user="kis-bot", jira_token=None), sleep=lambda s: None)
    lines: list[str] = []
    assert run_outbox_flush(replace(jira, jira_user="kis-bot", jira_token=None), lines.append) == 1
    assert lines == ["outbox flush: KIS_JIRA_USER is set but KIS_JIRA_TOKEN is not"]
