"""deploy/nginx/kis-estimator.conf with the real nginx: TLS in front of two replicas on one PostgreSQL.

The file is used as shipped, with the replica ports, certificate paths and listen port swapped for
the test's (and `listen` kept on loopback); a minimal main configuration around it points nginx's
pid, logs and temp paths into the test's directory. Smoke 3/3 and regression 40/40 run through it
over TLS with the CLI (acceptance sandboxes included: their calls stay on one replica), and plain
calls are spread over both replicas.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.conftest import Served
from tests.integration.test_postgres_service import start_on_postgres
from tests.integration.test_prometheus import free_port
from tests.integration.test_storage_contract import pg_database
from tests.integration.tls import make_pki

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "deploy" / "nginx" / "kis-estimator.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@pytest.fixture
def replicas() -> Iterator[list[Served]]:
    with pg_database() as url:
        started = [start_on_postgres(url), start_on_postgres(url)]
        try:
            yield started
        finally:
            for replica in started:
                replica.app.stop(0)


def _render(tmp: Path, replicas: list[Served], listen: int) -> Path:
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed (make setup installs Debian's nginx-light)")
    pki = make_pki(tmp / "pki")
    text = CONF.read_text(encoding="utf-8")
    text = text.replace("server 127.0.0.1:8787 ", f"server {replicas[0].address} ")
    text = text.replace("server 127.0.0.1:8797 ", f"server {replicas[1].address} ")
    text = text.replace("listen 443 ssl http2;", f"listen 127.0.0.1:{listen} ssl http2;")
    text = text.replace("listen [::]:443 ssl http2;\n", "")
    text = text.replace("/etc/kis-estimator/tls/fullchain.pem", str(pki.server_cert))
    text = text.replace("/etc/kis-estimator/tls/privkey.pem", str(pki.server_key))
    site = tmp / "kis-estimator.conf"
    site.write_text(text, encoding="utf-8")
    (tmp / "logs").mkdir()
    main = tmp / "nginx.conf"
    main.write_text(
        f"""worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/logs/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format upstream '$upstream_addr $http_kis_sandbox';
    access_log {tmp}/logs/access.log upstream;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {site};
}}
""",
        encoding="utf-8",
    )
    return main


@pytest.fixture
def front(tmp_path: Path, replicas: list[Served]) -> Iterator[tuple[str, Path, list[Served]]]:
    port = free_port()
    main = _render(tmp_path, replicas, port)
    check = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(main)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen(
        [NGINX, "-p", str(tmp_path), "-c", str(main), "-g", "daemon off;"],
        stderr=subprocess.DEVNULL,  # nginx writes to logs/error.log
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert process.poll() is None and time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.1)
        yield f"127.0.0.1:{port}", tmp_path / "pki" / "ca.pem", replicas
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def _cli(target: str, ca: Path, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "KIS_TOKEN": token, "KIS_TLS_CA": str(ca), "KIS_TARGET": target}
    return subprocess.run(
        [sys.executable, "-m", "kis_estimator.server.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_smoke_and_regression_pass_through_nginx_over_tls(front: tuple[str, Path, list[Served]]) -> None:
    target, ca, replicas = front
    token = replicas[0].tokens["ADMIN"]  # one database: a token of one replica is valid at both
    smoke = _cli(target, ca, token, "smoke")
    assert smoke.returncode == 0 and "smoke: 3/3 passed" in smoke.stdout, smoke.stdout + smoke.stderr
    regress = _cli(target, ca, token, "regress")
    assert regress.returncode == 0 and "regression: 40/40 passed" in regress.stdout, regress.stdout[-3000:]

    log = Path(str(ca).replace("pki/ca.pem", "logs/access.log"))
    sandboxed: dict[str, set[str]] = {}
    for line in log.read_text().splitlines():
        upstream, _, run = line.partition(" ")
        if run and run != "-":
            sandboxed.setdefault(run, set()).add(upstream)
    assert sandboxed and all(len(ups) == 1 for ups in sandboxed.values()), (
        sandboxed
    )  # each run on one replica

    credentials = grpc.ssl_channel_credentials(ca.read_bytes())
    with grpc.secure_channel(target, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(40):
            assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1
    plain = [line.split(" ")[0] for line in log.read_text().splitlines() if line.endswith(" -")]
    assert {r.address for r in replicas} <= set(plain[-40:])  # plain calls reach both replicas
