"""Server reflection over a real channel, in both protocols: grpc.reflection.v1 and v1alpha.

The v1 client is the stub generated from the vendored v1 reflection.proto (server/gen/grpc/reflection/v1);
the v1alpha client is grpcio-reflection's own. Each lists the services, resolves files by symbol and by
name, and rebuilds a descriptor pool from what it received, as grpcurl and Postman do.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.api import field_behavior_pb2
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2
from grpc_reflection.v1alpha import reflection_pb2_grpc as v1alpha_grpc

from kis_estimator.server.gen.grpc.reflection.v1 import reflection_pb2 as v1_pb2
from kis_estimator.server.gen.grpc.reflection.v1 import reflection_pb2_grpc as v1_grpc
from tests.integration.conftest import TIMEOUT_S, Served

API_SERVICES = {
    "kis.estimator.v1.EstimatorService",
    "kis.estimator.v1.ReviewService",
    "kis.estimator.v1.EvidenceService",
    "kis.estimator.v1.AdminService",
    "kis.estimator.v1.ServerInfoService",
}
LISTED = API_SERVICES | {
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}


class ReflectionClient:
    """One reflection protocol: its stub and its request message, over one channel."""

    def __init__(self, channel: grpc.Channel, protocol: str) -> None:
        if protocol == "v1":
            self._call: Any = v1_grpc.ServerReflectionStub(channel).ServerReflectionInfo
            self._request: Any = v1_pb2.ServerReflectionRequest
        else:
            self._call = v1alpha_grpc.ServerReflectionStub(channel).ServerReflectionInfo
            self._request = v1alpha_pb2.ServerReflectionRequest

    def ask(self, **fields: str) -> Any:
        """One request on its own stream; the one reply."""
        replies = list(self._call(iter([self._request(**fields)]), timeout=TIMEOUT_S))
        assert len(replies) == 1
        return replies[0]

    def files(self, **fields: str) -> list[descriptor_pb2.FileDescriptorProto]:
        reply = self.ask(**fields)
        assert reply.WhichOneof("message_response") == "file_descriptor_response", reply
        return [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in reply.file_descriptor_response.file_descriptor_proto
        ]


@pytest.fixture(params=["v1", "v1alpha"])
def client(request: pytest.FixtureRequest, served: Served) -> Iterator[ReflectionClient]:
    with grpc.insecure_channel(served.address) as channel:
        yield ReflectionClient(channel, request.param)


def test_lists_every_service_including_both_reflection_versions(client: ReflectionClient) -> None:
    reply = client.ask(list_services="")
    assert {s.name for s in reply.list_services_response.service} == LISTED


@pytest.mark.parametrize("service", sorted(LISTED))
def test_every_listed_service_resolves_to_its_file(client: ReflectionClient, service: str) -> None:
    files = client.files(file_containing_symbol=service)
    package, _, name = service.rpartition(".")
    assert files[0].package == package
    assert name in [s.name for s in files[0].service]


def test_a_client_rebuilds_the_api_with_its_field_behavior(client: ReflectionClient) -> None:
    """The file of a symbol comes with its dependencies (google/api/field_behavior.proto among them)."""
    files = client.files(file_containing_symbol="kis.estimator.v1.CreateEstimateRequest")
    assert files[0].name == "kis/estimator/v1/estimator.proto"
    assert "google/api/field_behavior.proto" in files[0].dependency
    pool = descriptor_pool.DescriptorPool()
    pending = {f.name: f for f in files}
    for name in _dependency_order(pending):
        pool.Add(pending[name])  # fails unless every dependency came along
    assert pool.FindMethodByName("kis.estimator.v1.EstimatorService.CreateEstimate")
    (request,) = [m for m in files[0].message_type if m.name == "CreateEstimateRequest"]
    extension: Any = field_behavior_pb2.field_behavior  # typed as a plain FieldDescriptor in the .pyi
    fields = {f.name: list(f.options.Extensions[extension]) for f in request.field}
    assert fields["brand"] == [field_behavior_pb2.REQUIRED]
    assert fields["request_id"] == [field_behavior_pb2.OPTIONAL]


def test_resolves_a_file_by_name(client: ReflectionClient) -> None:
    files = client.files(file_by_filename="kis/estimator/v1/review.proto")
    assert [s.name for s in files[0].service] == ["ReviewService"]


def test_an_unknown_symbol_is_not_found_in_the_stream(client: ReflectionClient) -> None:
    reply = client.ask(file_containing_symbol="kis.estimator.v1.NoSuchThing")
    assert reply.WhichOneof("message_response") == "error_response"
    assert reply.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_one_v1_stream_answers_several_requests_in_order(served: Served) -> None:
    requests = [
        v1_pb2.ServerReflectionRequest(list_services=""),
        v1_pb2.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
        v1_pb2.ServerReflectionRequest(file_by_filename="kis/estimator/v1/admin.proto"),
    ]
    with grpc.insecure_channel(served.address) as channel:
        replies = list(
            v1_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter(requests), timeout=TIMEOUT_S)
        )
    assert [r.original_request for r in replies] == requests
    assert [r.WhichOneof("message_response") for r in replies] == [
        "list_services_response",
        "file_descriptor_response",
        "file_descriptor_response",
    ]


def _dependency_order(files: dict[str, descriptor_pb2.FileDescriptorProto]) -> list[str]:
    """File names with every dependency before its dependants (well-known types may be omitted:
    a reflection server may skip files it sent before; a fresh stream gets them all)."""
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name in ordered or name not in files:
            return
        for dep in files[name].dependency:
            visit(dep)
        ordered.append(name)

    for name in files:
        visit(name)
    return ordered
