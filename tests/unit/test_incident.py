"""The watch → decide → act path with the Prometheus emulator (in-process), a file tracker, a scripted
command runner and a scripted estimator: no sockets, no processes, a manual clock."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kis_estimator.workflows.incident.criteria import DEFAULT_CRITERIA, IncidentLedger, Verdict
from kis_estimator.workflows.incident.response import (
    PAGE_LABELS,
    PAGE_PRIORITY,
    Action,
    ExitCode,
    IncidentDeps,
    IncidentOptions,
    current_release,
    file_refused_promotion,
    gather_error_log,
    handle,
    release_at,
    rollback_for_issue,
    run_watch,
    signal_from_evaluation,
    watch_once,
)
from kis_estimator.workflows.prometheus.client import PrometheusSource
from kis_estimator.workflows.release.artifacts import ArtifactInfo, ReleaseManifest
from kis_estimator.workflows.release.estimator_client import (
    BurstResult,
    EstimatorClient,
    HealthResult,
    ProbeResult,
    ServerInfo,
    SuiteResult,
)
from kis_estimator.workflows.release.promote import (
    CommandLine,
    CommandOutcome,
    PromoteDeps,
    PromoteOptions,
    PromotionStatus,
    promote,
)
from kis_estimator.workflows.settings import WorkflowSettings
from kis_estimator.workflows.tracker.files import FileIssueTracker
from kis_estimator.workflows.tracker.protocol import IssueRef, TrackerOptions
from tests.emulators.prometheus import PrometheusEmulator
from tests.unit import test_promote as tp

T_V1 = datetime(2025, 9, 23, 2, 0, tzinfo=UTC)
T_V2 = datetime(2025, 9, 23, 3, 0, tzinfo=UTC)  # the notice's 2025-09-23 12:00:00 KST
NOW = T_V2 + timedelta(minutes=30)

BY_ID = {c.id: c for c in DEFAULT_CRITERIA}
CRITERIA = (BY_ID["p95_latency_200ms"], BY_ID["p95_latency_100ms"], BY_ID["security_vulnerability"])
P95 = BY_ID["p95_latency_200ms"].expr


class ManualClock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


@dataclass
class ScriptedEstimator:
    health_status: str = "SERVING"
    smoke_passed: int = 3
    version: str = "1.0.2"  # what the target serves; a successful rollback command makes it 1.0.1
    calls: list[str] = field(default_factory=list)

    def health(self) -> HealthResult:
        self.calls.append("health")
        return HealthResult(self.health_status)

    def smoke(self) -> SuiteResult:
        self.calls.append("smoke")
        return SuiteResult(
            "smoke", self.smoke_passed, 3, 0, 3, report=f"smoke: {self.smoke_passed}/3 passed\n"
        )

    def regression(self) -> SuiteResult:  # pragma: no cover - not used by the incident path
        raise AssertionError("regression is not part of a rollback verification")

    def probe(self) -> ProbeResult:  # pragma: no cover - as above
        raise AssertionError("probe is not part of a rollback verification")

    def slo_burst(self, requests: int) -> BurstResult:  # pragma: no cover - as above
        raise AssertionError("slo_burst is not part of a rollback verification")

    def server_info(self) -> ServerInfo | None:
        self.calls.append("info")
        return ServerInfo(self.version)


@dataclass
class ScriptedCommands:
    """``returncode`` None: the runner's timeout (it killed the process group)."""

    clock: ManualClock
    returncode: int | None = 0
    took_s: float = 4.0
    ran: list[tuple[str, float]] = field(default_factory=list)
    script: list[int | None] = field(default_factory=list)  # return codes of the next runs, then returncode
    target: ScriptedEstimator | None = None  # a successful run makes it serve 1.0.1

    def __call__(self, command: str, *, timeout_s: float) -> CommandOutcome:
        self.ran.append((command, timeout_s))
        code = self.script.pop(0) if self.script else self.returncode
        started = self.clock.now()
        self.clock.advance(timeout_s if code is None else self.took_s)
        lines = [CommandLine(started, "stdout", "kis-deploy: rollback 1.0.2 -> 1.0.1")]
        if code is None:
            lines.append(CommandLine(self.clock.now(), "runner", f"timeout after {timeout_s:g} s: SIGKILL"))
        if code == 0 and self.target is not None:
            self.target.version = "1.0.1"
        return CommandOutcome(command, code, tuple(lines), started, self.clock.now())


