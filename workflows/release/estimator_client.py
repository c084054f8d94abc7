"""The estimator seam of the release workflow: T+0 checks against a deployed service over gRPC.

:class:`EstimatorClient` is the ``Protocol`` the promotion pipeline sees; :class:`GrpcEstimatorClient`
is its one real implementation. Every number comes from real calls to the target:

* **health**: ``grpc.health.v1.Health/Check`` for service ``""``.
* **smoke (3) and regression (40)**: run by the *candidate's own* acceptance runner — the
  ``kis-estimator smoke|regress --target`` code and case files inside the wheel being promoted —
  in a child process (:class:`CandidateAcceptanceRunner`), parsed from its ``PASS/FAIL`` lines and
  its ``regression: 40/40 passed`` summary.

  Why not a second runner here: docs/conventions.md §1 lets workflows import only
  ``kis_estimator.server.gen`` from ``server``, and re-implementing ``kis_estimator.server.acceptance``
  (case loading, ``base``/``patch``, ``{run}`` substitution, the subset comparison of ~40 expectations)
  in workflows would give two
  implementations of the acceptance semantics that can silently disagree. Running the runner that ships in the
  artifact keeps one implementation, tests the suite that belongs to the candidate, and still reaches the
  service only over a channel, like any client. The runner's report is kept verbatim as the regression report
  attachment.
* **Which version serves**: ``ServerInfoService.GetServerInfo`` (version, commit, catalog,
  start time): the target's own word, never the workflow's records.
* **RBAC**: a probe estimate is created with the release token, in an acceptance sandbox of its
  own (``kis-sandbox`` metadata; production keeps no trace) where the target offers them; the
  non-admin (VIEWER) token must be able to read it (``GetEstimate`` OK, so the token itself is
  valid) and must be refused its evidence bundle (``GetEvidenceBundle`` → ``PERMISSION_DENIED``).
  The probe's ``catalog_version`` tells which catalog the target serves.
* **SLO burst**: ``N`` sequential ``ValidateEstimate`` calls (a dry run: nothing stored, no quota)
  timed client-side; p50/p95 by nearest rank; every non-OK reply counts as an error, since each
  request of the burst is valid. The samples are kept for the latency chart.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_attempt, wait_fixed

from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from kis_estimator.server.gen.kis.estimator.v1 import evidence_pb2 as evidence_pb
from kis_estimator.server.gen.kis.estimator.v1 import evidence_pb2_grpc as evidence_grpc
from kis_estimator.server.gen.kis.estimator.v1 import server_info_pb2 as info_pb
from kis_estimator.server.gen.kis.estimator.v1 import server_info_pb2_grpc as info_grpc
from kis_estimator.workflows.percentiles import percentile

__all__ = [
    "REGRESSION_TOTAL",
    "SMOKE_TOTAL",
    "BurstResult",
    "CandidateAcceptanceRunner",
    "EstimatorClient",
    "GrpcEstimatorClient",
    "HealthResult",
    "ProbeResult",
    "ServerInfo",
    "SuiteResult",
    "parse_suite_report",
    "percentile",
    "wait_serving",
]

CALL_TIMEOUT_S = 10.0
SMOKE_TOTAL = 3  # docs/pricing-rules.md §19
REGRESSION_TOTAL = 40  # docs/pricing-rules.md §17
SUITE_TIMEOUT_S = 300.0
# The server's acceptance-sandbox metadata (its wire contract; workflows import only
# kis_estimator.server.gen): calls carrying it run against a throwaway store, and the server echoes it in the
# trailers.
SANDBOX_HEADER = "kis-sandbox"
SANDBOX_END_HEADER = "kis-sandbox-end"
Suite = Literal["smoke", "regression"]

# The smoke request of docs/pricing-rules.md §19 (S01 without its dedup key): priced COMPLETED, 495,385 KRW.
PROBE_REQUEST: Mapping[str, Any] = {
    "brand": "LS",
    "installation": {"location": "INDOOR", "mount": "FLUSH"},
    "main": {"kind": "MCCB", "poles": 3, "trip_at": 100},
    "branches": [{"kind": "MCCB", "poles": 3, "trip_at": 100, "qty": 4}],
    "accessories": {"enabled": False},
}

_SUMMARY = re.compile(r"^(smoke|regression|acceptance): (\d+)/(\d+) passed(?:, (\d+) skipped)?\s*$")
_CASE_LINE = re.compile(r"^(PASS|FAIL|SKIP)\s+(\S+)")

# Runs in the child: the candidate's own CLI from the unpacked wheel, first on sys.path. The token
# comes on stdin (never argv, which other users can read in ps).
_RUNNER_SCRIPT = """
import os, sys
os.environ["KIS_TOKEN"] = sys.stdin.readline().strip()
sys.path.insert(0, sys.argv[1])
from kis_estimator.server.cli import main
raise SystemExit(main(sys.argv[2:]))
"""


# ------------------------------------------------------------------------------------ results


@dataclass(frozen=True, slots=True)
class HealthResult:
    status: str  # SERVING, NOT_SERVING, SERVICE_UNKNOWN, or UNREACHABLE
    detail: str = ""

    @property
    def serving(self) -> bool:
        return self.status == "SERVING"


@dataclass(frozen=True, slots=True)
class SuiteResult:
    """One acceptance suite's outcome; ``report`` is the runner's full text output."""

    suite: str
    passed: int
    total: int
    skipped: int
    expected_total: int
    failed_cases: tuple[str, ...] = ()
    report: str = ""
    error: str = ""  # the runner could not run or its output had no summary

    @property
    def ok(self) -> bool:
        return not self.error and self.skipped == 0 and self.passed == self.total == self.expected_total

    @property
    def summary(self) -> str:
        """``regression 38/40`` (+ failed case ids), as the refusal message shows it."""
        if self.error:
            return f"{self.suite} not run: {self.error}"
        text = f"{self.suite} {self.passed}/{self.total}"
        if self.failed_cases:
            text += f" (failed {', '.join(self.failed_cases)})"
        if self.skipped:
            text += f", {self.skipped} skipped"
        if self.total != self.expected_total:
            text += f", expected {self.expected_total} cases"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "passed": self.passed,
            "total": self.total,
            "skipped": self.skipped,
            "expected_total": self.expected_total,
            "failed_cases": list(self.failed_cases),
            "error": self.error,
            "ok": self.ok,
        }


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """RBAC probe: the viewer may read an estimate but not download its evidence bundle."""

    estimate_id: str
    catalog_version: str
    viewer_read_code: str  # expected OK
    viewer_download_code: str  # expected PERMISSION_DENIED
    error: str = ""  # the probe estimate could not be created

    @property
    def rbac_ok(self) -> bool:
        return (
            not self.error
            and self.viewer_read_code == "OK"
            and self.viewer_download_code == "PERMISSION_DENIED"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimate_id": self.estimate_id,
            "catalog_version": self.catalog_version,
            "viewer_read_code": self.viewer_read_code,
            "viewer_download_code": self.viewer_download_code,
            "error": self.error,
            "rbac_ok": self.rbac_ok,
        }


@dataclass(frozen=True, slots=True)
class BurstResult:
    """A measured burst: ``samples`` are (seconds since the burst started, latency ms)."""

    samples: tuple[tuple[float, float], ...]
    codes: tuple[tuple[str, int], ...]  # status code name → count, sorted by name
    rpc: str = "ValidateEstimate"

    @property
    def requests(self) -> int:
        return len(self.samples)

    @property
    def errors(self) -> int:
        return sum(n for code, n in self.codes if code != "OK")

    @property
    def error_rate(self) -> float | None:
        """Errors ÷ requests (0…1); None for an empty burst."""
        return self.errors / self.requests if self.requests else None

    @property
    def p50_ms(self) -> float | None:
        return percentile([ms for _, ms in self.samples], 0.50)

    @property
    def p95_ms(self) -> float | None:
        return percentile([ms for _, ms in self.samples], 0.95)


# ------------------------------------------------------------------------------------ the seam


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What the target itself says it runs (``ServerInfoService.GetServerInfo``)."""

    version: str
    commit: str = ""
    catalog_version: str = ""
    started_at: datetime | None = None

    def describe(self) -> str:
        commit = f" (commit {self.commit[:12]})" if self.commit and self.commit != "unknown" else ""
        return f"{self.version}{commit}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "commit": self.commit,
            "catalog_version": self.catalog_version,
            "started_at": self.started_at.isoformat() if self.started_at else None,
        }


