"""The stream guard's bounds and idle deadline (server/api/streams.py), with a fake clock."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kis_estimator.server.api.streams import StreamGuard
from kis_estimator.server.engine.errors import DomainError, ErrorCode


@dataclass
class FakeClock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


class FakeContext:
    def __init__(self) -> None:
        self.cancelled = 0

    def cancel(self) -> None:
        self.cancelled += 1


def refused(guard: StreamGuard, peer: str) -> DomainError:
    with pytest.raises(DomainError) as info:
        guard.open(peer, None)
    return info.value


def test_total_and_per_address_bounds() -> None:
    guard = StreamGuard(total=3, per_peer=2, idle_s=None)
    a1 = guard.open("ipv4:10.0.0.1:5000", None)
    guard.open("ipv4:10.0.0.1:5001", None)  # another port of the same address counts for it
    error = refused(guard, "ipv4:10.0.0.1:5002")
    assert (error.code, dict(error.violations[0].extra)) == (ErrorCode.STREAMS_EXHAUSTED, {"max": "2"})
    guard.open("ipv4:10.0.0.2:5000", None)
    error = refused(guard, "ipv4:10.0.0.3:5000")  # a new address, but the server is full
    assert dict(error.violations[0].extra) == {"max": "3"}
    guard.close(a1)
    guard.close(a1)  # idempotent: one slot freed, not two
    guard.open("ipv4:10.0.0.3:5000", None)
    refused(guard, "ipv4:10.0.0.4:5000")
    assert guard.counts().open == 3
    assert guard.counts().refused == 3


def test_ipv6_addresses_share_their_64() -> None:
    guard = StreamGuard(total=10, per_peer=1, idle_s=None)
    guard.open("ipv6:[2001:db8::1]:5000", None)
    refused(guard, "ipv6:[2001:db8::ffff]:6000")
    guard.open("ipv6:[2001:db8:0:1::1]:5000", None)


def test_idle_streams_are_cancelled_once_and_progress_keeps_a_stream_alive() -> None:
    clock = FakeClock()
    guard = StreamGuard(total=5, per_peer=5, idle_s=10.0, clock=clock)
    idle_ctx, busy_ctx = FakeContext(), FakeContext()
    guard.open("ipv4:10.0.0.1:1", idle_ctx)  # type: ignore[arg-type]
    busy = guard.open("ipv4:10.0.0.1:2", busy_ctx)  # type: ignore[arg-type]
    clock.now += 9.0
    busy.progress()
    assert guard.reap() == 0
    clock.now += 1.0  # idle for 10 s; busy for 1 s
    assert guard.reap() == 1
    assert (idle_ctx.cancelled, busy_ctx.cancelled) == (1, 0)
    clock.now += 5.0
    assert guard.reap() == 0  # a cancelled stream is not cancelled again while it winds down
    assert idle_ctx.cancelled == 1
    assert list(busy.requests(iter(["a", "b"]))) == ["a", "b"]  # each request counts as progress
    clock.now += 9.9
    assert guard.reap() == 0
    assert guard.counts().idle_cancelled == 1


def test_without_an_idle_deadline_nothing_is_reaped() -> None:
    clock = FakeClock()
    guard = StreamGuard(total=1, per_peer=1, idle_s=None, clock=clock)
    ctx = FakeContext()
    guard.open("unix:/x", ctx)  # type: ignore[arg-type]
    clock.now += 1e6
    assert guard.reap() == 0
    assert ctx.cancelled == 0


def test_bounds_below_one_are_refused() -> None:
    with pytest.raises(ValueError):
        StreamGuard(total=0, per_peer=1, idle_s=None)


def test_the_stream_pool_runs_at_most_its_slots_and_refuses_the_rest_at_once() -> None:
    import threading

    from kis_estimator.server.api.streams import StreamPool, refused_here

    pool = StreamPool(2)
    release = threading.Event()
    try:
        held = [pool.submit(lambda: (release.wait(10), refused_here())[1]) for _ in range(2)]
        third = pool.submit(refused_here)
        assert third.result(timeout=5) is True  # no thread free: runs at once, marked refused
        release.set()
        assert [f.result(timeout=5) for f in held] == [False, False]

        def boom() -> None:
            raise RuntimeError("handler bug")

        failed = pool.submit(boom)
        with pytest.raises(RuntimeError):
            failed.result(timeout=5)
        # every slot came back, the failed task's included
        assert [f.result(timeout=5) for f in [pool.submit(refused_here) for _ in range(2)]] == [False, False]
    finally:
        release.set()
        pool.shutdown()
