"""Where the bytes of a stored estimate go, on SQLite (prints figures; not a test).

    .venv/bin/python bench/store_size.py [--count 200]

Starts the wired service in this process (``build_app``, fresh SQLite file, port 0), creates
``--count`` estimates of two shapes over real gRPC — the typical S01 request (with ``request_id``,
so an idempotency record is stored too) and the largest request the service accepts (100 branch
lines with 200-character remarks, 20 accessories) — and prints, per estimate:

* the growth of the database file (after a WAL checkpoint) and of the ``kis_store_size_bytes``
  gauge, divided by the count;
* the bytes of each table and index (SQLite's ``dbstat``: pages actually used, overhead included);
* the logical sizes of the big values: the evidence ZIP, its ``manifest.json``, the JSON document,
  the stored reply of the idempotency record, the CreateEstimate request bytes.
"""

from __future__ import annotations

import argparse
import copy
import json
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kis_estimator.server.engine.roles import Role
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from kis_estimator.server.main import build_app
from kis_estimator.server.settings import Settings

S01: dict[str, Any] = json.loads((ROOT / "server/acceptance/cases/S01.json").read_text())["steps"][0][
    "request"
]


def typical(i: int) -> dict[str, Any]:
    data = copy.deepcopy(S01)
    data["request_id"] = f"size-{i}"
    data["meta"]["dedup_key"] = f"size-{i}"
    return data


def largest(i: int) -> dict[str, Any]:
    data = typical(i)
    data["main"] = {"kind": "MCCB", "poles": 4, "trip_at": 800}
    data["branches"] = [
        {"kind": "MCCB", "poles": 2 + (j % 3), "trip_at": 20 + 10 * (j % 5), "qty": 100, "remark": "x" * 200}
        for j in range(100)
    ]
    return data


def table_bytes(db: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC").fetchall()
    return {str(name): int(size) for name, size in rows}


def value_bytes(db: Path) -> dict[str, float]:
    queries = {
        "evidence ZIP (as stored: packed)": "SELECT AVG(length(bundle)) FROM evidence",
        "evidence ZIP (unpacked)": "SELECT AVG(size_bytes) FROM evidence",
        "evidence manifest_json": "SELECT AVG(length(manifest_json)) FROM evidence",
        "estimate JSON document": "SELECT AVG(length(CAST(document AS BLOB))) FROM estimates",
        "idempotency reply": "SELECT AVG(length(response)) FROM idempotency",
        "audit rows (details)": "SELECT AVG(length(CAST(details AS BLOB))) FROM audit_events",
    }
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {name: float(conn.execute(sql).fetchone()[0] or 0) for name, sql in queries.items()}


def measure(shape: str, make: Any, count: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="kis-size-"))
    db = tmp / "kis.db"
    settings = Settings(database_url=f"sqlite:///{db}", rate_limit_per_hour=10_000_000, log_level="ERROR")
    app = build_app(settings, address="127.0.0.1:0", metrics_address="127.0.0.1:0")
    app.start()
    try:
        token = app.deps.tokens.create(Role.ESTIMATOR, "size").token
        stub = pb_grpc.EstimatorServiceStub(grpc.insecure_channel(f"127.0.0.1:{app.port}"))
        md = (("authorization", f"Bearer {token}"),)

        def checkpoint() -> None:
            with sqlite3.connect(db) as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        def gauge() -> float:
            return app.metrics.registry.get_sample_value("kis_store_size_bytes") or 0.0

        checkpoint()
        file_before, gauge_before, tables_before = db.stat().st_size, gauge(), table_bytes(db)
        request_bytes = 0
        for i in range(count):
            request = json_format.ParseDict(make(i), pb.CreateEstimateRequest())
            request_bytes += request.ByteSize()
            stub.CreateEstimate(request, metadata=md, timeout=30)
        checkpoint()
        file_after, gauge_after, tables_after = db.stat().st_size, gauge(), table_bytes(db)
        values = value_bytes(db)
    finally:
        app.stop(0)
    print(f"\n{shape}: {count} estimates")
    print(f"  database file growth      {(file_after - file_before) / count / 1024:9.1f} KiB per estimate")
    print(f"  kis_store_size_bytes      {(gauge_after - gauge_before) / count / 1024:9.1f} KiB per estimate")
    print(f"  request on the wire       {request_bytes / count / 1024:9.1f} KiB")
    print("  by table and index (dbstat, pages used):")
    for name in sorted(tables_after, key=lambda n: -(tables_after[n] - tables_before.get(n, 0))):
        grown = (tables_after[name] - tables_before.get(name, 0)) / count
        if grown > 0:
            print(f"    {name:32s} {grown / 1024:9.1f} KiB")
    print("  big values (logical bytes, average):")
    for name, size in values.items():
        print(f"    {name:32s} {size / 1024:9.1f} KiB")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    measure("typical request (S01)", typical, args.count)
    measure("largest accepted request (100 branches)", largest, max(1, args.count // 10))
    return 0


if __name__ == "__main__":
    sys.exit(main())
