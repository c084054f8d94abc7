"""``kis-release promote``: the promotion guard (issue #5).

:func:`promote` runs one promotion of ``options.version`` to the configured target:

1. **Approval**: a ``Production`` promotion with ``release_require_approval`` needs
   ``approved_by``; it is recorded in ``promotion.json`` and the DEPLOY issue.
2. **Verify** the artifact and the manifest against the expected full SHA-256 values and against
   each other (:func:`kis_estimator.workflows.release.artifacts.verify_release`). A mismatch stops here;
   nothing changed.
3. **Deploy**: the configured ``deploy_command`` (``{artifact}`` ``{version}`` ``{manifest}``
   replaced by shell-quoted values); stdout and stderr are captured line by line with timestamps
   into ``deploy.log``.
4. **T+0 checks** against the target over gRPC (:mod:`kis_estimator.workflows.release.estimator_client`):
   health SERVING, smoke 3/3, regression 40/40, RBAC (the viewer is refused an evidence bundle), the served
   ``catalog_version`` equals the manifest's, and the SLO gate — p95 ≤ 30 ms and error rate < 0.5 % from
   Prometheus when ``prometheus_url`` is set, else from the measured burst. The burst always runs: its samples
   feed the latency chart.
5. **Any check failed**: no promotion. ``rollback_command`` runs (``rollback.log``), the target's
   health and catalog are read again, and the result goes to ``on_refused`` — the incident
   workflow's ROLLBACK issue. Without that hook the refusal is loud (exit 1, message naming every
   failed check) and the evidence stays in ``release_dir/<version>/``.
6. **All passed**: ``promotion.json`` says promoted and the DEPLOY issue is filed (idempotent:
   the tracker dedups on ``deploy:<version>:<environment>``).

Evidence in ``release_dir/<version>/``: ``deploy.log``, ``checks.json``, ``metrics-snapshot.json``,
``latency-samples.json``, ``smoke-report.txt``, ``regression-report.txt``, ``rollback.log`` (on
refusal) and ``promotion.json`` (state, attempts, approver, issue key).

Which version serves is the target's word (``GetServerInfo``), never this directory's records:
the T+0 ``version`` check requires the deployed version to serve, the gate reads only the series
of processes that run it (joined with ``kis_build_info{version}``) from the release's own start,
and after a rollback the issue names the version that serves then.

Idempotency: when the target already serves the version (same commit), nothing is deployed. If
``promotion.json`` says promoted, a re-run reports "already promoted" and files the DEPLOY issue
only if an earlier run could not; without a record (an empty release directory, another operator)
the T+0 checks run against what serves and the record and the DEPLOY issue (found, not duplicated,
by the tracker) are made when they pass — a failure there rolls nothing back. A promoted version
the target no longer serves is deployed again. Runs on one ``release_dir`` are serialised with an
flock.

Choices where the issue is silent: the SLO error rate of the burst counts every non-OK reply (each
burst request is valid); Prometheus' rate is the 5xx share, as ``workflows/incident/criteria.py`` defines
it. A target too old to answer ``GetServerInfo`` is always deployed to (it cannot say what it runs).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shlex
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Literal, Protocol, TextIO

from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_attempt, wait_fixed

from kis_estimator.workflows.clock import Clock, SystemClock
from kis_estimator.workflows.clock import sleep as real_sleep
from kis_estimator.workflows.prometheus.client import InstantResult, MetricsSource, PrometheusSource
from kis_estimator.workflows.prometheus.queries import release_queries
from kis_estimator.workflows.release.artifacts import ReleaseManifest, short_sha, verify_release
from kis_estimator.workflows.release.estimator_client import (
    BurstResult,
    CandidateAcceptanceRunner,
    EstimatorClient,
    GrpcEstimatorClient,
    HealthResult,
    ProbeResult,
    ServerInfo,
    SuiteResult,
    wait_serving,
)
from kis_estimator.workflows.release.record import (
    ReleaseRecord,
    promoted_records,
    read_json,
    read_record,
    write_json,
    write_record,
)
from kis_estimator.workflows.settings import WorkflowSettings
from kis_estimator.workflows.templates import DeployReport, Owners, deploy_idempotency_key, deploy_issue
from kis_estimator.workflows.tracker.files import FileIssueTracker
from kis_estimator.workflows.tracker.idempotency import file_lock
from kis_estimator.workflows.tracker.outbox import PENDING_PREFIX
from kis_estimator.workflows.tracker.protocol import (
    IssueDraft,
    IssueRef,
    IssueTracker,
    TrackerError,
    TrackerOptions,
)

__all__ = [
    "ERROR_RATE_LIMIT",
    "P95_LIMIT_MS",
    "CheckResult",
    "CommandLine",
    "CommandOutcome",
    "CommandRunner",
    "PromoteDeps",
    "PromoteOptions",
    "PromotionResult",
    "PromotionStatus",
    "ShellCommandRunner",
    "SloMeasurement",
    "build_deploy_draft",
    "deploy_report",
    "promote",
    "run_promote",
]

log = logging.getLogger(__name__)

P95_LIMIT_MS = 30.0  # seed notice: "응답시간: p95 ≤ 30ms"
ERROR_RATE_LIMIT = 0.005  # seed notice: "오류율: < 0.5%" (a fraction here)
DEPLOY_TIMEOUT_S = 600.0
HEALTH_ATTEMPTS = 10  # × HEALTH_WAIT_S: how long a freshly deployed target may take to report SERVING
HEALTH_WAIT_S = 1.0
PROMETHEUS_MAX_WINDOW_S = 120  # the gate never reads further back than this
PROMETHEUS_MIN_SCRAPES = 3  # scrapes of the new release in the window before the gate judges it
PROMETHEUS_ATTEMPTS = 6  # × PROMETHEUS_WAIT_S: waiting for the first scrapes of the new process
PROMETHEUS_WAIT_S = 10.0
_SAFE_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")  # also a directory name


class PromotionStatus(StrEnum):
    PROMOTED = "promoted"
    ALREADY_PROMOTED = "already-promoted"
    REFUSED = "refused"  # checks failed; rolled back (or nothing was deployed)
    REJECTED = "rejected"  # stopped before anything ran: approval, configuration, inputs


# ------------------------------------------------------------------------------------ values


@dataclass(frozen=True, slots=True)
class PromoteOptions:
    """One ``kis-release promote`` invocation; everything else comes from WorkflowSettings."""

    version: str
    artifact: Path  # the wheel the deploy command installs
    manifest: Path
    expected_artifact_sha256: str
    expected_manifest_sha256: str
    approved_by: str | None = None


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str  # approval, verify, deploy, health, version, smoke, regression, rbac, catalog, slo
    passed: bool
    summary: str
    details: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "summary": self.summary,
            "details": list(self.details),
        }


@dataclass(frozen=True, slots=True)
class CommandLine:
    at: datetime
    stream: Literal["stdout", "stderr", "runner"]
    text: str


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    command: str
    returncode: int | None  # None: killed after the timeout, or could not be started
    lines: tuple[CommandLine, ...]
    started_at: datetime
    finished_at: datetime

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def log_text(self) -> str:
        """``2025-09-23T03:00:00.123456Z [stdout] text`` per line, with a header and the exit status."""
        head = f"{_iso(self.started_at)} [runner] $ {self.command}"
        body = [f"{_iso(line.at)} [{line.stream}] {line.text}" for line in self.lines]
        status = "timed out (killed)" if self.returncode is None else f"exit {self.returncode}"
        tail = f"{_iso(self.finished_at)} [runner] {status}"
        return "\n".join([head, *body, tail]) + "\n"


class CommandRunner(Protocol):
    def __call__(self, command: str, *, timeout_s: float) -> CommandOutcome: ...


@dataclass(frozen=True, slots=True)
class SloMeasurement:
    source: Literal["prometheus", "burst"]
    p95_ms: float | None
    error_rate: float | None  # 0…1
    p50_ms: float | None = None
    requests: int | None = None
    note: str = ""

    @property
    def passed(self) -> bool:
        """No data is never a pass (docs/conventions.md §5)."""
        return (
            self.p95_ms is not None
            and self.error_rate is not None
            and self.p95_ms <= P95_LIMIT_MS
            and self.error_rate < ERROR_RATE_LIMIT
        )

    def summary(self) -> str:
        p95 = "no data" if self.p95_ms is None else f"{self.p95_ms:.1f} ms"
        rate = "no data" if self.error_rate is None else f"{self.error_rate * 100:.2f} %"
        p95_part = f"p95 {p95} (≤ {P95_LIMIT_MS:g} ms)"
        rate_part = f"error rate {rate} (< {ERROR_RATE_LIMIT * 100:g} %)"
        return f"slo {p95_part}, {rate_part} [{self.source}]"


@dataclass(frozen=True, slots=True)
class RollbackOutcome:
    command: CommandOutcome | None  # None: no rollback_command configured
    health: HealthResult | None
    catalog_version: str  # what the target serves after the rollback ("" if unknown)
    previous_version: str | None  # what serves after the rollback (the target's word), else the records'
    previous_running: bool  # SERVING, and no longer the refused version
    serving: ServerInfo | None = None  # GetServerInfo after the rollback


@dataclass(frozen=True, slots=True)
class PromotionResult:
    version: str
    environment: str
    status: PromotionStatus
    message: str
    started_at: datetime
    finished_at: datetime
    target: str
    evidence_dir: Path
    approved_by: str | None = None
    artifact_sha256: str = ""
    manifest_sha256: str = ""
    manifest: ReleaseManifest | None = None
    checks: tuple[CheckResult, ...] = ()
    smoke: SuiteResult | None = None
    regression: SuiteResult | None = None
    probe: ProbeResult | None = None
    slo: SloMeasurement | None = None
    burst: BurstResult | None = None
    deploy: CommandOutcome | None = None
    deployed_at: datetime | None = None  # when the deploy command finished
    rollback: RollbackOutcome | None = None
    serving: ServerInfo | None = None  # what the target said it runs after the deploy
    issue: IssueRef | None = None
    issue_error: str = ""
    metrics_snapshot: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in (PromotionStatus.PROMOTED, PromotionStatus.ALREADY_PROMOTED)

    @property
    def exit_code(self) -> int:
        """0 promoted; 1 refused; 2 rejected before anything ran; 3 promoted, DEPLOY issue not filed."""
        if self.ok:
            return 3 if self.issue_error else 0
        return 2 if self.status is PromotionStatus.REJECTED else 1

    @property
    def latency_samples(self) -> tuple[tuple[float, float], ...]:
        """(seconds since the burst started, latency ms) for the latency chart."""
        return self.burst.samples if self.burst is not None else ()

    @property
    def failed_checks(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def lines(self) -> list[str]:
        out = [f"{'PASS' if c.passed else 'FAIL'}  {c.name:<10} {c.summary}" for c in self.checks]
        if self.artifact_sha256:
            out.append(f"artifact SHA-256 {self.artifact_sha256} ({short_sha(self.artifact_sha256)})")
        if self.manifest_sha256:
            out.append(f"manifest SHA-256 {self.manifest_sha256} ({short_sha(self.manifest_sha256)})")
        if self.issue is not None:
            out.append(f"DEPLOY issue {self.issue.key} {self.issue.url}".rstrip())
        if self.issue_error:
            out.append(f"DEPLOY issue not filed: {self.issue_error}")
        out.append(f"evidence: {self.evidence_dir}")
        out.append(self.message)
        return out


@dataclass(frozen=True, slots=True)
class PromoteDeps:
    tracker: IssueTracker
    estimator: EstimatorClient
    run_command: CommandRunner
    clock: Clock
    sleep: Callable[[float], None]
    metrics: MetricsSource | None = None  # Prometheus; None: the burst is the SLO gate
    deploy_draft: Callable[[PromotionResult, WorkflowSettings], IssueDraft] | None = (
        None  # default: templates
    )
    # Hand-over to the incident workflow (its ROLLBACK issue). None: the refusal is reported loudly
    # with the evidence directory, and nothing is filed.
    on_refused: Callable[[PromotionResult], IssueRef | None] | None = None


# ------------------------------------------------------------------------------------ commands


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ShellCommandRunner:
    """Runs a shell command in its own process group; every output line is stamped as it arrives."""

    def __init__(self, clock: Clock, cwd: Path | None = None) -> None:
        self._clock = clock
        self._cwd = cwd

    def __call__(self, command: str, *, timeout_s: float) -> CommandOutcome:
        started = self._clock.now()
        lines: list[CommandLine] = []
        lock = threading.Lock()

        def pump(stream: IO[str], name: Literal["stdout", "stderr"]) -> None:
            for raw in stream:
                with lock:
                    lines.append(CommandLine(self._clock.now(), name, raw.rstrip("\n")))

        try:
            proc = subprocess.Popen(
                command,
                shell=True,
                cwd=self._cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                start_new_session=True,  # a timeout kills the whole group, not just the shell
            )
        except OSError as exc:
            line = CommandLine(self._clock.now(), "runner", f"cannot start: {exc}")
            return CommandOutcome(command, None, (line,), started, self._clock.now())
        assert proc.stdout is not None and proc.stderr is not None
        readers = [
            threading.Thread(target=pump, args=(proc.stdout, "stdout"), daemon=True),
            threading.Thread(target=pump, args=(proc.stderr, "stderr"), daemon=True),
        ]
        for reader in readers:
            reader.start()
        returncode: int | None
        try:
            returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with lock:
                lines.append(
                    CommandLine(self._clock.now(), "runner", f"timeout after {timeout_s:g} s: SIGKILL")
                )
            try:
                signal_group(proc.pid)
            finally:
                proc.wait()
            returncode = None
        for reader in readers:
            # Bounded: the pipes close when the group exits; a daemonised grandchild that kept them
            # open must not hang the promotion.
            reader.join(timeout=5.0)
        proc.stdout.close()
        proc.stderr.close()
        with lock:
            captured = tuple(lines)
        return CommandOutcome(command, returncode, captured, started, self._clock.now())


def signal_group(pid: int) -> None:
    """SIGKILL the process group ``pid`` leads (the shell and everything it started)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _substitute(template: str, values: Mapping[str, str]) -> str:
    """Replace ``{name}`` for the given names only (other braces, e.g. ``${VAR}``, stay as written)."""
    out = template
    for name, value in values.items():
        out = out.replace("{" + name + "}", shlex.quote(value))
    return out


