"""Headline figures from h2load (Debian ``nghttp2-client``), replaying one pre-framed gRPC request.

A Python load generator saturates near 2,500-2,900 calls/s on its own; h2load, in C, does not, so
it measures what the server can do. It sends the same body on every request (a gRPC frame: flag
byte, 4-byte length, message) over one HTTP/2 connection (``-c 1``) with ``-m`` streams in flight,
like the Python client's one channel (the scaling section uses a connection per call in flight). It
only reads HTTP status, not ``grpc-status`` trailers: the caller checks the outcome elsewhere (the
estimator's ``grpc_server_handled_total`` by code).

Latencies come from ``--log-file`` (one line per request of the measuring period: start µs, HTTP
status, duration µs); the warm-up is h2load's own ``--warm-up-time``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.stats import latency_summary

ENSURE_SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "ensure_h2load.sh"


def find_h2load() -> tuple[str | None, str]:
    """(path, "") when h2load is on PATH after tools/ensure_h2load.sh ran, else (None, reason)."""
    found = shutil.which("h2load")
    if found:
        return found, ""
    if ENSURE_SCRIPT.exists():
        run = subprocess.run(["bash", str(ENSURE_SCRIPT)], capture_output=True, text=True, check=False)
        found = shutil.which("h2load")
        if found:
            return found, ""
        reason = (run.stdout + run.stderr).strip().splitlines()
        return None, reason[-1] if reason else "h2load not installed"
    return None, "h2load not on PATH (Debian package nghttp2-client)"


def run_h2load(
    h2load: str,
    url: str,
    body: bytes,
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    headers: tuple[tuple[str, str], ...] = (),
    connections: int = 1,
) -> dict[str, Any]:
    """One h2load run; QPS and latency percentiles of the measuring period.

    ``concurrency`` calls in flight over ``connections`` HTTP/2 connections (SO_REUSEPORT balances
    connections, not calls, so a run against several worker processes needs several).
    """
    with tempfile.TemporaryDirectory(prefix="kis-h2load-") as tmp:
        body_file, log_file = Path(tmp) / "body.bin", Path(tmp) / "requests.tsv"
        body_file.write_bytes(body)
        command = [
            h2load,
            f"--duration={round(duration_s * 1000)}ms",  # h2load takes integers with a unit
            f"--warm-up-time={round(warmup_s * 1000)}ms",
            f"--clients={connections}",
            f"--max-concurrent-streams={max(1, concurrency // connections)}",
            "--threads=1",
            "--header=content-type: application/grpc",
            "--header=te: trailers",
            *(f"--header={k}: {v}" for k, v in headers),
            f"--data={body_file}",
            f"--log-file={log_file}",
            url,
        ]
        run = subprocess.run(command, capture_output=True, text=True, check=False, timeout=duration_s + 60)
        if run.returncode != 0:
            raise RuntimeError(
                f"h2load failed ({run.returncode}): {run.stderr.strip() or run.stdout.strip()}"
            )
        latencies_ms, statuses = [], 0
        for line in log_file.read_text().splitlines():
            _start, status, duration_us = line.split("\t")
            if status == "200":
                latencies_ms.append(int(duration_us) / 1000.0)
            else:
                statuses += 1
    done = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded", run.stdout)
    return {
        "concurrency": concurrency,
        "connections": connections,
        "duration_s": duration_s,
        "qps": len(latencies_ms) / duration_s,
        "latency_ms": latency_summary(latencies_ms),
        "http_non_200": statuses,
        "h2load_succeeded": int(done.group(4)) if done else None,
    }
