"""Composition root: settings → catalog → store → services → server (nothing happens at import)."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry

from kis_estimator.server.api.metrics_interceptor import MetricsInterceptor
from kis_estimator.server.api.server import RunningServer, ServiceDeps, api_services, create_server
from kis_estimator.server.api.server_info import ServerInfoServicer
from kis_estimator.server.api.streams import StreamsCollector
from kis_estimator.server.clock import Clock, SystemClock, monotonic_s
from kis_estimator.server.engine.audit import SANDBOX_OPENED
from kis_estimator.server.engine.catalog import DEFAULT_CATALOG_DIR, Catalog, load_catalog
from kis_estimator.server.engine.model import Status
from kis_estimator.server.engine.months import kst_month_of
from kis_estimator.server.evidence.signing import KeyRing, parse_keyring
from kis_estimator.server.metrics import Metrics, StoreGauges, StoreGaugesCollector
from kis_estimator.server.metrics_http import MetricsHttpServer, start_metrics_http
from kis_estimator.server.service.admin import AdminService
from kis_estimator.server.service.caller import Caller
from kis_estimator.server.service.denials import DenialAudit
from kis_estimator.server.service.estimates import EstimateService
from kis_estimator.server.service.evidence import EvidenceArchive, EvidenceService
from kis_estimator.server.service.mixed_quota import mixed_usage
from kis_estimator.server.service.paging import PAGE_TOKEN_KEY_PURPOSE, PageTokens
from kis_estimator.server.service.rate_limit import Limiter, RateLimiter
from kis_estimator.server.service.reviews import ReviewService
from kis_estimator.server.service.sandbox import Sandboxes, SandboxFactory, ServiceSet
from kis_estimator.server.service.shared_rate_limit import SharedRateLimiter
from kis_estimator.server.service.tokens import TokenService
from kis_estimator.server.settings import Settings
from kis_estimator.server.storage.repository import Store
from kis_estimator.server.storage.sqlite import SqliteStore
from kis_estimator.server.store_watch import StoreWatch

log = logging.getLogger(__name__)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)
HEALTHZ_POOL_TIMEOUT_S = 1.0
RATE_WINDOW_S = 3600.0  # the budgets are per hour


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
    metrics_address: str
    denials: DenialAudit
    store_watch: StoreWatch
    _http: list[MetricsHttpServer] = field(default_factory=list)
    _serving: threading.Event = field(default_factory=threading.Event)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _flusher: list[threading.Thread] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def metrics_port(self) -> int:
        """Port of the /metrics endpoint (0 until started)."""
        return self._http[0].port if self._http else 0

    def start(self) -> None:
        """Start the metrics endpoint, then the gRPC server; health turns SERVING last."""
        self._http.append(start_metrics_http(self.metrics_address, self.metrics.registry, self.healthy))
        self.running.server.start()
        self._start_denial_flusher()
        self.running.set_serving(True)
        self._serving.set()
        self.store_watch.start(self.set_serving)
        log.info(
            "serving",
            extra={
                "port": self.port,
                "catalog_version": self.catalog.version,
                "database": self.settings.database_url,
            },
        )

    def healthy(self) -> bool:
        """What /healthz answers: serving, and an RPC thread free to take a call within a second.

        The gRPC health status alone can read SERVING while every RPC thread is stuck; a load
        balancer probing /healthz must then see 503 and route elsewhere.
        """
        return self._serving.is_set() and self.running.answers(HEALTHZ_POOL_TIMEOUT_S)

    def _start_denial_flusher(self) -> None:
        """Write aggregated refusal counts when their window has passed (server/service/denials.py)."""
        interval_s = min(5.0, self.denials.window_s)

        def loop() -> None:
            while not self._stopping.wait(interval_s):
                self.denials.flush_due()

        thread = threading.Thread(target=loop, name="denial-audit", daemon=True)
        thread.start()
        self._flusher.append(thread)

    def set_serving(self, serving: bool) -> None:
        """Flip gRPC health and /healthz together (e.g. to drain a replica before stopping it)."""
        self.running.set_serving(serving)
        if serving:
            self._serving.set()
        else:
            self._serving.clear()

    def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting calls, let in-flight calls finish (up to the grace period), close the store."""
        self.store_watch.stop()
        self._serving.clear()
        self.running.set_serving(False)
        self.running.server.stop(self.settings.shutdown_grace_s if grace_s is None else grace_s).wait()
        self.running.stream_pool.shutdown(wait=False)
        self._stopping.set()
        for thread in self._flusher:
            thread.join()
        self._flusher.clear()
        self.denials.flush_all()  # counts not yet written: the store is still open
        if self.deps.sandboxes is not None:
            self.deps.sandboxes.close()
        for http in self._http:
            http.stop()
        self._http.clear()
        self.store.close()
        log.info("stopped")


