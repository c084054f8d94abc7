"""Three replica processes, each `serve --workers 2`, on one PostgreSQL database: every guarantee exact.

Real processes (six serving processes in all), a real database, concurrent clients spread over the
replicas (a new connection per call, so the kernel also spreads them over each replica's workers):

* 100 concurrent MIXED creates in a fresh month → exactly 2 accepted; after an ADMIN grant, exactly
  one more of the next 30;
* 200 creates sharing 20 dedup keys → exactly 20 stored, every other call DUPLICATE_REQUEST;
* one request_id sent 50 times at once to different replicas → one estimate, 50 identical replies;
* kill -9 of one replica mid-load → every call that got OK is stored with its evidence, the audit
  chain verifies, and the other replicas keep serving;
* a token's budget of 20 an hour → 20 calls succeed across the six processes, the 21st anywhere is
  RATE_LIMITED (the bucket row in PostgreSQL, server/service/shared_rate_limit.py);
* PostgreSQL "restarted" mid-load (a TCP relay cut for 4 s) → calls fail UNAVAILABLE
  STORE_UNAVAILABLE during the outage only, every acknowledged estimate is stored, the chain verifies.

What each rests on (deploy/README.md): the MIXED count and the dedup/request-id look-ups happen in
one write transaction per create, serialised across processes by PostgreSQL (advisory lock), with
unique constraints behind them; the audit chain is appended inside the same transaction.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest
from google.protobuf import json_format

from kis_estimator.server.acceptance.runner import outcome_of_error
from kis_estimator.server.engine.months import kst_month_of
from kis_estimator.server.gen.kis.estimator.v1 import admin_pb2 as admin_pb
from kis_estimator.server.gen.kis.estimator.v1 import admin_pb2_grpc as admin_grpc
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from kis_estimator.server.gen.kis.estimator.v1 import evidence_pb2 as evidence_pb
from kis_estimator.server.gen.kis.estimator.v1 import evidence_pb2_grpc as evidence_grpc
from tests.integration.conftest import TIMEOUT_S, free_ports_in_a_row
from tests.integration.test_postgres_service import EVIDENCE_KEYS
from tests.integration.test_storage_contract import pg_database
from tests.integration.test_store_outage import Relay

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "kis_estimator.server.cli"]
MIXED = {  # case M31's request
    "brand": "MIXED",
    "mixed_reason": "Customer supplies the LS main breaker spec; branches SANGDO",
    "installation": {"location": "INDOOR", "mount": "FLUSH"},
    "main": {"kind": "MCCB", "poles": 3, "trip_at": 100, "model": "ABN-103"},
    "branches": [{"kind": "MCCB", "poles": 3, "trip_at": 100, "qty": 2, "brand": "SANGDO"}],
    "accessories": {"enabled": False},
}


Result = tuple[str, bytes]  # OK or the refusal's reason, and the reply bytes


@dataclass
class Replica:
    target: str
    metrics_port: int
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Fleet:
    replicas: list[Replica]
    env: dict[str, str]
    token: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
        )


def start_replica(env: dict[str, str], tmp: Path, index: int, taken: set[int]) -> Replica:
    """``taken``: ports the fleet's replicas already use (worker 1's metrics port, metrics + 1, is
    not asked of the OS: two replicas once met on one)."""
    port, metrics = free_ports_in_a_row(1, taken), free_ports_in_a_row(2, taken)
    log = tmp / f"replica-{index}.log"
    with log.open("wb") as out:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [*CLI, "serve", "--workers", "2", "--listen", f"127.0.0.1:{port}"],
            env=env | {"KIS_METRICS_ADDRESS": f"127.0.0.1:{metrics}"},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill -9 takes the replica and its workers
        )
    return Replica(f"127.0.0.1:{port}", metrics, process, log)


def wait_ready(replica: Replica) -> None:
    deadline = time.monotonic() + 90
    while True:
        ready = 0
        for offset in (0, 1):
            try:
                url = f"http://127.0.0.1:{replica.metrics_port + offset}/healthz"
                with urllib.request.urlopen(url, timeout=1) as reply:
                    ready += reply.status == 200
            except OSError:
                pass
        if ready == 2:
            return
        assert replica.process.poll() is None and time.monotonic() < deadline, replica.log.read_text()
        time.sleep(0.2)


@contextmanager
def running_fleet(tmp_path: Path, relay: Relay | None = None, **settings: str) -> Iterator[Fleet]:
    """Three replicas, each ``serve --workers 2``, on a new PostgreSQL database (through ``relay``
    when given: a TCP relay the test can cut); ``settings``: more ``KIS_*`` variables."""
    with pg_database() as url:
        if relay is not None:
            parts = urlsplit(url)
            relay.target = (parts.hostname or "127.0.0.1", parts.port or 5432)
            relay.up()
            host = f"127.0.0.1:{relay.port}"
            url = urlunsplit(parts._replace(netloc=f"{parts.username}@{host}" if parts.username else host))
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "KIS_DATA_DIR": str(tmp_path / "data"),
            "KIS_DATABASE_URL": url,
            "KIS_EVIDENCE_KEYS": EVIDENCE_KEYS,
            "KIS_RATE_LIMIT_PER_HOUR": "100000",
            "KIS_LOG_LEVEL": "WARNING",
        } | settings
        (tmp_path / "data").mkdir()
        taken: set[int] = set()
        replicas = [start_replica(env, tmp_path, i, taken) for i in range(3)]
        try:
            for replica in replicas:
                wait_ready(replica)
            created = subprocess.run(
                [*CLI, "token", "create", "--role", "ADMIN", "--name", "fleet"],
                env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            yield Fleet(replicas, env, created.stdout.strip())
        finally:
            for replica in replicas:
                if replica.process.poll() is None:
                    os.killpg(replica.process.pid, signal.SIGKILL)
                    replica.process.wait(timeout=30)
            if relay is not None:
                relay.down()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with running_fleet(tmp_path) as running:
        yield running


def create_call(fleet: Fleet, replica: Replica, request: pb.CreateEstimateRequest) -> tuple[str, bytes]:
    """(OK or the refusal's reason, reply bytes) over a new connection to ``replica``."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(replica.target, options=options) as channel:
        call = channel.unary_unary(
            "/kis.estimator.v1.EstimatorService/CreateEstimate",
            request_serializer=pb.CreateEstimateRequest.SerializeToString,
            response_deserializer=None,
        )
        try:
            return "OK", call(request, metadata=fleet.metadata, timeout=60)
        except grpc.RpcError as err:
            return outcome_of_error(err).error_info.get("reason", err.code().name), b""


def race(
    fleet: Fleet, requests: list[pb.CreateEstimateRequest], threads: int = 24
) -> list[tuple[str, bytes]]:
    """Send every request at once-ish, request i to replica i mod 3."""
    live = [r for r in fleet.replicas if r.process.poll() is None]

    def send(i: int) -> tuple[str, bytes]:
        return create_call(fleet, live[i % len(live)], requests[i])

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(send, range(len(requests))))


