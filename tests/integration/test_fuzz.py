"""Property-based fuzzing through the real server: no input is ever answered INTERNAL or UNKNOWN."""

from __future__ import annotations

from typing import Any

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kis_estimator.server.acceptance.runner import outcome_of_error
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from tests.integration.conftest import TIMEOUT_S, Served

INT32 = st.one_of(
    st.sampled_from(
        [-(2**31), -100, -1, 0, 1, 2, 3, 4, 5, 15, 20, 25, 30, 40, 50, 60, 75, 100, 125, 150, 225, 226]
    ),
    st.sampled_from([250, 300, 400, 500, 600, 800, 801, 10_000, 2**31 - 1]),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
)
TEXT = st.one_of(
    st.sampled_from(
        ["", " ", "SANGDO", "LS", "MIXED", "MCCB", "ELB", "INDOOR", "OUTDOOR", "FLUSH", "SURFACE"]
    ),
    st.sampled_from(
        ["STOCK", "CUSTOM", "STEEL_1_0", "STEEL_1_6", "SUS201_1_2", "ECONOMIC", "STANDARD", "SBS-603"]
    ),
    st.sampled_from(["ABN-103", "SBS-254", "32GRHS", "SIE-32", "XYZ-1", "BS32", "shunt_trip", "timer_24h"]),
    st.text(max_size=60),
    st.text(min_size=120, max_size=700),
)
CODES = st.one_of(
    st.sampled_from(["shunt_trip", "alarm_switch", "ammeter", "spd_4p_40ka", "magnet_mc22", "timer_24h"]),
    st.sampled_from(["pbl_onoff", "indicator_lamp", "voltmeter", "emergency_stop", "fuse_holder_4a", ""]),
    st.text(max_size=20),
)


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


def _breaker(branch: bool) -> st.SearchStrategy[dict[str, Any]]:
    fields: dict[str, st.SearchStrategy[Any]] = {
        "kind": _maybe(TEXT),
        "poles": _maybe(INT32),
        "trip_at": _maybe(INT32),
        "frame_af": _maybe(INT32),
        "model": _maybe(TEXT),
        "brand": _maybe(TEXT),
        "sensitivity_ma": _maybe(INT32),
    }
    if branch:
        fields |= {"qty": _maybe(INT32), "remark": _maybe(TEXT)}
    return st.fixed_dictionaries({}, optional=fields).map(
        lambda d: {k: v for k, v in d.items() if v is not None}
    )


REQUESTS = st.fixed_dictionaries(
    {},
    optional={
        "request_id": TEXT,
        "brand": TEXT,
        "mixed_reason": TEXT,
        "form": TEXT,
        "installation": st.fixed_dictionaries(
            {}, optional={"location": TEXT, "mount": TEXT, "floor_standing": st.booleans()}
        ),
        "enclosure": st.fixed_dictionaries(
            {},
            optional={
                "kind": TEXT,
                "material": TEXT,
                "custom_price_krw": st.integers(min_value=-(2**63), max_value=2**63 - 1),
                "steel_p_cover": st.booleans(),
            },
        ),
        "main": _breaker(False),
        "branches": st.lists(_breaker(True), max_size=12),
        "accessories": st.fixed_dictionaries(
            {},
            optional={
                "enabled": st.booleans(),
                "items": st.lists(
                    st.fixed_dictionaries({}, optional={"code": CODES, "qty": INT32}), max_size=6
                ),
            },
        ),
        "meta": st.fixed_dictionaries({}, optional={"dedup_key": TEXT}),
    },
)


def _to_proto(data: dict[str, Any]) -> pb.CreateEstimateRequest:
    from google.protobuf import json_format

    return json_format.ParseDict(data, pb.CreateEstimateRequest())


@settings(
    max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(data=REQUESTS)
def test_random_requests_never_get_internal_or_unknown(served: Served, data: dict[str, Any]) -> None:
    stub = pb_grpc.EstimatorServiceStub(_channel(served))
    for rpc, request in (
        ("CreateEstimate", _to_proto(data)),
        ("ValidateEstimate", pb.ValidateEstimateRequest(request=_to_proto(data))),
    ):
        try:
            getattr(stub, rpc)(request, metadata=served.metadata("ESTIMATOR"), timeout=TIMEOUT_S)
        except grpc.RpcError as err:
            outcome = outcome_of_error(err)
            assert outcome.code in {"INVALID_ARGUMENT", "ALREADY_EXISTS", "RESOURCE_EXHAUSTED"}, outcome
            assert outcome.violations, outcome
            assert all(v["code"] and v["message_en"] and v["message_ko"] for v in outcome.violations)


@settings(max_examples=500, deadline=None)
@given(payload=st.binary(max_size=400))
def test_random_bytes_never_get_internal_or_unknown(served: Served, payload: bytes) -> None:
    fn = _channel(served).unary_unary(
        "/kis.estimator.v1.EstimatorService/CreateEstimate",
        request_serializer=None,
        response_deserializer=None,
    )
    try:
        fn(payload, metadata=served.metadata("ESTIMATOR"), timeout=TIMEOUT_S)
    except grpc.RpcError as err:
        assert err.code() in {
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.ALREADY_EXISTS,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        }, err


_CHANNELS: dict[str, grpc.Channel] = {}


def _channel(served: Served) -> grpc.Channel:
    if served.address not in _CHANNELS:
        _CHANNELS[served.address] = grpc.insecure_channel(served.address)
    return _CHANNELS[served.address]
