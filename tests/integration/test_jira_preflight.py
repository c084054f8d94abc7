"""Tickets reach a stock Jira, or are never lost: pre-flight, dead letters, ``outbox list``/``flush``.

The Jira emulator runs with a stock Jira 9.12's defaults (priorities Highest…Lowest, a Jira Software
project's issue types); ``kis-release`` runs as a real process against it over HTTP. A ROLLBACK
ticket with the seed's priority ``Critical`` lands as Highest; a setting Jira refuses is caught by
``jira check`` before anything is deployed, and a ticket Jira refuses is kept as a dead letter,
paged, listed, and filed exactly once after the fix — as is one kept while Jira was down.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kis_estimator.workflows.clock import sleep as real_sleep
from kis_estimator.workflows.settings import WorkflowSettings
from kis_estimator.workflows.tracker.build import build_tracker
from kis_estimator.workflows.tracker.protocol import DeadLettered, Document, IssueDraft, Section, Text
from tests.emulators.jira import JiraEmulator

USER, TOKEN = "kis-bot", "s3cret"


def rollback_draft(key: str = "incident:1.0.2:1") -> IssueDraft:
    body = Document((Section("Incident", (Text("p95 over 50 ms for 5 minutes"),)),))
    return IssueDraft(key, "[ROLLBACK] KIS Estimator 1.0.2 → 1.0.1", body, "Incident", "Critical")


@pytest.fixture
def jira() -> Iterator[JiraEmulator]:
    with JiraEmulator(basic_auth=(USER, TOKEN)) as emulator:
        yield emulator


def _env(jira: JiraEmulator, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIS_")}
    return env | {
        "KIS_JIRA_URL": jira.url,
        "KIS_JIRA_USER": USER,
        "KIS_JIRA_TOKEN": TOKEN,
        "KIS_TRACKER_DIR": str(tmp_path / "tracker"),
        "KIS_OUTBOX_DIR": str(tmp_path / "outbox"),
        "KIS_JIRA_TIMEOUT_S": "2",
        **extra,
    }


def kis_release(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kis_estimator.workflows.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _settings(env: dict[str, str]) -> WorkflowSettings:
    return WorkflowSettings.load(env)


def test_the_check_passes_on_a_stock_jira_and_the_seeds_critical_lands_as_highest(
    jira: JiraEmulator, tmp_path: Path
) -> None:
    env = _env(jira, tmp_path)
    check = kis_release(env, "jira", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    for name in ("server", "credentials", "project", "issue types", "priorities", "permissions"):
        assert f"ok    {name}:" in check.stdout, check.stdout
    assert "Critical → Highest" in check.stdout
    tracker = build_tracker(_settings(env), sleep=real_sleep)
    try:
        ref = tracker.file(rollback_draft())
    finally:
        tracker.close()
    issue = jira.issue(ref.key)
    assert (issue.fields["priority"], issue.fields["issuetype"]) == ({"name": "Highest"}, {"name": "Bug"})


@pytest.mark.parametrize(
    ("extra", "emulator_kw", "failing", "says"),
    [
        (
            {"KIS_JIRA_PRIORITY_CRITICAL": "Critical"},
            {},
            "priorities",
            "priority Critical is not in KIS's scheme",
        ),
        ({"KIS_JIRA_ISSUE_TYPE_INCIDENT": "Incident"}, {}, "issue types", "Incident cannot be created"),
        ({"KIS_JIRA_TOKEN": "wrong"}, {}, "credentials", "refused the credentials"),
        ({"KIS_JIRA_PROJECT": "OPS"}, {}, "project", "No project could be found"),
        ({}, {"permissions": ("BROWSE_PROJECTS", "CREATE_ISSUES")}, "permissions", "CREATE_ATTACHMENTS"),
    ],
    ids=["priority", "issue-type", "credentials", "project", "attachments"],
)
def test_the_check_names_what_jira_would_refuse(
    tmp_path: Path, extra: dict[str, str], emulator_kw: dict[str, object], failing: str, says: str
) -> None:
    with JiraEmulator(basic_auth=(USER, TOKEN), **emulator_kw) as jira:  # type: ignore[arg-type]
        check = kis_release(_env(jira, tmp_path, **extra), "jira", "check")
    assert check.returncode == 1, check.stdout
    line = next(x for x in check.stdout.splitlines() if x.startswith(f"FAIL  {failing}:"))
    assert says in line, check.stdout
    assert "Traceback" not in check.stdout + check.stderr


def test_promote_refuses_before_deploying_when_the_check_fails(jira: JiraEmulator, tmp_path: Path) -> None:
    marker = tmp_path / "deployed"
    env = _env(jira, tmp_path, KIS_JIRA_PRIORITY_HIGH="Major", KIS_DEPLOY_COMMAND=f"touch {marker}")
    wheel, manifest = tmp_path / "x.whl", tmp_path / "x.manifest.json"
    wheel.write_bytes(b"w")
    manifest.write_bytes(b"m")
    args = ["--artifact", str(wheel), "--manifest", str(manifest)]
    run = kis_release(
        env, "promote", "1.0.1", *args, "--artifact-sha256", "0" * 64, "--manifest-sha256", "0" * 64
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "FAIL  priorities: priority Major" in run.stderr and "nothing was deployed" in run.stderr
    assert not marker.exists()


def test_a_refused_ticket_is_a_dead_letter_listed_paged_and_filed_once_after_the_fix(
    jira: JiraEmulator, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    broken = _env(jira, tmp_path, KIS_JIRA_PRIORITY_CRITICAL="Critical")
    tracker = build_tracker(_settings(broken), sleep=real_sleep)
    try:
        with pytest.raises(DeadLettered) as refused:
            tracker.file(rollback_draft())
    finally:
        tracker.close()
    assert "priority" in str(refused.value) and "outbox flush" in str(refused.value)
    assert (
        "PAGE: [KIS] ticket refused by the tracker" in capfd.readouterr().err
    )  # no channel configured: stderr says so
    assert jira.issues == {}

    listed = kis_release(broken, "outbox", "list")
    assert listed.returncode == 1
    assert " dead " in listed.stdout and "Specify a valid value for priority" in listed.stdout
    again = kis_release(broken, "outbox", "flush")  # not fixed yet: still refused, still kept
    assert again.returncode == 1 and "remaining 1" in again.stdout

    fixed = _env(jira, tmp_path)  # the default mapping: Critical → Highest
    for run in range(3):
        flushed = kis_release(fixed, "outbox", "flush")
        assert flushed.returncode == 0, flushed.stdout + flushed.stderr
        assert len(jira.issues) == 1, (run, flushed.stdout)
    (issue,) = jira.issues.values()
    assert issue.fields["priority"] == {"name": "Highest"}
    assert kis_release(fixed, "outbox", "list").stdout.strip().endswith("empty")


def test_a_ticket_kept_while_jira_was_down_is_filed_exactly_once(jira: JiraEmulator, tmp_path: Path) -> None:
    env = _env(jira, tmp_path)
    port = jira.port
    jira.stop()
    tracker = build_tracker(_settings(env), sleep=lambda s: None)
    try:
        ref = tracker.file(rollback_draft("incident:1.0.3:1"))
    finally:
        tracker.close()
    assert ref.pending
    listed = kis_release(env, "outbox", "list")
    assert listed.returncode == 0 and " queued " in listed.stdout
    jira.start(port)
    for _ in range(3):
        assert kis_release(env, "outbox", "flush").returncode == 0
    assert [i.summary for i in jira.issues.values()] == ["[ROLLBACK] KIS Estimator 1.0.2 → 1.0.1"]
