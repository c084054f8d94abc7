"""Streaming calls may not starve the server: their own threads, bounded, with an idle deadline.

grpcio's synchronous server serves every call on a thread of a pool. A unary call holds its thread
for the few milliseconds it computes; a streaming call holds it for as long as the client keeps the
stream open: a reflection stream (bidirectional) while the server waits for the client's next
request, an evidence-bundle download while the client does not read (HTTP/2 flow control stops the
sender). Sixteen idle reflection streams, opened without a token, used to take every thread of the
one pool: health checks and CreateEstimate then waited forever. So:

* streaming handlers run on a pool of their own, :class:`StreamPool` (``KIS_MAX_STREAMS`` threads);
  the RPC pool (``KIS_MAX_WORKERS``) serves unary calls only, so no stream can take its threads.
  A stream that arrives while every stream thread is taken is not queued behind them (a queue of
  idle streams would hold the server's in-flight budget, ``maximum_concurrent_rpcs``, for minutes):
  it is refused at once, RESOURCE_EXHAUSTED ``STREAMS_EXHAUSTED``, on a small pool of its own;
* :class:`StreamGuard` admits at most ``per_peer`` streams per client address (IPv4 address, IPv6
  /64: :func:`kis_estimator.server.service.rate_limit.peer_key`), so one caller cannot hold every stream
  thread; behind a proxy every client has the proxy's address, so raise ``KIS_MAX_STREAMS_PER_PEER`` there;
* every admitted stream carries an idle deadline: when neither side made progress for ``idle_s``
  (no request arrived, no reply chunk left), a reaper thread cancels the call. The client sees
  CANCELLED; the thread returns to the pool. A stream that makes progress lives as long as it needs;
* the health service's ``Watch`` is served non-blocking (grpcio's ``experimental_non_blocking``: a
  watcher holds a callback, not a thread), under a bound of its own and without an idle deadline,
  since a watcher waits for changes by design; ``Check`` and ``List`` run on a small pool of their
  own (:func:`health_pool`), so health answers even while every RPC thread is busy.

Bounds per HTTP/2 connection (``grpc.max_concurrent_streams``) and on all calls in flight
(``maximum_concurrent_rpcs``) are server options (server/api/server.py).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from kis_estimator.server.engine.errors import DomainError, ErrorCode
from kis_estimator.server.engine.messages import violation
from kis_estimator.server.service.rate_limit import peer_key

log = logging.getLogger(__name__)

HEALTH_POOL_THREADS = 2
_health_pool: futures.ThreadPoolExecutor | None = None
_health_pool_lock = threading.Lock()


def health_pool() -> futures.ThreadPoolExecutor:
    """The process's pool for health Check/List (created on first use: after a worker's fork)."""
    global _health_pool
    with _health_pool_lock:
        if _health_pool is None:
            _health_pool = futures.ThreadPoolExecutor(HEALTH_POOL_THREADS, thread_name_prefix="rpc-health")
        return _health_pool


REFUSAL_THREADS = 2
_refusing = threading.local()


def refused_here() -> bool:
    """True on a thread that runs a stream the :class:`StreamPool` had no thread for."""
    return bool(getattr(_refusing, "active", False))


class StreamPool(futures.ThreadPoolExecutor):
    """The threads of streaming handlers: a task runs at once on one of ``slots`` threads, or, when
    all are taken, on the refusal pool with :func:`refused_here` true (the handler then refuses
    the call quickly). Nothing waits in a queue. grpcio submits one task per streaming call to the
    pool named by the behavior's ``experimental_thread_pool``."""

    def __init__(self, slots: int) -> None:
        super().__init__(max_workers=slots, thread_name_prefix="rpc-stream")
        self.slots = slots
        self._active = 0
        self._lock = threading.Lock()
        self._refusals = futures.ThreadPoolExecutor(REFUSAL_THREADS, thread_name_prefix="rpc-stream-refusal")

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        with self._lock:
            admitted = self._active < self.slots
            if admitted:
                self._active += 1
        if admitted:
            return super().submit(self._run_admitted, fn, args, kwargs)
        return self._refusals.submit(self._run_refused, fn, args, kwargs)

    def _run_admitted(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            with self._lock:
                self._active -= 1

    @staticmethod
    def _run_refused(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        _refusing.active = True
        try:
            return fn(*args, **kwargs)
        finally:
            _refusing.active = False

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._refusals.shutdown(wait=wait, cancel_futures=cancel_futures)
        super().shutdown(wait=wait, cancel_futures=cancel_futures)


def exhausted(limit: int) -> DomainError:
    return DomainError(violation(ErrorCode.STREAMS_EXHAUSTED, "", max=limit))


@dataclass(eq=False, slots=True)
class Stream:
    """One admitted stream: who holds it, and when it last made progress."""

    peer: str
    context: grpc.ServicerContext | None
    last_progress: float
    cancelled: bool = False
    _clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def progress(self) -> None:
        """A request arrived or a reply chunk left: the idle deadline starts again."""
        self.last_progress = self._clock()

    def requests(self, iterator: Iterator[Any]) -> Iterator[Any]:
        """``iterator``'s requests, each one counted as progress."""
        for request in iterator:
            self.progress()
            yield request


@dataclass(frozen=True, slots=True)
class StreamCounts:
    open: int
    refused: int
    idle_cancelled: int


class StreamGuard:
    """See the module docstring. ``idle_s`` None: no idle deadline (health watchers)."""

    def __init__(
        self,
        total: int,
        per_peer: int,
        idle_s: float | None,
        *,
        kind: str = "streams",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total < 1 or per_peer < 1:
            raise ValueError("stream bounds must be at least 1")
        self.total = total
        self.per_peer = min(per_peer, total)
        self.idle_s = idle_s
        self._kind = kind
        self._clock = clock
        self._lock = threading.Condition()
        self._open: set[Stream] = set()
        self._by_peer: Counter[str] = Counter()
        self._refused = 0
        self._idle_cancelled = 0
        self._reaper: threading.Thread | None = None
        self._ids = itertools.count()

    def refuse(self, limit: int) -> DomainError:
        """Count a stream refused elsewhere (no stream thread free) and return its error."""
        with self._lock:
            self._refused += 1
        return exhausted(limit)

    def open(self, peer: str, context: grpc.ServicerContext | None) -> Stream:
        """Admit a stream of ``peer`` or raise DomainError STREAMS_EXHAUSTED."""
        key = peer_key(peer)
        with self._lock:
            if len(self._open) >= self.total or self._by_peer[key] >= self.per_peer:
                self._refused += 1
                per_peer = self._by_peer[key] >= self.per_peer
                raise exhausted(self.per_peer if per_peer else self.total)
            stream = Stream(key, context, self._clock(), _clock=self._clock)
            self._open.add(stream)
            self._by_peer[key] += 1
            if self.idle_s is not None and self._reaper is None:
                self._reaper = threading.Thread(
                    target=self._reap_while_open, name=f"{self._kind}-reaper-{next(self._ids)}", daemon=True
                )
                self._reaper.start()
            return stream

    def close(self, stream: Stream) -> None:
        """The stream ended (idempotent)."""
        with self._lock:
            if stream not in self._open:
                return
            self._open.discard(stream)
            self._by_peer[stream.peer] -= 1
            if not self._by_peer[stream.peer]:
                del self._by_peer[stream.peer]
            self._lock.notify_all()

    def counts(self) -> StreamCounts:
        with self._lock:
            return StreamCounts(len(self._open), self._refused, self._idle_cancelled)

    def reap(self) -> int:
        """Cancel every stream idle for ``idle_s`` or longer; returns how many were cancelled."""
        if self.idle_s is None:
            return 0
        now = self._clock()
        with self._lock:
            idle = [s for s in self._open if not s.cancelled and now - s.last_progress >= self.idle_s]
            for stream in idle:
                stream.cancelled = True
            self._idle_cancelled += len(idle)
        for stream in idle:
            log.info("idle stream cancelled", extra={"kind": self._kind, "peer": stream.peer})
            if stream.context is not None:
                stream.context.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leave it untyped
        return len(idle)

    def _reap_while_open(self) -> None:
        """The reaper: runs while streams are open, then ends (a new one starts with the next stream)."""
        assert self.idle_s is not None
        interval = max(0.05, self.idle_s / 4)
        with self._lock:
            while True:
                if not self._open:
                    self._reaper = None
                    return
                self._lock.wait(interval)
                self._lock.release()
                try:
                    self.reap()
                finally:
                    self._lock.acquire()


def carry_serving_mode(behavior: Callable[..., Any], wrapper: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``wrapper`` the serving attributes grpcio reads from the behavior it calls.

    grpcio looks for ``experimental_non_blocking`` (a streaming behavior that takes a
    ``send_response_callback`` and returns at once) and ``experimental_thread_pool`` (the pool that
    runs it) on the outermost behavior; an interceptor's wrapper must carry them over, or the
    health watcher would hold a thread again and Check would leave its reserved pool.
    """
    for name in ("experimental_non_blocking", "experimental_thread_pool"):
        if hasattr(behavior, name):
            setattr(wrapper, name, getattr(behavior, name))
    return wrapper


def is_non_blocking(behavior: Callable[..., Any]) -> bool:
    return bool(getattr(behavior, "experimental_non_blocking", False))


class StreamsCollector:
    """``kis_grpc_streams_*`` of each guard, read at scrape time."""

    def __init__(self, guards: dict[str, StreamGuard]) -> None:
        self._guards = guards

    def collect(self) -> Iterator[Metric]:
        open_ = GaugeMetricFamily(
            "kis_grpc_streams_open", "Thread-holding streams (or health watchers) open now.", labels=["kind"]
        )
        refused = CounterMetricFamily(
            "kis_grpc_streams_refused", "Streams refused STREAMS_EXHAUSTED since start.", labels=["kind"]
        )
        reaped = CounterMetricFamily(
            "kis_grpc_streams_idle_cancelled",
            "Streams cancelled by the idle deadline since start.",
            labels=["kind"],
        )
        for kind, guard in self._guards.items():
            counts = guard.counts()
            open_.add_metric([kind], counts.open)
            refused.add_metric([kind], counts.refused)
            reaped.add_metric([kind], counts.idle_cancelled)
        yield from (open_, refused, reaped)
