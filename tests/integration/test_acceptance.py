"""docs/pricing-rules.md §17 (40 regression cases), §18 (supplementary) and §19 (smoke) over real gRPC.

The suites run once, in order, against a server with an empty store (as §17 prescribes); each case
is then reported as its own test. Cases needing RPCs of a later issue are skipped with that reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from kis_estimator.server.acceptance.cases import load_cases
from kis_estimator.server.acceptance.runner import CaseResult, GrpcCaller, run_smoke, run_suites
from tests.integration.conftest import start_app

CASES = load_cases()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, CaseResult]]:
    served = start_app(tmp_path_factory.mktemp("acceptance"))
    channel = grpc.insecure_channel(served.address)
    try:
        caller = GrpcCaller(channel, served.tokens)
        by_id = {r.case_id: r for r in run_suites(caller, ("regression", "supplementary"), run="")}
        by_id |= {r.case_id: r for r in run_smoke(channel, caller)}
        yield by_id
    finally:
        channel.close()
        served.app.stop(0)


def test_the_regression_suite_has_exactly_forty_cases() -> None:
    assert len([c for c in CASES if c.suite == "regression"]) == 40


@pytest.mark.parametrize("case_id", [c.id for c in CASES], ids=[c.id for c in CASES])
def test_case(results: dict[str, CaseResult], case_id: str) -> None:
    result = results[case_id]
    if result.skipped:
        pytest.skip(result.skipped)
    assert result.passed, "\n".join(result.failures)


@pytest.mark.parametrize("check", ["SMOKE-1", "SMOKE-2", "SMOKE-3"])
def test_smoke(results: dict[str, CaseResult], check: str) -> None:
    assert results[check].passed, "\n".join(results[check].failures)


def test_suite_runs_twice_against_one_store_with_distinct_run_prefixes(tmp_path: Path) -> None:
    served = start_app(tmp_path)
    channel = grpc.insecure_channel(served.address)
    try:
        caller = GrpcCaller(channel, served.tokens)
        regression = [c for c in CASES if c.suite == "regression" and not c.id.startswith("M")]
        for run in ("a-", "b-"):
            outcome = run_suites(caller, ("regression",), run=run, cases=regression)
            assert [r.case_id for r in outcome if not r.passed] == []
    finally:
        channel.close()
        served.app.stop(0)
