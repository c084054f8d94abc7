"""JiraIssueTracker with the real ``jira`` library against the HTTP Jira emulator.

Fault injection is the point: for 429 (Retry-After), 503, a read timeout after the commit, a
connection dropped after the create was committed, and 401, filing ends with exactly one issue (or
none, for 401) and nothing lost. Waits go through an injected ``sleep`` that only records.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kis_estimator.workflows.settings import WorkflowSettings
from kis_estimator.workflows.tracker.build import build_tracker, run_outbox_flush
from kis_estimator.workflows.tracker.idempotency import idem_label
from kis_estimator.workflows.tracker.jira import JiraConfig, JiraIssueTracker
from kis_estimator.workflows.tracker.outbox import OutboxTracker
from kis_estimator.workflows.tracker.protocol import (
    Attachment,
    Check,
    Document,
    Field,
    IssueDraft,
    Section,
    Text,
    TrackerError,
    TrackerOptions,
)
from kis_estimator.workflows.tracker.render import render_wiki
from tests.emulators.jira import JiraEmulator

USER, TOKEN = "kis-bot", "s3cret-jira-token"
CREATE = "POST /rest/api/2/issue"
SEARCH = "GET /rest/api/2/search"
ATTACH = "POST /rest/api/2/issue/{key}/attachments"
LOG_BYTES = b"2025-09-23 12:00:00 deploy started\n2025-09-23 12:00:41 deploy finished\n"
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


def deploy_draft(**changes: object) -> IssueDraft:
    """The seed notice's DEPLOY issue."""
    body = Document(
        (
            Section(
                "Description",
                (
                    Field("Version", "GA-1.0.0"),
                    Field("Environment", "Production"),
                    Field("Deploy Time", "2025-09-23 12:00:00"),
                    Field("Artifact SHA", "0de4aaa84955cdda...d451"),
                ),
            ),
            Section(
                "Verification",
                (Check(True, "Smoke tests: 3/3 passed"), Check(True, "Regression tests: 40/40 passed")),
            ),
            Section(
                "Evidence",
                (
                    Field("Deploy script log", "deploy.log [attached]"),
                    Field("Monitoring snapshot", "monitoring.png [attached]"),
                ),
            ),
        )
    )
    draft = IssueDraft(
        idempotency_key="deploy:GA-1.0.0:Production",
        summary="[DEPLOY] KIS Estimator GA 1.0.0 - Production",
        body=body,
        issue_type="Deployment",
        priority="High",
        labels=("kis-deploy", "GA-1.0.0"),
        attachments=(
            Attachment("deploy.log", LOG_BYTES, "text/plain"),
            Attachment("monitoring.png", PNG_BYTES, "image/png"),
        ),
        status="Done",
        assignee="alice",
        watchers=("bob",),
        components=("estimator",),
    )
    return replace(draft, **changes)  # type: ignore[arg-type]


@dataclass
class Harness:
    jira: JiraEmulator
    tmp: Path
    sleeps: list[float]
    opened: list[JiraIssueTracker]

    def tracker(
        self,
        *,
        read_timeout_s: float = 5.0,
        ledger: str = "ledger.json",
        issue_types: dict[str, str] | None = None,
        **config: object,
    ) -> JiraIssueTracker:
        cfg = JiraConfig(
            url=self.jira.url,
            ledger_path=self.tmp / ledger,
            user=USER,
            token=TOKEN,
            connect_timeout_s=2.0,
            read_timeout_s=read_timeout_s,
            **config,  # type: ignore[arg-type]
        )
        options = TrackerOptions(project="KIS", browse_url="https://jira.example.com")
        if issue_types:
            options = replace(options, issue_types=issue_types)
        tracker = JiraIssueTracker(cfg, options, sleep=self.sleeps.append)
        self.opened.append(tracker)
        return tracker


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    emulator = JiraEmulator(basic_auth=(USER, TOKEN)).start()
    harness = Harness(emulator, tmp_path, [], [])
    yield harness
    for tracker in harness.opened:
        tracker.close()
    emulator.stop()