# ------------------------------------------------------------------------------------ SLO from Prometheus


def _scalar(result: InstantResult) -> float | None:
    if not result.ok or not result.series or not result.series[0].samples:
        return None
    value = result.series[0].samples[-1].value
    return None if math.isnan(value) else value


def measure_prometheus_slo(
    source: MetricsSource,
    clock: Clock,
    sleep: Callable[[float], None],
    *,
    version: str,
    since: datetime,
) -> tuple[SloMeasurement, dict[str, Any]]:
    """Query p95 and error rate of ``version`` since ``since``; waits (bounded) for enough scrapes.

    Fewer than :data:`PROMETHEUS_MIN_SCRAPES` scrapes of the release, or no answer, is NO DATA and
    fails the gate (never a pass).
    """

    def once() -> tuple[float | None, float | None, dict[str, Any]]:
        at = clock.now()
        window_s = min(PROMETHEUS_MAX_WINDOW_S, math.ceil((at - since).total_seconds()))
        queries = release_queries(version, window_s)
        answers = {name: source.query(expr, at) for name, expr in queries.items()}
        raw: dict[str, Any] = {
            name: {"expr": r.expr, "value": _scalar(r), "error": str(r.error) if r.error else None}
            for name, r in answers.items()
        }
        raw["window_s"] = window_s
        scrapes = _scalar(answers["scrapes"]) or 0.0
        if scrapes < PROMETHEUS_MIN_SCRAPES:
            return None, None, raw
        return _scalar(answers["p95_ms"]), _scalar(answers["error_rate"]), raw

    def no_data(outcome: tuple[float | None, float | None, dict[str, Any]]) -> bool:
        return outcome[0] is None or outcome[1] is None

    def last(state: RetryCallState) -> tuple[float | None, float | None, dict[str, Any]]:
        assert state.outcome is not None
        value: tuple[float | None, float | None, dict[str, Any]] = state.outcome.result()
        return value

    retrying = Retrying(
        stop=stop_after_attempt(PROMETHEUS_ATTEMPTS),
        wait=wait_fixed(PROMETHEUS_WAIT_S),
        retry=retry_if_result(no_data),
        retry_error_callback=last,
        sleep=sleep,
    )
    p95, rate, raw = retrying(once)
    note = ""
    if p95 is None or rate is None:
        note = (
            f"NO DATA from Prometheus for {version} since {_iso(since)} "
            f"(fewer than {PROMETHEUS_MIN_SCRAPES} scrapes of kis_build_info{{version={version!r}}}, "
            "or no calls)"
        )
    window_s = raw.pop("window_s")
    return SloMeasurement("prometheus", p95, rate, note=note), {
        "version": version,
        "since": _iso(since),
        "window_s": window_s,
        "queries": raw,
    }


