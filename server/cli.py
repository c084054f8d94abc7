"""``kis-estimator``: serve, tokens, and a client for estimates, regression and smoke checks.

Client commands find the server with ``--target`` (default 127.0.0.1:8787) and the bearer token with
``--token`` or the ``KIS_TOKEN`` environment variable.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import hashlib
import json
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf import json_format

from kis_estimator.server.acceptance import runner
from kis_estimator.server.cli_view import LocalError, check_request_json, format_estimate, format_list
from kis_estimator.server.clock import SystemClock
from kis_estimator.server.engine.roles import Principal, Role
from kis_estimator.server.evidence.verify import verify_bundle
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from kis_estimator.server.gen.kis.estimator.v1 import evidence_pb2 as evidence_pb
from kis_estimator.server.gen.kis.estimator.v1 import evidence_pb2_grpc as evidence_grpc
from kis_estimator.server.gen.kis.estimator.v1 import review_pb2 as review_pb
from kis_estimator.server.gen.kis.estimator.v1 import review_pb2_grpc as review_grpc
from kis_estimator.server.logging_json import configure_logging
from kis_estimator.server.main import load_keyring, open_store, serve
from kis_estimator.server.service.admin import AdminService
from kis_estimator.server.service.caller import Caller
from kis_estimator.server.service.tokens import TokenService
from kis_estimator.server.settings import ClientSettings, Settings, SettingsError, parse_cpu_affinity
from kis_estimator.server.slo import DEFAULT_WINDOW, run_slo_report
from kis_estimator.server.storage.repository import Store
from kis_estimator.server.workers import pin_to_cpu, serve_workers, worker_cpus

DEFAULT_TARGET = "127.0.0.1:8787"


def _out(text: str = "", stream: TextIO | None = None) -> None:
    (stream or sys.stdout).write(text + "\n")


def _err(text: str) -> None:
    _out(text, sys.stderr)


def _channel(client: ClientSettings) -> grpc.Channel:
    return client.channel(options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)])


def _metadata(token: str | None) -> tuple[tuple[str, str | bytes], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def _print_error(err: grpc.RpcError, target: str = DEFAULT_TARGET, *, as_json: bool = False) -> int:
    outcome = runner.outcome_of_error(err)
    if as_json:
        _out(
            json.dumps(
                {
                    "error": {
                        "code": outcome.code,
                        "message": outcome.message,
                        "violations": outcome.violations,
                    }
                },
                ensure_ascii=False,
                indent=2,
            )
        )
        return 2
    _err(f"error: {outcome.code}: {outcome.message}")
    if outcome.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        _err(f"       is the server running on {target}? (`make run`, or --target / KIS_TARGET)")
        _err(f"       서버가 {target}에서 실행 중인지 확인하세요 (`make run`, 또는 --target / KIS_TARGET)")
    for v in outcome.violations:
        _err(f"  {v['field'] or '-'}  {v['code']}  {v['message_en']}")
        if v.get("message_ko"):
            _err(f"  {'':{len(v['field'] or '-')}}  {'':{len(v['code'])}}  {v['message_ko']}")
    extra = {k: v for k, v in outcome.error_info.items() if k not in {"reason", "domain"}}
    if extra:
        _err("  " + ", ".join(f"{k}={v}" for k, v in sorted(extra.items())))
    return 2


def _emit(est: pb.Estimate, args: argparse.Namespace) -> None:
    if args.json:
        _out(
            json.dumps(
                json_format.MessageToDict(est, preserving_proto_field_name=True), ensure_ascii=False, indent=2
            )
        )
    else:
        _out(format_estimate(est, args.lang))


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    overrides: dict[str, Any] = {
        name: Path(value) if name.startswith("tls_") else value
        for name, value in (
            ("tls_cert", args.tls_cert),
            ("tls_key", args.tls_key),
            ("tls_client_ca", args.tls_client_ca),
            ("workers", args.workers),
        )
        if value is not None
    }
    try:
        if args.cpu_affinity is not None:
            overrides["cpu_affinity"] = parse_cpu_affinity("--cpu-affinity", args.cpu_affinity)
        settings = dataclasses.replace(settings, **overrides)
        cpus = worker_cpus(settings.cpu_affinity)
    except SettingsError as exc:
        _err(f"configuration error: {exc}")
        return 2
    configure_logging(settings.log_level)
    if settings.workers != 1:
        return serve_workers(settings, address=args.listen, cpus=cpus)
    pin_to_cpu(cpus, 0)
    return serve(settings, address=args.listen)


class NoStore(Exception):
    """A local command was pointed at a SQLite store that does not exist."""


def _existing_store(settings: Settings) -> Store:
    """The configured store; a missing SQLite file is an error, never silently created."""
    if settings.database_url.startswith("sqlite:///") and not settings.sqlite_path.exists():
        raise NoStore(
            f"no store at {settings.sqlite_path}: set KIS_DATABASE_URL or KIS_DATA_DIR to the server's "
            "(see `kis-estimator serve`'s start-up line), or start the server once to create it"
        )
    return open_store(settings)


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    if settings.database_url.startswith("sqlite:///") and not settings.sqlite_path.exists():
        _err(f"note: creating a new store at {settings.sqlite_path}")
    store = open_store(settings)
    try:
        service = TokenService(store, SystemClock())
        new = service.create(Role(args.role), args.name, _local_caller())
    except ValueError as exc:
        _err(f"error: {exc}")
        return 2
    finally:
        store.close()
    _out(new.token)
    return 0


def _load_request(path: str) -> pb.CreateEstimateRequest:
    """The request file, checked locally first: LocalError names the field path and the fix."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise LocalError(
            path, f"cannot read: {exc.strerror}", f"파일을 읽을 수 없습니다: {exc.strerror}"
        ) from None
    data = check_request_json(text, path)
    try:
        return json_format.ParseDict(data, pb.CreateEstimateRequest())
    except json_format.ParseError as exc:
        raise LocalError("(request)", str(exc), "요청을 해석할 수 없습니다") from None


