"""The promotion guard with a scripted estimator and command runner (no deploys, no sockets)."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kis_estimator.workflows.prometheus.client import InstantResult, RangeResult, Sample, Series
from kis_estimator.workflows.release.artifacts import ArtifactInfo, ReleaseManifest
from kis_estimator.workflows.release.estimator_client import (
    BurstResult,
    HealthResult,
    ProbeResult,
    ServerInfo,
    SuiteResult,
    parse_suite_report,
    percentile,
)
from kis_estimator.workflows.release.promote import (
    CommandLine,
    CommandOutcome,
    PromoteDeps,
    PromoteOptions,
    PromotionResult,
    PromotionStatus,
    promote,
    run_promote,
)
from kis_estimator.workflows.settings import WorkflowSettings
from kis_estimator.workflows.templates import deploy_idempotency_key
from kis_estimator.workflows.tracker.files import FileIssueTracker
from kis_estimator.workflows.tracker.protocol import Document, IssueDraft, IssueRef, TrackerError

T0 = datetime(2025, 9, 23, 3, 0, tzinfo=UTC)
CATALOG = "f" * 64


class ManualClock:
    def __init__(self) -> None:
        self.at = T0

    def now(self) -> datetime:
        self.at += timedelta(milliseconds=10)
        return self.at


@dataclass
class ScriptedEstimator:
    health_status: str = "SERVING"
    regression_passed: int = 40
    catalog: str = CATALOG
    download_code: str = "PERMISSION_DENIED"
    latency_ms: float = 2.0
    version: str = "1.0.0"  # what the target serves; ScriptedCommands' deploy and rollback change it
    commit: str = "c0ffee"
    started_at: datetime = T0
    calls: list[str] = field(default_factory=list)

    def health(self) -> HealthResult:
        self.calls.append("health")
        return HealthResult(self.health_status)

    def smoke(self) -> SuiteResult:
        self.calls.append("smoke")
        return SuiteResult("smoke", 3, 3, 0, 3, report="smoke: 3/3 passed\n")

    def regression(self) -> SuiteResult:
        self.calls.append("regression")
        failed = ("F34", "M31")[: 40 - self.regression_passed]
        return SuiteResult("regression", self.regression_passed, 40, 0, 40, failed, "regression: ...\n")

    def probe(self) -> ProbeResult:
        self.calls.append("probe")
        return ProbeResult("est_1", self.catalog, "OK", self.download_code)

    def slo_burst(self, requests: int) -> BurstResult:
        self.calls.append("burst")
        return BurstResult(tuple((i * 0.01, self.latency_ms) for i in range(requests)), (("OK", requests),))

    def server_info(self) -> ServerInfo | None:
        self.calls.append("info")
        return ServerInfo(self.version, self.commit, self.catalog, self.started_at)


@dataclass
class ScriptedCommands:
    exit_codes: dict[str, int] = field(default_factory=dict)  # command prefix → exit status
    ran: list[str] = field(default_factory=list)
    target: ScriptedEstimator | None = None  # a successful deploy/rollback changes what it serves
    history: list[str] = field(default_factory=lambda: ["1.0.0"])

    def __call__(self, command: str, *, timeout_s: float) -> CommandOutcome:
        self.ran.append(command)
        code = next((c for prefix, c in self.exit_codes.items() if command.startswith(prefix)), 0)
        if code == 0 and self.target is not None:
            if command.startswith("deploy "):
                self.history.append(command.split()[-1])
            elif command.startswith("rollback") and len(self.history) > 1:
                self.history.pop()
            self.target.version = self.history[-1]
        line = CommandLine(T0, "stdout", f"ran {command.split()[0]}")
        return CommandOutcome(command, code, (line,), T0, T0 + timedelta(seconds=1))


def _plain_draft(result: PromotionResult, settings: WorkflowSettings) -> IssueDraft:
    return IssueDraft(
        idempotency_key=deploy_idempotency_key(result.version, result.environment),
        summary=f"[DEPLOY] {result.version}",
        body=Document(()),
        issue_type="Deployment",
        priority="High",
    )


@dataclass
class Release:
    settings: WorkflowSettings
    options: PromoteOptions
    tracker: FileIssueTracker
    estimator: ScriptedEstimator
    commands: ScriptedCommands
    refused: list[PromotionResult]

    real_templates: bool = False  # the templates' DEPLOY issue renders a PNG chart: slow, used once

    def deps(self, **overrides: object) -> PromoteDeps:
        deps = PromoteDeps(
            tracker=self.tracker,
            estimator=self.estimator,
            run_command=self.commands,
            clock=ManualClock(),
            sleep=lambda _s: None,
            deploy_draft=None if self.real_templates else _plain_draft,
            on_refused=self._refused,
        )
        return replace(deps, **overrides)  # type: ignore[arg-type]  # test overrides by name

    def _refused(self, result: PromotionResult) -> IssueRef | None:
        self.refused.append(result)
        return IssueRef("KIS-99", "")

    def run(self, **option_overrides: object) -> PromotionResult:
        return promote(replace(self.options, **option_overrides), self.settings, self.deps())  # type: ignore[arg-type]


@pytest.fixture
def release(tmp_path: Path) -> Release:
    wheel = tmp_path / "kis_estimator-1.0.1-py3-none-any.whl"
    wheel.write_bytes(b"wheel bytes")
    wheel_sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    manifest = ReleaseManifest(
        version="1.0.1",
        git_commit="c0ffee",
        git_dirty=False,
        build_time="2025-09-23T02:00:00Z",
        artifacts=(ArtifactInfo(wheel.name, "wheel", wheel.stat().st_size, wheel_sha),),
        descriptor_set_name="d.binpb",
        descriptor_set_sha256="c" * 64,
        catalog_version=CATALOG,
        rules_version="KIS-RULES-1.0",
    )
    manifest_path = tmp_path / "kis_estimator-1.0.1.manifest.json"
    manifest_path.write_bytes(manifest.to_json())
    settings = WorkflowSettings(
        release_dir=tmp_path / "release",
        tracker_dir=tmp_path / "tracker",
        deploy_command="deploy {artifact} {version}",
        rollback_command="rollback",
        release_target="127.0.0.1:8787",
        release_slo_burst_requests=20,
    )
    options = PromoteOptions(
        version="1.0.1",
        artifact=wheel,
        manifest=manifest_path,
        expected_artifact_sha256=wheel_sha,
        expected_manifest_sha256=hashlib.sha256(manifest_path.read_bytes()).hexdigest(),
        approved_by="CEO",
    )
    tracker = FileIssueTracker(settings.tracker_dir)
    estimator = ScriptedEstimator()
    return Release(settings, options, tracker, estimator, ScriptedCommands(target=estimator), [])


def _issue_dirs(settings: WorkflowSettings) -> list[str]:
    return (
        sorted(p.name for p in settings.tracker_dir.iterdir() if p.is_dir())
        if settings.tracker_dir.exists()
        else []
    )


def test_promotes_when_every_check_passes_and_files_the_deploy_issue(release: Release) -> None:
    release.real_templates = True
    result = release.run()
    assert (result.status, result.exit_code) == (PromotionStatus.PROMOTED, 0)
    assert [c.name for c in result.checks] == [
        "verify",
        "deploy",
        "health",
        "version",
        "smoke",
        "regression",
        "rbac",
        "catalog",
        "slo",
    ]
    assert release.commands.ran == [f"deploy {release.options.artifact} 1.0.1"]
    assert result.issue is not None and _issue_dirs(release.settings) == [result.issue.key]
    state = json.loads(
        (release.settings.release_dir / "1.0.1" / "promotion.json").read_text(encoding="utf-8")
    )
    assert (state["status"], state["approved_by"], state["issue_key"]) == (
        "promoted",
        "CEO",
        result.issue.key,
    )
    deploy_log = (release.settings.release_dir / "1.0.1" / "deploy.log").read_text(encoding="utf-8")
    assert deploy_log.splitlines()[1] == "2025-09-23T03:00:00.000000Z [stdout] ran deploy"
    assert len(result.latency_samples) == 20
    issue_md = (release.settings.tracker_dir / result.issue.key / "issue.md").read_text(encoding="utf-8")
    assert "[DEPLOY] KIS Estimator 1.0.1 - Production" in issue_md and "CEO" in issue_md
    attachments = {
        p.name for p in (release.settings.tracker_dir / result.issue.key / "attachments").iterdir()
    }
    assert {
        "deploy.log",
        "metrics-snapshot.json",
        "regression-report.txt",
        "latency-p50-p95.png",
    } <= attachments


def test_production_promotion_without_approver_is_rejected_before_anything_runs(release: Release) -> None:
    result = release.run(approved_by=None)
    assert (result.status, result.exit_code) == (PromotionStatus.REJECTED, 2)
    assert "needs an approver (--approved-by)" in result.message
    assert release.commands.ran == [] and release.estimator.calls == []


def test_staging_promotion_needs_no_approver(release: Release) -> None:
    release.settings = replace(release.settings, release_environment="Staging")
    assert release.run(approved_by=None).status is PromotionStatus.PROMOTED


def test_hash_mismatch_refuses_before_deploy(release: Release) -> None:
    result = release.run(expected_artifact_sha256="0" * 64)
    assert (result.status, result.exit_code) == (PromotionStatus.REFUSED, 1)
    assert release.options.artifact.name in result.message and "0" * 64 in result.message
    assert release.commands.ran == [] and release.refused == []


@pytest.mark.parametrize(
    ("script", "failed", "message"),
    [
        ({"regression_passed": 38}, ["regression"], "regression 38/40 (failed F34, M31)"),
        (
            {"health_status": "NOT_SERVING"},
            ["health", "version", "smoke", "regression", "rbac", "catalog", "slo"],
            "health",
        ),
        ({"download_code": "OK"}, ["rbac"], "GetEvidenceBundle OK"),
        ({"catalog": "e" * 64}, ["catalog"], "catalog served eeeeeeeeeeeeeeee...eeee"),
        ({"latency_ms": 31.0}, ["slo"], "slo p95 31.0 ms (≤ 30 ms)"),
    ],
    ids=["regression", "not-serving", "rbac-open", "wrong-catalog", "slow"],
)
def test_failed_check_rolls_back_and_hands_over(
    release: Release, script: dict[str, object], failed: list[str], message: str
) -> None:
    for name, value in script.items():
        setattr(release.estimator, name, value)
    result = release.run()
    assert (result.status, result.exit_code) == (PromotionStatus.REFUSED, 1)
    assert [c.name for c in result.failed_checks] == failed
    assert result.message.startswith("promotion of 1.0.1 refused: ") and message in result.message
    assert release.commands.ran[-1] == "rollback"
    assert [r.version for r in release.refused] == ["1.0.1"] and result.issue == IssueRef("KIS-99", "")
    assert _issue_dirs(release.settings) == []  # no DEPLOY issue
    assert (release.settings.release_dir / "1.0.1" / "rollback.log").exists()


def test_failed_deploy_command_rolls_back_without_running_checks(release: Release) -> None:
    release.commands.exit_codes = {"deploy": 1}
    result = release.run()
    assert [c.name for c in result.failed_checks] == ["deploy"]
    # what serves before the deploy, then after the rollback; no checks in between
    assert release.commands.ran[-1] == "rollback"
    assert release.estimator.calls == ["health", "info", "health", "info"]


def test_rerun_of_a_promoted_version_does_not_redeploy_or_file_again(release: Release) -> None:
    first = release.run()
    release.commands.ran.clear()
    out = io.StringIO()
    code = run_promote(
        release.settings,
        release.options,
        out,
        tracker=release.tracker,
        estimator=release.estimator,
        run_command=release.commands,
        clock=ManualClock(),
        sleep=lambda _s: None,
    )
    assert code == 0 and "1.0.1 already promoted to Production" in out.getvalue()
    assert release.commands.ran == []
    assert first.issue is not None and _issue_dirs(release.settings) == [first.issue.key]


def test_rerun_redeploys_when_the_target_no_longer_serves_the_release(release: Release) -> None:
    first = release.run()
    release.commands.history[-1] = release.estimator.version = "1.0.0"  # rolled back by hand
    release.commands.ran.clear()
    result = release.run()
    assert release.commands.ran == [f"deploy {release.options.artifact} 1.0.1"]
    assert result.status is PromotionStatus.PROMOTED and release.estimator.version == "1.0.1"
    assert first.issue is not None and _issue_dirs(release.settings) == [first.issue.key]  # not twice


def test_promote_of_the_serving_version_from_an_empty_release_dir_deploys_nothing(release: Release) -> None:
    import shutil

    first = release.run()
    shutil.rmtree(release.settings.release_dir)  # another operator's machine, or a lost directory
    release.commands.ran.clear()
    release.estimator.calls.clear()
    again = release.run()
    assert (again.status, again.exit_code) == (PromotionStatus.PROMOTED, 0), again.message
    assert release.commands.ran == []  # neither deployed nor rolled back
    assert next(c for c in again.checks if c.name == "deploy").summary.startswith(
        "not deployed: the target already serves 1.0.1"
    )
    assert "regression" in release.estimator.calls  # the checks ran against what serves
    assert first.issue is not None and again.issue is not None and again.issue.key == first.issue.key
    assert _issue_dirs(release.settings) == [first.issue.key]  # the DEPLOY issue is found, not refiled
    state = json.loads((release.settings.release_dir / "1.0.1" / "promotion.json").read_text())
    assert (state["status"], state["adopted"]) == ("promoted", True)
    third = release.run()  # and from now on the record says so
    assert third.status is PromotionStatus.ALREADY_PROMOTED and release.commands.ran == []


def test_the_serving_version_failing_its_checks_is_not_rolled_back_by_a_promote(release: Release) -> None:
    release.estimator.version = "1.0.1"  # serving already, no record here
    release.estimator.regression_passed = 39
    result = release.run()
    assert (result.status, result.exit_code) == (PromotionStatus.REFUSED, 1)
    assert "nothing was deployed or rolled back" in result.message
    assert release.commands.ran == [] and release.refused == []


def test_the_serving_version_from_another_commit_is_rejected(release: Release) -> None:
    release.estimator.version, release.estimator.commit = "1.0.1", "deadbeef"
    result = release.run()
    assert (result.status, result.exit_code) == (PromotionStatus.REJECTED, 2)
    assert "built from commit deadbeef" in result.message and release.commands.ran == []


def test_a_rollback_names_the_version_that_serves_not_the_records(release: Release) -> None:
    (release.settings.release_dir / "1.0.0").mkdir(parents=True)
    (release.settings.release_dir / "1.0.0" / "promotion.json").write_text(
        json.dumps({"version": "1.0.0", "status": "promoted", "promoted_at": "2025-09-01T00:00:00Z"})
    )
    release.commands.history[-1] = release.estimator.version = "0.9.8"  # a manual rollback elsewhere
    release.estimator.regression_passed = 38
    result = release.run()
    assert result.rollback is not None and result.rollback.previous_version == "0.9.8"
    assert "rolled back to 0.9.8 (commit c0ffee) (SERVING)" in result.message, result.message
    assert release.refused[0].rollback is not None and release.refused[0].rollback.previous_running


def test_a_rollback_that_leaves_the_candidate_serving_is_reported_failed(release: Release) -> None:
    release.commands.history = ["1.0.1"]  # the driver has nothing to roll back to
    release.estimator.regression_passed = 38
    result = release.run()
    assert "ROLLBACK FAILED: the target still serves 1.0.1" in result.message, result.message
    assert result.rollback is not None and not result.rollback.previous_running


class DownTracker:
    def __init__(self) -> None:
        self.drafts: list[IssueDraft] = []

    def file(self, draft: IssueDraft) -> IssueRef:
        self.drafts.append(draft)
        raise TrackerError("503 from Jira", retryable=True, status=503)

    def comment(self, key: str, body: Document, idempotency_key: str) -> None: ...

    def attach(self, key: str, attachments: Sequence[object]) -> None: ...

    def transition(self, key: str, status: str) -> None: ...

    def find(self, idempotency_key: str) -> IssueRef | None:
        return None

    def search_labels(self, label: str, since_iso: str | None = None) -> list[IssueRef]:
        return []


def test_tracker_outage_keeps_the_promotion_and_a_rerun_files_the_issue(release: Release) -> None:
    down = DownTracker()
    result = promote(release.options, release.settings, release.deps(tracker=down))
    assert (result.status, result.exit_code) == (PromotionStatus.PROMOTED, 3)
    assert "503 from Jira" in result.issue_error
    assert down.drafts[0].idempotency_key == deploy_idempotency_key("1.0.1", "Production")

    again = release.run()
    assert (again.status, again.exit_code) == (PromotionStatus.ALREADY_PROMOTED, 0)
    assert again.issue is not None and again.issue.created
    assert release.commands.ran == [f"deploy {release.options.artifact} 1.0.1"]  # deployed once


def test_a_pending_deploy_issue_key_is_replaced_once_a_flush_filed_it(
    release: Release, tmp_path: Path
) -> None:
    from kis_estimator.workflows.tracker.outbox import OutboxTracker
    from tests.unit.test_outbox import Switchable

    switch = Switchable(release.tracker)
    outbox = OutboxTracker(switch, tmp_path / "outbox")
    switch.down = True
    first = promote(release.options, release.settings, release.deps(tracker=outbox))
    assert first.issue is not None and first.issue.pending and first.exit_code == 0
    state_path = release.settings.release_dir / "1.0.1" / "promotion.json"
    assert json.loads(state_path.read_text())["issue_key"].startswith("PENDING-")

    switch.down = False
    assert outbox.flush().filed == 1  # `kis-release outbox flush`, run by someone else
    again = promote(release.options, release.settings, release.deps(tracker=outbox))
    assert again.status is PromotionStatus.ALREADY_PROMOTED
    assert again.issue is not None and (again.issue.key, again.issue.pending) == ("KIS-1", False)
    assert json.loads(state_path.read_text())["issue_key"] == "KIS-1"  # the record no longer says PENDING


def test_same_version_from_another_artifact_is_rejected(release: Release) -> None:
    release.run()
    release.options.artifact.write_bytes(b"rebuilt")
    new_sha = hashlib.sha256(b"rebuilt").hexdigest()
    result = release.run(expected_artifact_sha256=new_sha)
    # The manifest no longer matches the artifact: rejected, and the promoted state is left alone.
    assert (result.status, result.exit_code) == (PromotionStatus.REJECTED, 2) and "entry in" in result.message
    state = json.loads(
        (release.settings.release_dir / "1.0.1" / "promotion.json").read_text(encoding="utf-8")
    )
    assert state["status"] == "promoted" and release.commands.ran == [
        f"deploy {release.options.artifact} 1.0.1"
    ]


def test_suite_report_parsing_counts_failures_and_skips() -> None:
    report = (
        "PASS  S01      a\nFAIL  F34      b\n        step 0: totals\nregression: 39/40 passed, 1 skipped\n"
    )
    result = parse_suite_report("regression", report, 40)
    assert (result.passed, result.total, result.skipped, result.failed_cases, result.ok) == (
        39,
        40,
        1,
        ("F34",),
        False,
    )
    assert result.summary == "regression 39/40 (failed F34), 1 skipped"
    broken = parse_suite_report("smoke", "Traceback ...\nImportError: x\n", 3)
    assert not broken.ok and "no summary line" in broken.error


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 0.95, None),
        ([5.0], 0.95, 5.0),
        ([float(i) for i in range(1, 101)], 0.95, 95.0),
        ([3.0, 1.0, 2.0], 0.5, 2.0),
    ],
    ids=["empty", "one", "hundred", "unsorted-median"],
)
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float | None) -> None:
    assert percentile(values, q) == expected


class ScriptedPrometheus:
    """A MetricsSource answering every p95 query with ``p95`` and every error-rate query with ``rate``."""

    def __init__(self, p95: float | None, rate: float | None) -> None:
        self.values = {"histogram_quantile": p95, "grpc_server_handled_total": rate}
        self.queries: list[str] = []

    def query(self, expr: str, at: datetime) -> InstantResult:
        self.queries.append(expr)
        if "count_over_time(kis_build_info" in expr:  # scrapes of the release in the window
            return InstantResult(expr, at, series=(Series({}, (Sample(at, 5.0),)),))
        value = (
            self.values["histogram_quantile"]
            if "histogram_quantile" in expr
            else self.values["grpc_server_handled_total"]
        )
        series = () if value is None else (Series({}, (Sample(at, value),)),)
        return InstantResult(expr, at, series=series)

    def query_range(self, expr: str, start: datetime, end: datetime, step_s: float) -> RangeResult:
        raise AssertionError("not used at T+0")


@pytest.mark.parametrize(
    ("p95", "rate", "passed", "text"),
    [
        (12.0, 0.001, True, "slo p95 12.0 ms (≤ 30 ms), error rate 0.10 % (< 0.5 %) [prometheus]"),
        (12.0, 0.005, False, "error rate 0.50 %"),
        (None, 0.0, False, "NO DATA from Prometheus"),
    ],
    ids=["within", "error-rate-at-limit", "no-data"],
)
def test_prometheus_is_the_slo_gate_when_configured(
    release: Release, p95: float | None, rate: float | None, passed: bool, text: str
) -> None:
    prometheus = ScriptedPrometheus(p95, rate)
    waits: list[float] = []
    result = promote(release.options, release.settings, release.deps(metrics=prometheus, sleep=waits.append))
    slo = next(c for c in result.checks if c.name == "slo")
    assert (slo.passed, text in slo.summary) == (passed, True)
    assert len(waits) == (5 if p95 is None else 0)  # no data: bounded wait for the first scrapes
    assert release.estimator.calls.count("burst") == 1  # the burst still runs, for the chart


def test_a_new_promotion_sends_the_korean_notice_and_a_rerun_does_not(release: Release) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from kis_estimator.workflows.cli import _notify

    received: list[bytes] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        settings = replace(release.settings, slack_webhook_url=f"http://127.0.0.1:{server.server_port}/hook")
        out = io.StringIO()

        def run() -> int:
            return run_promote(
                settings,
                release.options,
                out,
                tracker=release.tracker,
                estimator=release.estimator,
                run_command=release.commands,
                clock=ManualClock(),
                sleep=lambda _s: None,
                on_promoted=_notify(settings),
            )

        assert run() == 0
        text = json.loads(received[0])["text"]
        assert "1.0.1" in text and "배포" in text and "3/3" in text and "40/40" in text
        assert run() == 0  # already promoted: no second notice
        assert "already promoted" in out.getvalue()
    finally:
        server.shutdown()
        server.server_close()
    assert len(received) == 1
