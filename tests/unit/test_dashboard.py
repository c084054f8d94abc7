"""The Grafana dashboard: importable, the notice's panels, every query parses and reads only our series."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from kis_estimator.server.metrics import Metrics, StoreGauges, StoreGaugesCollector
from tests.unit.test_promtool_rules import PROMTOOL_TIMEOUT_S, RULE_FILES, prometheus_binary

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/kis-estimator.json"
# Grafana template variables, replaced by what "All" sends before the query is checked.
VARIABLES = {"$job": ".+"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring"}
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return out


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    found = []
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            found.append((f"{panel['title']}/{target['refId']}", expr))
    return found


def series_names(expr: str) -> set[str]:
    """Metric names an expression selects (strings, label matchers, ranges and grouping removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    names = re.findall(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", text)
    return {n for n in names if n.lower() not in _KEYWORDS}


def known_series() -> set[str]:
    """What the service exports (with each type's sample suffixes) and what the recording rules record."""
    registry = CollectorRegistry()
    Metrics(registry)
    registry.register(StoreGaugesCollector(lambda: StoreGauges(0, 2, 0, 0.0, 0)))
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    rules = RULE_FILES[0].read_text(encoding="utf-8")
    names.update(re.findall(r"^\s*- record:\s*(\S+)", rules, re.M))
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


SERIES_CASES = [
    pytest.param("http_5xx_count > 5", {"http_5xx_count"}, id="comparison"),
    pytest.param(
        'max by (job) (mixed_exceptions_used_monthly{job=~"a|b"})',
        {"mixed_exceptions_used_monthly"},
        id="aggregation-with-matcher",
    ),
    pytest.param(
        '1000 * histogram_quantile(0.95, sum by (job, le) (rate(x_bucket{le!="+Inf"}[1m] offset 5m)))',
        {"x_bucket"},
        id="nested-functions-range-offset",
    ),
    pytest.param("a / on (job) group_left (instance) b:c:d", {"a", "b:c:d"}, id="vector-matching"),
]


@pytest.mark.parametrize(("expr", "expected"), SERIES_CASES)
def test_series_names_extracts_only_metric_names(expr: str, expected: set[str]) -> None:
    assert series_names(expr) == expected


def test_dashboard_is_importable_with_the_notice_panels(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"] == "KIS Estimator GA 1.0"
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    titles = [p["title"] for p in _panels(dashboard)]
    assert titles == [
        "Request rate by class",
        "P95 latency",
        "Evidence bundle size",
        "MIXED exceptions (current KST month)",
        "TAT median",
        "Auto-processing rate",
        "Review queue",
        "Error rate (5xx ÷ all)",
    ]
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(set(ids)) == len(ids)
    by_title = {p["title"]: p for p in _panels(dashboard)}
    reads = {
        title: set().union(*(series_names(t["expr"]) for t in p["targets"])) for title, p in by_title.items()
    }
    assert reads["Request rate by class"] == {"http_2xx_count", "http_4xx_count", "http_5xx_count"}
    assert reads["P95 latency"] == {"latency_p95_ms"}
    assert reads["Evidence bundle size"] == {"evidence_zip_bytes_avg"}
    assert "mixed_exceptions_used_monthly" in reads["MIXED exceptions (current KST month)"]


@pytest.mark.parametrize(
    ("title", "threshold"),
    [("P95 latency", 50), ("MIXED exceptions (current KST month)", 2), ("TAT median", 120)],
    ids=["p95-50ms", "mixed-limit-2", "tat-2min"],
)
def test_threshold_lines_show_the_notice_limits(
    dashboard: dict[str, Any], title: str, threshold: float
) -> None:
    panel = next(p for p in _panels(dashboard) if p["title"] == title)
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["custom"]["thresholdsStyle"]["mode"] == "line"
    assert threshold in [step["value"] for step in defaults["thresholds"]["steps"]]


def test_every_query_reads_only_series_we_export_or_record(dashboard: dict[str, Any]) -> None:
    known = known_series()
    unknown = {
        where: sorted(series_names(expr) - known)
        for where, expr in _queries(dashboard)
        if series_names(expr) - known
    }
    assert unknown == {}


def test_every_query_parses(dashboard: dict[str, Any], tmp_path: Path) -> None:
    promtool = prometheus_binary("promtool")
    # promtool has no "parse this expression" command; a recording rule per query makes it parse each.
    lines = ["groups:", "  - name: dashboard-queries", "    rules:"]
    for i, (where, expr) in enumerate(_queries(dashboard)):
        lines += [f"      - record: dashboard_query_{i}", f"        expr: {json.dumps(expr)}"]
        lines += ["        labels:", f"          panel: {json.dumps(where)}"]
    rules = tmp_path / "dashboard.rules.yml"
    rules.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_queries(dashboard))} rules found" in result.stdout