def _local_error(exc: LocalError, as_json: bool) -> int:
    if as_json:
        _out(json.dumps(exc.to_json(), ensure_ascii=False, indent=2))
    else:
        for line in exc.lines():
            _err(line)
    return 2


def cmd_estimate(args: argparse.Namespace, client: ClientSettings) -> int:
    try:
        request = _load_request(args.file)
    except LocalError as exc:
        return _local_error(exc, args.json)
    stub = pb_grpc.EstimatorServiceStub(_channel(client))
    try:
        if args.dry_run:
            reply_v = stub.ValidateEstimate(
                pb.ValidateEstimateRequest(request=request),
                metadata=_metadata(client.token),
                timeout=args.timeout,
            )
            _emit(reply_v.estimate, args)
        else:
            reply = stub.CreateEstimate(request, metadata=_metadata(client.token), timeout=args.timeout)
            _emit(reply.estimate, args)
    except grpc.RpcError as err:
        return _print_error(err, client.target, as_json=args.json)
    return 0


def cmd_get(args: argparse.Namespace, client: ClientSettings) -> int:
    stub = pb_grpc.EstimatorServiceStub(_channel(client))
    try:
        reply = stub.GetEstimate(
            pb.GetEstimateRequest(estimate_id=args.estimate_id),
            metadata=_metadata(client.token),
            timeout=args.timeout,
        )
    except grpc.RpcError as err:
        return _print_error(err, client.target, as_json=args.json)
    _emit(reply.estimate, args)
    return 0


