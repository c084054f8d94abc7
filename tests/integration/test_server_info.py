"""``ServerInfoService`` and ``kis_build_info``: the running build is a fact the target reports."""

from __future__ import annotations

import subprocess
import urllib.request
from importlib import metadata
from pathlib import Path

import grpc
import pytest

from kis_estimator.server import build_info as build_info_module
from kis_estimator.server.engine.model import RULES_VERSION
from kis_estimator.server.gen.kis.estimator.v1 import server_info_pb2 as info_pb
from kis_estimator.server.gen.kis.estimator.v1 import server_info_pb2_grpc as info_grpc
from tests.integration.conftest import TIMEOUT_S, Served

REPO = Path(__file__).resolve().parents[2]


def _head() -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.parametrize("role", [None, "VIEWER", "ADMIN"])
def test_anyone_may_ask_which_build_serves(served: Served, role: str | None) -> None:
    with grpc.insecure_channel(served.address) as channel:
        reply = info_grpc.ServerInfoServiceStub(channel).GetServerInfo(
            info_pb.GetServerInfoRequest(), metadata=served.metadata(role), timeout=TIMEOUT_S
        )
    assert reply.version == metadata.version("kis-estimator")
    assert reply.commit == _head()
    assert reply.rules_version == RULES_VERSION
    assert reply.catalog_version == served.app.catalog.version
    assert reply.database_backend == "sqlite"
    assert reply.started_at.seconds > 0


def test_build_info_is_exported_as_a_metric(served: Served) -> None:
    url = f"http://127.0.0.1:{served.app.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        text = response.read().decode()
    expected = (
        f'kis_build_info{{commit="{_head()}",rules_version="{RULES_VERSION}",'
        f'version="{metadata.version("kis-estimator")}"}} 1.0'
    )
    assert expected in text.splitlines()


def test_the_commit_file_of_a_release_build_wins_over_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit_file = tmp_path / "BUILD_COMMIT"
    commit_file.write_text("0123456789abcdef0123456789abcdef01234567\n", encoding="ascii")
    monkeypatch.setattr(build_info_module, "COMMIT_FILE", commit_file)
    build_info_module.build_info.cache_clear()
    try:
        assert build_info_module.build_info().commit == "0123456789abcdef0123456789abcdef01234567"
        commit_file.write_text("not a commit\n", encoding="ascii")
        monkeypatch.setattr(build_info_module, "COMMIT_FILE", tmp_path / "nowhere" / "BUILD_COMMIT")
        build_info_module.build_info.cache_clear()
        assert build_info_module.build_info().commit == "unknown"
    finally:
        build_info_module.build_info.cache_clear()
