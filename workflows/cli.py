"""``kis-release``: the release manager's and incident responder's commands.

Configuration: ``KIS_*`` workflow variables and/or ``--config FILE.toml`` (workflows/settings.py).
Issues go to Jira when ``KIS_JIRA_URL`` is set, else to the file tracker under ``var/tracker``;
either way through the durable outbox (``kis-release outbox flush`` files what Jira refused).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType

from kis_estimator.workflows import clock as clock_module
from kis_estimator.workflows.clock import SystemClock
from kis_estimator.workflows.errors import WorkflowError
from kis_estimator.workflows.incident.alert_receiver import (
    AlertReceiver,
    ReceiverAuth,
    create_receiver_server,
)
from kis_estimator.workflows.incident.criteria import IncidentLedger, IncidentLedgerError, build_criteria
from kis_estimator.workflows.incident.response import (
    IncidentDeps,
    IncidentOptions,
    file_refused_promotion,
    rollback_for_issue,
    run_watch,
)
from kis_estimator.workflows.notify import Notifier, NotifyOptions
from kis_estimator.workflows.prometheus.client import PrometheusSource
from kis_estimator.workflows.release.artifacts import run_build, run_verify
from kis_estimator.workflows.release.estimator_client import (
    CandidateAcceptanceRunner,
    EstimatorClient,
    GrpcEstimatorClient,
)
from kis_estimator.workflows.release.promote import (
    PromoteOptions,
    PromotionResult,
    ShellCommandRunner,
    deploy_report,
    run_promote,
)
from kis_estimator.workflows.release.record import StateFileError, read_record
from kis_estimator.workflows.release.standby import (
    ProcessStandbyChecks,
    SloReading,
    StandbyOptions,
    run_standby,
    wait_until_by_sleeping,
)
from kis_estimator.workflows.settings import WorkflowSettings, WorkflowSettingsError
from kis_estimator.workflows.templates import Owners, korean_announcement
from kis_estimator.workflows.tracker.build import (
    build_tracker,
    pager,
    run_jira_check,
    run_outbox_flush,
    run_outbox_list,
)
from kis_estimator.workflows.tracker.outbox import OutboxTracker
from kis_estimator.workflows.tracker.protocol import IssueRef, TrackerError

Command = Callable[[argparse.Namespace, WorkflowSettings], int]


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def cmd_build(args: argparse.Namespace, settings: WorkflowSettings) -> int:
    return run_build(
        Path(args.out),
        args.version,
        source_ref=args.ref,
        catalog_dir=Path(args.catalog_dir) if args.catalog_dir else None,
        source_date_epoch=args.source_date_epoch,
    )


def cmd_verify(args: argparse.Namespace, settings: WorkflowSettings) -> int:
    return run_verify(Path(args.artifact), Path(args.manifest), args.artifact_sha256, args.manifest_sha256)


def _notify(settings: WorkflowSettings) -> Callable[[PromotionResult], None]:
    def send(result: PromotionResult) -> None:
        subject, body = korean_announcement(deploy_report(result, settings))
        report = Notifier(
            NotifyOptions.from_settings(settings), sleep=clock_module.sleep, clock=SystemClock()
        ).send(subject, body)
        for line in report.lines():
            _out(f"notice: {line}")

    return send


def cmd_promote(args: argparse.Namespace, settings: WorkflowSettings) -> int:
    if not _preflight(settings, "promote"):
        return 2
    options = PromoteOptions(
        version=args.version,
        artifact=Path(args.artifact),
        manifest=Path(args.manifest),
        expected_artifact_sha256=args.artifact_sha256,
        expected_manifest_sha256=args.manifest_sha256,
        approved_by=args.approved_by,
    )
    try:
        tracker = build_tracker(settings, sleep=clock_module.sleep)
    except TrackerError as exc:
        _err(f"error: issue tracker: {exc}")
        return 2
    options_i, deps = incident_runtime(settings, tracker, service_log=None)

    def on_refused(result: PromotionResult) -> IssueRef | None:
        return file_refused_promotion(result, options_i, deps)

    return run_promote(
        settings,
        options,
        sys.stdout,
        tracker=tracker,
        on_promoted=_notify(settings),
        on_refused=on_refused,
    )


def cmd_standby(args: argparse.Namespace, settings: WorkflowSettings) -> int:
    record = read_record(settings.release_dir, args.version)
    if record is None:
        _err(f"error: no promotion record for {args.version} under {settings.release_dir}")
        return 2
    if not record.promoted or not record.issue_key or record.promoted_at is None:
        _err(f"error: {args.version} is not promoted with a DEPLOY issue (status {record.status!r})")
        return 2
    if not settings.release_token or not settings.release_viewer_token:
        _err("error: KIS_RELEASE_TOKEN and KIS_RELEASE_VIEWER_TOKEN are needed for the checkpoints")
        return 2
    deployed_at = record.promoted_at
    clock = SystemClock()
    tracker = build_tracker(settings, sleep=clock_module.sleep)
    artifact = Path(args.artifact)
    with GrpcEstimatorClient(
        settings.release_target,
        token=settings.release_token,
        viewer_token=settings.release_viewer_token,
        acceptance=CandidateAcceptanceRunner(artifact, settings.release_dir / args.version / "candidate"),
    ) as estimator:

        def slo() -> SloReading:
            burst = estimator.slo_burst(settings.release_slo_burst_requests)
            rate = burst.error_rate
            return SloReading(burst.p95_ms, None if rate is None else rate * 100)

        def regression() -> tuple[int, int]:
            suite = estimator.regression()
            return suite.passed, suite.total

        checks = ProcessStandbyChecks(
            pid_file=Path(args.pid_file),
            slo=slo,
            regression=regression,
            sleep=clock_module.sleep,
            monotonic=clock_module.monotonic_s,
        )
        options = StandbyOptions(
            version=args.version,
            environment=settings.release_environment,
            deployed_at=deployed_at,
            state_file=settings.release_dir / args.version / "standby.json",
            checkpoints_min=settings.standby_checkpoints_min,
        )
        result = run_standby(
            options,
            deploy_issue_key=record.issue_key,
            tracker=tracker,
            checks=checks,
            clock=clock,
            wait_until=wait_until_by_sleeping(clock, clock_module.sleep),
            out=sys.stdout,
        )
    return 0 if result.closed or result.already_done else 1


def cmd_outbox(args: argparse.Namespace, settings: WorkflowSettings) -> int:
    if args.outbox_command == "list":
        return run_outbox_list(settings, _out)
    return run_outbox_flush(settings, _out)


def cmd_jira(args: argparse.Namespace, settings: WorkflowSettings) -> int:
    return run_jira_check(settings, _out)


def _preflight(settings: WorkflowSettings, command: str) -> bool:
    """The Jira pre-flight before ``promote``/``watch`` act: False (and why) when Jira would refuse.

    A Jira that does not answer at all is not a refusal: the outbox keeps tickets until it is back,
    so the command goes on with a warning.
    """
    if not settings.jira_url:
        return True
    lines: list[str] = []
    if run_jira_check(settings, lines.append) == 0:
        return True
    unreachable = any(line.startswith("FAIL  server:") and "cannot reach" in line for line in lines)
    for line in lines:
        _err(line)
    if unreachable:
        _err(f"{command}: Jira is unreachable; going on, tickets wait in the outbox ({settings.outbox_dir})")
        return True
    _err(f"{command}: the Jira pre-flight failed; nothing was deployed or rolled back: fix the above.")
    return False


# ------------------------------------------------------------------------------------ incidents


def _acceptance_wheel(settings: WorkflowSettings, version: str) -> Path:
    """The wheel promote unpacked for ``version`` (its own smoke suite runs against the target)."""
    try:
        record = read_record(settings.release_dir, version)
    except StateFileError:
        record = None
    name = (record.artifact if record else None) or f"kis_estimator-{version}-py3-none-any.whl"
    return settings.release_dir / version / "candidate" / name


def incident_runtime(
    settings: WorkflowSettings, tracker: OutboxTracker, *, service_log: str | None
) -> tuple[IncidentOptions, IncidentDeps]:
    """The incident workflow's options and dependencies, wired from settings (one place)."""
    clock = SystemClock()
    token, viewer = settings.release_token or "", settings.release_viewer_token or ""

    @contextlib.contextmanager
    def estimator_for(version: str) -> Iterator[EstimatorClient]:
        runner = CandidateAcceptanceRunner(
            _acceptance_wheel(settings, version), settings.release_dir / version / "candidate"
        )
        with GrpcEstimatorClient(
            settings.release_target, token=token, viewer_token=viewer, acceptance=runner
        ) as client:
            yield client

    def extra_bug_count(since: datetime) -> int:
        return len(tracker.search_labels(settings.jira_bug_label, since.isoformat()))

    def flush() -> object:
        return tracker.flush()

    options = IncidentOptions(
        release_dir=settings.release_dir,
        environment=settings.release_environment,
        rollback_command=settings.rollback_command,
        rollback_budget_s=settings.rollback_budget_s,
        criteria=build_criteria(bug_report_threshold=settings.incident_bug_threshold),
        service_log=service_log,
        owners=Owners.from_settings(settings),
    )
    deps = IncidentDeps(
        tracker=tracker,
        estimator_for=estimator_for,
        run_command=ShellCommandRunner(clock),
        clock=clock,
        sleep=clock_module.sleep,
        ledger=IncidentLedger(settings.release_dir),
        metrics=(
            PrometheusSource(settings.prometheus_url, sleep=clock_module.sleep)
            if settings.prometheus_url
            else None
        ),
        flush_outbox=flush,
        extra_bug_count=extra_bug_count,
        page=pager(settings, sleep=clock_module.sleep, clock=clock),
    )
    return options, deps


