"""Service configuration: one frozen Settings built from a mapping (STYLE.md §2.8).

Every variable has the ``KIS_`` prefix. An unknown ``KIS_*`` name stops start-up with a suggestion
of the closest known key; values are validated here, so a bad value never reaches the service.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

DEFAULT_DATABASE_PATH = Path("var") / "kis.db"
DEFAULT_TARGET = "127.0.0.1:8787"


class SettingsError(ValueError):
    """A configuration value is unknown or invalid; the message names the variable."""


def _parse_address(name: str, value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"{name}={value!r}: expected HOST:PORT (port 0-65535)")
    return value


def _int_in(lo: int, hi: int) -> Callable[[str, str], int]:
    def parse(name: str, value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise SettingsError(f"{name}={value!r}: expected an integer") from None
        if not lo <= number <= hi:
            raise SettingsError(f"{name}={value!r}: expected {lo} … {hi}")
        return number

    return parse


def _float_in(lo: float, hi: float) -> Callable[[str, str], float]:
    def parse(name: str, value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise SettingsError(f"{name}={value!r}: expected a number") from None
        if not lo <= number <= hi:
            raise SettingsError(f"{name}={value!r}: expected {lo} … {hi}")
        return number

    return parse


def _choice(*allowed: str) -> Callable[[str, str], str]:
    def parse(name: str, value: str) -> str:
        if value.upper() not in allowed:
            raise SettingsError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
        return value.upper()

    return parse


def _path(name: str, value: str) -> Path:
    if not value:
        raise SettingsError(f"{name}: empty path")
    return Path(value)


def _database_url(name: str, value: str) -> str:
    """``sqlite:///PATH`` or ``postgresql://[USER@]HOST[:PORT]/DBNAME[?PARAM=VALUE…]`` (libpq URL).

    A PostgreSQL password is refused in the URL (also as ``?password=``): the URL is logged at
    start-up and shown by ``repr(Settings)``; libpq reads it from ``PGPASSWORD`` or ``~/.pgpass``.
    """
    if value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
        return value
    if value.startswith("postgresql://"):
        # never echo the value below: it may hold the very password being refused
        try:
            parts = urlsplit(value)
            # ValueError when not a number in 0-65535; libpq's multi-host form h1:p1,h2:p2 is not checked
            port = None if "," in parts.netloc else parts.port
        except ValueError:
            raise SettingsError(f"{name}: malformed postgresql:// URL (host or port)") from None
        if port == 0:
            raise SettingsError(f"{name}: port 0 in the postgresql:// URL")
        if parts.password is not None or "password" in parse_qs(parts.query):
            raise SettingsError(
                f"{name}: no password in the URL (it is logged); set PGPASSWORD or use ~/.pgpass"
            )
        if not parts.path.strip("/"):
            raise SettingsError(f"{name}: the postgresql:// URL needs a database name (…/DBNAME)")
        return value
    raise SettingsError(
        f"{name}={value!r}: expected sqlite:///PATH or postgresql://[USER@]HOST[:PORT]/DBNAME"
    )


@dataclass(frozen=True, slots=True)
class Settings:
    """Service settings; defaults run out of the box (SQLite under var/, loopback)."""

    grpc_address: str = "127.0.0.1:8787"
    database_url: str = f"sqlite:///{DEFAULT_DATABASE_PATH}"
    catalog_dir: Path | None = None  # None: the catalog packaged with the service
    max_message_bytes: int = 1024 * 1024
    max_workers: int = 16
    shutdown_grace_s: float = 10.0
    log_level: str = "INFO"
    mixed_monthly_quota: int = 2
    metrics_address: str = "127.0.0.1:8788"
    rate_limit_per_hour: int = 1000
    # "kid:hexkey,kid:hexkey" (first = active unless KIS_EVIDENCE_ACTIVE_KEY); unset: a key file
    # `evidence-keys` is created beside the SQLite database on first start (mode 0600).
    evidence_keys: str | None = field(default=None, repr=False)
    evidence_active_key: str | None = None
    # Audit records older than this many days may be pruned (`kis-estimator audit prune`); 1825 days
    # = 5 years, the Korean statutory period for business records.
    audit_retention_days: int = 1825

    def __repr__(self) -> str:
        secret = {"evidence_keys"}
        shown = ", ".join(
            f"{f.name}={'***' if f.name in secret and getattr(self, f.name) else repr(getattr(self, f.name))}"
            for f in fields(self)
        )
        return f"Settings({shown})"

    @property
    def sqlite_path(self) -> Path:
        """The SQLite file of ``database_url``."""
        return Path(self.database_url.removeprefix("sqlite:///"))

    @property
    def evidence_key_file(self) -> Path:
        """Where the generated evidence signing key lives when ``evidence_keys`` is not set:
        beside the SQLite database, or ``var/`` for PostgreSQL."""
        base = self.sqlite_path.parent if self.database_url.startswith("sqlite:///") else Path("var")
        return base / "evidence-keys"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from ``KIS_*`` variables of ``env``; unknown ``KIS_*`` names are errors."""
        known = {f"KIS_{name.upper()}": (name, parser) for name, parser in _PARSERS.items()}
        values: dict[str, Any] = {}
        for key, raw in env.items():
            if not key.startswith("KIS_"):
                continue
            if key not in known:
                if key in _NON_SERVICE_KEYS or key.startswith(WORKFLOW_PREFIXES):
                    continue
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise SettingsError(f"unknown setting {key}{hint}")
            name, parser = known[key]
            values[name] = parser(key, raw.strip())
        return cls(**values)

    @classmethod
    def from_process_env(cls) -> Settings:
        """Settings of this process's environment."""
        return cls.from_env(os.environ)