def _report(results: Sequence[runner.CaseResult], label: str) -> int:
    for r in results:
        mark = "PASS" if r.passed else ("SKIP" if r.skipped else "FAIL")
        _out(f"{mark}  {r.case_id:<8} {r.title}" + (f"  [{r.skipped}]" if r.skipped else ""))
        for failure in r.failures:
            _out(f"        {failure}")
    passed, failed, skipped = runner.summarise(results)
    total = passed + failed
    _out(f"{label}: {passed}/{total} passed" + (f", {skipped} skipped" if skipped else ""))
    return 0 if failed == 0 and total > 0 else 1


def _caller(client: ClientSettings, sandboxed: bool) -> tuple[grpc.Channel, runner.GrpcCaller]:
    channel = _channel(client)
    tokens = dict.fromkeys([r.value for r in Role], client.token) if client.token else {}
    sandbox = runner.new_sandbox_id() if sandboxed else None
    return channel, runner.GrpcCaller(channel, tokens, sandbox=sandbox)


def cmd_regress(args: argparse.Namespace, client: ClientSettings) -> int:
    _, caller = _caller(client, not args.no_sandbox)
    suites = ("regression", "supplementary") if args.all else ("regression",)
    try:
        with caller as call:
            results = runner.run_suites(call, suites)
    except runner.SandboxUnavailable as exc:
        _err(f"error: {exc}")
        return 2
    return _report(results, "regression" if not args.all else "acceptance")


def cmd_smoke(args: argparse.Namespace, client: ClientSettings) -> int:
    channel, caller = _caller(client, not args.no_sandbox)
    try:
        with caller as call:
            results = runner.run_smoke(channel, call)
    except runner.SandboxUnavailable as exc:
        _err(f"error: {exc}")
        return 2
    return _report(results, "smoke")


def cmd_token_list(args: argparse.Namespace, settings: Settings) -> int:
    store = _existing_store(settings)
    try:
        records = TokenService(store, SystemClock()).list()
    finally:
        store.close()
    _out(f"{'token id':<18} {'role':<10} {'created (UTC)':<20} {'revoked (UTC)':<20} name")
    for r in records:
        revoked = f"{r.revoked_at:%Y-%m-%d %H:%M:%S}" if r.revoked_at else "-"
        _out(f"{r.token_id:<18} {r.role:<10} {r.created_at:%Y-%m-%d %H:%M:%S}  {revoked:<20} {r.name}")
    return 0


def cmd_token_revoke(args: argparse.Namespace, settings: Settings) -> int:
    store = _existing_store(settings)
    try:
        done = TokenService(store, SystemClock()).revoke(args.token_id, _local_caller())
    finally:
        store.close()
    if not done:
        _err(f"error: no active token {args.token_id}")
        return 2
    _out(f"revoked {args.token_id}")
    return 0


def _local_caller() -> Caller:
    """The operator at this machine's shell, for audit records of local admin commands."""
    return Caller(Principal(token_id="local", name=f"cli:{getpass.getuser()}", role=Role.ADMIN), "local")


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    store = _existing_store(settings)
    try:
        admin = AdminService(
            store, SystemClock(), settings.mixed_monthly_quota, settings.audit_retention_days
        )
        if args.audit_command == "prune":
            removed = admin.prune_audit(_local_caller())
            _out(f"pruned {removed} audit record(s) older than {settings.audit_retention_days} days")
            return 0
        checked, broken = admin.verify_audit()
    finally:
        store.close()
    if broken is not None:
        _out(f"audit chain BROKEN at record {broken.seq}: {broken.reason} ({checked} record(s) read)")
        return 1
    _out(f"audit chain OK: {checked} record(s) verified")
    return 0


def cmd_evidence_verify(args: argparse.Namespace, settings: Settings) -> int:
    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        _err(f"error: cannot read {args.file}: {exc}")
        return 2
    keyring = None
    key_file = settings.evidence_key_file
    if settings.evidence_keys or key_file.exists():
        keyring = load_keyring(settings)
    report = verify_bundle(data, keyring)
    for line in report.lines():
        _out(line)
    _out(f"{args.file}: {'OK' if report.ok else 'NOT OK'} (sha256 {hashlib.sha256(data).hexdigest()})")
    return 0 if report.ok else 1