def _incident_setup(
    args: argparse.Namespace, settings: WorkflowSettings, *, needs_metrics: bool
) -> tuple[IncidentOptions, IncidentDeps, OutboxTracker] | None:
    if not settings.release_token or not settings.release_viewer_token:
        _err("error: KIS_RELEASE_TOKEN and KIS_RELEASE_VIEWER_TOKEN are needed to verify a rollback")
        return None
    if needs_metrics and not settings.prometheus_url:
        _err("error: KIS_PROMETHEUS_URL is not set: the criteria cannot be evaluated (no data is never OK)")
        return None
    if not settings.rollback_command:
        _err("warning: KIS_ROLLBACK_COMMAND is not set: an immediate rollback will FAIL and page")
    try:
        tracker = build_tracker(settings, sleep=clock_module.sleep)
    except TrackerError as exc:
        _err(f"error: issue tracker: {exc}")
        return None
    options, deps = incident_runtime(settings, tracker, service_log=args.service_log)
    return options, deps, tracker


def cmd_watch(args: argparse.Namespace, settings: WorkflowSettings) -> int:
    if not _preflight(settings, "watch"):
        return 2
    setup = _incident_setup(args, settings, needs_metrics=True)
    if setup is None:
        return 2
    options, deps, tracker = setup
    try:
        return run_watch(options, deps, sys.stdout, interval_s=args.interval, once=args.once)
    except KeyboardInterrupt:
        return 0
    finally:
        tracker.close()


