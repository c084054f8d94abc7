"""``kis-release standby``: the notice's hot standby, T+15/T+30/T+60 after a deploy.

At each checkpoint (minutes after ``deployed_at``, configurable) the notice's T+15 thresholds are
evaluated: p95 < 30 ms, error rate < 0.5 %, memory < 50 %, CPU < 30 %. The T+30 items (regression
re-run, dashboard, alerting) run once, at the first checkpoint at or after ``regression_at_min``
(or the last one when the schedule ends earlier), so a shortened schedule still re-runs them. Each
checkpoint posts one comment to the DEPLOY issue, then the T+60 final status report is posted and
the issue goes to Done.

Choices where the notice is silent:

- A breached checkpoint does not stop the standby (a later checkpoint shows recovery or not) and
  does not roll back: rollback belongs to the criteria engine. The issue is only closed when every
  checkpoint passed; otherwise the final report says so and the issue stays open for a decision.
- Re-runs are idempotent and consistent with what was posted. Each checkpoint's result is written
  to ``state_file`` *before* its comment is posted (comment keys ``standby:<version>:T+<m>``, then
  ``standby:<version>:final``); a re-run reuses recorded checkpoints instead of measuring them again
  and re-posts their comments under the same keys (the tracker drops duplicates, and posts one a
  crash lost). So the final report and the Done decision always match the posted checkpoints. A
  DEPLOY issue already Done ends the run before anything is measured.
- Waiting goes through ``wait_until`` (tests advance a manual clock; the CLI passes
  :func:`wait_until_by_sleeping`), so a checkpoint whose time has passed runs at once and its
  comment says how late it was.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple, Protocol, TextIO

from kis_estimator.workflows.clock import Clock
from kis_estimator.workflows.release.record import write_json
from kis_estimator.workflows.templates import (
    CheckpointReport,
    Probe,
    Reading,
    StandbySummary,
    checkpoint_comment,
    deploy_idempotency_key,
    final_status_comment,
)
from kis_estimator.workflows.tracker.protocol import IssueTracker

__all__ = [
    "ProcessStandbyChecks",
    "SloReading",
    "StandbyChecks",
    "StandbyOptions",
    "StandbyResult",
    "run_standby",
    "wait_until_by_sleeping",
]

log = logging.getLogger(__name__)


class StandbyChecks(Protocol):
    """What a checkpoint measures; ``None`` means no data, which never passes."""

    def p95_ms(self) -> float | None: ...

    def error_rate_pct(self) -> float | None: ...

    def memory_pct(self) -> float | None: ...

    def cpu_pct(self) -> float | None: ...

    def regression(self) -> tuple[int, int]:
        """Re-run the regression suite: (passed, total)."""
        ...

    def dashboard(self) -> bool | None:
        """Monitoring dashboard healthy; ``None``: no dashboard check configured."""
        ...

    def alerting(self) -> bool | None:
        """Alerting pipeline answers a test; ``None``: no alerting check configured."""
        ...


@dataclass(frozen=True, slots=True)
class StandbyOptions:
    """One standby run; limits are the notice's T+15 items (strict ``<``)."""

    version: str
    environment: str
    deployed_at: datetime
    state_file: (
        Path  # checkpoint results of this deploy, for re-runs (e.g. <release_dir>/standby-<version>.json)
    )
    checkpoints_min: tuple[int, ...] = (15, 30, 60)
    regression_at_min: int = 30
    p95_limit_ms: float = 30.0
    error_rate_limit_pct: float = 0.5
    memory_limit_pct: float = 50.0
    cpu_limit_pct: float = 30.0
    rollback_command: str = ""

    def __post_init__(self) -> None:
        if self.deployed_at.tzinfo is None:
            raise ValueError("StandbyOptions.deployed_at must be timezone-aware")
        minutes = self.checkpoints_min
        if not minutes or any(m <= 0 for m in minutes) or list(minutes) != sorted(set(minutes)):
            raise ValueError(
                f"StandbyOptions.checkpoints_min={minutes!r}: expected increasing positive minutes"
            )

    @property
    def t30_checkpoint_min(self) -> int:
        """The checkpoint that runs the notice's T+30 items."""
        return next(
            (m for m in self.checkpoints_min if m >= self.regression_at_min), self.checkpoints_min[-1]
        )


@dataclass(frozen=True, slots=True)
class StandbyResult:
    checkpoints: tuple[CheckpointReport, ...]
    closed: bool  # the DEPLOY issue was transitioned to Done
    already_done: bool = False  # the issue was Done before this run; nothing was measured

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checkpoints)