_PARSERS: Mapping[str, Callable[[str, str], Any]] = {
    "grpc_address": _parse_address,
    "database_url": _database_url,
    "catalog_dir": _path,
    "max_message_bytes": _int_in(4096, 64 * 1024 * 1024),
    "max_workers": _int_in(1, 256),
    "shutdown_grace_s": _float_in(0.0, 300.0),
    "log_level": _choice("DEBUG", "INFO", "WARNING", "ERROR"),
    "mixed_monthly_quota": _int_in(0, 1000),
    "metrics_address": _parse_address,
    "rate_limit_per_hour": _int_in(1, 10_000_000),
    "evidence_keys": lambda name, value: value,
    "evidence_active_key": lambda name, value: value,
    "audit_retention_days": _int_in(1, 36500),
}

# The release/incident workflows own these KIS_* namespaces (workflows/settings.py PREFIXES); the
# service ignores them and rejects every other unknown KIS_* name.
WORKFLOW_PREFIXES = (
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
# KIS_* variables read by other programs (clients, the test suite, CI), not by the service.
_NON_SERVICE_KEYS = frozenset({"KIS_REQUIRE_PG", "KIS_TEST_DATABASE_URL", "KIS_TOKEN", "KIS_TARGET"})


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Where the CLI client calls: ``--target``/``KIS_TARGET`` and ``--token``/``KIS_TOKEN``."""

    target: str = DEFAULT_TARGET
    token: str | None = None

    def __repr__(self) -> str:
        return f"ClientSettings(target={self.target!r}, token={'***' if self.token else None})"

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], *, target: str | None = None, token: str | None = None
    ) -> ClientSettings:
        target = target or env.get("KIS_TARGET") or DEFAULT_TARGET
        return cls(target=_parse_address("--target", target), token=token or env.get("KIS_TOKEN") or None)

    @classmethod
    def from_process_env(cls, *, target: str | None = None, token: str | None = None) -> ClientSettings:
        return cls.from_env(os.environ, target=target, token=token)


assert set(_PARSERS) == {f.name for f in fields(Settings)}