def open_store(settings: Settings) -> Store:
    """The store ``database_url`` names: a PostgreSQL database or a SQLite file."""
    if settings.database_url.startswith("postgresql://"):
        # imported here: a SQLite deployment never loads the PostgreSQL driver
        from kis_estimator.server.storage.postgres import PostgresStore

        return PostgresStore(settings.database_url)
    return SqliteStore(settings.sqlite_path)


def load_keyring(settings: Settings) -> KeyRing:
    """Evidence signing keys from settings, else from (or into) a key file beside the database."""
    if settings.evidence_keys:
        return parse_keyring(settings.evidence_keys, settings.evidence_active_key)
    path = settings.evidence_key_file
    if not path.exists():
        # Written whole under a private name, then linked into place: a process starting at the
        # same moment (a second worker, a CLI command) sees no file or the complete one, never half
        # of it, and exactly one key wins (link fails on an existing name).
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(f"k1:{secrets.token_hex(32)}\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(staged, path)
            log.info("created evidence signing key", extra={"path": str(path)})
        except FileExistsError:
            pass  # another process created it first: use theirs
        finally:
            staged.unlink(missing_ok=True)
    return parse_keyring(path.read_text(encoding="ascii").strip(), settings.evidence_active_key)


def store_gauges(store: Store, clock: Clock, quota: int) -> Callable[[], StoreGauges]:
    """Scrape-time gauges read from the store, so they are right across restarts and replicas."""

    def read() -> StoreGauges:
        now = clock.now()
        with store.unit_of_work(read_only=True) as uow:
            mixed = mixed_usage(uow, kst_month_of(now), quota)
            depth = uow.estimates.count_by_status(EPOCH, FAR_FUTURE).get(Status.NEEDS_REVIEW, 0)
            oldest = uow.estimates.oldest_accepted_at(Status.NEEDS_REVIEW)
        age = 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())
        return StoreGauges(mixed.used, mixed.quota, depth, age, store.size_bytes())

    return read


def domain_services(
    store: Store,
    catalog: Catalog,
    keyring: KeyRing,
    clock: Clock,
    metrics: Metrics,
    settings: Settings,
    denials: DenialAudit | None = None,
) -> ServiceSet:
    """The use cases over one store: production's, or an acceptance sandbox's."""
    archive = EvidenceArchive(catalog, keyring, clock, metrics)
    quota = settings.mixed_monthly_quota
    pages = PageTokens(keyring.derived_key(PAGE_TOKEN_KEY_PURPOSE))
    return ServiceSet(
        estimates=EstimateService(
            store,
            catalog,
            clock,
            archive=archive,
            metrics=metrics,
            mixed_monthly_quota=quota,
            page_tokens=pages,
            max_stored_bytes=settings.max_stored_bytes_per_estimate,
            group_commit_max_batch=settings.group_commit_max_batch,
        ),
        reviews=ReviewService(store, catalog, clock, archive, metrics, quota, pages),
        evidence=EvidenceService(
            store,
            clock,
            metrics,
            denials or DenialAudit(store, clock, window_s=settings.denial_audit_window_s),
        ),
        admin=AdminService(store, clock, quota, settings.audit_retention_days, pages),
    )