@dataclass
class World:
    tmp: Path
    clock: ManualClock
    prometheus: PrometheusEmulator
    tracker: FileIssueTracker
    commands: ScriptedCommands
    estimator: ScriptedEstimator
    options: IncidentOptions
    verified: list[str] = field(default_factory=list)
    pages: list[tuple[str, str]] = field(default_factory=list)
    page_delivers: bool = True
    sleeps: list[float] = field(default_factory=list)

    def _page(self, subject: str, body: str) -> bool:
        self.pages.append((subject, body))
        return self.page_delivers

    def _sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.clock.advance(seconds)

    def deps(self) -> IncidentDeps:
        @contextlib.contextmanager
        def estimator_for(version: str) -> Iterator[EstimatorClient]:
            before = len(self.estimator.calls)
            try:
                yield self.estimator
            finally:  # a verification runs smoke; a look at what serves does not
                if "smoke" in self.estimator.calls[before:]:
                    self.verified.append(version)

        return IncidentDeps(
            tracker=self.tracker,
            estimator_for=estimator_for,
            run_command=self.commands,
            clock=self.clock,
            sleep=self._sleep,
            ledger=IncidentLedger(self.options.release_dir),
            page=self._page,
            metrics=PrometheusSource(
                "http://prometheus.test", sleep=lambda _s: None, transport=self.prometheus.transport()
            ),
        )

    def p95(self, value: float | None) -> None:
        if value is None:
            self.prometheus.register(P95)  # scraped nothing: an empty, successful answer
        else:
            self.prometheus.register_function(P95, lambda _t: value)

    def issues(self) -> list[dict[str, Any]]:
        root = self.tracker.root
        metas = [json.loads((p / "meta.json").read_text()) for p in sorted(root.glob("KIS-*"))]
        return sorted(metas, key=lambda m: int(m["key"].split("-")[1]))

    def comments(self, key: str) -> list[str]:
        return [p.read_text() for p in sorted((self.tracker.root / key / "comments").glob("*.md"))]


def _promoted(release_dir: Path, version: str, at: datetime) -> None:
    (release_dir / version).mkdir(parents=True, exist_ok=True)
    state = {"version": version, "status": "promoted", "promoted_at": at.isoformat().replace("+00:00", "Z")}
    (release_dir / version / "promotion.json").write_text(json.dumps(state), encoding="utf-8")


@pytest.fixture
def world(tmp_path: Path) -> World:
    release_dir = tmp_path / "release"
    _promoted(release_dir, "1.0.1", T_V1)
    _promoted(release_dir, "1.0.2", T_V2)
    log_dir = tmp_path / "deploy" / "releases" / "1.0.2"
    log_dir.mkdir(parents=True)
    lines = [
        {"ts": (NOW - timedelta(minutes=2)).isoformat(), "level": "ERROR", "msg": "upstream timeout"},
        {"ts": (NOW - timedelta(minutes=2)).isoformat(), "level": "INFO", "msg": "call ok"},
        {"ts": (T_V2 - timedelta(hours=1)).isoformat(), "level": "ERROR", "msg": "before the window"},
    ]
    (log_dir / "service.log").write_text(
        "\n".join(json.dumps(x) for x in lines) + "\nnot json\n", encoding="utf-8"
    )
    clock = ManualClock(NOW)
    estimator = ScriptedEstimator()
    return World(
        tmp=tmp_path,
        clock=clock,
        prometheus=PrometheusEmulator(),
        tracker=FileIssueTracker(tmp_path / "tracker", clock=clock),
        commands=ScriptedCommands(clock, target=estimator),
        estimator=estimator,
        options=IncidentOptions(
            release_dir=release_dir,
            rollback_command="kis-deploy rollback --root /srv/kis # leaving {version}",
            criteria=CRITERIA,
            service_log=str(tmp_path / "deploy" / "releases" / "{version}" / "service.log"),
        ),
    )


# ------------------------------------------------------------------------------------ the decision table


