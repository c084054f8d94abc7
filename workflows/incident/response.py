"""Watch and act (issue #6): the criteria's verdict → rollback → verification → the ROLLBACK issue.

One decision path serves three callers: ``kis-release watch`` (a criteria :class:`Evaluation`), the
Alertmanager receiver (firing alerts with a ``rollback`` label) and a refused promotion
(``promote``'s ``on_refused``). Each becomes a :class:`Signal`; :func:`handle` acts on it:

1. **Rollback phase** (``<release_dir>/.rollback.lock``, never touches the tracker). The signal is
   attributed to a release (the current one, or the one that served when an alert started). A
   ROLLBACK verdict on the *current* release without a rollback attempt since it became current runs
   the rollback command under a hard budget (``rollback_budget_s``, 180 s: the notice's "3분 내
   롤백"; the runner kills the whole process group on timeout), then verifies the previous version
   over gRPC: health SERVING, the version the target reports is no longer the one left, and smoke
   3/3. The attempt is recorded as ``running`` *before* the command starts. A failed command is
   tried again with backoff (5, 10, 20 s) inside the budget, and a failed or crashed attempt is
   tried again by the next ``watch`` — but only while the target itself still reports the release
   being left (``GetServerInfo``): when anything else serves, or the target cannot say, another run
   could step back two releases, so it pages instead. A responder retries with
   ``kis-release rollback --issue KEY``.
2. **Issue phase** (``<release_dir>/.issue.lock``): one incident → one issue. The first signal of an
   incident files the ROLLBACK issue (``kis_estimator.workflows.templates.rollback_issue``, idempotency key
   ``incident:<incident id>``) with what actually happened; later signals comment on it (once per
   change of what they say), a rollback that happened after the issue was filed is reported as a
   comment with its log attached, and a new signal after the issue went to Done opens a new
   incident and a new issue. A REVIEW verdict files the "needs decision" variant and rolls nothing back.

The rollback never waits for the tracker: phase 1 completes (and its state is on disk) before the
first tracker call, and the two phases hold different locks.

**Paging loudly** (rollback FAILED: timed out, non-zero exit, no previous release, no command, or
the previous version not verified): an ERROR log line, a page through every configured channel
(``deps.page``: Slack, e-mail; sent before any tracker call), the issue's summary says ``ROLLBACK
FAILED`` with the seed's priority ``Blocker`` (mapped onto the Jira scheme) and labels
``rollback-failed``/``page-oncall``, and a non-zero exit (:attr:`ExitCode.PAGED`;
:attr:`ExitCode.PAGE_FAILED` and a line saying so when no channel delivered the page).

**Which release is current** comes from the state files only: ``<v>/promotion.json`` (promoted, at
``promoted_at``) and ``<v>/rollback.json`` (successful rollbacks), replayed in time order like the
deploy driver's history stack (a promotion pushes, a rollback pops). A version becomes current at
its promotion or at the end of the rollback that restored it, so the criteria windows of a restored
version start after the rollback and never judge it by the bad release's samples.

State under ``release_dir``: ``<v>/rollback.json`` (attempts), ``<v>/rollback-<n>.log``,
``<v>/incidents.json`` (incidents, their issue keys, the comments posted), ``<v>/last-evaluation.json``.

Choices where the issue is silent: the error log is the release's JSON log lines with ``level``
ERROR or CRITICAL from the incident window (the earliest queried sample of a breached criterion, or
the release's start, until now), at most ``error_log_max_lines`` (the newest); the comment texts
and the FAILED decoration are built here because ``kis_estimator.workflows.templates`` renders only the issue.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import math
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any, TextIO

from kis_estimator.workflows.clock import Clock, kst_text
from kis_estimator.workflows.incident.criteria import (
    DEFAULT_CRITERIA,
    Criterion,
    CriterionResult,
    Evaluation,
    IncidentLedgerError,
    IncidentRecords,
    Verdict,
    evaluate,
)
from kis_estimator.workflows.prometheus.client import MetricsSource
from kis_estimator.workflows.release.estimator_client import (
    SMOKE_TOTAL,
    EstimatorClient,
    HealthResult,
    SuiteResult,
    wait_serving,
)
from kis_estimator.workflows.release.promote import CommandOutcome, CommandRunner, PromotionResult
from kis_estimator.workflows.release.record import promoted_records, read_json, write_json
from kis_estimator.workflows.templates import (
    PAGE_LABELS,
    PAGE_PRIORITY,
    Breach,
    BreachChart,
    IncidentReport,
    Owners,
    RollbackAttempt,
    paged_rollback_issue,
    reevaluation_comment,
    rollback_comment,
    rollback_issue,
)
from kis_estimator.workflows.tracker.idempotency import file_lock
from kis_estimator.workflows.tracker.protocol import (
    Attachment,
    Document,
    IssueRef,
    IssueTracker,
    TrackerError,
)

__all__ = [
    "PAGE_LABELS",
    "PAGE_PRIORITY",
    "Action",
    "ExitCode",
    "HandleOutcome",
    "IncidentDeps",
    "IncidentOptions",
    "Release",
    "RollbackRecord",
    "Signal",
    "SignalSource",
    "WatchResult",
    "comment_on_release",
    "current_release",
    "file_refused_promotion",
    "find_incident_by_issue",
    "gather_error_log",
    "handle",
    "release_at",
    "rollback_for_issue",
    "run_watch",
    "signal_from_evaluation",
    "watch_once",
]

log = logging.getLogger(__name__)

HEALTH_ATTEMPTS = 15  # × HEALTH_WAIT_S: the restored version may take a few seconds to report SERVING
HEALTH_WAIT_S = 1.0
# A failed rollback command is tried again within the budget while the target still serves the
# release it should leave (never when something else serves: that would step back twice).
ROLLBACK_TRIES = 4
ROLLBACK_BACKOFF_S = (5.0, 10.0, 20.0)
ROLLBACK_MIN_TRY_S = 10.0  # a try needs at least this much of the budget left
_ERROR_LEVELS = frozenset({"ERROR", "CRITICAL", "FATAL"})


class ExitCode(IntEnum):
    OK = 0  # nothing to do (verdict OK, or pending)
    ACTED = 1  # an incident was handled: rolled back and verified, or a needs-decision issue filed
    CONFIG = 2  # cannot evaluate or act: configuration or state missing
    PAGED = 3  # ROLLBACK FAILED (or not verified): on-call is paged
    ISSUE_PENDING = 4  # acted, but the issue is not filed yet (kept in the outbox)
    PAGE_FAILED = 5  # ROLLBACK FAILED and no notification channel delivered the page


class SignalSource(StrEnum):
    CRITERIA = "criteria"
    ALERTMANAGER = "alertmanager"
    PROMOTE = "promote"
    RESPONDER = "responder"


class Action(StrEnum):
    NONE = "none"  # no release, or nothing to act on
    NEEDS_DECISION = "needs-decision"  # REVIEW: issue filed or commented, nothing rolled back
    ROLLED_BACK = "rolled-back"  # rolled back and verified
    ROLLBACK_FAILED = "rollback-failed"  # paged
    ATTRIBUTED = "attributed"  # about a release that is no longer current: commented only


# ------------------------------------------------------------------------------------ values


@dataclass(frozen=True, slots=True)
class IncidentOptions:
    """Everything a run needs besides its dependencies; ``service_log`` may contain ``{version}``."""

    release_dir: Path
    environment: str = "Production"
    rollback_command: str | None = None  # {version} (leaving) and {to_version} are substituted
    rollback_budget_s: float = 180.0
    criteria: tuple[Criterion, ...] = DEFAULT_CRITERIA
    service_log: str | None = None  # e.g. /srv/kis/releases/{version}/service.log (a glob is allowed)
    owners: Owners = field(default_factory=Owners)
    error_log_max_lines: int = 500
    responder_command: str = "kis-release rollback --issue <this issue>"


@dataclass(frozen=True, slots=True)
class IncidentDeps:
    tracker: IssueTracker
    estimator_for: Callable[[str], contextlib.AbstractContextManager[EstimatorClient]]
    run_command: CommandRunner
    clock: Clock
    sleep: Callable[[float], None]
    ledger: IncidentRecords
    metrics: MetricsSource | None = None
    flush_outbox: Callable[[], object] | None = None  # OutboxTracker.flush: deliver what is queued
    extra_bug_count: Callable[[datetime], int] | None = None
    # Pages on-call (subject, body) through every configured channel; True when one delivered it.
    page: Callable[[str, str], bool] | None = None


@dataclass(frozen=True, slots=True)
class Signal:
    """What a caller saw; ``fingerprint`` names *what it says*: one comment per fingerprint."""

    verdict: Verdict  # ROLLBACK or REVIEW (anything else is only commented)
    source: SignalSource
    detected_at: datetime
    summary: str
    fingerprint: str
    breaches: tuple[Breach, ...] = ()
    snapshot: Mapping[str, object] = field(default_factory=dict)
    charts: tuple[BreachChart, ...] = ()
    error_rate_pct: float | None = None
    http_5xx_per_min: float | None = None
    p95_ms: float | None = None
    window_start: datetime | None = None  # start of the error-log window (None: the release's start)
    version: str | None = None  # the release it is about; None: the one current at detected_at
    details: tuple[str, ...] = ()  # extra lines for comments

    def __post_init__(self) -> None:
        if self.detected_at.tzinfo is None:
            raise ValueError("Signal.detected_at must be timezone-aware")


@dataclass(frozen=True, slots=True)
class Release:
    version: str
    since: datetime  # when it became current (promotion, or the end of the rollback that restored it)
    previous: str | None  # what a rollback returns to


@dataclass(frozen=True, slots=True)
class RollbackRecord:
    attempt: int
    from_version: str
    to_version: str | None
    trigger: str
    started_at: datetime
    status: str  # running | done | failed
    finished_at: datetime | None = None
    command: str = ""
    returncode: int | None = None  # None: timed out (killed), not started, or not finished
    reason: str = ""
    health: str = ""
    smoke_passed: int = 0
    smoke_total: int = 0
    smoke_summary: str = ""
    log_file: str = ""
    verified_at: datetime | None = None
    detected_at: datetime | None = None
    tries: int = 1  # runs of the rollback command in this attempt

    @property
    def command_ok(self) -> bool:
        return self.status != "running" and self.returncode == 0

    @property
    def verified(self) -> bool:
        return (
            self.command_ok
            and self.health == "SERVING"
            and self.smoke_total == SMOKE_TOTAL
            and self.smoke_passed == self.smoke_total
        )

    @property
    def detection_to_verified_s(self) -> float | None:
        if self.verified_at is None or self.detected_at is None:
            return None
        return (self.verified_at - self.detected_at).total_seconds()

    def failure(self) -> str:
        """Why the rollback is not verified ("" when it is)."""
        if self.verified:
            return ""
        if self.status == "running":
            return "an earlier rollback attempt never finished (crashed or still running)"
        if self.reason:
            return self.reason
        if self.returncode is None:
            return "the rollback command timed out (killed)"
        if self.returncode != 0:
            return f"the rollback command exited {self.returncode}"
        if self.health != "SERVING":
            return f"the previous version is not SERVING (health {self.health or 'unknown'})"
        return f"smoke tests on the previous version: {self.smoke_summary or 'not run'}"

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "trigger": self.trigger,
            "started_at": _iso(self.started_at),
            "status": self.status,
            "finished_at": _iso(self.finished_at) if self.finished_at else None,
            "command": self.command,
            "returncode": self.returncode,
            "reason": self.reason,
            "health": self.health,
            "smoke_passed": self.smoke_passed,
            "smoke_total": self.smoke_total,
            "smoke_summary": self.smoke_summary,
            "log_file": self.log_file,
            "verified_at": _iso(self.verified_at) if self.verified_at else None,
            "detected_at": _iso(self.detected_at) if self.detected_at else None,
            "tries": self.tries,
            "verified": self.verified,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RollbackRecord:
        return cls(
            attempt=int(raw["attempt"]),
            from_version=str(raw["from_version"]),
            to_version=None if raw.get("to_version") is None else str(raw["to_version"]),
            trigger=str(raw.get("trigger", "")),
            started_at=_parse(str(raw["started_at"])),
            status=str(raw["status"]),
            finished_at=_parse_opt(raw.get("finished_at")),
            command=str(raw.get("command", "")),
            returncode=None if raw.get("returncode") is None else int(raw["returncode"]),
            reason=str(raw.get("reason", "")),
            health=str(raw.get("health", "")),
            smoke_passed=int(raw.get("smoke_passed", 0)),
            smoke_total=int(raw.get("smoke_total", 0)),
            smoke_summary=str(raw.get("smoke_summary", "")),
            log_file=str(raw.get("log_file", "")),
            verified_at=_parse_opt(raw.get("verified_at")),
            detected_at=_parse_opt(raw.get("detected_at")),
            tries=int(raw.get("tries", 1)),
        )


@dataclass(frozen=True, slots=True)
class HandleOutcome:
    action: Action
    message: str
    version: str | None = None
    incident_id: str | None = None
    rollback: RollbackRecord | None = None  # the rollback of this incident (this call's or an earlier one)
    rollback_ran: bool = False  # the command ran in this call
    issue: IssueRef | None = None
    issue_error: str = ""
    page_delivered: bool | None = None  # None: no page sent by this call

    @property
    def paged(self) -> bool:
        return self.action is Action.ROLLBACK_FAILED

    @property
    def issue_delivered(self) -> bool:
        """The issue exists in the tracker (not only in the outbox) and the last tracker call worked."""
        return self.issue is not None and not self.issue.pending and not self.issue_error

    @property
    def exit_code(self) -> ExitCode:
        if self.paged and self.page_delivered is False:
            return ExitCode.PAGE_FAILED
        if self.paged:
            return ExitCode.PAGED
        if self.action is Action.NONE:
            return ExitCode.OK
        if not self.issue_delivered:
            return ExitCode.ISSUE_PENDING
        return ExitCode.ACTED

    def lines(self) -> list[str]:
        out = [self.message]
        if self.rollback is not None:
            r = self.rollback
            out.append(
                f"rollback #{r.attempt} {r.from_version} → {r.to_version or '?'}: "
                + ("verified" if r.verified else f"FAILED: {r.failure()}")
            )
            if r.detection_to_verified_s is not None:
                out.append(f"detection → verified: {r.detection_to_verified_s:.1f} s")
        if self.issue is not None:
            state = " (pending in the outbox)" if self.issue.pending else ""
            out.append(f"ROLLBACK issue {self.issue.key} {self.issue.url}{state}".rstrip())
        if self.issue_error:
            out.append(f"ROLLBACK issue NOT delivered: {self.issue_error}")
        if self.page_delivered is False:
            out.append(
                "PAGE NOT DELIVERED by any channel: configure KIS_SLACK_WEBHOOK_URL or KIS_SMTP_* "
                "and call on-call now"
            )
        return out


# ------------------------------------------------------------------------------------ small helpers


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"{text!r}: expected a time with a UTC offset")
    return value


def _parse_opt(raw: object) -> datetime | None:
    return None if raw in (None, "") else _parse(str(raw))


def _compact(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _digest(*parts: object) -> str:
    return hashlib.sha256("\0".join(str(p) for p in parts).encode("utf-8")).hexdigest()[:16]


def _substitute(template: str, values: Mapping[str, str]) -> str:
    out = template
    for name, value in values.items():
        out = out.replace("{" + name + "}", shlex.quote(value))
    return out


# ------------------------------------------------------------------------------------ releases


def _rollbacks(release_dir: Path, version: str) -> list[RollbackRecord]:
    data = read_json(release_dir / version / "rollback.json") or {}
    return [RollbackRecord.from_json(r) for r in data.get("attempts", [])]


def _save_rollback(release_dir: Path, record: RollbackRecord) -> None:
    path = release_dir / record.from_version / "rollback.json"
    attempts = [r for r in _rollbacks(release_dir, record.from_version) if r.attempt != record.attempt]
    attempts.append(record)
    attempts.sort(key=lambda r: r.attempt)
    write_json(path, {"version": record.from_version, "attempts": [r.to_json() for r in attempts]})


def _timeline(release_dir: Path) -> list[tuple[str, datetime, list[str]]]:
    """(version, since, stack) each time the current version changed, oldest first."""
    events: list[tuple[datetime, int, str, str | None]] = []  # (at, order, version, rollback target)
    for promoted in promoted_records(release_dir):
        assert promoted.promoted_at is not None
        events.append((promoted.promoted_at, 0, promoted.version, None))
    for path in sorted(release_dir.glob("*/rollback.json")):
        for record in _rollbacks(release_dir, path.parent.name):
            if record.command_ok and record.finished_at is not None:
                events.append((record.finished_at, 1, record.from_version, record.to_version))
    events.sort(key=lambda e: (e[0], e[1]))
    stack: list[str] = []
    changes: list[tuple[str, datetime, list[str]]] = []
    for at, kind, version, target in events:
        if kind == 0:
            if version in stack:
                stack.remove(version)
            stack.append(version)
        else:
            if not stack or stack[-1] != version:
                continue  # a rollback of a version that was not current then: nothing changed
            stack.pop()
            if target is not None and (not stack or stack[-1] != target):
                stack.append(target)
        if stack:
            changes.append((stack[-1], at, list(stack)))
    return changes


def current_release(release_dir: Path) -> Release | None:
    """The release serving now, per the promotion and rollback records (module doc)."""
    changes = _timeline(release_dir)
    if not changes:
        return None
    version, since, stack = changes[-1]
    return Release(version, since, stack[-2] if len(stack) > 1 else None)


def release_at(release_dir: Path, when: datetime) -> str | None:
    """The version that was current at ``when`` (None: before the first promotion)."""
    found: str | None = None
    for version, since, _stack in _timeline(release_dir):
        if since <= when:
            found = version
    return found


# ------------------------------------------------------------------------------------ evidence


def gather_error_log(paths: Sequence[Path], since: datetime, until: datetime, max_lines: int = 500) -> bytes:
    """The JSON log lines with level ERROR/CRITICAL whose ``ts`` lies in [since, until]; newest kept."""
    picked: list[str] = []
    for path in paths:
        try:
            handle = path.open(encoding="utf-8", errors="replace")
        except OSError:
            continue
        with handle:
            for raw in handle:
                line = raw.strip()
                if not line.startswith("{"):
                    continue
                try:
                    entry = json.loads(line)
                    level = str(entry.get("level", "")).upper()
                    at = _parse(str(entry.get("ts", "")))
                except (ValueError, AttributeError):
                    continue
                if level in _ERROR_LEVELS and since <= at <= until:
                    picked.append(line)
    kept = picked[-max_lines:] if max_lines > 0 else []
    head = f"# {path_names(paths)}: {len(picked)} error line(s) {_iso(since)} … {_iso(until)}"
    if len(kept) < len(picked):
        head += f"; the newest {len(kept)} kept"
    return ("\n".join([head, *kept]) + "\n").encode("utf-8") if picked else b""


def path_names(paths: Sequence[Path]) -> str:
    return ", ".join(str(p) for p in paths) or "(no log files)"


def _log_paths(options: IncidentOptions, version: str) -> list[Path]:
    if not options.service_log:
        return []
    pattern = options.service_log.replace("{version}", version)
    if any(c in pattern for c in "*?["):
        anchor = Path(pattern).anchor or "."
        relative = str(Path(pattern).relative_to(anchor)) if Path(pattern).is_absolute() else pattern
        return sorted(Path(anchor).glob(relative))
    return [Path(pattern)]


def _value(result: CriterionResult | None) -> float | None:
    if result is None or result.summary is None:
        return None
    value = result.summary.last
    return None if math.isnan(value) else value


def _by_id(evaluation: Evaluation, criterion_id: str) -> CriterionResult | None:
    with contextlib.suppress(KeyError):
        return evaluation.result(criterion_id)
    return None


def signal_from_evaluation(evaluation: Evaluation, *, version: str | None = None) -> Signal:
    """The criteria engine's verdict as a Signal: breaches with numbers, charts, the JSON snapshot."""
    acted = (Verdict.ROLLBACK, Verdict.REVIEW, Verdict.INCONCLUSIVE)
    breaches: list[Breach] = []
    for r in evaluation.results:
        if r.verdict not in acted:
            continue
        if r.verdict is Verdict.INCONCLUSIVE:
            # No data is never OK: it is a symptom of its own, shown as such (observed NaN).
            breaches.append(Breach(f"{r.notice} — INCONCLUSIVE: {r.message}", math.nan, r.threshold, r.unit))
            continue
        observed = r.summary.min if r.summary is not None else float(r.samples)
        if "slope_per_min" in r.stats:
            observed = r.stats["slope_per_min"]
        sustained = (r.end - r.start).total_seconds() if r.start and r.end else None
        breaches.append(Breach(r.notice, observed, r.threshold, r.unit, sustained))
    charts = tuple(
        BreachChart(
            name=b.criterion_id,
            title=f"{b.criterion_id} ({b.verdict.value})",
            unit=b.unit,
            threshold=b.threshold,
            series=((b.criterion_id, tuple(zip(b.timestamps, b.values, strict=True))),),
        )
        for b in evaluation.breaching_series()
    )
    starts = [r.start for r in evaluation.results if r.verdict in acted and r.start is not None]
    ratio = _value(_by_id(evaluation, "error_rate_2pct"))
    state = sorted((r.criterion_id, r.verdict.value) for r in evaluation.results if r.verdict in acted)
    return Signal(
        verdict=evaluation.verdict,
        source=SignalSource.CRITERIA,
        detected_at=evaluation.now,
        summary=f"criteria verdict {evaluation.verdict.value}: "
        + ", ".join(f"{cid} {v}" for cid, v in state),
        fingerprint=_digest("criteria", evaluation.verdict.value, *state),
        breaches=tuple(breaches),
        snapshot=evaluation.to_dict(),
        charts=charts,
        error_rate_pct=None if ratio is None else ratio * 100.0,
        http_5xx_per_min=_value(_by_id(evaluation, "errors_5xx")),
        p95_ms=_value(_by_id(evaluation, "p95_latency_200ms"))
        or _value(_by_id(evaluation, "p95_latency_100ms")),
        window_start=min(starts) if starts else None,
        version=version,
        details=tuple(
            f"{r.criterion_id}: {r.verdict.value} — {r.message}"
            for r in evaluation.results
            if r.verdict in acted
        ),
    )


