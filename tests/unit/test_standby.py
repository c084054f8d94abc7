"""Hot standby (workflows/release/standby.py): checkpoints driven by a manual clock, never by sleeping."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kis_estimator.server.clock import ManualClock
from kis_estimator.workflows.release.standby import (
    ProcessStandbyChecks,
    SloReading,
    StandbyOptions,
    StandbyResult,
    run_standby,
    wait_until_by_sleeping,
)
from kis_estimator.workflows.tracker.protocol import Attachment, Document, IssueDraft, IssueRef, TrackerError
from kis_estimator.workflows.tracker.render import render_markdown

DEPLOYED_AT = datetime(2025, 9, 23, 3, 0, tzinfo=UTC)  # 12:00:00 KST
ISSUE = "KIS-42"


@dataclass
class RecordingTracker:
    """An in-memory IssueTracker: comments once per idempotency key, records transitions."""

    status: str = "In Progress"
    comments: list[tuple[str, Document, str]] = field(default_factory=list)
    transitions: list[tuple[str, str]] = field(default_factory=list)
    finds: list[str] = field(default_factory=list)

    def file(self, draft: IssueDraft) -> IssueRef:
        raise AssertionError("the standby files nothing")

    def comment(self, key: str, body: Document, idempotency_key: str) -> None:
        if idempotency_key not in {k for _, _, k in self.comments}:
            self.comments.append((key, body, idempotency_key))

    def attach(self, key: str, attachments: Sequence[Attachment]) -> None:
        raise AssertionError("the standby attaches nothing")

    def transition(self, key: str, status: str) -> None:
        self.transitions.append((key, status))
        self.status = status

    def find(self, idempotency_key: str) -> IssueRef | None:
        self.finds.append(idempotency_key)
        return IssueRef(ISSUE, f"https://jira.example.com/browse/{ISSUE}", created=False, status=self.status)

    def search_labels(self, label: str, since_iso: str | None = None) -> list[IssueRef]:
        return []


@dataclass
class Measured:
    p95_ms: float | None = 12.0
    error_rate_pct: float | None = 0.1
    memory_pct: float | None = 21.5
    cpu_pct: float | None = 7.25


@dataclass
class ScriptedChecks:
    """Readings by checkpoint minute, read off the clock, as a real check would measure 'now'."""

    clock: ManualClock
    by_minute: dict[int, Measured] = field(default_factory=dict)
    regression_result: tuple[int, int] = (40, 40)
    dashboard_ok: bool | None = True
    alerting_ok: bool | None = None
    calls: list[str] = field(default_factory=list)

    def _now(self) -> Measured:
        minute = round((self.clock.now() - DEPLOYED_AT).total_seconds() / 60)
        return self.by_minute.get(minute, Measured())

    def p95_ms(self) -> float | None:
        self.calls.append("p95")
        return self._now().p95_ms

    def error_rate_pct(self) -> float | None:
        return self._now().error_rate_pct

    def memory_pct(self) -> float | None:
        return self._now().memory_pct

    def cpu_pct(self) -> float | None:
        return self._now().cpu_pct

    def regression(self) -> tuple[int, int]:
        self.calls.append(f"regression@{self._minute()}")
        return self.regression_result

    def dashboard(self) -> bool | None:
        return self.dashboard_ok

    def alerting(self) -> bool | None:
        return self.alerting_ok

    def _minute(self) -> int:
        return round((self.clock.now() - DEPLOYED_AT).total_seconds() / 60)


@dataclass
class Harness:
    state_file: Path
    clock: ManualClock = field(default_factory=lambda: ManualClock(DEPLOYED_AT + timedelta(minutes=2)))
    tracker: RecordingTracker = field(default_factory=RecordingTracker)
    waits: list[datetime] = field(default_factory=list)
    out: io.StringIO = field(default_factory=io.StringIO)

    def wait_until(self, when: datetime) -> None:
        self.waits.append(when)
        if when > self.clock.now():
            self.clock.set(when)

    def run(self, checks: ScriptedChecks, **options: object) -> StandbyResult:
        opts = StandbyOptions(
            version="GA-1.0.0",
            environment="Production",
            deployed_at=DEPLOYED_AT,
            state_file=self.state_file,
            rollback_command="kis-release rollback --to 0.9",
            **options,  # type: ignore[arg-type]
        )
        return run_standby(
            opts,
            deploy_issue_key=ISSUE,
            tracker=self.tracker,
            checks=checks,
            clock=self.clock,
            wait_until=self.wait_until,
            out=self.out,
        )


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(state_file=tmp_path / "release" / "standby-GA-1.0.0.json")


def comment_texts(tracker: RecordingTracker) -> dict[str, str]:
    return {key: render_markdown(body) for _, body, key in tracker.comments}


def test_three_checkpoints_then_final_report_and_done(harness: Harness) -> None:
    checks = ScriptedChecks(harness.clock)

    result = harness.run(checks)

    assert harness.waits == [DEPLOYED_AT + timedelta(minutes=m) for m in (15, 30, 60)]
    assert [key for _, _, key in harness.tracker.comments] == [
        "standby:GA-1.0.0:T+15",
        "standby:GA-1.0.0:T+30",
        "standby:GA-1.0.0:T+60",
        "standby:GA-1.0.0:final",
    ]
    assert all(issue == ISSUE for issue, _, _ in harness.tracker.comments)
    assert harness.tracker.transitions == [(ISSUE, "Done")]
    assert harness.tracker.finds == ["deploy:GA-1.0.0:Production"]
    assert (result.ok, result.closed, [c.minute for c in result.checkpoints]) == (True, True, [15, 30, 60])
    assert checks.calls.count("regression@30") == 1 and "regression@15" not in checks.calls
    assert harness.out.getvalue() == ("T+15 OK\nT+30 OK\nT+60 OK\nhot standby passed; KIS-42 is Done\n")

    texts = comment_texts(harness.tracker)
    assert texts["standby:GA-1.0.0:T+15"] == (
        "## Hot standby T+15 — GA-1.0.0\n\n"
        "Measured at 2025-09-23 12:15:00 KST.\n\n"
        "OK: all checks passed.\n\n"
        "## Checks\n\n"
        "- [x] P95 \\< 30ms: 12.0ms\n"
        "- [x] Error rate \\< 0.5%: 0.10%\n"
        "- [x] Memory \\< 50%: 21.50%\n"
        "- [x] CPU \\< 30%: 7.25%\n"
    )
    assert texts["standby:GA-1.0.0:T+30"].split("## Checks\n\n")[1] == (
        "- [x] P95 \\< 30ms: 12.0ms\n"
        "- [x] Error rate \\< 0.5%: 0.10%\n"
        "- [x] Memory \\< 50%: 21.50%\n"
        "- [x] CPU \\< 30%: 7.25%\n"
        "- [x] Regression tests re-run: 40/40 passed\n"
        "- [x] Monitoring dashboard healthy\n\n"
        "Alerting tested: not configured\n"
    )
    assert texts["standby:GA-1.0.0:final"] == (
        "## Hot standby final status — GA-1.0.0 (Production)\n\n"
        "Deployed 2025-09-23 12:00:00 KST; hot standby ended 2025-09-23 13:00:00 KST (T+60).\n\n"
        "All checkpoints passed; closing the issue (Done).\n\n"
        "## Checkpoints\n\n"
        "- [x] T+15: passed\n"
        "- [x] T+30: passed\n"
        "- [x] T+60: passed\n\n"
        "## T+60\n\n"
        "- [x] Hot standby ended\n"
        "- [x] Final status report posted\n"
        "- [x] Issue closed (Done)\n"
    )


def test_breach_at_t15_is_reported_and_the_issue_stays_open(harness: Harness) -> None:
    checks = ScriptedChecks(harness.clock, by_minute={15: Measured(p95_ms=41.2, cpu_pct=35.0)})

    result = harness.run(checks)

    assert [c.ok for c in result.checkpoints] == [False, True, True]
    assert (result.ok, result.closed) == (False, False)
    assert harness.tracker.transitions == []
    texts = comment_texts(harness.tracker)
    assert (
        texts["standby:GA-1.0.0:T+15"].split("\n\n")[2]
        == "BREACH: P95 \\< 30ms: 41.2ms; CPU \\< 30%: 35.00%."
    )
    assert "- [ ] P95 \\< 30ms: 41.2ms" in texts["standby:GA-1.0.0:T+15"].splitlines()
    final = texts["standby:GA-1.0.0:final"]
    assert (
        "1 of 3 checkpoints breached; the issue stays open for a decision. "
        "Rollback: kis-release rollback --to 0.9" in final.splitlines()
    )
    assert "- [ ] T+15: breached: P95 \\< 30ms: 41.2ms; CPU \\< 30%: 35.00%" in final.splitlines()
    assert "- [ ] Issue closed: no, breaches need a decision" in final.splitlines()
    assert harness.out.getvalue().splitlines()[0] == "T+15 BREACH: P95 < 30ms: 41.2ms; CPU < 30%: 35.00%"


@pytest.mark.parametrize(
    ("measured", "regression", "dashboard", "failure"),
    [
        (Measured(memory_pct=None), (40, 40), True, "Memory < 50%: no data"),
        (Measured(error_rate_pct=0.5), (40, 40), True, "Error rate < 0.5%: 0.50%"),
        (Measured(), (38, 40), True, "Regression tests: 38/40 passed"),
        (Measured(), (0, 0), True, "Regression tests: 0/0 passed"),
        (Measured(), (40, 40), False, "Monitoring dashboard healthy"),
    ],
    ids=[
        "no-memory-data",
        "error-rate-at-limit",
        "regression-38-of-40",
        "regression-ran-nothing",
        "dashboard-down",
    ],
)
def test_each_t30_failure_is_a_breach(
    harness: Harness, measured: Measured, regression: tuple[int, int], dashboard: bool, failure: str
) -> None:
    checks = ScriptedChecks(
        harness.clock, by_minute={30: measured}, regression_result=regression, dashboard_ok=dashboard
    )

    result = harness.run(checks)

    assert [c.failures() for c in result.checkpoints] == [[], [failure], []]
    assert harness.tracker.transitions == []


def test_rerun_after_done_posts_nothing_and_measures_nothing(harness: Harness) -> None:
    harness.run(ScriptedChecks(harness.clock))
    posted = list(harness.tracker.comments)
    again = ScriptedChecks(harness.clock)

    result = harness.run(again)

    assert result == StandbyResult(checkpoints=(), closed=False, already_done=True)
    assert harness.tracker.comments == posted
    assert harness.tracker.transitions == [(ISSUE, "Done")]
    assert again.calls == []
    assert harness.out.getvalue().splitlines()[-1] == (
        "KIS-42 is already Done; hot standby of GA-1.0.0 has nothing to do"
    )


def test_rerun_of_a_breached_standby_reuses_the_recorded_results(harness: Harness) -> None:
    harness.run(ScriptedChecks(harness.clock, by_minute={15: Measured(p95_ms=41.2)}))
    posted = list(harness.tracker.comments)
    again = ScriptedChecks(harness.clock)  # T+15 would pass now: the posted breach must still decide

    result = harness.run(again)

    assert harness.tracker.comments == posted
    assert harness.tracker.transitions == []
    assert again.calls == []
    assert [c.ok for c in result.checkpoints] == [False, True, True]
    assert harness.out.getvalue().splitlines()[-4:] == [
        "T+15 BREACH: P95 < 30ms: 41.2ms (recorded earlier)",
        "T+30 OK (recorded earlier)",
        "T+60 OK (recorded earlier)",
        "hot standby found breaches; KIS-42 stays open for a decision",
    ]


class FailingTracker(RecordingTracker):
    """Loses the connection when asked to post ``fail_key``."""

    fail_key = "standby:GA-1.0.0:T+30"

    def comment(self, key: str, body: Document, idempotency_key: str) -> None:
        if idempotency_key == self.fail_key:
            raise TrackerError("connection reset", retryable=True)
        super().comment(key, body, idempotency_key)


def test_resume_after_a_crash_posts_the_lost_comment_and_measures_only_the_rest(harness: Harness) -> None:
    first = ScriptedChecks(harness.clock, by_minute={30: Measured(cpu_pct=31.0)})
    crashed = Harness(state_file=harness.state_file, clock=harness.clock, tracker=FailingTracker())
    with pytest.raises(TrackerError):
        crashed.run(first)
    assert [key for _, _, key in crashed.tracker.comments] == ["standby:GA-1.0.0:T+15"]
    harness.tracker.comments = list(crashed.tracker.comments)
    resumed = ScriptedChecks(harness.clock)

    result = harness.run(resumed)

    assert [key for _, _, key in harness.tracker.comments] == [
        "standby:GA-1.0.0:T+15",
        "standby:GA-1.0.0:T+30",
        "standby:GA-1.0.0:T+60",
        "standby:GA-1.0.0:final",
    ]
    assert "BREACH: CPU \\< 30%: 31.00%." in comment_texts(harness.tracker)["standby:GA-1.0.0:T+30"]
    assert resumed.calls == ["p95"]  # only T+60 was measured
    assert [c.ok for c in result.checkpoints] == [True, False, True]
    assert harness.tracker.transitions == []


def test_state_of_another_deploy_is_ignored_and_a_broken_one_stops_the_run(harness: Harness) -> None:
    harness.state_file.parent.mkdir(parents=True)
    harness.state_file.write_text('{"version": "0.9", "deployed_at": "2025-09-01T00:00:00+00:00"}', "utf-8")
    assert harness.run(ScriptedChecks(harness.clock)).closed

    harness.state_file.write_text("{not json", "utf-8")
    with pytest.raises(ValueError, match=r"standby state .* unreadable"):
        Harness(state_file=harness.state_file).run(ScriptedChecks(harness.clock))


@pytest.mark.parametrize(
    ("schedule", "regression_at"),
    [((5, 10), 10), ((15, 45, 60), 45), ((30, 60), 30), ((10, 20, 40, 60), 40)],
    ids=["short-schedule-runs-it-last", "first-after-30", "exactly-30", "four-checkpoints"],
)
def test_schedule_is_configurable_and_t30_items_run_once(
    harness: Harness, schedule: tuple[int, ...], regression_at: int
) -> None:
    checks = ScriptedChecks(harness.clock)

    result = harness.run(checks, checkpoints_min=schedule)

    assert harness.waits == [DEPLOYED_AT + timedelta(minutes=m) for m in schedule]
    assert [c.minute for c in result.checkpoints if c.regression is not None] == [regression_at]
    assert [c for c in checks.calls if c.startswith("regression")] == [f"regression@{regression_at}"]
    assert [key for _, _, key in harness.tracker.comments][-1] == "standby:GA-1.0.0:final"


def test_a_late_checkpoint_runs_at_once_and_says_how_late(harness: Harness) -> None:
    harness.clock.set(DEPLOYED_AT + timedelta(minutes=20))

    harness.run(ScriptedChecks(harness.clock), checkpoints_min=(15, 30))

    text = comment_texts(harness.tracker)["standby:GA-1.0.0:T+15"]
    assert text.split("\n\n")[1] == "Measured at 2025-09-23 12:20:00 KST, 5m00s after it was due."


@pytest.mark.parametrize(
    "schedule", [(), (0, 15), (30, 15), (15, 15)], ids=["empty", "zero", "decreasing", "repeated"]
)
def test_rejects_a_bad_schedule(schedule: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="increasing positive minutes"):
        StandbyOptions("GA-1.0.0", "Production", DEPLOYED_AT, Path("standby.json"), checkpoints_min=schedule)


def test_wait_until_by_sleeping_sleeps_in_steps_against_the_clock() -> None:
    clock = ManualClock(DEPLOYED_AT)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.advance(timedelta(seconds=seconds))

    wait_until = wait_until_by_sleeping(clock, sleep, max_step_s=30.0)
    wait_until(DEPLOYED_AT + timedelta(seconds=75))
    wait_until(DEPLOYED_AT)  # already past: returns at once

    assert sleeps == [30.0, 30.0, 15.0]
    assert clock.now() == DEPLOYED_AT + timedelta(seconds=75)


# ---------------------------------------------------------------------------------- /proc checks


def fake_proc(root: Path, pid: int, *, rss_kb: int, total_kb: int, utime: int, stime: int) -> None:
    (root / str(pid)).mkdir(parents=True, exist_ok=True)
    (root / "meminfo").write_text(f"MemTotal:       {total_kb} kB\nMemFree:        1 kB\n", encoding="ascii")
    (root / str(pid) / "status").write_text(f"Name:\tpython\nVmRSS:\t  {rss_kb} kB\n", encoding="ascii")
    write_stat(root, pid, utime, stime)


def write_stat(root: Path, pid: int, utime: int, stime: int) -> None:
    # The command name holds a space and a ")" to check the parser splits after the last ")".
    fields = ["S", *["0"] * 10, str(utime), str(stime), *["0"] * 30]
    (root / str(pid) / "stat").write_text(f"{pid} (kis server) x) {' '.join(fields)}\n", encoding="ascii")


def test_process_checks_read_memory_and_cpu_from_proc(tmp_path: Path) -> None:
    proc, pid_file = tmp_path / "proc", tmp_path / "kis.pid"
    fake_proc(proc, 4242, rss_kb=2_000_000, total_kb=8_000_000, utime=1000, stime=500)
    pid_file.write_text("4242\n", encoding="ascii")
    now = [100.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:  # the service burns 120 ticks (1.2 s of CPU) while we wait 1 s
        sleeps.append(seconds)
        now[0] += seconds
        write_stat(proc, 4242, utime=1100, stime=520)

    checks = ProcessStandbyChecks(
        pid_file=pid_file,
        slo=lambda: SloReading(12.5, 0.2),
        regression=lambda: (40, 40),
        sleep=sleep,
        monotonic=lambda: now[0],
        proc_root=proc,
        clock_ticks_per_s=100,
        cpu_count=4,
    )

    assert checks.memory_pct() == pytest.approx(25.0)
    assert checks.cpu_pct() == pytest.approx(30.0)  # 1.2 CPU-seconds per second of 4 CPUs
    assert sleeps == [1.0]
    assert (checks.regression(), checks.dashboard(), checks.alerting()) == ((40, 40), None, None)


def test_process_checks_without_a_process_give_no_data(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "meminfo").write_text("MemTotal: 1000 kB\n", encoding="ascii")
    pid_file = tmp_path / "kis.pid"
    checks = ProcessStandbyChecks(
        pid_file=pid_file,
        slo=lambda: SloReading(None, None),
        regression=lambda: (0, 0),
        sleep=lambda s: None,
        monotonic=lambda: 0.0,
        proc_root=proc,
    )

    assert (checks.memory_pct(), checks.cpu_pct()) == (None, None)  # no PID file
    pid_file.write_text("4242\n", encoding="ascii")
    assert (checks.memory_pct(), checks.cpu_pct()) == (None, None)  # no such process
    pid_file.write_text("not a pid\n", encoding="ascii")
    assert checks.memory_pct() is None


def test_one_slo_measurement_serves_p95_and_error_rate(tmp_path: Path) -> None:
    readings = iter([SloReading(12.5, 0.2), SloReading(44.0, 1.5), SloReading(9.0, 0.0)])
    calls: list[int] = []

    def slo() -> SloReading:
        calls.append(1)
        return next(readings)

    checks = ProcessStandbyChecks(
        pid_file=tmp_path / "none.pid",
        slo=slo,
        regression=lambda: (40, 40),
        sleep=lambda s: None,
        monotonic=lambda: 0.0,
        dashboard=lambda: True,
    )

    assert (checks.p95_ms(), checks.error_rate_pct()) == (12.5, 0.2)
    assert (checks.p95_ms(), checks.error_rate_pct()) == (44.0, 1.5)
    assert checks.error_rate_pct() == 0.0  # without a p95 first, it measures on its own
    assert len(calls) == 3
    assert checks.dashboard() is True


@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/stat").exists(), reason="needs Linux /proc")
def test_process_checks_read_the_real_proc_of_this_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "self.pid"
    pid_file.write_text(str(os.getpid()), encoding="ascii")
    now = [0.0]

    def sleep(seconds: float) -> None:  # no real wait: the CPU delta over a "second" is just small
        now[0] += seconds

    checks = ProcessStandbyChecks(
        pid_file=pid_file,
        slo=lambda: SloReading(None, None),
        regression=lambda: (0, 0),
        sleep=sleep,
        monotonic=lambda: now[0],
    )

    memory = checks.memory_pct()
    cpu = checks.cpu_pct()
    assert memory is not None and 0.0 < memory < 100.0
    assert cpu is not None and 0.0 <= cpu <= 100.0