# ------------------------------------------------------------------------------------ state


def _save_record(run: _Run, data: Mapping[str, Any]) -> None:
    write_record(run.settings.release_dir, run.options.version, data)


def _previous_promoted(release_dir: Path, version: str) -> ReleaseRecord | None:
    """The newest other version whose record says promoted."""
    others = [r for r in promoted_records(release_dir) if r.version != version]
    return others[-1] if others else None


# ------------------------------------------------------------------------------------ the pipeline


class _Run:
    """One promotion attempt's mutable working state; becomes a PromotionResult at the end."""

    def __init__(self, options: PromoteOptions, settings: WorkflowSettings, deps: PromoteDeps) -> None:
        self.options = options
        self.settings = settings
        self.deps = deps
        self.dir = settings.release_dir / options.version
        self.started_at = deps.clock.now()
        self.checks: list[CheckResult] = []
        self.values: dict[str, Any] = {}

    def result(self, status: PromotionStatus, message: str, **values: Any) -> PromotionResult:
        merged = {**self.values, **values}
        return PromotionResult(
            version=self.options.version,
            environment=self.settings.release_environment,
            status=status,
            message=message,
            started_at=self.started_at,
            finished_at=self.deps.clock.now(),
            target=self.settings.release_target,
            evidence_dir=self.dir,
            approved_by=self.options.approved_by,
            checks=tuple(self.checks),
            **merged,
        )

    def wait_serving(self) -> HealthResult:
        return wait_serving(
            self.deps.estimator, self.deps.sleep, attempts=HEALTH_ATTEMPTS, wait_s=HEALTH_WAIT_S
        )


