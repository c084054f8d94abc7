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

# (workers, group commit, writer process): one worker writing each create alone (the same-run
# baseline of group commit), one worker with it, two workers each writing its own creates (the
# same-run baseline of the writer process), two workers with the writer process (the default).
RUNS = ((1, False, False), (1, True, False), (2, True, False), (2, True, True))
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
            for workers, group_commit, writer in RUNS:
                data_dir = Path(tempfile.mkdtemp(prefix=f"kis-bench-scaling-{store}-w{workers}-"))
                env = base_env | {"KIS_DATA_DIR": str(data_dir)}
                if not group_commit:
                    env["KIS_GROUP_COMMIT_MAX_BATCH"] = "1"
                env["KIS_WRITER_PROCESS"] = "true" if writer else "false"
                if url is not None:  # every run on the run's database: their request ids differ
                    env["KIS_DATABASE_URL"] = url
                progress(
                    f"scaling: {store}, --workers {workers}, group commit {'on' if group_commit else 'off'}"
                    f", writer process {'on' if writer else 'off'}"
                )
                try:
                    with (data_dir / "estimator.log").open("wb") as log:
                        run = run_phase(env, workers, log, secrets.token_hex(4))
                        runs.append(
                            run | {"workers": workers, "group_commit": group_commit, "writer": writer}
                        )
                finally:
                    if not args.keep:
                        shutil.rmtree(data_dir, ignore_errors=True)
            alone, one, two_own, two = runs
            section["stores"][store] = {
                "runs": runs,
                "ratio": _ratio(one, two),
                "h2load_ratio": _ratio(one.get("h2load", {}), two.get("h2load", {})),
                "ratio_without_writer": _ratio(one, two_own),
                "h2load_ratio_without_writer": _ratio(one.get("h2load", {}), two_own.get("h2load", {})),
                "group_commit_gain": _ratio(alone, one),
                "h2load_group_commit_gain": _ratio(alone.get("h2load", {}), one.get("h2load", {})),
            }
    return section


def _ratio(one: dict[str, Any], two: dict[str, Any]) -> float | None:
    """``two``'s QPS over ``one``'s (None when either has none)."""
    return two["qps"] / one["qps"] if one.get("qps") and "qps" in two else None


@contextmanager
def _no_database() -> Iterator[str | None]:
    yield None


HEADER = "store        workers  group commit  writer     QPS      p50      p95   srvCPU   ratio"


def print_scaling(section: dict[str, Any]) -> None:
    """Two tables, one per load generator; "ratio": a one-worker run with group commit over the one
    without (its same-run baseline), each two-worker run over the one-worker run with group commit."""
    tables: tuple[tuple[str, Callable[[dict[str, Any]], dict[str, Any]], tuple[str, str, str]], ...] = (
        (
            f"\nScaling: CreateEstimate small, c{section['concurrency']} from {section['clients']} "
            "load-generator processes (one connection each); server CPU summed over the serving processes",
            lambda run: run,
            ("group_commit_gain", "ratio_without_writer", "ratio"),
        ),
        (
            f"\nScaling with h2load as the load generator (C, a connection per call in flight, "
            f"c{section['concurrency']}; every call a new estimate, no request_id)",
            lambda run: run.get("h2load", {}),
            ("h2load_group_commit_gain", "h2load_ratio_without_writer", "h2load_ratio"),
        ),
    )
    for title, figures, (gain_key, own_key, ratio_key) in tables:
        print(title)
        print(HEADER)
        for store, result in section["stores"].items():
            if "skipped" in result:
                print(f"{store:<12}  skipped: {result['skipped']}")
                continue
            for run in result["runs"]:
                fig = figures(run)
                if "skipped" in fig:
                    print(f"{store:<12}  skipped: {fig['skipped']}")
                    break
                if run["workers"] == 2:
                    key: str | None = ratio_key if run.get("writer") else own_key
                else:
                    key = gain_key if run["group_commit"] else None
                ratio = f"{result[key]:.2f}" if key and result.get(key) else ""
                print(
                    f"{store:<12}{run['workers']:>8}{'on' if run['group_commit'] else 'off':>14}"
                    f"{'on' if run.get('writer') else 'off':>8}"
                    f"{fig['qps']:>8.0f}"
                    f"{fig['latency_ms']['p50_ms']:>9.2f}{fig['latency_ms']['p95_ms']:>9.2f}"
                    f"{fig['server_cpu_pct']:>8.0f}%{ratio:>8}"
                )
