"""The store on disk: owner-only files, and its size as a metric read at scrape time.

``kis.db`` and its ``-wal``/``-shm`` files hold every customer's request and the token hashes; they
were created 0644 (world-readable) while the evidence key beside them is 0600. The size gauge is read
over the real ``/metrics`` endpoint, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import stat
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from prometheus_client.parser import text_string_to_metric_families

from kis_estimator.server.acceptance.runner import outcome_of_error
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from kis_estimator.server.storage.repository import AuditFilter
from kis_estimator.server.storage.sqlite import SqliteStore
from tests.integration.conftest import TIMEOUT_S, Served, start_app
from tests.integration.test_evidence_api import _s01, create
from tests.integration.test_postgres_service import start_on_postgres
from tests.integration.test_storage_contract import pg_database

COMPANIONS = ("kis.db", "kis.db-wal", "kis.db-shm", "kis.db-writer")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def scrape(served: Served, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{served.app.metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    values = [s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]
    assert len(values) == 1, f"{name}: {values}"
    return values[0]


def test_database_wal_and_shm_are_created_owner_only(tmp_path: Path) -> None:
    served = start_app(tmp_path)
    try:
        create(served, _s01("mode-"))  # a write: the WAL exists and holds it
        assert {name: oct(mode(tmp_path / name)) for name in COMPANIONS} == dict.fromkeys(COMPANIONS, "0o600")
        assert mode(tmp_path / "evidence-keys") == 0o600
    finally:
        served.app.stop(0)


def test_existing_world_readable_files_are_restricted_on_open(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kis.db")
    store.close()
    for name in ("kis.db", "kis.db-wal"):
        (tmp_path / name).touch()
        (tmp_path / name).chmod(0o644)
    again = SqliteStore(tmp_path / "kis.db")
    try:
        assert mode(tmp_path / "kis.db") == mode(tmp_path / "kis.db-wal") == 0o600
    finally:
        again.close()


def test_store_size_gauge_is_read_at_scrape_time_on_sqlite(tmp_path: Path) -> None:
    served = start_app(tmp_path)
    try:
        before = scrape(served, "kis_store_size_bytes")
        assert before == sum((tmp_path / n).stat().st_size for n in COMPANIONS if (tmp_path / n).exists())
        for i in range(3):
            create(served, _s01(f"size-{i}-"))
        after = scrape(served, "kis_store_size_bytes")
        assert after > before  # three estimates with their evidence bundles are on disk
        assert after == served.app.store.size_bytes()
    finally:
        served.app.stop(0)


def test_store_size_gauge_on_postgres() -> None:
    with pg_database() as url:
        served = start_on_postgres(url)
        try:
            size = scrape(served, "kis_store_size_bytes")
            assert size > 1_000_000  # an empty PostgreSQL database is several MB
            assert abs(size - served.app.store.size_bytes()) < 1_000_000
        finally:
            served.app.stop(0)


@pytest.mark.parametrize("name", COMPANIONS)
def test_every_sqlite_store_is_owner_only(tmp_path: Path, name: str) -> None:
    """Acceptance sandboxes and CLI commands open their stores through SqliteStore too."""
    store = SqliteStore(tmp_path / "kis.db")
    try:
        with store.unit_of_work() as uow:
            uow.tokens.add("t1", "n", "ADMIN", "a" * 64, datetime.now(UTC))
            uow.commit()
        assert mode(tmp_path / name) == 0o600
    finally:
        store.close()


def largest_request(run: str) -> dict[str, object]:
    """The largest request validation accepts: 100 branch lines with 200-character remarks."""
    data = _s01(run)
    data["main"] = {"kind": "MCCB", "poles": 4, "trip_at": 800}
    data["branches"] = [{"kind": "MCCB", "poles": 2, "trip_at": 20, "qty": 100, "remark": "x" * 200}] * 100
    return data


def test_an_estimate_above_the_stored_size_bound_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    served = start_app(tmp_path, max_stored_bytes_per_estimate=128 * 1024)
    try:
        create(served, _s01("small-"))  # ~44 KiB: under the bound
        stub = pb_grpc.EstimatorServiceStub(grpc.insecure_channel(served.address))
        request = json_format.ParseDict(largest_request("big-"), pb.CreateEstimateRequest())
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateEstimate(request, metadata=served.metadata("ESTIMATOR"), timeout=TIMEOUT_S)
        refused = outcome_of_error(info.value)
        assert refused.code == "INVALID_ARGUMENT" and refused.error_info["reason"] == "ESTIMATE_TOO_LARGE"
        assert refused.error_info["max"] == str(128 * 1024)
        stored = int(refused.message.split(" would take ")[1].split(" bytes")[0])
        assert 400 * 1024 < stored < 700 * 1024  # evidence ZIP + document + reply of the largest request
        listed = stub.ListEstimates(
            pb.ListEstimatesRequest(), metadata=served.metadata("VIEWER"), timeout=TIMEOUT_S
        )
        assert len(listed.estimates) == 1
        with served.app.store.unit_of_work(read_only=True) as uow:
            assert uow.idempotency.get(request.request_id) is None
            rejected, _ = uow.audit.list(AuditFilter("REQUEST_REJECTED", None, None, None), 10, None)
        assert [e.details["first_code"] for e in rejected] == ["ESTIMATE_TOO_LARGE"]
    finally:
        served.app.stop(0)


def test_the_largest_valid_request_fits_the_default_bound(fresh: Served) -> None:
    est = create(fresh, largest_request("default-"))
    assert est.evidence.size_bytes > 256 * 1024