@dataclass(frozen=True)
class Row:
    p95_ms: float | None
    verdict: Verdict
    action: Action | None  # None: nothing acted on
    rolled_back: bool
    summary: str | None
    labels: tuple[str, ...] = ()
    exit_code: ExitCode = ExitCode.ACTED


ROWS = [
    pytest.param(
        Row(
            340.0,
            Verdict.ROLLBACK,
            Action.ROLLED_BACK,
            True,
            "[ROLLBACK] KIS Estimator 1.0.2 → 1.0.1",
            ("kis-incident", "kis-rollback"),
        ),
        id="immediate-rolls-back-and-files",
    ),
    pytest.param(
        Row(
            130.0,
            Verdict.REVIEW,
            Action.NEEDS_DECISION,
            False,
            "[ROLLBACK] KIS Estimator 1.0.2 → 1.0.1 (needs decision)",
            ("kis-incident", "kis-rollback", "needs-decision"),
        ),
        id="review-files-needs-decision-no-rollback",
    ),
    pytest.param(
        Row(
            None,
            Verdict.REVIEW,
            Action.NEEDS_DECISION,
            False,
            "[ROLLBACK] KIS Estimator 1.0.2 → 1.0.1 (needs decision)",
            ("kis-incident", "kis-rollback", "needs-decision"),
        ),
        id="no-data-is-inconclusive-so-review-never-ok",
    ),
    pytest.param(
        Row(12.0, Verdict.OK, None, False, None, exit_code=ExitCode.OK),
        id="healthy-does-nothing",
    ),
]


@pytest.mark.parametrize("row", ROWS)
def test_decision_table(world: World, row: Row) -> None:
    world.p95(row.p95_ms)

    result = watch_once(world.options, world.deps())

    assert result.evaluation is not None and result.evaluation.verdict is row.verdict
    assert (result.outcome.action if result.outcome else None) is row.action
    assert bool(world.commands.ran) is row.rolled_back
    assert world.verified == (["1.0.1"] if row.rolled_back else [])
    assert result.exit_code is row.exit_code
    issues = world.issues()
    assert [i["summary"] for i in issues] == ([row.summary] if row.summary else [])
    if row.summary:
        (issue,) = issues
        assert (issue["issue_type"], issue["priority"], issue["status"]) == (
            "Bug",  # the logical Incident type on a stock Jira Software project
            "Highest",  # the seed's Critical in Jira's default priority scheme
            "In Progress",
        )
        assert tuple(x for x in issue["labels"] if not x.startswith("kis-idem-")) == row.labels
        ticked = "- [x]" if row.rolled_back else "- [ ]"
        for action in (
            "Service stopped",
            "Rollback executed",
            "Previous version running",
            "Smoke tests passed",
        ):
            assert f"{ticked} {action}" in issue["description"], issue["description"]
    state = current_release(world.options.release_dir)
    assert state is not None and state.version == ("1.0.1" if row.rolled_back else "1.0.2")


def test_immediate_issue_carries_numbers_and_every_attachment(world: World) -> None:
    world.p95(340.0)
    outcome = watch_once(world.options, world.deps()).outcome
    assert outcome is not None and outcome.rollback is not None and outcome.rollback.verified

    (issue,) = world.issues()
    description = issue["description"]
    assert "- Time: 2025-09-23 12:30:00 KST" in description
    assert "P95 \\> 200ms (5분 지속): observed 340 ms for 5m00s (threshold 200 ms)" in description
    assert "p95 340.0ms" in description
    assert "- [x] Smoke tests passed (3/3)" in description
    names = [a["name"] for a in issue["attachments"]]
    assert names == [
        "error.log",
        "metrics-snapshot.json",
        "breach-p95-latency-200ms.png",
        "breach-p95-latency-100ms.png",
        "rollback.log",
    ]
    folder = world.tracker.root / issue["key"] / "attachments"
    error_log = (folder / "error.log").read_text()
    assert (
        "upstream timeout" in error_log
        and "call ok" not in error_log
        and "before the window" not in error_log
    )
    snapshot = json.loads((folder / "metrics-snapshot.json").read_text())
    assert snapshot["verdict"] == "ROLLBACK" and snapshot["rollback"]["verified"] is True
    assert "smoke: 3/3 passed" in (folder / "rollback.log").read_text()
    ((command, budget),) = world.commands.ran
    assert command == "kis-deploy rollback --root /srv/kis # leaving 1.0.2" and budget == 180.0


