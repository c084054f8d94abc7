"""Group commit (server/service/group_commit.py) through the real API, on SQLite and PostgreSQL.

The store's write lock is held by the test while creates arrive, so they queue and are written by
one transaction once it is released: every reply still comes after the commit that stored it, a
taken key inside a batch gets the same answer as alone (replay, DUPLICATE_REQUEST), a caller that
gave up meanwhile has nothing stored, and the audit chain verifies.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from kis_estimator.client import CallError, Client, estimator_pb2
from kis_estimator.server.engine import audit as actions
from kis_estimator.server.storage.repository import Store
from tests.integration.conftest import Served
from tests.integration.test_storage_contract import read_chain, verify

EXAMPLE = json.loads((Path(__file__).resolve().parents[2] / "examples/example1.json").read_text())
TIMEOUT_S = 30.0


def _request(**changes: Any) -> estimator_pb2.CreateEstimateRequest:
    return json_format.ParseDict(
        EXAMPLE | {"request_id": uuid.uuid4().hex} | changes, estimator_pb2.CreateEstimateRequest()
    )


class Burst:
    """Creates fired on threads while the test holds the store's write lock."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.client = Client.connect(served.address, token=served.tokens["ESTIMATOR"])
        self.results: dict[str, Any] = {}
        self.threads: list[threading.Thread] = []

    def fire(
        self, name: str, request: estimator_pb2.CreateEstimateRequest, timeout: float = TIMEOUT_S
    ) -> None:
        def call() -> None:
            try:
                reply, call_ = self.client.estimator.CreateEstimate.with_call(request, timeout=timeout)
                self.results[name] = (reply, dict(call_.initial_metadata()))
            except grpc.RpcError as exc:
                self.results[name] = CallError.of(exc)

        thread = threading.Thread(target=call)
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=TIMEOUT_S + 10)
        self.client.close()


def _held(store: Store) -> Any:
    lock: Any = store.write_lock  # type: ignore[attr-defined]  # both stores have one
    assert lock.acquire(timeout=10)
    return lock


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, "the creates never queued"
        time.sleep(0.02)


def _batches(served: Served) -> tuple[float, float]:
    """(transactions, creates) of kis_store_group_commit_size so far."""
    values = {
        s.name: s.value
        for family in served.app.metrics.group_commit_size.collect()
        for s in family.samples
        if s.name.endswith(("_count", "_sum"))
    }
    return values["kis_store_group_commit_size_count"], values["kis_store_group_commit_size_sum"]


def test_waiting_creates_share_one_transaction_and_each_gets_its_reply(backend: Served) -> None:
    served = backend
    burst = Burst(served)
    lock = _held(served.app.store)
    try:
        burst.fire("first", _request())  # taken by the writer, which then waits for the lock
        time.sleep(0.3)
        for i in range(11):
            burst.fire(f"c{i}", _request())
        _wait_for(lambda: served.app.deps.estimates.pending_writes() >= 11)
        assert burst.results == {}  # no reply before the commit
    finally:
        lock.release()
    burst.join()
    ids = {name: result[0].estimate.estimate_id for name, result in burst.results.items()}
    assert len(ids) == 12 and len(set(ids.values())) == 12
    transactions, creates = _batches(served)
    assert creates == 12 and transactions <= 2  # the first alone (if it came first), the rest together
    with served.app.store.unit_of_work(read_only=True) as uow:
        for estimate_id in ids.values():
            assert uow.estimates.get(estimate_id) is not None
            assert uow.evidence.get_info(estimate_id, None) is not None
    assert verify(served.app.store) is None


