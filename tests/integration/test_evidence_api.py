"""Evidence over gRPC: chunked download, identical bytes across calls and restarts, audit of every request."""

from __future__ import annotations

import copy
import hashlib
import json
import sqlite3
import threading
import zipfile
from io import BytesIO
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from kis_estimator.server.cli import main
from kis_estimator.server.gen.kis.estimator.v1 import admin_pb2 as admin_pb
from kis_estimator.server.gen.kis.estimator.v1 import admin_pb2_grpc as admin_grpc
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from kis_estimator.server.gen.kis.estimator.v1 import evidence_pb2 as evidence_pb
from kis_estimator.server.gen.kis.estimator.v1 import evidence_pb2_grpc as evidence_grpc
from kis_estimator.server.storage import packing, rows
from tests.integration.conftest import TIMEOUT_S, Served, start_app

ROOT = Path(__file__).resolve().parents[2]
S01 = json.loads((ROOT / "server/acceptance/cases/S01.json").read_text())["steps"][0]["request"]


def _s01(run: str) -> dict[str, Any]:
    data: dict[str, Any] = copy.deepcopy(S01)
    data["request_id"] = data["request_id"].replace("{run}", run)
    data["meta"]["dedup_key"] = data["meta"]["dedup_key"].replace("{run}", run)
    return data


def create(served: Served, data: dict[str, Any]) -> pb.Estimate:
    stub = pb_grpc.EstimatorServiceStub(grpc.insecure_channel(served.address))
    msg = json_format.ParseDict(data, pb.CreateEstimateRequest())
    return stub.CreateEstimate(msg, metadata=served.metadata("ESTIMATOR"), timeout=TIMEOUT_S).estimate


def download(served: Served, estimate_id: str, role: str = "ADMIN") -> tuple[bytes, list[Any]]:
    stub = evidence_grpc.EvidenceServiceStub(grpc.insecure_channel(served.address))
    chunks = list(
        stub.GetEvidenceBundle(
            evidence_pb.GetEvidenceBundleRequest(estimate_id=estimate_id),
            metadata=served.metadata(role),
            timeout=TIMEOUT_S,
        )
    )
    return b"".join(c.chunk for c in chunks), chunks


def audit(served: Served, **filters: Any) -> list[admin_pb.AuditEvent]:
    stub = admin_grpc.AdminServiceStub(grpc.insecure_channel(served.address))
    reply = stub.ListAuditEvents(
        admin_pb.ListAuditEventsRequest(page_size=100, **filters),
        metadata=served.metadata("ADMIN"),
        timeout=TIMEOUT_S,
    )
    return list(reply.events)


def test_bundle_is_identical_across_calls_and_restarts_and_matches_info(tmp_path: Path) -> None:
    served = start_app(tmp_path)
    try:
        est = create(served, _s01("e-"))
        first, chunks = download(served, est.estimate_id)
        second, _ = download(served, est.estimate_id)
        assert first == second
        assert hashlib.sha256(first).hexdigest() == est.evidence.sha256 == chunks[0].sha256
        assert len(first) == est.evidence.size_bytes == chunks[0].size_bytes
        stub = evidence_grpc.EvidenceServiceStub(grpc.insecure_channel(served.address))
        info = stub.GetEvidenceInfo(
            evidence_pb.GetEvidenceInfoRequest(estimate_id=est.estimate_id),
            metadata=served.metadata("VIEWER"),
            timeout=TIMEOUT_S,
        )
        assert info.sha256 == est.evidence.sha256 and info.revision == 1
        assert [f.path for f in info.manifest.files] == [
            "inputs_snapshot.json",
            "result.json",
            "rules_doc.json",
            "tables/pricing.json",
            "trace.json",
        ]
        with zipfile.ZipFile(BytesIO(first)) as z:
            assert z.read("manifest.json") == info.manifest_json
            assert info.signature.key_id and len(info.signature.signature) == 64
    finally:
        served.app.stop(0)
    again = start_app(tmp_path)
    try:
        third, _ = download(again, est.estimate_id)
        assert third == first
    finally:
        again.app.stop(0)


def test_large_bundles_stream_in_several_chunks(fresh: Served) -> None:
    data = _s01("big-")
    data["branches"] = [{"kind": "MCCB", "poles": 2, "trip_at": 20, "qty": 100, "remark": "x" * 200}] * 100
    data["main"] = {"kind": "MCCB", "poles": 4, "trip_at": 800}
    est = create(fresh, data)
    blob, chunks = download(fresh, est.estimate_id)
    assert len(chunks) >= 2 and [c.offset for c in chunks] == [i * 65536 for i in range(len(chunks))]
    assert hashlib.sha256(blob).hexdigest() == est.evidence.sha256