def attachment_names(jira: JiraEmulator, key: str) -> list[str]:
    return sorted(a.filename for a in jira.issue(key).attachments)


# ---------------------------------------------------------------------------------- happy path


def test_files_the_deploy_issue_with_every_field(h: Harness) -> None:
    draft = deploy_draft()
    ref = h.tracker().file(draft)
    assert (ref.key, ref.url, ref.created, ref.pending, ref.status) == (
        "KIS-1",
        "https://jira.example.com/browse/KIS-1",
        True,
        False,
        "Done",
    )
    issue = h.jira.issue("KIS-1")
    assert issue.summary == "[DEPLOY] KIS Estimator GA 1.0.0 - Production"
    assert issue.labels == ["kis-deploy", "GA-1.0.0", idem_label("deploy:GA-1.0.0:Production")]
    assert issue.fields["priority"] == {"name": "High"}
    assert issue.fields["issuetype"] == {"name": "Task"}
    assert issue.fields["project"] == {"key": "KIS"}
    assert issue.fields["assignee"] == {"name": "alice"}
    assert issue.fields["components"] == [{"name": "estimator"}]
    assert issue.description == render_wiki(draft.body).rstrip("\n")
    assert issue.status == "Done"
    assert issue.watchers == ["bob"]
    assert {a.filename: a.data for a in issue.attachments} == {
        "deploy.log": LOG_BYTES,
        "monitoring.png": PNG_BYTES,
    }
    uploads = h.jira.requests_to(ATTACH)
    assert len(uploads) == 2
    assert all(u.header("X-Atlassian-Token") == "no-check" for u in uploads)
    assert all((u.header("Content-Type") or "").startswith("multipart/form-data; boundary=") for u in uploads)
    assert all((r.header("Authorization") or "").startswith("Basic ") for r in h.jira.requests)
    # Project and type go as {"key"}/{"name"}: no project or createmeta look-ups before the create.
    assert {r.route.split(" ")[1] for r in h.jira.requests} <= {
        "/rest/api/2/serverInfo",
        "/rest/api/2/field",
        "/rest/api/2/search",
        "/rest/api/2/issue",
        "/rest/api/2/issue/{key}",
        "/rest/api/2/issue/{key}/attachments",
        "/rest/api/2/issue/{key}/transitions",
        "/rest/api/2/issue/{key}/watchers",
        "/rest/api/2/user/search",
    }
    assert h.sleeps == []


def test_issue_types_and_the_seeds_priorities_map_onto_a_stock_jira(h: Harness) -> None:
    tracker = h.tracker(issue_types={"Incident": "Bug"})
    tracker.file(deploy_draft(issue_type="Incident", priority="Critical", status="In Progress"))
    issue = h.jira.issue("KIS-1")
    assert (issue.fields["issuetype"], issue.fields["priority"], issue.status) == (
        {"name": "Bug"},
        {"name": "Highest"},  # Critical does not exist in Jira's default priority scheme
        "In Progress",
    )


def test_an_instance_with_the_old_scheme_keeps_critical_by_configuration(tmp_path: Path) -> None:
    with JiraEmulator(
        basic_auth=(USER, TOKEN), priorities=("Blocker", "Critical", "Major", "Minor", "Trivial")
    ) as jira:
        options = TrackerOptions(priorities={"High": "Major", "Critical": "Critical", "Blocker": "Blocker"})
        config = JiraConfig(url=jira.url, ledger_path=tmp_path / "l.json", user=USER, token=TOKEN)
        tracker = JiraIssueTracker(config, options, sleep=lambda s: None)
        try:
            tracker.file(deploy_draft(issue_type="Incident", priority="Critical", status=None))
            assert jira.issue("KIS-1").fields["priority"] == {"name": "Critical"}
            assert all(c.ok for c in tracker.preflight())
        finally:
            tracker.close()


