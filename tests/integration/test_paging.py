"""page_size of every listing RPC over a real channel, as AIP-158 says: 0 → the default (20), above the
maximum (100) → the maximum, negative → INVALID_ARGUMENT ``PAGE_SIZE_INVALID`` at ``page_size``.

One server holds more NEEDS_REVIEW estimates than a page can carry, so ListEstimates, ListReviewQueue and
ListAuditEvents (each accepted estimate is an audit record) all have more than 100 rows to page through.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from kis_estimator.server.acceptance.runner import outcome_of_error
from kis_estimator.server.gen.kis.estimator.v1 import admin_pb2, review_pb2
from kis_estimator.server.gen.kis.estimator.v1 import admin_pb2_grpc as admin_grpc
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2 as pb
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from kis_estimator.server.gen.kis.estimator.v1 import review_pb2_grpc as review_grpc
from kis_estimator.server.service.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from tests.integration.conftest import TIMEOUT_S, Served, start_app
from tests.integration.test_server import base

ESTIMATES = MAX_PAGE_SIZE + 5
INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31)


@dataclass(frozen=True)
class Listing:
    """One listing RPC: how to call it and how to read an id off its rows."""

    role: str
    call: Callable[[grpc.Channel, int, str, Any], Any]
    rows: Callable[[Any], list[str]]


LISTINGS = {
    "ListEstimates": Listing(
        "VIEWER",
        lambda ch, size, token, meta: pb_grpc.EstimatorServiceStub(ch).ListEstimates(
            pb.ListEstimatesRequest(page_size=size, page_token=token), metadata=meta, timeout=TIMEOUT_S
        ),
        lambda reply: [e.estimate_id for e in reply.estimates],
    ),
    "ListReviewQueue": Listing(
        "ESTIMATOR",
        lambda ch, size, token, meta: review_grpc.ReviewServiceStub(ch).ListReviewQueue(
            review_pb2.ListReviewQueueRequest(page_size=size, page_token=token),
            metadata=meta,
            timeout=TIMEOUT_S,
        ),
        lambda reply: [i.estimate_id for i in reply.items],
    ),
    "ListAuditEvents": Listing(
        "ADMIN",
        lambda ch, size, token, meta: admin_grpc.AdminServiceStub(ch).ListAuditEvents(
            admin_pb2.ListAuditEventsRequest(page_size=size, page_token=token, action="ESTIMATE_ACCEPTED"),
            metadata=meta,
            timeout=TIMEOUT_S,
        ),
        lambda reply: [e.estimate_id for e in reply.events],
    ),
}


def _needs_review(i: int) -> pb.CreateEstimateRequest:
    request = base(request_id=f"paging-{i}", main={"kind": "MCCB", "poles": 3, "trip_at": 175})
    request.branches[0].trip_at = 25  # no SANGDO MCCB 3P 25 A: a knowledge gap, so NEEDS_REVIEW
    return request


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, set[str]]]:
    served = start_app(Path(tmp_path_factory.mktemp("paging")))
    try:
        ids = set()
        with grpc.insecure_channel(served.address) as channel:
            stub = pb_grpc.EstimatorServiceStub(channel)
            for i in range(ESTIMATES):
                reply = stub.CreateEstimate(
                    _needs_review(i), metadata=served.metadata("ESTIMATOR"), timeout=TIMEOUT_S
                )
                assert reply.estimate.status == pb.ESTIMATE_STATUS_NEEDS_REVIEW
                ids.add(reply.estimate.estimate_id)
        yield served, ids
    finally:
        served.app.stop(0)


@pytest.fixture(params=sorted(LISTINGS))
def listing(request: pytest.FixtureRequest) -> Listing:
    return LISTINGS[request.param]


def _page(served: Served, listing: Listing, size: int, token: str = "") -> tuple[list[str], str]:
    with grpc.insecure_channel(served.address) as channel:
        reply = listing.call(channel, size, token, served.metadata(listing.role))
    return listing.rows(reply), reply.next_page_token


@pytest.mark.parametrize("size", [MAX_PAGE_SIZE + 1, 1000, INT32_MAX])
def test_a_page_size_above_the_maximum_serves_full_pages_of_the_maximum(
    seeded: tuple[Served, set[str]], listing: Listing, size: int
) -> None:
    served, ids = seeded
    first, token = _page(served, listing, size)
    assert len(first) == MAX_PAGE_SIZE and token
    rest, last_token = _page(served, listing, size, token)
    assert (len(rest), last_token) == (ESTIMATES - MAX_PAGE_SIZE, "")
    assert set(first) | set(rest) == ids and len(first) + len(rest) == len(ids)


def test_page_size_zero_serves_the_default(seeded: tuple[Served, set[str]], listing: Listing) -> None:
    rows, token = _page(seeded[0], listing, 0)
    assert len(rows) == DEFAULT_PAGE_SIZE and token


def test_a_page_size_within_bounds_is_served_as_asked(
    seeded: tuple[Served, set[str]], listing: Listing
) -> None:
    rows, token = _page(seeded[0], listing, MAX_PAGE_SIZE)
    assert len(rows) == MAX_PAGE_SIZE and token
    rows, _ = _page(seeded[0], listing, 1)
    assert len(rows) == 1


@pytest.mark.parametrize("size", [-1, INT32_MIN])
def test_a_negative_page_size_is_invalid_argument(
    seeded: tuple[Served, set[str]], listing: Listing, size: int
) -> None:
    served = seeded[0]
    with pytest.raises(grpc.RpcError) as raised:
        _page(served, listing, size)
    outcome = outcome_of_error(raised.value)
    assert outcome.code == "INVALID_ARGUMENT"
    assert [(v["code"], v["field"]) for v in outcome.violations] == [("PAGE_SIZE_INVALID", "page_size")]
    assert outcome.error_info["reason"] == "PAGE_SIZE_INVALID"
    assert outcome.violations[0]["message_en"] == (
        f"page_size must not be negative (got {size}); 0 means the default, sizes above 100 serve 100."
    )
