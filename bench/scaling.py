"""The scaling section: CreateEstimate (small) with ``serve --workers 1`` and ``--workers 2``.

For each store (the default SQLite file; PostgreSQL when a server answers at ``KIS_BENCH_PG_URL``,
default ``postgresql://postgres@127.0.0.1/test``, in a database made for the run and dropped after),
three estimators are started side by side: one worker without group commit (the baseline), one
worker, two workers (SO_REUSEPORT). They are then measured in slices, one at a time while the
others sit idle: the baseline once, then ``--scaling-rounds`` rounds of one worker and two in ABBA
order (one, two; two, one; …), so that a slow spell of the machine lands on both sides of the
rounds and the two sides of a round run seconds apart rather than a server start apart. Each slice
runs the same closed-loop CreateEstimate phase twice, ``--scaling-duration`` seconds after
``--scaling-warmup``: c16 from ``SCALING_CLIENTS`` load-generator process with
``SCALING_CONNECTIONS`` connections, one connection per call in flight as h2load's, and then
from h2load. SO_REUSEPORT spreads connections, not calls, over the workers by a hash: four
connections in all (one per process, as this section had first) put all four on one worker one
time in eight and three on one half the time, so a run measured the split as much as the server;
sixteen split 11/5 or worse one time in five (binomial), and each slice prints its split (each
worker's share of the calls). One process makes the sixteen calls: it keeps up with two workers
using a sixth of a core, and four processes of four connections, as this section had before, cost
the two cores 0.52–0.67 ms a create where one costs 0.30–0.37 (bench/README.md, tenth section):
CPU a generator spends on these cores is CPU two workers lose and one worker does not.

Reported: QPS, latency, server CPU summed over the serving processes, the ratio two workers / one
worker of each round and their median (the scale-out issue asks ≥ 1.6; on a shared 2-core machine
one round differs from the next by up to a quarter, so a single pair says little), and where the
two cores went per create (``cpu_ms_per_call``: the estimator, PostgreSQL, everything else, idle;
median over the rounds), and the room for two (``room_for_two``): the most two workers / one could
be with what PostgreSQL, the load generator and idle time took per create in that round, were a
create to cost each of two workers no more than it costs one. The section ends with the machine's
own two / one in the same run (``machine_scaling``): two processes doing the engine's pure-Python
work over one, the most any workload gains from the second core here.

On a 2-core machine the load generators and PostgreSQL share the cores with the workers, so the
ratio is a lower bound of what two workers give on a host of their own: one worker leaves the
second core to them, two workers pay for them out of their own cores. The breakdown shows by how
much.

All three estimators run with the same ``KIS_CPU_AFFINITY`` (``--scaling-affinity``, default
``auto``): the one worker pinned to a CPU as each of the two is, so the ratio compares the best
configuration of each and not a pinned pair with an unpinned single process (pinning alone gives
one worker about 40 % more on PostgreSQL, bench/README.md).
"""

from __future__ import annotations

import argparse
import math
import secrets
import shutil
import statistics
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import urlsplit

from bench.machine_scaling import machine_scaling

# (workers, group commit): group commit's same-run baseline once (one worker writing each create
# alone), then ``--scaling-rounds`` rounds of the pair the ratio compares, one worker and two,
# interleaved so that a slow spell of the machine lands on both sides.
BASELINE = (1, False)
ONE, TWO = (1, True), (2, True)
SCALING_CLIENTS = 1
SCALING_CONNECTIONS = 16  # per load-generator process
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


class Side(Protocol):
    """A started estimator of the section (bench.py's ``ScalingSide``)."""

    def measure(self) -> dict[str, Any]: ...

    def stop(self) -> None: ...


# (env, workers, log, run_id) → a started side
StartSide = Callable[[argparse.Namespace, dict[str, str], int, IO[bytes], str], Side]


