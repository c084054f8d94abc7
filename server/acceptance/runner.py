"""Runs the acceptance cases (docs/pricing-rules.md §17 regression, §18 supplementary, §19 smoke) over gRPC.

A pure client: it talks to any endpoint through the generated stubs, like ``kis-estimator regress
--target HOST:PORT``, and the in-process test suite uses the very same code.

Against a live server the suites run in an acceptance sandbox (``kis-sandbox`` header, see
server/service/sandbox.py): a throwaway store per run, so they leave no trace in production (no
MIXED quota used, no estimates, nothing in the month's report) and pass on every run of the month.
``--no-sandbox`` runs them against the real store instead, which §17 allows only when it is empty.

Run prefix: ``{run}`` in request ids and dedup keys is replaced by a prefix unique to the run, so the
suite can run twice against one store without replaying the first run's stored replies. Expected
values never depend on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta, timezone
from typing import Any

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kis_estimator.client import CallError
from kis_estimator.server.acceptance.cases import Case, build_request, load_cases, substitute
from kis_estimator.server.clock import Clock, SystemClock
from kis_estimator.server.gen.kis.estimator.v1 import admin_pb2 as admin_pb
from kis_estimator.server.gen.kis.estimator.v1 import admin_pb2_grpc as admin_grpc
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from kis_estimator.server.gen.kis.estimator.v1 import evidence_pb2 as evidence_pb
from kis_estimator.server.gen.kis.estimator.v1 import evidence_pb2_grpc as evidence_grpc
from kis_estimator.server.gen.kis.estimator.v1 import review_pb2 as review_pb
from kis_estimator.server.gen.kis.estimator.v1 import review_pb2_grpc as review_grpc
from kis_estimator.server.service.sandbox import END_HEADER as SANDBOX_END_HEADER
from kis_estimator.server.service.sandbox import HEADER as SANDBOX_HEADER

KST = timezone(timedelta(hours=9))
CALL_TIMEOUT_S = 10.0
DEFAULT_ROLE = "ESTIMATOR"  # steps without "role" call as an estimator; "role": null calls without a token
SUPPORTED_RPCS = frozenset(
    {
        "CreateEstimate",
        "GetEstimate",
        "ValidateEstimate",
        "CompleteReview",
        "GrantMixedException",
        "GetEvidenceBundle",
    }
)

# Statuses, decisions as the cases spell them.
_STATUS_NAMES = {v: k.removeprefix("ESTIMATE_STATUS_") for k, v in pb.EstimateStatus.items()}
_DECISION_NAMES = {v: k.removeprefix("DECISION_") for k, v in pb.Decision.items()}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one call returned: status code name, the estimate view (on OK) or the error details."""

    code: str
    estimate: Mapping[str, Any] | None = None
    raw: bytes = b""
    violations: tuple[Mapping[str, str], ...] = ()
    error_info: Mapping[str, str] = field(default_factory=dict)
    message: str = ""


@dataclass(slots=True)
class CaseResult:
    case_id: str
    suite: str
    title: str
    passed: bool = False
    skipped: str = ""
    failures: list[str] = field(default_factory=list)
    estimate_ids: list[str] = field(default_factory=list)


def _opt(msg: Any, name: str) -> int | None:
    return int(getattr(msg, name)) if msg.HasField(name) else None


