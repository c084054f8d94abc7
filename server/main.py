"""Composition root: settings → catalog → store → services → server (nothing happens at import)."""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry

from server.api.server import RunningServer, ServiceDeps, create_server
from server.clock import Clock, SystemClock
from server.engine.catalog import DEFAULT_CATALOG_DIR, Catalog, load_catalog
from server.metrics import Metrics
from server.service.estimates import EstimateService
from server.service.tokens import TokenService
from server.settings import Settings
from server.storage.repository import Store
from server.storage.sqlite import SqliteStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class App:
    """A wired service: what ``serve`` runs and what integration tests start."""

    settings: Settings
    catalog: Catalog
    store: Store
    deps: ServiceDeps
    running: RunningServer
    metrics: Metrics

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


def build_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    address: str | None = None,
    registry: CollectorRegistry | None = None,
) -> App:
    """Wire everything; the server is bound but not started."""
    catalog = load_catalog(settings.catalog_dir or DEFAULT_CATALOG_DIR)
    store = open_store(settings)
    clock = clock or SystemClock()
    metrics = Metrics(registry or CollectorRegistry())
    deps = ServiceDeps(
        estimates=EstimateService(store, catalog, clock, metrics=metrics), tokens=TokenService(store, clock)
    )
    try:
        running = create_server(settings, deps, address)
    except Exception:
        store.close()
        raise
    return App(settings=settings, catalog=catalog, store=store, deps=deps, running=running, metrics=metrics)


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
