"""deploy/prometheus/ rules pass `promtool check rules` and their `promtool test rules` suites.

promtool comes from Debian's `prometheus` package; ``tools/ensure_prometheus.sh`` installs it when it
is missing, and the tests skip with that script's reason only where it cannot be installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "deploy/prometheus"
RULE_FILES = (RULES_DIR / "recording.rules.yml", RULES_DIR / "alerts.rules.yml")
RULE_TESTS = sorted((RULES_DIR / "tests").glob("*.test.yml"))
ENSURE_SCRIPT = ROOT / "tools/ensure_prometheus.sh"
PROMTOOL_TIMEOUT_S = 120


def prometheus_binary(name: str) -> str:
    """Path of ``promtool`` or ``prometheus``, installing Debian's package first if needed; else skip."""
    found = shutil.which(name)
    if found is None:
        result = subprocess.run(
            ["bash", str(ENSURE_SCRIPT)], capture_output=True, text=True, timeout=600, check=False
        )
        found = shutil.which(name)
        if found is None:
            reason = (result.stdout + result.stderr).strip() or f"{ENSURE_SCRIPT.name} did not install it"
            pytest.skip(f"{name} unavailable: {reason}")
    return found


@pytest.fixture(scope="module")
def promtool() -> str:
    return prometheus_binary("promtool")


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT_S, check=False)


def test_rule_files_pass_promtool_check(promtool: str) -> None:
    result = _run([promtool, "check", "rules", *map(str, RULE_FILES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_configuration_passes_promtool_check(promtool: str) -> None:
    result = _run([promtool, "check", "config", str(RULES_DIR / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rule files found" in result.stdout


@pytest.mark.parametrize("test_file", RULE_TESTS, ids=[p.name for p in RULE_TESTS])
def test_rule_unit_tests_pass(promtool: str, test_file: Path) -> None:
    result = _run([promtool, "test", "rules", str(test_file)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_has_a_unit_test() -> None:
    recorded = re.findall(r"^\s*- record:\s*(\S+)", RULE_FILES[0].read_text(encoding="utf-8"), re.M)
    alerts = re.findall(r"^\s*- alert:\s*(\S+)", RULE_FILES[1].read_text(encoding="utf-8"), re.M)
    tests = "\n".join(p.read_text(encoding="utf-8") for p in RULE_TESTS)
    firing_tested = set(re.findall(r"alertname: (\S+)\n\s+exp_alerts:\n\s+- exp_labels", tests))
    untested = [name for name in recorded if not re.search(rf"expr: {re.escape(name)}\b", tests)]
    untested += [name for name in alerts if name not in firing_tested]
    assert len(recorded) == 8
    assert len(alerts) == 10
    assert untested == []


def test_seed_series_are_recorded_and_rollback_alerts_are_labelled() -> None:
    recording = RULE_FILES[0].read_text(encoding="utf-8")
    alerting = RULE_FILES[1].read_text(encoding="utf-8")
    recorded = set(re.findall(r"^\s*- record:\s*(\S+)", recording, re.M))
    assert {
        "http_2xx_count",
        "http_4xx_count",
        "http_5xx_count",
        "latency_p95_ms",
        "evidence_zip_bytes_avg",
    } <= recorded
    rollback = dict(re.findall(r"- alert: (\S+)\n(?:.*\n)*?\s+rollback: (\S+)", alerting))
    assert rollback == {
        "KisEstimatorDown": "immediate",
        "KisHighP95Latency": "none",
        "KisHigh5xxRate": "none",
        "KisMixedLimitExceeded": "none",
        "KisStoreGaugesUnavailable": "none",
        "KisStoreGrowingFast": "none",
        "KisRollback5xxRate": "immediate",
        "KisRollbackP95Latency": "immediate",
        "KisReviewRollbackP95Latency": "review",
        "KisReviewRollbackErrorRate": "review",
    }
