"""The Alertmanager receiver over real HTTP, filing into the Jira emulator through the real tracker stack
(``build_tracker``: JiraIssueTracker behind the outbox); the rollback command and the estimator are
scripted (the real-process path is tests/integration/test_incident_e2e.py)."""

from __future__ import annotations

import contextlib
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kis_estimator.workflows.clock import SystemClock
from kis_estimator.workflows.incident.alert_receiver import (
    MAX_BODY_BYTES,
    AlertReceiver,
    ReceiverAuth,
    create_receiver_server,
    serve_in_thread,
)
from kis_estimator.workflows.incident.criteria import IncidentLedger
from kis_estimator.workflows.incident.response import IncidentDeps, IncidentOptions
from kis_estimator.workflows.release.estimator_client import (
    EstimatorClient,
    HealthResult,
    ServerInfo,
    SuiteResult,
)
from kis_estimator.workflows.release.promote import CommandLine, CommandOutcome
from kis_estimator.workflows.settings import WorkflowSettings
from kis_estimator.workflows.tracker.build import build_tracker
from tests.emulators.jira import JiraEmulator

T_V1 = datetime.now(UTC) - timedelta(hours=2)
T_V2 = datetime.now(UTC) - timedelta(hours=1)


@dataclass
class Commands:
    jira: JiraEmulator
    ran: list[tuple[str, int]] = field(default_factory=list)  # (command, Jira requests seen before it)
    serving: str = "1.0.2"  # what the target serves; the rollback makes it 1.0.1

    def __call__(self, command: str, *, timeout_s: float) -> CommandOutcome:
        self.ran.append((command, len(self.jira.requests)))
        self.serving = "1.0.1"
        now = datetime.now(UTC)
        line = CommandLine(now, "stdout", "kis-deploy: rolled back to 1.0.1")
        return CommandOutcome(command, 0, (line,), now, now)


RECEIVER_TOKEN = "alertmanager-secret-token"  # what Alertmanager's http_config sends


class Estimator:
    """The target: SERVING, smoke 3/3, and the version ``serving()`` names."""

    def __init__(self, serving: Callable[[], str]) -> None:
        self._serving = serving

    def health(self) -> HealthResult:
        return HealthResult("SERVING")

    def smoke(self) -> SuiteResult:
        return SuiteResult("smoke", 3, 3, 0, 3, report="smoke: 3/3 passed\n")

    def server_info(self) -> ServerInfo | None:
        return ServerInfo(self._serving())


