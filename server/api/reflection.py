"""Server reflection in both protocol versions: ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``.

grpcurl, Postman and current grpc-java/grpc-go clients ask for v1 first and fall back to v1alpha only
on UNIMPLEMENTED (some tools never fall back); older tools speak v1alpha only. grpcio-reflection ships
the v1alpha service alone, so v1 is served here by the same servicer under the v1 service name: the two
protocols are wire-identical (same messages, field numbers and types; only the proto package differs,
which ``tests/unit/test_reflection_protocols.py`` checks), so the v1alpha codecs read and write v1
frames unchanged.

The v1 descriptor (``grpc/reflection/v1/reflection.proto``, vendored under proto/ and generated into
``server/gen``) is imported here so that a client can resolve ``grpc.reflection.v1.ServerReflection``
like every other listed service.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2

from kis_estimator.server.gen.grpc.reflection.v1 import reflection_pb2 as v1_pb2

V1_SERVICE_NAME: str = v1_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name
V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME
_METHOD = "ServerReflectionInfo"


def add_reflection(service_names: Iterable[str], server: grpc.Server) -> None:
    """Serve reflection v1 and v1alpha, listing ``service_names`` plus both reflection services."""
    servicer = reflection.ReflectionServicer((*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME))
    handlers = {
        _METHOD: grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=v1alpha_pb2.ServerReflectionRequest.FromString,
            response_serializer=v1alpha_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers(
        tuple(
            grpc.method_handlers_generic_handler(name, handlers)
            for name in (V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)
        )
    )
