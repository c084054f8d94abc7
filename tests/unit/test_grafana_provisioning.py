"""The dashboard loads the way Grafana's file provisioning loads it.

A small loader with Grafana's rules for what it reads: the provider file's ``apiVersion: 1``,
``type: file`` providers and ``options.path``; the datasource file's datasources (name, uid, type,
``${VAR}`` expansion of values); a dashboard file is JSON with a ``uid`` (≤ 40 characters) and a
``title``; every datasource reference (panels, targets, variables, annotations) is a provisioned uid,
Grafana's built-in ``-- Grafana --``, or ``${name}`` naming a ``datasource`` variable whose plugin type
a provisioned datasource has; every ``$var`` in a query is a defined variable or a Grafana global.
``${DS_…}`` import placeholders cannot be resolved by provisioning and are refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROVISIONING = REPO / "deploy/grafana/provisioning"
DASHBOARD_DIR = REPO / "deploy/grafana"
ENV = {"KIS_PROMETHEUS_URL": "http://127.0.0.1:9090"}
GLOBAL_VARIABLES = {"__interval", "__rate_interval", "__range", "__interval_ms", "__range_s", "__all"}
_ENV = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")
_VAR_REF = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?\}|([A-Za-z_][A-Za-z0-9_]*))")


class ProvisioningError(ValueError):
    pass


def _expand(value: Any, env: dict[str, str]) -> Any:
    if isinstance(value, str):
        return _ENV.sub(lambda m: env.get(m.group(1), ""), value)
    if isinstance(value, list):
        return [_expand(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, env) for k, v in value.items()}
    return value


def load_datasources(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    by_uid: dict[str, dict[str, Any]] = {}
    for path in sorted((PROVISIONING / "datasources").glob("*.yaml")):
        doc = _expand(yaml.safe_load(path.read_text()), env)
        if doc.get("apiVersion") != 1:
            raise ProvisioningError(f"{path.name}: apiVersion must be 1")
        for ds in doc.get("datasources", []):
            for key in ("name", "type", "uid", "url"):
                if not ds.get(key):
                    raise ProvisioningError(f"{path.name}: datasource without {key}")
            by_uid[ds["uid"]] = ds
    if sum(bool(ds.get("isDefault")) for ds in by_uid.values()) > 1:
        raise ProvisioningError("more than one default datasource")
    return by_uid


def _walk_refs(node: Any, where: str) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                found.append((where, value))
            found += _walk_refs(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _walk_refs(value, f"{where}[{i}]")
    return found


def load_dashboard(path: Path, datasources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text())
    if not dashboard.get("title") or not 0 < len(dashboard.get("uid", "")) <= 40:
        raise ProvisioningError(f"{path.name}: needs a title and a uid of 1-40 characters")
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
    types = {ds["type"] for ds in datasources.values()}
    for where, ref in _walk_refs(dashboard, "dashboard"):
        uid = ref.get("uid") if isinstance(ref, dict) else ref
        if uid in (None, "-- Grafana --", "grafana") or uid in datasources:
            continue
        match = re.fullmatch(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", str(uid))
        if match is None:
            raise ProvisioningError(f"{where}: datasource {uid!r} is not provisioned")
        var = variables.get(match.group(1))
        if var is None or var.get("type") != "datasource":
            raise ProvisioningError(
                f"{where}: {uid!r} is not a datasource variable (import-only placeholder)"
            )
        if var.get("query") not in types:
            raise ProvisioningError(f"{where}: no provisioned datasource of type {var.get('query')!r}")
    for where, expr in _exprs(dashboard):
        for m in _VAR_REF.finditer(expr):
            name = m.group(1) or m.group(2)
            if name not in variables and name not in GLOBAL_VARIABLES:
                raise ProvisioningError(f"{where}: ${name} is not a variable of the dashboard")
    return dashboard


def _exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            if "expr" in target:
                out.append((f"panel {panel.get('title')!r}", target["expr"]))
    return out


def provision(env: dict[str, str]) -> list[dict[str, Any]]:
    datasources = load_datasources(env)
    dashboards = []
    for path in sorted((PROVISIONING / "dashboards").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if doc.get("apiVersion") != 1:
            raise ProvisioningError(f"{path.name}: apiVersion must be 1")
        for provider in doc["providers"]:
            if provider.get("type") != "file" or not provider.get("options", {}).get("path"):
                raise ProvisioningError(
                    f"{path.name}: provider {provider.get('name')} needs type file and a path"
                )
            # the provider's path is where the README installs deploy/grafana/*.json
            dashboards += [load_dashboard(p, datasources) for p in sorted(DASHBOARD_DIR.glob("*.json"))]
    return dashboards


def test_the_dashboard_provisions_with_the_provisioned_datasource() -> None:
    dashboards = provision({"KIS_PROMETHEUS_URL": "http://127.0.0.1:9090"})
    assert [d["title"] for d in dashboards] == ["KIS Estimator GA 1.0"]
    datasources = load_datasources({"KIS_PROMETHEUS_URL": "http://prom:9090"})
    assert datasources["kis-prometheus"]["url"] == "http://prom:9090"


def test_an_import_only_placeholder_is_refused(tmp_path: Path) -> None:
    text = (DASHBOARD_DIR / "kis-estimator.json").read_text().replace("${datasource}", "${DS_PROMETHEUS}", 1)
    broken = tmp_path / "kis-estimator.json"
    broken.write_text(text)
    with pytest.raises(ProvisioningError, match="DS_PROMETHEUS"):
        load_dashboard(broken, load_datasources(ENV))


def test_an_unknown_query_variable_is_refused(tmp_path: Path) -> None:
    text = (DASHBOARD_DIR / "kis-estimator.json").read_text().replace("$job", "$jobb", 1)
    broken = tmp_path / "kis-estimator.json"
    broken.write_text(text)
    with pytest.raises(ProvisioningError, match=r"\$jobb"):
        load_dashboard(broken, load_datasources(ENV))