def test_rollback_timeout_says_failed_and_pages(world: World, caplog: pytest.LogCaptureFixture) -> None:
    world.p95(340.0)
    world.commands.returncode = None  # the runner killed it at the budget

    out = io.StringIO()
    code = run_watch(world.options, world.deps(), out, once=True)

    assert code == ExitCode.PAGED and code == 3
    assert world.verified == []  # nothing to verify: the command never finished
    (issue,) = world.issues()
    assert issue["summary"] == "[ROLLBACK] KIS Estimator 1.0.2 → 1.0.1 — ROLLBACK FAILED"
    assert issue["priority"] == TrackerOptions().priority(PAGE_PRIORITY) == "Highest"
    assert set(PAGE_LABELS) <= set(issue["labels"])
    assert "the rollback command timed out (killed)" in issue["description"]
    assert "- [ ] Rollback executed" in issue["description"]
    assert any(r.levelname == "ERROR" and "ROLLBACK FAILED" in r.getMessage() for r in caplog.records)
    assert "FAILED: the rollback command timed out" in out.getvalue()
    ((subject, body),) = world.pages  # paged through the channels, before any tracker call
    assert subject == "[KIS] ROLLBACK FAILED: 1.0.2 (Production)" and "timed out" in body
    # The target says 1.0.1 serves (something rolled it back after all): the next round does not run
    # the command again — that could step back twice — and reports without paging again.
    world.estimator.version = "1.0.1"
    assert run_watch(world.options, world.deps(), io.StringIO(), once=True) == ExitCode.PAGED
    assert len(world.commands.ran) == 1 and len(world.issues()) == 1 and len(world.pages) == 1
    release = current_release(world.options.release_dir)
    assert release is not None and release.version == "1.0.2"  # still the bad one: humans take over


def test_a_failed_rollback_command_is_tried_again_with_backoff_within_the_budget(world: World) -> None:
    world.p95(340.0)
    world.estimator.version = "1.0.2"  # the bad release serves until a rollback works
    world.commands.target = world.estimator
    world.commands.script = [1, 1]  # fails twice, then works

    outcome = watch_once(world.options, world.deps()).outcome

    assert outcome is not None and outcome.action is Action.ROLLED_BACK, outcome
    assert outcome.rollback is not None and (outcome.rollback.tries, outcome.rollback.verified) == (3, True)
    assert world.sleeps[:2] == [5.0, 10.0] and world.pages == []
    budgets = [budget for _command, budget in world.commands.ran]
    assert budgets[0] == 180.0 and budgets[1] < budgets[0] and budgets[2] < budgets[1]  # one budget
    log_text = Path(outcome.rollback.log_file).read_text()
    assert "try 2 after 5 s: the target still serves 1.0.2" in log_text and "serving 1.0.1" in log_text


def test_the_next_watch_retries_a_failed_rollback_while_the_bad_release_still_serves(world: World) -> None:
    world.p95(340.0)
    world.estimator.version = "1.0.2"
    world.commands.target = world.estimator
    world.commands.returncode = 1  # every try inside the first attempt fails

    first = watch_once(world.options, world.deps()).outcome
    assert first is not None and first.action is Action.ROLLBACK_FAILED and first.rollback is not None
    assert first.rollback.tries == 4 and len(world.pages) == 1  # ROLLBACK_TRIES, then paged

    world.commands.returncode = 0  # fixed (e.g. the disk had filled up)
    world.clock.advance(60)
    second = watch_once(world.options, world.deps()).outcome
    assert second is not None and second.action is Action.ROLLED_BACK and second.rollback is not None
    assert second.rollback.attempt == 2 and second.rollback.verified and len(world.pages) == 1
    release = current_release(world.options.release_dir)
    assert release is not None and release.version == "1.0.1"


def test_a_page_no_channel_delivered_exits_5_and_says_so(world: World) -> None:
    world.p95(340.0)
    world.commands.returncode = 2
    world.page_delivers = False
    out = io.StringIO()
    assert run_watch(world.options, world.deps(), out, once=True) == ExitCode.PAGE_FAILED
    assert int(ExitCode.PAGE_FAILED) == 5
    assert "PAGE NOT DELIVERED by any channel" in out.getvalue()