def _download(chunks: Iterable[Any], output: Path) -> int:
    """Write a chunked download (``offset``/``chunk``, first chunk ``sha256``/``size_bytes``) after
    checking order, size and SHA-256; 1 with a message when it is not what the server announced."""
    data = bytearray()
    expected_sha, expected_size = "", -1
    try:
        for chunk in chunks:
            if chunk.offset != len(data):
                _err(f"error: chunk at offset {chunk.offset}, expected {len(data)}")
                return 1
            if chunk.sha256:
                expected_sha, expected_size = chunk.sha256, chunk.size_bytes
            data.extend(chunk.chunk)
    except grpc.RpcError as err:
        return _print_error(err)
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha or len(data) != expected_size:
        _err(
            f"error: download corrupt: sha256 {actual} ({len(data)} bytes), "
            f"server said {expected_sha} ({expected_size})"
        )
        return 1
    output.write_bytes(bytes(data))
    _out(f"{output}: {len(data)} bytes, sha256 {actual} (verified)")
    return 0


def cmd_evidence_get(args: argparse.Namespace, client: ClientSettings) -> int:
    stub = evidence_grpc.EvidenceServiceStub(_channel(client))
    request = evidence_pb.GetEvidenceBundleRequest(estimate_id=args.estimate_id, revision=args.revision)
    return _download(
        stub.GetEvidenceBundle(request, metadata=_metadata(client.token), timeout=args.timeout),
        Path(args.output),
    )


QUOTE_FORMATS = {"xlsx": pb.QUOTE_FORMAT_XLSX, "pdf": pb.QUOTE_FORMAT_PDF}


def cmd_quote(args: argparse.Namespace, client: ClientSettings) -> int:
    output = Path(args.output)
    name = args.format or output.suffix.lower().removeprefix(".")
    if name not in QUOTE_FORMATS:
        _err(
            f"error: {output}: say --format xlsx|pdf or end the file name in .xlsx or .pdf "
            f"(파일 이름을 .xlsx 또는 .pdf로 끝내거나 --format을 지정하세요)"
        )
        return 2
    stub = pb_grpc.EstimatorServiceStub(_channel(client))
    request = pb.GetQuoteDocumentRequest(
        estimate_id=args.estimate_id, revision=args.revision, format=QUOTE_FORMATS[name]
    )
    return _download(
        stub.GetQuoteDocument(request, metadata=_metadata(client.token), timeout=args.timeout), output
    )


def package_version() -> str:
    try:
        return metadata.version("kis-estimator")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def cmd_list(args: argparse.Namespace, client: ClientSettings) -> int:
    stub = pb_grpc.EstimatorServiceStub(_channel(client))
    status = pb.EstimateStatus.Value(f"ESTIMATE_STATUS_{args.status}") if args.status else 0
    request = pb.ListEstimatesRequest(page_size=args.page_size, page_token=args.page_token, status=status)  # type: ignore[arg-type]
    try:
        reply = stub.ListEstimates(request, metadata=_metadata(client.token), timeout=args.timeout)
    except grpc.RpcError as err:
        return _print_error(err, client.target, as_json=args.json)
    if args.json:
        _out(
            json.dumps(
                json_format.MessageToDict(reply, preserving_proto_field_name=True),
                ensure_ascii=False,
                indent=2,
            )
        )
    else:
        _out(format_list(reply, args.lang))
    return 0


def _parse_answer(text: str) -> review_pb.ReviewResolution:
    reason, sep, value = text.partition("=")
    model, _, price = value.rpartition(":")
    if not sep or not reason.strip() or not price.strip().isdigit():
        raise LocalError(
            f"--answer {text}",
            "expected REASON=PRICE or REASON=MODEL:PRICE (price in KRW, digits only)",
            "REASON=단가 또는 REASON=모델:단가 형식이어야 합니다 (단가는 원 단위 숫자)",
            "e.g. --answer R1=53000 or --answer R2=SBS-204:53000",
        )
    return review_pb.ReviewResolution(
        reason_id=reason.strip(), model=model.strip(), unit_price_krw=int(price)
    )


