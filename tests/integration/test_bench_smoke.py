"""The benchmark harness works end to end: ``bench/bench.py --smoke --profile`` in a subprocess.

It starts a real estimator, the ceiling server, load-generator processes, h2load (when installed)
and py-spy, and must write a results JSON holding every figure of the benchmark issue. No timing is
asserted (docs/conventions.md §9: speed belongs to the benchmark's printed figures): a figure only has to be
there, be a number, and come from calls that succeeded.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PHASES = ("ceiling", "create_small", "create_large", "get_estimate", "get_evidence_bundle")
LEVELS = (1, 16, 64)
ENGINE_FIGURES = ("hash", "validate", "price", "compute", "evidence", "reply_encode")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    run = subprocess.run(
        [sys.executable, "bench/bench.py", "--smoke", "--profile", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Targets" in run.stdout  # the printed table
    data: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return data


@pytest.mark.slow
def test_every_rpc_phase_has_its_figures_at_every_level(results: dict[str, Any]) -> None:
    rows = {(r["name"], r["concurrency"]): r for r in results["rpc"]}
    assert set(rows) == {(name, level) for name in PHASES for level in LEVELS}
    for (name, level), r in rows.items():
        assert r["calls"] > 0 and r["errors"] == {}, (name, level, r["errors"])
        assert r["server"] == ("ceiling" if name == "ceiling" else "estimator")
        for key in ("p50_ms", "p95_ms", "p99_ms", "max_ms"):
            assert _number(r["latency_ms"][key]), (name, level, key)
        for key in (
            "qps",
            "server_cpu_pct",
            "server_cpu_us_per_call",
            "client_cpu_pct",
            "server_rss_mib_before",
            "server_rss_mib_after",
            "qps_vs_ceiling",
            "p95_vs_ceiling",
        ):
            assert _number(r[key]), (name, level, key)
        assert r["response_bytes"] > 0 and r["request_bytes"] > 0
    # the ceiling answers with a real small CreateEstimate reply: the size on the wire, up to the
    # request_id it echoes (the fixture's and the phase's ids differ in length)
    assert abs(rows[("ceiling", 16)]["response_bytes"] - rows[("create_small", 16)]["response_bytes"]) < 64
    assert rows[("ceiling", 16)]["qps_vs_ceiling"] == 1.0


@pytest.mark.slow
def test_engine_and_evidence_figures_are_timeit_statistics(results: dict[str, Any]) -> None:
    for panel in ("small", "large"):
        engine = results["engine"][panel]
        assert engine["status"] == "COMPLETED"
        for figure in ENGINE_FIGURES:
            stats = engine[figure]
            assert stats["repeat"] >= 3 and stats["loops"] >= 1
            for key in ("median_us", "mean_us", "stdev_us", "min_us", "max_us"):
                assert _number(stats[key]), (panel, figure, key)
            assert stats["min_us"] <= stats["median_us"] <= stats["max_us"]
        assert engine["evidence"]["size_bytes"] > 0
    assert results["engine"]["large"]["lines"] > results["engine"]["small"]["lines"]


@pytest.mark.slow
def test_leak_check_reports_rss_per_10k_calls(results: dict[str, Any]) -> None:
    leak = results["leak"]
    assert leak["ok_calls"] == leak["calls"] > 0 and leak["errors"] == 0
    assert len(leak["rss_mib_samples"]) == 6
    for key in ("rss_mib_before", "rss_mib_after", "growth_mb", "mb_per_10k_calls"):
        assert _number(leak[key]), key


@pytest.mark.slow
def test_h2load_headline_or_a_reason(results: dict[str, Any]) -> None:
    h2load = results["h2load"]
    if "skipped" in h2load:
        assert "h2load" in h2load["skipped"] or "nghttp2" in h2load["skipped"]
        return
    names = {r["name"] for r in h2load["runs"]}
    assert names == {"ceiling", "get_estimate", "create_small_no_request_id"}
    for r in h2load["runs"]:
        assert r["qps"] > 0 and _number(r["latency_ms"]["p95_ms"])
        if r["name"] != "ceiling":
            assert r["grpc_codes"].get("OK", 0) > 0
            # h2load stops with calls in flight: those end CANCELLED, nothing else may appear
            assert set(r["grpc_codes"]) <= {"OK", "CANCELLED"}, r["grpc_codes"]


@pytest.mark.slow
def test_profile_names_the_servers_functions(results: dict[str, Any]) -> None:
    profile = results["profile"]
    if "skipped" in profile:
        assert "py-spy" in profile["skipped"]
        return
    for name, servicer in (("create_small", "CreateEstimate"), ("get_estimate", "GetEstimate")):
        for mode in ("threads", "gil"):
            p = profile[f"{name}/{mode}"]
            assert p["samples"] > 0
            assert any(servicer in f["function"] for f in p["inclusive"]), p["inclusive"][:10]
            assert p["key_functions"][f"EstimatorServicer.{servicer}"] > 0
            assert Path(p["collapsed_stacks"]).exists()


@pytest.mark.slow
def test_every_target_has_a_value(results: dict[str, Any]) -> None:
    targets = {t["target"]: t for t in results["targets"]}
    scaled = [r for r in results["scaling"]["stores"].values() if "skipped" not in r]
    with_h2load = [r for r in scaled if r["h2load_ratio"] is not None]
    assert len(targets) == 7 + len(scaled) + len(with_h2load)
    for name, t in targets.items():
        assert _number(t["value"]) and t["met"] in (True, False), name


@pytest.mark.slow
def test_the_scaling_section_runs_one_and_two_workers_on_each_store(results: dict[str, Any]) -> None:
    """One worker without group commit (its same-run baseline), then rounds of one worker and two
    (one round in a smoke run), from the Python load generators and from h2load where installed."""
    assert results["scaling"]["connections"] == 16
    stores = results["scaling"]["stores"]
    assert set(stores) == {"sqlite", "postgresql"}
    for store, result in stores.items():
        if "skipped" in result:  # no PostgreSQL server reachable: said, not hidden
            assert store == "postgresql" and result["skipped"]
            continue
        postgres_ms: list[float] = []
        assert [(run["workers"], run["group_commit"]) for run in result["runs"]] == [
            (1, False),
            (1, True),
            (2, True),
        ]
        for run in result["runs"]:
            assert run["calls"] > 0 and run["errors"] == {}, (store, run["errors"])
            assert _number(run["qps"]) and _number(run["server_cpu_pct"])
            # sixteen distinct connections: both workers serve (all on one: 2 in 65,536 runs)
            assert len(run["per_worker_ok"]) == run["workers"], run["per_worker_ok"]
            assert all(n > 0 for n in run["per_worker_ok"]), (store, run["per_worker_ok"])
            h2 = run["h2load"]
            for figures in (run, h2) if "skipped" not in h2 else (run,):  # the machine's shares
                assert all(0 <= figures["machine"][k] <= 100 for k in ("idle_pct", "steal_pct")), figures
            for figures in (run, h2) if "skipped" not in h2 else (run,):  # where the cores went
                cpu = figures["cpu_ms_per_call"]
                assert set(cpu) == {"estimator", "postgresql", "other", "idle"}, cpu
                assert cpu["estimator"] > 0 and all(v >= 0 for v in cpu.values()), cpu
                postgres_ms.append(cpu["postgresql"])
                # each create is written by one group commit; the baseline writes each alone, unbatched
                batch = figures["creates_per_commit"]
                assert (batch is None) if not run["group_commit"] else (batch >= 1), (store, batch)
            if "skipped" not in h2:
                assert h2["grpc_codes"].get("OK", 0) > 0
                assert set(h2["grpc_codes"]) <= {"OK", "CANCELLED"}, h2["grpc_codes"]  # cut at the end
                assert sum(h2["per_worker_ok"]) == h2["grpc_codes"]["OK"]
        if store == "postgresql":  # its server works for the creates (summed: a window is 0.2 s)
            assert sum(postgres_ms) > 0, postgres_ms
        assert len(result["ratios"]) == 1 and result["ratio"] == result["ratios"][0]
        assert _number(result["ratio"]) and _number(result["group_commit_gain"])
    targets = {t["target"] for t in results["targets"]}
    assert "CreateEstimate --workers 2 / 1 QPS, sqlite" in targets
    machine = results["scaling"]["machine"]  # the same run's ceiling: two busy processes / one
    assert machine["pinned"] and len(machine["ratios"]) == 1 and _number(machine["ratio"]), machine
    assert all(n > 0 for n in machine["alone_per_s"] + machine["pair_per_s"]), machine
    (alone,), (pair,) = machine["alone_per_s"], machine["pair_per_s"]
    assert machine["ratio"] == pytest.approx(pair / alone), machine
