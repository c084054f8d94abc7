"""Issue, comment and announcement text of the release and incident workflows (docs/conventions.md §5).

Every text a workflow files or sends is rendered here from a typed context, so tests assert on the
rendered text and the wording lives in one module. The shapes follow the GA-1.0.0 deployment notice
("KIS Estimator GA 1.0.0 - 배포 커뮤니케이션"; summarised in docs/release-notice.md): the DEPLOY and
ROLLBACK Jira templates, the "배포 완료 공지" and the T+0/15/30/60 operations checklist.

Choices where the notice is silent or contradicts itself:

- A DEPLOY issue is filed "In Progress", not "Done" as the template shows: the notice keeps the
  release under a 60-minute hot standby, and its T+60 items ("최종 상태 보고", "이슈 트래커
  업데이트") close the issue; ``kis_estimator.workflows.release.standby`` does that. A caller that
  runs no standby passes ``status="Done"``.
- The DEPLOY issue shows full SHA-256 values (searchable, verifiable); the announcement shortens them
  as the notice does (``first16...last4``).
- The notice writes the latency target both as "p95 ≤ 30ms" (SLO 목표) and "p95 < 30ms" (Jira
  Verification, T+15). Each line's mark is evaluated with the operator the line shows.
- SLO targets nothing measured (TAT median, auto-processing rate unless given) are marked
  "➖ (미측정)", never ✅: no data is not a passed check.
- A REVIEW verdict (the notice's "검토 후 롤백") files the ROLLBACK issue as "needs decision":
  nothing was done, so every action is unticked, and the summary and labels say so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

from kis_estimator.workflows.charts import breach_chart_png, latency_chart_png
from kis_estimator.workflows.clock import kst_text
from kis_estimator.workflows.release.artifacts import short_sha
from kis_estimator.workflows.settings import WorkflowSettings
from kis_estimator.workflows.tracker.protocol import (
    Attachment,
    Block,
    Check,
    Document,
    Field,
    IssueDraft,
    Section,
    Text,
)

__all__ = [
    "ERROR_RATE_SLO_PCT",
    "P95_SLO_MS",
    "Breach",
    "BreachChart",
    "CheckpointReport",
    "DeployReport",
    "IncidentReport",
    "Owners",
    "Probe",
    "Reading",
    "StandbySummary",
    "checkpoint_comment",
    "deploy_idempotency_key",
    "deploy_issue",
    "final_status_comment",
    "korean_announcement",
    "rollback_issue",
]

P95_SLO_MS = 30.0  # notice: "응답시간: p95 ≤ 30ms", Jira "Performance: p95 < 30ms"
ERROR_RATE_SLO_PCT = 0.5  # notice: "오류율: < 0.5%"
TAT_MEDIAN_SLO_S = 120.0  # notice: "TAT 중앙값: ≤ 2분"
AUTO_RATE_SLO_PCT = 70.0  # notice: "자동처리율: ≥ 70%"

NOTICE_SSL_NOTE = "Nginx 리버스 프록시 적용"

_ENVIRONMENT_KO = {"production": "프로덕션", "staging": "스테이징", "development": "개발"}
_OK, _FAIL, _UNMEASURED = "✅", "❌", "➖ (미측정)"


# ---------------------------------------------------------------------------------- contexts


@dataclass(frozen=True, slots=True)
class Owners:
    """Who owns a release: Jira assignee/watchers/components and the notice's 【담당자】 names."""

    assignee: str | None = None
    watchers: tuple[str, ...] = ()
    components: tuple[str, ...] = ()
    technical: str = "DevOps Team"  # 기술 책임
    monitoring: str = "Operations Team"  # 모니터링
    team: str = "KIS DevOps Team"  # the announcement's sign-off

    @classmethod
    def from_settings(cls, settings: WorkflowSettings) -> Owners:
        """The assignee is the technical owner and the watchers monitor; unset, the notice's teams."""
        return cls(
            assignee=settings.jira_assignee,
            watchers=settings.jira_watchers,
            components=settings.jira_components,
            technical=settings.jira_assignee or "DevOps Team",
            monitoring=", ".join(settings.jira_watchers) or "Operations Team",
        )