def test_failed_smoke_on_the_previous_version_pages(world: World) -> None:
    world.p95(340.0)
    world.estimator.smoke_passed = 2
    outcome = watch_once(world.options, world.deps()).outcome
    assert outcome is not None and outcome.action is Action.ROLLBACK_FAILED
    (issue,) = world.issues()
    assert issue["summary"].endswith("ROLLBACK FAILED") and "- [ ] Smoke tests passed" in issue["description"]


def test_repeated_evaluations_comment_instead_of_filing(world: World) -> None:
    world.p95(130.0)  # REVIEW
    for _ in range(3):
        watch_once(world.options, world.deps())
        world.clock.advance(30)
    (issue,) = world.issues()
    assert world.comments(issue["key"]) == []  # the same finding again: no comment spam

    world.p95(340.0)  # escalates: rollback, reported on the same issue
    outcome = watch_once(world.options, world.deps()).outcome
    assert outcome is not None and outcome.action is Action.ROLLED_BACK
    (same,) = world.issues()
    assert same["key"] == issue["key"]
    comments = world.comments(issue["key"])
    assert len(comments) == 2
    assert "Rollback #1 1.0.2 → 1.0.1 (criteria) verified" in comments[0]
    assert "- [x] Smoke tests passed (3/3)" in comments[0]
    assert "Re-evaluation: ROLLBACK" in comments[1]
    assert "rollback-1.log" in [a["name"] for a in same["attachments"]]


def test_a_new_incident_after_done_files_a_new_issue(world: World) -> None:
    world.p95(130.0)
    first = watch_once(world.options, world.deps()).outcome
    assert first is not None and first.issue is not None
    world.tracker.transition(first.issue.key, "Done")  # decided: not rolling back

    world.clock.advance(600)
    second = watch_once(world.options, world.deps()).outcome
    assert second is not None and second.issue is not None
    assert second.issue.key != first.issue.key and second.incident_id != first.incident_id
    assert [i["status"] for i in world.issues()] == ["Done", "In Progress"]


def test_responder_executes_the_rollback_into_the_same_issue(world: World) -> None:
    world.p95(130.0)
    outcome = watch_once(world.options, world.deps()).outcome
    assert outcome is not None and outcome.issue is not None and world.commands.ran == []
    key = outcome.issue.key

    out = io.StringIO()
    code = rollback_for_issue(key, world.options, world.deps(), out, by="alice")

    assert code == ExitCode.ACTED, out.getvalue()
    assert len(world.commands.ran) == 1 and world.verified == ["1.0.1"]
    assert len(world.issues()) == 1
    (comment,) = world.comments(key)
    assert "executed by alice" in comment and "verified" in comment
    release = current_release(world.options.release_dir)
    assert release is not None and release.version == "1.0.1" and release.previous is None
    # Again: 1.0.2 is not current any more, nothing runs.
    again = io.StringIO()
    assert rollback_for_issue(key, world.options, world.deps(), again, by="alice") == ExitCode.OK
    assert len(world.commands.ran) == 1 and "not the current release" in again.getvalue()


def test_after_a_rollback_the_restored_version_is_judged_from_the_rollback_on(world: World) -> None:
    world.p95(340.0)
    watch_once(world.options, world.deps())
    restored = current_release(world.options.release_dir)
    assert restored is not None and restored.version == "1.0.1" and restored.since > T_V2
    assert release_at(world.options.release_dir, NOW - timedelta(minutes=1)) == "1.0.2"

    # Still breaching (the bad release's samples): the restored version is PENDING, not rolled back.
    world.clock.advance(30)
    result = watch_once(world.options, world.deps())
    assert result.evaluation is not None and result.evaluation.verdict is Verdict.OK
    assert {r.verdict for r in result.evaluation.results if r.query.startswith("1000")} == {Verdict.PENDING}
    assert len(world.commands.ran) == 1