def run_standby(
    options: StandbyOptions,
    *,
    deploy_issue_key: str,
    tracker: IssueTracker,
    checks: StandbyChecks,
    clock: Clock,
    wait_until: Callable[[datetime], None],
    out: TextIO,
) -> StandbyResult:
    """Run every checkpoint, comment each on the DEPLOY issue, post the final report, close if all passed."""
    existing = tracker.find(deploy_idempotency_key(options.version, options.environment))
    if existing is not None and existing.status.casefold() == "done":
        out.write(f"{existing.key} is already Done; hot standby of {options.version} has nothing to do\n")
        return StandbyResult(checkpoints=(), closed=False, already_done=True)

    recorded = _load_state(options)
    reports: list[CheckpointReport] = []
    for minute in options.checkpoints_min:
        report = recorded.get(minute)
        if report is None:
            due = options.deployed_at + timedelta(minutes=minute)
            wait_until(due)
            report = _measure(options, minute, due, checks, clock)
            _save_state(options, [*reports, report])
        reports.append(report)
        tracker.comment(deploy_issue_key, checkpoint_comment(report), f"standby:{options.version}:T+{minute}")
        verdict = "OK" if report.ok else "BREACH: " + "; ".join(report.failures())
        out.write(f"T+{minute} {verdict}{' (recorded earlier)' if minute in recorded else ''}\n")
        log.info("hot standby %s T+%d: %s", options.version, minute, verdict)

    summary = StandbySummary(
        version=options.version,
        environment=options.environment,
        deployed_at=options.deployed_at,
        ended_at=reports[-1].measured_at,
        checkpoints=tuple(reports),
        rollback_command=options.rollback_command,
    )
    tracker.comment(deploy_issue_key, final_status_comment(summary), f"standby:{options.version}:final")
    if summary.ok:
        tracker.transition(deploy_issue_key, "Done")
        out.write(f"hot standby passed; {deploy_issue_key} is Done\n")
    else:
        out.write(f"hot standby found breaches; {deploy_issue_key} stays open for a decision\n")
    return StandbyResult(checkpoints=tuple(reports), closed=summary.ok)


def _measure(
    options: StandbyOptions, minute: int, due: datetime, checks: StandbyChecks, clock: Clock
) -> CheckpointReport:
    readings = (
        Reading("P95", checks.p95_ms(), options.p95_limit_ms, "ms"),
        Reading("Error rate", checks.error_rate_pct(), options.error_rate_limit_pct, "%"),
        Reading("Memory", checks.memory_pct(), options.memory_limit_pct, "%"),
        Reading("CPU", checks.cpu_pct(), options.cpu_limit_pct, "%"),
    )
    regression: tuple[int, int] | None = None
    probes: tuple[Probe, ...] = ()
    if minute == options.t30_checkpoint_min:
        regression = checks.regression()
        probes = (
            Probe("Monitoring dashboard healthy", checks.dashboard()),
            Probe("Alerting tested", checks.alerting()),
        )
    return CheckpointReport(
        version=options.version,
        minute=minute,
        due_at=due,
        measured_at=clock.now(),
        readings=readings,
        regression=regression,
        probes=probes,
    )


def _save_state(options: StandbyOptions, reports: list[CheckpointReport]) -> None:
    data = {
        "version": options.version,
        "deployed_at": options.deployed_at.isoformat(),
        "checkpoints": [
            {
                "minute": r.minute,
                "due_at": r.due_at.isoformat(),
                "measured_at": r.measured_at.isoformat(),
                "readings": [[x.label, x.value, x.limit, x.unit] for x in r.readings],
                "regression": list(r.regression) if r.regression is not None else None,
                "probes": [[p.text, p.ok] for p in r.probes],
            }
            for r in reports
        ],
    }
    write_json(options.state_file, data)  # atomic: a crash leaves the previous state, never half a file