def request(body: dict[str, Any], **fields: Any) -> pb.CreateEstimateRequest:
    msg = json_format.ParseDict(body, pb.CreateEstimateRequest())
    for name, value in fields.items():
        if name == "dedup_key":
            msg.meta.dedup_key = value
        else:
            setattr(msg, name, value)
    return msg


def example() -> dict[str, Any]:
    return dict(json.loads((ROOT / "examples/example1.json").read_text()))


def estimates_stored(fleet: Fleet) -> list[str]:
    stub = pb_grpc.EstimatorServiceStub(grpc.insecure_channel(fleet.replicas[0].target))
    ids: list[str] = []
    token = ""
    while True:
        reply = stub.ListEstimates(
            pb.ListEstimatesRequest(page_size=100, page_token=token),
            metadata=fleet.metadata,
            timeout=TIMEOUT_S,
        )
        ids += [e.estimate_id for e in reply.estimates]
        token = reply.next_page_token
        if not token:
            return ids


def test_mixed_quota_is_exact_across_three_replicas_of_two_workers(fleet: Fleet) -> None:
    results = race(fleet, [request(MIXED, request_id=f"mixed-{i}") for i in range(100)])
    reasons = Counter(reason for reason, _ in results)
    assert reasons == {"OK": 2, "MIXED_QUOTA_EXCEEDED": 98}, reasons
    admin = admin_grpc.AdminServiceStub(grpc.insecure_channel(fleet.replicas[1].target))
    month = kst_month_of(datetime.now(UTC))
    admin.GrantMixedException(
        admin_pb.GrantMixedExceptionRequest(month=month, reason="hospital retrofit"),
        metadata=fleet.metadata,
        timeout=TIMEOUT_S,
    )
    results = race(fleet, [request(MIXED, request_id=f"granted-{i}") for i in range(30)])
    reasons = Counter(reason for reason, _ in results)
    assert reasons == {"OK": 1, "MIXED_QUOTA_EXCEEDED": 29}, reasons


def test_dedup_keys_and_request_ids_are_exact_across_replicas(fleet: Fleet) -> None:
    requests = [request(example(), request_id=f"dedup-{i}", dedup_key=f"key-{i % 20}") for i in range(200)]
    reasons = Counter(reason for reason, _ in race(fleet, requests))
    assert reasons == {"OK": 20, "DUPLICATE_REQUEST": 180}, reasons
    assert len(estimates_stored(fleet)) == 20

    same = [request(example(), request_id="one-request") for _ in range(50)]
    results = race(fleet, same)
    assert {reason for reason, _ in results} == {"OK"}, Counter(r for r, _ in results)
    assert len({reply for _, reply in results}) == 1  # 50 byte-identical replies
    assert len(estimates_stored(fleet)) == 21


