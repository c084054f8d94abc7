"""A database outage: UNAVAILABLE with a clear code, health NOT_SERVING, recovery by itself.

The replica talks to PostgreSQL through a TCP relay the test can cut: while it is down every
connection is refused and open ones are dropped — what a PostgreSQL restart looks like from the
service. Nothing acknowledged before the outage is lost, and nothing is half-stored.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kis_estimator.server.acceptance.runner import outcome_of_error
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from kis_estimator.server.storage.postgres import PostgresStore
from tests.integration.conftest import TIMEOUT_S, Served
from tests.integration.test_postgres_service import start_on_postgres, terminate_other_sessions
from tests.integration.test_storage_contract import pg_database

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = json.loads((ROOT / "examples" / "example1.json").read_text(encoding="utf-8"))


class Relay:
    """127.0.0.1:<port> → the database, byte for byte; ``down()`` refuses and drops, ``up()`` resumes,
    ``drop()`` closes the open connections and goes on accepting (a proxy's or firewall's idle
    timeout). Like a network path, it keeps an idle connection open for as long as both ends do."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close alone may not
            listener.close()
        self.drop()

    def drop(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)  # the 5 s were for connecting: an idle connection stays open
            with self._lock:
                if self._listener is not listener:  # down() ran while this one was connecting
                    client.close()
                    server.close()
                    return
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def relayed_database() -> Iterator[tuple[str, Relay]]:
    """A new database, and its URL through a :class:`Relay` that is up."""
    with pg_database() as url:
        parts = urlsplit(url)
        relay = Relay((parts.hostname or "127.0.0.1", parts.port or 5432))
        relay.up()
        netloc = f"{parts.username}@127.0.0.1:{relay.port}" if parts.username else f"127.0.0.1:{relay.port}"
        try:
            yield urlunsplit(parts._replace(netloc=netloc)), relay
        finally:
            relay.down()


@pytest.fixture
def relayed() -> Iterator[tuple[Served, Relay]]:
    with relayed_database() as (url, relay):
        served = start_on_postgres(url)
        try:
            yield served, relay
        finally:
            served.app.stop(0)


def _health(channel: grpc.Channel) -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
    return int(reply.status)


def _wait_health(channel: grpc.Channel, status: int, within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while _health(channel) != status:
        assert time.monotonic() < deadline, f"health did not turn {status}"
        time.sleep(0.2)


def test_an_outage_is_unavailable_not_internal_and_the_service_recovers_by_itself(
    relayed: tuple[Served, Relay],
) -> None:
    served, relay = relayed
    md = served.metadata("ESTIMATOR")
    request = json_format.ParseDict(EXAMPLE, pb.CreateEstimateRequest())
    with grpc.insecure_channel(served.address) as channel:
        stub = pb_grpc.EstimatorServiceStub(channel)
        before = stub.CreateEstimate(request, metadata=md, timeout=TIMEOUT_S).estimate
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING

        relay.down()  # PostgreSQL "restarts"
        during = pb.CreateEstimateRequest()
        during.CopyFrom(request)
        during.request_id = "during-the-outage"
        with pytest.raises(grpc.RpcError) as failed:
            stub.CreateEstimate(during, metadata=md, timeout=TIMEOUT_S)
        outcome = outcome_of_error(failed.value)
        assert (outcome.code, outcome.violations[0]["code"]) == ("UNAVAILABLE", "STORE_UNAVAILABLE")
        _wait_health(channel, health_pb2.HealthCheckResponse.NOT_SERVING)

        relay.up()
        _wait_health(channel, health_pb2.HealthCheckResponse.SERVING)
        again = stub.GetEstimate(
            pb.GetEstimateRequest(estimate_id=before.estimate_id), metadata=md, timeout=TIMEOUT_S
        )
        assert again.estimate.totals.total_krw == before.totals.total_krw  # acknowledged before: kept
        retried = stub.CreateEstimate(
            during, metadata=md, timeout=TIMEOUT_S
        ).estimate  # the retry succeeds once
        assert (
            retried.request_id == "during-the-outage" and retried.totals.total_krw == before.totals.total_krw
        )


@contextlib.contextmanager
def _store_whose_idle_connections_close(
    closed_by: str,
) -> Iterator[tuple[PostgresStore, Callable[[], object]]]:
    """A store, and what closes its idle connections: the server terminating the sessions (the
    store connects directly, so the FATAL is on its sockets when the sessions are gone), or the
    network between them (a relay's idle timeout: it closes its ends, the FIN is at once on the
    store's sockets)."""
    if closed_by == "the server":
        with pg_database() as url:
            store = PostgresStore(url)
            try:
                yield store, lambda: terminate_other_sessions(url)
            finally:
                store.close()
    else:
        with relayed_database() as (url, relay):
            store = PostgresStore(url)
            try:
                yield store, relay.drop
            finally:
                store.close()


@pytest.mark.parametrize("closed_by", ["the server", "the network"])
def test_pooled_connections_closed_while_idle_are_passed_over_not_failed_on(closed_by: str) -> None:
    """After a database restart (or a proxy's idle timeout) every pooled connection is dead; the
    next unit of each kind must get a live one, not fail on a dead one and answer UNAVAILABLE while
    the database is up. A look-up and a budget spend have no BEGIN that would find out first."""
    with _store_whose_idle_connections_close(closed_by) as (store, close_idle):

        def write() -> None:
            with store.unit_of_work() as uow:
                uow.tokens.add("t0", "n", "VIEWER", "0" * 64, datetime.now(UTC))
                uow.commit()

        def read() -> None:
            with store.unit_of_work(read_only=True) as uow:
                assert uow.tokens.find_by_hash("0" * 64) is not None

        def look_up() -> None:
            with store.lookup() as uow:
                assert uow.tokens.find_by_hash("0" * 64) is not None

        def spend() -> None:
            assert store.spend_budget("k", 100, 3600.0)[0]

        for unit in (write, read, look_up, spend):
            with contextlib.ExitStack() as stack:  # three connections in the pool, idle
                for _ in range(3):
                    stack.enter_context(store.unit_of_work(read_only=True)).estimates.get("")
            close_idle()
            unit()
