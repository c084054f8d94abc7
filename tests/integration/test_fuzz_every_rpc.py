"""Every RPC of every service, fuzzed through a real server on SQLite and on PostgreSQL.

Requests are generated from the proto descriptors themselves (so a new field or RPC is fuzzed
without touching this file): integers at their edges, text with NULs and surrogates, unknown enum
numbers, Timestamps from year 1 to far past 9999 with nanos out of range, page tokens that were
issued, altered, forged as the old unsigned JSON, or random, and ids of estimates that exist. Each
call goes out as a random caller (no token, each role). The properties:

* no answer is INTERNAL or UNKNOWN; every refusal of our services carries the rich status (a
  ``google.rpc.ErrorInfo`` reason = the stable code);
* every GetEvidenceBundle attempt is in the audit log: once the refusal counts are flushed, the
  EVIDENCE_DOWNLOAD records (first rows plus their ``repeats``) add up to the attempts made.

``make test`` runs a bounded, fixed budget (500 calls and 166 mutated payloads per backend);
``make fuzz`` runs a long random one (``KIS_FUZZ_EXAMPLES``, default there 20,000).
"""

from __future__ import annotations

import base64
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import json_format, message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kis_estimator.server.acceptance.runner import outcome_of_error
from kis_estimator.server.engine.roles import Role
from kis_estimator.server.gen.kis.estimator.v1 import (
    admin_pb2,
    estimator_pb2,
    evidence_pb2,
    review_pb2,
    server_info_pb2,
)
from kis_estimator.server.main import build_app
from kis_estimator.server.settings import Settings
from kis_estimator.server.storage.repository import AuditFilter
from tests.integration.conftest import TIMEOUT_S, Served
from tests.integration.test_postgres_service import EVIDENCE_KEYS
from tests.integration.test_storage_contract import pg_database

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("KIS_FUZZ_EXAMPLES", "500"))
# `make test` runs a fixed sequence (derandomized: the same examples every run, so CI is stable);
# `make fuzz` sets KIS_FUZZ_EXAMPLES and explores new ones each time.
DERANDOMIZE = "KIS_FUZZ_EXAMPLES" not in os.environ
FILES = (estimator_pb2, review_pb2, evidence_pb2, admin_pb2, server_info_pb2, health_pb2)
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
BUNDLE = "/kis.estimator.v1.EvidenceService/GetEvidenceBundle"
FD = pb_descriptor.FieldDescriptor


def methods() -> list[tuple[str, pb_descriptor.MethodDescriptor]]:
    """(full method name, descriptor) of every RPC a client can call with one request message."""
    found = []
    for module in FILES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if not method.client_streaming:
                    found.append((f"/{service.full_name}/{method.name}", method))
    return sorted(found, key=lambda pair: pair[0])


METHODS = methods()

# Filled by the fixture before the first example is drawn (deferred strategies read them then).
ISSUED_TOKENS: list[str] = []
KNOWN_IDS: list[str] = []


def forged_token() -> st.SearchStrategy[str]:
    cursor = st.fixed_dictionaries(
        {},
        optional={
            "t": st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "x", ""]),
            "id": st.one_of(st.sampled_from(["\ud800", "est_", "'; DROP TABLE x; --"]), UNICODE),
            "seq": st.one_of(st.integers(), st.just(10**30)),
        },
    )
    payload = st.fixed_dictionaries({"c": cursor, "s": st.text(max_size=10)})
    return payload.map(lambda p: base64.urlsafe_b64encode(json.dumps(p).encode()).decode())


def page_tokens() -> st.SearchStrategy[str]:
    issued = st.deferred(lambda: st.sampled_from(ISSUED_TOKENS or [""]))
    altered = issued.flatmap(
        lambda t: st.integers(0, max(0, len(t) - 1)).map(
            lambda i: t[:i] + ("A" if t[i : i + 1] != "A" else "B") + t[i + 1 :] if t else "x"
        )
    )
    return st.one_of(issued, altered, forged_token(), UNICODE)


