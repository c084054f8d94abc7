"""The ceiling: a minimal grpcio server in the estimator's serving mode, answering a trivial unary RPC.

Same serving mode as ``server/api/server.py``'s ``create_server``: a synchronous ``grpc.server`` on a
``ThreadPoolExecutor`` of ``KIS_MAX_WORKERS`` (default 16) threads, ``maximum_concurrent_rpcs`` =
8 × workers, and the very same options (``server_options(Settings)``, ``grpc.so_reuseport`` 0
included). What it leaves out is everything the estimator adds: interceptors, protobuf parsing,
auth, the engine, storage, logging, metrics.

``/bench.Ceiling/Echo`` takes any request bytes (the load generator sends the small panel's
CreateEstimate request, with its per-call ``request_id``) and answers fixed bytes: the real reply of
a small CreateEstimate, read from ``--reply-file``. Request and reply therefore have the size of the
RPC they bound, and no serialisation happens on either side of the server.

Prints ``{"port": N}`` on stdout once serving; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path
from types import FrameType

import grpc

from kis_estimator.server.api.server import server_options
from kis_estimator.server.settings import Settings

SERVICE = "bench.Ceiling"
METHOD = f"/{SERVICE}/Echo"


def build(settings: Settings, reply: bytes, address: str) -> tuple[grpc.Server, int]:
    """The ceiling server, bound (not started); returns it and its port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="rpc"),
        options=server_options(settings),
        maximum_concurrent_rpcs=settings.max_workers * 8,
    )

    def echo(_request: bytes, _context: grpc.ServicerContext) -> bytes:
        return reply

    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),)
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind {address}")
    return server, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--reply-file", type=Path, required=True)
    args = parser.parse_args()
    # the settings the estimator serves with: the orchestrator gives both processes the same KIS_* env
    settings = Settings.from_process_env()
    server, port = build(settings, args.reply_file.read_bytes(), args.listen)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    sys.stdout.write(json.dumps({"port": port}) + "\n")
    sys.stdout.flush()
    stop.wait()
    server.stop(1).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
