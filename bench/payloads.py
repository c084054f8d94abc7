"""The two panels the benchmark prices, and the wire bytes the load generator sends.

* small: regression case S01 (LS, main MCCB 3P 100 A, one branch line 3P 100 A × 4, no accessories),
  without its ``request_id`` and ``meta.dedup_key`` (the load generator gives every call its own
  ``request_id``; a shared dedup key would make every call after the first ``DUPLICATE_REQUEST``);
* large: 20 branch lines with 100 breaker units (MCCB and ELB, 2P/3P/4P, 20-200 A), main MCCB 4P
  600 A, seven accessory codes including the SPD (which adds a priced MCCB line) and magnets with a
  timer (which add their bundles); the panel is taller than any stock enclosure, so it carries a
  ``custom_price_krw`` and prices COMPLETED without review.

Requests travel pre-serialised: the load generator appends one ``request_id`` field per call to the
bytes of the request without it (protobuf concatenation), so it spends no CPU on message objects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from kis_estimator.server.api import convert
from kis_estimator.server.engine.model import EstimateRequest
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
S01_CASE = ROOT / "server" / "acceptance" / "cases" / "S01.json"

# (kind, poles, trip_at A, qty): 20 lines, 100 units
LARGE_BRANCHES: tuple[tuple[str, int, int, int], ...] = (
    ("MCCB", 3, 100, 6),
    ("MCCB", 3, 75, 5),
    ("MCCB", 3, 50, 6),
    ("MCCB", 3, 40, 5),
    ("MCCB", 3, 30, 5),
    ("MCCB", 4, 100, 4),
    ("MCCB", 4, 50, 4),
    ("MCCB", 2, 50, 6),
    ("MCCB", 2, 30, 6),
    ("MCCB", 2, 20, 6),
    ("ELB", 3, 50, 5),
    ("ELB", 3, 30, 5),
    ("ELB", 2, 30, 6),
    ("ELB", 2, 20, 6),
    ("ELB", 4, 50, 4),
    ("ELB", 3, 100, 4),
    ("MCCB", 3, 150, 3),
    ("MCCB", 3, 200, 2),
    ("ELB", 2, 20, 5),
    ("MCCB", 2, 40, 7),
)
LARGE_ACCESSORIES: tuple[tuple[str, int], ...] = (
    ("spd_4p_40ka", 1),
    ("magnet_mc22", 4),
    ("timer_24h", 2),
    ("pbl_onoff", 2),
    ("ammeter", 3),
    ("voltmeter", 1),
    ("indicator_lamp", 3),
)


def small_panel() -> dict[str, Any]:
    """S01 as proto3 JSON, without request_id and meta."""
    request: dict[str, Any] = json.loads(S01_CASE.read_text(encoding="utf-8"))["steps"][0]["request"]
    request.pop("request_id", None)
    request.pop("meta", None)
    return request


def large_panel() -> dict[str, Any]:
    """The 20-line, 100-unit panel with accessories, as proto3 JSON."""
    return {
        "brand": "LS",
        "form": "ECONOMIC",
        "installation": {"location": "INDOOR", "mount": "SURFACE"},
        "enclosure": {"custom_price_krw": 1_500_000},
        "main": {"kind": "MCCB", "poles": 4, "trip_at": 600},
        "branches": [
            {"kind": kind, "poles": poles, "trip_at": trip_at, "qty": qty}
            for kind, poles, trip_at, qty in LARGE_BRANCHES
        ],
        "accessories": {
            "enabled": True,
            "items": [{"code": code, "qty": qty} for code, qty in LARGE_ACCESSORIES],
        },
    }


PANELS = {"small": small_panel, "large": large_panel}


def create_message(panel: str, request_id: str | None = None) -> pb.CreateEstimateRequest:
    data = PANELS[panel]()
    if request_id is not None:
        data["request_id"] = request_id
    return json_format.ParseDict(data, pb.CreateEstimateRequest())


def domain_request(panel: str, request_id: str | None = None) -> EstimateRequest:
    """The engine's view of a panel, exactly as the servicer converts it."""
    return convert.request_from_proto(create_message(panel, request_id))


def request_id_field_number() -> int:
    return int(pb.CreateEstimateRequest.DESCRIPTOR.fields_by_name["request_id"].number)


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def string_field(number: int, text: str) -> bytes:
    """Wire bytes of one length-delimited field (appending it to a message sets that field)."""
    data = text.encode("utf-8")
    return varint(number << 3 | 2) + varint(len(data)) + data


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed), as h2load sends it as the request body."""
    return b"\x00" + len(message).to_bytes(4, "big") + message