def _rejected(run: _Run, name: str, message: str) -> PromotionResult:
    run.checks.append(CheckResult(name, False, message))
    return run.result(PromotionStatus.REJECTED, f"promotion of {run.options.version} rejected: {message}")


def promote(options: PromoteOptions, settings: WorkflowSettings, deps: PromoteDeps) -> PromotionResult:
    """Run the promotion guard (module doc); never raises for a failed check, only for broken state."""
    run = _Run(options, settings, deps)
    if not _SAFE_VERSION.match(options.version):
        return _rejected(run, "input", f"version {options.version!r}: letters, digits, . + _ - only")
    production = settings.release_environment.lower() == "production"
    if production and settings.release_require_approval and not (options.approved_by or "").strip():
        return _rejected(
            run, "approval", f"a {settings.release_environment} promotion needs an approver (--approved-by)"
        )
    if settings.deploy_command is None:
        return _rejected(run, "config", "no deploy command (KIS_DEPLOY_COMMAND)")
    run.dir.mkdir(parents=True, exist_ok=True)
    with file_lock(settings.release_dir / ".promote.lock"):
        return _promote_locked(run)


def _promote_locked(run: _Run) -> PromotionResult:
    options, settings, deps = run.options, run.settings, run.deps
    record = read_record(settings.release_dir, options.version)
    state = dict(record.data) if record is not None else {}

    report = verify_release(
        options.artifact,
        options.manifest,
        expected_artifact_sha256=options.expected_artifact_sha256,
        expected_manifest_sha256=options.expected_manifest_sha256,
    )
    run.values.update(
        artifact_sha256=report.artifact_sha256,
        manifest_sha256=report.manifest_sha256,
        manifest=report.manifest,
    )
    verify_check = CheckResult("verify", report.ok, report.summary(), tuple(report.lines()))
    if report.ok and report.manifest is not None and report.manifest.version != options.version:
        verify_check = CheckResult(
            "verify",
            False,
            f"{options.manifest.name} is version {report.manifest.version}, not {options.version}",
        )

    if state.get("status") == PromotionStatus.PROMOTED and not verify_check.passed:
        # Nothing is written: the promoted version's state and evidence stay as they are.
        return _rejected(
            run, "verify", f"{options.version} is promoted; this run's inputs fail: {verify_check.summary}"
        )
    if (
        state.get("status") == PromotionStatus.PROMOTED
        and state.get("artifact_sha256") != report.artifact_sha256
    ):
        return _rejected(
            run,
            "idempotency",
            f"{options.version} was promoted from artifact {state.get('artifact_sha256')}, "
            f"not {report.artifact_sha256}: build a new version",
        )

    run.checks.append(verify_check)
    attempt = int(state.get("attempts", 0)) + 1
    base_state = {
        "version": options.version,
        "environment": settings.release_environment,
        "target": settings.release_target,
        "artifact": options.artifact.name,
        "artifact_sha256": report.artifact_sha256,
        "manifest_sha256": report.manifest_sha256,
        "catalog_version": report.manifest.catalog_version if report.manifest else "",
        "approved_by": options.approved_by,
        "attempts": attempt,
        "started_at": _iso(run.started_at),
    }
    if not verify_check.passed:
        _write_checks(run)
        _save_record(run, {**base_state, "status": PromotionStatus.REFUSED, "message": verify_check.summary})
        return run.result(
            PromotionStatus.REFUSED,
            f"promotion of {options.version} refused before deploy: {verify_check.summary}",
        )
    assert report.manifest is not None
    manifest = report.manifest

    # ---- what serves now is the target's word, not this directory's records
    health = deps.estimator.health()
    serving = deps.estimator.server_info() if health.serving else None
    if serving is not None and serving.version == options.version:
        return _already_serving(run, manifest, state, base_state, serving)

    # ---- deploy
    command = _substitute(
        settings.deploy_command or "",
        {"artifact": str(options.artifact), "version": options.version, "manifest": str(options.manifest)},
    )
    log.info("deploying %s: %s", options.version, command)
    deploy = deps.run_command(command, timeout_s=DEPLOY_TIMEOUT_S)
    (run.dir / "deploy.log").write_text(deploy.log_text(), encoding="utf-8")
    run.values.update(deploy=deploy, deployed_at=deploy.finished_at)
    status_text = "timed out" if deploy.returncode is None else f"exit {deploy.returncode}"
    run.checks.append(CheckResult("deploy", deploy.ok, f"deploy command {status_text}"))

    # ---- T+0 checks
    if deploy.ok:
        _t0_checks(run, manifest)
    _write_checks(run)
    failed = [c for c in run.checks if not c.passed]
    if not failed:
        return _promoted(run, base_state)
    return _refused(run, base_state, manifest, failed)