# ------------------------------------------------------------------------------------ rollback


def _wait_serving(client: EstimatorClient, sleep: Callable[[float], None]) -> HealthResult:
    return wait_serving(client, sleep, attempts=HEALTH_ATTEMPTS, wait_s=HEALTH_WAIT_S)


def serving_version(deps: IncidentDeps, version: str) -> str | None:
    """The version the target says it serves (None: unreachable, or it cannot say)."""
    with deps.estimator_for(version) as client:
        info = client.server_info()
    return info.version if info is not None else None


def _run_rollback_command(
    options: IncidentOptions, deps: IncidentDeps, release: Release, command: str, started: datetime
) -> tuple[CommandOutcome, int, list[str]]:
    """Run the rollback command; a failure is tried again with backoff inside the budget.

    Only while the target still serves the release being left: once something else serves (or the
    target cannot say), another run of the command could step back a second release.
    """
    deadline = started + timedelta(seconds=options.rollback_budget_s)
    lines: list[str] = []
    tries = 0
    while True:
        tries += 1
        remaining = (deadline - deps.clock.now()).total_seconds()
        outcome = deps.run_command(command, timeout_s=max(remaining, 1.0))
        lines.append(outcome.log_text())
        if outcome.ok or tries >= ROLLBACK_TRIES:
            return outcome, tries, lines
        wait = ROLLBACK_BACKOFF_S[min(tries, len(ROLLBACK_BACKOFF_S)) - 1]
        if (deadline - deps.clock.now()).total_seconds() - wait < ROLLBACK_MIN_TRY_S:
            lines.append(f"{_iso(deps.clock.now())} [runner] not tried again: the 3-minute budget is spent")
            return outcome, tries, lines
        deps.sleep(wait)
        serving = serving_version(deps, release.version)
        now = _iso(deps.clock.now())
        if serving != release.version:
            lines.append(
                f"{now} [runner] not tried again: the target serves {serving or 'an unknown version'}, "
                f"not {release.version}"
            )
            return outcome, tries, lines
        lines.append(
            f"{now} [runner] try {tries + 1} after {wait:g} s: the target still serves {release.version}"
        )
        log.warning("rollback of %s failed; try %d after %g s", release.version, tries + 1, wait)