def _ask(reason: pb.ReviewReason, read: Any) -> review_pb.ReviewResolution:
    _out(f"{reason.reason_id} ({reason.code}, {reason.path})")
    _out(f"  {reason.question_ko}")
    _out(f"  {reason.question_en}")
    model = ""
    if reason.code == "NEED_KNOWLEDGE_UPDATE" and reason.path.startswith(("main", "branches")):
        model = read("  모델명 (model): ").strip()
    while True:
        price = read("  단가 (unit price, KRW): ").strip().replace(",", "")
        if price.isdigit() and int(price) > 0:
            return review_pb.ReviewResolution(
                reason_id=reason.reason_id, model=model, unit_price_krw=int(price)
            )
        _out("  숫자로 입력하세요 (digits only, > 0)")


def cmd_review(args: argparse.Namespace, client: ClientSettings) -> int:
    channel = _channel(client)
    try:
        answers = {a.reason_id: a for a in map(_parse_answer, args.answer)}
    except LocalError as exc:
        return _local_error(exc, args.json)
    try:
        est = (
            pb_grpc.EstimatorServiceStub(channel)
            .GetEstimate(
                pb.GetEstimateRequest(estimate_id=args.estimate_id),
                metadata=_metadata(client.token),
                timeout=args.timeout,
            )
            .estimate
        )
        for reason in est.review_reasons:
            if reason.reason_id not in answers:
                if args.json or (not sys.stdin.isatty() and not sys.stdin.readable()):
                    break
                answers[reason.reason_id] = _ask(reason, input)
        reply = review_grpc.ReviewServiceStub(channel).CompleteReview(
            review_pb.CompleteReviewRequest(
                estimate_id=args.estimate_id, resolutions=list(answers.values()), comment=args.comment
            ),
            metadata=_metadata(client.token),
            timeout=args.timeout,
        )
    except grpc.RpcError as err:
        return _print_error(err, client.target, as_json=args.json)
    except EOFError:
        _err("error: no answer given (답변이 입력되지 않았습니다); use --answer REASON=VALUE")
        return 2
    _emit(reply.estimate, args)
    return 0