@dataclass
class Receiver:
    url: str
    jira: JiraEmulator
    commands: Commands
    release_dir: Path

    def post(self, body: bytes | dict[str, Any], path: str = "/alerts") -> tuple[int, dict[str, Any]]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {RECEIVER_TOKEN}"}
        request = urllib.request.Request(self.url + path, data=data, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def incident_issues(self) -> list[Any]:
        return self.jira.issues_with_label("kis-incident")


def _promoted(release_dir: Path, version: str, at: datetime) -> None:
    (release_dir / version).mkdir(parents=True)
    state = {"version": version, "status": "promoted", "promoted_at": at.isoformat()}
    (release_dir / version / "promotion.json").write_text(json.dumps(state), encoding="utf-8")


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    release_dir = tmp_path / "release"
    _promoted(release_dir, "1.0.1", T_V1)
    _promoted(release_dir, "1.0.2", T_V2)
    jira = JiraEmulator().start()
    settings = WorkflowSettings(
        jira_url=jira.url,
        tracker_dir=tmp_path / "tracker",
        outbox_dir=tmp_path / "outbox",
        jira_timeout_s=5.0,
    )
    tracker = build_tracker(settings, sleep=lambda _s: None)  # retries without waiting
    commands = Commands(jira)

    @contextlib.contextmanager
    def estimator_for(version: str) -> Iterator[EstimatorClient]:
        yield Estimator(lambda: commands.serving)  # type: ignore[misc]  # what a verification calls

    deps = IncidentDeps(
        tracker=tracker,
        estimator_for=estimator_for,
        run_command=commands,
        clock=SystemClock(),
        sleep=lambda _s: None,
        ledger=IncidentLedger(release_dir),
        flush_outbox=tracker.flush,
    )
    options = IncidentOptions(release_dir=release_dir, rollback_command="kis-deploy rollback --root /srv/kis")
    server, port = create_receiver_server(
        AlertReceiver(options, deps), "127.0.0.1:0", ReceiverAuth(bearer_token=RECEIVER_TOKEN)
    )
    thread = serve_in_thread(server)
    try:
        yield Receiver(f"http://127.0.0.1:{port}", jira, commands, release_dir)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        tracker.close()
        jira.stop()


def alert(
    name: str, rollback: str, *, status: str = "firing", fingerprint: str = "", summary: str = ""
) -> dict[str, Any]:
    started = (datetime.now(UTC) - timedelta(minutes=4)).isoformat().replace("+00:00", "Z")
    return {
        "status": status,
        "labels": {"alertname": name, "severity": "critical", "rollback": rollback, "job": "kis-estimator"},
        "annotations": {"summary": summary or f"{name}: 14 per minute"},
        "startsAt": started,
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else datetime.now(UTC).isoformat(),
        "generatorURL": "http://prometheus/graph",
        "fingerprint": fingerprint or f"fp-{name}",
    }


def notification(
    *alerts: dict[str, Any], group: str = '{}/{rollback=~"immediate|review"}:{}', status: str = "firing"
) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": group,
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "kis-rollback",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


IMMEDIATE = alert(
    "KisRollbackP95Latency", "immediate", summary="Roll back now: p95 340.2 ms > 200 ms for 5 minutes"
)


def _without(key: str) -> dict[str, Any]:
    body = notification(IMMEDIATE)
    del body[key]
    return body


def _alert_change(**changes: Any) -> dict[str, Any]:
    return notification({**IMMEDIATE, **changes})


BAD = [
    pytest.param(b"{not json", "body is not JSON", id="not-json"),
    pytest.param(b"[]", "expected a JSON object", id="not-an-object"),
    pytest.param({**notification(IMMEDIATE), "version": "3"}, 'version: expected "4"', id="version-3"),
    pytest.param(_without("groupKey"), "groupKey: missing", id="no-group-key"),
    pytest.param(
        {**notification(IMMEDIATE), "status": "pending"},
        "status: expected firing or resolved",
        id="bad-status",
    ),
    pytest.param(notification(), "alerts: expected a non-empty list", id="no-alerts"),
    pytest.param(_alert_change(fingerprint=""), "alerts[0].fingerprint: missing", id="no-fingerprint"),
    pytest.param(_alert_change(startsAt="yesterday"), "alerts[0].startsAt", id="bad-time"),
    pytest.param(
        _alert_change(labels={"alertname": "X", "rollback": "maybe"}),
        "alerts[0].labels.rollback: 'maybe' is not one of none, immediate, review",
        id="unknown-rollback-label",
    ),
    pytest.param(_alert_change(labels={"severity": "critical"}), "alertname: missing", id="no-alertname"),
]


@pytest.mark.parametrize(("body", "reason"), BAD)
def test_rejects_what_is_not_a_v4_notification_with_a_reason(
    receiver: Receiver, body: bytes | dict[str, Any], reason: str
) -> None:
    status, reply = receiver.post(body)
    assert (status, reply["status"]) == (400, "rejected")
    assert reason in reply["reason"]
    assert receiver.commands.ran == [] and receiver.jira.requests == []


def test_other_paths_and_oversized_bodies_are_refused(receiver: Receiver) -> None:
    assert receiver.post(notification(IMMEDIATE), path="/webhook")[0] == 404
    host, port = receiver.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.putrequest("POST", "/alerts")
    connection.putheader("Content-Length", str(MAX_BODY_BYTES + 1))  # refused before the body is read
    connection.putheader("Authorization", f"Bearer {RECEIVER_TOKEN}")
    connection.endheaders()
    assert connection.getresponse().status == 413
    connection.close()
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(receiver.url + "/alerts", timeout=10)
    assert err.value.code == 405
    err.value.close()
    with urllib.request.urlopen(receiver.url + "/-/healthy", timeout=10) as reply:
        assert reply.status == 200


def test_monitoring_alarms_without_a_rollback_order_are_ignored(receiver: Receiver) -> None:
    status, reply = receiver.post(notification(alert("KisHigh5xxRate", "none")))
    assert (status, reply["status"]) == (200, "ignored")
    assert receiver.commands.ran == [] and receiver.incident_issues() == []


def test_immediate_alert_rolls_back_first_then_files_once_and_duplicates_are_idempotent(
    receiver: Receiver,
) -> None:
    status, reply = receiver.post(notification(IMMEDIATE))
    assert status == 200, reply
    assert (reply["action"], reply["rollback_verified"]) == ("rolled-back", True)
    ((_, jira_requests_before),) = receiver.commands.ran
    assert jira_requests_before == 0  # the rollback never waited for Jira

    (issue,) = receiver.incident_issues()
    assert reply["issue"] == issue.key
    assert issue.summary == "[ROLLBACK] KIS Estimator 1.0.2 → 1.0.1"
    assert (issue.fields["priority"]["name"], issue.fields["issuetype"]["name"], issue.status) == (
        "Highest",
        "Bug",
        "In Progress",
    )
    assert "P95 > 200ms (5분 지속)" in issue.description and "observed 340.2 ms" in issue.description
    names = [a.filename for a in issue.attachments]
    assert names[0] == "metrics-snapshot.json" and names[-1] == "rollback.log"
    snapshot = json.loads(issue.attachments[0].data)
    assert snapshot["alertmanager"]["alerts"][0]["labels"]["alertname"] == "KisRollbackP95Latency"

    # The same notification again (Alertmanager's repeat): nothing acts twice.
    status, again = receiver.post(notification(IMMEDIATE))
    assert (status, again["status"], again["issue"]) == (200, "duplicate", issue.key)
    # The group changes (another rollback alert joins): a comment on the same issue, no rollback.
    status, grown = receiver.post(notification(IMMEDIATE, alert("KisRollback5xxRate", "immediate")))
    assert status == 200 and grown["issue"] == issue.key and grown["action"] == "attributed"
    assert len(receiver.commands.ran) == 1 and len(receiver.incident_issues()) == 1
    assert len(receiver.jira.issue(issue.key).comments) == 1


def test_resolved_alert_adds_a_comment(receiver: Receiver) -> None:
    assert receiver.post(notification(IMMEDIATE))[0] == 200
    resolved = alert("KisRollbackP95Latency", "immediate", status="resolved")
    status, reply = receiver.post(notification(resolved, status="resolved"))
    assert status == 200, reply
    (issue,) = receiver.incident_issues()
    (comment,) = receiver.jira.issue(issue.key).comments
    assert "Alert resolved: KisRollbackP95Latency" in comment["body"]
    assert len(receiver.commands.ran) == 1


def test_review_alert_files_needs_decision_and_rolls_nothing_back(receiver: Receiver) -> None:
    status, reply = receiver.post(notification(alert("KisReviewRollbackP95Latency", "review")))
    assert status == 200 and reply["action"] == "needs-decision"
    (issue,) = receiver.incident_issues()
    assert issue.summary.endswith("(needs decision)") and "needs-decision" in issue.labels
    assert receiver.commands.ran == []


@pytest.mark.parametrize("outage", ["stopped", "http-503"])
def test_jira_outage_answers_503_after_the_rollback_and_the_retry_files_once(
    receiver: Receiver, outage: str
) -> None:
    jira = receiver.jira
    port = jira.port
    if outage == "stopped":
        jira.stop()
    else:
        jira.fail_next("GET /rest/api/2/serverInfo", 503, times=5)  # every attempt of the tracker's retry

    status, reply = receiver.post(notification(IMMEDIATE))

    assert status == 503, reply
    assert reply["status"] == "retry" and reply["rollback_verified"] is True
    assert len(receiver.commands.ran) == 1  # the rollback ran, Jira or not
    assert receiver.incident_issues() == []

    if outage == "stopped":
        jira.start(port)
    status, again = receiver.post(notification(IMMEDIATE))  # Alertmanager's retry
    assert status == 200, again
    assert len(receiver.commands.ran) == 1  # not again
    (issue,) = receiver.incident_issues()
    assert again["issue"] == issue.key and len(issue.attachments) >= 2
    # More retries and repeats: still one issue, one rollback.
    for _ in range(3):
        assert receiver.post(notification(IMMEDIATE))[0] == 200
    assert len(receiver.incident_issues()) == 1 and len(receiver.commands.ran) == 1
    state = json.loads((receiver.release_dir / "1.0.2" / "incidents.json").read_text())
    assert [i["issue_key"] for i in state["incidents"]] == [issue.key]


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", f"Bearer {RECEIVER_TOKEN}x", f"Basic {RECEIVER_TOKEN}", "Bearer"],
    ids=["missing", "wrong", "longer", "wrong-scheme", "empty"],
)
def test_the_webhook_refuses_calls_without_its_credentials(
    receiver: Receiver, authorization: str | None
) -> None:
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    request = urllib.request.Request(
        receiver.url + "/alerts",
        data=json.dumps(notification(IMMEDIATE)).encode(),
        method="POST",
        headers=headers,
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 401
    assert refused.value.headers["WWW-Authenticate"] == 'Bearer realm="kis-alert-receiver"'
    refused.value.close()
    assert receiver.commands.ran == [] and receiver.incident_issues() == []  # nothing rolled back


def test_basic_auth_as_alertmanager_sends_it() -> None:
    import base64

    auth = ReceiverAuth(basic=("alertmanager", "s3cret"))
    good = base64.b64encode(b"alertmanager:s3cret").decode()
    bad = base64.b64encode(b"alertmanager:s3cre").decode()
    assert auth.allows(f"Basic {good}") and not auth.allows(f"Basic {bad}")
    assert not auth.allows("Basic !!not-base64!!") and not auth.allows(f"Bearer {good}")
    with pytest.raises(ValueError, match="needs credentials"):
        ReceiverAuth()
    with pytest.raises(ValueError, match="a user and a password"):
        ReceiverAuth(basic=("alertmanager", ""))
