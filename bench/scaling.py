"""The scaling section: CreateEstimate (small) with ``serve --workers 1`` and ``--workers 2``.

For each store (the default SQLite file; PostgreSQL when a server answers at ``KIS_BENCH_PG_URL``,
default ``postgresql://postgres@127.0.0.1/test``, in a database made for the run and dropped after),
a fresh estimator is started with one worker and then with two (SO_REUSEPORT), and the same
closed-loop CreateEstimate phase runs against each: c16 from ``SCALING_CLIENTS`` load-generator
processes, one connection each, since SO_REUSEPORT balances connections, not calls. Reported: QPS,
latency, server CPU summed over the serving processes, and the ratio two workers / one worker (the
scale-out issue asks ≥ 1.6).

On a 2-core machine the load generators share the cores with the workers, so the ratio is a lower
bound of what two workers give on a host of their own.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

SCALING_CLIENTS = 4
SCALING_CONCURRENCY = 16
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1/test"


@contextmanager
def pg_database(server_url: str) -> Iterator[str | None]:
    """A new empty database on ``server_url``'s server (None when it cannot be reached)."""
    try:
        import psycopg
        from psycopg import sql
    except ImportError:
        yield None
        return
    name = f"kis_bench_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(server_url, autocommit=True, connect_timeout=3) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error:
        yield None
        return
    try:
        yield urlsplit(server_url)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(server_url, autocommit=True, connect_timeout=3) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def scaling_section(
    args: argparse.Namespace,
    base_env: dict[str, str],
    pg_server_url: str,
    run_phase: Callable[[dict[str, str], int, IO[bytes], str], dict[str, Any]],
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """``run_phase(env, workers, log, run_id)`` starts an estimator and measures one create_small
    phase against it (bench.py owns processes and phases); here: which stores and worker counts."""
    section: dict[str, Any] = {
        "clients": SCALING_CLIENTS,
        "concurrency": SCALING_CONCURRENCY,
        "stores": {},
    }
    for store in ("sqlite", "postgresql"):
        with pg_database(pg_server_url) if store == "postgresql" else _no_database() as url:
            if store == "postgresql" and url is None:
                section["stores"][store] = {"skipped": f"no PostgreSQL server at {pg_server_url}"}
                continue
            runs = []
            for workers in (1, 2):
                data_dir = Path(tempfile.mkdtemp(prefix=f"kis-bench-scaling-{store}-w{workers}-"))
                env = base_env | {"KIS_DATA_DIR": str(data_dir)}
                if url is not None:  # both runs on the run's database: their request ids differ
                    env["KIS_DATABASE_URL"] = url
                progress(f"scaling: {store}, --workers {workers}")
                try:
                    with (data_dir / "estimator.log").open("wb") as log:
                        runs.append(run_phase(env, workers, log, secrets.token_hex(4)) | {"workers": workers})
                finally:
                    if not args.keep:
                        shutil.rmtree(data_dir, ignore_errors=True)
            one, two = runs
            section["stores"][store] = {
                "runs": runs,
                "ratio": two["qps"] / one["qps"] if one["qps"] else None,
                "h2load_ratio": _ratio(one.get("h2load", {}), two.get("h2load", {})),
            }
    return section


def _ratio(one: dict[str, Any], two: dict[str, Any]) -> float | None:
    return two["qps"] / one["qps"] if one.get("qps") and "qps" in two else None


@contextmanager
def _no_database() -> Iterator[str | None]:
    yield None


def print_scaling(section: dict[str, Any]) -> None:
    print(
        f"\nScaling: CreateEstimate small, c{section['concurrency']} from {section['clients']} "
        "load-generator processes (one connection each); server CPU summed over the serving processes"
    )
    print(f"{'store':<12}{'workers':>8}{'QPS':>9}{'p50':>9}{'p95':>9}{'srvCPU':>9}{'ratio':>8}")
    for store, result in section["stores"].items():
        if "skipped" in result:
            print(f"{store:<12}  skipped: {result['skipped']}")
            continue
        for run in result["runs"]:
            ratio = f"{result['ratio']:.2f}" if run["workers"] == 2 and result["ratio"] else ""
            print(
                f"{store:<12}{run['workers']:>8}{run['qps']:>9.0f}{run['latency_ms']['p50_ms']:>9.2f}"
                f"{run['latency_ms']['p95_ms']:>9.2f}{run['server_cpu_pct']:>8.0f}%{ratio:>8}"
            )
    print(
        f"\nScaling with h2load as the load generator (C, a connection per call in flight, "
        f"c{section['concurrency']}; every call a new estimate, no request_id)"
    )
    print(f"{'store':<12}{'workers':>8}{'QPS':>9}{'p50':>9}{'p95':>9}{'srvCPU':>9}{'ratio':>8}  gRPC codes")
    for store, result in section["stores"].items():
        for run in result.get("runs", ()):
            h2 = run.get("h2load", {})
            if "skipped" in h2:
                print(f"{store:<12}  skipped: {h2['skipped']}")
                break
            ratio = f"{result['h2load_ratio']:.2f}" if run["workers"] == 2 and result["h2load_ratio"] else ""
            codes = ", ".join(f"{code} {count:.0f}" for code, count in sorted(h2["grpc_codes"].items()))
            print(
                f"{store:<12}{run['workers']:>8}{h2['qps']:>9.0f}{h2['latency_ms']['p50_ms']:>9.2f}"
                f"{h2['latency_ms']['p95_ms']:>9.2f}{h2['server_cpu_pct']:>8.0f}%{ratio:>8}  {codes}"
            )
