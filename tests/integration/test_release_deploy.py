"""Release end to end with real processes: build two versions, promote v1, refuse v2, v1 serves again.

Everything is real: setuptools builds the wheels, ``deploy/local/kis-deploy`` installs them into
their own venvs and runs ``kis-estimator serve`` as a detached process, the T+0 checks call it over
gRPC (the candidate's own smoke/regression runner in a child process), the rollback command
switches the ``current`` link back and restarts, and the DEPLOY issue goes to the file tracker.
v2 differs from v1 only in its catalog: SBE-103 costs 17,600 instead of 17,500, which breaks the
regression cases that price it. Waits are bounded waits on those processes (health polling).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from kis_estimator.workflows.clock import SystemClock
from kis_estimator.workflows.clock import sleep as real_sleep
from kis_estimator.workflows.release.artifacts import BuildOptions, BuildResult, build_release
from kis_estimator.workflows.release.estimator_client import (
    PROBE_REQUEST,
    CandidateAcceptanceRunner,
    GrpcEstimatorClient,
)
from kis_estimator.workflows.release.promote import (
    PromoteDeps,
    PromoteOptions,
    PromotionStatus,
    ShellCommandRunner,
    promote,
    run_promote,
)
from kis_estimator.workflows.settings import WorkflowSettings
from kis_estimator.workflows.templates import deploy_idempotency_key
from kis_estimator.workflows.tracker.files import FileIssueTracker

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
KIS_DEPLOY = ROOT / "deploy" / "local" / "kis-deploy"
CATALOG = ROOT / "server" / "data" / "catalog"
TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIS_")}
    env.update(extra)
    return env


def _deploy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(KIS_DEPLOY), *args], capture_output=True, text=True, timeout=120, check=False
    )


def _broken_catalog(into: Path) -> Path:
    """The packaged catalog with SBE-103 at 17,600 KRW instead of 17,500."""
    shutil.copytree(CATALOG, into)
    breakers = into / "breakers.csv"
    rows = breakers.read_text(encoding="utf-8").splitlines(keepends=True)
    changed = [r.replace(",17500,", ",17600,") if r.startswith("SANGDO,SBE-103,") else r for r in rows]
    assert changed != rows
    breakers.write_text("".join(changed), encoding="utf-8")
    return into


class Deployment:
    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "deploy"
        self.port = _free_port()
        self.metrics_port = _free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.db = self.root / "shared" / "kis.db"

    def deploy_command(self) -> str:
        return (
            f"{sys.executable} {KIS_DEPLOY} install {{artifact}} --version {{version}} --root {self.root}"
            f" --port {self.port} --metrics-port {self.metrics_port} --ready-timeout 60"
        )

    def rollback_command(self) -> str:
        return f"{sys.executable} {KIS_DEPLOY} rollback --root {self.root} --ready-timeout 60"

    def status(self) -> dict[str, object]:
        proc = _deploy("status", "--root", str(self.root))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        data: dict[str, object] = json.loads(proc.stdout)
        return data

    def token(self, version: str, role: str) -> str:
        """A token made by the release's own CLI against the deployment's database."""
        cli = self.root / "releases" / version / "venv" / "bin" / "kis-estimator"
        proc = subprocess.run(
            [str(cli), "token", "create", "--role", role, "--name", f"release-{role.lower()}"],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(KIS_DATABASE_URL=f"sqlite:///{self.db}"),
            check=True,
        )
        return proc.stdout.strip()


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(tmp_path)
    yield d
    _deploy("stop", "--root", str(d.root))


def _head() -> str:
    """The commit to build: committed files only, so concurrent edits of the checkout do not leak in."""
    return subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()


def _build(tmp: Path, commit: str, version: str, catalog: Path | None = None) -> BuildResult:
    options = BuildOptions(
        source_dir=ROOT,
        out_dir=tmp / f"dist-{version}",
        version_override=version,
        catalog_dir=catalog,
        source_ref=commit,
    )
    return build_release(options)


def _settings(tmp: Path, d: Deployment, token: str, viewer: str) -> WorkflowSettings:
    return WorkflowSettings(
        release_environment="Production",
        release_target=d.target,
        release_token=token,
        release_viewer_token=viewer,
        release_dir=tmp / "release",
        tracker_dir=tmp / "tracker",
        deploy_command=d.deploy_command(),
        rollback_command=d.rollback_command(),
        release_slo_burst_requests=50,
    )


def _options(build: BuildResult, approver: str | None = "CEO") -> PromoteOptions:
    return PromoteOptions(
        version=build.manifest.version,
        artifact=build.wheel_path,
        manifest=build.manifest_path,
        expected_artifact_sha256=build.manifest.wheel.sha256,
        expected_manifest_sha256=build.manifest_sha256,
        approved_by=approver,
    )


def _deps(settings: WorkflowSettings, build: BuildResult, tracker: FileIssueTracker) -> PromoteDeps:
    assert settings.release_token and settings.release_viewer_token
    client = GrpcEstimatorClient(
        settings.release_target,
        token=settings.release_token,
        viewer_token=settings.release_viewer_token,
        acceptance=CandidateAcceptanceRunner(build.wheel_path, settings.release_dir / "candidates"),
    )
    clock = SystemClock()
    return PromoteDeps(
        tracker=tracker,
        estimator=client,
        run_command=ShellCommandRunner(clock),
        clock=clock,
        sleep=real_sleep,  # only between health polls of the freshly started process
    )


def _served_catalog_and_health(target: str, token: str) -> tuple[str, str]:
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT_S)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
        create = json_format.ParseDict(dict(PROBE_REQUEST), pb.CreateEstimateRequest())
        create.request_id = "after-rollback"
        request = pb.ValidateEstimateRequest(request=create)
        reply = pb_grpc.EstimatorServiceStub(channel).ValidateEstimate(
            request, metadata=(("authorization", f"Bearer {token}"),), timeout=TIMEOUT_S
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(health.status), reply.estimate.catalog_version


def test_promotes_v1_then_refuses_v2_and_v1_serves_again(tmp_path: Path, deployment: Deployment) -> None:
    commit = _head()
    v1 = _build(tmp_path, commit, "1.0.1")
    v2 = _build(tmp_path, commit, "1.0.2", _broken_catalog(tmp_path / "catalog-v2"))
    assert v1.manifest.catalog_version != v2.manifest.catalog_version
    assert v1.manifest.descriptor_set_sha256 == v2.manifest.descriptor_set_sha256

    # Stage v1 (no switch) so its own CLI can create the tokens the checks use.
    prepared = _deploy("prepare", str(v1.wheel_path), "--version", "1.0.1", "--root", str(deployment.root))
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    token = deployment.token("1.0.1", "ESTIMATOR")
    viewer = deployment.token("1.0.1", "VIEWER")
    settings = _settings(tmp_path, deployment, token, viewer)
    tracker = FileIssueTracker(settings.tracker_dir)

    # ---- v1: every check passes, DEPLOY issue filed, approver recorded
    first = promote(_options(v1), settings, _deps(settings, v1, tracker))
    assert first.status is PromotionStatus.PROMOTED, first.lines()
    assert {c.name: c.passed for c in first.checks} == {
        "verify": True,
        "deploy": True,
        "health": True,
        "version": True,
        "smoke": True,
        "regression": True,
        "rbac": True,
        "catalog": True,
        "slo": True,
    }
    assert first.smoke is not None and (first.smoke.passed, first.smoke.total) == (3, 3)
    assert first.regression is not None and (first.regression.passed, first.regression.total) == (40, 40)
    assert first.probe is not None and first.probe.viewer_download_code == "PERMISSION_DENIED"
    assert first.burst is not None and first.burst.requests == 50 and len(first.latency_samples) == 50
    assert first.issue is not None and first.issue.created
    assert tracker.find(deploy_idempotency_key("1.0.1", "Production")) is not None
    v1_dir = settings.release_dir / "1.0.1"
    for name in (
        "deploy.log",
        "checks.json",
        "metrics-snapshot.json",
        "latency-samples.json",
        "regression-report.txt",
    ):
        assert (v1_dir / name).stat().st_size > 0, name
    assert "kis-deploy: 1.0.1 is SERVING" in (v1_dir / "deploy.log").read_text(encoding="utf-8")
    state = json.loads((v1_dir / "promotion.json").read_text(encoding="utf-8"))
    assert (state["status"], state["approved_by"], state["issue_key"]) == ("promoted", "CEO", first.issue.key)
    pid_v1 = (deployment.root / "service.pid").read_text(encoding="utf-8")

    # ---- v1 again: already promoted, no redeploy, no second issue
    out = io.StringIO()
    again = run_promote(settings, _options(v1), out, tracker=tracker)
    assert again == 0, out.getvalue()
    assert "1.0.1 already promoted" in out.getvalue()
    assert (deployment.root / "service.pid").read_text(encoding="utf-8") == pid_v1
    assert len([p for p in settings.tracker_dir.iterdir() if p.is_dir()]) == 1

    # ---- v1 again from an empty release directory (another operator's machine): the target says it
    # serves 1.0.1, so nothing is deployed or rolled back; the DEPLOY issue is found, not filed again
    elsewhere = replace(settings, release_dir=tmp_path / "empty-release-dir")
    history_before = deployment.status()["history"]
    out = io.StringIO()
    assert run_promote(elsewhere, _options(v1), out, tracker=tracker) == 0, out.getvalue()
    assert "not deployed: the target already serves 1.0.1" in out.getvalue()
    assert (deployment.root / "service.pid").read_text(encoding="utf-8") == pid_v1
    assert deployment.status()["history"] == history_before
    assert len([p for p in settings.tracker_dir.iterdir() if p.is_dir()]) == 1

    # ---- v2: regression fails → refused, rolled back, v1 serving again
    second = promote(_options(v2), settings, _deps(settings, v2, tracker))
    assert second.status is PromotionStatus.REFUSED and second.exit_code == 1
    failed = {c.name for c in second.failed_checks}
    assert "regression" in failed and "deploy" not in failed
    assert second.regression is not None and second.regression.passed < 40
    assert f"regression {second.regression.passed}/40" in second.message
    assert second.message.startswith("promotion of 1.0.2 refused:")
    assert second.rollback is not None and second.rollback.command is not None and second.rollback.command.ok
    assert (second.rollback.previous_version, second.rollback.previous_running) == ("1.0.1", True)
    assert second.rollback.serving is not None and second.rollback.serving.commit == commit
    assert tracker.find(deploy_idempotency_key("1.0.2", "Production")) is None
    v2_dir = settings.release_dir / "1.0.2"
    assert "rolled back to 1.0.1" in (v2_dir / "rollback.log").read_text(encoding="utf-8")
    assert json.loads((v2_dir / "promotion.json").read_text(encoding="utf-8"))["status"] == "refused"

    status = deployment.status()
    assert (status["current"], status["history"], status["running"]) == ("1.0.1", ["1.0.1"], True)
    health, catalog = _served_catalog_and_health(deployment.target, token)
    assert (health, catalog) == ("SERVING", v1.manifest.catalog_version)
    smoke = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "kis-estimator"), "smoke", "--target", deployment.target],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(KIS_TOKEN=token),
        check=False,
    )
    assert smoke.returncode == 0 and "smoke: 3/3 passed" in smoke.stdout, smoke.stdout + smoke.stderr


def test_build_is_reproducible_and_prints_short_hashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = _head()
    a = _build(tmp_path / "a", commit, "1.0.1")
    monkeypatch.chdir(tmp_path)  # the README's `--out dist/`: a relative output directory
    b = build_release(
        BuildOptions(source_dir=ROOT, out_dir=Path("b/dist"), version_override="1.0.1", source_ref=commit)
    )
    assert b.manifest_path == tmp_path / "b" / "dist" / "kis_estimator-1.0.1.manifest.json"
    assert a.manifest.artifacts == b.manifest.artifacts  # names, sizes and SHA-256 of wheel and sdist
    # the manifest too: its build_time is the commit's time, so its SHA-256 can be re-verified
    assert a.manifest_path.read_bytes() == b.manifest_path.read_bytes()
    assert a.manifest_sha256 == b.manifest_sha256
    assert a.manifest.changes and all(a.manifest.changes)  # 1.0.1 has no CHANGELOG section: commit subjects
    assert a.manifest.descriptor_set_sha256 == b.manifest.descriptor_set_sha256
    assert (a.manifest.git_commit, a.manifest.git_dirty) == (commit, False)
    assert a.wheel_path.name == "kis_estimator-1.0.1-py3-none-any.whl"
    assert a.manifest.rules_version == "KIS-RULES-1.0"
    wheel_sha = a.manifest.wheel.sha256
    assert f"  SHA-256 {wheel_sha}  ({wheel_sha[:16]}...{wheel_sha[-4:]})" in a.lines()