def _t0_checks(run: _Run, manifest: ReleaseManifest) -> None:
    deps, settings = run.deps, run.settings
    health = run.wait_serving()
    run.checks.append(
        CheckResult("health", health.serving, f"health {health.status} {health.detail}".rstrip())
    )
    if not health.serving:
        for name in ("version", "smoke", "regression", "rbac", "catalog", "slo"):
            run.checks.append(CheckResult(name, False, f"{name} not run: target not SERVING"))
        return
    info = deps.estimator.server_info()
    version = run.options.version
    served = info.describe() if info else "unknown (GetServerInfo failed)"
    version_ok = info is not None and info.version == version
    run.checks.append(CheckResult("version", version_ok, f"target serves {served}, expected {version}"))
    run.values["serving"] = info
    if info is not None and info.started_at is not None:
        run.values["deployed_at"] = info.started_at  # the release's own start: the gate's window
    smoke = deps.estimator.smoke()
    regression = deps.estimator.regression()
    (run.dir / "smoke-report.txt").write_text(smoke.report or smoke.summary, encoding="utf-8")
    (run.dir / "regression-report.txt").write_text(regression.report or regression.summary, encoding="utf-8")
    run.checks.append(CheckResult("smoke", smoke.ok, smoke.summary))
    run.checks.append(CheckResult("regression", regression.ok, regression.summary))
    probe = deps.estimator.probe()
    rbac_text = (
        f"rbac probe failed: {probe.error}"
        if probe.error
        else f"rbac viewer GetEstimate {probe.viewer_read_code}, "
        f"GetEvidenceBundle {probe.viewer_download_code} (expected OK, PERMISSION_DENIED)"
    )
    run.checks.append(CheckResult("rbac", probe.rbac_ok, rbac_text))
    catalog_ok = bool(probe.catalog_version) and probe.catalog_version == manifest.catalog_version
    run.checks.append(
        CheckResult(
            "catalog",
            catalog_ok,
            f"catalog served {short_sha(probe.catalog_version) if probe.catalog_version else 'unknown'}, "
            f"manifest {short_sha(manifest.catalog_version)}",
            (f"served {probe.catalog_version}", f"manifest {manifest.catalog_version}"),
        )
    )
    burst = deps.estimator.slo_burst(settings.release_slo_burst_requests)
    burst_slo = SloMeasurement("burst", burst.p95_ms, burst.error_rate, burst.p50_ms, burst.requests)
    prometheus: dict[str, Any] | None = None
    slo = burst_slo
    if deps.metrics is not None:
        since = run.values.get("deployed_at") or run.started_at
        slo, prometheus = measure_prometheus_slo(
            deps.metrics, deps.clock, deps.sleep, version=run.options.version, since=since
        )
        slo = SloMeasurement(slo.source, slo.p95_ms, slo.error_rate, burst.p50_ms, burst.requests, slo.note)
    run.checks.append(CheckResult("slo", slo.passed, slo.summary() + (f": {slo.note}" if slo.note else "")))
    snapshot = {
        "target": settings.release_target,
        "taken_at": _iso(deps.clock.now()),
        "gate": {
            "source": slo.source,
            "p95_ms": slo.p95_ms,
            "error_rate": slo.error_rate,
            "passed": slo.passed,
            "limits": {"p95_ms_max": P95_LIMIT_MS, "error_rate_below": ERROR_RATE_LIMIT},
        },
        "burst": {
            "rpc": burst.rpc,
            "requests": burst.requests,
            "p50_ms": burst.p50_ms,
            "p95_ms": burst.p95_ms,
            "error_rate": burst.error_rate,
            "codes": dict(burst.codes),
        },
        "prometheus": prometheus,
    }
    write_json(run.dir / "metrics-snapshot.json", snapshot)
    write_json(
        run.dir / "latency-samples.json",
        {"rpc": burst.rpc, "columns": ["t_s", "latency_ms"], "samples": [list(s) for s in burst.samples]},
    )
    run.values.update(
        smoke=smoke, regression=regression, probe=probe, slo=slo, burst=burst, metrics_snapshot=snapshot
    )