def estimate_view(est: pb.Estimate) -> dict[str, Any]:
    """A plain-data view of an Estimate message, in the vocabulary of the case files."""
    lines = []
    for line in est.lines:
        lines.append(
            {
                "no": line.no,
                "section": line.section,
                "name": line.name,
                "spec": line.spec,
                "unit": line.unit,
                "qty": line.qty if line.WhichOneof("quantity") == "qty" else None,
                "qty_kg": line.qty_kg if line.WhichOneof("quantity") == "qty_kg" else None,
                "unit_price_krw": _opt(line, "unit_price_krw"),
                "amount_krw": _opt(line, "amount_krw"),
                "rule_id": line.rule_id,
                "reason_id": line.reason_id,
            }
        )
    enc = est.enclosure
    return {
        "estimate_id": est.estimate_id,
        "revision": est.revision,
        "evidence_sha256": est.evidence.sha256,
        "status": _STATUS_NAMES[est.status],
        "decision": _DECISION_NAMES[est.decision],
        "catalog_version": est.catalog_version,
        "size_mm": [est.sizing.width_mm, est.sizing.height_mm, est.sizing.depth_mm],
        "sizing": json_format.MessageToDict(est.sizing, preserving_proto_field_name=True),
        "enclosure": {
            "kind": enc.kind,
            "series": enc.series,
            "model": enc.model,
            "material": enc.material,
            "width_mm": enc.width_mm,
            "height_mm": enc.height_mm,
            "depth_mm": enc.depth_mm,
            "unit_price_krw": _opt(enc, "unit_price_krw"),
        },
        "totals": {
            "subtotal_krw": _opt(est.totals, "subtotal_krw"),
            "vat_krw": _opt(est.totals, "vat_krw"),
            "total_krw": _opt(est.totals, "total_krw"),
            "partial_subtotal_krw": est.totals.partial_subtotal_krw,
        },
        "review_reasons": [
            {"reason_id": r.reason_id, "code": r.code, "path": r.path} for r in est.review_reasons
        ],
        "warnings": [{"code": w.code, "path": w.path} for w in est.warnings],
        "phase_balance": {
            "applicable": est.phase_balance.applicable,
            "r_a": est.phase_balance.r_a,
            "s_a": est.phase_balance.s_a,
            "t_a": est.phase_balance.t_a,
            "imbalance_pct": est.phase_balance.imbalance_pct,
        },
        "lines": lines,
        "selections": [
            {
                "path": s.path,
                "kind": s.kind,
                "poles": s.poles,
                "trip_at": s.trip_at,
                "qty": s.qty,
                "high_sensitivity": s.high_sensitivity,
                "explicit_model": s.explicit_model,
                "model": s.model,
                "brand": s.brand,
                "grade": s.grade,
                "frame_af": s.frame_af,
                "unit_price_krw": _opt(s, "unit_price_krw"),
                "reason_id": s.reason_id,
            }
            for s in est.selections
        ],
    }


def outcome_of_error(err: grpc.RpcError) -> Outcome:
    """Decode a failed call's rich status."""
    error = CallError.of(err)
    info = {"reason": error.reason, "domain": error.domain, **error.metadata} if error.domain else {}
    return Outcome(
        code=error.status.name,
        violations=tuple(dataclasses.asdict(v) for v in error.violations),
        error_info=info,
        message=error.message,
    )


def _subset_failures(path: str, expected: Any, actual: Any) -> list[str]:
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            return [f"{path}: expected an object, got {actual!r}"]
        out: list[str] = []
        for key, value in expected.items():
            out += _subset_failures(f"{path}.{key}", value, actual.get(key))
        return out
    if expected != actual:
        return [f"{path}: expected {expected!r}, got {actual!r}"]
    return []


