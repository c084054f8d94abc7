"""The DEPLOY issue as Jira receives it (emulator, real `jira` library): five attachments, checklist
ticked from the real results, owners from configuration (issue #5 "Done means")."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import replace

import pytest

from kis_estimator.workflows.release.promote import run_promote
from kis_estimator.workflows.tracker.build import build_tracker
from tests.emulators.jira import JiraEmulator
from tests.unit.test_promote import ManualClock, Release, release  # noqa: F401 - the fixture


@pytest.fixture
def jira() -> Iterator[JiraEmulator]:
    emulator = JiraEmulator(token="jira-secret")
    emulator.start()
    yield emulator
    emulator.stop()


def test_deploy_issue_in_jira_has_five_attachments_and_the_real_checklist(
    release: Release,  # noqa: F811 - the fixture imported above
    jira: JiraEmulator,
) -> None:
    settings = replace(
        release.settings,
        jira_url=f"http://127.0.0.1:{jira.port}",
        jira_token="jira-secret",
        jira_assignee="alice",
        jira_watchers=("bob",),
        outbox_dir=release.settings.tracker_dir.parent / "outbox",
    )
    tracker = build_tracker(settings, sleep=lambda _s: None)
    out = io.StringIO()
    try:
        code = run_promote(
            settings,
            release.options,
            out,
            tracker=tracker,
            estimator=release.estimator,
            run_command=release.commands,
            clock=ManualClock(),
            sleep=lambda _s: None,
        )
    finally:
        tracker.close()
    assert code == 0, out.getvalue()
    (issue,) = jira.issues.values()
    assert issue.summary == "[DEPLOY] KIS Estimator 1.0.1 - Production"
    assert issue.fields["priority"]["name"] == "High" and issue.fields["issuetype"]["name"] == "Task"
    assert issue.fields["assignee"]["name"] == "alice" and "bob" in issue.watchers
    names = sorted(a.filename for a in issue.attachments)
    assert len(names) == 5 and all(a.data for a in issue.attachments)
    assert {"deploy.log", "metrics-snapshot.json", "latency-p50-p95.png"} <= set(names)
    assert any("regression" in n for n in names) and any(
        n.endswith(".txt") and "announce" in n for n in names
    )
    png = next(a for a in issue.attachments if a.filename.endswith(".png"))
    assert png.data.startswith(b"\x89PNG")
    description = issue.description
    assert "(/) Smoke tests: 3/3 passed" in description
    assert "(/) Regression tests: 40/40 passed" in description
    assert "(/) RBAC validation: passed" in description
    assert "(/) Performance: p95" in description
    assert "CEO" in description  # the approver
