"""``kis-estimator serve --workers N``: N serving processes sharing one gRPC port (SO_REUSEPORT).

grpcio's multiprocessing pattern: the parent never creates a gRPC server or channel (gRPC's core
is not fork-safe once it has started threads); it forks N children and each one builds its own
server *after* the fork and binds the shared port with ``grpc.so_reuseport`` = 1, so the kernel
spreads new connections across the workers (connections, not calls: clients with one long-lived
channel stay on one worker). Everything a guarantee rests on lives in the store, not in a
process: MIXED quota, dedup keys and request ids are decided inside write transactions
(SQLite ``BEGIN IMMEDIATE`` serialises writers across processes; PostgreSQL row locks and
constraints), so the workers stay exact together. The per-token rate limit is shared on PostgreSQL
(server/service/shared_rate_limit.py) and per process on SQLite.

Metrics: worker *i* serves ``/metrics`` and ``/healthz`` on the configured metrics port + *i*
(one scrape target per worker, listed in deploy/README.md); each exposes its own counters and
``kis_build_info``, and Prometheus sums them.

Lifecycle: SIGTERM or SIGINT to the parent is forwarded to every worker; each drains its in-flight
calls (``KIS_SHUTDOWN_GRACE_S``) and exits, and the parent exits 0 once all have. A worker that
dies on its own takes the others down (the parent exits 1): a supervisor (systemd ``Restart=``)
restarts the whole set rather than a half-sized one silently serving on. A parent killed outright
(SIGKILL) takes its workers with it (``PR_SET_PDEATHSIG``), so no orphan keeps the port.

CPU affinity (``KIS_CPU_AFFINITY`` / ``serve --cpu-affinity``; off by default): worker *i*, and
every thread it runs, is pinned to one CPU, the *i*-th of the list (round robin), ``auto`` being
the CPUs this process may use. One serving process is one GIL: its RPC threads, the group commit's
writer and gRPC's own threads hand it to each other at every blocking call, and a hand-off to a
thread waiting on another core costs that core a wake-up, which on a virtual machine is dear. On
one core those hand-offs are plain switches. Measured on 2 virtual cores with PostgreSQL
(bench/README.md): context switches per create (voluntary and involuntary) fell from ~130 to ~25
with one worker and from ~60 to ~25 with two, and throughput rose by about 40 % for either. It
is off by default because pinning is a claim on the host: two services pinned without knowing
of each other would share one core while another sits idle. Several replicas on one host take
disjoint lists (deploy/README.md); the single-host service takes ``auto``. A single process
(``--workers 1``) is pinned the same way, to the list's first CPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from types import FrameType

from kis_estimator.server.settings import Settings, SettingsError, cpu_list

__all__ = ["pin_to_cpu", "serve_workers", "worker_count", "worker_cpus"]

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def worker_count(requested: int) -> int:
    """0 means one worker per CPU core this process may use."""
    if requested > 0:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def worker_cpus(affinity: str) -> tuple[int, ...] | None:
    """The CPUs the workers are pinned to, worker *i* to the *i*-th (round robin); None: not pinned.

    ``affinity`` is the normalised setting (``none``, ``auto`` or ``0,1,…``). A CPU this process may
    not run on is a configuration error, reported before anything starts.
    """
    if affinity == "none":
        return None
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        raise SettingsError("KIS_CPU_AFFINITY: CPU affinity needs Linux (sched_setaffinity)") from None
    if affinity == "auto":
        return tuple(allowed)
    cpus = cpu_list(affinity)
    foreign = [cpu for cpu in cpus if cpu not in allowed]
    if foreign:
        raise SettingsError(
            f"KIS_CPU_AFFINITY / --cpu-affinity {affinity!r}: this process may not run on CPU "
            f"{','.join(map(str, foreign))} (it may run on {','.join(map(str, allowed))})"
        )
    return cpus


def pin_to_cpu(cpus: tuple[int, ...] | None, index: int) -> None:
    """Pin every thread of this process, and every thread it starts later, to worker ``index``'s
    CPU (``worker_cpus``); nothing when ``cpus`` is None."""
    if cpus is None:
        return
    cpu = cpus[index % len(cpus)]
    try:
        for task in Path("/proc/self/task").iterdir():  # threads started later inherit their starter's
            with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
                os.sched_setaffinity(int(task.name), {cpu})
    except OSError as exc:  # a sandbox that forbids it (seccomp, container policy): serve unpinned
        log.warning(
            "cannot pin to a CPU; serving unpinned", extra={"worker": index, "cpu": cpu, "error": str(exc)}
        )
        return
    log.info("pinned to a CPU", extra={"worker": index, "cpu": cpu})


def _metrics_address(base: str, index: int) -> str:
    host, _, port = base.rpartition(":")
    return f"{host}:{int(port) + index}" if port.isdigit() and int(port) != 0 else base


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the parent dies, even by SIGKILL (no orphaned workers)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent's signal forwarding still applies
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def serve_workers(settings: Settings, address: str | None = None, cpus: tuple[int, ...] | None = None) -> int:
    """Fork the workers (pinned to ``cpus``, see ``worker_cpus``), forward signals, wait; the exit
    status of the set (module doc)."""
    from kis_estimator.server.main import load_keyring, open_store, serve  # the parent must not start gRPC

    # Once, before the fork: migrations and the evidence key file, so the workers never race to
    # create them (no gRPC is touched here).
    load_keyring(settings)
    open_store(settings).close()
    count = worker_count(settings.workers)
    shared = replace(settings, workers=count)  # every worker binds with SO_REUSEPORT
    children: dict[int, int] = {}
    for index in range(count):
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                _die_with_parent()
                pin_to_cpu(cpus, index)
                worker = replace(shared, metrics_address=_metrics_address(settings.metrics_address, index))
                code = serve(worker, address=address)
            finally:
                os._exit(code)
        children[pid] = index
    log.info("workers started", extra={"workers": count, "pids": sorted(children)})

    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    while children:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid, -1)
        code = os.waitstatus_to_exitcode(wait_status)
        if not stopping:
            log.error(
                "worker exited unexpectedly; stopping the others", extra={"worker": index, "code": code}
            )
            status = 1
            forward(signal.SIGTERM, None)
        elif code != 0:
            status = 1
    sys.stdout.flush()
    return status
