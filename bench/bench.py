"""Latency and memory benchmark of a real server process (not a test: it prints figures).

    .venv/bin/python bench/bench.py [--calls 2000] [--concurrency 8]

Starts ``kis-estimator serve`` as its own process on a free loopback port with a fresh SQLite file,
then measures, over real gRPC from this process:

* baseline: ``grpc.health.v1.Health/Check`` (transport + interceptor-free path) in the same run;
* ``ValidateEstimate`` (validation + full pricing, nothing stored), ``CreateEstimate`` (pricing,
  evidence ZIP, one SQLite transaction with audit), ``GetEstimate``;

and prints p50/p95/p99 in ms, each p95 as a ratio to the baseline's p95, throughput, the SLO check
(p95 ≤ 30 ms) and the server's RSS before and after (from /proc). Figures depend on the machine; the
ratios are what to compare between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.gen.kis.estimator.v1 import estimator_pb2 as pb
from server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc

SLO_P95_MS = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(name: str, call: Callable[[int], object], calls: int, concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(calls))

    def worker() -> None:
        nonlocal errors
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            started = time.perf_counter()
            try:
                call(i)
            except grpc.RpcError:
                with lock:
                    errors += 1
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                latencies.append(elapsed)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "name": name,
        "calls": len(latencies),
        "errors": errors,
        "p50_ms": statistics.median(latencies),
        "p95_ms": q[94],
        "p99_ms": q[98],
        "rps": len(latencies) / wall,
    }


def measure_open_loop(
    name: str, call: Callable[[int], object], rate: float, seconds: float
) -> dict[str, Any]:
    """Calls at a fixed arrival rate; latency counts from the scheduled send (no coordinated omission)."""
    from concurrent.futures import ThreadPoolExecutor

    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    total = int(rate * seconds)
    start = time.perf_counter() + 0.05

    def one(i: int) -> None:
        nonlocal errors
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        try:
            call(i)
        except grpc.RpcError:
            with lock:
                errors += 1
        with lock:
            latencies.append((time.perf_counter() - scheduled) * 1000)

    with ThreadPoolExecutor(max_workers=64) as pool:
        list(pool.map(one, range(total)))
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "name": name,
        "calls": len(latencies),
        "errors": errors,
        "p50_ms": statistics.median(latencies),
        "p95_ms": q[94],
        "p99_ms": q[98],
        "rps": rate,
    }


def report(title: str, results: list[dict[str, Any]], base: float) -> None:
    print(title)
    head = f"{'rpc':<26}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'p95/base':>10}{'req/s':>9}{'errors':>8}"
    print(head + "  SLO p95<=30ms")
    for r in results:
        slo = "" if "baseline" in r["name"] else ("PASS" if r["p95_ms"] <= SLO_P95_MS else "FAIL")
        print(
            f"{r['name']:<26}{r['p50_ms']:>9.2f}{r['p95_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            f"{r['p95_ms'] / base:>9.1f}x{r['rps']:>9.0f}{r['errors']:>8}  {slo}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate", type=float, default=50.0, help="open-loop arrivals per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="open-loop duration per RPC")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="kis-bench-"))
    port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIS_")}
    env |= {
        "KIS_DATABASE_URL": f"sqlite:///{tmp / 'kis.db'}",
        "KIS_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
        "KIS_RATE_LIMIT_PER_HOUR": "10000000",
        "KIS_LOG_LEVEL": "WARNING",
    }
    kis = str(Path(sys.executable).parent / "kis-estimator")
    token = subprocess.run(
        [kis, "token", "create", "--role", "ADMIN", "--name", "bench"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    server = subprocess.Popen(
        [kis, "serve", "--listen", f"127.0.0.1:{port}"], env=env, stderr=subprocess.DEVNULL
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)
        health.Check(health_pb2.HealthCheckRequest(), timeout=30, wait_for_ready=True)
        stub = pb_grpc.EstimatorServiceStub(channel)
        md = (("authorization", f"Bearer {token}"),)
        s01 = json.loads((ROOT / "server/acceptance/cases/S01.json").read_text())["steps"][0]["request"]
        s01.pop("request_id", None)
        s01.pop("meta", None)
        request = json_format.ParseDict(s01, pb.CreateEstimateRequest())
        created = stub.CreateEstimate(request, metadata=md, timeout=10).estimate.estimate_id
        for _ in range(200):  # warm-up
            stub.ValidateEstimate(pb.ValidateEstimateRequest(request=request), metadata=md, timeout=10)
        rss_before = rss_mib(server.pid)
        health_call = lambda i: health.Check(health_pb2.HealthCheckRequest(), timeout=10)  # noqa: E731
        validate_call = lambda i: stub.ValidateEstimate(  # noqa: E731
            pb.ValidateEstimateRequest(request=request), metadata=md, timeout=10
        )
        create_call = lambda i: stub.CreateEstimate(request, metadata=md, timeout=10)  # noqa: E731
        get_call = lambda i: stub.GetEstimate(  # noqa: E731
            pb.GetEstimateRequest(estimate_id=created), metadata=md, timeout=10
        )
        nominal = [
            measure_open_loop("Health/Check (baseline)", health_call, args.rate, args.seconds),
            measure_open_loop("ValidateEstimate", validate_call, args.rate, args.seconds),
            measure_open_loop("CreateEstimate", create_call, args.rate, args.seconds),
            measure_open_loop("GetEstimate", get_call, args.rate, args.seconds),
        ]
        results = [
            measure("Health/Check (baseline)", health_call, args.calls, args.concurrency),
            measure("ValidateEstimate", validate_call, args.calls, args.concurrency),
            measure("CreateEstimate", create_call, args.calls, args.concurrency),
            measure("GetEstimate", get_call, args.calls, args.concurrency),
        ]
        rss_after = rss_mib(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    report(
        f"Nominal load: open loop at {args.rate:g} req/s for {args.seconds:g} s per RPC (the SLO condition)",
        nominal,
        nominal[0]["p95_ms"],
    )
    print()
    report(
        f"Saturation: closed loop, {args.concurrency} concurrent clients, {args.calls} calls per RPC",
        results,
        results[0]["p95_ms"],
    )
    stored = int(args.calls + args.rate * args.seconds) + 1
    print(f"\nserver RSS: {rss_before:.1f} MiB before, {rss_after:.1f} MiB after ~{stored} stored estimates")
    return 0 if all(r["p95_ms"] <= SLO_P95_MS and not r["errors"] for r in nominal[1:]) else 1


if __name__ == "__main__":
    sys.exit(main())
