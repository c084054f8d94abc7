"""``kis-release``: the release manager's and incident responder's commands.

Configuration: ``KIS_*`` workflow variables and/or ``--config FILE.toml`` (workflows/settings.py).
Issues go to Jira when ``KIS_JIRA_URL`` is set, else to the file tracker under ``var/tracker``;
either way through the durable outbox (``kis-release outbox flush`` files what Jira refused).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from workflows import clock as clock_module
from workflows.artifacts import run_build, run_verify
from workflows.clock import SystemClock
from workflows.estimator_client import CandidateAcceptanceRunner, GrpcEstimatorClient
from workflows.notify import Notifier, NotifyOptions
from workflows.promote import PromoteOptions, PromotionResult, deploy_report, run_promote
from workflows.settings import WorkflowSettings, WorkflowSettingsError
from workflows.standby import (
    ProcessStandbyChecks,
    SloReading,
    StandbyOptions,
    run_standby,
    wait_until_by_sleeping,
)
from workflows.templates import korean_announcement
from workflows.tracker import TrackerError
from workflows.trackers import build_tracker, run_outbox_flush

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
    return run_promote(settings, options, sys.stdout, tracker=tracker, on_promoted=_notify(settings))


def cmd_standby(args: argparse.Namespace, settings: WorkflowSettings) -> int:
    state_path = settings.release_dir / args.version / "promotion.json"
    try:
        state: dict[str, Any] = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        _err(f"error: no promotion record for {args.version} ({state_path}): {exc}")
        return 2
    if state.get("status") != "promoted" or not state.get("issue_key"):
        _err(f"error: {args.version} is not promoted with a DEPLOY issue (status {state.get('status')!r})")
        return 2
    if not settings.release_token or not settings.release_viewer_token:
        _err("error: KIS_RELEASE_TOKEN and KIS_RELEASE_VIEWER_TOKEN are needed for the checkpoints")
        return 2
    deployed_at = datetime.fromisoformat(str(state["promoted_at"]).replace("Z", "+00:00"))
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
            deploy_issue_key=str(state["issue_key"]),
            tracker=tracker,
            checks=checks,
            clock=clock,
            wait_until=wait_until_by_sleeping(clock, clock_module.sleep),
            out=sys.stdout,
        )
    return 0 if result.closed or result.already_done else 1


def cmd_outbox(args: argparse.Namespace, settings: WorkflowSettings) -> int:
    return run_outbox_flush(settings, _out)


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

    p_outbox = sub.add_parser("outbox", help="the durable outbox of tracker operations")
    outbox_sub = p_outbox.add_subparsers(dest="outbox_command", required=True)
    outbox_sub.add_parser("flush", help="file everything the outbox holds")
    return parser


COMMANDS: dict[str, Command] = {
    "build": cmd_build,
    "verify": cmd_verify,
    "promote": cmd_promote,
    "standby": cmd_standby,
    "outbox": cmd_outbox,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = WorkflowSettings.from_process_env(Path(args.config) if args.config else None)
    except WorkflowSettingsError as exc:
        _err(f"configuration error: {exc}")
        return 2
    return COMMANDS[args.command](args, settings)


if __name__ == "__main__":
    sys.exit(main())
