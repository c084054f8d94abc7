"""A real server on 127.0.0.1:0 with a fresh SQLite file, reached through pytest-grpc's fixtures.

pytest-grpc's own ``grpc_server`` builds a bare ``grpc.server``; here it is overridden with the wired
service (interceptor, health, reflection, storage), and its ``grpc_channel``/``grpc_stub`` fixtures
are used as they are.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from kis_estimator.server.clock import Clock
from kis_estimator.server.engine.roles import Role
from kis_estimator.server.gen.kis.estimator.v1 import estimator_pb2_grpc as pb_grpc
from kis_estimator.server.main import App, build_app
from kis_estimator.server.settings import Settings
from kis_estimator.server.storage.sqlite import SqliteStore

TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Served:
    app: App
    address: str
    tokens: dict[str, str]

    def metadata(self, role: str | None) -> tuple[tuple[str, str | bytes], ...]:
        return (("authorization", f"Bearer {self.tokens[role]}"),) if role else ()


# Below Linux's ephemeral range (32768-60999): no outgoing connection takes a port here meanwhile.
_QUIET_PORTS = range(20000, 32000)


def free_ports_in_a_row(count: int, taken: set[int] | None = None) -> int:
    """The first of ``count`` consecutive free loopback ports, for a server that binds ``base + i``
    itself (``serve --workers``: worker i's metrics port). Drawn below the ephemeral range, where an
    OS-assigned port (a client's local port, another test's ``bind(0)``) never lands between this
    check and the server's bind; ``taken`` (updated) keeps several servers of one test apart."""
    taken = set() if taken is None else taken
    while True:
        base = random.randrange(_QUIET_PORTS.start, _QUIET_PORTS.stop - count)
        ports = set(range(base, base + count))
        if ports & taken:
            continue
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        taken |= ports
        return base


def start_app(db_dir: Path, *, clock: Clock | None = None, **overrides: object) -> Served:
    values: dict[str, object] = {"database_url": f"sqlite:///{db_dir / 'kis.db'}", "shutdown_grace_s": 5.0}
    settings = Settings(**(values | overrides))  # type: ignore[arg-type]
    app = build_app(settings, address="127.0.0.1:0", metrics_address="127.0.0.1:0", clock=clock)
    app.start()
    tokens = {role.value: app.deps.tokens.create(role, f"test-{role.value.lower()}").token for role in Role}
    return Served(app=app, address=f"127.0.0.1:{app.port}", tokens=tokens)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = start_app(tmp_path_factory.mktemp("kis"))
    yield s
    s.app.stop(0)


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Served]:
    """A server with an empty store, for tests that depend on what is stored."""
    s = start_app(tmp_path)
    yield s
    s.app.stop(0)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    """A fresh server on each store (PostgreSQL cases skip when no server is reachable)."""
    if request.param == "sqlite":
        served = start_app(tmp_path)
        yield served
        served.app.stop(0)
        return
    # imported here: both modules import this one
    from tests.integration.test_postgres_service import start_on_postgres
    from tests.integration.test_storage_contract import pg_database

    with pg_database() as url:
        served = start_on_postgres(url)
        yield served
        served.app.stop(0)


# pytest-grpc wiring ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grpc_addr(served: Served) -> str:
    return served.address


@pytest.fixture(scope="module")
def grpc_server(served: Served) -> grpc.Server:
    return served.app.running.server


@pytest.fixture(scope="module")
def grpc_stub_cls(grpc_channel: grpc.Channel) -> Callable[[grpc.Channel], pb_grpc.EstimatorServiceStub]:
    return pb_grpc.EstimatorServiceStub


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteStore]:
    """A fresh SQLite store (the service's default) in the test's temporary directory."""
    opened = SqliteStore(tmp_path / "kis.db")
    yield opened
    opened.close()
