"""FileIssueTracker: folders under a temp ``var/tracker``, the same idempotency semantics as Jira."""

from __future__ import annotations

import json
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kis_estimator.workflows.tracker.files import FileIssueTracker
from kis_estimator.workflows.tracker.idempotency import idem_label
from kis_estimator.workflows.tracker.protocol import (
    Attachment,
    Check,
    Document,
    Field,
    IssueDraft,
    IssueRef,
    Section,
    TrackerError,
    TrackerOptions,
)

BODY = Document(
    (
        Section("Description", (Field("Version", "GA-1.0.0"), Field("Environment", "Production"))),
        Section("Verification", (Check(True, "Smoke tests: 3/3 passed"),)),
    )
)
DRAFT = IssueDraft(
    idempotency_key="deploy:GA-1.0.0:Production",
    summary="[DEPLOY] KIS Estimator GA 1.0.0 - Production",
    body=BODY,
    issue_type="Deployment",
    priority="High",
    labels=("kis-deploy",),
    attachments=(Attachment("deploy.log", b"ok\n", "text/plain"), Attachment("empty.png", b"", "image/png")),
    status="Done",
)
T0 = datetime(2025, 9, 23, 3, 0, tzinfo=UTC)


class ManualClock:
    def __init__(self, now: datetime) -> None:
        self.current = now

    def now(self) -> datetime:
        return self.current


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def tracker(tmp_path: Path, clock: ManualClock) -> FileIssueTracker:
    return FileIssueTracker(tmp_path / "tracker", TrackerOptions(project="KIS"), clock=clock)


def meta(tracker: FileIssueTracker, key: str) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((tracker.root / key / "meta.json").read_text(encoding="utf-8"))
    return loaded


def test_files_an_issue_folder_with_markdown_attachments_and_meta(tracker: FileIssueTracker) -> None:
    ref = tracker.file(DRAFT)
    folder = tracker.root / "KIS-1"
    assert ref == IssueRef(
        key="KIS-1", url=(folder / "issue.md").resolve().as_uri(), created=True, status="Done"
    )
    assert (folder / "issue.md").read_text(encoding="utf-8") == (
        "# [KIS-1] [DEPLOY] KIS Estimator GA 1.0.0 - Production\n"
        "\n"
        "- Type: Task\n"
        "- Priority: High\n"
        "- Status: Done\n"
        f"- Labels: kis-deploy, {idem_label(DRAFT.idempotency_key)}\n"
        "- Created: 2025-09-23T03:00:00+00:00\n"
        "\n"
        "## Description\n"
        "\n"
        "- Version: GA-1.0.0\n"
        "- Environment: Production\n"
        "\n"
        "## Verification\n"
        "\n"
        "- [x] Smoke tests: 3/3 passed\n"
        "\n"
        "## Attachments\n"
        "\n"
        "- [deploy.log](<attachments/deploy.log>) (3 bytes)\n"
        "- [empty.png.empty.txt](<attachments/empty.png.empty.txt>) (58 bytes)\n"
    )
    assert sorted(p.name for p in (folder / "attachments").iterdir()) == ["deploy.log", "empty.png.empty.txt"]
    assert (folder / "attachments" / "deploy.log").read_bytes() == b"ok\n"
    m = meta(tracker, "KIS-1")
    assert (m["status"], m["history"]) == (
        "Done",
        [{"at": T0.isoformat(), "status": "Open"}, {"at": T0.isoformat(), "status": "Done"}],
    )
    assert json.loads((tracker.root / "ledger.json").read_text(encoding="utf-8"))["issues"] == {
        DRAFT.idempotency_key: "KIS-1"
    }


def test_keys_count_up_per_project(tracker: FileIssueTracker) -> None:
    keys = [tracker.file(IssueDraft(f"k{i}", "s", BODY, "Incident", "Critical")).key for i in range(3)]
    assert keys == ["KIS-1", "KIS-2", "KIS-3"]


def test_filing_again_returns_the_same_issue_and_adds_only_missing_attachments(
    tracker: FileIssueTracker,
) -> None:
    tracker.file(DRAFT)
    extra = Attachment("snapshot.png", b"\x89PNG", "image/png")
    again = tracker.file(replace(DRAFT, attachments=(*DRAFT.attachments, extra)))
    assert (again.key, again.created) == ("KIS-1", False)
    assert sorted(p.name for p in (tracker.root / "KIS-1" / "attachments").iterdir()) == [
        "deploy.log",
        "empty.png.empty.txt",
        "snapshot.png",
    ]
    assert [p.name for p in tracker.root.iterdir() if p.is_dir()] == ["KIS-1"]