def _run_rollback(
    options: IncidentOptions,
    deps: IncidentDeps,
    release: Release,
    *,
    trigger: str,
    detected_at: datetime | None,
) -> RollbackRecord:
    """Run the rollback command under the budget, verify the previous version, record every step."""
    attempt = max((r.attempt for r in _rollbacks(options.release_dir, release.version)), default=0) + 1
    started = deps.clock.now()
    record = RollbackRecord(
        attempt=attempt,
        from_version=release.version,
        to_version=release.previous,
        trigger=trigger,
        started_at=started,
        status="running",
        detected_at=detected_at,
    )
    if release.previous is None or not options.rollback_command:
        reason = (
            "no previous release to roll back to"
            if release.previous is None
            else "no rollback command configured (KIS_ROLLBACK_COMMAND)"
        )
        failed = replace(record, status="failed", finished_at=deps.clock.now(), reason=reason)
        _save_rollback(options.release_dir, failed)
        log.error("ROLLBACK FAILED for %s: %s — paging on-call", release.version, reason)
        return failed
    command = _substitute(
        options.rollback_command, {"version": release.version, "to_version": release.previous}
    )
    record = replace(record, command=command)
    _save_rollback(options.release_dir, record)  # "running" first: a crash must not lead to a second rollback
    log.warning(
        "ROLLBACK %s → %s (%s, budget %g s): %s",
        release.version,
        release.previous,
        trigger,
        options.rollback_budget_s,
        command,
    )
    outcome, tries, log_lines = _run_rollback_command(options, deps, release, command, started)
    log_path = options.release_dir / release.version / f"rollback-{attempt}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    record = replace(
        record,
        finished_at=outcome.finished_at,
        returncode=outcome.returncode,
        log_file=str(log_path),
        status="done" if outcome.ok else "failed",
        tries=tries,
    )
    if outcome.ok:
        with deps.estimator_for(release.previous) as client:
            health = _wait_serving(client, deps.sleep)
            info = client.server_info() if health.serving else None
            still_bad = info is not None and info.version == release.version
            smoke: SuiteResult | None = client.smoke() if health.serving and not still_bad else None
        verified_at = deps.clock.now()
        record = replace(
            record,
            # the version that serves now is the target's word; the records only said what to expect
            to_version=info.version if info is not None else record.to_version,
            health=health.status,
            smoke_passed=smoke.passed if smoke else 0,
            smoke_total=smoke.total if smoke else 0,
            smoke_summary=smoke.summary if smoke else "not run: previous version not SERVING",
            verified_at=verified_at,
        )
        if still_bad:
            record = replace(
                record,
                reason=f"the target still serves {release.version} after the rollback command",
                smoke_summary="not run: the rolled-back version still serves",
            )
        log_lines.append(f"{_iso(verified_at)} [verify] health {health.status} {health.detail}".rstrip())
        if info is not None:
            log_lines.append(f"{_iso(verified_at)} [verify] serving {info.describe()}")
        log_lines.append(f"{_iso(verified_at)} [verify] {record.smoke_summary}")
        if smoke is not None and smoke.report:
            log_lines.append(smoke.report.rstrip("\n"))
        if not record.verified:
            record = replace(record, status="failed")
    log_path.write_text("\n".join(line.rstrip("\n") for line in log_lines) + "\n", encoding="utf-8")
    _save_rollback(options.release_dir, record)
    if record.verified:
        log.warning(
            "rolled back %s → %s and verified (health SERVING, %s)",
            record.from_version,
            record.to_version,
            record.smoke_summary,
        )
    else:
        log.error(
            "ROLLBACK FAILED %s → %s: %s — paging on-call; evidence %s",
            record.from_version,
            record.to_version,
            record.failure(),
            log_path,
        )
    return record


