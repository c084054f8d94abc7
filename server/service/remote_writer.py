"""One writer process for the creates of every worker of ``serve --workers N`` (N > 1).

Why: group commit (group_commit.py) gives each process one writer thread, but a writer thread in a
serving process competes for the GIL with that process's request threads. Each SQL statement of a
commit releases the GIL and must win it back, so under load a batch held the store's write lock
(SQLite's writer lock, PostgreSQL's advisory lock) for ~4-11 ms while the same statements take
~0.7 ms alone, and with two workers the two writers queued for the lock more than they wrote
(bench/README.md, "scaling"). Here the workers hand their creates to a process of their own that
serves no calls: its writer thread holds the lock only as long as the SQL takes, and the creates of
every worker share its commits.

Protocol: one ``socketpair`` per worker, made by the parent before it forks, so only the processes
of one set hold the ends (the frames are pickles, trusted because nothing else can reach them).
Each frame is a 4-byte length and a pickle:

* worker → writer: ``("write", seq, rows, audit)`` (the create's rows, made by the worker:
  ``storage.rows.new_rows``, and its audit draft); ``("cancel", seq)``
  when the caller gave up while the create waited (it is dropped if its batch has not formed yet,
  exactly as in one process: ``CallAbandoned``);
* writer → worker: ``(seq, error, (batch number, batch size))``; ``error`` is None once committed,
  else a tuple that :func:`decode_error` turns back into what writing in the worker would raise.
  A batch that meets a taken key is rolled back and each member answered ``WriteAlone``: the worker
  then writes that create alone itself, where its records tell which key was taken and why.

A reply is sent only after the commit that stored the create, so an OK still means stored. When the
writer process is gone, the worker fails its waiting creates (their outcome unknown) and every later
one with a retryable StorageError (UNAVAILABLE); the parent then stops the set (server/workers.py).

Lifecycle: the writer ignores SIGTERM and SIGINT (a terminal's Ctrl-C and systemd's stop reach every
process of the set): it exits once every worker has closed its end, so the workers' draining calls
are all written first.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import pickle
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from kis_estimator.server.service.group_commit import CallAbandoned, GroupCommit, NewEstimate, WriteAlone
from kis_estimator.server.storage.repository import DuplicateKeyError, StorageError

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!I")
CANCEL_POLL_S = 0.05
"""How often a worker waiting for its reply asks whether the caller is still there."""

GONE = "the store writer process is gone; the create may not be stored, retry it with its request_id"


def send_frame(sock: socket.socket, lock: threading.Lock, message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    with lock:
        sock.sendall(_LENGTH.pack(len(data)) + data)


def recv_frame(sock: socket.socket) -> Any:
    """The next message, or None when the other end closed (or the socket failed)."""
    head = _recv_exactly(sock, _LENGTH.size)
    if head is None:
        return None
    body = _recv_exactly(sock, _LENGTH.unpack(head)[0])
    return None if body is None else pickle.loads(body)


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        try:
            chunk = sock.recv(min(left, 1 << 20))
        except OSError:
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def encode_error(error: BaseException | None) -> tuple[Any, ...] | None:
    if error is None:
        return None
    if isinstance(error, DuplicateKeyError):
        return ("duplicate", error.kind, error.existing_estimate_id)
    if isinstance(error, CallAbandoned):
        return ("abandoned",)
    if isinstance(error, WriteAlone):
        return ("alone",)
    if isinstance(error, StorageError):
        return ("storage", str(error), error.retryable)
    return ("storage", f"the store writer failed: {type(error).__name__}: {error}", False)


def decode_error(encoded: tuple[Any, ...] | None) -> BaseException | None:
    if encoded is None:
        return None
    kind = encoded[0]
    if kind == "duplicate":
        return DuplicateKeyError(encoded[1], encoded[2])
    if kind == "abandoned":
        return CallAbandoned()
    if kind == "alone":
        return WriteAlone()
    return StorageError(encoded[1], retryable=encoded[2])


class RemoteWriter:
    """A worker's end: :meth:`write` as :meth:`GroupCommit.write`, done by the writer process;
    ``alone`` writes what the writer answers ``WriteAlone`` (a GroupCommit of max_batch 1 on the
    worker's store).

    ``on_batch(size)`` is called once per writer batch that carried one of this worker's creates
    (a batch shared by two workers is seen by both).
    """

    def __init__(
        self,
        sock: socket.socket,
        alone: GroupCommit,
        *,
        on_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self._sock = sock
        self._alone = alone
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pending: dict[int, NewEstimate] = {}
        self._seq = itertools.count(1)
        self._gone = False
        self._reader: threading.Thread | None = None
        self._on_batch = on_batch
        self._last_batch = 0

    def waiting(self) -> int:
        """Creates sent to the writer and not answered yet."""
        with self._lock:
            return len(self._pending)

    def write(self, item: NewEstimate) -> None:
        if not item.still_wanted():
            raise CallAbandoned
        with self._lock:
            if self._gone:
                raise StorageError(GONE, retryable=True)
            seq = next(self._seq)
            self._pending[seq] = item
            if self._reader is None:
                self._reader = threading.Thread(target=self._read, name="remote-writer", daemon=True)
                self._reader.start()
        try:
            send_frame(self._sock, self._send_lock, ("write", seq, item.rows, item.audit))
        except OSError:
            self._fail_pending()  # the reader sees the same end of the socket
        cancelled = False
        while not item.done.wait(CANCEL_POLL_S):
            if not cancelled and not item.still_wanted():
                cancelled = True
                try:
                    send_frame(self._sock, self._send_lock, ("cancel", seq))
                except OSError:
                    self._fail_pending()
        if isinstance(item.error, WriteAlone):
            item.error = None
            self._alone.write(item)
        elif item.error is not None:
            raise item.error

    def _read(self) -> None:
        while (reply := recv_frame(self._sock)) is not None:
            seq, error, (batch, size) = reply
            with self._lock:
                item = self._pending.pop(seq, None)
            if item is None:
                continue
            if batch and batch != self._last_batch:
                self._last_batch = batch
                self._on_batch(size)
            item.error = decode_error(error)
            item.done.set()
        self._fail_pending()

    def _fail_pending(self) -> None:
        with self._lock:
            if not self._gone:
                log.error("the store writer process is gone; creates fail UNAVAILABLE")
            self._gone = True
            pending, self._pending = self._pending, {}
        for item in pending.values():
            item.error = StorageError(GONE, retryable=True)
            item.done.set()


def serve_writes(commit: GroupCommit, socks: list[socket.socket]) -> None:
    """The writer process's loop: every worker's creates into ``commit``; returns once every
    worker has closed its end and every create received is written and answered."""
    in_flight = threading.Semaphore(0)
    received = itertools.count()

    def serve_one(sock: socket.socket) -> None:
        send_lock, lock = threading.Lock(), threading.Lock()
        outstanding: dict[int, bool] = {}  # seq → still wanted, until answered

        def still_wanted(seq: int) -> bool:
            return outstanding.get(seq, False)

        def reply(item: NewEstimate, seq: int) -> None:
            with lock:
                del outstanding[seq]
            # a worker gone: its callers learn nothing, as with a dropped connection
            with contextlib.suppress(OSError):
                send_frame(sock, send_lock, (seq, encode_error(item.error), item.batch))
            in_flight.release()

        while (message := recv_frame(sock)) is not None:
            if message[0] == "cancel":
                with lock:
                    if message[1] in outstanding:
                        outstanding[message[1]] = False
                continue
            _, seq, rows, audit = message
            with lock:
                outstanding[seq] = True
            next(received)
            commit.submit(
                NewEstimate(
                    rows,
                    audit,
                    still_wanted=functools.partial(still_wanted, seq),
                    on_done=functools.partial(reply, seq=seq),
                )
            )

    readers = [threading.Thread(target=serve_one, args=(s,), name="writer-conn", daemon=True) for s in socks]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    for _ in range(next(received)):  # every create received has been answered
        in_flight.acquire()


__all__ = ["RemoteWriter", "decode_error", "encode_error", "serve_writes"]