def test_repeated_rollback_signals_roll_back_once_and_file_once(world: World) -> None:
    world.p95(340.0)
    deps = world.deps()
    result = watch_once(world.options, deps)
    assert result.evaluation is not None and result.outcome is not None
    signal = signal_from_evaluation(result.evaluation, version="1.0.2")
    for _ in range(3):
        again = handle(replace(signal, summary="alert again", fingerprint="same"), world.options, deps)
        assert again.action is Action.ATTRIBUTED and not again.rollback_ran
    assert len(world.commands.ran) == 1
    (issue,) = world.issues()
    assert len(world.comments(issue["key"])) == 1  # one comment for the one new fingerprint


def test_security_declaration_is_an_immediate_rollback(world: World) -> None:
    world.p95(12.0)
    IncidentLedger(world.options.release_dir).declare_security("SQL injection in ListEstimates", "bob", NOW)
    outcome = watch_once(world.options, world.deps()).outcome
    assert outcome is not None and outcome.action is Action.ROLLED_BACK
    assert "보안 취약점 발견" in world.issues()[0]["description"]


def test_no_release_is_a_configuration_error(tmp_path: Path, world: World) -> None:
    empty = replace(world.options, release_dir=tmp_path / "empty")
    assert run_watch(empty, world.deps(), io.StringIO(), once=True) == ExitCode.CONFIG


def test_watch_loop_sleeps_between_rounds_until_told_to_stop(world: World) -> None:
    world.p95(12.0)
    slept: list[float] = []
    rounds = iter([False, False, True])
    deps = replace(world.deps(), sleep=slept.append)
    assert run_watch(world.options, deps, io.StringIO(), interval_s=15, should_stop=lambda: next(rounds)) == 0
    assert slept == [15, 15]


