"""``kis-estimator``: tokens, the client commands and ``serve`` as a real process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kis_estimator.server.cli import main
from tests.integration.conftest import Served, start_app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "example1.json"


def test_token_create_prints_only_the_token_and_stores_its_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KIS_DATABASE_URL", f"sqlite:///{tmp_path / 'kis.db'}")
    assert main(["token", "create", "--role", "VIEWER", "--name", "alice"]) == 0
    out = capsys.readouterr().out
    token = out.strip()
    assert out == token + "\n" and token.startswith("kis_")
    assert token.encode() not in (tmp_path / "kis.db").read_bytes()
    served = start_app(tmp_path)
    try:
        principal = served.app.deps.tokens.authenticate(token)
        assert principal is not None and principal.role.value == "VIEWER" and principal.name == "alice"
    finally:
        served.app.stop(0)


def test_unknown_setting_stops_with_a_suggestion(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KIS_DATABSE_URL", "sqlite:///x.db")
    assert main(["token", "create", "--role", "VIEWER", "--name", "x"]) == 2
    assert "did you mean KIS_DATABASE_URL" in capsys.readouterr().err


def test_estimate_prints_the_quote_as_a_table(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["estimate", str(EXAMPLE), "--target", served.address, "--token", served.tokens["ESTIMATOR"]])
    out = capsys.readouterr().out
    assert rc == 0
    assert "COMPLETED / OK" in out
    assert "HDS 70 150 20" in out and "SBS-204" in out
    assert "1,031,000" in out and "103,100" in out and "1,134,100" in out


def test_estimate_json_and_get(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    token = served.tokens["ESTIMATOR"]
    assert main(["estimate", str(EXAMPLE), "--json", "--target", served.address, "--token", token]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["total_krw"] == "1134100"
    assert (
        main(["get", data["estimate_id"], "--target", served.address, "--token", served.tokens["VIEWER"]])
        == 0
    )
    assert data["estimate_id"] in capsys.readouterr().out


def test_estimate_errors_list_each_violation(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = json.loads(EXAMPLE.read_text())
    bad.pop("request_id")
    bad["installation"]["location"] = "SPACE"
    bad["branches"][0]["poles"] = 5
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    rc = main(["estimate", str(path), "--target", served.address, "--token", served.tokens["ESTIMATOR"]])
    err = capsys.readouterr().err
    assert rc == 2
    assert "INVALID_ARGUMENT" in err
    assert "installation.location  LOCATION_INVALID" in err
    assert "branches[0].poles  POLES_MISMATCH" in err
    assert "설치장소" in err


def test_client_without_token_is_told_authentication_is_required(
    served: Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KIS_TOKEN", raising=False)
    assert main(["get", "est_x", "--target", served.address]) == 2
    assert "UNAUTHENTICATED" in capsys.readouterr().err


def test_regress_and_smoke_against_a_live_endpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    served = start_app(tmp_path)
    try:
        assert main(["regress", "--target", served.address, "--token", served.tokens["ESTIMATOR"]]) == 0
        assert "regression: 40/40 passed" in capsys.readouterr().out
        assert main(["smoke", "--target", served.address, "--token", served.tokens["ESTIMATOR"]]) == 0
        assert "smoke: 3/3 passed" in capsys.readouterr().out
    finally:
        served.app.stop(0)


def test_regress_fails_against_a_wrong_catalog(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    for name in ("accessories.csv", "breakers.csv", "enclosures.csv"):
        text = (ROOT / "server/data/catalog" / name).read_text(encoding="utf-8")
        if name == "breakers.csv":
            text = text.replace(
                "SANGDO,SBE-103,MCCB,SBE,ECO,3,100,60;75;100,14,75,130,60,0,0,17500,",
                "SANGDO,SBE-103,MCCB,SBE,ECO,3,100,60;75;100,14,75,130,60,0,0,17600,",
            )
        (catalog / name).write_text(text, encoding="utf-8")
    served = start_app(tmp_path, catalog_dir=catalog)
    try:
        assert main(["regress", "--target", served.address, "--token", served.tokens["ESTIMATOR"]]) == 1
        out = capsys.readouterr().out
        assert "FAIL" in out and "regression: " in out and "/40 passed" in out
    finally:
        served.app.stop(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a ``serve`` started by a test: its own SQLite file and its own free
    metrics port (the default, 8788, may belong to a ``make run`` on the same machine)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIS_")}
    env["KIS_DATABASE_URL"] = f"sqlite:///{tmp_path / 'kis.db'}"
    env["KIS_METRICS_ADDRESS"] = f"127.0.0.1:{_free_port()}"
    return env


def test_serve_runs_as_a_process_and_drains_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    env = _serve_env(tmp_path)
    with subprocess.Popen(
        [sys.executable, "-m", "kis_estimator.server.cli", "serve", "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=30, wait_for_ready=True
                )
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    assert proc.returncode == 0
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    messages = [line["msg"] for line in lines]
    assert "serving" in messages and "stopped" in messages
    assert all({"ts", "level", "logger", "msg", "request_id"} <= set(line) for line in lines)


def test_second_server_on_a_busy_port_fails_to_start(served: Served, tmp_path: Path) -> None:
    env = _serve_env(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "kis_estimator.server.cli", "serve", "--listen", served.address],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "cannot start" in proc.stderr