def cmd_report(args: argparse.Namespace, client: ClientSettings) -> int:
    stub = review_grpc.ReviewServiceStub(_channel(client))
    try:
        m = stub.GetMetrics(
            review_pb.GetMetricsRequest(month=args.month or ""),
            metadata=_metadata(client.token),
            timeout=args.timeout,
        )
    except grpc.RpcError as err:
        return _print_error(err)

    def ms(msg: Any, name: str) -> str:
        return f"{getattr(msg, name) / 1000:.1f} s" if msg.HasField(name) else "—"

    oldest = f"{m.oldest_open_review_age_seconds} s" if m.HasField("oldest_open_review_age_seconds") else "—"
    rows = [
        ("month (KST)", m.month),
        ("estimates accepted", str(m.accepted)),
        (
            "  completed / needs review / reviewed / rejected",
            f"{m.completed} / {m.needs_review} / {m.reviewed} / {m.rejected}",
        ),
        (
            "auto-processing rate (SLO >= 70 %)",
            f"{m.auto_processing_rate_pct} %" if m.auto_processing_rate_pct else "—",
        ),
        ("TAT median (SLO <= 120 s)", ms(m, "tat_median_ms")),
        ("TAT p90", ms(m, "tat_p90_ms")),
        ("TAT samples", str(m.tat_samples)),
        ("oldest open review age", oldest),
        ("MIXED used / quota", f"{m.mixed_used} / {m.mixed_quota}"),
    ]
    for label, value in rows:
        _out(f"{label:<50} {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kis-estimator", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kis-estimator {package_version()}")
    parser.add_argument(
        "--config", type=Path, help="service settings as TOML (default: $KIS_CONFIG_FILE); KIS_* override it"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p_serve = sub.add_parser("serve", help="run the gRPC service")
    p_serve.add_argument("--listen", help="HOST:PORT (default KIS_GRPC_ADDRESS or 127.0.0.1:8787)")
    p_serve.add_argument("--tls-cert", help="TLS certificate chain, PEM (KIS_TLS_CERT)")
    p_serve.add_argument("--tls-key", help="TLS private key, PEM (KIS_TLS_KEY)")
    p_serve.add_argument("--tls-client-ca", help="CA for client certificates: mutual TLS (KIS_TLS_CLIENT_CA)")
    p_serve.add_argument(
        "--workers", type=int, help="serving processes sharing the port (KIS_WORKERS; 0 = one per core)"
    )
    p_serve.add_argument(
        "--cpu-affinity",
        help="pin worker i to one CPU: none, auto (the CPUs it may use) or a list like 0-3 "
        "(KIS_CPU_AFFINITY)",
    )

    p_token = sub.add_parser("token", help="manage API tokens")
    token_sub = p_token.add_subparsers(dest="token_command", required=True)
    p_create = token_sub.add_parser("create", help="create a token; prints only the token")
    p_create.add_argument("--role", required=True, choices=[r.value for r in Role])
    p_create.add_argument("--name", required=True)
    token_sub.add_parser("list", help="list tokens (never their secrets)")
    p_revoke = token_sub.add_parser("revoke", help="revoke a token; refused from the next call on")
    p_revoke.add_argument("token_id")

    p_audit = sub.add_parser("audit", help="the tamper-evident audit log (local database)")
    audit_sub = p_audit.add_subparsers(dest="audit_command", required=True)
    audit_sub.add_parser("verify", help="walk the hash chain; names the first broken record")
    audit_sub.add_parser("prune", help="delete records older than KIS_AUDIT_RETENTION_DAYS")

    def client_args(p: argparse.ArgumentParser, *, table: bool = False) -> None:
        p.add_argument("--target", help=f"HOST:PORT of the service (default {DEFAULT_TARGET})")
        p.add_argument("--token", help="bearer token (default: $KIS_TOKEN)")
        p.add_argument(
            "--tls-ca",
            help="CA (PEM) of the server's TLS certificate (default: $KIS_TLS_CA; none: plaintext)",
        )
        p.add_argument("--timeout", type=float, default=30.0, help="per-call deadline in seconds")
        if table:
            p.add_argument("--json", action="store_true", help="print JSON (errors too)")
            p.add_argument("--lang", choices=("ko", "en"), default="ko", help="table language (default ko)")

    p_est = sub.add_parser("estimate", help="price a request JSON file (- for stdin)")
    p_est.add_argument("file")
    p_est.add_argument("--dry-run", action="store_true", help="ValidateEstimate: price without storing")
    client_args(p_est, table=True)

    p_get = sub.add_parser("get", help="show a stored estimate")
    p_get.add_argument("estimate_id")
    client_args(p_get, table=True)

    p_list = sub.add_parser("list", help="stored estimates, newest first (견적 목록)")
    p_list.add_argument("--status", choices=("COMPLETED", "NEEDS_REVIEW", "REVIEWED", "REJECTED"))
    p_list.add_argument("--page-size", type=int, default=20)
    p_list.add_argument("--page-token", default="")
    client_args(p_list, table=True)

    p_review = sub.add_parser("review", help="answer the open questions of a NEEDS_REVIEW estimate (검토)")
    p_review.add_argument("estimate_id")
    p_review.add_argument(
        "--answer",
        action="append",
        default=[],
        metavar="REASON=VALUE",
        help="R1=53000 (unit price, KRW) or R1=SBS-204:53000 (model and price); prompts for the rest",
    )
    p_review.add_argument("--comment", default="", help="recorded with the review")
    client_args(p_review, table=True)

    p_reg = sub.add_parser("regress", help="run the 40 regression cases against a live endpoint")
    p_reg.add_argument("--all", action="store_true", help="also the supplementary cases")
    no_sandbox = "run against the server's real store (only for an empty store) instead of a sandbox"
    p_reg.add_argument("--no-sandbox", action="store_true", help=no_sandbox)
    client_args(p_reg)

    p_smoke = sub.add_parser("smoke", help="run the 3 smoke checks against a live endpoint")
    p_smoke.add_argument("--no-sandbox", action="store_true", help=no_sandbox)
    client_args(p_smoke)

    p_evidence = sub.add_parser("evidence", help="evidence bundles")
    evidence_sub = p_evidence.add_subparsers(dest="evidence_command", required=True)
    p_eget = evidence_sub.add_parser("get", help="download (ADMIN) and verify a bundle")
    p_eget.add_argument("estimate_id")
    p_eget.add_argument("-o", "--output", required=True)
    p_eget.add_argument("--revision", type=int, default=0, help="0 = current revision")
    client_args(p_eget)
    p_everify = evidence_sub.add_parser("verify", help="check a bundle offline; names altered entries")
    p_quote = sub.add_parser("quote", help="download the 견적서 of an estimate (XLSX or PDF)")
    p_quote.add_argument("estimate_id")
    p_quote.add_argument(
        "-o", "--output", required=True, help="견적서.xlsx or 견적서.pdf (the suffix picks the format)"
    )
    p_quote.add_argument("--format", choices=sorted(QUOTE_FORMATS), help="xlsx or pdf (default: from -o)")
    p_quote.add_argument("--revision", type=int, default=0, help="0 = current revision")
    client_args(p_quote)
    p_everify.add_argument("file")

    p_slo = sub.add_parser("slo", help="p95, error rate, TAT median, auto-rate against the SLOs")
    p_slo.add_argument("--prometheus", required=True, help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    p_slo.add_argument("--window", default=DEFAULT_WINDOW, help="PromQL range such as 5m or 1d")

    p_report = sub.add_parser(
        "report", help="monthly TAT / auto-processing report (docs/pricing-rules.md §16.3)"
    )
    p_report.add_argument("--month", help="KST month YYYY-MM (default: current)")
    client_args(p_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    local: dict[str, Any] = {
        "serve": cmd_serve,
        "token": {"create": cmd_token, "list": cmd_token_list, "revoke": cmd_token_revoke}.get(
            getattr(args, "token_command", ""), cmd_token
        ),
        "audit": cmd_audit,
        "evidence": cmd_evidence_verify,
    }
    if args.command == "slo":
        return run_slo_report(args.prometheus, args.window, _out)
    try:
        if args.command in local and not (args.command == "evidence" and args.evidence_command == "get"):
            return int(local[args.command](args, Settings.from_process_env(args.config)))
        client = ClientSettings.from_process_env(target=args.target, token=args.token, tls_ca=args.tls_ca)
    except SettingsError as exc:
        _err(f"configuration error: {exc}")
        return 2
    except NoStore as exc:
        _err(f"error: {exc}")
        return 2
    if not client.token:
        _err("error: UNAUTHENTICATED: no token: set KIS_TOKEN or pass --token")
        _err("       토큰이 없습니다: KIS_TOKEN을 설정하거나 --token을 지정하세요")
        _err("       (an admin makes one: kis-estimator token create --role ESTIMATOR --name <you>)")
        return 2
    commands: dict[str, Any] = {
        "estimate": cmd_estimate,
        "get": cmd_get,
        "regress": cmd_regress,
        "smoke": cmd_smoke,
        "evidence": cmd_evidence_get,
        "quote": cmd_quote,
        "list": cmd_list,
        "review": cmd_review,
        "report": cmd_report,
    }
    return int(commands[args.command](args, client))


if __name__ == "__main__":
    sys.exit(main())
