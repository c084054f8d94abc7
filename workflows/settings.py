"""WorkflowSettings: one frozen dataclass from ``KIS_*`` variables and/or a TOML file
(docs/conventions.md §8).

Namespaces: the workflows own the variables whose names start with one of :data:`PREFIXES`; the
service (``server/settings.py``) owns every other ``KIS_*`` name. Each side rejects unknown names in
its own namespace (with the closest known key as a hint) and ignores the other's. A TOML config file
(``--config``) uses the same names in lower case without ``KIS_`` (``jira_url = "..."``); unknown
keys are rejected there too. Environment variables override the file. Secrets are never printed.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from kis_estimator.workflows.errors import EXIT_CONFIG, WorkflowError

PREFIXES = (
    "KIS_JIRA_",
    "KIS_RELEASE_",
    "KIS_DEPLOY_",
    "KIS_ROLLBACK_",
    "KIS_PROMETHEUS_",
    "KIS_SLACK_",
    "KIS_SMTP_",
    "KIS_NOTIFY_",
    "KIS_STANDBY_",
    "KIS_TRACKER_",
    "KIS_OUTBOX_",
    "KIS_INCIDENT_",
    "KIS_ALERT_",
    "KIS_DASHBOARD_",
    "KIS_WORKFLOW_",
)
SECRETS = frozenset(
    {
        "jira_token",
        "release_token",
        "release_viewer_token",
        "smtp_password",
        "slack_webhook_url",
        "alert_bearer_token",
        "alert_basic_password",
    }
)


class WorkflowSettingsError(WorkflowError, ValueError):
    """A workflow setting is unknown or invalid; the message names it."""

    exit_code = EXIT_CONFIG


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise WorkflowSettingsError(f"{name}: expected a string")
    return value.strip()


def _opt_text(name: str, value: Any) -> str | None:
    return _text(name, value) or None


def _int(lo: int, hi: int) -> Callable[[str, Any], int]:
    def parse(name: str, value: Any) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise WorkflowSettingsError(f"{name}={value!r}: expected an integer") from None
        if not lo <= number <= hi:
            raise WorkflowSettingsError(f"{name}={value!r}: expected {lo} … {hi}")
        return number

    return parse


def _float(lo: float, hi: float) -> Callable[[str, Any], float]:
    def parse(name: str, value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise WorkflowSettingsError(f"{name}={value!r}: expected a number") from None
        if not lo <= number <= hi:
            raise WorkflowSettingsError(f"{name}={value!r}: expected {lo} … {hi}")
        return number

    return parse


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise WorkflowSettingsError(f"{name}={value!r}: expected true or false")


def _url(name: str, value: Any) -> str | None:
    text = _text(name, value)
    if not text:
        return None
    if not text.startswith(("http://", "https://")):
        raise WorkflowSettingsError(f"{name}={text!r}: expected an http(s) URL")
    return text.rstrip("/")


def _address(name: str, value: Any) -> str:
    text = _text(name, value)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise WorkflowSettingsError(f"{name}={text!r}: expected HOST:PORT")
    return text


def _list(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(_text(name, v) for v in value if _text(name, v))
    return tuple(v.strip() for v in _text(name, value).split(",") if v.strip())


def _minutes(name: str, value: Any) -> tuple[int, ...]:
    items = _list(name, value) if not isinstance(value, list) else tuple(str(v) for v in value)
    try:
        out = tuple(int(v) for v in items)
    except ValueError:
        raise WorkflowSettingsError(f"{name}={value!r}: expected minutes like 15,30,60") from None
    if not out or any(m <= 0 for m in out) or list(out) != sorted(set(out)):
        raise WorkflowSettingsError(f"{name}={value!r}: expected increasing positive minutes")
    return out


@dataclass(frozen=True, slots=True)
class WorkflowSettings:
    """Everything the release and incident workflows need; defaults run locally (file tracker)."""

    # Jira (Server/DC REST v2). Without jira_url the file tracker under tracker_dir is used.
    jira_url: str | None = None
    jira_user: str | None = None
    jira_token: str | None = field(default=None, repr=False)
    jira_project: str = "KIS"
    # Issue types and priorities of the instance (defaults: a stock Jira Software project with the
    # default priority scheme; the seed's Critical/Blocker do not exist there and map to Highest).
    jira_issue_type_deployment: str = "Task"
    jira_issue_type_incident: str = "Bug"
    jira_priority_high: str = "High"
    jira_priority_critical: str = "Highest"
    jira_priority_blocker: str = "Highest"
    jira_timeout_s: float = 10.0
    jira_bug_label: str = "kis-functional-bug"
    jira_assignee: str | None = None
    jira_watchers: tuple[str, ...] = ()
    jira_components: tuple[str, ...] = ()
    tracker_dir: Path = Path("var/tracker")
    outbox_dir: Path = Path("var/outbox")
    # Release.
    release_environment: str = "Production"
    release_target: str = "127.0.0.1:8787"
    release_token: str | None = field(default=None, repr=False)  # ESTIMATOR or ADMIN token for checks
    release_viewer_token: str | None = field(default=None, repr=False)  # non-admin, for the RBAC check
    release_dir: Path = Path("var/release")
    release_endpoint_url: str = "https://kis.example.com/v1/"
    release_server_name: str = "prod-kis-01"
    release_require_approval: bool = True  # production promotions need --approved-by
    deploy_command: str | None = None  # shell command; {artifact} {version} {manifest} substituted
    rollback_command: str | None = None
    rollback_budget_s: float = 180.0
    prometheus_url: str | None = None
    dashboard_url: str = "http://monitor.kis.local/estimator"
    release_slo_burst_requests: int = 200
    # Notifications.
    slack_webhook_url: str | None = field(default=None, repr=False)
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_starttls: bool = False
    smtp_from: str = "kis-devops@localhost"
    smtp_to: tuple[str, ...] = ()
    # Hot standby checkpoints, minutes after the deploy.
    standby_checkpoints_min: tuple[int, ...] = (15, 30, 60)
    # Incident.
    incident_bug_threshold: int = 3
    alert_listen: str = "127.0.0.1:9095"
    # The webhook can roll production back: it requires Alertmanager's http_config credentials.
    alert_bearer_token: str | None = field(default=None, repr=False)
    alert_basic_user: str | None = None
    alert_basic_password: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={'***' if f.name in SECRETS and getattr(self, f.name) else getattr(self, f.name)!r}"
            for f in fields(self)
        )
        return f"WorkflowSettings({shown})"

    @classmethod
    def load(cls, env: Mapping[str, str], config_file: Path | None = None) -> WorkflowSettings:
        """Settings from an optional TOML file, overridden by ``KIS_*`` variables of ``env``."""
        values: dict[str, Any] = {}
        if config_file is not None:
            try:
                data = tomllib.loads(config_file.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise WorkflowSettingsError(f"config file {config_file}: {exc}") from None
            for key, raw in data.items():
                name = _known(key, key)
                values[name] = _PARSERS[name](key, raw)
        for key, raw in env.items():
            if not key.startswith(PREFIXES):
                continue
            name = _known(key.removeprefix("KIS_").lower(), key)
            values[name] = _PARSERS[name](key, raw)
        return cls(**values)

    @classmethod
    def from_process_env(cls, config_file: Path | None = None) -> WorkflowSettings:
        return cls.load(os.environ, config_file)


def _known(name: str, shown: str) -> str:
    if name in _PARSERS:
        return name
    # Suggest within the same namespace first (KIS_JIRA_PASSWORD → a KIS_JIRA_* name, not SMTP's).
    family = [p for p in _PARSERS if p.split("_", 1)[0] == name.split("_", 1)[0]]
    close = difflib.get_close_matches(name, family, n=1, cutoff=0.5) or difflib.get_close_matches(
        name, list(_PARSERS), n=1
    )
    hint = (
        f"; did you mean {'KIS_' + close[0].upper() if shown.startswith('KIS_') else close[0]}?"
        if close
        else ""
    )
    raise WorkflowSettingsError(f"unknown setting {shown}{hint}")


_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "jira_url": _url,
    "jira_user": _opt_text,
    "jira_token": _opt_text,
    "jira_project": _text,
    "jira_issue_type_deployment": _text,
    "jira_issue_type_incident": _text,
    "jira_priority_high": _text,
    "jira_priority_critical": _text,
    "jira_priority_blocker": _text,
    "jira_timeout_s": _float(0.1, 300.0),
    "jira_bug_label": _text,
    "jira_assignee": _opt_text,
    "jira_watchers": _list,
    "jira_components": _list,
    "tracker_dir": lambda n, v: Path(_text(n, v)),
    "outbox_dir": lambda n, v: Path(_text(n, v)),
    "release_environment": _text,
    "release_target": _address,
    "release_token": _opt_text,
    "release_viewer_token": _opt_text,
    "release_dir": lambda n, v: Path(_text(n, v)),
    "release_endpoint_url": _text,
    "release_server_name": _text,
    "release_require_approval": _bool,
    "deploy_command": _opt_text,
    "rollback_command": _opt_text,
    "rollback_budget_s": _float(1.0, 3600.0),
    "prometheus_url": _url,
    "dashboard_url": _text,
    "release_slo_burst_requests": _int(10, 100_000),
    "slack_webhook_url": _url,
    "smtp_host": _opt_text,
    "smtp_port": _int(1, 65535),
    "smtp_user": _opt_text,
    "smtp_password": _opt_text,
    "smtp_starttls": _bool,
    "smtp_from": _text,
    "smtp_to": _list,
    "standby_checkpoints_min": _minutes,
    "incident_bug_threshold": _int(1, 1000),
    "alert_listen": _address,
    "alert_bearer_token": _opt_text,
    "alert_basic_user": _opt_text,
    "alert_basic_password": _opt_text,
}

assert set(_PARSERS) == {f.name for f in fields(WorkflowSettings)}
assert all(("KIS_" + name.upper()).startswith(PREFIXES) for name in _PARSERS), "every setting in a prefix"