@dataclass(frozen=True, slots=True)
class DeployReport:
    """What a successful promotion measured and produced; ``deployed_at`` is timezone-aware."""

    version: str
    environment: str
    deployed_at: datetime
    artifact_sha256: str
    manifest_sha256: str
    smoke_passed: int
    smoke_total: int
    regression_passed: int
    regression_total: int
    rbac_ok: bool
    p50_ms: float | None
    p95_ms: float | None
    error_rate_pct: float | None
    slo_source: Literal["prometheus", "burst"]
    approved_by: str | None
    endpoint_url: str
    port: int
    server_name: str
    dashboard_url: str
    rollback_command: str
    deploy_log: bytes
    metrics_snapshot: Mapping[str, object]
    regression_report: str
    latency_samples: Sequence[tuple[float, float]]  # (seconds since the check started, latency ms)
    owners: Owners = field(default_factory=Owners)
    hashes_verified: bool = True  # artifact and manifest SHA-256 matched before the deploy
    tat_median_s: float | None = None
    auto_rate_pct: float | None = None
    standby_minutes: int | None = 60  # length of the hot standby; None: no standby runs
    rollback_budget_s: float = 180.0
    changes: tuple[str, ...] = ()  # the release's change list (manifest), for the Korean notice
    regression_report_name: str = "regression-report.txt"
    tls_termination: str = NOTICE_SSL_NOTE  # what the notice's "SSL:" line says for an https endpoint

    def __post_init__(self) -> None:
        if self.deployed_at.tzinfo is None:
            raise ValueError("DeployReport.deployed_at must be timezone-aware")


@dataclass(frozen=True, slots=True)
class Breach:
    """One breached rollback criterion, e.g. ``Breach("P95 > 200ms (5분 지속)", 340.2, 200, "ms", 360)``."""

    criterion: str  # the rule as the notice states it
    observed: float
    threshold: float
    unit: str
    sustained_s: float | None = None


@dataclass(frozen=True, slots=True)
class BreachChart:
    """A breaching series to draw against its threshold; x is a datetime or seconds."""

    name: str  # attachment stem, e.g. "p95-latency"
    title: str
    unit: str
    threshold: float | None  # None: not a level on the value axis (a trend criterion)
    series: tuple[tuple[str, tuple[tuple[datetime | float, float], ...]], ...]


@dataclass(frozen=True, slots=True)
class IncidentReport:
    """A rollback (or a REVIEW verdict awaiting a decision) and what actually happened."""

    incident_id: str
    from_version: str
    to_version: str
    detected_at: datetime
    breaches: tuple[Breach, ...]
    error_rate_pct: float | None
    http_5xx_per_min: float | None
    p95_ms: float | None
    metrics_snapshot: Mapping[str, object]
    error_log: bytes = b""
    charts: tuple[BreachChart, ...] = ()
    rollback_log: bytes | None = None
    service_stopped: bool = False
    rollback_executed: bool = False
    previous_version_running: bool = False
    smoke_passed: int = 0
    smoke_total: int = 0
    needs_decision: bool = False  # REVIEW verdict: nothing was rolled back yet
    rollback_command: str = ""
    owners: Owners = field(default_factory=Owners)

    def __post_init__(self) -> None:
        if self.detected_at.tzinfo is None:
            raise ValueError("IncidentReport.detected_at must be timezone-aware")


@dataclass(frozen=True, slots=True)
class Reading:
    """A checkpoint threshold ``label < limit``; ``value=None`` is no data, never a pass."""

    label: str  # "P95", "Error rate", "Memory", "CPU"
    value: float | None
    limit: float
    unit: str  # "ms" | "%"

    @property
    def ok(self) -> bool:
        return self.value is not None and self.value < self.limit

    def text(self) -> str:
        measured = "no data" if self.value is None else _number(self.value, self.unit)
        return f"{self.label} < {self.limit:g}{self.unit}: {measured}"