def _write_checks(run: _Run) -> None:
    write_json(
        run.dir / "checks.json",
        {
            "version": run.options.version,
            "target": run.settings.release_target,
            "at": _iso(run.deps.clock.now()),
            "passed": all(c.passed for c in run.checks),
            "checks": [c.to_dict() for c in run.checks],
            "smoke": run.values["smoke"].to_dict() if "smoke" in run.values else None,
            "regression": run.values["regression"].to_dict() if "regression" in run.values else None,
            "probe": run.values["probe"].to_dict() if "probe" in run.values else None,
        },
    )


def _file_deploy_issue(run: _Run, result: PromotionResult) -> tuple[IssueRef | None, str]:
    build = run.deps.deploy_draft or build_deploy_draft
    try:
        return run.deps.tracker.file(build(result, run.settings)), ""
    except TrackerError as exc:
        # The tracker owns its retries (docs/conventions.md §5); what reaches here is final for this run.
        return None, f"{exc} (retryable: {exc.retryable}); re-run promote to file it"


def _promoted(run: _Run, base_state: dict[str, Any]) -> PromotionResult:
    version = run.options.version
    state = {**base_state, "status": PromotionStatus.PROMOTED, "promoted_at": _iso(run.deps.clock.now())}
    _save_record(run, state)  # promoted before the issue: a tracker outage must not undo a deploy
    result = run.result(PromotionStatus.PROMOTED, f"promoted {version} to {run.settings.release_environment}")
    issue, error = _file_deploy_issue(run, result)
    if issue is not None:
        state.update(issue_key=issue.key, issue_url=issue.url)
        _save_record(run, state)
    summary = ", ".join(c.summary for c in run.checks if c.name in ("smoke", "regression", "slo"))
    message = f"promoted {version} to {run.settings.release_environment}: {summary}"
    if error:
        message += "; DEPLOY issue NOT filed"
    return run.result(PromotionStatus.PROMOTED, message, issue=issue, issue_error=error)


def _already_serving(
    run: _Run,
    manifest: ReleaseManifest,
    state: dict[str, Any],
    base_state: dict[str, Any],
    serving: ServerInfo,
) -> PromotionResult:
    """The target already serves this version: nothing is deployed, only what is missing is made.

    Promoted by a run recorded here: report it, and file the DEPLOY issue from the saved evidence if
    that run could not. Serving without a record here (an empty release directory, another
    operator, a manual ``kis-deploy``): the T+0 checks run against what serves (they leave no trace
    in production), and the record and the DEPLOY issue (the tracker finds an existing one) are
    made when they pass; when they fail nothing is deployed or rolled back — that is the incident
    workflow's call (``watch`` / ``rollback``), not a promotion's.
    """
    version = run.options.version
    known = {"", "unknown"}
    if (
        manifest.git_commit not in known
        and serving.commit not in known
        and serving.commit != manifest.git_commit
    ):
        return _rejected(
            run,
            "idempotency",
            f"the target serves {version} built from commit {serving.commit[:12]}, this artifact is "
            f"from {manifest.git_commit[:12]}: build a new version",
        )
    if state.get("status") == PromotionStatus.PROMOTED:
        return _already_promoted(run, state, serving)
    now = run.deps.clock.now()
    note = f"not deployed: the target already serves {serving.describe()}"
    (run.dir / "deploy.log").write_text(f"{_iso(now)} [runner] {note}\n", encoding="utf-8")
    run.checks.append(CheckResult("deploy", True, note))
    run.values.update(deployed_at=serving.started_at or now)
    _t0_checks(run, manifest)
    _write_checks(run)
    failed = [c for c in run.checks if not c.passed]
    if not failed:
        return _promoted(run, {**base_state, "adopted": True})
    reasons = "; ".join(c.summary for c in failed)
    message = (
        f"{version} already serves and fails its checks: {reasons}; nothing was deployed or rolled "
        f"back (kis-release watch / rollback decide); evidence in {run.dir}"
    )
    _save_record(
        run,
        {
            **base_state,
            "status": PromotionStatus.REFUSED,
            "refused_at": _iso(run.deps.clock.now()),
            "failed_checks": [c.name for c in failed],
            "rolled_back": False,
            "message": message,
        },
    )
    return run.result(PromotionStatus.REFUSED, message)


def _already_promoted(run: _Run, state: dict[str, Any], serving: ServerInfo) -> PromotionResult:
    """The re-run of a promoted version the target still serves: report, file a missing issue."""
    run.checks.append(CheckResult("version", True, f"target serves {serving.describe()} (as promoted)"))
    version = run.options.version
    message = (
        f"{version} already promoted to {run.settings.release_environment} at {state.get('promoted_at')}"
    )
    if state.get("issue_key"):
        known = IssueRef(str(state["issue_key"]), str(state.get("issue_url", "")), created=False)
        if known.key.startswith(PENDING_PREFIX):  # filed by an `outbox flush` since? then record its key
            with contextlib.suppress(TrackerError):
                found = run.deps.tracker.find(
                    deploy_idempotency_key(version, run.settings.release_environment)
                )
                if found is not None and not found.pending:
                    known = found
                    _save_record(run, {**state, "issue_key": found.key, "issue_url": found.url})
        return run.result(
            PromotionStatus.ALREADY_PROMOTED, f"{message}; DEPLOY issue {known.key}", issue=known
        )
    # Promoted by an earlier run that could not file the issue: file it now from the saved evidence.
    run.values.update(
        deployed_at=datetime.fromisoformat(str(state["promoted_at"]).replace("Z", "+00:00")),
        metrics_snapshot=read_json(run.dir / "metrics-snapshot.json") or {},
        **_saved_suites(run.dir),
    )
    issue, error = _file_deploy_issue(run, run.result(PromotionStatus.ALREADY_PROMOTED, message))
    if issue is not None:
        _save_record(run, {**state, "issue_key": issue.key, "issue_url": issue.url})
    return run.result(
        PromotionStatus.ALREADY_PROMOTED,
        f"{message}; DEPLOY issue {issue.key if issue else 'NOT filed'}",
        issue=issue,
        issue_error=error,
    )


