"""Issue and announcement text (workflows/templates.py), asserted on the rendered text
(docs/conventions.md §5)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kis_estimator.workflows.settings import WorkflowSettings
from kis_estimator.workflows.templates import (
    Breach,
    BreachChart,
    DeployReport,
    IncidentReport,
    Owners,
    deploy_issue,
    korean_announcement,
    rollback_issue,
)
from kis_estimator.workflows.tracker.protocol import Document, Section
from kis_estimator.workflows.tracker.render import render_markdown

DEPLOYED_AT = datetime(2025, 9, 23, 3, 0, tzinfo=UTC)  # 12:00:00 KST, the notice's deploy time
ARTIFACT_SHA = "0de4aaa84955cdda" + "ab" * 22 + "d451"
MANIFEST_SHA = "d5ca39db9e764539" + "cd" * 22 + "27a1"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


GA_CHANGES = (  # the GA-1.0.0 notice's change list, as CHANGELOG.md records it for 1.0.0
    "회귀 테스트 확대 (20→40 케이스)",
    "Evidence 번들러 실제 구현 (ZIP 생성)",
    "릴리스 승격 가드 시스템 도입",
    "RBAC 권한 체계 적용",
)


def deploy_report(**changes: Any) -> DeployReport:
    report = DeployReport(
        changes=GA_CHANGES,
        version="GA-1.0.0",
        environment="Production",
        deployed_at=DEPLOYED_AT,
        artifact_sha256=ARTIFACT_SHA,
        manifest_sha256=MANIFEST_SHA,
        smoke_passed=3,
        smoke_total=3,
        regression_passed=40,
        regression_total=40,
        rbac_ok=True,
        p50_ms=8.2,
        p95_ms=12.44,
        error_rate_pct=0.0,
        slo_source="burst",
        approved_by="CEO",
        endpoint_url="https://kis.example.com/v1/",
        port=8787,
        server_name="prod-kis-01",
        dashboard_url="http://monitor.kis.local/estimator",
        rollback_command="kis-release rollback --to 0.9.0 --force",
        deploy_log=b"deploying GA-1.0.0\ndone\n",
        metrics_snapshot={"p95_ms": 12.44, "error_rate_pct": 0.0, "source": "burst", "requests": 200},
        regression_report="40/40 cases passed\n",
        latency_samples=[(i * 0.05, 8.0 + (i % 7)) for i in range(200)],
        owners=Owners(assignee="devops-lead", watchers=("ops-1", "ops-2"), components=("estimator",)),
    )
    return dataclasses.replace(report, **changes)


def section(doc: Document, heading: str) -> Section:
    return next(s for s in doc.sections if s.heading == heading)


def rendered_section(doc: Document, heading: str) -> list[str]:
    return render_markdown(Document((section(doc, heading),))).splitlines()[2:]


# ---------------------------------------------------------------------------------- DEPLOY


def test_deploy_issue_fills_the_seed_template_with_the_real_results() -> None:
    draft = deploy_issue(deploy_report())

    assert (draft.summary, draft.issue_type, draft.priority, draft.status) == (
        "[DEPLOY] KIS Estimator GA-1.0.0 - Production",
        "Deployment",
        "High",
        "In Progress",
    )
    assert draft.idempotency_key == "deploy:GA-1.0.0:Production"
    assert draft.labels == ("kis-deploy", "env-production")
    assert (draft.assignee, draft.watchers, draft.components) == (
        "devops-lead",
        ("ops-1", "ops-2"),
        ("estimator",),
    )
    assert render_markdown(draft.body) == (
        "## Description\n\n"
        "- Version: GA-1.0.0\n"
        "- Environment: Production\n"
        "- Deploy Time: 2025-09-23 12:00:00 KST\n"
        f"- Artifact SHA: {ARTIFACT_SHA}\n"
        f"- Manifest SHA: {MANIFEST_SHA}\n"
        "- Approved by: CEO\n"
        "- Endpoint: https://kis.example.com/v1/ (server prod-kis-01, port 8787)\n\n"
        "## Verification\n\n"
        "- [x] Smoke tests: 3/3 passed\n"
        "- [x] Regression tests: 40/40 passed\n"
        "- [x] RBAC validation: passed\n"
        "- [x] Performance: p95 \\< 30ms (measured p95 12.4ms, p50 8.2ms; source: burst)\n\n"
        "## Evidence\n\n"
        "- Deploy script log: deploy.log \\[attached\\]\n"
        "- Monitoring snapshot: metrics-snapshot.json \\[attached\\]\n"
        "- Latency chart: latency-p50-p95.png \\[attached\\]\n"
        "- Regression report: regression-report.txt \\[attached\\]\n"
        "- Release announcement: release-announcement-ko.txt \\[attached\\]\n"
    )


VERIFICATION_CASES = [
    pytest.param(
        {},
        [
            "- [x] Smoke tests: 3/3 passed",
            "- [x] Regression tests: 40/40 passed",
            "- [x] RBAC validation: passed",
            "- [x] Performance: p95 \\< 30ms (measured p95 12.4ms, p50 8.2ms; source: burst)",
        ],
        id="all-passed",
    ),
    pytest.param(
        {"regression_passed": 38},
        [
            "- [x] Smoke tests: 3/3 passed",
            "- [ ] Regression tests: 38/40 passed",
            "- [x] RBAC validation: passed",
            "- [x] Performance: p95 \\< 30ms (measured p95 12.4ms, p50 8.2ms; source: burst)",
        ],
        id="regression-38-of-40",
    ),
    pytest.param(
        {"smoke_passed": 2, "rbac_ok": False, "p95_ms": 31.0, "slo_source": "prometheus"},
        [
            "- [ ] Smoke tests: 2/3 passed",
            "- [x] Regression tests: 40/40 passed",
            "- [ ] RBAC validation: failed",
            "- [ ] Performance: p95 \\< 30ms (measured p95 31.0ms, p50 8.2ms; source: prometheus)",
        ],
        id="smoke-rbac-and-p95-failed",
    ),
    pytest.param(
        {"p95_ms": 30.0},
        [
            "- [x] Smoke tests: 3/3 passed",
            "- [x] Regression tests: 40/40 passed",
            "- [x] RBAC validation: passed",
            "- [ ] Performance: p95 \\< 30ms (measured p95 30.0ms, p50 8.2ms; source: burst)",
        ],
        id="p95-exactly-30-is-not-below-30",
    ),
    pytest.param(
        {"p95_ms": None, "p50_ms": None, "regression_passed": 0, "regression_total": 0},
        [
            "- [x] Smoke tests: 3/3 passed",
            "- [ ] Regression tests: 0/0 passed",
            "- [x] RBAC validation: passed",
            "- [ ] Performance: p95 \\< 30ms (measured p95 no data, p50 no data; source: burst)",
        ],
        id="no-data-is-never-a-pass",
    ),
]


@pytest.mark.parametrize(("changes", "expected"), VERIFICATION_CASES)
def test_verification_checklist_is_ticked_from_the_actual_results(
    changes: dict[str, Any], expected: list[str]
) -> None:
    assert rendered_section(deploy_issue(deploy_report(**changes)).body, "Verification") == expected


def test_deploy_issue_attaches_log_snapshot_chart_report_and_announcement() -> None:
    report = deploy_report()
    draft = deploy_issue(report, status="Done")

    assert draft.status == "Done"
    assert [(a.name, a.content_type) for a in draft.attachments] == [
        ("deploy.log", "text/plain"),
        ("metrics-snapshot.json", "application/json"),
        ("latency-p50-p95.png", "image/png"),
        ("regression-report.txt", "text/plain"),
        ("release-announcement-ko.txt", "text/plain"),
    ]
    log, snapshot, chart, regression, announcement = (a.data for a in draft.attachments)
    assert log == b"deploying GA-1.0.0\ndone\n"
    assert json.loads(snapshot) == {
        "p95_ms": 12.44,
        "error_rate_pct": 0.0,
        "source": "burst",
        "requests": 200,
    }
    assert chart.startswith(PNG_SIGNATURE)
    assert regression == b"40/40 cases passed\n"
    subject, body = korean_announcement(report)
    assert announcement.decode() == f"제목: {subject}\n\n{body}"


# ---------------------------------------------------------------------------------- 배포 완료 공지


def test_announcement_reproduces_the_notice_with_the_real_values() -> None:
    subject, body = korean_announcement(deploy_report())

    assert subject == "[GA-1.0.0] KIS 견적 API 프로덕션 배포 완료"
    assert body == (
        "안녕하세요, KIS 팀 여러분\n"
        "\n"
        "KIS Estimator GA-1.0.0 버전이 프로덕션 환경에 성공적으로 배포되었습니다.\n"
        "\n"
        "【배포 정보】\n"
        "• 버전: GA-1.0.0\n"
        "• 배포 시간: 2025-09-23 12:00:00 KST\n"
        "• 서버: prod-kis-01\n"
        "• 엔드포인트: https://kis.example.com/v1/\n"
        "• 내부 포트: 8787\n"
        "• SSL: Nginx 리버스 프록시 적용\n"
        "\n"
        "【주요 변경사항】\n"
        "• 회귀 테스트 확대 (20→40 케이스)\n"
        "• Evidence 번들러 실제 구현 (ZIP 생성)\n"
        "• 릴리스 승격 가드 시스템 도입\n"
        "• RBAC 권한 체계 적용\n"
        "\n"
        "【SLO 목표】\n"
        "• 응답시간: p95 ≤ 30ms ✅ (실측 12.4ms)\n"
        "• 오류율: < 0.5% ✅ (실측 0.00%)\n"
        "• TAT 중앙값: ≤ 2분 ➖ (미측정)\n"
        "• 자동처리율: ≥ 70% ➖ (미측정)\n"
        "\n"
        "【보안 정책】\n"
        "• Evidence ZIP: 관리자 전용 (ADMIN_ONLY)\n"
        "• MIXED 브랜드 예외: 월 2건 제한\n"
        "• 감사 로그: 모든 Evidence 다운로드 기록\n"
        "\n"
        "【검증 완료】\n"
        "• 아티팩트 SHA256: 0de4aaa84955cdda...d451 ✅\n"
        "• 매니페스트 SHA256: d5ca39db9e764539...27a1 ✅\n"
        "• 스모크 테스트: 3/3 통과 ✅\n"
        "• 회귀 테스트: 40/40 통과 ✅\n"
        "\n"
        "【모니터링】\n"
        "• 대시보드: http://monitor.kis.local/estimator\n"
        "• 알람 설정: p95>50ms, 5xx>5/분, MIXED 초과\n"
        "• 핫스탠바이: 60분간 집중 모니터링 중\n"
        "\n"
        "【장애 대응】\n"
        "긴급 상황 시 3분 내 롤백 가능:\n"
        "```bash\n"
        "kis-release rollback --to 0.9.0 --force\n"
        "```\n"
        "\n"
        "【담당자】\n"
        "• 배포 승인: CEO\n"
        "• 기술 책임: DevOps Team\n"
        "• 모니터링: Operations Team\n"
        "\n"
        "감사합니다.\n"
        "KIS DevOps Team\n"
    )


ANNOUNCEMENT_LINE_CASES = [
    pytest.param({"p95_ms": 30.0}, "• 응답시간: p95 ≤ 30ms ✅ (실측 30.0ms)", id="p95-at-target-meets-le"),
    pytest.param({"p95_ms": 41.3}, "• 응답시간: p95 ≤ 30ms ❌ (실측 41.3ms)", id="p95-over-target"),
    pytest.param({"p95_ms": None}, "• 응답시간: p95 ≤ 30ms ➖ (미측정)", id="p95-no-data"),
    pytest.param({"error_rate_pct": 0.5}, "• 오류율: < 0.5% ❌ (실측 0.50%)", id="error-rate-at-limit"),
    pytest.param({"tat_median_s": 95.0}, "• TAT 중앙값: ≤ 2분 ✅ (실측 1m35s)", id="tat-measured"),
    pytest.param({"auto_rate_pct": 64.0}, "• 자동처리율: ≥ 70% ❌ (실측 64.00%)", id="auto-rate-below"),
    pytest.param({"regression_passed": 38}, "• 회귀 테스트: 38/40 통과 ❌", id="regression-38-of-40"),
    pytest.param(
        {"hashes_verified": False}, "• 아티팩트 SHA256: 0de4aaa84955cdda...d451 ❌", id="hash-unverified"
    ),
    pytest.param({"port": 9443}, "• 내부 포트: 9443", id="real-port"),
    pytest.param({"endpoint_url": "http://10.0.0.5/v1/"}, "• SSL: 미적용 (HTTP 엔드포인트)", id="plain-http"),
    pytest.param({"approved_by": None}, "• 배포 승인: (승인 기록 없음)", id="no-approver"),
    pytest.param({"standby_minutes": None}, "• 핫스탠바이: 미실행 (핫스탠바이 없음)", id="no-standby"),
    pytest.param({"rollback_budget_s": 90.0}, "긴급 상황 시 90초 내 롤백 가능:", id="rollback-budget"),
    pytest.param(
        {"deployed_at": datetime(2025, 9, 23, 23, 30, tzinfo=UTC)},
        "• 배포 시간: 2025-09-24 08:30:00 KST",
        id="time-in-kst",
    ),
]


@pytest.mark.parametrize(("changes", "line"), ANNOUNCEMENT_LINE_CASES)
def test_announcement_lines_follow_the_real_results(changes: dict[str, Any], line: str) -> None:
    assert line in korean_announcement(deploy_report(**changes))[1].splitlines()


def test_announcement_takes_change_lines_and_owners_from_configuration() -> None:
    settings = WorkflowSettings.load(
        {
            "KIS_JIRA_ASSIGNEE": "kim.devops",
            "KIS_JIRA_WATCHERS": "lee.ops,park.ops",
            "KIS_JIRA_COMPONENTS": "api",
        }
    )
    report = deploy_report(
        owners=Owners.from_settings(settings),
        environment="Staging",
        approved_by="cto",
        changes=("견적 캐시 도입",),
    )

    subject, body = korean_announcement(report)
    lines = body.splitlines()

    assert subject == "[GA-1.0.0] KIS 견적 API 스테이징 배포 완료"
    assert lines[lines.index("【주요 변경사항】") + 1 : lines.index("【SLO 목표】")] == [
        "• 견적 캐시 도입",
        "",
    ]
    assert lines[lines.index("【담당자】") + 1 :] == [
        "• 배포 승인: cto",
        "• 기술 책임: kim.devops",
        "• 모니터링: lee.ops, park.ops",
        "",
        "감사합니다.",
        "KIS DevOps Team",
    ]
    draft = deploy_issue(report)
    assert (draft.assignee, draft.watchers, draft.components) == (
        "kim.devops",
        ("lee.ops", "park.ops"),
        ("api",),
    )


# ---------------------------------------------------------------------------------- ROLLBACK

DETECTED_AT = datetime(2025, 9, 23, 4, 10, tzinfo=UTC)


def incident_report(**changes: Any) -> IncidentReport:
    report = IncidentReport(
        incident_id="kis-GA-1.0.0-20250923T041000Z",
        from_version="GA-1.0.0",
        to_version="0.9",
        detected_at=DETECTED_AT,
        breaches=(
            Breach("P95 > 200ms (5분 지속)", 340.2, 200, "ms", 360),
            Breach("5xx 에러 > 10/분 (3분 지속)", 14, 10, "/min", 180),
        ),
        error_rate_pct=3.25,
        http_5xx_per_min=14,
        p95_ms=340.2,
        metrics_snapshot={"verdict": "ROLLBACK", "criteria": [{"criterion": "p95_latency_200ms"}]},
        error_log=b"ERROR upstream timeout\n",
        charts=(
            BreachChart(
                "p95_latency_200ms",
                "p95 latency > 200 ms for 5 min",
                "ms",
                200.0,
                (
                    (
                        "latency_p95_ms",
                        tuple((DETECTED_AT - timedelta(minutes=6 - i), 150.0 + 40 * i) for i in range(7)),
                    ),
                ),
            ),
        ),
        rollback_log=b"stopped GA-1.0.0\nstarted 0.9\nsmoke 3/3\n",
        service_stopped=True,
        rollback_executed=True,
        previous_version_running=True,
        smoke_passed=3,
        smoke_total=3,
        rollback_command="kis-release rollback --to 0.9",
        owners=Owners(assignee="oncall", watchers=("devops-lead",)),
    )
    return dataclasses.replace(report, **changes)


def test_rollback_issue_fills_the_seed_template_in_seed_order() -> None:
    draft = rollback_issue(incident_report())

    assert (draft.summary, draft.issue_type, draft.priority, draft.status) == (
        "[ROLLBACK] KIS Estimator GA-1.0.0 → 0.9",
        "Incident",
        "Critical",
        "In Progress",
    )
    assert draft.idempotency_key == "incident:kis-GA-1.0.0-20250923T041000Z"
    assert draft.labels == ("kis-incident", "kis-rollback")
    assert (draft.assignee, draft.watchers) == ("oncall", ("devops-lead",))
    assert [s.heading for s in draft.body.sections] == [
        "Issue",
        "Actions",
        "Evidence",
        "Root Cause",
        "Prevention",
    ]
    assert render_markdown(draft.body) == (
        "## Issue\n\n"
        "- Time: 2025-09-23 13:10:00 KST\n"
        "- Symptom: P95 \\> 200ms (5분 지속): observed 340.2 ms for 6m00s (threshold 200 ms); "
        "5xx 에러 \\> 10/분 (3분 지속): observed 14 /min for 3m00s (threshold 10 /min)\n"
        "- Impact: error rate 3.25%, 5xx 14/min, p95 340.2ms\n\n"
        "## Actions\n\n"
        "- [x] Service stopped\n"
        "- [x] Rollback executed\n"
        "- [x] Previous version running\n"
        "- [x] Smoke tests passed (3/3)\n\n"
        "## Evidence\n\n"
        "- Error logs: error.log \\[attached\\]\n"
        "- Metrics: metrics-snapshot.json, breach-p95-latency-200ms.png \\[attached\\]\n"
        "- Rollback log: rollback.log \\[attached\\]\n\n"
        "## Root Cause\n\n"
        "\\[To be investigated\\]\n\n"
        "## Prevention\n\n"
        "\\[To be determined\\]\n"
    )
    assert [(a.name, a.content_type) for a in draft.attachments] == [
        ("error.log", "text/plain"),
        ("metrics-snapshot.json", "application/json"),
        ("breach-p95-latency-200ms.png", "image/png"),
        ("rollback.log", "text/plain"),
    ]
    assert json.loads(draft.attachments[1].data) == incident_report().metrics_snapshot
    assert draft.attachments[2].data.startswith(PNG_SIGNATURE)


ACTION_CASES = [
    pytest.param(
        {"previous_version_running": False, "smoke_passed": 0, "smoke_total": 0},
        [
            "- [x] Service stopped",
            "- [x] Rollback executed",
            "- [ ] Previous version running",
            "- [ ] Smoke tests passed",
        ],
        id="previous-version-did-not-start",
    ),
    pytest.param(
        {"smoke_passed": 2},
        [
            "- [x] Service stopped",
            "- [x] Rollback executed",
            "- [x] Previous version running",
            "- [ ] Smoke tests passed (2/3)",
        ],
        id="smoke-2-of-3",
    ),
    pytest.param(
        {
            "service_stopped": False,
            "rollback_executed": False,
            "previous_version_running": False,
            "smoke_total": 0,
        },
        [
            "- [ ] Service stopped",
            "- [ ] Rollback executed",
            "- [ ] Previous version running",
            "- [ ] Smoke tests passed",
        ],
        id="nothing-happened",
    ),
]


@pytest.mark.parametrize(("changes", "expected"), ACTION_CASES)
def test_actions_are_ticked_from_what_actually_happened(changes: dict[str, Any], expected: list[str]) -> None:
    assert rendered_section(rollback_issue(incident_report(**changes)).body, "Actions") == expected


def test_review_verdict_files_a_needs_decision_issue_with_nothing_ticked() -> None:
    draft = rollback_issue(
        incident_report(
            needs_decision=True,
            breaches=(Breach("P95 > 100ms (10분 지속)", 130.0, 100, "ms", 600),),
            rollback_log=None,
            error_log=b"",
            charts=(),
        )
    )

    assert draft.summary == "[ROLLBACK] KIS Estimator GA-1.0.0 → 0.9 (needs decision)"
    assert draft.labels == ("kis-incident", "kis-rollback", "needs-decision")
    assert (draft.priority, draft.status) == ("Critical", "In Progress")
    assert render_markdown(Document(draft.body.sections[:3])) == (
        "## Issue\n\n"
        "- Time: 2025-09-23 13:10:00 KST\n"
        "- Symptom: P95 \\> 100ms (10분 지속): observed 130 ms for 10m00s (threshold 100 ms)\n"
        "- Impact: error rate 3.25%, 5xx 14/min, p95 340.2ms\n"
        "- Decision: needed (검토 후 롤백): roll back with kis-release rollback --to 0.9, "
        "or close with the reason\n\n"
        "## Actions\n\n"
        "- [ ] Service stopped\n"
        "- [ ] Rollback executed\n"
        "- [ ] Previous version running\n"
        "- [ ] Smoke tests passed\n\n"
        "## Evidence\n\n"
        "- Error logs: none captured\n"
        "- Metrics: metrics-snapshot.json \\[attached\\]\n"
        "- Rollback log: not run (needs decision)\n"
    )
    assert [a.name for a in draft.attachments] == ["metrics-snapshot.json"]


def test_impact_says_no_data_rather_than_zero() -> None:
    draft = rollback_issue(incident_report(error_rate_pct=None, http_5xx_per_min=None, p95_ms=None))
    assert (
        "- Impact: error rate no data, 5xx no data, p95 no data" in render_markdown(draft.body).splitlines()
    )


def test_reports_need_aware_times() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        deploy_report(deployed_at=datetime(2025, 9, 23, 12, 0))  # noqa: DTZ001 - the naive value under test
    with pytest.raises(ValueError, match="timezone-aware"):
        incident_report(detected_at=datetime(2025, 9, 23, 12, 0))  # noqa: DTZ001 - as above


def test_the_change_list_is_the_release_s_own() -> None:
    from kis_estimator.workflows.release.artifacts import changelog_entries

    changelog = (
        "# Changelog\n\n## [1.0.2] - 2025-10-01\n- 견적 캐시 도입\n* 부스바 단가 수정\n\n"
        "## 1.0.1\n- 첫 패치\n\n## 1.0.0\n- GA\n"
    )
    assert changelog_entries(changelog, "1.0.2") == ("견적 캐시 도입", "부스바 단가 수정")
    assert changelog_entries(changelog, "1.0.1") == ("첫 패치",)
    assert changelog_entries(changelog, "1.0.3") == ()
    _, body = korean_announcement(deploy_report(version="1.0.3", changes=()))
    assert "• 변경 사항 목록 없음 (CHANGELOG.md에 1.0.3 항목이 없습니다)" in body.splitlines()


def test_the_repository_changelog_holds_the_ga_notice_list() -> None:
    from pathlib import Path

    from kis_estimator.workflows.release.artifacts import release_changes

    root = Path(__file__).resolve().parents[2]
    assert release_changes(root, None, "1.0.0") == GA_CHANGES
    fallback = release_changes(root, "HEAD", "0.0.0-not-in-the-changelog")
    assert 0 < len(fallback) <= 10  # the newest commit subjects