@dataclass(frozen=True, slots=True)
class Probe:
    """A yes/no checkpoint item (dashboard, alerting); ``ok=None``: not configured, not counted."""

    text: str
    ok: bool | None


@dataclass(frozen=True, slots=True)
class CheckpointReport:
    """One hot-standby checkpoint, T+``minute`` after the deploy."""

    version: str
    minute: int
    due_at: datetime
    measured_at: datetime
    readings: tuple[Reading, ...]
    regression: tuple[int, int] | None = None  # (passed, total) when re-run at this checkpoint
    probes: tuple[Probe, ...] = ()

    @property
    def regression_ok(self) -> bool:
        return self.regression is None or _all_passed(*self.regression)

    @property
    def ok(self) -> bool:
        return (
            all(r.ok for r in self.readings)
            and self.regression_ok
            and all(p.ok is not False for p in self.probes)
        )

    def failures(self) -> list[str]:
        """The breached items, with numbers, in checklist order."""
        out = [r.text() for r in self.readings if not r.ok]
        if not self.regression_ok and self.regression is not None:
            out.append(f"Regression tests: {self.regression[0]}/{self.regression[1]} passed")
        out += [p.text for p in self.probes if p.ok is False]
        return out


@dataclass(frozen=True, slots=True)
class StandbySummary:
    version: str
    environment: str
    deployed_at: datetime
    ended_at: datetime
    checkpoints: tuple[CheckpointReport, ...]
    rollback_command: str = ""

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checkpoints)


# ---------------------------------------------------------------------------------- helpers


def deploy_idempotency_key(version: str, environment: str) -> str:
    return f"deploy:{version}:{environment}"


def _number(value: float, unit: str) -> str:
    return f"{value:.2f}{unit}" if unit == "%" else f"{value:.1f}{unit}"


def _maybe(value: float | None, unit: str) -> str:
    return "no data" if value is None else _number(value, unit)


def _all_passed(passed: int, total: int) -> bool:
    return total > 0 and passed == total


def _json_bytes(data: Mapping[str, object]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n").encode()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-") or "x"


# ---------------------------------------------------------------------------------- DEPLOY


def _performance_text(report: DeployReport) -> str:
    measured = f"p95 {_maybe(report.p95_ms, 'ms')}, p50 {_maybe(report.p50_ms, 'ms')}"
    return f"Performance: p95 < {P95_SLO_MS:g}ms (measured {measured}; source: {report.slo_source})"


def deploy_issue(report: DeployReport, *, status: str = "In Progress") -> IssueDraft:
    """The seed's "배포 완료 이슈" with the real results, evidence attached (see module doc on status)."""
    subject, announcement = korean_announcement(report)
    chart = latency_chart_png(
        report.latency_samples, title=f"KIS Estimator {report.version} latency (p50/p95)"
    )
    attachments = (
        Attachment("deploy.log", report.deploy_log, "text/plain"),
        Attachment("metrics-snapshot.json", _json_bytes(report.metrics_snapshot), "application/json"),
        Attachment("latency-p50-p95.png", chart, "image/png"),
        Attachment(report.regression_report_name, report.regression_report.encode(), "text/plain"),
        Attachment(
            "release-announcement-ko.txt", f"제목: {subject}\n\n{announcement}".encode(), "text/plain"
        ),
    )
    body = Document(
        (
            Section(
                "Description",
                (
                    Field("Version", report.version),
                    Field("Environment", report.environment),
                    Field("Deploy Time", kst_text(report.deployed_at)),
                    Field("Artifact SHA", report.artifact_sha256),
                    Field("Manifest SHA", report.manifest_sha256),
                    Field("Approved by", report.approved_by or "(none)"),
                    Field(
                        "Endpoint", f"{report.endpoint_url} (server {report.server_name}, port {report.port})"
                    ),
                ),
            ),
            Section(
                "Verification",
                (
                    Check(
                        _all_passed(report.smoke_passed, report.smoke_total),
                        f"Smoke tests: {report.smoke_passed}/{report.smoke_total} passed",
                    ),
                    Check(
                        _all_passed(report.regression_passed, report.regression_total),
                        f"Regression tests: {report.regression_passed}/{report.regression_total} passed",
                    ),
                    Check(report.rbac_ok, f"RBAC validation: {'passed' if report.rbac_ok else 'failed'}"),
                    Check(
                        report.p95_ms is not None and report.p95_ms < P95_SLO_MS, _performance_text(report)
                    ),
                ),
            ),
            Section(
                "Evidence",
                (
                    Field("Deploy script log", "deploy.log [attached]"),
                    Field("Monitoring snapshot", "metrics-snapshot.json [attached]"),
                    Field("Latency chart", "latency-p50-p95.png [attached]"),
                    Field("Regression report", f"{report.regression_report_name} [attached]"),
                    Field("Release announcement", "release-announcement-ko.txt [attached]"),
                ),
            ),
        )
    )
    return IssueDraft(
        idempotency_key=deploy_idempotency_key(report.version, report.environment),
        summary=f"[DEPLOY] KIS Estimator {report.version} - {report.environment}",
        body=body,
        issue_type="Deployment",
        priority="High",
        labels=("kis-deploy", f"env-{_slug(report.environment)}"),
        attachments=attachments,
        status=status,
        assignee=report.owners.assignee,
        watchers=report.owners.watchers,
        components=report.owners.components,
    )