def _saved_suites(directory: Path) -> dict[str, Any]:
    """SuiteResults rebuilt from checks.json and the saved reports (for a late DEPLOY issue)."""
    checks = read_json(directory / "checks.json") or {}
    out: dict[str, Any] = {}
    for name in ("smoke", "regression"):
        raw = checks.get(name)
        if isinstance(raw, dict):
            report_path = directory / f"{name}-report.txt"
            out[name] = SuiteResult(
                suite=name,
                passed=int(raw["passed"]),
                total=int(raw["total"]),
                skipped=int(raw["skipped"]),
                expected_total=int(raw["expected_total"]),
                failed_cases=tuple(raw["failed_cases"]),
                report=report_path.read_text(encoding="utf-8") if report_path.exists() else "",
            )
    probe = checks.get("probe")
    if isinstance(probe, dict):
        out["probe"] = ProbeResult(
            str(probe["estimate_id"]),
            str(probe["catalog_version"]),
            str(probe["viewer_read_code"]),
            str(probe["viewer_download_code"]),
            str(probe.get("error", "")),
        )
    samples = read_json(directory / "latency-samples.json")
    if samples:
        snapshot = read_json(directory / "metrics-snapshot.json") or {}
        codes = (snapshot.get("burst") or {}).get("codes") or {}
        out["burst"] = BurstResult(
            samples=tuple((float(t), float(ms)) for t, ms in samples["samples"]),
            codes=tuple(sorted((str(k), int(v)) for k, v in codes.items())),
        )
        gate = snapshot.get("gate") or {}
        if gate:
            out["slo"] = SloMeasurement(
                "prometheus" if gate.get("source") == "prometheus" else "burst",
                gate.get("p95_ms"),
                gate.get("error_rate"),
                out["burst"].p50_ms,
                out["burst"].requests,
            )
    return out


def _refused(
    run: _Run,
    base_state: dict[str, Any],
    manifest: ReleaseManifest,
    failed: Sequence[CheckResult],
) -> PromotionResult:
    settings, deps, version = run.settings, run.deps, run.options.version
    previous = _previous_promoted(settings.release_dir, version)
    previous_version = previous.version if previous else None
    rollback_cmd: CommandOutcome | None = None
    if settings.rollback_command:
        command = _substitute(
            settings.rollback_command,
            {
                "artifact": str(run.options.artifact),
                "version": version,
                "manifest": str(run.options.manifest),
            },
        )
        log.warning("promotion of %s failed (%s): rolling back: %s", version, failed[0].summary, command)
        rollback_cmd = deps.run_command(command, timeout_s=settings.rollback_budget_s)
        (run.dir / "rollback.log").write_text(rollback_cmd.log_text(), encoding="utf-8")
    health = run.wait_serving() if rollback_cmd is not None else None
    info = deps.estimator.server_info() if health is not None and health.serving else None
    if info is not None:
        previous_version = info.version  # what serves now is a fact; the records only a guess
    previous_running = bool(health and health.serving and info is not None and info.version != version)
    served = info.catalog_version if info else ""
    rollback = RollbackOutcome(rollback_cmd, health, served, previous_version, previous_running, info)
    reasons = "; ".join(c.summary for c in failed)
    if rollback_cmd is None:
        after = "NO rollback_command configured: the target may still run the candidate"
    elif not rollback_cmd.ok:
        after = (
            f"ROLLBACK FAILED ({'timed out' if rollback_cmd.returncode is None else rollback_cmd.returncode})"
        )
    else:
        state_text = "SERVING" if health and health.serving else f"{health.status if health else 'unknown'}"
        if info is not None and info.version == version:
            after = f"ROLLBACK FAILED: the target still serves {info.describe()} ({state_text})"
        else:
            who = info.describe() if info else previous_version or "the previous release"
            after = f"rolled back to {who} ({state_text})"
    message = f"promotion of {version} refused: {reasons}; {after}; evidence in {run.dir}"
    state = {
        **base_state,
        "status": PromotionStatus.REFUSED,
        "refused_at": _iso(deps.clock.now()),
        "failed_checks": [c.name for c in failed],
        "rolled_back": bool(rollback_cmd and rollback_cmd.ok),
        "previous_version": previous_version,
        "message": message,
    }
    _save_record(run, state)
    result = run.result(PromotionStatus.REFUSED, message, rollback=rollback)
    if deps.on_refused is None:
        return run.result(
            PromotionStatus.REFUSED,
            message + "; ROLLBACK issue NOT filed (incident workflow not wired): hand the evidence over",
            rollback=rollback,
        )
    try:
        issue = deps.on_refused(result)
    except TrackerError as exc:
        return run.result(
            PromotionStatus.REFUSED, f"{message}; ROLLBACK issue NOT filed: {exc}", rollback=rollback
        )
    if issue is not None:
        _save_record(run, {**state, "rollback_issue_key": issue.key})
    suffix = f"; ROLLBACK issue {issue.key}" if issue is not None else ""
    return run.result(PromotionStatus.REFUSED, message + suffix, rollback=rollback, issue=issue)