def cmd_rollback(args: argparse.Namespace, settings: WorkflowSettings) -> int:
    setup = _incident_setup(args, settings, needs_metrics=False)
    if setup is None:
        return 2
    options, deps, tracker = setup
    try:
        return rollback_for_issue(args.issue, options, deps, sys.stdout, by=args.by)
    finally:
        tracker.close()


def cmd_incident(args: argparse.Namespace, settings: WorkflowSettings) -> int:
    ledger = IncidentLedger(settings.release_dir)
    by = args.by or getpass.getuser()
    now = SystemClock().now()
    try:
        if args.incident_command == "declare":
            entry = ledger.declare_security(args.security, by, now)
            what = "security vulnerability declared (immediate rollback criterion)"
        else:
            entry = ledger.report_bug(args.text, by, now)
            what = "functional bug reported (review criterion: 3 or more)"
    except (IncidentLedgerError, ValueError) as exc:
        _err(f"error: {exc}")
        return 2
    _out(f"{what}: {entry.id} by {entry.by} at {entry.at.isoformat()} ({ledger.path})")
    return 0


def cmd_alert_receiver(args: argparse.Namespace, settings: WorkflowSettings) -> int:
    setup = _incident_setup(args, settings, needs_metrics=False)
    if setup is None:
        return 2
    options, deps, tracker = setup
    listen = args.listen or settings.alert_listen
    try:
        basic = (
            (settings.alert_basic_user, settings.alert_basic_password or "")
            if settings.alert_basic_user
            else None
        )
        auth = ReceiverAuth(settings.alert_bearer_token, basic)
    except ValueError as exc:
        _err(f"error: {exc}")
        tracker.close()
        return 2
    try:
        server, port = create_receiver_server(AlertReceiver(options, deps), listen, auth)
    except (OSError, ValueError) as exc:
        _err(f"error: cannot listen on {listen}: {exc}")
        tracker.close()
        return 2

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    _out(f"alert receiver on http://{listen.rpartition(':')[0]}:{port}/alerts")
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        tracker.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kis-release", description=__doc__)
    parser.add_argument("--config", help="TOML file with workflow settings (environment variables win)")
    sub = parser.add_subparsers(dest="command", required=True)

    p_build = sub.add_parser("build", help="build wheel + sdist and the release manifest")
    p_build.add_argument("--out", default="dist", help="output directory (default dist/)")
    p_build.add_argument("--version", help="override the version (test builds)")
    p_build.add_argument(
        "--ref", help="build this git revision (e.g. HEAD, a tag) instead of the working tree"
    )
    p_build.add_argument("--catalog-dir", help="build with this catalog directory (test builds)")
    p_build.add_argument(
        "--source-date-epoch",
        help="build date as Unix seconds (as SOURCE_DATE_EPOCH); default: the commit's time",
    )

    p_verify = sub.add_parser("verify", help="check artifact and manifest against expected SHA-256")
    p_verify.add_argument("artifact")
    p_verify.add_argument("manifest")
    p_verify.add_argument("--artifact-sha256", required=True)
    p_verify.add_argument("--manifest-sha256", required=True)

    p_promote = sub.add_parser("promote", help="verify, deploy, T+0 checks, DEPLOY issue (or roll back)")
    p_promote.add_argument("version")
    p_promote.add_argument("--artifact", required=True)
    p_promote.add_argument("--manifest", required=True)
    p_promote.add_argument("--artifact-sha256", required=True)
    p_promote.add_argument("--manifest-sha256", required=True)
    p_promote.add_argument("--approved-by", help="approver (required for Production)")

    p_standby = sub.add_parser("standby", help="T+15/30/60 checkpoints as comments on the DEPLOY issue")
    p_standby.add_argument("version")
    p_standby.add_argument("--pid-file", required=True, help="PID file of the running service")
    p_standby.add_argument(
        "--artifact", required=True, help="the promoted wheel (its regression suite re-runs)"
    )

    service_log_help = (
        "the service's log file(s) for the error log, {version} substituted "
        "(e.g. /srv/kis/releases/{version}/service.log)"
    )
    p_watch = sub.add_parser("watch", help="evaluate the rollback criteria for the current release and act")
    p_watch.add_argument("--once", action="store_true", help="one evaluation, then exit with its outcome")
    p_watch.add_argument("--interval", type=float, default=30.0, help="seconds between evaluations")
    p_watch.add_argument("--service-log", help=service_log_help)

    p_rollback = sub.add_parser("rollback", help="execute the rollback a ROLLBACK issue asks to decide")
    p_rollback.add_argument("--issue", required=True, help="the ROLLBACK issue key, e.g. KIS-12")
    p_rollback.add_argument("--by", help="the responder (default: the login name)")
    p_rollback.add_argument("--service-log", help=service_log_help)

    p_incident = sub.add_parser("incident", help="record what no metric can decide")
    incident_sub = p_incident.add_subparsers(dest="incident_command", required=True)
    p_declare = incident_sub.add_parser("declare", help="declare a security vulnerability (immediate)")
    p_declare.add_argument("--security", required=True, metavar="TEXT", help="what was found")
    p_declare.add_argument("--by", help="who declares it (default: the login name)")
    p_bug = incident_sub.add_parser("report-bug", help="report a functional bug (3 or more: review)")
    p_bug.add_argument("text")
    p_bug.add_argument("--by", help="who reports it (default: the login name)")

    p_alerts = sub.add_parser("alert-receiver", help="Alertmanager webhook: POST /alerts (payload v4)")
    p_alerts.add_argument("--listen", help="HOST:PORT (default KIS_ALERT_LISTEN, 127.0.0.1:9095)")
    p_alerts.add_argument("--service-log", help=service_log_help)

    p_outbox = sub.add_parser("outbox", help="the durable outbox of tracker operations")
    outbox_sub = p_outbox.add_subparsers(dest="outbox_command", required=True)
    outbox_sub.add_parser("flush", help="file everything the outbox holds (dead letters too)")
    outbox_sub.add_parser("list", help="every record with its state (queued/dead) and reason")

    p_jira = sub.add_parser("jira", help="Jira pre-flight")
    jira_sub = p_jira.add_subparsers(dest="jira_command", required=True)
    jira_sub.add_parser(
        "check", help="credentials, project, issue types, priorities, permissions (run by promote/watch)"
    )
    return parser


COMMANDS: dict[str, Command] = {
    "build": cmd_build,
    "verify": cmd_verify,
    "promote": cmd_promote,
    "standby": cmd_standby,
    "outbox": cmd_outbox,
    "jira": cmd_jira,
    "watch": cmd_watch,
    "rollback": cmd_rollback,
    "incident": cmd_incident,
    "alert-receiver": cmd_alert_receiver,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = WorkflowSettings.from_process_env(Path(args.config) if args.config else None)
    except WorkflowSettingsError as exc:
        _err(f"configuration error: {exc}")
        return 2
    try:
        return COMMANDS[args.command](args, settings)
    except WorkflowError as exc:  # every explained failure: one message, its exit code, no traceback
        _err(f"error: {exc}")
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
