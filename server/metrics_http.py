"""The metrics HTTP endpoint: ``/metrics`` (Prometheus exposition) and ``/healthz`` (load balancers).

A threaded ``http.server`` on its own address (default loopback, see Settings), separate from the
gRPC port so scrapers and health probes never compete with RPC workers. ``/metrics`` answers in the
format the scraper asks for (``prometheus_client.exposition.choose_encoder``): OpenMetrics for a
Prometheus server, the classic text format 0.0.4 for anything else (curl, tests). ``/healthz`` is
200 ``ok`` while ``healthy()`` is true, else 503. Anything else is 404; only GET and HEAD.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 5.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck scraper must not keep the process alive at shutdown


class _V6Server(_Server):
    address_family = socket.AF_INET6


@dataclass(frozen=True, slots=True)
class MetricsHttpServer:
    """A running endpoint: ``port`` is the bound port (useful when started on port 0)."""

    host: str
    port: int
    _server: _Server
    _thread: threading.Thread

    def stop(self) -> None:
        """Stop serving and close the socket; waits for the serving thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(JOIN_TIMEOUT_S)


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` → (host, port); ValueError names the address otherwise."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"metrics address {address!r}: expected HOST:PORT (port 0-65535)")
    return host, int(port)


def _handler(registry: CollectorRegistry, healthy: Callable[[], bool]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "kis-estimator-metrics"

        def do_GET(self) -> None:
            self._answer(send_body=True)

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def _answer(self, send_body: bool) -> None:
            path = urlsplit(self.path).path
            if path == "/metrics":
                encode, content_type = choose_encoder(self.headers.get("Accept", ""))
                try:
                    body = encode(registry)
                except Exception:  # HTTP boundary: a broken collector is a 500 and a log line, not a crash
                    log.exception("metrics exposition failed")
                    self._send(500, "text/plain; charset=utf-8", b"exposition failed\n", send_body)
                    return
                self._send(200, content_type, body, send_body)
            elif path == "/healthz":
                ok = _is_healthy(healthy)
                self._send(
                    200 if ok else 503,
                    "text/plain; charset=utf-8",
                    b"ok\n" if ok else b"not serving\n",
                    send_body,
                )
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found\n", send_body)

        def _send(self, status: int, content_type: str, body: bytes, send_body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            # Scrapes and probes arrive every few seconds: debug, not the base class's stderr line.
            log.debug("metrics http: " + format, *args)

    return Handler


def _is_healthy(healthy: Callable[[], bool]) -> bool:
    try:
        return bool(healthy())
    except Exception:  # HTTP boundary: a failing health check reads as unhealthy, and is logged
        log.exception("health check failed")
        return False


def start_metrics_http(
    address: str, registry: CollectorRegistry, healthy: Callable[[], bool]
) -> MetricsHttpServer:
    """Bind ``address`` (``HOST:PORT``; port 0 picks a free one) and serve in a daemon thread.

    Raises OSError when the address cannot be bound, ValueError when it is malformed.
    """
    host, port = split_address(address)
    server_cls = _V6Server if ":" in host else _Server
    server = server_cls((host, port), _handler(registry, healthy))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="metrics-http", daemon=True
    )
    thread.start()
    bound_port = int(server.server_address[1])
    log.info("metrics endpoint listening", extra={"host": host, "port": bound_port})
    return MetricsHttpServer(host=host, port=bound_port, _server=server, _thread=thread)


__all__ = ["MetricsHttpServer", "split_address", "start_metrics_http"]