def test_taken_keys_in_a_batch_get_the_answers_they_get_alone(backend: Served) -> None:
    served = backend
    burst = Burst(served)
    shared_request = _request()
    lock = _held(served.app.store)
    try:
        burst.fire("first", _request())
        time.sleep(0.3)
        for i in range(4):
            burst.fire(f"dup{i}", _request(meta={"dedup_key": "D-1"}))
            burst.fire(f"same{i}", shared_request)
            burst.fire(f"unique{i}", _request())
        _wait_for(lambda: served.app.deps.estimates.pending_writes() >= 12)
    finally:
        lock.release()
    burst.join()
    dups = [burst.results[f"dup{i}"] for i in range(4)]
    accepted = [d for d in dups if not isinstance(d, CallError)]
    refused = [d for d in dups if isinstance(d, CallError)]
    assert len(accepted) == 1 and len(refused) == 3
    for error in refused:
        assert (error.status, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "DUPLICATE_REQUEST")
        assert error.metadata["existing_estimate_id"] == accepted[0][0].estimate.estimate_id
    same = [burst.results[f"same{i}"] for i in range(4)]
    assert all(not isinstance(s, CallError) for s in same)
    assert len({s[0].SerializeToString() for s in same}) == 1  # one estimate, byte-identical replies
    assert sorted(s[1].get("kis-replayed", "false") for s in same) == ["false", "true", "true", "true"]
    assert all(not isinstance(burst.results[f"unique{i}"], CallError) for i in range(4))
    _, _, events = read_chain(served.app.store)
    assert sum(e.action == actions.ESTIMATE_ACCEPTED for e in events) == 7  # first, dup, same, 4 unique
    assert verify(served.app.store) is None


def test_a_caller_that_gave_up_while_queued_has_nothing_stored(backend: Served) -> None:
    served = backend
    burst = Burst(served)
    lock = _held(served.app.store)
    try:
        burst.fire("first", _request())
        time.sleep(0.3)
        gone = _request()
        burst.fire("gone", gone, timeout=0.5)
        burst.fire("kept", _request())
        _wait_for(lambda: served.app.deps.estimates.pending_writes() >= 2)
        time.sleep(1.0)  # the first call's deadline passes while it waits for the write
    finally:
        lock.release()
    burst.join()
    assert isinstance(burst.results["gone"], CallError)
    assert burst.results["gone"].status is grpc.StatusCode.DEADLINE_EXCEEDED
    assert not isinstance(burst.results["kept"], CallError)
    with served.app.store.unit_of_work(read_only=True) as uow:
        assert uow.idempotency.get(gone.request_id) is None
    assert verify(served.app.store) is None


def test_the_replay_and_duplicate_checks_of_a_create_are_one_statement_each(
    backend: Served, monkeypatch: Any
) -> None:
    """A create with a request_id and a dedup_key reads each in a look-up (one statement, no
    transaction around it), not in a read transaction; the answers are those of a transaction."""
    store = backend.app.store
    opened: list[str] = []
    for name in ("lookup", "unit_of_work"):
        original = getattr(store, name)

        def spy(*args: Any, __original: Any = original, __name: str = name, **kwargs: Any) -> Any:
            opened.append(f"{__name}{'(read_only)' if kwargs.get('read_only') else ''}")
            return __original(*args, **kwargs)

        monkeypatch.setattr(store, name, spy)
    client = Client.connect(backend.address, token=backend.tokens["ESTIMATOR"])
    try:
        request = _request(meta={"dedup_key": uuid.uuid4().hex})
        first = client.estimator.CreateEstimate(request, timeout=TIMEOUT_S)
        assert "unit_of_work(read_only)" not in opened, opened
        assert opened.count("lookup") >= 2, opened  # the request_id's and the dedup key's
        again = client.estimator.CreateEstimate(request, timeout=TIMEOUT_S)  # a retry: the replay
        assert again.estimate.estimate_id == first.estimate.estimate_id
        other = _request(meta={"dedup_key": request.meta.dedup_key})  # another request_id, same key
        with pytest.raises(grpc.RpcError) as refused:
            client.estimator.CreateEstimate(other, timeout=TIMEOUT_S)
        assert CallError.of(refused.value).reason == "DUPLICATE_REQUEST", refused.value
        assert "unit_of_work(read_only)" not in opened, opened
    finally:
        client.close()