# ------------------------------------------------------------------------------------ incidents


@dataclass
class _Incident:
    id: str
    opened_at: datetime
    verdict: str
    status: str = "open"  # open | closed
    issue_key: str | None = None
    issue_url: str = ""
    issue_pending: bool = False
    rollback_reported: int = 0  # the rollback attempt already in the issue or a comment
    fingerprints: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "opened_at": _iso(self.opened_at),
            "verdict": self.verdict,
            "status": self.status,
            "issue_key": self.issue_key,
            "issue_url": self.issue_url,
            "issue_pending": self.issue_pending,
            "rollback_reported": self.rollback_reported,
            "fingerprints": self.fingerprints,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> _Incident:
        return cls(
            id=str(raw["id"]),
            opened_at=_parse(str(raw["opened_at"])),
            verdict=str(raw.get("verdict", "")),
            status=str(raw.get("status", "open")),
            issue_key=raw.get("issue_key"),
            issue_url=str(raw.get("issue_url", "")),
            issue_pending=bool(raw.get("issue_pending", False)),
            rollback_reported=int(raw.get("rollback_reported", 0)),
            fingerprints=[str(f) for f in raw.get("fingerprints", [])],
        )


def _incidents(release_dir: Path, version: str) -> list[_Incident]:
    data = read_json(release_dir / version / "incidents.json") or {}
    return [_Incident.from_json(i) for i in data.get("incidents", [])]