def test_kill_9_of_a_replica_mid_load_loses_nothing_acknowledged(fleet: Fleet) -> None:
    victim = fleet.replicas[2]
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            replica = fleet.replicas[(n + i) % 3]
            i += 1
            reason, reply = create_call(fleet, replica, request(example(), request_id=f"load-{n}-{i}"))
            if reason == "OK":
                with lock:
                    acknowledged.append(pb.CreateEstimateResponse.FromString(reply).estimate.estimate_id)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    time.sleep(4)
    os.killpg(victim.process.pid, signal.SIGKILL)
    victim.process.wait(timeout=30)
    before_kill = len(acknowledged)
    time.sleep(3)  # the survivors keep serving
    stop.set()
    for t in threads:
        t.join(timeout=90)
    assert before_kill > 0 and len(acknowledged) > before_kill, (before_kill, len(acknowledged))

    stored = set(estimates_stored(fleet))
    assert set(acknowledged) <= stored
    evidence = evidence_grpc.EvidenceServiceStub(grpc.insecure_channel(fleet.replicas[0].target))
    for estimate_id in acknowledged[:: max(1, len(acknowledged) // 25)]:  # a sample of 25 or so
        info = evidence.GetEvidenceInfo(
            evidence_pb.GetEvidenceInfoRequest(estimate_id=estimate_id),
            metadata=fleet.metadata,
            timeout=TIMEOUT_S,
        )
        assert info.size_bytes > 0
    verify = fleet.cli("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_tokens_rate_limit_holds_across_replica_processes(tmp_path: Path) -> None:
    with running_fleet(tmp_path, KIS_RATE_LIMIT_PER_HOUR="20") as limited:
        quota = admin_pb.GetMixedQuotaRequest()

        def call(i: int) -> str:
            target = limited.replicas[i % 3].target
            with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                try:
                    admin_grpc.AdminServiceStub(channel).GetMixedQuota(
                        quota, metadata=limited.metadata, timeout=TIMEOUT_S
                    )
                except grpc.RpcError as err:
                    return outcome_of_error(err).error_info.get("reason", err.code().name)
            return "OK"

        with ThreadPoolExecutor(12) as pool:
            reasons = Counter(pool.map(call, range(30)))
        assert reasons == {"OK": 20, "RATE_LIMITED": 10}, reasons
        assert call(0) == call(1) == call(2) == "RATE_LIMITED"  # the 21st call anywhere


def test_a_database_restart_mid_load_fails_calls_only_during_the_outage(tmp_path: Path) -> None:
    relay = Relay(("127.0.0.1", 5432))  # the target is set by running_fleet
    with running_fleet(tmp_path, relay) as fleet:
        results: list[tuple[float, str, str]] = []  # (monotonic time, reason, estimate id)
        lock = threading.Lock()
        stop = threading.Event()

        def client(n: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                reason, reply = create_call(
                    fleet, fleet.replicas[(n + i) % 3], request(example(), request_id=f"r-{n}-{i}")
                )
                estimate_id = (
                    pb.CreateEstimateResponse.FromString(reply).estimate.estimate_id if reply else ""
                )
                with lock:
                    results.append((time.monotonic(), reason, estimate_id))
                if reason != "OK":
                    time.sleep(0.2)  # a client backing off while the service says UNAVAILABLE

        threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        time.sleep(3)
        down_at = time.monotonic()
        relay.down()  # PostgreSQL "restarts": connections refused, open ones dropped
        time.sleep(4)
        relay.up()
        up_at = time.monotonic()
        time.sleep(8)
        stop.set()
        for t in threads:
            t.join(timeout=90)

        failures = [(at, reason) for at, reason, _ in results if reason != "OK"]
        assert {reason for _, reason in failures} <= {"STORE_UNAVAILABLE"}, Counter(r for _, r in failures)
        assert failures, "the outage was not noticed"
        # calls fail only during the outage (plus the few seconds a replica needs to reconnect)
        assert all(down_at - 1 <= at <= up_at + 5 for at, _ in failures), (down_at, up_at, failures[-5:])
        assert any(reason == "OK" and at > up_at + 5 for at, reason, _ in results)  # recovered
        acknowledged = {estimate_id for _, reason, estimate_id in results if reason == "OK"}
        assert acknowledged <= set(estimates_stored(fleet))
        verify = fleet.cli("audit", "verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
