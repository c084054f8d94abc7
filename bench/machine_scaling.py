"""What the machine itself gives two busy processes over one: the scaling section's same-run ceiling.

A shared virtual machine does not always run two busy vCPUs at the speed of one: the host may
boost a lone core higher, place both vCPUs on sibling hyperthreads, or lend the second one to
another guest. This module measures that factor with the estimator's own pure-Python work and no
I/O: ``python -m bench.machine_scaling --start-at T --seconds S --cpu C`` prices the small panel with
the engine (``engine_bench.compute``: hash, validation, pricing) in a loop from monotonic time ``T``
for ``S`` seconds on CPU ``C`` and prints how many it priced; the two processes of a pair count
over the same window. :func:`machine_scaling` runs one such process alone and then two at
once on two CPUs, in interleaved trials (alone, pair, pair, alone, …), and reports pair / alone per
trial and their median.

No workload scales better than this on the machine, so the estimator's two workers / one can be
read against it: with the database and the load generators on the same two cores, the
estimator's ratio stays below it by the CPU those take per create (the scaling section prints
that breakdown too).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def spin(start_at: float, seconds: float) -> int:
    """How many small panels the engine priced from ``start_at`` (``time.monotonic()``, one clock
    for every process of the machine) for ``seconds`` of wall time on this process's CPU."""
    from bench.engine_bench import compute
    from bench.payloads import domain_request
    from kis_estimator.server.engine.catalog import load_catalog

    catalog = load_catalog()
    req = domain_request("small", request_id="bench-machine-0001")
    compute(req, catalog)  # caches warm before the clock starts
    late = time.monotonic() - start_at
    if late > 0:
        raise RuntimeError(f"started {late:.2f} s after the common start: give the processes more time")
    time.sleep(-late)
    done, until = 0, start_at + seconds
    while time.monotonic() < until:
        compute(req, catalog)
        done += 1
    return done


# for the processes to import the engine and load the catalog (~1 s each) before the common start
STARTUP_S = 4.0


def _start(cpu: int | None, start_at: float, seconds: float) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        "-m",
        "bench.machine_scaling",
        "--start-at",
        repr(start_at),
        "--seconds",
        str(seconds),
    ]
    if cpu is not None:
        command += ["--cpu", str(cpu)]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)


def _priced(processes: list[subprocess.Popen[str]]) -> int:
    total = 0
    for p in processes:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"bench.machine_scaling exited {p.returncode}")
        total += int(json.loads(out)["priced"])
    return total


def machine_scaling(*, trials: int, seconds: float, pinned: bool) -> dict[str, Any]:
    """Pair / alone over ``trials`` interleaved trials: one spinning process on the first CPU this
    process may use, then two on the first two (``pinned``; else the kernel places them)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return {"skipped": f"one CPU only ({cpus})"}
    first, second = (cpus[0], cpus[1]) if pinned else (None, None)
    alone: list[int] = []
    pairs: list[int] = []
    for trial in range(trials):
        for kind in ("alone", "pair") if trial % 2 == 0 else ("pair", "alone"):
            start_at = time.monotonic() + STARTUP_S
            if kind == "alone":
                alone.append(_priced([_start(first, start_at, seconds)]))
            else:
                pairs.append(_priced([_start(first, start_at, seconds), _start(second, start_at, seconds)]))
    ratios = [pair / one for one, pair in zip(alone, pairs, strict=True) if one]
    return {
        "seconds": seconds,
        "pinned": pinned,
        "alone_per_s": [n / seconds for n in alone],
        "pair_per_s": [n / seconds for n in pairs],
        "ratios": ratios,
        "ratio": statistics.median(ratios) if ratios else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--start-at", type=float, required=True, help="time.monotonic() to start at")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--cpu", type=int, help="pin to this CPU (default: not pinned)")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    print(json.dumps({"priced": spin(args.start_at, args.seconds)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