def _save_incidents(release_dir: Path, version: str, incidents: Sequence[_Incident]) -> None:
    write_json(
        release_dir / version / "incidents.json",
        {"version": version, "incidents": [i.to_json() for i in incidents]},
    )


def _new_incident_id(base: str, taken: set[str]) -> str:
    """``base``, or ``base-1``, ``base-2``…: a Done incident's id (and issue) is never reused."""
    candidates = (base if n == 0 else f"{base}-{n}" for n in range(len(taken) + 1))
    return next(c for c in candidates if c not in taken)


def _idempotency_key(incident_id: str) -> str:
    return f"incident:{incident_id}"


def _report(
    options: IncidentOptions,
    incident: _Incident,
    version: str,
    to_version: str | None,
    signal: Signal,
    rollback: RollbackRecord | None,
    since: datetime,
    now: datetime,
) -> IncidentReport:
    error_log = gather_error_log(
        _log_paths(options, version), signal.window_start or since, now, options.error_log_max_lines
    )
    rollback_log: bytes | None = None
    if rollback is not None and rollback.log_file:
        with contextlib.suppress(OSError):
            rollback_log = Path(rollback.log_file).read_bytes()
    needs_decision = rollback is None and signal.verdict is not Verdict.ROLLBACK
    snapshot = {"signal": {"source": signal.source.value, "summary": signal.summary}, **signal.snapshot}
    if rollback is not None:
        snapshot["rollback"] = rollback.to_json()
    return IncidentReport(
        incident_id=incident.id,
        from_version=version,
        to_version=to_version or "(none)",
        detected_at=signal.detected_at,
        breaches=signal.breaches,
        error_rate_pct=signal.error_rate_pct,
        http_5xx_per_min=signal.http_5xx_per_min,
        p95_ms=signal.p95_ms,
        metrics_snapshot=snapshot,
        error_log=error_log,
        charts=signal.charts,
        rollback_log=rollback_log,
        service_stopped=rollback is not None and rollback.command_ok,
        rollback_executed=rollback is not None and rollback.command_ok,
        previous_version_running=rollback is not None
        and rollback.command_ok
        and rollback.health == "SERVING",
        smoke_passed=rollback.smoke_passed if rollback else 0,
        smoke_total=rollback.smoke_total if rollback else 0,
        needs_decision=needs_decision,
        rollback_command=options.responder_command,
        owners=options.owners,
    )


def _attempt(rollback: RollbackRecord) -> RollbackAttempt:
    return RollbackAttempt(
        attempt=rollback.attempt,
        from_version=rollback.from_version,
        to_version=rollback.to_version,
        verified=rollback.verified,
        failure="" if rollback.verified else rollback.failure(),
        command_ok=rollback.command_ok,
        health=rollback.health,
        smoke_passed=rollback.smoke_passed,
        smoke_total=rollback.smoke_total,
        detection_to_verified_s=rollback.detection_to_verified_s,
        log_name=Path(rollback.log_file).name,
    )