def test_every_bundle_request_is_audited_allowed_and_denied(fresh: Served) -> None:
    est = create(fresh, _s01("a-"))
    download(fresh, est.estimate_id)
    for role in ("VIEWER", "ESTIMATOR", None):
        with pytest.raises(grpc.RpcError) as info:
            download(fresh, est.estimate_id, role) if role else _anonymous_download(fresh, est.estimate_id)
        assert info.value.code() in {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}
    events = audit(fresh, action="EVIDENCE_DOWNLOAD")
    outcomes = sorted((e.outcome, e.actor, e.role) for e in events)
    assert outcomes == sorted(
        [
            ("ALLOWED", "test-admin", "ADMIN"),
            ("DENIED", "test-viewer", "VIEWER"),
            ("DENIED", "test-estimator", "ESTIMATOR"),
            ("UNAUTHENTICATED", "anonymous", ""),
        ]
    )
    allowed = next(e for e in events if e.outcome == "ALLOWED")
    assert allowed.estimate_id == est.estimate_id and allowed.revision == 1
    assert json.loads(allowed.details_json)["sha256"] == est.evidence.sha256
    assert allowed.peer and all(e.estimate_id == est.estimate_id for e in events)


def _anonymous_download(served: Served, estimate_id: str) -> None:
    stub = evidence_grpc.EvidenceServiceStub(grpc.insecure_channel(served.address))
    list(
        stub.GetEvidenceBundle(
            evidence_pb.GetEvidenceBundleRequest(estimate_id=estimate_id), timeout=TIMEOUT_S
        )
    )


def test_unknown_estimate_bundle_is_not_found_and_audited(fresh: Served) -> None:
    with pytest.raises(grpc.RpcError) as info:
        download(fresh, "est_missing")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert [e.outcome for e in audit(fresh, action="EVIDENCE_DOWNLOAD")] == ["NOT_FOUND"]


def test_cli_downloads_verifies_and_detects_tampering(
    fresh: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    est = create(fresh, _s01("c-"))
    out = tmp_path / "bundle.zip"
    token = fresh.tokens["ADMIN"]
    assert (
        main(
            ["evidence", "get", est.estimate_id, "-o", str(out), "--target", fresh.address, "--token", token]
        )
        == 0
    )
    assert f"sha256 {est.evidence.sha256} (verified)" in capsys.readouterr().out
    monkeypatch.setenv("KIS_DATABASE_URL", fresh.app.settings.database_url)
    assert main(["evidence", "verify", str(out)]) == 0
    verified = capsys.readouterr().out
    assert "OK" in verified and "VALID" in verified
    tampered = tmp_path / "tampered.zip"
    _rewrite(out, tampered, "trace.json", lambda b: b.replace(b'"', b"'", 1))
    assert main(["evidence", "verify", str(tampered)]) == 1
    report = capsys.readouterr().out
    assert "trace.json" in report and "NOT OK" in report


def _rewrite(src: Path, dst: Path, name: str, change: Any) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            zout.writestr(item, change(data) if item.filename == name else data)


def threads_that_pack(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads that pack a large value from now on (storage/packing.py), in order."""
    packed_on: list[str] = []
    real_pack = packing.pack

    def recording_pack(raw: bytes) -> bytes:
        packed_on.append(threading.current_thread().name)
        return real_pack(raw)

    monkeypatch.setattr(rows, "pack", recording_pack)
    return packed_on


def test_the_bundle_is_stored_packed_and_packed_on_the_request_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite stores the ZIP as a zstd frame (migration 0003), packed before the group commit's
    writer takes the write lock; the download is the ZIP the create described, byte for byte."""
    packed_on = threads_that_pack(monkeypatch)
    served = start_app(tmp_path)
    try:
        est = create(served, _s01("packed-"))
        bundle, _ = download(served, est.estimate_id)
    finally:
        served.app.stop(0)
    assert len(packed_on) == 1 and packed_on[0] != "group-commit", packed_on  # the bundle only
    assert hashlib.sha256(bundle).hexdigest() == est.evidence.sha256
    with sqlite3.connect(tmp_path / "kis.db") as conn:
        stored, document = conn.execute(
            "SELECT v.bundle, typeof(e.document) FROM evidence v JOIN estimates e USING (estimate_id)"
        ).fetchone()
    assert stored[:4] == packing.ZSTD_MAGIC and packing.unpack(stored, "bundle") == bundle
    assert len(stored) * 3 < len(bundle)
    assert document == "text"
