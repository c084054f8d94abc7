"""``ServerInfoService``: the build that answers on this address (public, like health)."""

from __future__ import annotations

from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from kis_estimator.server.build_info import build_info
from kis_estimator.server.engine.model import RULES_VERSION
from kis_estimator.server.gen.kis.estimator.v1 import server_info_pb2 as info_pb
from kis_estimator.server.gen.kis.estimator.v1 import server_info_pb2_grpc as info_grpc


class ServerInfoServicer(info_grpc.ServerInfoServiceServicer):
    def __init__(self, catalog_version: str, started_at: datetime, database_backend: str) -> None:
        build = build_info()
        started = Timestamp()
        started.FromDatetime(started_at)
        self._reply = info_pb.GetServerInfoResponse(
            version=build.version,
            commit=build.commit,
            catalog_version=catalog_version,
            rules_version=RULES_VERSION,
            started_at=started,
            database_backend=database_backend,
        )

    def GetServerInfo(
        self, request: info_pb.GetServerInfoRequest, context: grpc.ServicerContext
    ) -> info_pb.GetServerInfoResponse:
        return self._reply