def test_filing_again_finds_the_issue_and_adds_nothing(h: Harness) -> None:
    first = h.tracker().file(deploy_draft())
    second = h.tracker().file(deploy_draft())
    assert (first.key, first.created, second.key, second.created) == ("KIS-1", True, "KIS-1", False)
    assert len(h.jira.requests_to(CREATE)) == 1
    assert attachment_names(h.jira, "KIS-1") == ["deploy.log", "monitoring.png"]
    # The ledger answered first: the second run did not search.
    assert len(h.jira.requests_to(SEARCH)) == 1


def test_a_fresh_ledger_finds_the_issue_by_its_label(h: Harness) -> None:
    h.tracker(ledger="host-a.json").file(deploy_draft())
    again = h.tracker(ledger="host-b.json").file(deploy_draft())
    assert (again.key, again.created) == ("KIS-1", False)
    assert len(h.jira.issues) == 1
    assert (h.tmp / "host-b.json").read_text(encoding="utf-8").count('"KIS-1"') == 1


def test_a_stale_ledger_entry_is_dropped_and_the_issue_recreated(h: Harness) -> None:
    h.tracker().file(deploy_draft())
    del h.jira.issues["KIS-1"]
    ref = h.tracker().file(deploy_draft())
    assert (ref.key, ref.created) == ("KIS-2", True)


# ---------------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    script: Callable[[JiraEmulator], None]
    read_timeout_s: float
    sleeps: list[float]
    creates_sent: int


FAULTS = {
    "429-retry-after": Fault(lambda j: j.fail_next(CREATE, 429, retry_after=1, times=2), 5.0, [1.0, 1.0], 3),
    "429-retry-after-3": Fault(lambda j: j.fail_next(CREATE, 429, retry_after=3), 5.0, [3.0], 2),
    "429-http-date": Fault(
        lambda j: j.fail_next(CREATE, 429, retry_after="Wed, 21 Oct 2025 07:28:00 GMT"), 5.0, [0.5], 2
    ),
    "503": Fault(lambda j: j.fail_next(CREATE, 503, times=2), 5.0, [0.5, 1.0], 3),
    "502-on-search": Fault(lambda j: j.fail_next(SEARCH, 502), 5.0, [0.5], 1),
    "504-on-attach": Fault(lambda j: j.fail_next(ATTACH, 504), 5.0, [0.5], 1),
    "read-timeout-after-commit": Fault(lambda j: j.slow(CREATE, 1.0), 0.5, [0.5], 1),
    "drop-after-create": Fault(lambda j: j.drop_after_commit(CREATE), 5.0, [0.5], 1),
    "drop-after-attach": Fault(lambda j: j.drop_after_commit(ATTACH), 5.0, [0.5], 1),
    "drop-before-create": Fault(lambda j: j.drop(CREATE), 5.0, [0.5], 2),
}


@pytest.mark.parametrize("fault", list(FAULTS.values()), ids=list(FAULTS))
def test_faults_end_with_exactly_one_issue_and_nothing_lost(h: Harness, fault: Fault) -> None:
    fault.script(h.jira)
    ref = h.tracker(read_timeout_s=fault.read_timeout_s).file(deploy_draft())
    assert h.sleeps == fault.sleeps
    assert len(h.jira.requests_to(CREATE)) == fault.creates_sent
    assert list(h.jira.issues) == ["KIS-1"]
    assert (ref.key, ref.created, ref.status) == ("KIS-1", True, "Done")
    assert attachment_names(h.jira, "KIS-1") == ["deploy.log", "monitoring.png"]
    assert h.jira.issue("KIS-1").watchers == ["bob"]
    assert h.jira.pending_faults() == 0


def test_401_is_not_retried_and_files_nothing(h: Harness) -> None:
    h.jira.reject_auth()
    with pytest.raises(TrackerError) as caught:
        h.tracker().file(deploy_draft())
    assert (caught.value.retryable, caught.value.status) == (False, 401)
    assert "KIS_JIRA_TOKEN" in str(caught.value)
    assert TOKEN not in str(caught.value)
    assert h.sleeps == []
    assert len(h.jira.requests) == 1
    assert h.jira.issues == {}


@pytest.mark.parametrize("status", [400, 403, 500])
def test_other_errors_are_not_retried(h: Harness, status: int) -> None:
    h.jira.fail_next(CREATE, status)
    with pytest.raises(TrackerError) as caught:
        h.tracker().file(deploy_draft())
    assert (caught.value.retryable, caught.value.status, h.sleeps) == (False, status, [])
    assert h.jira.issues == {}


def test_gives_up_after_five_attempts_with_a_retryable_error(h: Harness) -> None:
    h.jira.fail_next(CREATE, 503, times=5)
    with pytest.raises(TrackerError) as caught:
        h.tracker().file(deploy_draft())
    assert (caught.value.retryable, caught.value.status) == (True, 503)
    assert h.sleeps == [0.5, 1.0, 2.0, 4.0]
    assert len(h.jira.requests_to(CREATE)) == 5
    assert h.jira.issues == {}


def test_after_a_call_used_up_its_retries_each_call_tries_once_until_one_gets_through(h: Harness) -> None:
    """An outage costs the first call the full policy and every later call one attempt, no wait;
    the first answer restores the policy (a watch round must not spend 7.5 s per Jira call)."""
    port = h.jira.port
    tracker = h.tracker()
    h.jira.stop()
    with pytest.raises(TrackerError) as first:
        tracker.file(deploy_draft())
    assert first.value.retryable and h.sleeps == [0.5, 1.0, 2.0, 4.0]
    for _ in range(3):  # a watcher's next rounds: each call one refused connection, no backoff
        with pytest.raises(TrackerError) as again:
            tracker.find("deploy:GA-1.0.0:Production")
        assert again.value.retryable and "cannot reach Jira" in str(again.value)
    assert h.sleeps == [0.5, 1.0, 2.0, 4.0]

    h.jira.start(port)
    ref = tracker.file(deploy_draft())  # back: the first attempt gets through, nothing waited
    assert (ref.key, ref.created, h.sleeps) == ("KIS-1", True, [0.5, 1.0, 2.0, 4.0])
    h.jira.fail_next(CREATE, 503, times=2)  # and a blip after that has the full policy again
    other = tracker.file(deploy_draft(idempotency_key="deploy:GA-1.0.1:Production"))
    assert (other.key, h.sleeps) == ("KIS-2", [0.5, 1.0, 2.0, 4.0, 0.5, 1.0])


def test_jira_refusing_after_every_retry_also_gets_one_attempt_per_call(h: Harness) -> None:
    tracker = h.tracker()
    h.jira.fail_next(CREATE, 503, times=6)
    with pytest.raises(TrackerError):
        tracker.file(deploy_draft())
    with pytest.raises(TrackerError) as caught:  # the sixth 503: one attempt, no wait
        tracker.file(deploy_draft())
    assert (caught.value.status, h.sleeps, len(h.jira.requests_to(CREATE))) == (503, [0.5, 1.0, 2.0, 4.0], 6)
    assert tracker.file(deploy_draft()).key == "KIS-1"
    assert h.jira.issues.keys() == {"KIS-1"}


def test_a_long_retry_after_is_capped(h: Harness) -> None:
    h.jira.fail_next(CREATE, 429, retry_after=3600)
    h.tracker().file(deploy_draft())
    assert h.sleeps == [60.0]


def test_eight_threads_filing_the_same_draft_make_one_issue(h: Harness) -> None:
    trackers = [h.tracker() for _ in range(8)]
    barrier = threading.Barrier(8, timeout=10.0)
    refs: list[object] = [None] * 8

    def run(i: int) -> None:
        barrier.wait()
        refs[i] = trackers[i].file(deploy_draft())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30.0)
    assert list(h.jira.issues) == ["KIS-1"]
    assert len(h.jira.requests_to(CREATE)) == 1
    assert sorted((r.key, r.created) for r in refs) == [("KIS-1", False)] * 7 + [("KIS-1", True)]  # type: ignore[attr-defined]
    assert attachment_names(h.jira, "KIS-1") == ["deploy.log", "monitoring.png"]


# ---------------------------------------------------------------------------------- attachments, sizes


def test_attachments_are_never_empty_and_big_logs_are_gzipped(h: Harness) -> None:
    big = b"".join(b"%06d line of a long deploy log\n" % i for i in range(40_000))  # ~1.3 MB
    draft = deploy_draft(
        attachments=(
            Attachment("empty.log", b"", "text/plain"),
            Attachment("deploy.log", big, "text/plain"),
            Attachment("../../etc/passwd", b"x", "text/plain"),
        )
    )
    h.tracker().file(draft)
    stored = {a.filename: a.data for a in h.jira.issue("KIS-1").attachments}
    assert sorted(stored) == ["deploy.log.gz", "empty.log.empty.txt", "passwd"]
    assert gzip.decompress(stored["deploy.log.gz"]) == big
    assert stored["empty.log.empty.txt"] == b"empty.log was empty when it was filed; nothing to attach.\n"
    assert all(r.body for r in h.jira.requests_to(ATTACH))


def test_binary_over_the_limit_is_cut_with_a_note(h: Harness) -> None:
    draft = deploy_draft(attachments=(Attachment("snapshot.png", PNG_BYTES * 10, "image/png"),))
    h.tracker(attachment_max_bytes=1000).file(draft)
    stored = {a.filename: a.data for a in h.jira.issue("KIS-1").attachments}
    assert stored["snapshot.png"] == (PNG_BYTES * 10)[:1000]
    assert stored["snapshot.png.truncated.txt"] == (
        b"snapshot.png was 2640 bytes; only the first 1000 bytes are attached.\n"
    )


def test_a_413_leaves_a_note_instead_of_failing_the_run(h: Harness) -> None:
    h.jira.max_attachment_bytes = 200
    ref = h.tracker().file(deploy_draft())
    assert ref.status == "Done"
    assert attachment_names(h.jira, "KIS-1") == ["deploy.log", "monitoring.png.rejected.txt"]
    note = next(a.data for a in h.jira.issue("KIS-1").attachments if a.filename.endswith(".rejected.txt"))
    assert note == b"Jira refused monitoring.png (264 bytes) as too large (HTTP 413).\n"
    description = h.jira.issue("KIS-1").description  # no longer claims what Jira refused
    assert "deploy.log \\[attached\\]" in description and "monitoring.png \\[attached\\]" not in description
    assert (
        "monitoring.png \\[NOT attached: too large for Jira (HTTP 413), see monitoring.png.rejected.txt\\]"
        in (description)
    )


def test_long_summary_and_description_are_cut_and_the_full_text_attached(h: Harness) -> None:
    long_text = "가" * 40_000  # Hangul: one UTF-16 unit each
    draft = deploy_draft(summary="S" * 300, body=Document((Section("Log", (Text(long_text),)),)))
    h.tracker().file(draft)
    issue = h.jira.issue("KIS-1")
    assert len(issue.summary) == 255 and issue.summary.endswith("…")
    assert len(issue.description) == 32_767
    assert issue.description.endswith("(truncated; the full description is attached as description-full.txt)")
    full = next(a.data for a in issue.attachments if a.filename == "description-full.txt")
    assert full.decode("utf-8") == render_wiki(draft.body).rstrip("\n")


def test_emoji_count_as_two_units_like_java_chars(h: Harness) -> None:
    h.tracker().file(deploy_draft(summary="📧" * 200))
    assert len(h.jira.issue("KIS-1").summary.encode("utf-16-le")) // 2 <= 255


# ------------------------------------------------------------------------- comments, transitions, find


def test_comments_are_added_once_per_idempotency_key(h: Harness) -> None:
    tracker = h.tracker()
    tracker.file(deploy_draft(status=None))
    body = Document((Section("T+15", (Check(True, "P95 < 30ms"),)),))
    h.jira.drop_after_commit("POST /rest/api/2/issue/{key}/comment")
    tracker.comment("KIS-1", body, "standby:GA-1.0.0:15")
    tracker.comment("KIS-1", body, "standby:GA-1.0.0:15")
    tracker.comment("KIS-1", body, "standby:GA-1.0.0:30")
    comments = [c["body"] for c in h.jira.issue("KIS-1").comments]
    assert len(comments) == 2
    assert comments[0].startswith("h3. T\\+15\n* (/) P95 < 30ms\n\n\\[kis-idem:")
    assert "kis-idem:" in comments[0] and "\\[kis-idem:" in comments[0]


def test_transitions_go_by_name_and_only_when_needed(h: Harness) -> None:
    tracker = h.tracker()
    tracker.file(deploy_draft(status=None))
    tracker.transition("KIS-1", "In Progress")
    tracker.transition("KIS-1", "in progress")
    assert h.jira.issue("KIS-1").status == "In Progress"
    assert len(h.jira.requests_to("POST /rest/api/2/issue/{key}/transitions")) == 1
    with pytest.raises(TrackerError) as caught:
        tracker.transition("KIS-1", "Closed")
    assert caught.value.retryable is False
    assert "reachable: Done, Open" in str(caught.value)


def test_find_and_search_labels(h: Harness) -> None:
    tracker = h.tracker()
    assert tracker.find("deploy:GA-1.0.0:Production") is None
    h.jira.now = lambda: datetime(2025, 9, 23, 3, 0, tzinfo=UTC)
    tracker.file(deploy_draft(idempotency_key="bug-1", labels=("kis-functional-bug",)))
    h.jira.now = lambda: datetime(2025, 9, 23, 5, 0, tzinfo=UTC)
    tracker.file(deploy_draft(idempotency_key="bug-2", labels=("kis-functional-bug",)))
    found = tracker.find("bug-2")
    assert found is not None and (found.key, found.created, found.status) == ("KIS-2", False, "Done")
    since = h.tracker(ledger="other.json")
    assert [r.key for r in since.search_labels("kis-functional-bug")] == ["KIS-2", "KIS-1"]
    assert [r.key for r in since.search_labels("kis-functional-bug", "2025-09-23T13:00:00+09:00")] == [
        "KIS-2"
    ]
    jql = h.jira.requests_to(SEARCH)[-1].query["jql"][0]
    since_clause = 'AND created >= "2025-09-22 04:00"'
    assert jql == f'project = KIS AND labels = "kis-functional-bug" {since_clause} ORDER BY created DESC'


def test_jira_cloud_is_detected_and_refused(tmp_path: Path) -> None:
    with JiraEmulator(deployment_type="Cloud") as jira:
        tracker = JiraIssueTracker(
            JiraConfig(url=jira.url, ledger_path=tmp_path / "l.json"), TrackerOptions(), sleep=lambda s: None
        )
        with pytest.raises(TrackerError) as caught:
            tracker.file(deploy_draft())
        tracker.close()
        assert jira.requests_to(CREATE) == []
    message = str(caught.value)
    assert caught.value.retryable is False
    assert "Jira Cloud" in message and "ADF" in message and "/rest/api/3/search/jql" in message