class EstimatorClient(Protocol):
    """What the promotion guard asks of a deployed estimator."""

    def health(self) -> HealthResult: ...

    def smoke(self) -> SuiteResult: ...

    def regression(self) -> SuiteResult: ...

    def probe(self) -> ProbeResult:
        """Create a probe estimate, then check RBAC with the viewer token (see module doc)."""
        ...

    def slo_burst(self, requests: int) -> BurstResult: ...

    def server_info(self) -> ServerInfo | None:
        """The version the target serves; None when it cannot say (unreachable, or too old)."""
        ...


def wait_serving(
    client: EstimatorClient, sleep: Callable[[float], None], *, attempts: int, wait_s: float = 1.0
) -> HealthResult:
    """Poll health until SERVING, at most ``attempts`` times ``wait_s`` apart; the last answer."""

    def last(state: RetryCallState) -> HealthResult:
        assert state.outcome is not None
        value: HealthResult = state.outcome.result()
        return value

    retrying = Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait_fixed(wait_s),
        retry=retry_if_result(lambda h: not h.serving),
        retry_error_callback=last,
        sleep=sleep,
    )
    health: HealthResult = retrying(client.health)
    return health


# ------------------------------------------------------------------------------------ acceptance runner


def parse_suite_report(suite: str, report: str, expected_total: int) -> SuiteResult:
    """Read ``kis-estimator smoke|regress`` output: case lines and the ``N/M passed`` summary."""
    failed = tuple(
        m.group(2) for line in report.splitlines() if (m := _CASE_LINE.match(line)) and m[1] == "FAIL"
    )
    summary = next((m for line in report.splitlines() if (m := _SUMMARY.match(line.strip()))), None)
    if summary is None:
        tail = " | ".join(report.strip().splitlines()[-3:])
        return SuiteResult(
            suite, 0, 0, 0, expected_total, failed, report, f"no summary line in output: {tail}"
        )
    return SuiteResult(
        suite=suite,
        passed=int(summary[2]),
        total=int(summary[3]),
        skipped=int(summary[4] or 0),
        expected_total=expected_total,
        failed_cases=failed,
        report=report,
    )


