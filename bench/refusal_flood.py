"""CreateEstimate throughput while one client floods refused GetEvidenceBundle calls (prints figures).

    .venv/bin/python bench/refusal_flood.py [--seconds 10] [--writers 4] [--flooders 2]

Starts ``python -m kis_estimator.server.cli serve`` from this checkout as its own process on a loopback port
with a fresh SQLite file, then runs twice for ``--seconds`` each, over real gRPC:

1. ``--writers`` threads calling CreateEstimate in a closed loop (the baseline);
2. the same, while ``--flooders`` threads send GetEvidenceBundle without a token as fast as they can
   (each refused call used to write one audit row under the store's write lock).

It prints creates per second in both runs and their ratio, refused calls per second, and the audit
rows the flood wrote per second (read from the store afterwards). A flood flat out is as fast as the
server answers refusals, so compare builds with ``--flood-rate`` (the same refused calls per second).
``--unauthenticated-limit`` sets
``KIS_UNAUTHENTICATED_RATE_LIMIT_PER_HOUR`` (default: the service default; a huge value shows what
the aggregation of audit rows alone does).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from kis_estimator.server.gen.kis.estimator.v1 import evidence_pb2 as evidence_pb
from kis_estimator.server.gen.kis.estimator.v1 import evidence_pb2_grpc as evidence_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_loop(
    call: object, threads: int, stop: threading.Event, counts: list[int], rate: float | None = None
) -> list[threading.Thread]:
    """``threads`` callers until ``stop``: back to back, or paced to ``rate`` calls/s in total."""
    interval = None if rate is None else threads / rate

    def run(i: int) -> None:
        due = time.perf_counter()
        while not stop.is_set():
            if interval is not None:
                due += interval
                if stop.wait(max(0.0, due - time.perf_counter())):
                    return
            with contextlib.suppress(grpc.RpcError):  # refusals are what the flood is made of
                call()  # type: ignore[operator]
            counts[i] += 1

    started = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for t in started:
        t.start()
    return started


def download_rows(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT COUNT(*) FROM audit_events WHERE action = 'EVIDENCE_DOWNLOAD'").fetchone()
    return int(row[0])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--flooders", type=int, default=2)
    parser.add_argument("--unauthenticated-limit", type=int, default=None)
    parser.add_argument(
        "--flood-rate",
        type=float,
        default=None,
        help="pace the flood to this many calls/s (default: flat out)",
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="kis-flood-"))
    db = tmp / "kis.db"
    port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIS_")}
    env |= {
        "KIS_DATABASE_URL": f"sqlite:///{db}",
        "KIS_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
        "KIS_RATE_LIMIT_PER_HOUR": "10000000",
        "KIS_LOG_LEVEL": "ERROR",
        "PYTHONPATH": str(ROOT),
    }
    if args.unauthenticated_limit is not None:
        env["KIS_UNAUTHENTICATED_RATE_LIMIT_PER_HOUR"] = str(args.unauthenticated_limit)
    cli = [sys.executable, "-m", "kis_estimator.server.cli"]
    token = subprocess.run(
        [*cli, "token", "create", "--role", "ESTIMATOR", "--name", "bench"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    server = subprocess.Popen(
        [*cli, "serve", "--listen", f"127.0.0.1:{port}"], env=env, cwd=ROOT, stderr=subprocess.DEVNULL
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=30, wait_for_ready=True
        )
        stub = pb_grpc.EstimatorServiceStub(channel)
        md = (("authorization", f"Bearer {token}"),)
        s01 = json.loads((ROOT / "server/acceptance/cases/S01.json").read_text())["steps"][0]["request"]
        s01.pop("request_id", None)
        s01.pop("meta", None)
        request = json_format.ParseDict(s01, pb.CreateEstimateRequest())
        for _ in range(50):  # warm-up
            stub.CreateEstimate(request, metadata=md, timeout=10)
        flood_channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        evidence = evidence_grpc.EvidenceServiceStub(flood_channel)
        refused = evidence_pb.GetEvidenceBundleRequest(estimate_id="est_flood")

        def create() -> None:
            stub.CreateEstimate(request, metadata=md, timeout=10)

        def flood() -> None:
            list(evidence.GetEvidenceBundle(refused, timeout=10))

        figures = []
        for flooding in (False, True):
            stop = threading.Event()
            creates = [0] * args.writers
            floods = [0] * args.flooders
            rows_before = download_rows(db)
            threads = closed_loop(create, args.writers, stop, creates)
            if flooding:
                threads += closed_loop(flood, args.flooders, stop, floods, args.flood_rate)
            started = time.perf_counter()
            stop.wait(args.seconds)
            stop.set()
            elapsed = time.perf_counter() - started
            for t in threads:
                t.join(timeout=30)
            rows = download_rows(db) - rows_before
            figures.append((sum(creates) / elapsed, sum(floods) / elapsed, rows / elapsed))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    (base, _, _), (loaded, flood_rate, rows_rate) = figures
    print(f"CreateEstimate alone:            {base:8.1f} /s ({args.writers} closed-loop clients)")
    print(f"CreateEstimate under the flood:  {loaded:8.1f} /s  ratio {loaded / base:.2f}")
    print(f"refused GetEvidenceBundle calls: {flood_rate:8.1f} /s ({args.flooders} clients, no token)")
    print(f"audit rows the flood wrote:      {rows_rate:8.2f} /s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