def _issue_phase(
    options: IncidentOptions,
    deps: IncidentDeps,
    version: str,
    release: Release | None,
    signal: Signal,
    rollback: RollbackRecord | None,
    *,
    current: bool,
    action: Action,
    ran: bool,
) -> HandleOutcome:
    incidents = _incidents(options.release_dir, version)
    if _resolve_pending(deps, incidents):
        _save_incidents(options.release_dir, version, incidents)
    open_incident = next((i for i in reversed(incidents) if i.status == "open"), None)
    actionable = current and signal.verdict in (Verdict.ROLLBACK, Verdict.REVIEW)
    if (
        open_incident is not None
        and actionable
        and open_incident.issue_key
        and not open_incident.issue_pending
    ):
        # A Done issue ends its incident: this signal is a new incident with a new issue.
        try:
            ref = deps.tracker.find(_idempotency_key(open_incident.id))
        except TrackerError as exc:
            log.warning(
                "cannot read %s's status (%s): treating the incident as open", open_incident.issue_key, exc
            )
            ref = None
        if ref is not None and ref.status.casefold() == "done":
            open_incident.status = "closed"
            _save_incidents(options.release_dir, version, incidents)
            open_incident = None
    if open_incident is None:
        if not actionable and rollback is None:
            return HandleOutcome(Action.NONE, f"{version}: no open incident to report to", version=version)
        open_incident = _Incident(
            id=_new_incident_id(f"{version}-{_compact(signal.detected_at)}", {i.id for i in incidents}),
            opened_at=deps.clock.now(),
            verdict=signal.verdict.value,
        )
        incidents.append(open_incident)
        _save_incidents(options.release_dir, version, incidents)
    incident = open_incident
    base = HandleOutcome(
        action, "", version=version, incident_id=incident.id, rollback=rollback, rollback_ran=ran
    )
    try:
        if incident.issue_key is None or incident.issue_pending:
            ref = _file_issue(options, deps, incident, version, release, signal, rollback)
        else:
            ref = IssueRef(incident.issue_key, incident.issue_url, created=False)
            _comment_updates(options, deps, incident, signal, rollback)
    except TrackerError as exc:
        return replace(
            base, message=_message(base, version, signal), issue_error=str(exc), issue=_known(incident)
        )
    finally:
        _save_incidents(options.release_dir, version, incidents)
    return replace(base, message=_message(base, version, signal), issue=ref)


def _resolve_pending(deps: IncidentDeps, incidents: Sequence[_Incident]) -> bool:
    """Replace ``PENDING-…`` keys that an ``outbox flush`` has filed since; True when one changed."""
    changed = False
    for incident in incidents:
        if not incident.issue_pending:
            continue
        try:
            ref = deps.tracker.find(_idempotency_key(incident.id))
        except TrackerError:
            return changed  # still unreachable: the pending key stays
        if ref is not None and not ref.pending:
            incident.issue_key, incident.issue_url, incident.issue_pending = ref.key, ref.url, False
            changed = True
    return changed


def _known(incident: _Incident) -> IssueRef | None:
    if incident.issue_key is None:
        return None
    return IssueRef(incident.issue_key, incident.issue_url, created=False, pending=incident.issue_pending)


def _message(outcome: HandleOutcome, version: str, signal: Signal) -> str:
    what = {
        Action.NONE: "no action",
        Action.NEEDS_DECISION: "needs decision (검토 후 롤백): nothing rolled back",
        Action.ROLLED_BACK: "rolled back and verified",
        Action.ROLLBACK_FAILED: "ROLLBACK FAILED — paging on-call",
        Action.ATTRIBUTED: "about a release that is no longer current: reported on its incident",
    }[outcome.action]
    return f"{version}: {signal.summary}; {what} (incident {outcome.incident_id})"


def _file_issue(
    options: IncidentOptions,
    deps: IncidentDeps,
    incident: _Incident,
    version: str,
    release: Release | None,
    signal: Signal,
    rollback: RollbackRecord | None,
) -> IssueRef:
    if incident.issue_pending and deps.flush_outbox is not None:
        try:
            deps.flush_outbox()
        except TrackerError as exc:
            log.warning("outbox flush failed: %s", exc)
    to_version = rollback.to_version if rollback is not None else (release.previous if release else None)
    since = release.since if release is not None and release.version == version else signal.detected_at
    report = _report(options, incident, version, to_version, signal, rollback, since, deps.clock.now())
    draft = rollback_issue(report)
    if rollback is not None and not rollback.verified:
        draft = paged_rollback_issue(draft, _attempt(rollback))
    ref = deps.tracker.file(draft)
    incident.issue_key, incident.issue_url, incident.issue_pending = ref.key, ref.url, ref.pending
    if signal.fingerprint not in incident.fingerprints:
        incident.fingerprints.append(signal.fingerprint)
    if rollback is not None:
        incident.rollback_reported = rollback.attempt
    log.info("ROLLBACK issue %s for incident %s%s", ref.key, incident.id, " (pending)" if ref.pending else "")
    return ref


def _comment_updates(
    options: IncidentOptions,
    deps: IncidentDeps,
    incident: _Incident,
    signal: Signal,
    rollback: RollbackRecord | None,
) -> None:
    assert incident.issue_key is not None
    if rollback is not None and incident.rollback_reported < rollback.attempt:
        _report_rollback(deps, incident, rollback, by=rollback.trigger)
    if signal.fingerprint not in incident.fingerprints:
        deps.tracker.comment(
            incident.issue_key,
            reevaluation_comment(
                signal.detected_at, signal.source.value, signal.summary, signal.details, signal.verdict.value
            ),
            f"{_idempotency_key(incident.id)}:{signal.fingerprint}",
        )
        incident.fingerprints.append(signal.fingerprint)


def _report_rollback(deps: IncidentDeps, incident: _Incident, rollback: RollbackRecord, *, by: str) -> None:
    assert incident.issue_key is not None
    if rollback.log_file:
        with contextlib.suppress(OSError):
            data = Path(rollback.log_file).read_bytes()
            deps.tracker.attach(
                incident.issue_key, [Attachment(Path(rollback.log_file).name, data, "text/plain")]
            )
    deps.tracker.comment(
        incident.issue_key,
        rollback_comment(_attempt(rollback), by),
        f"{_idempotency_key(incident.id)}:rollback:{rollback.attempt}",
    )
    incident.rollback_reported = rollback.attempt


# ------------------------------------------------------------------------------------ the decision path