@dataclass(frozen=True, slots=True)
class CandidateAcceptanceRunner:
    """Runs the acceptance suites shipped in ``wheel`` against a target, in a child process.

    The wheel (pure Python) is unpacked once under ``work_dir``; the child is this interpreter in
    isolated mode (``-I``: no ``PYTHONPATH``, no user site) with the unpacked tree first on
    ``sys.path``, so it runs the candidate's code with this environment's dependencies.
    """

    wheel: Path
    work_dir: Path
    python: Path = field(default_factory=lambda: Path(sys.executable))
    timeout_s: float = SUITE_TIMEOUT_S

    def _unpacked(self) -> Path:
        target = self.work_dir / f"candidate-{self.wheel.stem}"
        done = target / ".unpacked"
        if done.exists():
            return target
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        with zipfile.ZipFile(self.wheel) as zf:
            for name in zf.namelist():
                # A wheel entry may not escape the directory (absolute or .. paths).
                if name.startswith("/") or ".." in Path(name).parts:
                    raise ValueError(f"{self.wheel.name}: unsafe entry {name!r}")
            zf.extractall(target)
        done.write_text("", encoding="utf-8")
        return target

    def run(self, suite: Suite, target: str, token: str) -> SuiteResult:
        expected = SMOKE_TOTAL if suite == "smoke" else REGRESSION_TOTAL
        command = "smoke" if suite == "smoke" else "regress"
        try:
            lib = self._unpacked()
            proc = subprocess.run(
                [str(self.python), "-I", "-c", _RUNNER_SCRIPT, str(lib), command, "--target", target],
                input=token + "\n",
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                cwd=lib,
                check=False,
            )
        except (OSError, ValueError, zipfile.BadZipFile, subprocess.TimeoutExpired) as exc:
            return SuiteResult(suite, 0, 0, 0, expected, error=f"{type(exc).__name__}: {exc}")
        report = proc.stdout + (f"\n[stderr]\n{proc.stderr}" if proc.stderr.strip() else "")
        result = parse_suite_report(suite, proc.stdout, expected)
        return SuiteResult(
            suite=result.suite,
            passed=result.passed,
            total=result.total,
            skipped=result.skipped,
            expected_total=expected,
            failed_cases=result.failed_cases,
            report=report,
            error=result.error and f"exit {proc.returncode}; {result.error}",
        )


class AcceptanceRunner(Protocol):
    def run(self, suite: Suite, target: str, token: str) -> SuiteResult: ...


# ------------------------------------------------------------------------------------ gRPC client


def _code(err: grpc.RpcError) -> str:
    call: Any = err  # a failed call is also a grpc.Call; RpcError's stub does not say so
    return str(call.code().name)