def id_text() -> st.SearchStrategy[str]:
    known = st.deferred(lambda: st.sampled_from(KNOWN_IDS or ["est_missing"]))
    return st.one_of(known, known.map(lambda i: i + "\x00"), known.map(str.upper), UNICODE)


# Proto strings are UTF-8: a lone surrogate can only arrive as broken bytes (test_mutated_bytes_…).
UNICODE = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=50)
TEXT = st.one_of(
    st.sampled_from(
        ["", " ", "SANGDO", "LS", "MIXED", "MCCB", "ELB", "STOCK", "CUSTOM", "EVIDENCE_DOWNLOAD"]
    ),
    st.sampled_from(["\x00", "가" * 300, "ESTIMATOR", "ADMIN", "2025-10", "9999-99"]),
    UNICODE,
)
INT32 = st.one_of(
    st.sampled_from([-(2**31), -1, 0, 1, 2, 3, 20, 100, 101, 600, 10**6, 2**31 - 1]),
    st.integers(-(2**31), 2**31 - 1),
)
INT64 = st.one_of(st.sampled_from([-(2**63), -1, 0, 1, 2**63 - 1]), st.integers(-(2**63), 2**63 - 1))
TIMESTAMP_SECONDS = st.one_of(
    st.sampled_from([-62135596800, -62135596801, 0, 253402300799, 253402300800, -(2**63), 2**63 - 1]),
    st.integers(-(2**63), 2**63 - 1),
)


def scalar(fd: FD) -> st.SearchStrategy[Any]:
    if fd.type == FD.TYPE_STRING:
        if fd.name == "page_token":
            return page_tokens()
        if fd.name.endswith("_id") or fd.name == "estimate_id":
            return st.one_of(id_text(), TEXT)
        return TEXT
    if fd.type == FD.TYPE_BOOL:
        return st.booleans()
    if fd.type == FD.TYPE_ENUM:
        assert fd.enum_type is not None
        numbers = [v.number for v in fd.enum_type.values]
        return st.one_of(st.sampled_from(numbers), st.sampled_from([-1, max(numbers) + 1, 2**31 - 1]))
    if fd.type in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
        return INT32
    if fd.type in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if fd.type in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
        return INT64
    if fd.type in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    if fd.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return st.floats(width=32 if fd.type == FD.TYPE_FLOAT else 64)
    if fd.type == FD.TYPE_BYTES:
        return st.binary(max_size=64)
    raise AssertionError(f"no strategy for {fd.full_name}")