def _matches(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> bool:
    return not _subset_failures("", expected, actual)


def check_outcome(expect: Mapping[str, Any], outcome: Outcome, refs: Mapping[str, str]) -> list[str]:
    """Every difference between a step's expectation and what the call returned."""
    failures: list[str] = []
    want_code = expect.get("code", "OK")
    if outcome.code != want_code:
        first = outcome.violations[0] if outcome.violations else {}
        failures.append(
            f"code: expected {want_code}, got {outcome.code} {first.get('code', '')} {outcome.message}"
        )
        return failures
    if "violations" in expect:
        got = [{"code": v["code"], "field": v["field"]} for v in outcome.violations]
        if got != list(expect["violations"]):
            failures.append(f"violations: expected {expect['violations']}, got {got}")
    for key, value in expect.get("error_info", {}).items():
        want = (
            refs.get(value[1:], f"<unknown ref {value}>")
            if isinstance(value, str) and value.startswith("@")
            else value
        )
        if outcome.error_info.get(key) != want:
            failures.append(f"error_info.{key}: expected {want!r}, got {outcome.error_info.get(key)!r}")
    est = outcome.estimate
    if est is None:
        return failures
    if "bundle_sha256" in expect:
        want = expect["bundle_sha256"]
        want = refs.get(want[1:], f"<unknown ref {want}>") if want.startswith("@") else want
        if est.get("bundle_sha256") != want:
            failures.append(f"bundle_sha256: expected {want}, got {est.get('bundle_sha256')}")
        return failures
    for key in ("status", "decision", "size_mm", "revision"):
        if key in expect and est.get(key) != expect[key]:
            failures.append(f"{key}: expected {expect[key]!r}, got {est.get(key)!r}")
    for key in ("enclosure", "totals", "phase_balance"):
        if key in expect:
            failures += _subset_failures(key, expect[key], est[key])
    if "review_reasons" in expect:
        got = [{"code": r["code"], "path": r["path"]} for r in est["review_reasons"]]
        want = [{"code": r["code"], "path": r["path"]} for r in expect["review_reasons"]]
        if got != want:
            failures.append(f"review_reasons: expected {want}, got {got}")
    for key in ("warnings", "lines", "selections"):
        for wanted in expect.get(key, []):
            if not any(_matches(wanted, row) for row in est[key]):
                failures.append(f"{key}: no entry matches {wanted!r} (have {est[key]!r})")
    return failures


Caller = Callable[[str, Mapping[str, Any], str | None], Outcome]


class SandboxUnavailable(Exception):
    """The target does not serve acceptance sandboxes (too old, disabled, or all in use)."""


def new_sandbox_id() -> str:
    """A fresh acceptance-sandbox run id (``kis-sandbox`` header)."""
    return f"acc-{uuid.uuid4().hex}"


class GrpcCaller:
    """Calls the estimator's RPCs by name with a bearer token per role.

    With ``sandbox`` (a run id), every call carries ``kis-sandbox: <run id>``: the target serves it from
    a throwaway store of that run and production data is untouched (server/service/sandbox.py).
    """

    def __init__(
        self, channel: grpc.Channel, tokens: Mapping[str, str], *, sandbox: str | None = None
    ) -> None:
        self._stub = pb_grpc.EstimatorServiceStub(channel)
        self._reviews = review_grpc.ReviewServiceStub(channel)
        self._admin = admin_grpc.AdminServiceStub(channel)
        self._evidence = evidence_grpc.EvidenceServiceStub(channel)
        self._tokens = tokens
        self._sandbox = sandbox

    def _metadata(self, role: str | None) -> tuple[tuple[str, str | bytes], ...]:
        token = self._tokens.get(role) if role else None
        auth: tuple[tuple[str, str | bytes], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        return (*auth, (SANDBOX_HEADER, self._sandbox)) if self._sandbox else auth

    def open_sandbox(self, role: str = DEFAULT_ROLE) -> None:
        """Make sure the target serves this caller's sandbox before any case runs.

        A server that ignored the header would run the suites against production; the sandbox echoes
        its run id in the trailing metadata of every successful call, so its absence is an error.
        """
        if self._sandbox is None:
            return
        try:
            _reply, call = self._admin.GetMixedQuota.with_call(
                admin_pb.GetMixedQuotaRequest(), metadata=self._metadata(role), timeout=CALL_TIMEOUT_S
            )
        except grpc.RpcError as err:
            outcome = outcome_of_error(err)
            raise SandboxUnavailable(f"{outcome.code}: {outcome.message}") from None
        echoed = dict(call.trailing_metadata() or ()).get(SANDBOX_HEADER)
        if echoed != self._sandbox:
            self._sandbox = None
            raise SandboxUnavailable(
                "the target does not serve acceptance sandboxes (no kis-sandbox echo); "
                "run against an empty store with --no-sandbox instead"
            )

    def close_sandbox(self, role: str = DEFAULT_ROLE) -> None:
        """End the run: the target closes and deletes this caller's sandbox (best effort)."""
        if self._sandbox is None:
            return
        metadata = (*self._metadata(role), (SANDBOX_END_HEADER, "1"))
        # an unclosed sandbox expires on the server after its idle time
        with contextlib.suppress(grpc.RpcError):
            request = admin_pb.GetMixedQuotaRequest()
            self._admin.GetMixedQuota(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
        self._sandbox = None

    def __enter__(self) -> GrpcCaller:
        self.open_sandbox()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_sandbox()

    def __call__(self, rpc: str, request: Mapping[str, Any], role: str | None) -> Outcome:
        metadata = self._metadata(role)
        try:
            if rpc == "CreateEstimate":
                msg = json_format.ParseDict(dict(request), pb.CreateEstimateRequest())
                reply, _call = self._stub.CreateEstimate.with_call(
                    msg, metadata=metadata, timeout=CALL_TIMEOUT_S
                )
                return Outcome("OK", estimate_view(reply.estimate), reply.SerializeToString())
            if rpc == "ValidateEstimate":
                msg_v = json_format.ParseDict({"request": request}, pb.ValidateEstimateRequest())
                reply_v = self._stub.ValidateEstimate(msg_v, metadata=metadata, timeout=CALL_TIMEOUT_S)
                return Outcome("OK", estimate_view(reply_v.estimate), reply_v.SerializeToString())
            if rpc == "GetEstimate":
                msg_g = json_format.ParseDict(dict(request), pb.GetEstimateRequest())
                reply_g = self._stub.GetEstimate(msg_g, metadata=metadata, timeout=CALL_TIMEOUT_S)
                return Outcome("OK", estimate_view(reply_g.estimate), reply_g.SerializeToString())
            if rpc == "CompleteReview":
                msg_c = json_format.ParseDict(dict(request), review_pb.CompleteReviewRequest())
                reply_c = self._reviews.CompleteReview(msg_c, metadata=metadata, timeout=CALL_TIMEOUT_S)
                return Outcome("OK", estimate_view(reply_c.estimate), reply_c.SerializeToString())
            if rpc == "GrantMixedException":
                msg_m = json_format.ParseDict(dict(request), admin_pb.GrantMixedExceptionRequest())
                reply_m = self._admin.GrantMixedException(msg_m, metadata=metadata, timeout=CALL_TIMEOUT_S)
                return Outcome("OK", None, reply_m.SerializeToString())
            if rpc == "GetEvidenceBundle":
                msg_e = json_format.ParseDict(dict(request), evidence_pb.GetEvidenceBundleRequest())
                data = b"".join(
                    c.chunk
                    for c in self._evidence.GetEvidenceBundle(
                        msg_e, metadata=metadata, timeout=CALL_TIMEOUT_S
                    )
                )
                return Outcome("OK", {"bundle_sha256": hashlib.sha256(data).hexdigest()}, data)
        except grpc.RpcError as err:
            return outcome_of_error(err)
        raise ValueError(f"unsupported rpc {rpc}")


def _resolve_refs(obj: Any, refs: Mapping[str, str]) -> Any:
    if isinstance(obj, str) and obj.startswith("@") and obj[1:] in refs:
        return refs[obj[1:]]
    if isinstance(obj, dict):
        return {k: _resolve_refs(v, refs) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve_refs(v, refs) for v in obj]
    return obj


def run_case(case: Case, call: Caller, run: str, month: str, refs: dict[str, str]) -> CaseResult:
    """Run one case's steps in order; later steps may refer to ``@step0`` or ``@<case id>``."""
    result = CaseResult(case_id=case.id, suite=case.suite, title=case.title)
    missing = [rpc for rpc in case.requires if rpc not in SUPPORTED_RPCS]
    if missing:
        result.skipped = f"needs {', '.join(missing)} (not served yet)"
        return result
    step_refs = dict(refs)
    replies: list[bytes] = []
    for index, step in enumerate(case.steps):
        request = _resolve_refs(substitute(build_request(step), run, month), step_refs)
        role = None if step.anonymous else (step.role or DEFAULT_ROLE)
        outcome = call(step.rpc, request, role)
        expect = substitute(dict(step.expect), run, month)
        failures = check_outcome(expect, outcome, step_refs)
        same = expect.get("same_as_step")
        if same is not None and (same >= len(replies) or replies[same] != outcome.raw):
            failures.append(f"reply differs from step {same}'s reply")
        result.failures += [f"step {index}: {f}" for f in failures]
        replies.append(outcome.raw)
        if outcome.estimate is not None and outcome.estimate.get("estimate_id"):
            step_refs[f"step{index}"] = outcome.estimate["estimate_id"]
            result.estimate_ids.append(outcome.estimate["estimate_id"])
            if case.id not in refs:
                refs[case.id] = outcome.estimate["estimate_id"]
                refs[f"{case.id}.sha256"] = outcome.estimate["evidence_sha256"]
    result.passed = not result.failures
    return result


def kst_month(clock: Clock) -> str:
    return clock.now().astimezone(KST).strftime("%Y-%m")


def run_suites(
    call: Caller,
    suites: Sequence[str] = ("regression",),
    *,
    run: str | None = None,
    clock: Clock | None = None,
    cases: Sequence[Case] | None = None,
) -> list[CaseResult]:
    """Run the named suites in case order; returns one result per case."""
    run = run if run is not None else f"r{uuid.uuid4().hex[:8]}-"
    month = kst_month(clock or SystemClock())
    refs: dict[str, str] = {}
    selected = [c for c in (cases if cases is not None else load_cases()) if c.suite in suites]
    return [run_case(case, call, run, month, refs) for case in selected]


# --------------------------------------------------------------------------- smoke (§19)


def run_smoke(channel: grpc.Channel, call: Caller, *, clock: Clock | None = None) -> list[CaseResult]:
    """The three smoke checks of docs/pricing-rules.md §19."""
    results = []
    health = CaseResult("SMOKE-1", "smoke", "grpc.health.v1.Health/Check service '' is SERVING")
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT_S
        )
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            health.failures.append(
                f"health status {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
            )
    except grpc.RpcError as err:
        health.failures.append(f"health check failed: {outcome_of_error(err).code}")
    health.passed = not health.failures
    results.append(health)

    s01 = next(c for c in load_cases() if c.id == "S01")
    request = dict(build_request(s01.steps[0]))
    request.pop("meta", None)
    request["request_id"] = f"smoke-{uuid.uuid4().hex}"
    create = CaseResult("SMOKE-2", "smoke", "S01 without dedup_key: COMPLETED, total 495,385")
    outcome = call("CreateEstimate", request, "ESTIMATOR")
    create.failures = check_outcome(
        {"code": "OK", "status": "COMPLETED", "decision": "OK", "totals": {"total_krw": 495385}}, outcome, {}
    )
    create.passed = not create.failures
    results.append(create)

    bad = dict(request)
    bad["request_id"] = f"smoke-{uuid.uuid4().hex}"
    bad["branches"] = [dict(bad["branches"][0], poles=5), *bad["branches"][1:]]
    invalid = CaseResult("SMOKE-3", "smoke", "branches[0].poles = 5: exactly one POLES_MISMATCH")
    invalid.failures = check_outcome(
        {
            "code": "INVALID_ARGUMENT",
            "violations": [{"code": "POLES_MISMATCH", "field": "branches[0].poles"}],
        },
        call("CreateEstimate", bad, "ESTIMATOR"),
        {},
    )
    invalid.passed = not invalid.failures
    results.append(invalid)
    return results


def summarise(results: Sequence[CaseResult]) -> tuple[int, int, int]:
    """(passed, failed, skipped)."""
    passed = sum(1 for r in results if r.passed)
    skipped = sum(1 for r in results if r.skipped)
    return passed, len(results) - passed - skipped, skipped
