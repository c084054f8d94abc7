"""Latency summaries and process readings from /proc shared by the benchmark's modules."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of an ascending list."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def latency_summary(latencies_ms: list[float]) -> dict[str, Any]:
    ordered = sorted(latencies_ms)
    return {
        "count": len(ordered),
        "p50_ms": percentile(ordered, 50),
        "p95_ms": percentile(ordered, 95),
        "p99_ms": percentile(ordered, 99),
        "max_ms": ordered[-1] if ordered else math.nan,
        "mean_ms": sum(ordered) / len(ordered) if ordered else math.nan,
    }


def _stat_fields(pid: int) -> list[str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces


def process_tree(pid: int) -> list[int]:
    """``pid`` and its living descendants (``serve --workers N`` forks its workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process and its descendants, all threads, from /proc/*/stat."""
    user = system = 0.0
    for member in process_tree(pid):
        try:
            fields = _stat_fields(member)
        except OSError:
            continue
        user += int(fields[11]) / CLOCK_TICKS  # utime, stime (fields 14, 15)
        system += int(fields[12]) / CLOCK_TICKS
    return user, system


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process."""
    return sum(cpu_times(pid))


def rss_mib(pid: int) -> float:
    """Resident MiB of a process and its descendants."""
    total, found = 0.0, False
    for member in process_tree(pid):
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("VmRSS:"):
                total, found = total + int(line.split()[1]) / 1024, True
    return total if found else math.nan


def machine_ticks() -> tuple[int, int, int]:
    """The machine's CPU time so far, in clock ticks over all cores (``/proc/stat``): idle (with
    I/O wait), stolen by the hypervisor for other guests, and in all."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return idle + iowait, steal, user + nice + system + idle + iowait + irq + softirq + steal


def postgres_cpu_seconds() -> float:
    """CPU seconds of the local PostgreSQL server so far: every process named ``postgres``, plus
    what the postmaster collected from its children that ended (a backend whose client closed its
    connection, an autovacuum worker) — without that, a backend ending inside a window would take
    its whole past out of the difference. 0.0 when no PostgreSQL runs on this machine (a remote
    ``KIS_BENCH_PG_URL``: its CPU is then not on these cores)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            fields = _stat_fields(int(entry.name))
        except (OSError, ValueError):
            continue  # exited meanwhile
        total += int(fields[11]) + int(fields[12])  # utime, stime
        if fields[1] == "1":  # the postmaster: cutime, cstime of its reaped children
            total += int(fields[13]) + int(fields[14])
    return total / CLOCK_TICKS


def cpu_ms_per_call(
    calls: int,
    estimator_s: float,
    postgres_s: float,
    ticks_from: tuple[int, int, int],
    ticks_to: tuple[int, int, int],
) -> dict[str, float]:
    """Where the machine's CPU went per call over a window, in ms: the estimator's processes, the
    PostgreSQL server's, everything else that ran (the load generator, the kernel's softirq work,
    other processes) and what stayed idle. Steal is left out: it is no CPU this machine had."""
    if calls <= 0:
        return {}
    busy = (
        (ticks_to[2] - ticks_to[0] - ticks_to[1]) - (ticks_from[2] - ticks_from[0] - ticks_from[1])
    ) / CLOCK_TICKS
    idle = (ticks_to[0] - ticks_from[0]) / CLOCK_TICKS
    return {
        "estimator": 1000.0 * estimator_s / calls,
        "postgresql": 1000.0 * postgres_s / calls,
        "other": 1000.0 * max(0.0, busy - estimator_s - postgres_s) / calls,
        "idle": 1000.0 * idle / calls,
    }


def machine_shares(before: tuple[int, int, int], after: tuple[int, int, int]) -> dict[str, float]:
    """Idle and stolen shares of the machine's cores between two :func:`machine_ticks` readings,
    in percent. Steal is CPU time a core was ready to run this machine's work but the hypervisor
    gave it to another guest: a run with a high share measured a smaller machine."""
    total = after[2] - before[2]
    if total <= 0:
        return {"idle_pct": math.nan, "steal_pct": math.nan}
    return {
        "idle_pct": 100.0 * (after[0] - before[0]) / total,
        "steal_pct": 100.0 * (after[1] - before[1]) / total,
    }


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