def sandbox_factory(catalog: Catalog, keyring: KeyRing, clock: Clock, settings: Settings) -> SandboxFactory:
    """A sandbox: a new SQLite store in the given directory, metrics nobody scrapes (service/sandbox.py)."""

    def open_sandbox(directory: Path) -> tuple[ServiceSet, Callable[[], None]]:
        store = SqliteStore(directory / "sandbox.db")
        metrics = Metrics(CollectorRegistry())
        return domain_services(store, catalog, keyring, clock, metrics, settings), store.close

    return open_sandbox


def record_sandbox_opened(store: Store, clock: Clock) -> Callable[[str, Caller], None]:
    """One SANDBOX_OPENED record in production's audit log per acceptance run."""

    def record(run_id: str, caller: Caller) -> None:
        with store.unit_of_work() as uow:
            uow.audit.append(caller.audit(clock.now(), SANDBOX_OPENED, "OPENED", run_id=run_id))
            uow.commit()

    return record


def token_limiter(store: Store, settings: Settings) -> Limiter:
    """The per-token budget: in memory on one host (SQLite), shared by replicas on PostgreSQL."""
    local = RateLimiter(settings.rate_limit_per_hour, RATE_WINDOW_S, monotonic_s)
    if not settings.database_url.startswith("postgresql://"):
        return local
    from kis_estimator.server.storage.postgres import (
        PostgresStore,  # as in open_store: psycopg only when used
    )

    if not isinstance(store, PostgresStore):
        return local
    return SharedRateLimiter(
        store.spend_budget,
        settings.rate_limit_per_hour,
        RATE_WINDOW_S,
        local,
        find_token_and_spend=store.find_token_and_spend,
    )


def build_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    address: str | None = None,
    metrics_address: str | None = None,
    registry: CollectorRegistry | None = None,
) -> App:
    """Wire everything; the server is bound but not started."""
    catalog = load_catalog(settings.catalog_dir or DEFAULT_CATALOG_DIR)
    keyring = load_keyring(settings)
    store = open_store(settings)
    clock = clock or SystemClock()
    metrics = Metrics(registry or CollectorRegistry())
    metrics.registry.register(StoreGaugesCollector(store_gauges(store, clock, settings.mixed_monthly_quota)))
    denials = DenialAudit(store, clock, window_s=settings.denial_audit_window_s)
    production = domain_services(store, catalog, keyring, clock, metrics, settings, denials)
    watch = StoreWatch(store)
    deps = ServiceDeps(
        estimates=production.estimates,
        reviews=production.reviews,
        evidence=production.evidence,
        admin=production.admin,
        tokens=TokenService(store, clock),
        clock=clock,
        rate_limiter=token_limiter(store, settings),
        unauthenticated_limiter=RateLimiter(
            settings.unauthenticated_rate_limit_per_hour, RATE_WINDOW_S, monotonic_s
        ),
        info=ServerInfoServicer(
            catalog_version=catalog.version,
            started_at=clock.now(),
            database_backend="postgresql" if settings.database_url.startswith("postgresql://") else "sqlite",
        ),
        sandboxes=Sandboxes(
            sandbox_factory(catalog, keyring, clock, settings),
            max_open=settings.sandbox_max_open,
            idle_s=settings.sandbox_idle_s,
            monotonic=monotonic_s,
            opened=record_sandbox_opened(store, clock),
        ),
        on_store_unavailable=watch.notify,
    )
    try:
        running = create_server(
            settings, deps, address, outer_interceptors=[MetricsInterceptor(metrics, services=api_services())]
        )
    except Exception:
        store.close()
        raise
    metrics.registry.register(StreamsCollector({"rpc": running.streams, "health_watch": running.watchers}))
    return App(
        settings=settings,
        catalog=catalog,
        store=store,
        deps=deps,
        running=running,
        metrics=metrics,
        keyring=keyring,
        metrics_address=metrics_address or settings.metrics_address,
        denials=denials,
        store_watch=watch,
    )


def serve(settings: Settings, address: str | None = None) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully. Returns the exit status."""
    try:
        app = build_app(settings, address=address)
        app.start()
    except (OSError, RuntimeError, ValueError) as exc:
        log.error("cannot start", extra={"error": str(exc)})
        return 1
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal received, draining", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    app.stop()
    return 0
