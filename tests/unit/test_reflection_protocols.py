"""Reflection v1 is served with the v1alpha codecs (server/api/reflection.py): that is only right while
the two protocols are wire-identical. Compares the vendored v1 proto with grpcio-reflection's v1alpha."""

from __future__ import annotations

from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2

from kis_estimator.server.api.reflection import V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME
from kis_estimator.server.gen.grpc.reflection.v1 import reflection_pb2 as v1_pb2


def _shape(file: descriptor_pb2.FileDescriptorProto) -> dict[str, object]:
    """Everything that reaches the wire, with the package taken out of type names."""
    prefix = f".{file.package}."

    def fields(message: descriptor_pb2.DescriptorProto) -> list[tuple[object, ...]]:
        return [
            (f.name, f.number, f.label, f.type, f.type_name.removeprefix(prefix), f.oneof_index, f.json_name)
            for f in message.field
        ]

    return {
        "messages": {m.name: (fields(m), [o.name for o in m.oneof_decl]) for m in file.message_type},
        "services": {
            s.name: [
                (
                    m.name,
                    m.input_type.removeprefix(prefix),
                    m.output_type.removeprefix(prefix),
                    m.client_streaming,
                    m.server_streaming,
                )
                for m in s.method
            ]
            for s in file.service
        },
    }


def test_v1_and_v1alpha_are_wire_identical() -> None:
    v1, v1alpha = descriptor_pb2.FileDescriptorProto(), descriptor_pb2.FileDescriptorProto()
    v1_pb2.DESCRIPTOR.CopyToProto(v1)
    v1alpha_pb2.DESCRIPTOR.CopyToProto(v1alpha)
    assert (v1.package, v1alpha.package) == ("grpc.reflection.v1", "grpc.reflection.v1alpha")
    assert _shape(v1) == _shape(v1alpha)


def test_a_v1_frame_reads_as_v1alpha_and_back() -> None:
    request = v1_pb2.ServerReflectionRequest(
        host="h",
        file_containing_extension=v1_pb2.ExtensionRequest(containing_type="a.B", extension_number=7),
    )
    as_alpha = v1alpha_pb2.ServerReflectionRequest.FromString(request.SerializeToString())
    assert as_alpha.file_containing_extension.extension_number == 7
    reply = v1alpha_pb2.ServerReflectionResponse(
        original_request=as_alpha,
        file_descriptor_response=v1alpha_pb2.FileDescriptorResponse(file_descriptor_proto=[b"x"]),
    )
    back = v1_pb2.ServerReflectionResponse.FromString(reply.SerializeToString())
    assert back.original_request == request
    assert list(back.file_descriptor_response.file_descriptor_proto) == [b"x"]


def test_reflection_service_names_are_the_standard_ones() -> None:
    assert (V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME) == (
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    )
