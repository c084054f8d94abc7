"""The benchmark's machine-wide CPU shares: idle and steal over a measuring window, where the CPU
went per call (bench/stats.py), the scaling summary naming the rounds that ran on a machine partly
taken by other guests and its CPU breakdown (bench/scaling.py), and the machine's own two / one
(bench/machine_scaling.py)."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from bench.machine_scaling import spin
from bench.scaling import _stolen_rounds, _summary, cpu_per_create, creates_per_commit, room_for_two
from bench.stats import CLOCK_TICKS, cpu_ms_per_call, machine_shares, machine_ticks, postgres_cpu_seconds


def test_shares_are_the_idle_and_stolen_ticks_over_all_ticks_of_the_window() -> None:
    assert machine_shares((100, 10, 1000), (250, 60, 2000)) == {"idle_pct": 15.0, "steal_pct": 5.0}
    same = machine_shares((1, 2, 3), (1, 2, 3))  # no tick passed: no share, rather than a division
    assert math.isnan(same["idle_pct"]) and math.isnan(same["steal_pct"])


def test_the_machine_is_read_from_proc_stat() -> None:
    idle, steal, total = machine_ticks()
    assert 0 <= idle <= total and 0 <= steal <= total
    later = machine_ticks()
    assert later[2] >= total


def run(workers: int, steal: float) -> dict[str, Any]:
    return {"workers": workers, "machine": {"idle_pct": 10.0, "steal_pct": steal}, "h2load": {}}


def test_rounds_with_a_run_above_five_percent_steal_are_named() -> None:
    baseline = run(1, 40.0)  # the baseline run is no round: its steal names none
    runs = [baseline, run(1, 0.0), run(2, 1.0), run(1, 0.5), run(2, 12.0), run(1, 6.0), run(2, 0.0)]
    assert _stolen_rounds(runs, lambda r: r) == "; rounds with > 5 % steal: 2, 3"
    assert _stolen_rounds(runs, lambda r: r["h2load"]) == ""  # h2load figures without shares: none
    assert _stolen_rounds(runs[:3], lambda r: r) == ""


def test_cpu_per_call_splits_the_busy_ticks_into_estimator_postgresql_and_the_rest() -> None:
    ticks = CLOCK_TICKS
    # 2 s of ticks in the window: 0.5 s idle, 0.1 s stolen, 1.4 s busy; 100 calls
    before, after = (0, 0, 0), (ticks // 2, ticks // 10, 2 * ticks)
    cpu = cpu_ms_per_call(100, estimator_s=1.0, postgres_s=0.25, ticks_from=before, ticks_to=after)
    assert cpu == pytest.approx({"estimator": 10.0, "postgresql": 2.5, "other": 1.5, "idle": 5.0})
    assert cpu_ms_per_call(0, 1.0, 0.0, before, after) == {}  # no call: no share per call
    # the process readings and /proc/stat are not read at the same instant: never a negative rest
    assert cpu_ms_per_call(10, 1.5, 0.0, before, after)["other"] == 0.0


def test_postgresql_cpu_is_read_from_proc_and_only_grows() -> None:
    first = postgres_cpu_seconds()
    assert first >= 0.0
    assert postgres_cpu_seconds() >= first


def test_the_breakdown_is_the_median_of_each_share_over_the_rounds_of_each_worker_count() -> None:
    def run(workers: int, group_commit: bool, estimator: float) -> dict[str, Any]:
        cpu = {"estimator": estimator, "postgresql": 0.5, "other": 0.25, "idle": 1.0}
        return {"workers": workers, "group_commit": group_commit, "cpu_ms_per_call": cpu}

    runs = [run(1, False, 9.0), run(1, True, 3.0), run(2, True, 3.5), run(2, True, 4.0), run(1, True, 4.0)]
    cpu = cpu_per_create(runs, lambda r: r)
    assert cpu[1] == {"estimator": 3.5, "postgresql": 0.5, "other": 0.25, "idle": 1.0}  # baseline left out
    assert cpu[2]["estimator"] == 3.75
    assert list(cpu[1]) == ["estimator", "postgresql", "other", "idle"]


def test_a_spinning_process_that_missed_the_common_start_says_so() -> None:
    with pytest.raises(RuntimeError, match="after the common start"):
        spin(time.monotonic() - 5.0, 0.1)


def test_creates_per_commit_is_the_median_over_the_rounds_and_none_without_batches() -> None:
    runs: list[dict[str, Any]] = [
        {"workers": 1, "group_commit": False, "creates_per_commit": None},
        {"workers": 1, "group_commit": True, "creates_per_commit": 9.0},
        {"workers": 2, "group_commit": True, "creates_per_commit": 3.0},
        {"workers": 1, "group_commit": True, "creates_per_commit": 11.0},
        {"workers": 2, "group_commit": True, "creates_per_commit": None},  # nothing written
    ]
    assert creates_per_commit(runs, lambda r: r) == {1: 10.0, 2: 3.0}
    assert creates_per_commit(runs[:1], lambda r: r) == {1: None, 2: None}


def cpu_run(workers: int, qps: float, **cpu: float) -> dict[str, Any]:
    return {"workers": workers, "group_commit": True, "qps": qps, "cpu_ms_per_call": cpu}


def test_room_for_two_is_what_the_work_beside_the_estimator_leaves_two_workers() -> None:
    one = cpu_run(1, 333.0, estimator=3.0, postgresql=0.5, other=0.1, idle=2.4)
    two = cpu_run(2, 500.0, estimator=3.3, postgresql=0.5, other=0.1, idle=0.1)
    # 2 × 3.0 / (3.0 + 0.5 + 0.1 + 0.1): the one-worker estimator figure, the rest of two workers'
    assert room_for_two(one, two) == pytest.approx(6.0 / 3.7)
    assert room_for_two(one, {"workers": 2}) is None  # no breakdown (h2load not installed): no room
    assert room_for_two({"cpu_ms_per_call": {}}, two) is None


def test_the_summary_gives_each_load_generator_the_median_room_over_the_rounds() -> None:
    baseline = cpu_run(1, 300.0, estimator=3.3)
    rounds = [
        (cpu_run(1, 333.0, estimator=3.0), cpu_run(2, 500.0, estimator=3.3, postgresql=1.0)),  # 1.50
        (cpu_run(1, 333.0, estimator=3.0), cpu_run(2, 520.0, estimator=3.2, postgresql=0.0)),  # 2.00
        (cpu_run(1, 333.0, estimator=3.0), cpu_run(2, 510.0, estimator=3.1, postgresql=0.75)),  # 1.60
    ]
    runs = [baseline, *(run for pair in rounds for run in pair)]
    summary = _summary(runs)
    assert summary["room"] == pytest.approx(1.6)
    assert summary["h2load_room"] is None  # no h2load figures in these runs
