"""Service configuration: one frozen Settings built from a mapping (docs/conventions.md §8).

Every variable has the ``KIS_`` prefix. An unknown ``KIS_*`` name stops start-up with a suggestion
of the closest known key; values are validated here, so a bad value never reaches the service.

A TOML file (``--config FILE`` or ``KIS_CONFIG_FILE``) may hold the same settings, keyed by the
variable's name without ``KIS_`` in lower case (``database_url = "sqlite:////srv/kis/kis.db"``);
``KIS_*`` variables override the file. Unknown keys are refused like unknown variables.

Data directory: ``KIS_DATA_DIR``, always absolute, holds the default SQLite store (``kis.db``) and
the generated evidence key. Its default does not depend on the working directory: systemd's
``$STATE_DIRECTORY`` (``StateDirectory=``), else ``$XDG_STATE_HOME/kis-estimator``, else
``$HOME/.local/state/kis-estimator``, else ``/var/lib/kis-estimator``.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc

DATABASE_FILE = "kis.db"
APP_DIR = "kis-estimator"
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


def _absolute_dir(name: str, value: str) -> Path:
    path = _path(name, value)
    if not path.is_absolute():
        raise SettingsError(f"{name}={value!r}: expected an absolute path")
    return path


MAX_CPU = 4095  # the kernel's largest CPU number on common builds (CONFIG_NR_CPUS)


def cpu_list(value: str) -> tuple[int, ...]:
    """The CPUs of a list like ``0-3,6`` (taskset's and cpuset's syntax), sorted, each once."""
    cpus: set[int] = set()
    for part in value.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"{part.strip()!r} is not a CPU number or a range like 0-3")
        lo, hi = int(first), int(last) if dash else int(first)
        if lo > hi or hi > MAX_CPU:
            raise ValueError(f"{part.strip()!r} is not a range of CPUs 0 … {MAX_CPU}")
        cpus.update(range(lo, hi + 1))
    return tuple(sorted(cpus))


def parse_cpu_affinity(name: str, value: str) -> str:
    """``none``, ``auto``, or a CPU list (normalised to ``0,1,2``); see Settings.cpu_affinity."""
    if value.lower() in ("none", "auto"):
        return value.lower()
    try:
        return ",".join(map(str, cpu_list(value)))
    except ValueError as exc:
        expected = "expected none, auto or a CPU list like 0-3,6"
        raise SettingsError(f"{name}={value!r}: {expected} ({exc})") from None


def default_data_dir(env: Mapping[str, str]) -> Path:
    """The data directory when ``KIS_DATA_DIR`` is not set (see the module docstring)."""
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state and Path(state).is_absolute():
        return Path(state)
    xdg = env.get("XDG_STATE_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / APP_DIR
    home = env.get("HOME", "")
    if home and Path(home).is_absolute():
        return Path(home) / ".local" / "state" / APP_DIR
    return Path("/var/lib") / APP_DIR


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
    """Service settings; defaults run out of the box (SQLite in the data directory, loopback).

    Build them with :meth:`load` / :meth:`from_env`, which derive the defaults of ``data_dir`` and
    ``database_url`` from the environment; the field defaults below are for tests that pass both.
    """

    grpc_address: str = "127.0.0.1:8787"
    data_dir: Path = Path("/var/lib") / APP_DIR
    database_url: str = f"sqlite:////var/lib/{APP_DIR}/{DATABASE_FILE}"
    catalog_dir: Path | None = None  # None: the catalog packaged with the service
    max_message_bytes: int = 1024 * 1024
    max_workers: int = 16
    # Concurrent creates share one write transaction of at most this many (server/service/
    # group_commit.py); 1 writes each create alone on its own thread.
    group_commit_max_batch: int = 64
    # Streaming calls (reflection, evidence-bundle downloads) run on threads of their own, never on
    # the max_workers RPC threads: at most this many at once (more are refused STREAMS_EXHAUSTED),
    # this many per client address (raise it behind a proxy: every client has the proxy's address),
    # and each is cancelled after this many seconds without progress (server/api/streams.py).
    max_streams: int = 16
    max_streams_per_peer: int = 8
    stream_idle_s: float = 30.0
    shutdown_grace_s: float = 10.0
    log_level: str = "INFO"
    mixed_monthly_quota: int = 2
    metrics_address: str = "127.0.0.1:8788"
    rate_limit_per_hour: int = 1000
    # Calls that fail authentication, per client address (IPv4 address, IPv6 /64), per replica: no
    # such call can succeed, so the budget only bounds the work (token look-ups, audit rows) that
    # a caller without a valid token can cause; over it → RATE_LIMITED instead of UNAUTHENTICATED.
    unauthenticated_rate_limit_per_hour: int = 300
    # Identical refused evidence-bundle attempts (same caller, address, id, outcome) within this
    # window are audited as one record plus one record counting the repeats (server/service/denials.py).
    denial_audit_window_s: float = 60.0
    # What one accepted estimate may add to the store: evidence ZIP + JSON document + stored reply.
    # The largest request the validation accepts takes ~524 KiB (bench/store_size.py), a typical one
    # ~44 KiB; above the bound CreateEstimate is refused ESTIMATE_TOO_LARGE and nothing is stored.
    max_stored_bytes_per_estimate: int = 1024 * 1024
    # "kid:hexkey,kid:hexkey" (first = active unless KIS_EVIDENCE_ACTIVE_KEY); unset: a key file
    # `evidence-keys` is created beside the SQLite database on first start (mode 0600).
    evidence_keys: str | None = field(default=None, repr=False)
    evidence_active_key: str | None = None
    # Audit records older than this many days may be pruned (`kis-estimator audit prune`); 1825 days
    # = 5 years, the Korean statutory period for business records.
    audit_retention_days: int = 1825
    # Acceptance sandboxes (server/service/sandbox.py): how many may be open at once (0 = none) and
    # after how many idle seconds one is closed and deleted.
    sandbox_max_open: int = 4
    sandbox_idle_s: float = 600.0
    # The quote document (견적서, server/api/quote/): validity printed on it, the supplier block, and the
    # TrueType font the PDF embeds (default: Debian's NanumGothic).
    quote_validity_days: int = 30
    quote_supplier_company: str = "KIS"
    quote_supplier_representative: str = ""
    quote_supplier_business_no: str = ""
    quote_supplier_address: str = ""
    quote_supplier_phone: str = ""
    quote_font: Path | None = None
    # Native TLS on the gRPC port (PEM files): certificate and key, and a client CA that turns on
    # mutual TLS (every client must present a certificate it signed). Unset: plaintext, for a
    # loopback address or behind a TLS-terminating proxy (deploy/nginx/).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # Serving processes sharing the port (SO_REUSEPORT); 0 = one per CPU core. See server/workers.py.
    workers: int = 1
    # The CPU each serving process is pinned to (server/workers.py): none (the kernel places every
    # thread), auto (worker i on the i-th CPU this process may use), or a CPU list such as 2-3 that
    # worker i takes its CPU from (the i-th, round robin). Off by default: two services pinned
    # without knowing of each other would share a core while another sits idle.
    cpu_affinity: str = "none"

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError("KIS_TLS_CERT and KIS_TLS_KEY go together (both PEM files, or neither)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise SettingsError("KIS_TLS_CLIENT_CA (mutual TLS) needs KIS_TLS_CERT and KIS_TLS_KEY")

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
        beside the SQLite database, or in the data directory for PostgreSQL."""
        base = self.sqlite_path.parent if self.database_url.startswith("sqlite:///") else self.data_dir
        return base / "evidence-keys"

    @classmethod
    def load(cls, env: Mapping[str, str], config_file: Path | None = None) -> Settings:
        """Settings from an optional TOML file, overridden by the ``KIS_*`` variables of ``env``.

        Without ``config_file``, ``KIS_CONFIG_FILE`` of ``env`` names the file, if set.
        """
        if config_file is None and env.get(CONFIG_FILE_VARIABLE):
            config_file = Path(env[CONFIG_FILE_VARIABLE])
        values: dict[str, Any] = {}
        if config_file is not None:
            values |= _from_file(config_file)
        known = {f"KIS_{name.upper()}": name for name in _PARSERS}
        for key, raw in env.items():
            if not key.startswith("KIS_") or key == CONFIG_FILE_VARIABLE:
                continue
            if key not in known:
                if key in _NON_SERVICE_KEYS or key.startswith(WORKFLOW_PREFIXES):
                    continue
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise SettingsError(f"unknown setting {key}{hint}")
            values[known[key]] = _PARSERS[known[key]](key, raw.strip())
        values.setdefault("data_dir", default_data_dir(env))
        values.setdefault("database_url", f"sqlite:///{values['data_dir'] / DATABASE_FILE}")
        return cls(**values)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from ``KIS_*`` variables of ``env``; unknown ``KIS_*`` names are errors."""
        return cls.load(env)

    @classmethod
    def from_process_env(cls, config_file: Path | None = None) -> Settings:
        """Settings of this process's environment (and config file)."""
        return cls.load(os.environ, config_file)