def test_error_log_keeps_only_error_lines_in_the_window(tmp_path: Path) -> None:
    path = tmp_path / "service.log"
    rows = [
        {"ts": "2025-09-23T03:10:00.000+00:00", "level": "ERROR", "msg": "a"},
        {"ts": "2025-09-23T03:11:00.000+00:00", "level": "WARNING", "msg": "b"},
        {"ts": "2025-09-23T03:12:00.000+00:00", "level": "CRITICAL", "msg": "c"},
        {"ts": "2025-09-23T04:12:00.000+00:00", "level": "ERROR", "msg": "late"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    text = gather_error_log([path], T_V2, T_V2 + timedelta(minutes=30), max_lines=1).decode()
    assert text.splitlines()[0].endswith(
        "2 error line(s) 2025-09-23T03:00:00Z … 2025-09-23T03:30:00Z; the newest 1 kept"
    )
    assert text.splitlines()[1:] == [json.dumps(rows[2])]
    assert gather_error_log([tmp_path / "missing.log"], T_V2, NOW) == b""


def test_outcome_issue_ref_is_the_trackers(world: World) -> None:
    world.p95(130.0)
    outcome = watch_once(world.options, world.deps()).outcome
    assert outcome is not None and isinstance(outcome.issue, IssueRef) and outcome.issue.key == "KIS-1"


# ------------------------------------------------------------------------------------ refused promotion


def test_refused_promotion_files_its_rollback_issue_through_on_refused(tmp_path: Path) -> None:
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
        catalog_version=tp.CATALOG,
        rules_version="KIS-RULES-1.0",
    )
    manifest_path = tmp_path / "manifest.json"
    manifest_path.write_bytes(manifest.to_json())
    settings = WorkflowSettings(
        release_dir=tmp_path / "release",
        deploy_command="deploy {artifact}",
        rollback_command="rollback",
        release_slo_burst_requests=20,
    )
    _promoted(settings.release_dir, "1.0.0", T_V1)
    state = json.loads((settings.release_dir / "1.0.0" / "promotion.json").read_text())
    state["catalog_version"] = tp.CATALOG
    (settings.release_dir / "1.0.0" / "promotion.json").write_text(json.dumps(state))
    tracker = FileIssueTracker(tmp_path / "tracker")
    smoked: list[str] = []

    @contextlib.contextmanager
    def estimator_for(version: str) -> Iterator[EstimatorClient]:
        smoked.append(version)
        yield ScriptedEstimator()

    clock = tp.ManualClock()
    incident_deps = IncidentDeps(
        tracker=tracker,
        estimator_for=estimator_for,
        run_command=tp.ScriptedCommands(),
        clock=clock,
        sleep=lambda _s: None,
        ledger=IncidentLedger(settings.release_dir),
    )
    options = IncidentOptions(release_dir=settings.release_dir)
    deps = PromoteDeps(
        tracker=tracker,
        estimator=tp.ScriptedEstimator(regression_passed=38),
        run_command=tp.ScriptedCommands(),
        clock=clock,
        sleep=lambda _s: None,
        deploy_draft=tp._plain_draft,
        on_refused=lambda result: file_refused_promotion(result, options, incident_deps),
    )
    promotion = PromoteOptions(
        version="1.0.1",
        artifact=wheel,
        manifest=manifest_path,
        expected_artifact_sha256=wheel_sha,
        expected_manifest_sha256=hashlib.sha256(manifest_path.read_bytes()).hexdigest(),
        approved_by="CEO",
    )

    result = promote(promotion, settings, deps)

    assert result.status is PromotionStatus.REFUSED and result.issue is not None, result.message
    assert smoked == ["1.0.0"]
    metas = [json.loads((p / "meta.json").read_text()) for p in sorted((tmp_path / "tracker").glob("KIS-*"))]
    (issue,) = metas
    assert issue["summary"] == "[ROLLBACK] KIS Estimator 1.0.1 → 1.0.0"
    assert "T+0 regression 38/40" in issue["description"]
    assert "- [x] Smoke tests passed (3/3)" in issue["description"]
    assert [a["name"] for a in issue["attachments"]] == [
        "metrics-snapshot.json",
        "breach-t0-latency.png",
        "rollback.log",
    ]
    # The hook again (a re-run): the same issue.
    again = file_refused_promotion(result, options, incident_deps)
    assert again is not None and again.key == result.issue.key
    assert len(list((tmp_path / "tracker").glob("KIS-*"))) == 1


def test_a_pending_issue_key_is_resolved_once_an_outbox_flush_filed_it(world: World) -> None:
    from kis_estimator.workflows.incident.response import Signal, SignalSource
    from kis_estimator.workflows.tracker.outbox import OutboxTracker
    from tests.unit.test_outbox import Switchable

    switch = Switchable(world.tracker)
    outbox = OutboxTracker(switch, world.tmp / "outbox")
    deps = replace(world.deps(), tracker=outbox)
    world.p95(340.0)
    switch.down = True
    first = watch_once(world.options, deps).outcome
    assert first is not None and first.action is Action.ROLLED_BACK
    assert first.exit_code is ExitCode.ISSUE_PENDING and first.issue is not None and first.issue.pending

    switch.down = False
    assert outbox.flush().remaining == 0  # `kis-release outbox flush` by a responder
    switch.calls.clear()
    late = Signal(  # e.g. the same alert delivered again, about the release rolled back
        verdict=Verdict.ROLLBACK,
        source=SignalSource.ALERTMANAGER,
        detected_at=world.clock.now(),
        summary="KisRollbackP95Latency firing",
        fingerprint="late-alert",
        version="1.0.2",
    )
    again = handle(late, world.options, deps)
    assert again.issue is not None and (again.issue.key, again.issue.pending) == ("KIS-1", False)
    assert again.exit_code is not ExitCode.ISSUE_PENDING  # the outbox is empty: nothing is pending
    assert "file" not in switch.calls  # the record knows the real key: no second filing attempt
    incidents = json.loads((world.options.release_dir / "1.0.2" / "incidents.json").read_text())
    assert [i["issue_key"] for i in incidents["incidents"]] == ["KIS-1"]


def test_records_and_target_disagreeing_is_a_decision_not_an_automatic_rollback(world: World) -> None:
    world.p95(340.0)
    world.estimator.version = "1.0.0"  # someone rolled back by hand, twice: the records do not know
    outcome = watch_once(world.options, world.deps()).outcome
    assert outcome is not None and outcome.action is Action.NEEDS_DECISION
    assert world.commands.ran == []  # rolling "back" from 1.0.0 would have stepped back a good release
    (issue,) = world.issues()
    assert "(needs decision)" in issue["summary"]
    snapshot = json.loads(
        (world.tracker.root / issue["key"] / "attachments" / "metrics-snapshot.json").read_text()
    )
    assert (
        "the release records say 1.0.2 is current, but the target serves 1.0.0"
        in snapshot["signal"]["summary"]
    )
