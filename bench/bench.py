"""Benchmark of a real estimator process against a same-run ceiling (not a test: it prints figures).

    .venv/bin/python bench/bench.py              # the full run (~5 min); or: make bench
    .venv/bin/python bench/bench.py --smoke      # every figure, tiny sizes (seconds): proves the harness
    .venv/bin/python bench/bench.py --profile    # also py-spy profiles of the server under load

In one run, with the server and the load generators as separate processes (bench/README.md has
what each figure means):

1. ceiling: ``bench/ceiling_server.py``, a bare grpcio server in the estimator's serving mode
   answering a trivial unary RPC with the request and reply sizes of a small CreateEstimate;
2. ``CreateEstimate`` small (S01) and large (20 lines, 100 units, accessories), each call with its
   own ``request_id`` (no replays), on the default SQLite store of a fresh data directory;
3. ``GetEstimate`` and ``GetEvidenceBundle`` (ADMIN, the small estimate's bundle);
4. the pure engine per request (``bench/engine_bench.py``, timeit statistics);
5. evidence bundle build time and size (same module);
6. a leak check: server RSS over ``--leak-calls`` CreateEstimate calls, MB per 10k calls;
7. h2load headline figures (``bench/h2load_run.py``) when h2load is available, else a reason.

Phases 1-3 run at each ``--concurrency`` level (1, 16, 64) for ``--duration`` seconds after a
``--warmup`` that is not counted, driven by ``bench/loadgen.py`` (``grpc.aio``, closed loop).
Printed: a table with each figure and its ratio to the ceiling at the same concurrency, and the
targets of the benchmark issue with PASS/MISS. Written: every figure as JSON to ``--out`` (default
``bench/results/bench-<UTC time>.json``). Exit status 0 when the harness ran (targets missed
included: this is a benchmark, not a test), 2 when a phase had no successful call or a process
failed.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from bench import payloads
from bench.ceiling_server import METHOD as CEILING_METHOD
from bench.engine_bench import engine_figures
from bench.h2load_run import find_h2load, run_h2load
from bench.profiling import find_py_spy, key_shares, start_py_spy, summarise
from bench.scaling import (
    DEFAULT_PG_URL,
    SCALING_CLIENTS,
    SCALING_CONCURRENCY,
    SCALING_CONNECTIONS,
    print_scaling,
    scaling_section,
)
from bench.stats import (
    cpu_ms_per_call,
    cpu_seconds,
    cpu_times,
    latency_summary,
    load_average,
    machine_shares,
    machine_ticks,
    postgres_cpu_seconds,
    rss_mib,
)
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from kis_estimator.server.gen.kis.estimator.v1 import evidence_pb2 as evidence_pb

ESTIMATOR = "kis.estimator.v1.EstimatorService"
CREATE_METHOD = f"/{ESTIMATOR}/CreateEstimate"
GET_METHOD = f"/{ESTIMATOR}/GetEstimate"
BUNDLE_METHOD = "/kis.estimator.v1.EvidenceService/GetEvidenceBundle"
RESULTS_DIR = ROOT / "bench" / "results"

# The targets of the benchmark issue (2 cores).
TARGET_QPS_SHARE = 0.5  # CreateEstimate small at concurrency 16: QPS ≥ 50 % of the ceiling's
TARGET_P95_FACTOR = 2.0  # … and p95 ≤ 2 × the ceiling's p95
TARGET_P95_MS_C64 = 30.0  # p95 at concurrency 64
TARGET_ENGINE_SMALL_US = 100.0
TARGET_ENGINE_LARGE_US = 1000.0
TARGET_EVIDENCE_SMALL_US = 1000.0
TARGET_LEAK_MB_PER_100K = 10.0
TARGET_WORKERS_SCALING = 1.6  # CreateEstimate QPS with --workers 2 / with one worker (scale-out issue)


class PySpyFailed(RuntimeError):
    """py-spy could not sample the server (permissions, an unsupported Python)."""


@dataclass(frozen=True)
class Phase:
    """One load phase: an RPC of one server with a body (and per-call request_ids or not)."""

    name: str
    server: str  # "ceiling" or "estimator"
    method: str
    body: bytes
    unique_ids: bool
    streaming: bool = False


_T0 = time.monotonic()


def progress(text: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f} s] {text} …", flush=True)


def free_port(count: int = 1) -> int:
    """A free port on 127.0.0.1, and the ``count - 1`` after it free too: ``serve --workers N``
    serves worker *i*'s metrics on the base port + *i*, and an ephemeral port next to a free one
    may be the local end of a live connection (a PostgreSQL client's, say)."""
    import socket

    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + count > 65536:
            continue
        try:
            for port in range(base + 1, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/bench.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: every figure in seconds")
    parser.add_argument("--duration", type=float, help="measured seconds per phase (default 10; smoke 0.2)")
    parser.add_argument(
        "--warmup", type=float, help="uncounted seconds before each phase (default 2; smoke 0.05)"
    )
    parser.add_argument("--concurrency", default="1,16,64", help="calls in flight, comma-separated")
    parser.add_argument("--clients", type=int, default=1, help="load-generator processes sharing each phase")
    parser.add_argument(
        "--leak-calls", type=int, help="CreateEstimate calls of the leak check (default 20000; smoke 100)"
    )
    parser.add_argument("--engine-repeat", type=int, help="timeit samples per figure (default 30; smoke 3)")
    parser.add_argument(
        "--only",
        default="ceiling,rpc,engine,leak,h2load,scaling",
        help="sections to run (ceiling, rpc, engine, leak, h2load, scaling); ratios need ceiling",
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the server (CreateEstimate small, GetEstimate)"
    )
    parser.add_argument(
        "--profile-seconds", type=float, help="seconds per profiled phase (default 20; smoke 2)"
    )
    parser.add_argument(
        "--scaling-rounds", type=int, help="interleaved one/two-worker pairs per store (default 6; smoke 1)"
    )
    parser.add_argument(
        "--scaling-duration",
        type=float,
        help="measured seconds of each scaling slice, per load generator (default 5; smoke: --duration)",
    )
    parser.add_argument(
        "--scaling-warmup",
        type=float,
        help="uncounted seconds before each scaling slice (default 1; smoke: --warmup)",
    )
    parser.add_argument(
        "--scaling-affinity",
        default="auto",
        help="KIS_CPU_AFFINITY of both sides of the scaling section (default auto: each worker on a "
        "CPU of its own, the one worker too; none: the kernel places them)",
    )
    parser.add_argument("--log-level", default="INFO", help="the estimator's KIS_LOG_LEVEL (default INFO)")
    parser.add_argument(
        "--data-dir", type=Path, help="parent of the temporary data directory (default: TMPDIR)"
    )
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/bench-<UTC time>.json)")
    parser.add_argument("--keep", action="store_true", help="keep the data directory (server log, store)")
    args = parser.parse_args(argv)
    smoke = args.smoke
    args.duration = args.duration or (0.2 if smoke else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (0.05 if smoke else 2.0)
    args.leak_calls = args.leak_calls if args.leak_calls is not None else (100 if smoke else 20_000)
    args.engine_repeat = args.engine_repeat or (3 if smoke else 30)
    args.profile_seconds = args.profile_seconds or (2.0 if smoke else 20.0)
    args.scaling_rounds = args.scaling_rounds or (1 if smoke else 6)
    args.scaling_duration = args.scaling_duration or (args.duration if smoke else 5.0)
    if args.scaling_warmup is None:
        args.scaling_warmup = args.warmup if smoke else 1.0
    args.levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    args.sections = {x.strip() for x in args.only.split(",") if x.strip()}
    if args.clients < 1 or any(level < 1 for level in args.levels):
        parser.error("--clients and every --concurrency level must be ≥ 1")
    return args


# --------------------------------------------------------------------------- processes


class Server:
    """A server process we started: its pid, its port, and a clean stop."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, name: str) -> None:
        self.process, self.port, self.name = process, port, name

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def server_env(data_dir: Path, log_level: str, metrics_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIS_")}
    env |= {
        "KIS_DATA_DIR": str(data_dir),  # the default store: SQLite <data dir>/kis.db
        "KIS_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
        "KIS_RATE_LIMIT_PER_HOUR": "10000000",  # the benchmark's one token makes far more calls than 1,000/h
        "KIS_LOG_LEVEL": log_level,
        # the benchmark measures throughput from one address, not the abuse bounds of streams
        "KIS_MAX_STREAMS": "64",
        "KIS_MAX_STREAMS_PER_PEER": "64",
    }
    return env


def start_estimator(env: dict[str, str], log: IO[bytes], workers: int = 1) -> Server:
    kis = str(Path(sys.executable).parent / "kis-estimator")
    port = free_port()
    command = [kis, "serve", "--listen", f"127.0.0.1:{port}", "--workers", str(workers)]
    process = subprocess.Popen(command, env=env, stderr=log)
    if workers > 1:  # every worker's /healthz (metrics port + i) before any connection is made
        wait_workers_healthy(process, env["KIS_METRICS_ADDRESS"], workers)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 60
        while True:
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5, wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the estimator did not start; see its log in the data directory")
            time.sleep(0.1)
    return Server(process, port, "estimator")


def start_ceiling(env: dict[str, str], reply_file: Path) -> Server:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.ceiling_server", "--reply-file", str(reply_file)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise RuntimeError("the ceiling server did not start")
    return Server(process, int(json.loads(line)["port"]), "ceiling")


def wait_workers_healthy(process: subprocess.Popen[bytes], metrics_address: str, workers: int) -> None:
    import urllib.request

    host, _, port = metrics_address.rpartition(":")
    deadline = time.monotonic() + 60
    for i in range(workers):
        while True:
            try:
                with urllib.request.urlopen(f"http://{host}:{int(port) + i}/healthz", timeout=1) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the estimator's workers did not start; see its log")
            time.sleep(0.1)


class LoadGenerators:
    """``--clients`` processes of bench/loadgen.py connected to one server, ``connections`` each."""

    def __init__(self, target: str, count: int, connections: int = 1) -> None:
        self.processes: list[subprocess.Popen[str]] = []
        for index in range(count):
            self.processes.append(
                subprocess.Popen(
                    [
                        *(sys.executable, "-m", "bench.loadgen", "--target", target),
                        *("--process", str(index), "--connections", str(connections)),
                    ],
                    cwd=ROOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for p in self.processes:
            self._read(p)  # {"ready": true}

    @staticmethod
    def _read(p: subprocess.Popen[str]) -> dict[str, Any]:
        assert p.stdout is not None
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator {p.pid} exited ({p.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def send(self, spec: dict[str, Any], concurrency: int) -> list[subprocess.Popen[str]]:
        """Start one phase in the processes (concurrency split among them); returns those sent to."""
        n = len(self.processes)
        shares = [concurrency // n + (1 if i < concurrency % n else 0) for i in range(n)]
        busy = []
        for p, share in zip(self.processes, shares, strict=True):
            if share > 0:
                assert p.stdin is not None
                p.stdin.write(json.dumps(spec | {"concurrency": share}) + "\n")
                p.stdin.flush()
                busy.append(p)
        return busy

    def collect(self, busy: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
        return [self._read(p) for p in busy]

    def run(self, spec: dict[str, Any], concurrency: int) -> list[dict[str, Any]]:
        """One phase from start to end: the processes' answers."""
        return self.collect(self.send(spec, concurrency))

    def close(self) -> None:
        for p in self.processes:
            with suppress(BrokenPipeError):
                assert p.stdin is not None
                p.stdin.close()
        for p in self.processes:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@contextmanager
def load_generators(server: Server, count: int, connections: int = 1) -> Iterator[LoadGenerators]:
    gens = LoadGenerators(f"127.0.0.1:{server.port}", count, connections)
    try:
        yield gens
    finally:
        gens.close()


# --------------------------------------------------------------------------- phases


def phase_spec(phase: Phase, metadata: list[list[str]], run_id: str, level: int) -> dict[str, Any]:
    return {
        "method": phase.method,
        "streaming": phase.streaming,
        "body_b64": base64.b64encode(phase.body).decode("ascii"),
        "id_field": payloads.request_id_field_number() if phase.unique_ids else None,
        "id_prefix": f"{run_id}-{phase.name}-c{level}",
        "metadata": metadata if phase.server == "estimator" else [],
    }


def merge(answers: list[dict[str, Any]]) -> tuple[list[float], dict[str, int], float, float, int]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    for a in answers:
        latencies.extend(a["latencies_ms"])
        for code, n in a["errors"].items():
            errors[code] = errors.get(code, 0) + n
    window = max(a["window_s"] for a in answers)
    client_cpu = sum(a["cpu_s"] for a in answers)
    response_bytes = max(a["response_bytes"] for a in answers)
    return latencies, errors, window, client_cpu, response_bytes


def timed_phase(
    gens: LoadGenerators,
    server: Server,
    phase: Phase,
    level: int,
    args: argparse.Namespace,
    metadata: list[list[str]],
    run_id: str,
    py_spy: tuple[str, Path, bool] | None = None,
    breakdown: bool = False,
) -> dict[str, Any]:
    """One phase at one concurrency level; server CPU is read at the edges of the measuring window
    (with ``breakdown``, PostgreSQL's too, for ``cpu_ms_per_call``)."""
    start_at = time.monotonic() + 0.1  # time for the specs to reach every load generator
    measure_from = start_at + args.warmup
    measure_to = measure_from + args.duration
    spec = phase_spec(phase, metadata, run_id, level) | {
        "start_at": start_at,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "min_calls": 3 if args.smoke else 0,
    }
    rss_before = rss_mib(server.pid)
    busy = gens.send(spec, level)
    time.sleep(max(0.0, measure_from - time.monotonic()))
    cpu_from, machine_from = cpu_times(server.pid), machine_ticks()
    pg_from = postgres_cpu_seconds() if breakdown else 0.0
    profiler = None
    if py_spy is not None:
        profiler = start_py_spy(py_spy[0], server.pid, py_spy[1], duration_s=args.duration, gil=py_spy[2])
    time.sleep(max(0.0, measure_to - time.monotonic()))
    cpu_to, machine_to = cpu_times(server.pid), machine_ticks()
    pg_to = postgres_cpu_seconds() if breakdown else 0.0
    answers = gens.collect(busy)
    if profiler is not None:
        _, err = profiler.communicate(timeout=args.duration + 60)
        if profiler.returncode != 0:
            raise PySpyFailed(f"py-spy failed: {err.decode(errors='replace').strip()}")
    latencies, errors, window, client_cpu, response_bytes = merge(answers)
    extended = any(a.get("window_extended") for a in answers)
    if extended:  # a smoke window held open for min_calls: CPU up to now (an approximation)
        cpu_to, server_window = cpu_times(server.pid), time.monotonic() - measure_from
        machine_to = machine_ticks()
        pg_to = postgres_cpu_seconds() if breakdown else 0.0
    else:
        server_window = window
    calls = len(latencies)
    server_user, server_sys = cpu_to[0] - cpu_from[0], cpu_to[1] - cpu_from[1]
    server_cpu = server_user + server_sys
    extra = {}
    if breakdown:
        extra["cpu_ms_per_call"] = cpu_ms_per_call(
            calls, server_cpu, pg_to - pg_from, machine_from, machine_to
        )
    return extra | {
        "name": phase.name,
        "server": phase.server,
        "method": phase.method,
        "concurrency": level,
        "clients": len(busy),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "calls": calls,
        "qps": calls / window if window else 0.0,
        "latency_ms": latency_summary(latencies),
        "errors": errors,
        "server_cpu_s": server_cpu,
        "window_s": window,
        "window_extended": extended,
        "server_cpu_pct": 100.0 * server_cpu / server_window,
        "server_cpu_us_per_call": 1e6 * server_cpu / calls if calls else None,
        "server_sys_cpu_share": server_sys / server_cpu if server_cpu else None,
        "client_cpu_pct": 100.0 * client_cpu / window,
        "server_rss_mib_before": rss_before,
        "server_rss_mib_after": rss_mib(server.pid),
        "machine": machine_shares(machine_from, machine_to),
        "request_bytes": len(phase.body),
        "response_bytes": response_bytes,
    }


# --------------------------------------------------------------------------- the estimator's fixtures


@dataclass(frozen=True)
class Fixture:
    metadata: list[list[str]]
    estimate_id: str
    create_small_reply: bytes
    phases: dict[str, Phase]


def make_token(env: dict[str, str]) -> str:
    kis = str(Path(sys.executable).parent / "kis-estimator")
    run = subprocess.run(
        [kis, "token", "create", "--role", "ADMIN", "--name", "bench"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return run.stdout.strip()


def prepare(server: Server, token: str, run_id: str) -> Fixture:
    """One small estimate to read back, the real reply bytes for the ceiling, and the phase bodies."""
    metadata = [["authorization", f"Bearer {token}"]]
    md = tuple((k, v) for k, v in metadata)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.EstimatorServiceStub(channel)
        small = payloads.create_message("small", request_id=f"{run_id}-fixture-small")
        reply = stub.CreateEstimate(small, metadata=md, timeout=30)
        large = stub.CreateEstimate(
            payloads.create_message("large", request_id=f"{run_id}-fixture-large"), metadata=md, timeout=30
        )
        if large.estimate.status != pb.ESTIMATE_STATUS_COMPLETED:
            raise RuntimeError(f"the large panel priced {pb.EstimateStatus.Name(large.estimate.status)}")
    estimate_id = reply.estimate.estimate_id
    small_body = payloads.create_message("small").SerializeToString()
    large_body = payloads.create_message("large").SerializeToString()
    get_body = pb.GetEstimateRequest(estimate_id=estimate_id).SerializeToString()
    bundle_body = evidence_pb.GetEvidenceBundleRequest(estimate_id=estimate_id).SerializeToString()
    phases = {
        "ceiling": Phase("ceiling", "ceiling", CEILING_METHOD, small_body, unique_ids=True),
        "create_small": Phase("create_small", "estimator", CREATE_METHOD, small_body, unique_ids=True),
        "create_large": Phase("create_large", "estimator", CREATE_METHOD, large_body, unique_ids=True),
        "get_estimate": Phase("get_estimate", "estimator", GET_METHOD, get_body, unique_ids=False),
        "get_evidence_bundle": Phase(
            "get_evidence_bundle", "estimator", BUNDLE_METHOD, bundle_body, unique_ids=False, streaming=True
        ),
    }
    return Fixture(metadata, estimate_id, reply.SerializeToString(), phases)


def _scrape(metrics_port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        return str(response.read().decode("utf-8"))


def group_commits(metrics_port: int) -> tuple[float, float]:
    """(creates, commits) the estimator's group commit has written so far
    (``kis_store_group_commit_size``: its sum and its count)."""
    sizes = {"_sum": 0.0, "_count": 0.0}
    for family in text_string_to_metric_families(_scrape(metrics_port)):
        if family.name == "kis_store_group_commit_size":
            for sample in family.samples:
                suffix = sample.name.removeprefix(family.name)
                if suffix in sizes:
                    sizes[suffix] += sample.value
    return sizes["_sum"], sizes["_count"]


def handled_by_code(metrics_port: int, method: str) -> dict[str, float]:
    """``grpc_server_handled_total`` of one method by code, from the estimator's /metrics."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(_scrape(metrics_port)):
        if family.name != "grpc_server_handled":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("grpc_method") == method:
                out[sample.labels["grpc_code"]] = sample.value
    return out


# --------------------------------------------------------------------------- sections


def leak_check(
    gens: LoadGenerators, server: Server, phase: Phase, fixture: Fixture, calls: int, run_id: str
) -> dict[str, Any]:
    """RSS after a warm-up, then after each fifth of ``calls`` CreateEstimate (small) at concurrency 16."""
    spec = phase_spec(phase, fixture.metadata, run_id, 16)
    warmup = max(50, min(2000, calls // 10))
    gens.run(spec | {"calls": warmup, "id_prefix": f"{run_id}-leakwarm"}, 16)
    rss = [rss_mib(server.pid)]
    done, errors, started = 0, 0, time.monotonic()
    steps = 5
    for step in range(steps):
        n = calls // steps + (1 if step < calls % steps else 0)
        answers = gens.run(spec | {"calls": n, "id_prefix": f"{run_id}-leak{step}"}, 16)
        done += sum(len(a["latencies_ms"]) for a in answers)
        errors += sum(sum(a["errors"].values()) for a in answers)
        rss.append(rss_mib(server.pid))
    growth_mb = (rss[-1] - rss[0]) * 1024 * 1024 / 1e6
    per_10k = growth_mb / (calls / 10_000) if calls else 0.0
    return {
        "calls": calls,
        "ok_calls": done,
        "errors": errors,
        "warmup_calls": warmup,
        "concurrency": 16,
        "seconds": time.monotonic() - started,
        "rss_mib_samples": rss,
        "rss_mib_before": rss[0],
        "rss_mib_after": rss[-1],
        "growth_mb": growth_mb,
        "mb_per_10k_calls": per_10k,
        "mb_per_100k_calls_extrapolated": per_10k * 10,
    }


def h2load_section(
    args: argparse.Namespace, ceiling: Server | None, estimator: Server, fixture: Fixture, metrics_port: int
) -> dict[str, Any]:
    h2load, reason = find_h2load()
    if h2load is None:
        print(f"h2load figures skipped: {reason}")
        return {"skipped": reason}
    duration, warmup = args.duration, args.warmup
    levels = [lv for lv in args.levels if lv > 1] or args.levels
    if args.smoke:
        levels = levels[-1:]
    runs: list[dict[str, Any]] = []
    auth = tuple((k, v) for k, v in fixture.metadata)
    targets: list[tuple[str, Server | None, str, bytes, tuple[tuple[str, str], ...]]] = [
        ("ceiling", ceiling, CEILING_METHOD, fixture.phases["ceiling"].body, ()),
        ("get_estimate", estimator, GET_METHOD, fixture.phases["get_estimate"].body, auth),
        # no request_id: h2load repeats one body, and a repeated request_id would be a replay
        ("create_small_no_request_id", estimator, CREATE_METHOD, fixture.phases["create_small"].body, auth),
    ]
    for name, server, method, body, headers in targets:
        if server is None:
            continue
        for level in levels:
            before = handled_by_code(metrics_port, method.rpartition("/")[2]) if server is estimator else {}
            cpu0 = cpu_seconds(server.pid)
            result = run_h2load(
                h2load,
                f"http://127.0.0.1:{server.port}{method}",
                payloads.grpc_frame(body),
                concurrency=level,
                duration_s=duration,
                warmup_s=warmup,
                headers=headers,
            )
            cpu = cpu_seconds(server.pid) - cpu0
            result |= {"name": name, "server_cpu_pct_incl_warmup": 100.0 * cpu / (duration + warmup)}
            if server is estimator:
                after = handled_by_code(metrics_port, method.rpartition("/")[2])
                result["grpc_codes"] = {
                    code: after.get(code, 0) - before.get(code, 0)
                    for code in after
                    if after.get(code, 0) - before.get(code, 0)
                }
            runs.append(result)
    return {"h2load": h2load, "runs": runs}


# Functions whose inclusive share the profile reports for each profiled RPC, whatever their rank
# (README "what the profile showed"): the stages of the call, by layer.
KEY_FUNCTIONS = {
    "create_small": (
        "EstimatorServicer.CreateEstimate",
        "TokenService.authenticate",
        "_malformed_field",
        "request_from_proto",
        "request_hash",
        "EstimateService._replay_or_mismatch",
        "EstimateService._validate",
        "EstimateService._check_dedup",
        "price_estimate",
        "stored_request",
        "build_bundle",
        "document_bytes",
        "write_zip",
        "encode_create_response",
        "SqliteUnitOfWork.__enter__",
        "SqliteEstimateRepository.add",
        "document_text",
        "SqliteEvidenceRepository.add",
        "SqliteIdempotencyRepository.add",
        "SqliteAuditRepository.append",
        "SqliteUnitOfWork.commit",
        "SqliteUnitOfWork.__exit__",
        "ServiceInterceptor._log",
        "_Context.send_initial_metadata",
    ),
    "get_estimate": (
        "EstimatorServicer.GetEstimate",
        "TokenService.authenticate",
        "_malformed_field",
        "EstimateService.get",
        "SqliteEstimateRepository.get",
        "JSONDecoder.decode",
        "record_from_document",
        "SqliteEvidenceRepository.get_info",
        "stored_to_proto",
        "canonical_request_to_proto",
        "quote_to_proto",
        "ServiceInterceptor._log",
    ),
}


def profile_section(
    args: argparse.Namespace,
    gens: LoadGenerators,
    estimator: Server,
    fixture: Fixture,
    run_id: str,
    out_dir: Path,
) -> dict[str, Any]:
    """CreateEstimate small and GetEstimate at c16 under py-spy, once over every runnable thread
    ("threads") and once over the GIL holder only ("gil")."""
    py_spy, reason = find_py_spy()
    if py_spy is None:
        print(f"profile skipped: {reason}")
        return {"skipped": reason}
    out_dir.mkdir(parents=True, exist_ok=True)
    profiled: dict[str, Any] = {}
    long_args = argparse.Namespace(**(vars(args) | {"duration": args.profile_seconds}))
    for name in ("create_small", "get_estimate"):
        for mode, gil in (("threads", False), ("gil", True)):
            raw = out_dir / f"{name}-c16-{mode}.txt"
            try:
                row = timed_phase(
                    gens,
                    estimator,
                    fixture.phases[name],
                    16,
                    long_args,
                    fixture.metadata,
                    f"{run_id}p{mode}",
                    (py_spy, raw, gil),
                )
            except PySpyFailed as exc:  # e.g. no ptrace permission in a container: the figures still count
                print(f"profile skipped: {exc}")
                return {"skipped": str(exc)}
            collapsed = raw.read_text()
            profiled[f"{name}/{mode}"] = {
                "phase": row,
                "collapsed_stacks": str(raw),
                **summarise(collapsed),
                "key_functions": key_shares(collapsed, KEY_FUNCTIONS[name]),
            }
    return profiled


# --------------------------------------------------------------------------- report


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base


def add_ratios(rows: list[dict[str, Any]]) -> None:
    ceilings = {r["concurrency"]: r for r in rows if r["server"] == "ceiling"}
    for r in rows:
        c = ceilings.get(r["concurrency"])
        r["qps_vs_ceiling"] = ratio(r["qps"], c["qps"]) if c else None
        r["p95_vs_ceiling"] = ratio(r["latency_ms"]["p95_ms"], c["latency_ms"]["p95_ms"]) if c else None


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_rpc_table(rows: list[dict[str, Any]]) -> None:
    print("\nRPC phases (closed loop; QPS and latency of the measuring window; ratios to the ceiling at")
    print("the same concurrency; CPU in % of one core; server RSS before → after the phase)")
    head = (
        f"{'phase':<22}{'conc':>5}{'QPS':>8}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}{'err':>5}"
        f"{'srvCPU':>8}{'µs/call':>8}{'cliCPU':>8}{'QPS/ceil':>9}{'p95/ceil':>9}  RSS MiB"
    )
    print(head)
    for r in rows:
        lat = r["latency_ms"]
        print(
            f"{r['name']:<22}{r['concurrency']:>5}{r['qps']:>8.0f}{lat['p50_ms']:>8.2f}{lat['p95_ms']:>8.2f}"
            f"{lat['p99_ms']:>8.2f}{lat['max_ms']:>8.1f}{sum(r['errors'].values()):>5}"
            f"{r['server_cpu_pct']:>7.0f}%{fmt(r['server_cpu_us_per_call'], '.0f'):>8}"
            f"{r['client_cpu_pct']:>7.0f}%{fmt(r['qps_vs_ceiling']):>9}{fmt(r['p95_vs_ceiling']):>9}"
            f"  {r['server_rss_mib_before']:.1f} → {r['server_rss_mib_after']:.1f}"
        )


def print_engine_table(engine: dict[str, Any], ceiling_p50_ms: float | None) -> None:
    print("\nIn-process (no gRPC, no storage): timeit per call, µs; ratio = median / ceiling p50 at c1")
    columns = ("median", "mean", "stdev", "min", "max")
    print(f"{'panel':<7}{'figure':<14}{''.join(f'{c:>9}' for c in columns)}{'ratio':>8}  notes")
    for panel in ("small", "large"):
        for name in ("hash", "validate", "price", "compute", "evidence", "reply_encode"):
            s = engine[panel][name]
            base = None if ceiling_p50_ms is None else ceiling_p50_ms * 1000
            note = f"{s['size_bytes']} bytes" if name == "evidence" else ""
            print(
                f"{panel:<7}{name:<14}{s['median_us']:>9.1f}{s['mean_us']:>9.1f}{s['stdev_us']:>9.1f}"
                f"{s['min_us']:>9.1f}{s['max_us']:>9.1f}{fmt(ratio(s['median_us'], base)):>8}  {note}"
            )


def print_h2load(section: dict[str, Any]) -> None:
    if "runs" not in section:
        return
    print("\nh2load headline (one connection, N streams in flight, the same pre-framed body every call)")
    ceilings = {r["concurrency"]: r for r in section["runs"] if r["name"] == "ceiling"}
    columns = f"{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}"
    print(f"{'target':<28}{'conc':>5}{'QPS':>9}{columns}{'QPS/ceil':>9}  gRPC codes")
    for r in section["runs"]:
        lat, c = r["latency_ms"], ceilings.get(r["concurrency"])
        share = ratio(r["qps"], c["qps"]) if c else None
        codes = ", ".join(f"{k} {int(v)}" for k, v in sorted(r.get("grpc_codes", {}).items())) or "-"
        print(
            f"{r['name']:<28}{r['concurrency']:>5}{r['qps']:>9.0f}{lat['p50_ms']:>8.2f}{lat['p95_ms']:>8.2f}"
            f"{lat['p99_ms']:>8.2f}{lat['max_ms']:>8.1f}{fmt(share):>9}  {codes}"
        )


def targets_of(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = {(r["name"], r["concurrency"]): r for r in results.get("rpc", [])}
    out: list[dict[str, Any]] = []

    def add(
        name: str,
        value: float | None,
        limit: float,
        higher_is_better: bool = False,
        room: float | None = None,
    ) -> None:
        met = None if value is None else (value >= limit if higher_is_better else value <= limit)
        out.append({"target": name, "value": value, "limit": limit, "met": met, "room": room})

    c16 = rows.get(("create_small", 16))
    add("CreateEstimate small c16 QPS / ceiling QPS", c16 and c16["qps_vs_ceiling"], TARGET_QPS_SHARE, True)
    add("CreateEstimate small c16 p95 / ceiling p95", c16 and c16["p95_vs_ceiling"], TARGET_P95_FACTOR)
    c64 = rows.get(("create_small", 64))
    add("CreateEstimate small c64 p95 ms", c64 and c64["latency_ms"]["p95_ms"], TARGET_P95_MS_C64)
    engine = results.get("engine")
    if engine:
        add("engine compute small median µs", engine["small"]["compute"]["median_us"], TARGET_ENGINE_SMALL_US)
        add("engine compute large median µs", engine["large"]["compute"]["median_us"], TARGET_ENGINE_LARGE_US)
        add(
            "evidence bundle build small median µs",
            engine["small"]["evidence"]["median_us"],
            TARGET_EVIDENCE_SMALL_US,
        )
    for store, result in results.get("scaling", {}).get("stores", {}).items():
        if "skipped" in result:
            continue
        add(
            f"CreateEstimate --workers 2 / 1 QPS, {store}",
            result.get("ratio"),
            TARGET_WORKERS_SCALING,
            True,
            result.get("room"),
        )
        if result.get("h2load_ratio") is not None:  # None: h2load is not installed (said in its table)
            add(
                f"CreateEstimate --workers 2 / 1 QPS (h2load), {store}",
                result["h2load_ratio"],
                TARGET_WORKERS_SCALING,
                True,
                result.get("h2load_room"),
            )
    leak = results.get("leak")
    if leak:
        add(
            "server RSS growth per 100k CreateEstimate, MB",
            leak["mb_per_100k_calls_extrapolated"],
            TARGET_LEAK_MB_PER_100K,
        )
    return out


def print_targets(targets: list[dict[str, Any]]) -> None:
    print("\nTargets (benchmark issue; 2 cores)")
    for t in targets:
        verdict = {True: "MET", False: "MISSED", None: "n/a"}[t["met"]]
        # room: the scaling section's room for two (scaling.room_for_two), the most the rest of
        # the machine's work per create left two workers in that run
        room = "" if t.get("room") is None else f"; room for two {t['room']:.2f}"
        print(f"  {verdict:<7}{t['target']:<50}{fmt(t['value']):>10}  (limit {t['limit']:g}{room})")


def print_profile(profile: dict[str, Any]) -> None:
    for name, p in profile.items():
        if not isinstance(p, dict) or "self" not in p:
            continue
        print(f"\nprofile {name}, c16, {p['samples']} samples: top self | inclusive share of key functions")
        keys = list(p["key_functions"].items())
        for i in range(max(12, len(keys))):
            left = f"{p['self'][i]['pct']:>5.1f}% {p['self'][i]['function'][:58]:<58}" if i < 12 else " " * 65
            right = f"{keys[i][1]:>5.1f}% {keys[i][0]}" if i < len(keys) else ""
            print(f"  {left} {right}")


def pg_server_url() -> str:
    return os.environ.get("KIS_BENCH_PG_URL", DEFAULT_PG_URL)


class ScalingSide:
    """One estimator of the scaling section (``workers`` processes), started once and measured in
    slices: each :meth:`measure` runs create_small at the scaling level from the Python load
    generators (connected at the start and kept) and then from h2load when installed. Every slice's
    calls carry request ids of their own (``run_id`` and the slice's number)."""

    def __init__(
        self, args: argparse.Namespace, env: dict[str, str], workers: int, log: IO[bytes], run_id: str
    ) -> None:
        self.args, self.workers, self.run_id, self.slices = args, workers, run_id, 0
        self.env = env | {"KIS_METRICS_ADDRESS": f"127.0.0.1:{free_port(count=workers)}"}
        self.h2load, self.h2load_missing = find_h2load()
        token = make_token(self.env)
        self.server = start_estimator(self.env, log, workers)
        try:
            self.fixture = prepare(self.server, token, run_id)
            self.gens = LoadGenerators(f"127.0.0.1:{self.server.port}", SCALING_CLIENTS, SCALING_CONNECTIONS)
        except BaseException:
            self.server.stop()
            raise

    def measure(self) -> dict[str, Any]:
        self.slices += 1
        before = ok_per_worker(self.env, self.workers)
        batches = creates_per_commit(self.env, self.workers)
        result = timed_phase(
            self.gens,
            self.server,
            self.fixture.phases["create_small"],
            SCALING_CONCURRENCY,
            self.args,
            self.fixture.metadata,
            f"{self.run_id}-{self.slices}",
            breakdown=True,
        )
        after = ok_per_worker(self.env, self.workers)
        result["per_worker_ok"] = [b - a for a, b in zip(before, after, strict=True)]
        result["creates_per_commit"] = batches()
        if self.h2load is None:
            return result | {"h2load": {"skipped": self.h2load_missing}}
        return result | {
            "h2load": scaling_h2load(
                self.h2load, self.server, self.fixture, self.env, self.workers, self.args
            )
        }

    def stop(self) -> None:
        try:
            self.gens.close()
        finally:
            self.server.stop()


def handled_per_worker(env: dict[str, str], workers: int) -> list[dict[str, float]]:
    """CreateEstimate outcomes so far by code, one dict per worker (worker *i* serves /metrics on
    the base port + *i*)."""
    base = int(env["KIS_METRICS_ADDRESS"].rpartition(":")[2])
    method = CREATE_METHOD.rpartition("/")[2]
    return [handled_by_code(base + i, method) for i in range(workers)]


def creates_per_commit(env: dict[str, str], workers: int) -> Callable[[], float | None]:
    """Reads every worker's group commits now; the returned function, called later, gives the
    creates per commit in between (None when none was written)."""
    base = int(env["KIS_METRICS_ADDRESS"].rpartition(":")[2])
    before = [group_commits(base + i) for i in range(workers)]

    def since() -> float | None:
        after = [group_commits(base + i) for i in range(workers)]
        creates = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
        commits = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
        return creates / commits if commits else None

    return since


def ok_per_worker(env: dict[str, str], workers: int) -> list[float]:
    """CreateEstimate calls answered OK so far by each worker."""
    return [codes.get("OK", 0.0) for codes in handled_per_worker(env, workers)]


def scaling_h2load(
    h2load: str, server: Server, fixture: Fixture, env: dict[str, str], workers: int, args: argparse.Namespace
) -> dict[str, Any]:
    """create_small (no request_id: every call a new estimate) from h2load, a connection per call in
    flight; server CPU over every worker, gRPC outcomes summed over every worker's /metrics."""
    before = handled_per_worker(env, workers)
    batches = creates_per_commit(env, workers)
    cpu: list[float] = []
    machine: list[tuple[int, int, int]] = []
    postgres: list[float] = []

    def measuring_starts() -> None:
        cpu.append(cpu_seconds(server.pid))
        machine.append(machine_ticks())
        postgres.append(postgres_cpu_seconds())

    timer = threading.Timer(args.warmup, measuring_starts)
    timer.start()
    result = run_h2load(
        h2load,
        f"http://127.0.0.1:{server.port}{CREATE_METHOD}",
        payloads.grpc_frame(fixture.phases["create_small"].body),
        concurrency=SCALING_CONCURRENCY,
        connections=SCALING_CONCURRENCY,
        duration_s=args.duration,
        warmup_s=args.warmup,
        headers=tuple((k, v) for k, v in fixture.metadata),
    )
    timer.join()
    server_cpu = cpu_seconds(server.pid) - cpu[0] if cpu else math.nan
    machine_to = machine_ticks()
    postgres_s = postgres_cpu_seconds() - postgres[0] if postgres else math.nan
    shares = machine_shares(machine[0], machine_to) if machine else {}
    after = handled_per_worker(env, workers)
    codes: dict[str, float] = {}
    for was, now in zip(before, after, strict=True):
        for code, value in now.items():
            codes[code] = codes.get(code, 0.0) + value - was.get(code, 0.0)
    per_worker = [now.get("OK", 0.0) - was.get("OK", 0.0) for was, now in zip(before, after, strict=True)]
    calls = result["latency_ms"]["count"]
    breakdown = cpu_ms_per_call(calls, server_cpu, postgres_s, machine[0], machine_to) if machine else {}
    return result | {
        "server_cpu_pct": 100.0 * server_cpu / args.duration,
        "cpu_ms_per_call": breakdown,
        "creates_per_commit": batches(),
        "machine": shares,
        "grpc_codes": {code: n for code, n in codes.items() if n},
        "per_worker_ok": per_worker,
    }


# --------------------------------------------------------------------------- main


def git_commit() -> str:
    run = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return run.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def filesystem_of(path: Path) -> str:
    run = subprocess.run(["df", "--output=fstype", str(path)], capture_output=True, text=True, check=False)
    lines = run.stdout.split()
    return lines[-1] if len(lines) > 1 else "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_id = secrets.token_hex(4)
    started = datetime.now(UTC)
    out = args.out or RESULTS_DIR / f"bench-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    data_dir = Path(tempfile.mkdtemp(prefix="kis-bench-", dir=args.data_dir))
    import grpc as grpc_module

    results: dict[str, Any] = {
        "meta": {
            "started_at": started.isoformat(),
            "mode": "smoke" if args.smoke else "full",
            "commit": git_commit(),
            "python": platform.python_version(),
            "grpcio": grpc_module.__version__,
            "cpus": os.cpu_count(),
            "load_average_start": load_average(),
            "data_dir_filesystem": filesystem_of(data_dir),
            "log_level": args.log_level,
            "concurrency_levels": args.levels,
            "clients": args.clients,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "sections": sorted(args.sections | ({"profile"} if args.profile else set())),
        }
    }
    failed = False
    if "engine" in args.sections:
        progress("engine: timing in-process figures")
        results["engine"] = engine_figures(repeat=args.engine_repeat, sample_s=0.002 if args.smoke else 0.05)
    metrics_port = free_port()
    env = server_env(data_dir, args.log_level, metrics_port)
    log_path = data_dir / "estimator.log"
    servers: list[Server] = []
    try:
        with log_path.open("wb") as log:
            token = make_token(env)
            estimator = start_estimator(env, log)
            servers.append(estimator)
            results["meta"]["server_rss_mib_start"] = rss_mib(estimator.pid)
            fixture = prepare(estimator, token, run_id)
            reply_file = data_dir / "create_small_reply.bin"
            reply_file.write_bytes(fixture.create_small_reply)
            ceiling = None
            rows: list[dict[str, Any]] = []
            if "ceiling" in args.sections:
                ceiling = start_ceiling(env, reply_file)
                servers.append(ceiling)
                with load_generators(ceiling, args.clients) as gens:
                    for level in args.levels:
                        progress(f"ceiling c{level}")
                        rows.append(
                            timed_phase(gens, ceiling, fixture.phases["ceiling"], level, args, [], run_id)
                        )
            with load_generators(estimator, args.clients) as gens:
                if "rpc" in args.sections:
                    for name in ("create_small", "create_large", "get_estimate", "get_evidence_bundle"):
                        for level in args.levels:
                            progress(f"{name} c{level}")
                            rows.append(
                                timed_phase(
                                    gens,
                                    estimator,
                                    fixture.phases[name],
                                    level,
                                    args,
                                    fixture.metadata,
                                    run_id,
                                )
                            )
                if "leak" in args.sections:
                    progress(f"leak check: {args.leak_calls} CreateEstimate")
                    results["leak"] = leak_check(
                        gens, estimator, fixture.phases["create_small"], fixture, args.leak_calls, run_id
                    )
                if args.profile:
                    progress("profiling the server with py-spy")
                    profile_dir = out.parent / f"{out.stem}-profile"
                    results["profile"] = profile_section(args, gens, estimator, fixture, run_id, profile_dir)
            if "h2load" in args.sections:
                progress("h2load")
                results["h2load"] = h2load_section(args, ceiling, estimator, fixture, metrics_port)
            if "scaling" in args.sections:
                results["scaling"] = scaling_section(
                    args,
                    server_env(data_dir, args.log_level, free_port()),
                    pg_server_url(),
                    ScalingSide,
                    progress,
                )
            add_ratios(rows)
            results["rpc"] = rows
            results["meta"]["server_rss_mib_end"] = rss_mib(estimator.pid)
            failed = any(r["calls"] == 0 for r in rows) or not all(s.alive() for s in servers)
    finally:
        for server in servers:
            server.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            print(f"data directory kept: {data_dir}")
    results["meta"]["load_average_end"] = load_average()
    results["targets"] = targets_of(results)
    ceiling_c1 = next((r for r in results["rpc"] if r["server"] == "ceiling" and r["concurrency"] == 1), None)
    if results["rpc"]:
        print_rpc_table(results["rpc"])
    if "engine" in results:
        print_engine_table(results["engine"], ceiling_c1["latency_ms"]["p50_ms"] if ceiling_c1 else None)
    if "leak" in results:
        lk = results["leak"]
        samples = [round(x, 1) for x in lk["rss_mib_samples"]]
        print(
            f"\nleak check: {lk['calls']} CreateEstimate (small, c16) in {lk['seconds']:.0f} s: RSS "
            f"{lk['rss_mib_before']:.1f} → {lk['rss_mib_after']:.1f} MiB, {lk['growth_mb']:+.2f} MB, "
            f"{lk['mb_per_10k_calls']:+.2f} MB per 10k calls (RSS MiB after warm-up, each fifth: {samples})"
        )
    if "h2load" in results:
        print_h2load(results["h2load"])
    if "profile" in results:
        print_profile(results["profile"])
    if "scaling" in results:
        print_scaling(results["scaling"])
    print_targets(results["targets"])
    print(
        f"\nserver RSS {results['meta']['server_rss_mib_start']:.1f} MiB at start, "
        f"{results['meta']['server_rss_mib_end']:.1f} MiB at the end; load average "
        f"{results['meta']['load_average_start']} → {results['meta']['load_average_end']}"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"results: {out}")
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