def scaling_section(
    args: argparse.Namespace,
    base_env: dict[str, str],
    pg_server_url: str,
    start_side: StartSide,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Per store, the three estimators of the plan started side by side, then measured in slices
    (bench.py owns processes and phases; here: which stores, which sides, in which order), and the
    machine's own two / one ceiling (``machine_scaling``) in the same run."""
    slice_args = argparse.Namespace(
        **{**vars(args), "duration": args.scaling_duration, "warmup": args.scaling_warmup}
    )
    section: dict[str, Any] = {
        "cpu_affinity": args.scaling_affinity,
        "clients": SCALING_CLIENTS,
        "connections": SCALING_CLIENTS * SCALING_CONNECTIONS,
        "concurrency": SCALING_CONCURRENCY,
        "slice_s": args.scaling_duration,
        "warmup_s": args.scaling_warmup,
        "stores": {},
    }
    for store in ("sqlite", "postgresql"):
        with pg_database(pg_server_url) if store == "postgresql" else _no_database() as url:
            if store == "postgresql" and url is None:
                section["stores"][store] = {"skipped": f"no PostgreSQL server at {pg_server_url}"}
                continue
            with _sides(slice_args, base_env, url, store, start_side, progress) as sides:
                runs = [_measure(sides, BASELINE, store, progress)]
                for round_ in range(args.scaling_rounds):  # ABBA: a drift lands on both sides
                    for kind in (ONE, TWO) if round_ % 2 == 0 else (TWO, ONE):
                        runs.append(_measure(sides, kind, store, progress))
            section["stores"][store] = _summary(runs)
    progress("scaling: the machine's own two / one (the engine's pricing loop, no I/O)")
    section["machine"] = machine_scaling(
        trials=args.scaling_rounds,
        seconds=args.scaling_duration,
        pinned=args.scaling_affinity != "none",
    )
    return section


@contextmanager
def _sides(
    args: argparse.Namespace,
    base_env: dict[str, str],
    url: str | None,
    store: str,
    start_side: StartSide,
    progress: Callable[[str], None],
) -> Iterator[dict[tuple[int, bool], Side]]:
    """The plan's estimators, each on a data directory of its own (the PostgreSQL ones on the run's
    one database: their request ids differ), all running until the store's slices are done. A
    side that is not being measured sits idle: it takes no CPU the measured one needs."""
    started: dict[tuple[int, bool], Side] = {}
    data_dirs: list[Path] = []
    try:
        for kind in (BASELINE, ONE, TWO):
            workers, group_commit = kind
            data_dir = Path(tempfile.mkdtemp(prefix=f"kis-bench-scaling-{store}-w{workers}-"))
            data_dirs.append(data_dir)
            env = base_env | {"KIS_DATA_DIR": str(data_dir), "KIS_CPU_AFFINITY": args.scaling_affinity}
            if not group_commit:
                env["KIS_GROUP_COMMIT_MAX_BATCH"] = "1"
            if url is not None:
                env["KIS_DATABASE_URL"] = url
            progress(f"scaling: starting {store}, --workers {workers}, group commit {_on(group_commit)}")
            with (data_dir / "estimator.log").open("wb") as log:  # the child keeps its own descriptor
                started[kind] = start_side(args, env, workers, log, secrets.token_hex(4))
        yield started
    finally:
        for side in started.values():
            side.stop()
        if not args.keep:
            for data_dir in data_dirs:
                shutil.rmtree(data_dir, ignore_errors=True)


def _measure(
    sides: dict[tuple[int, bool], Side], kind: tuple[int, bool], store: str, progress: Callable[[str], None]
) -> dict[str, Any]:
    """One slice of ``kind``'s estimator."""
    workers, group_commit = kind
    progress(f"scaling: {store}, --workers {workers}, group commit {_on(group_commit)}")
    return sides[kind].measure() | {"workers": workers, "group_commit": group_commit}


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Ratios of one store's runs: each round's two workers over its one worker, and their median
    (what the target is held to); the baseline against the median one-worker figure."""
    alone = runs[0]
    pairs = _rounds(runs)
    out: dict[str, Any] = {"runs": runs}
    views: tuple[tuple[str, Callable[[dict[str, Any]], dict[str, Any]]], ...] = (
        ("", lambda run: run),
        ("h2load_", lambda run: run.get("h2load", {})),
    )
    for prefix, figures in views:
        rounds = [_ratio(figures(one), figures(two)) for one, two in pairs]
        ratios = [r for r in rounds if r is not None]
        one_qps = [figures(one)["qps"] for one, _ in pairs if "qps" in figures(one)]
        median_one = {"qps": statistics.median(one_qps)} if one_qps else {}
        out[f"{prefix}ratios"] = ratios
        out[f"{prefix}ratio"] = statistics.median(ratios) if ratios else None
        rooms = [room for one, two in pairs if (room := room_for_two(figures(one), figures(two)))]
        out[f"{prefix}room"] = statistics.median(rooms) if rooms else None
        out[f"{prefix}group_commit_gain"] = _ratio(figures(alone), median_one)
    return out


def _rounds(runs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The rounds of one store's runs (the baseline, runs[0], is none): each one-worker run with
    the two-worker run of its round, in the order they ran."""
    ones = [r for r in runs[1:] if r["workers"] == 1]
    twos = [r for r in runs[1:] if r["workers"] == 2]
    return list(zip(ones, twos, strict=True))


def room_for_two(one: dict[str, Any], two: dict[str, Any]) -> float | None:
    """The most two workers could give over one in a round, with what the rest of the machine
    spent per create measured, were a create to cost each of two workers no more estimator CPU
    than it costs one worker alone: 2 × estimator(one) / (estimator(one) + PostgreSQL(two) +
    other(two) + idle(two)), in ms per create (None without both breakdowns).

    Why: one worker fills its core and leaves PostgreSQL, the load generator and the kernel the
    other core, so its QPS is 1 / estimator(one); two workers fill both cores and pay for all of
    it, so theirs is 2 / (the whole of their breakdown). With the two-worker estimator figure in
    place of the one-worker one, that is the measured ratio (bench/README.md, eighth section); with
    the one-worker figure, it is the ceiling that the work beside the estimator leaves, however
    well the estimator itself scales. A ceiling below the target says the target cannot be met on
    this machine by the estimator: only less CPU per create beside it would raise it."""
    alone: dict[str, float] = one.get("cpu_ms_per_call") or {}
    both: dict[str, float] = two.get("cpu_ms_per_call") or {}
    estimator = alone.get("estimator")
    if not estimator or not both:
        return None
    beside = sum(both.get(key, 0.0) for key in BREAKDOWN_ORDER if key != "estimator")
    return 2 * estimator / (estimator + beside)


def _ratio(one: dict[str, Any], two: dict[str, Any]) -> float | None:
    """``two``'s QPS over ``one``'s (None when either has none)."""
    return two["qps"] / one["qps"] if one.get("qps") and "qps" in two else None


@contextmanager
def _no_database() -> Iterator[str | None]:
    yield None


HEADER = (
    "store        workers  group commit     QPS      p50      p95   srvCPU  idle %  steal %   ratio  split %"
)
STEAL_NOTE_PCT = 5.0  # a round with a run above this much steal is named under the table


def print_scaling(section: dict[str, Any]) -> None:
    """Two tables, one per load generator, the runs in the order they ran; "ratio": a two-worker
    run over the one-worker run of its round; then each store's median over the rounds, which the
    target is held to, and group commit's gain (the median one-worker run over the baseline)."""
    tables: tuple[tuple[str, str, Callable[[dict[str, Any]], dict[str, Any]]], ...] = (
        (
            f"\nScaling: CreateEstimate small, c{section['concurrency']} from {section['clients']} "
            f"load-generator process(es) ({section['connections']} connections in all); "
            f"KIS_CPU_AFFINITY={section.get('cpu_affinity', 'none')} on both sides; "
            "server CPU summed over the serving processes; split: each worker's share of the calls",
            "",
            lambda run: run,
        ),
        (
            f"\nScaling with h2load as the load generator (C, a connection per call in flight, "
            f"c{section['concurrency']}; every call a new estimate, no request_id)",
            "h2load_",
            lambda run: run.get("h2load", {}),
        ),
    )
    for title, prefix, figures in tables:
        print(title)
        print(HEADER)
        summaries = []
        for store, result in section["stores"].items():
            if "skipped" in result:
                print(f"{store:<12}  skipped: {result['skipped']}")
                continue
            rounds = iter(result[f"{prefix}ratios"])
            for run in result["runs"]:
                fig = figures(run)
                if "skipped" in fig:
                    print(f"{store:<12}  skipped: {fig['skipped']}")
                    break
                ratio = next(rounds, None) if run["workers"] == 2 else None
                machine = fig.get("machine", {})
                print(
                    f"{store:<12}{run['workers']:>8}{'on' if run['group_commit'] else 'off':>14}"
                    f"{fig['qps']:>8.0f}"
                    f"{fig['latency_ms']['p50_ms']:>9.2f}{fig['latency_ms']['p95_ms']:>9.2f}"
                    f"{fig['server_cpu_pct']:>8.0f}%{_pct(machine.get('idle_pct')):>8}"
                    f"{_pct(machine.get('steal_pct')):>9}{'' if ratio is None else f'{ratio:.2f}':>8}"
                    f"  {_split(fig.get('per_worker_ok'))}"
                )
            ratios = result[f"{prefix}ratios"]
            if ratios:
                summaries.append(
                    f"  {store}: two workers / one, median of {len(ratios)} rounds "
                    f"{result[f'{prefix}ratio']:.2f} (range {min(ratios):.2f}-{max(ratios):.2f}); "
                    f"group commit on / off {_fmt(result[f'{prefix}group_commit_gain'])}"
                    f"{_stolen_rounds(result['runs'], figures)}"
                )
                room = result.get(f"{prefix}room")
                if room is not None:
                    summaries.append(
                        f"    room for two {room:.2f}: median of 2 × estimator(1) / (estimator(1) + "
                        "PostgreSQL(2) + other(2) + idle(2)), the most two workers / one could be with "
                        "the rest of the machine's CPU per create as measured"
                    )
                batches = creates_per_commit(result["runs"], figures)
                summaries.extend(
                    f"    --workers {workers}, medians of the rounds: CPU per create, ms: {_breakdown(cpu)}; "
                    f"creates per commit {_fmt(batches[workers])}"
                    for workers, cpu in cpu_per_create(result["runs"], figures).items()
                    if cpu
                )
        print("\n".join(summaries))
    print(_machine_line(section.get("machine")))


def cpu_per_create(
    runs: list[dict[str, Any]], figures: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[int, dict[str, float]]:
    """Per worker count (group commit on), the median over its runs of each share of
    ``cpu_ms_per_call``: where the machine's two cores went per create."""
    out: dict[int, dict[str, float]] = {}
    for workers in (1, 2):
        shares = [figures(run).get("cpu_ms_per_call") or {} for run in _rounds_of(runs, workers)]
        keys = sorted({key for share in shares for key in share}, key=BREAKDOWN_ORDER.index)
        out[workers] = {
            key: statistics.median(share[key] for share in shares if key in share) for key in keys
        }
    return out


def creates_per_commit(
    runs: list[dict[str, Any]], figures: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[int, float | None]:
    """Per worker count (group commit on), the median over its runs of the creates each group
    commit wrote (each worker's own batches: two workers split the calls, and so the batches)."""
    out: dict[int, float | None] = {}
    for workers in (1, 2):
        sizes = [
            figures(run)["creates_per_commit"]
            for run in _rounds_of(runs, workers)
            if figures(run).get("creates_per_commit")
        ]
        out[workers] = statistics.median(sizes) if sizes else None
    return out


def _rounds_of(runs: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    """The runs of the rounds with ``workers`` workers (group commit on: the baseline is no round)."""
    return [run for run in runs if run["workers"] == workers and run["group_commit"]]


BREAKDOWN_ORDER = ["estimator", "postgresql", "other", "idle"]
BREAKDOWN_NAMES = {"estimator": "estimator", "postgresql": "PostgreSQL", "other": "other", "idle": "idle"}


def _breakdown(cpu: dict[str, float]) -> str:
    return ", ".join(f"{BREAKDOWN_NAMES[key]} {value:.2f}" for key, value in cpu.items())


def _machine_line(machine: dict[str, Any] | None) -> str:
    """The machine's own two / one, against which both tables' ratios read."""
    if not machine:
        return ""
    if "skipped" in machine:
        return f"\nThe machine's own two / one: skipped ({machine['skipped']})"
    ratios = machine["ratios"]
    return (
        f"\nThe machine's own two / one: two processes pricing the small panel in a loop (no I/O"
        f"{', each on a CPU of its own' if machine['pinned'] else ''}) over one alone, "
        f"median of {len(ratios)} trials of {machine['seconds']:g} s: {_fmt(machine['ratio'])}"
        + (f" (range {min(ratios):.2f}-{max(ratios):.2f})" if ratios else "")
        + "; no workload scales better on these cores, and the estimator's two / one shares them"
        " with PostgreSQL and the load generator"
    )


def _split(per_worker: list[float] | None) -> str:
    """Each worker's share of the OK calls, in percent ("" for one worker or no figures)."""
    if not per_worker or len(per_worker) < 2 or not sum(per_worker):
        return ""
    return "/".join(f"{100 * n / sum(per_worker):.0f}" for n in per_worker)


def _pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.0f}"


def _stolen_rounds(runs: list[dict[str, Any]], figures: Callable[[dict[str, Any]], dict[str, Any]]) -> str:
    """Which rounds (1, 2, …; :func:`_rounds`) had a run with more than STEAL_NOTE_PCT steal:
    their ratio compares runs on machines of different sizes."""
    stolen = [
        str(n)
        for n, pair in enumerate(_rounds(runs), start=1)
        if any(figures(run).get("machine", {}).get("steal_pct", 0.0) > STEAL_NOTE_PCT for run in pair)
    ]
    return f"; rounds with > {STEAL_NOTE_PCT:.0f} % steal: {', '.join(stolen)}" if stolen else ""


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