def handle(signal: Signal, options: IncidentOptions, deps: IncidentDeps) -> HandleOutcome:
    """Decide and act on ``signal`` (module doc): rollback phase first, then the issue phase."""
    with file_lock(options.release_dir / ".rollback.lock"):
        release = current_release(options.release_dir)
        version = signal.version or release_at(options.release_dir, signal.detected_at)
        if version is None:
            version = release.version if release else None
        if version is None:
            return HandleOutcome(
                Action.NONE, f"no promoted release under {options.release_dir}: nothing to act on"
            )
        current = release is not None and release.version == version
        rollback: RollbackRecord | None = None
        ran = False
        if current:
            assert release is not None
            since_current = [
                r for r in _rollbacks(options.release_dir, version) if r.started_at >= release.since
            ]
            rollback = since_current[-1] if since_current else None
            serving = (
                serving_version(deps, release.version)
                if signal.verdict is Verdict.ROLLBACK and rollback is None
                else None
            )
            if serving is not None and serving != release.version:
                # The records and the target disagree (a manual rollback, another operator): rolling
                # "back" from what the records think serves could step back a release that is fine.
                note = (
                    f"not rolled back automatically: the release records say {release.version} is "
                    f"current, but the target serves {serving}; a responder decides"
                )
                log.error("%s", note)
                signal = replace(
                    signal,
                    verdict=Verdict.REVIEW,
                    summary=f"{note} — {signal.summary}",
                    details=(note, *signal.details),
                )
            if signal.verdict is Verdict.ROLLBACK and (
                rollback is None or _retry_due(deps, release, rollback)
            ):
                rollback = _run_rollback(
                    options, deps, release, trigger=signal.source.value, detected_at=signal.detected_at
                )
                ran = True
        else:
            done = _rollbacks(options.release_dir, version)
            rollback = done[-1] if done else None
    if not current:
        action = Action.ATTRIBUTED
    elif rollback is not None:
        action = Action.ROLLED_BACK if rollback.verified else Action.ROLLBACK_FAILED
    elif signal.verdict in (Verdict.ROLLBACK, Verdict.REVIEW):
        action = Action.NEEDS_DECISION
    else:
        action = Action.NONE
    # The page goes out before any tracker call: Jira may be the thing that is down.
    delivered = _page(options, deps, version, rollback) if action is Action.ROLLBACK_FAILED and ran else None
    with file_lock(options.release_dir / ".issue.lock"):
        outcome = _issue_phase(
            options, deps, version, release, signal, rollback, current=current, action=action, ran=ran
        )
    return replace(outcome, page_delivered=delivered)


def _retry_due(deps: IncidentDeps, release: Release, rollback: RollbackRecord) -> bool:
    """A failed (or crashed) rollback is run again only while the target still serves the release."""
    return not rollback.verified and serving_version(deps, release.version) == release.version


def _page(
    options: IncidentOptions, deps: IncidentDeps, version: str, rollback: RollbackRecord | None
) -> bool:
    """Page on-call through every configured channel; False when none delivered it (or none exists)."""
    reason = rollback.failure() if rollback is not None else "no rollback record"
    subject = f"[KIS] ROLLBACK FAILED: {version} ({options.environment})"
    body = "\n".join(
        [
            f"The automatic rollback of {version} failed: {reason}.",
            f"Rollback log: {rollback.log_file if rollback and rollback.log_file else '(none)'}",
            f"Retry by hand: {options.responder_command}",
        ]
    )
    log.error("PAGE: %s — %s", subject, reason)
    if deps.page is None:
        return False
    return deps.page(subject, body)


def comment_on_release(
    options: IncidentOptions, deps: IncidentDeps, version: str, body: Document, key: str
) -> IssueRef | None:
    """Comment on the newest incident of ``version`` (resolved alerts); None when it has no issue."""
    with file_lock(options.release_dir / ".issue.lock"):
        incidents = [i for i in _incidents(options.release_dir, version) if i.issue_key]
        if not incidents:
            return None
        incident = incidents[-1]
        assert incident.issue_key is not None
        deps.tracker.comment(incident.issue_key, body, f"{_idempotency_key(incident.id)}:{key}")
        return IssueRef(incident.issue_key, incident.issue_url, created=False, pending=incident.issue_pending)


# ------------------------------------------------------------------------------------ watch


@dataclass(frozen=True, slots=True)
class WatchResult:
    release: Release | None
    evaluation: Evaluation | None
    outcome: HandleOutcome | None
    message: str = ""

    @property
    def exit_code(self) -> ExitCode:
        if self.release is None:
            return ExitCode.CONFIG
        return self.outcome.exit_code if self.outcome is not None else ExitCode.OK

    def lines(self) -> list[str]:
        out = [self.message] if self.message else []
        if self.evaluation is not None:
            for r in self.evaluation.results:
                out.append(f"{r.verdict.value:<12} {r.criterion_id:<24} {r.message}")
            out.append(f"verdict {self.evaluation.verdict.value}")
        if self.outcome is not None:
            out += self.outcome.lines()
        return out


def watch_once(options: IncidentOptions, deps: IncidentDeps) -> WatchResult:
    """Evaluate the criteria for the current release and act on a REVIEW or ROLLBACK verdict."""
    release = current_release(options.release_dir)
    if release is None:
        return WatchResult(None, None, None, f"no promoted release under {options.release_dir}")
    if deps.metrics is None:
        raise ValueError("no metrics source (KIS_PROMETHEUS_URL): the criteria cannot be evaluated")
    now = deps.clock.now()
    evaluation = evaluate(
        deps.metrics,
        now,
        release.since,
        deps.ledger,
        criteria=options.criteria,
        extra_bug_count=deps.extra_bug_count,
    )
    write_json(options.release_dir / release.version / "last-evaluation.json", evaluation.to_dict())
    header = f"{release.version} (current since {kst_text(release.since)}): {evaluation.verdict.value}"
    if evaluation.verdict is Verdict.OK:
        return WatchResult(release, evaluation, None, header)
    outcome = handle(signal_from_evaluation(evaluation, version=release.version), options, deps)
    return WatchResult(release, evaluation, outcome, header)


