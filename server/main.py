"""Composition root: settings → catalog → store → services → server (nothing happens at import)."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry

from server.api.server import RunningServer, ServiceDeps, create_server
from server.clock import Clock, SystemClock, monotonic_s
from server.engine.catalog import DEFAULT_CATALOG_DIR, Catalog, load_catalog
from server.evidence.signing import KeyRing, parse_keyring
from server.metrics import Metrics
from server.service.admin import AdminService
from server.service.estimates import EstimateService
from server.service.evidence import EvidenceArchive, EvidenceService
from server.service.rate_limit import RateLimiter
from server.service.reviews import ReviewService
from server.service.tokens import TokenService
from server.settings import Settings
from server.storage.repository import Store
from server.storage.sqlite import SqliteStore

log = logging.getLogger(__name__)
KEY_FILE_NAME = "evidence-keys"


@dataclass(frozen=True, slots=True)
class App:
    """A wired service: what ``serve`` runs and what integration tests start."""

    settings: Settings
    catalog: Catalog
    store: Store
    deps: ServiceDeps
    running: RunningServer
    metrics: Metrics
    keyring: KeyRing

    @property
    def port(self) -> int:
        return self.running.port

    def start(self) -> None:
        self.running.server.start()
        self.running.set_serving(True)
        log.info(
            "serving",
            extra={
                "port": self.port,
                "catalog_version": self.catalog.version,
                "database": self.settings.database_url,
            },
        )

    def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting calls, let in-flight calls finish (up to the grace period), close the store."""
        self.running.set_serving(False)
        self.running.server.stop(self.settings.shutdown_grace_s if grace_s is None else grace_s).wait()
        self.store.close()
        log.info("stopped")


def open_store(settings: Settings) -> Store:
    return SqliteStore(settings.sqlite_path)


def load_keyring(settings: Settings) -> KeyRing:
    """Evidence signing keys from settings, else from (or into) a key file beside the database."""
    if settings.evidence_keys:
        return parse_keyring(settings.evidence_keys, settings.evidence_active_key)
    path = settings.sqlite_path.parent / KEY_FILE_NAME
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(f"k1:{secrets.token_hex(32)}\n")
        log.info("created evidence signing key", extra={"path": str(path)})
    return parse_keyring(path.read_text(encoding="ascii").strip(), settings.evidence_active_key)


def build_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    address: str | None = None,
    registry: CollectorRegistry | None = None,
) -> App:
    """Wire everything; the server is bound but not started."""
    catalog = load_catalog(settings.catalog_dir or DEFAULT_CATALOG_DIR)
    keyring = load_keyring(settings)
    store = open_store(settings)
    clock = clock or SystemClock()
    metrics = Metrics(registry or CollectorRegistry())
    archive = EvidenceArchive(catalog, keyring, clock, metrics)
    quota = settings.mixed_monthly_quota
    evidence = EvidenceService(store, clock, metrics)
    deps = ServiceDeps(
        estimates=EstimateService(
            store, catalog, clock, archive=archive, metrics=metrics, mixed_monthly_quota=quota
        ),
        reviews=ReviewService(store, catalog, clock, archive, metrics, quota),
        evidence=evidence,
        admin=AdminService(store, clock, quota, settings.audit_retention_days),
        tokens=TokenService(store, clock),
        clock=clock,
        rate_limiter=RateLimiter(settings.rate_limit_per_hour, 3600.0, monotonic_s),
    )
    try:
        running = create_server(settings, deps, address)
    except Exception:
        store.close()
        raise
    return App(
        settings=settings,
        catalog=catalog,
        store=store,
        deps=deps,
        running=running,
        metrics=metrics,
        keyring=keyring,
    )


def serve(settings: Settings, address: str | None = None) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully. Returns the exit status."""
    try:
        app = build_app(settings, address=address)
    except (OSError, RuntimeError, ValueError) as exc:
        log.error("cannot start", extra={"error": str(exc)})
        return 1
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal received, draining", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    app.start()
    stop.wait()
    app.stop()
    return 0


def default_database_path() -> Path:
    return Settings().sqlite_path