# ---------------------------------------------------------------------------------- 배포 완료 공지


def _mark(ok: bool) -> str:
    return _OK if ok else _FAIL


def _slo_line(label: str, target: str, ok: bool | None, measured: str) -> str:
    if ok is None:
        return f"• {label}: {target} {_UNMEASURED}"
    return f"• {label}: {target} {_mark(ok)} (실측 {measured})"


def _budget_ko(seconds: float) -> str:
    return f"{round(seconds) // 60}분" if round(seconds) % 60 == 0 else f"{round(seconds)}초"


def korean_announcement(report: DeployReport) -> tuple[str, str]:
    """(subject, body) of the notice's "배포 완료 공지", with the real values and ✅/❌ per result.

    【주요 변경사항】 lists the release's own changes (its manifest's ``changes``: the CHANGELOG.md
    section of the version, else its newest commit subjects).
    """
    changes = report.changes or (f"변경 사항 목록 없음 (CHANGELOG.md에 {report.version} 항목이 없습니다)",)
    env_ko = _ENVIRONMENT_KO.get(report.environment.lower(), report.environment)
    p95, err = report.p95_ms, report.error_rate_pct
    tat, auto = report.tat_median_s, report.auto_rate_pct
    ssl = report.tls_termination if report.endpoint_url.startswith("https://") else "미적용 (HTTP 엔드포인트)"
    standby = (
        f"{report.standby_minutes}분간 집중 모니터링 중"
        if report.standby_minutes
        else "미실행 (핫스탠바이 없음)"
    )
    language = "powershell" if ".ps1" in report.rollback_command else "bash"
    lines = [
        "안녕하세요, KIS 팀 여러분",
        "",
        f"KIS Estimator {report.version} 버전이 {env_ko} 환경에 성공적으로 배포되었습니다.",
        "",
        "【배포 정보】",
        f"• 버전: {report.version}",
        f"• 배포 시간: {kst_text(report.deployed_at)}",
        f"• 서버: {report.server_name}",
        f"• 엔드포인트: {report.endpoint_url}",
        f"• 내부 포트: {report.port}",
        f"• SSL: {ssl}",
        "",
        "【주요 변경사항】",
        *(f"• {change}" for change in changes),
        "",
        "【SLO 목표】",
        _slo_line(
            "응답시간",
            f"p95 ≤ {P95_SLO_MS:g}ms",
            None if p95 is None else p95 <= P95_SLO_MS,
            _maybe(p95, "ms"),
        ),
        _slo_line(
            "오류율",
            f"< {ERROR_RATE_SLO_PCT:g}%",
            None if err is None else err < ERROR_RATE_SLO_PCT,
            _maybe(err, "%"),
        ),
        _slo_line(
            "TAT 중앙값",
            f"≤ {TAT_MEDIAN_SLO_S / 60:g}분",
            None if tat is None else tat <= TAT_MEDIAN_SLO_S,
            "" if tat is None else _duration(tat),
        ),
        _slo_line(
            "자동처리율",
            f"≥ {AUTO_RATE_SLO_PCT:g}%",
            None if auto is None else auto >= AUTO_RATE_SLO_PCT,
            _maybe(auto, "%"),
        ),
        "",
        "【보안 정책】",
        "• Evidence ZIP: 관리자 전용 (ADMIN_ONLY)",
        "• MIXED 브랜드 예외: 월 2건 제한",
        "• 감사 로그: 모든 Evidence 다운로드 기록",
        "",
        "【검증 완료】",
        f"• 아티팩트 SHA256: {short_sha(report.artifact_sha256)} {_mark(report.hashes_verified)}",
        f"• 매니페스트 SHA256: {short_sha(report.manifest_sha256)} {_mark(report.hashes_verified)}",
        f"• 스모크 테스트: {report.smoke_passed}/{report.smoke_total} 통과 "
        f"{_mark(_all_passed(report.smoke_passed, report.smoke_total))}",
        f"• 회귀 테스트: {report.regression_passed}/{report.regression_total} 통과 "
        f"{_mark(_all_passed(report.regression_passed, report.regression_total))}",
        "",
        "【모니터링】",
        f"• 대시보드: {report.dashboard_url}",
        "• 알람 설정: p95>50ms, 5xx>5/분, MIXED 초과",
        f"• 핫스탠바이: {standby}",
        "",
        "【장애 대응】",
        f"긴급 상황 시 {_budget_ko(report.rollback_budget_s)} 내 롤백 가능:",
        f"```{language}",
        report.rollback_command,
        "```",
        "",
        "【담당자】",
        f"• 배포 승인: {report.approved_by or '(승인 기록 없음)'}",
        f"• 기술 책임: {report.owners.technical}",
        f"• 모니터링: {report.owners.monitoring}",
        "",
        "감사합니다.",
        report.owners.team,
    ]
    subject = f"[{report.version}] KIS 견적 API {env_ko} 배포 완료"
    return subject, "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- ROLLBACK


