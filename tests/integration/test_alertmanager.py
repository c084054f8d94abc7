"""deploy/alertmanager/alertmanager.yml with Debian's Alertmanager: `amtool check-config`, the routing
tree (`amtool config routes test`), and a real Alertmanager posting its webhook to the receiver.

The binaries come from Debian's ``prometheus-alertmanager`` (``tools/ensure_alertmanager.sh`` installs
it when missing); the tests skip with that script's reason only where it cannot be installed. The
live test runs the repository's configuration with three test-only changes: the webhook URL points
at the receiver's port, the secret files exist (empty) under ``tmp_path``, and the paging/Slack
endpoints point at a closed loopback port, so nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kis_estimator.workflows.clock import SystemClock
from kis_estimator.workflows.incident.alert_receiver import (
    AlertReceiver,
    ReceiverAuth,
    create_receiver_server,
    serve_in_thread,
)
from kis_estimator.workflows.incident.criteria import IncidentLedger
from kis_estimator.workflows.incident.response import IncidentDeps, IncidentOptions
from kis_estimator.workflows.release.estimator_client import EstimatorClient
from kis_estimator.workflows.release.promote import CommandLine, CommandOutcome
from kis_estimator.workflows.tracker.files import FileIssueTracker
from kis_estimator.workflows.tracker.outbox import OutboxTracker
from kis_estimator.workflows.tracker.protocol import Attachment, Document, IssueDraft, IssueRef, TrackerError
from tests.integration.test_alert_receiver import Estimator

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy/alertmanager/alertmanager.yml"
RECEIVER_TOKEN = "alertmanager-to-kis-token"
ENSURE_SCRIPT = ROOT / "tools/ensure_alertmanager.sh"
TIMEOUT_S = 60
DEADLINE_S = 45.0


def _binary(*names: str) -> str:
    """The first of ``names`` on PATH, installing Debian's package first if needed; else skip."""

    def find() -> str | None:
        return next((p for n in names if (p := shutil.which(n))), None)

    found = find()
    if found is None:
        result = subprocess.run(
            ["bash", str(ENSURE_SCRIPT)], capture_output=True, text=True, timeout=600, check=False
        )
        found = find()
        if found is None:
            reason = (result.stdout + result.stderr).strip() or f"{ENSURE_SCRIPT.name} did not install it"
            pytest.skip(f"{' or '.join(names)} unavailable: {reason}")
    return found


def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_binary("amtool"), *args], capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )


def test_configuration_passes_amtool_check_config() -> None:
    result = _amtool("check-config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "3 receivers" in result.stdout


ROUTES = [
    pytest.param(
        ("severity=critical", "rollback=immediate", "action=page-oncall"),
        "kis-rollback,page-oncall",
        id="immediate",
    ),
    pytest.param(
        ("severity=warning", "rollback=review", "action=page-oncall"), "kis-rollback,page-oncall", id="review"
    ),
    pytest.param(
        ("severity=critical", "rollback=none", "action=page-oncall"), "page-oncall", id="critical-alarm"
    ),
    pytest.param(
        ("severity=critical", "rollback=none", "action=block-and-alert"), "page-oncall", id="mixed-limit"
    ),
    pytest.param(
        ("severity=warning", "rollback=none", "action=notify-slack"), "slack-warnings", id="warning"
    ),
]


@pytest.mark.parametrize(("labels", "receivers"), ROUTES)
def test_routes_follow_the_notice_actions(labels: Sequence[str], receivers: str) -> None:
    result = _amtool("config", "routes", "test", f"--config.file={CONFIG}", *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receivers


def test_secrets_come_from_files_not_from_the_config() -> None:
    text = CONFIG.read_text(encoding="utf-8")
    for key in ("routing_key_file:", "api_key_file:", "api_url_file:"):
        assert key in text
    for inline in ("routing_key:", "api_key:", "api_url:", "service_key:"):
        assert not any(line.strip().startswith(inline) for line in text.splitlines()), inline


# ------------------------------------------------------------------------------------ live


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FlakyTracker:
    """The file tracker, refusing the first ``file`` call like a Jira outage (retryable)."""

    def __init__(self, inner: FileIssueTracker) -> None:
        self.inner = inner
        self.file_calls = 0

    def file(self, draft: IssueDraft) -> IssueRef:
        self.file_calls += 1
        if self.file_calls == 1:
            raise TrackerError("Jira answered HTTP 503 (emulated outage)", retryable=True, status=503)
        return self.inner.file(draft)

    def comment(self, key: str, body: Document, idempotency_key: str) -> None:
        self.inner.comment(key, body, idempotency_key)

    def attach(self, key: str, attachments: Sequence[Attachment]) -> None:
        self.inner.attach(key, attachments)

    def transition(self, key: str, status: str) -> None:
        self.inner.transition(key, status)

    def find(self, idempotency_key: str) -> IssueRef | None:
        return self.inner.find(idempotency_key)

    def search_labels(self, label: str, since_iso: str | None = None) -> list[IssueRef]:
        return self.inner.search_labels(label, since_iso)


@dataclass
class Commands:
    ran: list[str] = field(default_factory=list)
    serving: str = "1.0.2"  # what the target serves; the rollback makes it 1.0.1

    def __call__(self, command: str, *, timeout_s: float) -> CommandOutcome:
        self.ran.append(command)
        self.serving = "1.0.1"
        now = datetime.now(UTC)
        return CommandOutcome(command, 0, (CommandLine(now, "stdout", "rolled back"),), now, now)


class CountingReceiver(AlertReceiver):
    def __init__(self, options: IncidentOptions, deps: IncidentDeps) -> None:
        super().__init__(options, deps)
        self.statuses: list[int] = []
        self.changed = threading.Condition()

    def receive(self, body: bytes) -> object:  # type: ignore[override]  # records, then answers as usual
        reply = super().receive(body)
        with self.changed:
            self.statuses.append(reply.status)
            self.changed.notify_all()
        return reply


def _test_config(tmp: Path, receiver_port: int) -> Path:
    text = CONFIG.read_text(encoding="utf-8")
    dead = f"http://127.0.0.1:{_free_port()}/"
    text = text.replace("http://127.0.0.1:9095/alerts", f"http://127.0.0.1:{receiver_port}/alerts")
    text = text.replace("https://events.pagerduty.com/v2/enqueue", dead).replace(
        "https://api.opsgenie.com/", dead
    )
    secrets = tmp / "secrets"
    secrets.mkdir()
    for name in ("pagerduty-routing-key", "opsgenie-api-key", "slack-webhook-url"):
        (secrets / name).write_text(dead if name.startswith("slack") else "test-key\n", encoding="utf-8")
    (secrets / "kis-alert-receiver-token").write_text(RECEIVER_TOKEN + "\n", encoding="utf-8")
    text = text.replace("/etc/alertmanager/secrets/", f"{secrets}/")
    path = tmp / "alertmanager.yml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def alertmanager_binary() -> str:
    return _binary("prometheus-alertmanager", "alertmanager")


@contextlib.contextmanager
def _alertmanager(binary: str, config: Path, tmp: Path) -> Iterator[str]:
    port = _free_port()
    log = (tmp / "alertmanager.log").open("w", encoding="utf-8")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={tmp / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # no gossip: a single instance
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + DEADLINE_S
        pause = threading.Event()
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"alertmanager exited {process.returncode}: {(tmp / 'alertmanager.log').read_text()}"
                )
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(f"{url}/-/ready", timeout=1) as reply,
            ):
                if reply.status == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail("alertmanager not ready in time")
            pause.wait(0.1)  # bounded wait on an external process
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def test_real_alertmanager_posts_to_the_receiver_which_rolls_back_once(
    tmp_path: Path, alertmanager_binary: str
) -> None:
    release_dir = tmp_path / "release"
    for version, hours in (("1.0.1", 2), ("1.0.2", 1)):
        (release_dir / version).mkdir(parents=True)
        state = {
            "status": "promoted",
            "promoted_at": (datetime.now(UTC) - timedelta(hours=hours)).isoformat(),
        }
        (release_dir / version / "promotion.json").write_text(json.dumps(state), encoding="utf-8")
    flaky = FlakyTracker(FileIssueTracker(tmp_path / "tracker"))
    tracker = OutboxTracker(flaky, tmp_path / "outbox")
    commands = Commands()

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
    receiver = CountingReceiver(
        IncidentOptions(release_dir=release_dir, rollback_command="kis-deploy rollback"), deps
    )
    server, port = create_receiver_server(receiver, "127.0.0.1:0", ReceiverAuth(bearer_token=RECEIVER_TOKEN))
    thread = serve_in_thread(server)
    try:
        with _alertmanager(alertmanager_binary, _test_config(tmp_path, port), tmp_path) as url:
            alert = {
                "labels": {
                    "alertname": "KisRollbackP95Latency",
                    "severity": "critical",
                    "rollback": "immediate",
                    "action": "page-oncall",
                    "job": "kis-estimator",
                },
                "annotations": {
                    "summary": "Roll back now: p95 412.0 ms > 200 ms for 5 minutes (kis-estimator)"
                },
                "startsAt": (datetime.now(UTC) - timedelta(minutes=6)).isoformat(),
                "generatorURL": "http://prometheus.test/graph",
            }
            request = urllib.request.Request(
                f"{url}/api/v2/alerts",
                data=json.dumps([alert]).encode(),
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=10) as reply:
                assert reply.status == 200
            # Alertmanager delivers (group_wait 0s), gets 503 (tracker down), retries, gets 200.
            with receiver.changed:
                delivered = receiver.changed.wait_for(lambda: 200 in receiver.statuses, timeout=DEADLINE_S)
            assert delivered, f"receiver answered {receiver.statuses}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert receiver.statuses[0] == 503 and receiver.statuses[-1] == 200, receiver.statuses
    assert commands.ran == ["kis-deploy rollback"]  # once, despite the retry
    issues = list((tmp_path / "tracker").glob("KIS-*"))
    assert len(issues) == 1
    meta = json.loads((issues[0] / "meta.json").read_text(encoding="utf-8"))
    assert meta["summary"] == "[ROLLBACK] KIS Estimator 1.0.2 → 1.0.1"
    assert "observed 412 ms" in meta["description"]
    assert tracker.pending() == 0