def test_the_token_is_not_in_the_config_repr(tmp_path: Path) -> None:
    config = JiraConfig(
        url="https://jira.example.com", ledger_path=tmp_path / "l.json", user=USER, token=TOKEN
    )
    assert TOKEN not in repr(config) and USER in repr(config)


# ---------------------------------------------------------------------------------- outbox


def test_jira_down_keeps_the_ticket_and_flush_files_it_once(h: Harness) -> None:
    port = h.jira.port
    h.jira.stop()
    outbox_dir = h.tmp / "outbox"
    down = OutboxTracker(h.tracker(), outbox_dir)
    ref = down.file(deploy_draft())
    assert (ref.pending, ref.key) == (True, "PENDING-" + idem_label("deploy:GA-1.0.0:Production")[9:])
    down.comment(ref.key, Document((Section("T+15", (Check(True, "P95 < 30ms"),)),)), "standby:15")
    assert h.sleeps == [0.5, 1.0, 2.0, 4.0]  # the create's retries; the comment queued behind it
    assert down.file(deploy_draft()).key == ref.key  # a re-run while down queues nothing new
    records = sorted(p.name for p in (outbox_dir / "records").iterdir())
    assert [r.split("-")[1] for r in records if r.endswith(".json")] == ["file", "comment"]
    assert down.pending() == 2

    h.jira.start(port)
    up = OutboxTracker(h.tracker(), outbox_dir)  # a later process: nothing shared but the files
    report = up.flush()
    assert (report.filed, report.remaining, report.errors, report.keys) == (2, 0, (), ((ref.key, "KIS-1"),))
    assert list(h.jira.issues) == ["KIS-1"]
    assert attachment_names(h.jira, "KIS-1") == ["deploy.log", "monitoring.png"]
    assert len(h.jira.issue("KIS-1").comments) == 1
    assert up.resolve(ref.key) == "KIS-1"
    requests_before = len(h.jira.requests)
    assert up.flush() == type(report)(filed=0, remaining=0, errors=())
    assert len(h.jira.requests) == requests_before


def test_flush_keeps_records_on_401_and_reports_it(h: Harness) -> None:
    outbox_dir = h.tmp / "outbox"
    h.jira.fail_next(CREATE, 503, times=5)
    assert OutboxTracker(h.tracker(), outbox_dir).file(deploy_draft()).pending
    h.jira.reject_auth()
    report = OutboxTracker(h.tracker(), outbox_dir).flush()
    assert (report.filed, report.remaining, len(report.errors)) == (0, 1, 1)
    assert "HTTP 401" in report.errors[0] and TOKEN not in report.errors[0]
    h.jira.reject_auth(False)
    assert OutboxTracker(h.tracker(), outbox_dir).flush().filed == 1
    assert list(h.jira.issues) == ["KIS-1"]


def test_kis_release_outbox_flush_through_settings(h: Harness) -> None:
    settings = WorkflowSettings(
        jira_url=h.jira.url,
        jira_user=USER,
        jira_token=TOKEN,
        jira_timeout_s=2.0,
        tracker_dir=h.tmp / "tracker",
        outbox_dir=h.tmp / "outbox",
    )
    h.jira.fail_next(CREATE, 503, times=5)
    tracker = build_tracker(settings, sleep=h.sleeps.append)
    assert tracker.file(deploy_draft()).pending
    tracker.close()
    lines: list[str] = []
    assert run_outbox_flush(settings, lines.append, sleep=h.sleeps.append) == 0
    pending = "PENDING-" + idem_label("deploy:GA-1.0.0:Production")[9:]
    assert lines == [f"filed {pending} as KIS-1", f"outbox {settings.outbox_dir}: delivered 1, remaining 0"]
    lines.clear()
    assert run_outbox_flush(settings, lines.append, sleep=h.sleeps.append) == 0
    assert lines == [f"outbox {settings.outbox_dir}: empty, nothing to file"]
    assert all(TOKEN not in line for line in lines)