def _breach_text(breach: Breach) -> str:
    sustained = f" for {_duration(breach.sustained_s)}" if breach.sustained_s is not None else ""
    return (
        f"{breach.criterion}: observed {breach.observed:g} {breach.unit}{sustained} "
        f"(threshold {breach.threshold:g} {breach.unit})"
    )


def rollback_issue(report: IncidentReport) -> IssueDraft:
    """The seed's "롤백 이슈 템플릿"; a REVIEW verdict gives the unticked "needs decision" variant."""
    decided = not report.needs_decision
    smoke = f" ({report.smoke_passed}/{report.smoke_total})" if report.smoke_total and decided else ""
    impact = (
        f"error rate {_maybe(report.error_rate_pct, '%')}, "
        f"5xx {'no data' if report.http_5xx_per_min is None else f'{report.http_5xx_per_min:g}/min'}, "
        f"p95 {_maybe(report.p95_ms, 'ms')}"
    )
    issue: list[Block] = [
        Field("Time", kst_text(report.detected_at)),
        Field("Symptom", "; ".join(_breach_text(b) for b in report.breaches) or "(no criterion recorded)"),
        Field("Impact", impact),
    ]
    if not decided:
        command = f" with {report.rollback_command}" if report.rollback_command else ""
        issue.append(
            Field("Decision", f"needed (검토 후 롤백): roll back{command}, or close with the reason")
        )

    charts = tuple(
        Attachment(
            f"breach-{_slug(c.name)}.png",
            breach_chart_png(list(c.series), c.threshold, title=c.title, unit=c.unit),
            "image/png",
        )
        for c in report.charts
    )
    attachments: list[Attachment] = []
    if report.error_log:
        attachments.append(Attachment("error.log", report.error_log, "text/plain"))
    attachments.append(
        Attachment("metrics-snapshot.json", _json_bytes(report.metrics_snapshot), "application/json")
    )
    attachments += charts
    if report.rollback_log is not None:
        attachments.append(Attachment("rollback.log", report.rollback_log, "text/plain"))

    if report.rollback_log is not None:
        rollback_evidence = "rollback.log [attached]"
    else:
        rollback_evidence = "not run (needs decision)" if not decided else "none captured"
    metrics_evidence = ", ".join(["metrics-snapshot.json", *(a.name for a in charts)]) + " [attached]"

    body = Document(
        (
            Section("Issue", tuple(issue)),
            Section(
                "Actions",
                (
                    Check(decided and report.service_stopped, "Service stopped"),
                    Check(decided and report.rollback_executed, "Rollback executed"),
                    Check(decided and report.previous_version_running, "Previous version running"),
                    Check(
                        decided and _all_passed(report.smoke_passed, report.smoke_total),
                        f"Smoke tests passed{smoke}",
                    ),
                ),
            ),
            Section(
                "Evidence",
                (
                    Field("Error logs", "error.log [attached]" if report.error_log else "none captured"),
                    Field("Metrics", metrics_evidence),
                    Field("Rollback log", rollback_evidence),
                ),
            ),
            Section("Root Cause", (Text("[To be investigated]"),)),
            Section("Prevention", (Text("[To be determined]"),)),
        )
    )
    summary = f"[ROLLBACK] KIS Estimator {report.from_version} → {report.to_version}"
    labels: tuple[str, ...] = ("kis-incident", "kis-rollback")
    if not decided:
        summary += " (needs decision)"
        labels += ("needs-decision",)
    return IssueDraft(
        idempotency_key=f"incident:{report.incident_id}",
        summary=summary,
        body=body,
        issue_type="Incident",
        priority="Critical",
        labels=labels,
        attachments=tuple(attachments),
        status="In Progress",
        assignee=report.owners.assignee,
        watchers=report.owners.watchers,
        components=report.owners.components,
    )


