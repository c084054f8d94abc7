"""Choose and wire the issue tracker from settings; ``kis-release outbox flush``.

Jira (Server/DC REST v2) when ``KIS_JIRA_URL`` is set, else the file tracker under
``KIS_TRACKER_DIR`` (``var/tracker``) so every command runs anywhere. Either way the tracker is
wrapped in the outbox (``KIS_OUTBOX_DIR``), so an unreachable Jira never fails a workflow or loses
a ticket.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable

from kis_estimator.workflows import clock as clock_module
from kis_estimator.workflows.clock import Clock, SystemClock
from kis_estimator.workflows.notify import ChannelStatus, Notifier, NotifyOptions
from kis_estimator.workflows.settings import WorkflowSettings
from kis_estimator.workflows.tracker.files import FileIssueTracker
from kis_estimator.workflows.tracker.jira import JiraConfig, JiraIssueTracker
from kis_estimator.workflows.tracker.outbox import OutboxTracker
from kis_estimator.workflows.tracker.protocol import IssueTracker, TrackerError, TrackerOptions

__all__ = [
    "build_inner_tracker",
    "build_tracker",
    "dead_letter_pager",
    "run_jira_check",
    "run_outbox_flush",
    "run_outbox_list",
    "tracker_options",
]

_CONNECT_TIMEOUT_MAX_S = 10.0


def tracker_options(settings: WorkflowSettings) -> TrackerOptions:
    """Project and issue-type names of this instance."""
    return TrackerOptions(
        project=settings.jira_project,
        issue_types={
            "Deployment": settings.jira_issue_type_deployment,
            "Incident": settings.jira_issue_type_incident,
        },
        priorities={
            "High": settings.jira_priority_high,
            "Critical": settings.jira_priority_critical,
            "Blocker": settings.jira_priority_blocker,
        },
        browse_url=settings.jira_url or "",
    )


def build_inner_tracker(
    settings: WorkflowSettings, *, sleep: Callable[[float], None], clock: Clock | None = None
) -> JiraIssueTracker | FileIssueTracker:
    """The tracker itself, without the outbox."""
    options = tracker_options(settings)
    if not settings.jira_url:
        return FileIssueTracker(settings.tracker_dir, options, clock=clock)
    if settings.jira_user and not settings.jira_token:
        raise TrackerError("KIS_JIRA_USER is set but KIS_JIRA_TOKEN is not", retryable=False)
    # One ledger per Jira instance and project: keys from a test instance must not answer for prod.
    scope = hashlib.sha256(f"{settings.jira_url} {settings.jira_project}".encode()).hexdigest()[:12]
    config = JiraConfig(
        url=settings.jira_url,
        ledger_path=settings.tracker_dir / f"jira-ledger-{scope}.json",
        user=settings.jira_user,
        token=settings.jira_token,
        # A dead host should fail fast; the read timeout is the configured one.
        connect_timeout_s=min(settings.jira_timeout_s, _CONNECT_TIMEOUT_MAX_S),
        read_timeout_s=settings.jira_timeout_s,
        default_assignee=settings.jira_assignee,
        default_watchers=settings.jira_watchers,
        default_components=settings.jira_components,
    )
    return JiraIssueTracker(config, options, sleep=sleep)


def pager(
    settings: WorkflowSettings, *, sleep: Callable[[float], None], clock: Clock | None = None
) -> Callable[[str, str], bool]:
    """Page on-call: stderr always, and every configured channel; True when a channel delivered it."""

    def page(subject: str, body: str) -> bool:
        sys.stderr.write(f"PAGE: {subject}\n{body}\n")
        report = Notifier(
            NotifyOptions.from_settings(settings), sleep=sleep, clock=clock or SystemClock()
        ).send(subject, body)
        delivered = any(r.status is ChannelStatus.SENT for r in report.results)
        if not delivered:
            sys.stderr.write("PAGE: no notification channel delivered it (KIS_SLACK_* / KIS_SMTP_*)\n")
        return delivered

    return page


def dead_letter_pager(
    settings: WorkflowSettings, *, sleep: Callable[[float], None], clock: Clock | None = None
) -> Callable[[str], None]:
    """Page on-call about a ticket the tracker refused (see :func:`pager`)."""
    page = pager(settings, sleep=sleep, clock=clock)

    def dead_letter(message: str) -> None:
        page("[KIS] ticket refused by the tracker (dead letter)", message)

    return dead_letter


def build_tracker(
    settings: WorkflowSettings, *, sleep: Callable[[float], None], clock: Clock | None = None
) -> OutboxTracker:
    """Jira when ``jira_url`` is set, else the file tracker; always behind the outbox."""
    inner: IssueTracker = build_inner_tracker(settings, sleep=sleep, clock=clock)
    return OutboxTracker(
        inner, settings.outbox_dir, on_dead_letter=dead_letter_pager(settings, sleep=sleep, clock=clock)
    )


def run_outbox_list(settings: WorkflowSettings, out: Callable[[str], None]) -> int:
    """``kis-release outbox list``: every record with its state and reason. Exit 1 when one is dead."""
    outbox = OutboxTracker(
        FileIssueTracker(settings.tracker_dir, tracker_options(settings)), settings.outbox_dir
    )
    entries = outbox.entries()
    if not entries:
        out(f"outbox {settings.outbox_dir}: empty")
        return 0
    for e in entries:
        out(f"{e.name}  {e.state:<6}  {e.op:<10}  {e.target}")
        out(f"    {e.reason}")
    dead = sum(e.state == "dead" for e in entries)
    out(f"outbox {settings.outbox_dir}: {len(entries)} record(s), {dead} dead")
    return 1 if dead else 0


def run_jira_check(
    settings: WorkflowSettings,
    out: Callable[[str], None],
    *,
    sleep: Callable[[float], None] = clock_module.sleep,
) -> int:
    """``kis-release jira check``: the pre-flight, one line per check. Exit 0 only when all hold."""
    if not settings.jira_url:
        out(
            f"jira check: KIS_JIRA_URL is not set; issues go to the file tracker under {settings.tracker_dir}"
        )
        return 0
    try:
        tracker = build_inner_tracker(settings, sleep=sleep)
    except TrackerError as exc:
        out(f"FAIL  configuration: {exc}")
        return 1
    assert isinstance(tracker, JiraIssueTracker)
    try:
        checks = tracker.preflight()
    finally:
        tracker.close()
    for c in checks:
        out(f"{'ok  ' if c.ok else 'FAIL'}  {c.name}: {c.detail}")
    ok = all(c.ok for c in checks)
    out("jira check: all good" if ok else "jira check: FAILED — nothing will be filed until this is fixed")
    return 0 if ok else 1


def run_outbox_flush(
    settings: WorkflowSettings,
    out: Callable[[str], None],
    *,
    sleep: Callable[[float], None] = clock_module.sleep,
) -> int:
    """``kis-release outbox flush``: file what the outbox holds. Exit code 0 when it is empty after."""
    try:
        tracker = build_tracker(settings, sleep=sleep)
    except TrackerError as exc:
        out(f"outbox flush: {exc}")
        return 1
    try:
        if tracker.pending() == 0:
            out(f"outbox {settings.outbox_dir}: empty, nothing to file")
            return 0
        report = tracker.flush()
    except TrackerError as exc:
        out(f"outbox flush: {exc}")
        return 1
    finally:
        tracker.close()
    for pending_key, real_key in report.keys:
        out(f"filed {pending_key} as {real_key}")
    for error in report.errors:
        out(f"error: {error}")
    out(f"outbox {settings.outbox_dir}: delivered {report.filed}, remaining {report.remaining}")
    return 0 if report.remaining == 0 else 1