# ------------------------------------------------------------------------------------ DEPLOY issue


def _port(target: str) -> int:
    _, _, port = target.rpartition(":")
    return int(port) if port.isdigit() else 0


def deploy_report(result: PromotionResult, settings: WorkflowSettings) -> DeployReport:
    """The templates' context for the DEPLOY issue, from a successful promotion."""
    deploy_log = result.evidence_dir / "deploy.log"
    slo = result.slo
    return DeployReport(
        version=result.version,
        environment=result.environment,
        deployed_at=result.deployed_at or result.finished_at,
        artifact_sha256=result.artifact_sha256,
        manifest_sha256=result.manifest_sha256,
        smoke_passed=result.smoke.passed if result.smoke else 0,
        smoke_total=result.smoke.total if result.smoke else 0,
        regression_passed=result.regression.passed if result.regression else 0,
        regression_total=result.regression.total if result.regression else 0,
        rbac_ok=result.probe.rbac_ok if result.probe else False,
        p50_ms=slo.p50_ms if slo else None,
        p95_ms=slo.p95_ms if slo else None,
        error_rate_pct=slo.error_rate * 100.0 if slo and slo.error_rate is not None else None,
        slo_source=slo.source if slo else "burst",
        approved_by=result.approved_by,
        endpoint_url=settings.release_endpoint_url,
        port=_port(result.target),
        server_name=settings.release_server_name,
        dashboard_url=settings.dashboard_url,
        rollback_command=settings.rollback_command or "(none configured)",
        deploy_log=deploy_log.read_bytes() if deploy_log.exists() else b"",
        metrics_snapshot=dict(result.metrics_snapshot),
        regression_report=result.regression.report if result.regression else "",
        latency_samples=result.latency_samples,
        owners=Owners.from_settings(settings),
        hashes_verified=True,
        standby_minutes=max(settings.standby_checkpoints_min) if settings.standby_checkpoints_min else None,
        rollback_budget_s=settings.rollback_budget_s,
        changes=result.manifest.changes if result.manifest is not None else (),
    )


def build_deploy_draft(result: PromotionResult, settings: WorkflowSettings) -> IssueDraft:
    """The DEPLOY issue of ``kis_estimator.workflows.templates`` (idempotency key
    ``deploy:<version>:<environment>``)."""
    draft = deploy_issue(deploy_report(result, settings))
    assert draft.idempotency_key == deploy_idempotency_key(result.version, result.environment)
    return draft


# ------------------------------------------------------------------------------------ CLI entry point


def run_promote(
    settings: WorkflowSettings,
    options: PromoteOptions,
    out: TextIO,
    *,
    tracker: IssueTracker | None = None,
    estimator: EstimatorClient | None = None,
    run_command: CommandRunner | None = None,
    metrics: MetricsSource | None = None,
    clock: Clock | None = None,
    sleep: Callable[[float], None] | None = None,
    on_refused: Callable[[PromotionResult], IssueRef | None] | None = None,
    on_promoted: Callable[[PromotionResult], None] | None = None,
) -> int:
    """``kis-release promote``: prints the checks and the outcome; returns :attr:`PromotionResult.exit_code`.

    ``on_promoted`` runs after a new promotion (not for "already promoted"): the deployment notice.

    Defaults: the file tracker under ``tracker_dir`` (pass a JiraIssueTracker when ``jira_url`` is
    set), the gRPC client of ``release_target`` with ``release_token``/``release_viewer_token``, the
    shell runner, Prometheus when ``prometheus_url`` is set, the system clock and real sleep.
    """
    clock = clock or SystemClock()
    sleep = sleep or real_sleep
    if tracker is None:
        if settings.jira_url is not None:
            out.write("error: jira_url is set: the caller must pass the Jira tracker\n")
            return 2
        tracker = FileIssueTracker(
            settings.tracker_dir, TrackerOptions(project=settings.jira_project), clock=clock
        )
    owned: GrpcEstimatorClient | None = None
    if estimator is None:
        if not settings.release_token or not settings.release_viewer_token:
            out.write("error: KIS_RELEASE_TOKEN and KIS_RELEASE_VIEWER_TOKEN are needed for the T+0 checks\n")
            return 2
        runner = CandidateAcceptanceRunner(
            options.artifact, settings.release_dir / options.version / "candidate"
        )
        owned = GrpcEstimatorClient(
            settings.release_target,
            token=settings.release_token,
            viewer_token=settings.release_viewer_token,
            acceptance=runner,
        )
        estimator = owned
    if metrics is None and settings.prometheus_url:
        metrics = PrometheusSource(settings.prometheus_url, sleep=sleep)
    deps = PromoteDeps(
        tracker=tracker,
        estimator=estimator,
        run_command=run_command or ShellCommandRunner(clock),
        clock=clock,
        sleep=sleep,
        metrics=metrics,
        on_refused=on_refused,
    )
    try:
        result = promote(options, settings, deps)
    finally:
        if owned is not None:
            owned.close()
    out.write("".join(f"{line}\n" for line in result.lines()))
    if on_promoted is not None and result.status is PromotionStatus.PROMOTED:
        on_promoted(result)
    return result.exit_code