# ---------------------------------------------------------------------------------- hot standby


def _when(report: CheckpointReport) -> str:
    late_s = (report.measured_at - report.due_at).total_seconds()
    late = f", {_duration(late_s)} after it was due" if late_s >= 60 else ""
    return f"Measured at {kst_text(report.measured_at)}{late}."


def checkpoint_comment(report: CheckpointReport) -> Document:
    """One comment per checkpoint: the notice's T+15 thresholds, plus the T+30 items where run."""
    verdict = "OK: all checks passed." if report.ok else "BREACH: " + "; ".join(report.failures()) + "."
    checks: list[Block] = [Check(r.ok, r.text()) for r in report.readings]
    if report.regression is not None:
        passed, total = report.regression
        checks.append(Check(report.regression_ok, f"Regression tests re-run: {passed}/{total} passed"))
    for probe in report.probes:
        checks.append(
            Check(probe.ok, probe.text) if probe.ok is not None else Text(f"{probe.text}: not configured")
        )
    return Document(
        (
            Section(
                f"Hot standby T+{report.minute} — {report.version}",
                (Text(_when(report)), Text(verdict)),
            ),
            Section("Checks", tuple(checks)),
        )
    )


def final_status_comment(summary: StandbySummary) -> Document:
    """The T+60 final status report; says whether the issue is being closed and why not."""
    minutes = round((summary.ended_at - summary.deployed_at).total_seconds() / 60)
    items: list[Block] = [
        Check(c.ok, f"T+{c.minute}: " + ("passed" if c.ok else "breached: " + "; ".join(c.failures())))
        for c in summary.checkpoints
    ]
    if summary.ok:
        outcome = "All checkpoints passed; closing the issue (Done)."
    else:
        breached = sum(not c.ok for c in summary.checkpoints)
        command = f" Rollback: {summary.rollback_command}" if summary.rollback_command else ""
        outcome = (
            f"{breached} of {len(summary.checkpoints)} checkpoints breached; the issue stays open "
            f"for a decision.{command}"
        )
    return Document(
        (
            Section(
                f"Hot standby final status — {summary.version} ({summary.environment})",
                (
                    Text(
                        f"Deployed {kst_text(summary.deployed_at)}; hot standby ended "
                        f"{kst_text(summary.ended_at)} (T+{minutes})."
                    ),
                    Text(outcome),
                ),
            ),
            Section("Checkpoints", tuple(items)),
            Section(
                "T+60",
                (
                    Check(True, "Hot standby ended"),
                    Check(True, "Final status report posted"),
                    Check(
                        summary.ok,
                        "Issue closed (Done)" if summary.ok else "Issue closed: no, breaches need a decision",
                    ),
                ),
            ),
        )
    )


