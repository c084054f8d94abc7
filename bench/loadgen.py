"""The load generator: one process, ``--connections`` ``grpc.aio`` channels (one by default), many
calls in flight (closed loop).

Started by ``bench/bench.py`` (``python -m bench.loadgen --target HOST:PORT``); it connects, prints
``{"ready": true}`` and then runs one phase per JSON line read from stdin, answering one JSON line
each. Several of these processes may share a phase: the orchestrator hands them the same
``start_at`` (``time.monotonic()``, one clock for every process of the machine), so their warm-up
and measuring windows coincide.

A phase keeps ``concurrency`` calls in flight: each of that many workers sends its next call as soon
as the previous one ends, worker *w* on channel *w* mod ``--connections``. Each channel is its own
TCP connection (a local subchannel pool: grpcio would otherwise share one connection between
channels to one target), which matters against ``serve --workers``: SO_REUSEPORT spreads
connections over the worker processes, not calls. Two kinds:

* timed: from ``start_at`` for ``warmup_s + duration_s``; only calls that *complete* inside the
  measuring window ``[start_at + warmup_s, start_at + warmup_s + duration_s]`` count, and QPS is
  their number over the window's length (calls in flight at either edge are dropped). With
  ``min_calls``, a window in which fewer calls completed stays open until that many did (the smoke
  run's windows are shorter than one slow call under load); ``window_s`` is then the longer one;
* counted (``calls`` given): exactly that many calls, all counted (the leak check).

Requests are raw bytes (no message objects on the client): the body, plus, when ``id_field`` is set,
one ``request_id`` string field appended per call (``<id_prefix>-<process>-<worker>-<n>``), so no two
calls share a ``request_id`` and none is a replay. Server-streaming methods are read to the end.
The answer holds the OK latencies (ms), error counts by status code, the window and this process's
CPU seconds (``os.times``) inside it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from bench.payloads import string_field

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
]
CALL_TIMEOUT_S = 30.0


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    response_bytes: int = 0


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _caller(channel: grpc.aio.Channel, spec: dict[str, Any]) -> Callable[[bytes], Awaitable[int]]:
    """A coroutine function sending one request's bytes; returns the response size in bytes."""
    metadata = tuple((str(k), str(v)) for k, v in spec.get("metadata", []))
    if spec.get("streaming"):
        stream = channel.unary_stream(spec["method"], request_serializer=None, response_deserializer=None)

        async def call_stream(body: bytes) -> int:
            size = 0
            async for chunk in stream(body, metadata=metadata, timeout=CALL_TIMEOUT_S):
                size += len(chunk)
            return size

        return call_stream
    unary = channel.unary_unary(spec["method"], request_serializer=None, response_deserializer=None)

    async def call_unary(body: bytes) -> int:
        reply: bytes = await unary(body, metadata=metadata, timeout=CALL_TIMEOUT_S)
        return len(reply)

    return call_unary


def _bodies(spec: dict[str, Any], process: int) -> Callable[[int, int], bytes]:
    base = base64.b64decode(spec["body_b64"])
    id_field = spec.get("id_field")
    if not id_field:
        return lambda _worker, _n: base
    prefix = f"{spec['id_prefix']}-{process}"
    return lambda worker, n: base + string_field(int(id_field), f"{prefix}-{worker}-{n}")


async def run_timed(channels: list[grpc.aio.Channel], spec: dict[str, Any], process: int) -> dict[str, Any]:
    calls = [_caller(channel, spec) for channel in channels]
    body_of = _bodies(spec, process)
    start_at = float(spec["start_at"])
    measure_from = start_at + float(spec["warmup_s"])
    measure_to = measure_from + float(spec["duration_s"])
    min_calls = int(spec.get("min_calls", 0))
    tally = Tally()
    cpu: dict[str, float] = {}
    closed_at: list[float] = []  # when the window closed, if min_calls held it open past measure_to

    def window_open(now: float) -> bool:
        return now < measure_to or (len(tally.latencies_ms) < min_calls and not closed_at)

    async def sample_cpu(at: float, key: str) -> None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        cpu[key] = _cpu_s()

    async def worker(w: int) -> None:
        call = calls[w % len(calls)]
        n = 0
        while window_open(time.monotonic()):
            body = body_of(w, n)
            n += 1
            t0 = time.perf_counter()
            try:
                size = await call(body)
            except grpc.aio.AioRpcError as exc:
                if measure_from <= time.monotonic() and window_open(time.monotonic()):
                    tally.errors[exc.code().name] += 1
                continue
            t1 = time.perf_counter()
            now = time.monotonic()
            if measure_from <= now and window_open(now):
                tally.latencies_ms.append((t1 - t0) * 1000.0)
                tally.response_bytes = size
                if now >= measure_to and len(tally.latencies_ms) >= min_calls:
                    closed_at.append(now)
                    cpu.setdefault("closed", _cpu_s())

    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    await asyncio.gather(
        sample_cpu(measure_from, "from"),
        sample_cpu(measure_to, "to"),
        *(worker(w) for w in range(int(spec["concurrency"]))),
    )
    end = closed_at[0] if closed_at else measure_to
    return {
        "latencies_ms": tally.latencies_ms,
        "errors": dict(tally.errors),
        "window_s": end - measure_from,
        "window_extended": bool(closed_at),
        "cpu_s": cpu.get("closed", cpu["to"]) - cpu["from"],
        "response_bytes": tally.response_bytes,
    }


async def run_counted(channels: list[grpc.aio.Channel], spec: dict[str, Any], process: int) -> dict[str, Any]:
    calls = [_caller(channel, spec) for channel in channels]
    body_of = _bodies(spec, process)
    total = int(spec["calls"])
    issued = 0
    tally = Tally()

    async def worker(w: int) -> None:
        nonlocal issued
        call = calls[w % len(calls)]
        while issued < total:
            n = issued
            issued += 1  # one event loop thread: no lock needed between the check and the increment
            t0 = time.perf_counter()
            try:
                tally.response_bytes = await call(body_of(w, n))
            except grpc.aio.AioRpcError as exc:
                tally.errors[exc.code().name] += 1
                continue
            tally.latencies_ms.append((time.perf_counter() - t0) * 1000.0)

    cpu0, started = _cpu_s(), time.monotonic()
    await asyncio.gather(*(worker(w) for w in range(int(spec["concurrency"]))))
    return {
        "latencies_ms": tally.latencies_ms,
        "errors": dict(tally.errors),
        "window_s": time.monotonic() - started,
        "cpu_s": _cpu_s() - cpu0,
        "response_bytes": tally.response_bytes,
    }


def _answer(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def serve_phases(target: str, process: int, connections: int) -> None:
    loop = asyncio.get_running_loop()
    options = CHANNEL_OPTIONS
    if connections > 1:  # without it grpcio shares one connection between the channels
        options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(connections)]
    try:
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), timeout=30)
        _answer({"ready": True, "pid": os.getpid()})
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line.strip():
                return  # EOF or an empty line: the orchestrator is done
            spec = json.loads(line)
            if "calls" in spec:
                _answer(await run_counted(channels, spec, process))
            else:
                _answer(await run_timed(channels, spec, process))
    finally:
        await asyncio.gather(*(c.close(None) for c in channels))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--process", type=int, default=0, help="index, part of every request_id")
    parser.add_argument("--connections", type=int, default=1, help="channels, each its own TCP connection")
    args = parser.parse_args()
    if args.connections < 1:
        parser.error("--connections must be >= 1")
    asyncio.run(serve_phases(args.target, args.process, args.connections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