class GrpcEstimatorClient:
    """:class:`EstimatorClient` over one insecure channel to ``target`` (use as a context manager)."""

    def __init__(
        self,
        target: str,
        *,
        token: str,
        viewer_token: str,
        acceptance: AcceptanceRunner,
        timer: Callable[[], float] = time.perf_counter,
        call_timeout_s: float = CALL_TIMEOUT_S,
    ) -> None:
        self._target = target
        self._token = token
        self._viewer = viewer_token
        self._acceptance = acceptance
        self._timer = timer
        self._timeout = call_timeout_s
        self._channel = grpc.insecure_channel(target)
        self._estimator = pb_grpc.EstimatorServiceStub(self._channel)
        self._evidence = evidence_grpc.EvidenceServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._info = info_grpc.ServerInfoServiceStub(self._channel)

    def __enter__(self) -> GrpcEstimatorClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _auth(self, token: str) -> tuple[tuple[str, str | bytes], ...]:
        return (("authorization", f"Bearer {token}"),)

    def health(self) -> HealthResult:
        try:
            reply = self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=self._timeout)
        except grpc.RpcError as err:
            return HealthResult("UNREACHABLE", _code(err))
        return HealthResult(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def smoke(self) -> SuiteResult:
        return self._acceptance.run("smoke", self._target, self._token)

    def regression(self) -> SuiteResult:
        return self._acceptance.run("regression", self._target, self._token)

    def _request(self, prefix: str) -> pb.CreateEstimateRequest:
        msg = json_format.ParseDict(dict(PROBE_REQUEST), pb.CreateEstimateRequest())
        msg.request_id = f"{prefix}-{uuid.uuid4().hex}"
        return msg

    def server_info(self) -> ServerInfo | None:
        try:
            reply = self._info.GetServerInfo(info_pb.GetServerInfoRequest(), timeout=self._timeout)
        except grpc.RpcError:
            return None
        started = reply.started_at.ToDatetime(tzinfo=UTC) if reply.HasField("started_at") else None
        return ServerInfo(reply.version, reply.commit, reply.catalog_version, started)

    def _open_sandbox(self) -> str | None:
        """A fresh acceptance sandbox for the probe, or None when the target does not serve them.

        The probe's estimate then lives in a throwaway store: production keeps no trace of a
        promotion (no estimate a user could list, nothing in TAT or the monthly report).
        """
        run_id = f"release-probe-{uuid.uuid4().hex[:16]}"
        request = pb.ValidateEstimateRequest(request=self._request("release-sandbox"))
        try:
            _reply, call = self._estimator.ValidateEstimate.with_call(
                request,
                metadata=(*self._auth(self._token), (SANDBOX_HEADER, run_id)),
                timeout=self._timeout,
            )
        except grpc.RpcError:
            return None
        echoed = dict(call.trailing_metadata() or ()).get(SANDBOX_HEADER)
        return run_id if echoed == run_id else None

    def probe(self) -> ProbeResult:
        sandbox = self._open_sandbox()
        extra: tuple[tuple[str, str | bytes], ...] = ((SANDBOX_HEADER, sandbox),) if sandbox else ()
        try:
            return self._probe(extra)
        finally:
            if sandbox:
                with contextlib.suppress(grpc.RpcError):  # unclosed, it expires on the server
                    self._estimator.ValidateEstimate(
                        pb.ValidateEstimateRequest(request=self._request("release-sandbox")),
                        metadata=(*self._auth(self._token), *extra, (SANDBOX_END_HEADER, "1")),
                        timeout=self._timeout,
                    )

    def _probe(self, extra: tuple[tuple[str, str | bytes], ...]) -> ProbeResult:
        try:
            created = self._estimator.CreateEstimate(
                self._request("release-probe"),
                metadata=(*self._auth(self._token), *extra),
                timeout=self._timeout,
            )
        except grpc.RpcError as err:
            return ProbeResult("", "", "", "", error=f"CreateEstimate with the release token: {_code(err)}")
        estimate_id = created.estimate.estimate_id
        try:
            self._estimator.GetEstimate(
                pb.GetEstimateRequest(estimate_id=estimate_id),
                metadata=(*self._auth(self._viewer), *extra),
                timeout=self._timeout,
            )
            read_code = "OK"
        except grpc.RpcError as err:
            read_code = _code(err)
        try:
            for _chunk in self._evidence.GetEvidenceBundle(
                evidence_pb.GetEvidenceBundleRequest(estimate_id=estimate_id),
                metadata=(*self._auth(self._viewer), *extra),
                timeout=self._timeout,
            ):
                pass
            download_code = "OK"
        except grpc.RpcError as err:
            download_code = _code(err)
        return ProbeResult(estimate_id, created.estimate.catalog_version, read_code, download_code)

    def slo_burst(self, requests: int) -> BurstResult:
        samples: list[tuple[float, float]] = []
        codes: Counter[str] = Counter()
        metadata = self._auth(self._token)
        start = self._timer()
        for _ in range(requests):
            msg = pb.ValidateEstimateRequest(request=self._request("release-burst"))
            t0 = self._timer()
            try:
                self._estimator.ValidateEstimate(msg, metadata=metadata, timeout=self._timeout)
                code = "OK"
            except grpc.RpcError as err:
                code = _code(err)
            t1 = self._timer()
            samples.append((round(t0 - start, 6), round((t1 - t0) * 1000.0, 3)))
            codes[code] += 1
        return BurstResult(samples=tuple(samples), codes=tuple(sorted(codes.items())))