# ------------------------------------------------------------------------- incident comments


PAGE_PRIORITY = "Blocker"
PAGE_LABELS = ("rollback-failed", "page-oncall")


@dataclass(frozen=True, slots=True)
class RollbackAttempt:
    """What one rollback attempt did, for the ROLLBACK issue's comments and FAILED banner."""

    attempt: int
    from_version: str
    to_version: str | None
    verified: bool
    failure: str  # why it is not verified ("" when verified)
    command_ok: bool
    health: str
    smoke_passed: int
    smoke_total: int
    detection_to_verified_s: float | None
    log_name: str


def paged_rollback_issue(draft: IssueDraft, attempt: RollbackAttempt) -> IssueDraft:
    """The FAILED decoration of a ROLLBACK issue: summary, priority, labels, a first section nobody misses."""
    banner = Section(
        "ROLLBACK FAILED",
        (
            Text(
                f"Rollback #{attempt.attempt} {attempt.from_version} → {attempt.to_version or '?'} "
                f"FAILED: {attempt.failure}. On-call is paged; "
                f"the service may still run {attempt.from_version}."
            ),
            Field("Retry", "kis-release rollback --issue <this issue> (after fixing the cause)"),
        ),
    )
    return replace(
        draft,
        summary=f"{draft.summary} — ROLLBACK FAILED",
        priority=PAGE_PRIORITY,
        labels=tuple(dict.fromkeys((*draft.labels, *PAGE_LABELS))),
        body=Document((banner, *draft.body.sections)),
    )


def rollback_comment(attempt: RollbackAttempt, by: str) -> Document:
    """The comment a rollback attempt posts on its incident's issue (the Actions, ticked from facts)."""
    outcome = "verified" if attempt.verified else "FAILED: " + attempt.failure
    head = (
        f"Rollback #{attempt.attempt} {attempt.from_version} → {attempt.to_version or '?'} ({by}) {outcome}."
    )
    blocks: list[Block] = [
        Text(head),
        Check(attempt.command_ok, "Service stopped"),
        Check(attempt.command_ok, "Rollback executed"),
        Check(attempt.command_ok and attempt.health == "SERVING", "Previous version running"),
        Check(
            attempt.smoke_total > 0 and attempt.smoke_passed == attempt.smoke_total,
            f"Smoke tests passed ({attempt.smoke_passed}/{attempt.smoke_total})",
        ),
    ]
    if attempt.detection_to_verified_s is not None:
        blocks.append(Field("Detection → verified", f"{attempt.detection_to_verified_s:.1f} s"))
    blocks.append(Field("Rollback log", f"{attempt.log_name or 'none'} [attached]"))
    heading = "Rollback executed" if attempt.verified else "ROLLBACK FAILED"
    return Document((Section(heading, tuple(blocks)),))


def reevaluation_comment(
    detected_at: datetime, source: str, summary: str, details: Sequence[str], verdict: str
) -> Document:
    """A repeated evaluation or alert on an open incident: a comment, never a new issue."""
    blocks: list[Block] = [
        Field("Time", kst_text(detected_at)),
        Field("Source", source),
        Text(summary),
        *(Text(line) for line in details),
    ]
    return Document((Section(f"Re-evaluation: {verdict}", tuple(blocks)),))