def _from_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"config file {path}: {exc}") from None
    values: dict[str, Any] = {}
    for key, raw in data.items():
        if key not in _PARSERS:
            close = difflib.get_close_matches(key, list(_PARSERS), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise SettingsError(f"config file {path}: unknown setting {key!r}{hint}")
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise SettingsError(f"config file {path}: {key} must be a string or a number")
        values[key] = _PARSERS[key](f"{path}: {key}", str(raw).strip())
    return values


CONFIG_FILE_VARIABLE = "KIS_CONFIG_FILE"

_PARSERS: Mapping[str, Callable[[str, str], Any]] = {
    "grpc_address": _parse_address,
    "data_dir": _absolute_dir,
    "database_url": _database_url,
    "catalog_dir": _path,
    "max_message_bytes": _int_in(4096, 64 * 1024 * 1024),
    "max_workers": _int_in(1, 256),
    "group_commit_max_batch": _int_in(1, 1024),
    "max_streams": _int_in(1, 256),
    "max_streams_per_peer": _int_in(1, 256),
    "stream_idle_s": _float_in(0.5, 3600.0),
    "shutdown_grace_s": _float_in(0.0, 300.0),
    "log_level": _choice("DEBUG", "INFO", "WARNING", "ERROR"),
    "mixed_monthly_quota": _int_in(0, 1000),
    "metrics_address": _parse_address,
    "rate_limit_per_hour": _int_in(1, 10_000_000),
    "unauthenticated_rate_limit_per_hour": _int_in(1, 10_000_000),
    "denial_audit_window_s": _float_in(1.0, 3600.0),
    "max_stored_bytes_per_estimate": _int_in(64 * 1024, 64 * 1024 * 1024),
    "evidence_keys": lambda name, value: value,
    "evidence_active_key": lambda name, value: value,
    "audit_retention_days": _int_in(1, 36500),
    "sandbox_max_open": _int_in(0, 64),
    "sandbox_idle_s": _float_in(10.0, 86400.0),
    "quote_validity_days": _int_in(1, 3650),
    "quote_supplier_company": lambda name, value: value,
    "quote_supplier_representative": lambda name, value: value,
    "quote_supplier_business_no": lambda name, value: value,
    "quote_supplier_address": lambda name, value: value,
    "quote_supplier_phone": lambda name, value: value,
    "quote_font": _path,
    "tls_cert": _path,
    "tls_key": _path,
    "tls_client_ca": _path,
    "workers": _int_in(0, 64),
    "cpu_affinity": parse_cpu_affinity,
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
_NON_SERVICE_KEYS = frozenset(
    {"KIS_REQUIRE_PG", "KIS_TEST_DATABASE_URL", "KIS_TOKEN", "KIS_TARGET", "KIS_TLS_CA"}
)


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Where the CLI client calls: ``--target``/``KIS_TARGET`` and ``--token``/``KIS_TOKEN``."""

    target: str = DEFAULT_TARGET
    token: str | None = None
    # TLS: the CA (PEM) that signed the server's certificate (``--tls-ca``/``KIS_TLS_CA``); None:
    # plaintext. A client certificate for mutual TLS is not offered by the CLI.
    tls_ca: Path | None = None

    def __repr__(self) -> str:
        return (
            f"ClientSettings(target={self.target!r}, token={'***' if self.token else None}, "
            f"tls_ca={self.tls_ca!r})"
        )

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        target: str | None = None,
        token: str | None = None,
        tls_ca: str | None = None,
    ) -> ClientSettings:
        target = target or env.get("KIS_TARGET") or DEFAULT_TARGET
        ca = tls_ca or env.get("KIS_TLS_CA") or None
        return cls(
            target=_parse_address("--target", target),
            token=token or env.get("KIS_TOKEN") or None,
            tls_ca=Path(ca) if ca else None,
        )

    @classmethod
    def from_process_env(
        cls, *, target: str | None = None, token: str | None = None, tls_ca: str | None = None
    ) -> ClientSettings:
        return cls.from_env(os.environ, target=target, token=token, tls_ca=tls_ca)

    def channel(self, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A channel to ``target``: TLS against ``tls_ca`` when set, else plaintext."""
        if self.tls_ca is None:
            return grpc.insecure_channel(self.target, options=list(options))
        try:
            ca = self.tls_ca.read_bytes()
        except OSError as exc:
            raise SettingsError(f"KIS_TLS_CA {self.tls_ca}: {exc.strerror or exc}") from None
        return grpc.secure_channel(self.target, grpc.ssl_channel_credentials(ca), options=list(options))


assert set(_PARSERS) == {f.name for f in fields(Settings)}
