"""The benchmark's machine-wide CPU shares: idle and steal over a measuring window (bench/stats.py),
and the scaling summary naming the rounds that ran on a machine partly taken by other guests
(bench/scaling.py)."""

from __future__ import annotations

import math
from typing import Any

from bench.scaling import _stolen_rounds
from bench.stats import machine_shares, machine_ticks


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