def message(descriptor: pb_descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    cls = message_factory.GetMessageClass(descriptor)
    if descriptor.full_name == "google.protobuf.Timestamp":
        return st.builds(cls, seconds=TIMESTAMP_SECONDS, nanos=st.one_of(st.integers(0, 999_999_999), INT32))
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for fd in descriptor.fields:
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            continue  # no request of ours has a map
        if fd.message_type is not None:
            if depth >= 3:
                continue
            value = message(fd.message_type, depth + 1)
        else:
            value = scalar(fd)
        optional[fd.name] = st.lists(value, max_size=3) if fd.is_repeated else value
    return st.fixed_dictionaries({}, optional=optional).map(lambda fields: _build(cls, fields))


def _build(cls: Callable[[], Message], fields: dict[str, Any]) -> Message:
    msg = cls()
    for name, value in fields.items():
        target = getattr(msg, name)
        if isinstance(value, list):
            for item in value:
                target.add().CopyFrom(item) if isinstance(item, Message) else target.append(item)
        elif isinstance(value, Message):
            target.CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


def valid_create(request_id: str) -> estimator_pb2.CreateEstimateRequest:
    body = json.loads((REPO / "examples/example1.json").read_text()) | {"request_id": request_id}
    return json_format.ParseDict(body, estimator_pb2.CreateEstimateRequest())


REQUESTS = {name: message(method.input_type) for name, method in METHODS}
CALLS = st.sampled_from([name for name, _ in METHODS]).flatmap(
    lambda name: st.tuples(
        st.just(name),
        # half of the calls as ADMIN (allowed everything), so that each RPC's own checks are reached
        st.one_of(st.just("ADMIN"), st.sampled_from([None, *(role.value for role in Role)])),
        REQUESTS[name],
    )
)


class Fuzzed:
    """A server on one backend plus what the fuzz run did to it."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.channel = grpc.insecure_channel(served.address)
        self.bundle_attempts = 0
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (method, gRPC code) of every call

    def call(self, name: str, role: str | None, request: Message) -> grpc.RpcError | None:
        return self.call_raw(name, role, request.SerializeToString())

    def call_raw(self, name: str, role: str | None, request: bytes) -> grpc.RpcError | None:
        method = dict(METHODS)[name]
        serialize = None
        parse = message_factory.GetMessageClass(method.output_type).FromString
        if name == BUNDLE:
            self.bundle_attempts += 1
        try:
            if method.server_streaming:
                stream = self.channel.unary_stream(name, serialize, parse)(
                    request, metadata=self.served.metadata(role), timeout=TIMEOUT_S
                )
                if name.endswith("/Watch"):
                    next(iter(stream))  # a watcher never ends by itself
                    stream.cancel()  # type: ignore[no-untyped-call]
                else:
                    list(stream)
            else:
                self.channel.unary_unary(name, serialize, parse)(
                    request, metadata=self.served.metadata(role), timeout=TIMEOUT_S
                )
        except grpc.RpcError as err:
            self.outcomes[name.rpartition("/")[2], err.code().name] += 1
            return err
        self.outcomes[name.rpartition("/")[2], "OK"] += 1
        return None


def start(settings: Settings) -> Served:
    app = build_app(settings, address="127.0.0.1:0", metrics_address="127.0.0.1:0")
    app.start()
    tokens = {role.value: app.deps.tokens.create(role, f"fuzz-{role.value.lower()}").token for role in Role}
    return Served(app=app, address=f"127.0.0.1:{app.port}", tokens=tokens)


def seed(fuzzed: Fuzzed) -> None:
    """Estimates, reviews and audit records to aim at, and page tokens the server really issued."""
    served = fuzzed.served
    for i in range(3):
        fuzzed.call(
            "/kis.estimator.v1.EstimatorService/CreateEstimate", "ESTIMATOR", valid_create(f"seed-{i}")
        )
    with served.app.store.unit_of_work(read_only=True) as uow:
        KNOWN_IDS[:] = [e.estimate_id or "" for e in uow.audit.list(AuditFilter(), 50, None)[0]]
    KNOWN_IDS[:] = sorted({i for i in KNOWN_IDS if i})
    ISSUED_TOKENS.clear()
    for name, request in (
        ("/kis.estimator.v1.EstimatorService/ListEstimates", estimator_pb2.ListEstimatesRequest(page_size=1)),
        ("/kis.estimator.v1.AdminService/ListAuditEvents", admin_pb2.ListAuditEventsRequest(page_size=1)),
        ("/kis.estimator.v1.ReviewService/ListReviewQueue", review_pb2.ListReviewQueueRequest(page_size=1)),
    ):
        method = dict(METHODS)[name]
        reply = fuzzed.channel.unary_unary(
            name,
            type(request).SerializeToString,
            message_factory.GetMessageClass(method.output_type).FromString,
        )(request, metadata=served.metadata("ADMIN"), timeout=TIMEOUT_S)
        if reply.next_page_token:
            ISSUED_TOKENS.append(reply.next_page_token)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def fuzzed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    # Budgets high enough that the fuzz run is not all RATE_LIMITED (those refusals are tested elsewhere).
    limits: dict[str, Any] = {
        "rate_limit_per_hour": 10_000_000,
        "unauthenticated_rate_limit_per_hour": 10_000_000,
    }
    if request.param == "sqlite":
        db = tmp_path_factory.mktemp("fuzz") / "kis.db"
        served = start(Settings(database_url=f"sqlite:///{db}", shutdown_grace_s=2.0, **limits))
        fuzz = Fuzzed(served)
        seed(fuzz)
        yield fuzz
        served.app.stop(0)
        return
    with pg_database() as url:
        served = start(
            Settings(database_url=url, shutdown_grace_s=2.0, evidence_keys=EVIDENCE_KEYS, **limits)
        )
        fuzz = Fuzzed(served)
        seed(fuzz)
        yield fuzz
        served.app.stop(0)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    database=None,
    derandomize=DERANDOMIZE,
)
@given(call=CALLS)
def test_no_rpc_answers_internal_or_unknown(fuzzed: Fuzzed, call: tuple[str, str | None, Message]) -> None:
    name, role, request = call
    error = fuzzed.call(name, role, request)
    if error is None:
        return
    assert error.code() not in NEVER, (name, role, request, error)
    if name.startswith("/kis."):
        outcome = outcome_of_error(error)
        assert outcome.error_info.get("reason"), (name, role, outcome)


def mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    """``data`` with bytes overwritten ((position, value) pairs; positions past the end append)."""
    out = bytearray(data)
    for position, value in edits:
        if position < len(out):
            out[position] = value
        else:
            out.append(value)
    return bytes(out)


MUTATED = st.sampled_from([name for name, _ in METHODS]).flatmap(
    lambda name: st.tuples(
        st.just(name),
        st.sampled_from([None, "VIEWER", "ADMIN"]),
        REQUESTS[name].map(lambda m: m.SerializeToString()),
        st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=4),
        st.integers(0, 400),
    )
)


@settings(
    max_examples=max(50, EXAMPLES // 3), deadline=None, suppress_health_check=list(HealthCheck), database=None
)
@given(call=MUTATED)
def test_mutated_bytes_of_every_rpc_never_get_internal_or_unknown(
    fuzzed: Fuzzed, call: tuple[str, str | None, bytes, list[tuple[int, int]], int]
) -> None:
    """Broken UTF-8 (lone surrogates), wrong wire types, truncated fields: below the message level."""
    name, role, data, edits, cut = call
    payload = mutate(data, edits)[: cut or None]
    error = fuzzed.call_raw(name, role, payload)
    if error is not None:
        assert error.code() not in NEVER, (name, role, payload, error)


def test_every_fuzzed_bundle_attempt_is_audited(fuzzed: Fuzzed) -> None:
    """Runs after the fuzz test of the same backend (module order): first rows plus repeats."""
    assert fuzzed.bundle_attempts > 0
    fuzzed.served.app.denials.flush_all()
    filter_ = AuditFilter(action="EVIDENCE_DOWNLOAD", estimate_id=None, since=None, until=None)
    recorded = 0
    token = None
    with fuzzed.served.app.store.unit_of_work(read_only=True) as uow:
        while True:
            events, token = uow.audit.list(filter_, 500, token)
            recorded += sum(int(str(dict(e.details).get("repeats", 1))) for e in events)
            if token is None:
                break
    assert recorded == fuzzed.bundle_attempts
    # the fuzz got past the gates: every RPC's own checks answered (not only authentication), and
    # most RPCs answered OK at least once
    gates = {"UNAUTHENTICATED", "PERMISSION_DENIED"}
    every = {name.rpartition("/")[2] for name, _ in METHODS}
    reached = {method for (method, code) in fuzzed.outcomes if code not in gates}
    answered = {method for (method, code) in fuzzed.outcomes if code == "OK"}
    assert reached == every, sorted(fuzzed.outcomes.items())
    assert len(answered) >= len(every) // 2, sorted(fuzzed.outcomes.items())