def run_watch(
    options: IncidentOptions,
    deps: IncidentDeps,
    out: TextIO,
    *,
    interval_s: float = 30.0,
    once: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """``kis-release watch``: every ``interval_s`` (or once); stops with 3 when a rollback failed."""
    while True:
        try:
            result = watch_once(options, deps)
        except (TrackerError, IncidentLedgerError, OSError, ValueError) as exc:
            log.error("watch round failed: %s", exc)
            out.write(f"error: {exc}\n")
            if once:
                return int(ExitCode.CONFIG)
        else:
            out.write("".join(f"{line}\n" for line in result.lines()))
            out.flush()
            if once or result.exit_code is ExitCode.PAGED:
                return int(result.exit_code)
        if should_stop():
            return int(ExitCode.OK)
        deps.sleep(interval_s)


# ------------------------------------------------------------------------------------ responder


def find_incident_by_issue(
    release_dir: Path, key: str, tracker: IssueTracker | None = None
) -> tuple[str, str] | None:
    """(version, incident id) of the incident filed as ``key`` (pending keys resolved through ``tracker``)."""
    for path in sorted(release_dir.glob("*/incidents.json")):
        version = path.parent.name
        for incident in _incidents(release_dir, version):
            if incident.issue_key == key:
                return version, incident.id
            if tracker is not None and incident.issue_pending:
                with contextlib.suppress(TrackerError):
                    ref = tracker.find(_idempotency_key(incident.id))
                    if ref is not None and ref.key == key:
                        return version, incident.id
    return None


def rollback_for_issue(
    key: str, options: IncidentOptions, deps: IncidentDeps, out: TextIO, *, by: str | None = None
) -> int:
    """``kis-release rollback --issue KEY``: a responder executes the rollback the issue asks to decide."""
    responder = by or getpass.getuser()
    found = find_incident_by_issue(options.release_dir, key, deps.tracker)
    if found is None:
        out.write(f"error: no incident under {options.release_dir} was filed as {key}\n")
        return int(ExitCode.CONFIG)
    version, incident_id = found
    with file_lock(options.release_dir / ".rollback.lock"):
        release = current_release(options.release_dir)
        if release is None or release.version != version:
            now_serving = release.version if release else "nothing"
            out.write(
                f"{key}: {version} is not the current release ({now_serving} is): nothing to roll back\n"
            )
            return int(ExitCode.OK)
        record = _run_rollback(options, deps, release, trigger=f"responder {responder}", detected_at=None)
    with file_lock(options.release_dir / ".issue.lock"):
        incidents = _incidents(options.release_dir, version)
        incident = next(i for i in incidents if i.id == incident_id)
        incident.issue_key = key
        try:
            _report_rollback(deps, incident, record, by=f"executed by {responder}")
            error = ""
        except TrackerError as exc:
            error = str(exc)
        _save_incidents(options.release_dir, version, incidents)
    action = Action.ROLLED_BACK if record.verified else Action.ROLLBACK_FAILED
    outcome = HandleOutcome(
        action,
        f"{key}: rollback {version} → {record.to_version or '?'} executed by {responder}",
        version=version,
        incident_id=incident_id,
        rollback=record,
        rollback_ran=True,
        issue=IssueRef(key, "", created=False),
        issue_error=error,
    )
    out.write("".join(f"{line}\n" for line in outcome.lines()))
    return int(outcome.exit_code)


# ------------------------------------------------------------------------------------ refused promotion


def _check_breach(name: str, summary: str, result: PromotionResult) -> Breach:
    if name in ("smoke", "regression"):
        suite = result.smoke if name == "smoke" else result.regression
        if suite is not None and not suite.error:
            return Breach(f"T+0 {summary}", suite.passed, suite.expected_total, "passed")
    if name == "slo" and result.slo is not None and result.slo.p95_ms is not None:
        return Breach(f"T+0 {summary}", result.slo.p95_ms, 30.0, "ms")
    return Breach(f"T+0 check failed: {summary}", 0, 1, "passed")


def file_refused_promotion(
    result: PromotionResult, options: IncidentOptions, deps: IncidentDeps
) -> IssueRef | None:
    """``promote``'s ``on_refused``: the ROLLBACK issue of a refused promotion (promote ran the rollback)."""
    rb = result.rollback
    detected = result.finished_at
    record: RollbackRecord | None = None
    if rb is not None and rb.command is not None:
        smoke: SuiteResult | None = None
        if rb.command.ok and rb.health is not None and rb.health.serving and rb.previous_version:
            with deps.estimator_for(rb.previous_version) as client:
                smoke = client.smoke()
        log_file = result.evidence_dir / "rollback.log"
        record = RollbackRecord(
            attempt=1,
            from_version=result.version,
            to_version=rb.previous_version,
            trigger=SignalSource.PROMOTE.value,
            started_at=rb.command.started_at,
            status="done" if rb.command.ok else "failed",
            finished_at=rb.command.finished_at,
            command=rb.command.command,
            returncode=rb.command.returncode,
            health=rb.health.status if rb.health else "",
            smoke_passed=smoke.passed if smoke else 0,
            smoke_total=smoke.total if smoke else 0,
            smoke_summary=smoke.summary if smoke else "not run",
            log_file=str(log_file) if log_file.exists() else "",
            verified_at=deps.clock.now(),
            detected_at=detected,
        )
    failed = result.failed_checks
    signal = Signal(
        verdict=Verdict.ROLLBACK,
        source=SignalSource.PROMOTE,
        detected_at=detected,
        summary=f"promotion of {result.version} refused: " + "; ".join(c.summary for c in failed),
        fingerprint=_digest("promote", result.version, _iso(result.started_at)),
        breaches=tuple(_check_breach(c.name, c.summary, result) for c in failed),
        snapshot={
            "promotion": {"version": result.version, "message": result.message},
            "checks": [c.to_dict() for c in result.checks],
            "metrics": dict(result.metrics_snapshot),
        },
        charts=(
            (
                BreachChart(
                    "t0-latency",
                    f"{result.version} T+0 burst latency",
                    "ms",
                    30.0,
                    (("latency", tuple((t, ms) for t, ms in result.latency_samples)),),
                ),
            )
            if result.latency_samples
            else ()
        ),
        p95_ms=result.slo.p95_ms if result.slo else None,
        error_rate_pct=(
            result.slo.error_rate * 100.0
            if result.slo is not None and result.slo.error_rate is not None
            else None
        ),
        window_start=result.started_at,
        version=result.version,
    )
    incident = _Incident(
        id=f"{result.version}-{_compact(result.started_at)}", opened_at=detected, verdict="ROLLBACK"
    )
    with file_lock(options.release_dir / ".issue.lock"):
        incidents = _incidents(options.release_dir, result.version)
        known = next((i for i in incidents if i.id == incident.id), None)
        if known is None:
            incidents.append(incident)
        else:
            incident = known
        try:
            ref = _file_issue(options, deps, incident, result.version, None, signal, record)
        finally:
            _save_incidents(options.release_dir, result.version, incidents)
    if record is not None and not record.verified:
        log.error(
            "ROLLBACK FAILED after the refused promotion of %s: %s — paging on-call",
            result.version,
            record.failure(),
        )
    return ref
