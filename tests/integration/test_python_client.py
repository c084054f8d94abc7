"""``kis_estimator.client``: the Python client other services import, against a real server."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from kis_estimator.client import CallError, Client, estimator_pb2, evidence_pb2, server_info_pb2
from tests.integration.conftest import Served, start_app
from tests.integration.tls import make_pki

EXAMPLE = json.loads((Path(__file__).resolve().parents[2] / "examples/example1.json").read_text())
TIMEOUT_S = 10.0


def _request(**changes: Any) -> estimator_pb2.CreateEstimateRequest:
    body = EXAMPLE | {"request_id": uuid.uuid4().hex} | changes
    return json_format.ParseDict(body, estimator_pb2.CreateEstimateRequest())


@pytest.fixture
def client_of(served: Served) -> Any:
    opened: list[Client] = []

    def open_(role: str | None) -> Client:
        client = Client.connect(served.address, token=served.tokens[role] if role else None)
        opened.append(client)
        return client

    yield open_
    for client in opened:
        client.close()


def test_a_public_call_needs_no_token(client_of: Any) -> None:
    info = client_of(None).server_info.GetServerInfo(
        server_info_pb2.GetServerInfoRequest(), timeout=TIMEOUT_S
    )
    assert info.version and info.catalog_version


def test_the_token_rides_on_every_call_and_a_retry_replays(client_of: Any) -> None:
    kis = client_of("ESTIMATOR")
    request = _request()
    first = kis.estimator.CreateEstimate(request, timeout=TIMEOUT_S)
    again, call = kis.estimator.CreateEstimate.with_call(request, timeout=TIMEOUT_S)
    assert first.estimate.totals.total_krw == 1_134_100
    assert again == first
    assert ("kis-replayed", "true") in call.initial_metadata()


def test_an_admin_downloads_the_bundle_it_was_promised(client_of: Any) -> None:
    created = client_of("ESTIMATOR").estimator.CreateEstimate(_request(), timeout=TIMEOUT_S).estimate
    admin = client_of("ADMIN")
    info = admin.evidence.GetEvidenceInfo(
        evidence_pb2.GetEvidenceInfoRequest(estimate_id=created.estimate_id), timeout=TIMEOUT_S
    )
    bundle = admin.evidence_bundle(created.estimate_id)
    assert len(bundle) == info.size_bytes
    assert hashlib.sha256(bundle).hexdigest() == info.sha256


def test_a_refusal_is_decoded_with_its_code_and_field_path(client_of: Any) -> None:
    kis = client_of("ESTIMATOR")
    bad = _request()
    bad.branches[1].poles = 5
    with pytest.raises(grpc.RpcError) as caught:
        kis.estimator.CreateEstimate(bad, timeout=TIMEOUT_S)
    error = CallError.of(caught.value)
    assert error.status is grpc.StatusCode.INVALID_ARGUMENT
    assert error.domain == "kis.estimator.v1"
    assert error.reason == error.violations[0].code
    assert error.violations[0].field == "branches[1].poles"
    assert error.violations[0].message_en and error.violations[0].message_ko
    assert error.message == error.violations[0].message_en


def test_roles_hold_through_the_client(client_of: Any, served: Served) -> None:
    created = client_of("ESTIMATOR").estimator.CreateEstimate(_request(), timeout=TIMEOUT_S).estimate
    with pytest.raises(grpc.RpcError) as caught:
        client_of("VIEWER").evidence_bundle(created.estimate_id)
    assert CallError.of(caught.value).status is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as caught:
        client_of(None).estimator.CreateEstimate(_request(), timeout=TIMEOUT_S)
    assert CallError.of(caught.value).status is grpc.StatusCode.UNAUTHENTICATED


def test_a_call_with_its_own_authorization_header_is_not_given_a_second(
    client_of: Any, served: Served
) -> None:
    """The client adds its token only where the call brings none (two headers would be refused)."""
    kis = client_of("VIEWER")
    created = client_of("ESTIMATOR").estimator.CreateEstimate(_request(), timeout=TIMEOUT_S).estimate
    bundle = kis.evidence_bundle  # as VIEWER: refused
    with pytest.raises(grpc.RpcError):
        bundle(created.estimate_id)
    replies = kis.evidence.GetEvidenceBundle(
        evidence_pb2.GetEvidenceBundleRequest(estimate_id=created.estimate_id),
        metadata=served.metadata("ADMIN"),
        timeout=TIMEOUT_S,
    )
    assert b"".join(r.chunk for r in replies)[:2] == b"PK"


def test_tls_options_are_checked_before_connecting() -> None:
    with pytest.raises(ValueError, match="root_certificates"):
        Client.connect("127.0.0.1:1", private_key=b"k", certificate_chain=b"c")


def test_the_client_speaks_mutual_tls_with_its_token(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    served = start_app(tmp_path, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca)
    try:
        with Client.connect(
            served.address,
            token=served.tokens["ESTIMATOR"],
            root_certificates=pki.ca.read_bytes(),
            private_key=pki.client_key.read_bytes(),
            certificate_chain=pki.client_cert.read_bytes(),
        ) as kis:
            reply = kis.estimator.ValidateEstimate(
                estimator_pb2.ValidateEstimateRequest(request=_request()), timeout=TIMEOUT_S
            )
            assert reply.estimate.totals.total_krw == 1_134_100
    finally:
        served.app.stop(0)