def test_a_lost_ledger_is_recovered_from_the_labels(tracker: FileIssueTracker) -> None:
    tracker.file(DRAFT)
    (tracker.root / "ledger.json").unlink()
    assert (tracker.file(DRAFT).created, tracker.find(DRAFT.idempotency_key)) == (
        False,
        IssueRef(key="KIS-1", url=tracker.file(DRAFT).url, created=False, status="Done"),
    )
    assert len([p for p in tracker.root.iterdir() if p.is_dir()]) == 1


def test_eight_threads_filing_the_same_draft_make_one_folder(tmp_path: Path, clock: ManualClock) -> None:
    trackers = [FileIssueTracker(tmp_path / "t", clock=clock) for _ in range(8)]
    barrier = threading.Barrier(8, timeout=10.0)
    refs: list[IssueRef] = []
    lock = threading.Lock()

    def run(t: FileIssueTracker) -> None:
        barrier.wait()
        ref = t.file(DRAFT)
        with lock:
            refs.append(ref)

    threads = [threading.Thread(target=run, args=(t,)) for t in trackers]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=10.0)
    assert sorted((r.key, r.created) for r in refs) == [("KIS-1", False)] * 7 + [("KIS-1", True)]
    assert sorted(p.name for p in (tmp_path / "t").iterdir() if p.is_dir()) == ["KIS-1"]


def _file_in_a_process(root: str) -> tuple[str, bool]:
    ref = FileIssueTracker(Path(root)).file(DRAFT)
    return ref.key, ref.created


def test_four_processes_filing_the_same_draft_make_one_folder(tmp_path: Path) -> None:
    root = tmp_path / "t"
    with ProcessPoolExecutor(max_workers=4, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_file_in_a_process, [str(root)] * 4, timeout=60))
    assert sorted(results) == [("KIS-1", False)] * 3 + [("KIS-1", True)]
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["KIS-1"]


def test_comments_are_numbered_and_idempotent(tracker: FileIssueTracker) -> None:
    tracker.file(DRAFT)
    note = Document((Section("T+15", (Check(True, "P95 < 30ms"),)),))
    for key in ("standby:15", "standby:15", "standby:30"):
        tracker.comment("KIS-1", note, key)
    comments = tracker.root / "KIS-1" / "comments"
    assert sorted(p.name for p in comments.iterdir()) == ["001.md", "002.md"]
    assert (comments / "001.md").read_text(encoding="utf-8").endswith("## T+15\n\n- [x] P95 \\< 30ms\n")


def test_transition_and_attach_update_the_issue(tracker: FileIssueTracker, clock: ManualClock) -> None:
    tracker.file(IssueDraft("k", "s", BODY, "Incident", "Critical"))
    clock.current = T0 + timedelta(minutes=5)
    tracker.transition("KIS-1", "In Progress")
    tracker.transition("KIS-1", "In Progress")
    tracker.attach("KIS-1", [Attachment("a/../../rollback.log", b"log")])
    m = meta(tracker, "KIS-1")
    assert m["history"] == [
        {"at": T0.isoformat(), "status": "Open"},
        {"at": (T0 + timedelta(minutes=5)).isoformat(), "status": "In Progress"},
    ]
    assert (tracker.root / "KIS-1" / "attachments" / "rollback.log").read_bytes() == b"log"
    assert "- Status: In Progress" in (tracker.root / "KIS-1" / "issue.md").read_text(encoding="utf-8")


def test_search_labels_honours_since(tracker: FileIssueTracker, clock: ManualClock) -> None:
    bug = IssueDraft("bug-1", "bug", BODY, "Incident", "High", labels=("kis-functional-bug",))
    tracker.file(bug)
    clock.current = T0 + timedelta(hours=2)
    tracker.file(replace(bug, idempotency_key="bug-2"))
    tracker.file(IssueDraft("other", "x", BODY, "Incident", "High"))
    assert [r.key for r in tracker.search_labels("kis-functional-bug")] == ["KIS-1", "KIS-2"]
    assert [r.key for r in tracker.search_labels("kis-functional-bug", "2025-09-23T13:00:00+09:00")] == [
        "KIS-2"
    ]


@pytest.mark.parametrize(
    ("call", "status"),
    [
        (lambda t: t.transition("KIS-9", "Done"), 404),
        (lambda t: t.comment("KIS-9", BODY, "x"), 404),
        (lambda t: t.attach("../etc", []), None),
        (lambda t: t.search_labels("x", "2025-09-23T00:00:00"), None),
    ],
    ids=["unknown-transition", "unknown-comment", "bad-key", "naive-since"],
)
def test_errors_are_tracker_errors_that_are_not_retryable(
    tracker: FileIssueTracker, call: object, status: int | None
) -> None:
    tracker.file(DRAFT)
    with pytest.raises(TrackerError) as caught:
        call(tracker)  # type: ignore[operator]
    assert (caught.value.retryable, caught.value.status) == (False, status)


def test_find_is_none_before_filing(tracker: FileIssueTracker) -> None:
    assert tracker.find("never") is None
    assert tracker.search_labels("x") == []