def _load_state(options: StandbyOptions) -> dict[int, CheckpointReport]:
    """Recorded checkpoints of this deploy; another deploy's (or no) state file gives none."""
    try:
        data = json.loads(options.state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"standby state {options.state_file}: unreadable ({exc}); move it aside to re-measure"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(
            f"standby state {options.state_file}: not a JSON object; move it aside to re-measure"
        )
    if data.get("version") != options.version or data.get("deployed_at") != options.deployed_at.isoformat():
        return {}
    try:
        return {
            int(c["minute"]): CheckpointReport(
                version=options.version,
                minute=int(c["minute"]),
                due_at=datetime.fromisoformat(c["due_at"]),
                measured_at=datetime.fromisoformat(c["measured_at"]),
                readings=tuple(
                    Reading(str(a), None if v is None else float(v), float(b), str(u))
                    for a, v, b, u in c["readings"]
                ),
                regression=(int(c["regression"][0]), int(c["regression"][1]))
                if c["regression"] is not None
                else None,
                probes=tuple(Probe(str(t), None if ok is None else bool(ok)) for t, ok in c["probes"]),
            )
            for c in data["checkpoints"]
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"standby state {options.state_file}: malformed ({exc!r}); move it aside to re-measure"
        ) from None


def wait_until_by_sleeping(
    clock: Clock, sleep: Callable[[float], None], *, max_step_s: float = 30.0
) -> Callable[[datetime], None]:
    """A ``wait_until`` that sleeps in steps of at most ``max_step_s``, re-reading the clock each time."""

    def wait_until(when: datetime) -> None:
        while (remaining_s := (when - clock.now()).total_seconds()) > 0:
            sleep(min(remaining_s, max_step_s))

    return wait_until


# ---------------------------------------------------------------------------------- /proc checks


class SloReading(NamedTuple):
    p95_ms: float | None
    error_rate_pct: float | None


class ProcessStandbyChecks:
    """Memory and CPU of the service process from ``/proc``; p95/error from ``slo`` (burst or Prometheus).

    - The pid is read from ``pid_file`` at every call (the service may have been restarted); a
      missing file or process gives ``None`` (no data).
    - Memory % is VmRSS over the host's MemTotal (a cgroup limit, if lower, is not considered).
    - CPU % is (utime + stime) ticks over ``cpu_interval_s``, as a share of all CPUs of the host
      (``os.cpu_count()``), the way a host-level "CPU 사용률" reads. The interval is waited with the
      injected ``sleep`` and timed with the injected ``monotonic``.
    - One ``slo()`` call serves both numbers: :meth:`p95_ms` measures, and :meth:`error_rate_pct`
      returns the error rate of that same measurement (measuring only if :meth:`p95_ms` was not called).
    """

    def __init__(
        self,
        *,
        pid_file: Path,
        slo: Callable[[], SloReading],
        regression: Callable[[], tuple[int, int]],
        sleep: Callable[[float], None],
        monotonic: Callable[[], float],
        dashboard: Callable[[], bool] | None = None,
        alerting: Callable[[], bool] | None = None,
        cpu_interval_s: float = 1.0,
        proc_root: Path = Path("/proc"),
        clock_ticks_per_s: int | None = None,
        cpu_count: int | None = None,
    ) -> None:
        self._pid_file = pid_file
        self._slo = slo
        self._regression = regression
        self._sleep = sleep
        self._monotonic = monotonic
        self._dashboard = dashboard
        self._alerting = alerting
        self._cpu_interval_s = cpu_interval_s
        self._proc = proc_root
        self._ticks_per_s = clock_ticks_per_s or os.sysconf("SC_CLK_TCK")
        self._cpus = cpu_count or os.cpu_count() or 1
        self._last_slo: SloReading | None = None

    def p95_ms(self) -> float | None:
        self._last_slo = self._slo()
        return self._last_slo.p95_ms

    def error_rate_pct(self) -> float | None:
        reading = self._last_slo if self._last_slo is not None else self._slo()
        self._last_slo = None
        return reading.error_rate_pct

    def memory_pct(self) -> float | None:
        pid = self._pid()
        if pid is None:
            return None
        try:
            rss_kb = _kib_field(self._proc / str(pid) / "status", "VmRSS")
            total_kb = _kib_field(self._proc / "meminfo", "MemTotal")
        except OSError:
            return None
        if rss_kb is None or not total_kb:
            return None
        return 100.0 * rss_kb / total_kb

    def cpu_pct(self) -> float | None:
        pid = self._pid()
        if pid is None:
            return None
        stat = self._proc / str(pid) / "stat"
        try:
            before, started = _cpu_ticks(stat), self._monotonic()
            self._sleep(self._cpu_interval_s)
            after, elapsed_s = _cpu_ticks(stat), self._monotonic() - started
        except (OSError, ValueError, IndexError):
            return None
        if elapsed_s <= 0:
            return None
        return 100.0 * (after - before) / self._ticks_per_s / elapsed_s / self._cpus

    def regression(self) -> tuple[int, int]:
        return self._regression()

    def dashboard(self) -> bool | None:
        return self._dashboard() if self._dashboard else None

    def alerting(self) -> bool | None:
        return self._alerting() if self._alerting else None

    def _pid(self) -> int | None:
        try:
            pid = int(self._pid_file.read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            return None
        return pid if (self._proc / str(pid)).is_dir() else None


def _kib_field(path: Path, name: str) -> int | None:
    """``Name:   12345 kB`` from a /proc status-style file."""
    for line in path.read_text(encoding="ascii", errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return int(value.split()[0])
    return None


def _cpu_ticks(stat: Path) -> int:
    """utime + stime of /proc/<pid>/stat (fields 14 and 15; the command name may hold spaces)."""
    fields = stat.read_text(encoding="ascii", errors="replace").rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])
