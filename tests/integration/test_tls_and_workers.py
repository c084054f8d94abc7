"""Native TLS (and mutual TLS) on the gRPC port, and `serve --workers N` sharing one port.

TLS: a real server with a certificate of a throwaway CA; a client trusting the CA is served, a
plaintext client is not, the CLI talks TLS with ``--tls-ca``; with a client CA only clients holding
a certificate it signed get through. Workers: a real ``kis-estimator serve --workers 2`` process
tree; both workers answer on the one port (their metrics ports say so), the MIXED quota stays
exact across them, and SIGTERM to the parent drains and ends them all.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from kis_estimator.server.gen.kis.estimator.v1 import server_info_pb2, server_info_pb2_grpc
from tests.integration.conftest import TIMEOUT_S, free_ports_in_a_row, start_app
from tests.integration.test_replicas_exact import MIXED
from tests.integration.tls import Pki, make_pki

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_FILE = ROOT / "examples" / "example1.json"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _info(channel: grpc.Channel) -> server_info_pb2.GetServerInfoResponse:
    stub = server_info_pb2_grpc.ServerInfoServiceStub(channel)
    return stub.GetServerInfo(server_info_pb2.GetServerInfoRequest(), timeout=TIMEOUT_S)


def test_tls_serves_clients_that_trust_the_ca_and_refuses_plaintext(pki: Pki, tmp_path: Path) -> None:
    served = start_app(tmp_path, tls_cert=pki.server_cert, tls_key=pki.server_key)
    try:
        credentials = grpc.ssl_channel_credentials(pki.ca.read_bytes())
        with grpc.secure_channel(served.address, credentials) as channel:
            assert _info(channel).version
        with grpc.insecure_channel(served.address) as plain, pytest.raises(grpc.RpcError) as refused:
            _info(plain)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        env = {"PATH": "/usr/bin:/bin", "KIS_TOKEN": served.tokens["ESTIMATOR"], "KIS_TLS_CA": str(pki.ca)}
        done = subprocess.run(
            [sys.executable, "-m", "kis_estimator.server.cli", "estimate", str(EXAMPLE_FILE), "--dry-run",
             "--target", served.address],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0 and "1,134,100" in done.stdout, done.stderr
    finally:
        served.app.stop(0)


def test_mutual_tls_requires_a_client_certificate_signed_by_the_client_ca(pki: Pki, tmp_path: Path) -> None:
    served = start_app(tmp_path, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca)
    try:
        anonymous = grpc.ssl_channel_credentials(pki.ca.read_bytes())
        with (
            grpc.secure_channel(served.address, anonymous) as channel,
            pytest.raises(grpc.RpcError) as refused,
        ):
            _info(channel)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        holder = grpc.ssl_channel_credentials(
            pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
        )
        with grpc.secure_channel(served.address, holder) as channel:
            assert _info(channel).version
    finally:
        served.app.stop(0)


def test_half_a_tls_configuration_is_refused() -> None:
    from kis_estimator.server.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="go together"):
        Settings(tls_cert=Path("cert.pem"))
    with pytest.raises(SettingsError, match="needs KIS_TLS_CERT"):
        Settings(tls_client_ca=Path("ca.pem"))


# ------------------------------------------------------------------------------------ workers


@pytest.fixture
def workers(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[str, int, subprocess.Popen[bytes], dict[str, str]]]:
    """``serve --workers 2`` (or the ``workers`` count of an indirect parameter, whose other keys
    are extra environment variables), ready on every worker's /healthz, and an ADMIN token."""
    extra = dict(getattr(request, "param", {}))
    count = int(extra.pop("workers", 2))
    taken: set[int] = set()
    port, metrics = free_ports_in_a_row(1, taken), free_ports_in_a_row(count, taken)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "KIS_DATA_DIR": str(tmp_path / "data"),
        "KIS_METRICS_ADDRESS": f"127.0.0.1:{metrics}",
    } | extra
    (tmp_path / "data").mkdir()
    cli = [sys.executable, "-m", "kis_estimator.server.cli"]
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [*cli, "serve", "--workers", str(count), "--listen", f"127.0.0.1:{port}"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=log,
        start_new_session=True,  # a process group of its own: the teardown kills the whole set
    )
    target = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            ready = 0
            for offset in range(count):
                try:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{metrics + offset}/healthz", timeout=1
                    ) as r:
                        ready += r.status == 200
                except OSError:
                    pass
            if ready == count:
                break
            assert process.poll() is None and time.monotonic() < deadline, (
                tmp_path / "serve.log"
            ).read_text()
            time.sleep(0.2)
        token = subprocess.run(
            [*cli, "token", "create", "--role", "ADMIN", "--name", "workers"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
        ).stdout.strip()  # fmt: skip
        yield target, metrics, process, {"token": token}
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # the set ended between poll and kill
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        log.close()


def _handled(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("grpc_server_handled_total{") and 'grpc_service="kis.estimator' in line
    )


def test_two_workers_share_the_port_stay_exact_and_drain_on_sigterm(
    workers: tuple[str, int, subprocess.Popen[bytes], dict[str, str]],
) -> None:
    target, metrics, process, secrets = workers
    md = (("authorization", f"Bearer {secrets['token']}"),)
    mixed = json_format.ParseDict(MIXED, pb.CreateEstimateRequest())
    outcomes: list[str] = []
    lock = threading.Lock()

    def call(i: int) -> None:
        # A channel each: new connections, which the kernel spreads over the workers.
        with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = pb_grpc.EstimatorServiceStub(channel)
            grpc.channel_ready_future(channel).result(timeout=TIMEOUT_S)
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
            request = pb.CreateEstimateRequest()
            request.CopyFrom(mixed)
            request.request_id = f"mixed-{i}"
            try:
                stub.CreateEstimate(request, metadata=md, timeout=TIMEOUT_S)
                code = "OK"
            except grpc.RpcError as err:
                code = err.code().name
        with lock:
            outcomes.append(code)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert outcomes.count("OK") == 2, outcomes  # the monthly MIXED quota, exact across processes
    assert set(outcomes) <= {"OK", "RESOURCE_EXHAUSTED"}, outcomes
    assert _handled(metrics) > 0 and _handled(metrics + 1) > 0  # both workers served calls

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    for offset in (0, 1):
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{metrics + offset}/healthz", timeout=1)


def test_workers_do_not_outlive_a_killed_parent(
    workers: tuple[str, int, subprocess.Popen[bytes], dict[str, str]],
) -> None:
    _target, metrics, process, _ = workers
    process.kill()  # SIGKILL: no chance to forward anything
    process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{metrics}/healthz", timeout=1)
        except OSError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("a worker outlived its parent")


def _thread_cpus(pid: int) -> dict[int, str]:
    """Each thread of ``pid``: the CPUs it may run on (``Cpus_allowed_list``, e.g. ``0-1``)."""
    cpus = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except (FileNotFoundError, ProcessLookupError):  # a thread that ended since the listing
            continue
        cpus[int(task.name)] = status.split("Cpus_allowed_list:")[1].split()[0]
    return cpus


def _serving_processes(process: subprocess.Popen[bytes], count: int) -> list[int]:
    """The processes that serve: the workers of a ``--workers N`` parent, or the process itself."""
    if count == 1:
        return [process.pid]
    return [int(pid) for pid in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()]


def _one_call_per_connection(target: str, token: str, calls: int) -> None:
    """``calls`` estimates, each on a new connection (spread over the workers), so every worker
    starts its RPC threads; all must answer OK."""
    md = (("authorization", f"Bearer {token}"),)
    request = json_format.ParseDict(json.loads(EXAMPLE_FILE.read_text()), pb.CreateEstimateRequest())
    for _ in range(calls):
        with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            pb_grpc.EstimatorServiceStub(channel).CreateEstimate(request, metadata=md, timeout=TIMEOUT_S)


ALLOWED_CPUS = sorted(os.sched_getaffinity(0))


@pytest.mark.skipif(len(ALLOWED_CPUS) < 2, reason="pinning two workers apart needs two CPUs")
@pytest.mark.parametrize("workers", [{"KIS_CPU_AFFINITY": "auto"}], indirect=True)
def test_auto_affinity_pins_each_worker_and_every_thread_it_starts_to_a_cpu_of_its_own(
    workers: tuple[str, int, subprocess.Popen[bytes], dict[str, str]],
) -> None:
    target, metrics, process, secrets = workers
    for _ in range(64):  # SO_REUSEPORT hashes each new connection to a worker: until both served
        _one_call_per_connection(target, secrets["token"], 1)
        if _handled(metrics) > 0 and _handled(metrics + 1) > 0:
            break
    assert _handled(metrics) > 0 and _handled(metrics + 1) > 0  # both started their RPC threads
    pinned = [set(_thread_cpus(pid).values()) for pid in _serving_processes(process, 2)]
    assert sorted(pinned, key=sorted) == [{str(ALLOWED_CPUS[0])}, {str(ALLOWED_CPUS[1])}]
    assert len(_thread_cpus(process.pid)) >= 1  # the parent stays where the kernel puts it
    assert set(_thread_cpus(process.pid).values()) != {str(ALLOWED_CPUS[0])}


@pytest.mark.parametrize(
    "workers", [{"workers": 1, "KIS_CPU_AFFINITY": str(ALLOWED_CPUS[-1])}], indirect=True
)
def test_a_single_process_is_pinned_to_the_first_cpu_of_the_list(
    workers: tuple[str, int, subprocess.Popen[bytes], dict[str, str]],
) -> None:
    target, _metrics, process, secrets = workers
    _one_call_per_connection(target, secrets["token"], 2)
    threads = _thread_cpus(process.pid)
    assert len(threads) > 10  # gRPC's, the RPC pool's, the writer's, the metrics server's
    assert set(threads.values()) == {str(ALLOWED_CPUS[-1])}


def test_without_affinity_the_workers_may_run_on_every_cpu(
    workers: tuple[str, int, subprocess.Popen[bytes], dict[str, str]],
) -> None:
    target, _metrics, process, secrets = workers
    _one_call_per_connection(target, secrets["token"], 4)
    every = {cpu for pid in _serving_processes(process, 2) for cpu in _thread_cpus(pid).values()}
    own = Path("/proc/self/status").read_text().split("Cpus_allowed_list:")[1].split()[0]
    assert every == {own}  # what this test's process may use: every CPU it has


def test_a_cpu_the_process_may_not_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    foreign = max(ALLOWED_CPUS) + 1
    done = subprocess.run(
        [sys.executable, "-m", "kis_estimator.server.cli", "serve", "--workers", "2", "--cpu-affinity",
         f"{ALLOWED_CPUS[0]},{foreign}", "--listen", "127.0.0.1:0"],
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "KIS_DATA_DIR": str(tmp_path / "data")},
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"may not run on CPU {foreign} (it may run on" in done.stderr
    assert not (tmp_path / "data").exists()  # refused before the store or the keys were made
