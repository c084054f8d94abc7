"""Calls whose client stopped waiting: cancelled, past its deadline, or its connection closed.

A client that gives up is normal traffic, not a server error: the interceptors end such a call with
CANCELLED or DEADLINE_EXCEEDED (the code ``grpc_server_handled_total`` records), log it at INFO, and
never answer INTERNAL for it. Work already committed stays committed (a CreateEstimate stored just
before the client left is replayed, byte for byte, by a retry with the same ``request_id``).
"""

from __future__ import annotations

import grpc

# The server's deadline is the client's plus the time the request took to arrive, so a client whose
# own deadline fired cancels the call a little before the server's deadline passes.
DEADLINE_SLACK_S = 0.1


def client_gone(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    """DEADLINE_EXCEEDED or CANCELLED when the client no longer waits for this call, else None.

    grpcio marks a call inactive when the client cancels it, its deadline passes or its connection
    closes (all reach the server as a cancellation); a passed (or all but passed) deadline tells the
    client's deadline apart.
    """
    if context.is_active():
        return None
    if context.time_remaining() <= DEADLINE_SLACK_S:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED
