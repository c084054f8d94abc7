"""``kis-release alert-receiver``: Alertmanager's webhook (payload version 4) into the incident path.

``POST /alerts`` takes a notification as Alertmanager sends it (``webhook_configs``)::

    {"version": "4", "groupKey": "...", "status": "firing|resolved", "receiver": "...",
     "groupLabels": {...}, "commonLabels": {...}, "commonAnnotations": {...}, "externalURL": "...",
     "truncatedAlerts": 0,
     "alerts": [{"status": "firing|resolved", "labels": {...}, "annotations": {...},
                 "startsAt": "RFC 3339", "endsAt": "RFC 3339", "generatorURL": "...", "fingerprint": "..."}]}

Replies (JSON ``{"status": ..., "reason": ...}``):

* **401** without the configured credentials: the webhook can roll production back, so it takes
  what Alertmanager's ``http_config`` sends — ``Authorization: Bearer <token>`` (``authorization:
  {credentials_file: …}``) or basic auth (``basic_auth: {username, password_file}``) — compared in
  constant time. The health paths (``GET /-/healthy``, ``/-/ready``) need none.
* **400** with the reason for anything that is not such a payload (bad JSON, wrong version, a
  missing or mistyped field, an unknown ``rollback`` label value); **404**/**405** for other paths
  and methods; **413** above 1 MiB.
* **200** once the notification is fully handled: firing alerts with ``rollback=immediate|review``
  went through :func:`kis_estimator.workflows.incident.response.handle` (immediate: rollback, verification,
  the ROLLBACK issue; review: the "needs decision" issue), resolved ones became a comment on their incident,
  anything else (``rollback=none`` or no label: the notice's alarms, routed elsewhere) is ignored.
* **503** when the rollback is done but the issue is not in the tracker yet (the tracker failed,
  or the issue waits in the outbox): Alertmanager retries the notification, and the retry skips the
  rollback (the incident state says it ran) and only delivers the issue. The rollback never waits
  for the tracker (see ``kis_estimator.workflows.incident.response``).

Duplicates: a delivery is identified by its group key, status and alerts (fingerprint, status,
``startsAt``); a delivery already handled answers 200 without acting again, and the decision path
itself is idempotent per incident, so a repeat with a changed group is a comment at most. Deliveries
are kept in ``<release_dir>/alert-deliveries.json``.

Attribution: an alert belongs to the release that was current when it started (``startsAt``), so a
notification still firing for a release that was already rolled back never rolls back the one
that replaced it; it is reported on the old release's incident.

The alert path carries no Prometheus values; each breach shows the number in the alert's summary
annotation (the rules print ``$value`` there) against the criterion's threshold.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kis_estimator.workflows.clock import kst_text
from kis_estimator.workflows.incident.criteria import Verdict
from kis_estimator.workflows.incident.response import (
    Action,
    HandleOutcome,
    IncidentDeps,
    IncidentOptions,
    Signal,
    SignalSource,
    comment_on_release,
    handle,
    release_at,
)
from kis_estimator.workflows.templates import Breach
from kis_estimator.workflows.tracker.idempotency import atomic_write, file_lock
from kis_estimator.workflows.tracker.protocol import Document, Field, Section, Text, TrackerError

__all__ = [
    "MAX_BODY_BYTES",
    "Alert",
    "AlertReceiver",
    "Notification",
    "PayloadError",
    "Reply",
    "create_receiver_server",
    "parse_notification",
    "serve_in_thread",
]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
ROLLBACK_VALUES = ("none", "immediate", "review")
_STATUSES = ("firing", "resolved")

# The rollback alerts of deploy/prometheus/alerts.rules.yml and the notice's criteria they encode.
_KNOWN: Mapping[str, tuple[str, float, str, float]] = {
    "KisRollback5xxRate": ("5xx 에러 > 10/분 (3분 지속)", 10.0, "/min", 180.0),
    "KisRollbackP95Latency": ("P95 > 200ms (5분 지속)", 200.0, "ms", 300.0),
    "KisReviewRollbackP95Latency": ("P95 > 100ms (10분 지속)", 100.0, "ms", 600.0),
    "KisReviewRollbackErrorRate": ("오류율 > 2% (10분 지속)", 2.0, "%", 600.0),
}
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)")


class PayloadError(ValueError):
    """Not an Alertmanager v4 notification; the message is the reason sent back with the 400."""


@dataclass(frozen=True, slots=True)
class Alert:
    status: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: datetime
    fingerprint: str
    ends_at: datetime | None = None
    generator_url: str = ""

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def rollback(self) -> str:
        return self.labels.get("rollback", "")


@dataclass(frozen=True, slots=True)
class Notification:
    group_key: str
    status: str
    receiver: str
    alerts: tuple[Alert, ...]
    external_url: str = ""
    truncated_alerts: int = 0
    common_labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def delivery_id(self) -> str:
        """Same group, status and alerts → same id (Alertmanager's retries and repeats)."""
        parts = sorted(f"{a.fingerprint}|{a.status}|{a.starts_at.isoformat()}" for a in self.alerts)
        text = "\0".join([self.group_key, self.status, *parts])
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Mapping[str, Any]


# ------------------------------------------------------------------------------------ parsing


def _str_map(raw: object, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise PayloadError(f"{where}: expected an object of strings")
    return dict(raw)


def _time(raw: object, where: str, *, optional: bool = False) -> datetime | None:
    if optional and (raw is None or raw == "" or (isinstance(raw, str) and raw.startswith("0001-01-01"))):
        return None  # Alertmanager's zero time: "not ended"
    if not isinstance(raw, str):
        raise PayloadError(f"{where}: expected an RFC 3339 time")
    text = raw.replace("Z", "+00:00")
    # Go writes nanoseconds; Python parses at most microseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise PayloadError(f"{where}: {raw!r} is not an RFC 3339 time") from None
    if value.tzinfo is None:
        raise PayloadError(f"{where}: {raw!r} has no UTC offset")
    return value


def _alert(raw: object, i: int) -> Alert:
    where = f"alerts[{i}]"
    if not isinstance(raw, dict):
        raise PayloadError(f"{where}: expected an object")
    status = raw.get("status")
    if status not in _STATUSES:
        raise PayloadError(f"{where}.status: expected firing or resolved, got {status!r}")
    labels = _str_map(raw.get("labels"), f"{where}.labels")
    if not labels.get("alertname"):
        raise PayloadError(f"{where}.labels.alertname: missing")
    if "rollback" in labels and labels["rollback"] not in ROLLBACK_VALUES:
        raise PayloadError(
            f"{where}.labels.rollback: {labels['rollback']!r} is not one of {', '.join(ROLLBACK_VALUES)}"
        )
    fingerprint = raw.get("fingerprint")
    if not isinstance(fingerprint, str) or not fingerprint:
        raise PayloadError(f"{where}.fingerprint: missing")
    starts = _time(raw.get("startsAt"), f"{where}.startsAt")
    assert starts is not None
    generator = raw.get("generatorURL", "")
    return Alert(
        status=str(status),
        labels=labels,
        annotations=_str_map(raw.get("annotations"), f"{where}.annotations"),
        starts_at=starts,
        fingerprint=fingerprint,
        ends_at=_time(raw.get("endsAt"), f"{where}.endsAt", optional=True),
        generator_url=generator if isinstance(generator, str) else "",
    )


def parse_notification(body: bytes) -> Notification:
    """Validate an Alertmanager webhook body (version 4); :class:`PayloadError` names what is wrong."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PayloadError("body: expected a JSON object")
    if data.get("version") != "4":
        raise PayloadError(f'version: expected "4" (Alertmanager webhook), got {data.get("version")!r}')
    group_key = data.get("groupKey")
    if not isinstance(group_key, str) or not group_key:
        raise PayloadError("groupKey: missing")
    status = data.get("status")
    if status not in _STATUSES:
        raise PayloadError(f"status: expected firing or resolved, got {status!r}")
    alerts = data.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        raise PayloadError("alerts: expected a non-empty list")
    truncated = data.get("truncatedAlerts", 0)
    if not isinstance(truncated, int) or truncated < 0:
        raise PayloadError("truncatedAlerts: expected a non-negative integer")
    receiver = data.get("receiver", "")
    external = data.get("externalURL", "")
    return Notification(
        group_key=group_key,
        status=str(status),
        receiver=receiver if isinstance(receiver, str) else "",
        alerts=tuple(_alert(a, i) for i, a in enumerate(alerts)),
        external_url=external if isinstance(external, str) else "",
        truncated_alerts=truncated,
        common_labels=_str_map(data.get("commonLabels"), "commonLabels"),
    )


# ------------------------------------------------------------------------------------ deliveries


class _Deliveries:
    """delivery id → state, in one JSON file under a flock (several receivers may share a release_dir)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = path.with_name(path.name + ".lock")

    def get(self, delivery_id: str) -> Mapping[str, Any] | None:
        with file_lock(self._lock):
            entry = self._read().get(delivery_id)
        return entry if isinstance(entry, dict) else None

    def put(self, delivery_id: str, entry: Mapping[str, Any]) -> None:
        with file_lock(self._lock):
            data = self._read()
            data[delivery_id] = dict(entry)
            text = json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
            atomic_write(self.path, text.encode("utf-8"))

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # Guessing "never delivered" could act twice; refuse until someone looks.
            raise OSError(f"{self.path}: unreadable delivery ledger: {exc}") from None
        return data if isinstance(data, dict) else {}


# ------------------------------------------------------------------------------------ the receiver


def _breach(alert: Alert) -> Breach:
    summary = alert.annotations.get("summary", "")
    found = _NUMBER.search(summary.split(":", 1)[-1]) if summary else None
    observed = float(found.group(1)) if found else math.nan
    criterion, threshold, unit, sustained = _KNOWN.get(alert.name, (alert.name, math.nan, "", 0.0))
    text = f"{criterion} [{alert.name}: {summary}]" if summary else f"{criterion} [{alert.name}]"
    return Breach(text, observed, threshold, unit, sustained or None)


def _alert_json(alert: Alert) -> dict[str, Any]:
    return {
        "status": alert.status,
        "labels": dict(alert.labels),
        "annotations": dict(alert.annotations),
        "startsAt": alert.starts_at.isoformat(),
        "endsAt": alert.ends_at.isoformat() if alert.ends_at else None,
        "fingerprint": alert.fingerprint,
        "generatorURL": alert.generator_url,
    }


class AlertReceiver:
    """The webhook's logic without HTTP: :meth:`receive` maps a body to a :class:`Reply`."""

    def __init__(self, options: IncidentOptions, deps: IncidentDeps) -> None:
        self.options = options
        self.deps = deps
        self._deliveries = _Deliveries(options.release_dir / "alert-deliveries.json")

    def receive(self, body: bytes) -> Reply:
        try:
            notification = parse_notification(body)
        except PayloadError as exc:
            log.warning("alert receiver: 400 %s", exc)
            return Reply(400, {"status": "rejected", "reason": str(exc)})
        delivery = notification.delivery_id
        try:
            known = self._deliveries.get(delivery)
            if known is not None and known.get("state") == "done":
                return Reply(200, {"status": "duplicate", "delivery": delivery, **_public(known)})
            reply, entry = self._process(notification)
            self._deliveries.put(delivery, {**entry, "group_key": notification.group_key})
        except (OSError, ValueError) as exc:
            log.error("alert receiver: cannot handle %s: %s", notification.group_key, exc)
            return Reply(500, {"status": "error", "reason": str(exc)})
        return reply

    def _process(self, notification: Notification) -> tuple[Reply, dict[str, Any]]:
        wanted = [a for a in notification.alerts if a.rollback in ("immediate", "review")]
        firing = [a for a in wanted if a.status == "firing"]
        resolved = [a for a in wanted if a.status == "resolved"]
        now = self.deps.clock.now()
        if not wanted:
            reason = "no alert carries rollback=immediate|review (monitoring alarms are routed elsewhere)"
            return Reply(200, {"status": "ignored", "reason": reason}), {
                "state": "done",
                "at": now.isoformat(),
            }
        outcome: HandleOutcome | None = None
        if firing:
            outcome = handle(self._signal(notification, firing), self.options, self.deps)
            log.warning("alert receiver: %s", " | ".join(outcome.lines()))
        comment_error = ""
        for alert in resolved:
            try:
                self._comment_resolved(alert)
            except TrackerError as exc:
                comment_error = str(exc)
        body: dict[str, Any] = {"status": "handled", "at": now.isoformat()}
        if outcome is not None:
            body.update(
                action=outcome.action.value,
                incident=outcome.incident_id,
                issue=outcome.issue.key if outcome.issue else None,
                rollback_verified=outcome.rollback.verified if outcome.rollback else None,
                message=outcome.message,
            )
        pending = outcome is not None and outcome.action is not Action.NONE and not outcome.issue_delivered
        if pending or comment_error:
            reason = comment_error or (outcome.issue_error if outcome is not None else "")
            body.update(
                status="retry", reason=reason or "the issue waits in the outbox (tracker unavailable)"
            )
            return Reply(503, body), {"state": "pending", **body}
        return Reply(200, body), {"state": "done", **body}

    def _signal(self, notification: Notification, firing: Sequence[Alert]) -> Signal:
        immediate = any(a.rollback == "immediate" for a in firing)
        started = min(a.starts_at for a in firing)
        names = sorted({a.name for a in firing})
        kind = "immediate" if immediate else "review"
        return Signal(
            verdict=Verdict.ROLLBACK if immediate else Verdict.REVIEW,
            source=SignalSource.ALERTMANAGER,
            detected_at=self.deps.clock.now(),
            summary=f"Alertmanager: {', '.join(names)} firing (rollback={kind})",
            fingerprint=hashlib.sha256("\0".join(["alert", *names]).encode()).hexdigest()[:16],
            breaches=tuple(_breach(a) for a in firing),
            snapshot={
                "alertmanager": {
                    "groupKey": notification.group_key,
                    "receiver": notification.receiver,
                    "externalURL": notification.external_url,
                    "alerts": [_alert_json(a) for a in notification.alerts],
                }
            },
            window_start=started,
            version=release_at(self.options.release_dir, started),
            details=tuple(
                f"{a.name} since {kst_text(a.starts_at)}: {a.annotations.get('summary', '')}" for a in firing
            ),
        )

    def _comment_resolved(self, alert: Alert) -> None:
        version = release_at(self.options.release_dir, alert.starts_at)
        if version is None:
            return
        ended = kst_text(alert.ends_at) if alert.ends_at else "now"
        body = Document(
            (
                Section(
                    f"Alert resolved: {alert.name}",
                    (
                        Field("Started", kst_text(alert.starts_at)),
                        Field("Resolved", ended),
                        Text(alert.annotations.get("summary", "")),
                    ),
                ),
            )
        )
        comment_on_release(
            self.options,
            self.deps,
            version,
            body,
            f"resolved:{alert.fingerprint}:{alert.starts_at.isoformat()}",
        )


def _public(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k in ("action", "incident", "issue", "at")}


# ------------------------------------------------------------------------------------ HTTP


@dataclass(frozen=True, slots=True)
class ReceiverAuth:
    """The credentials the webhook requires (at least one of them)."""

    bearer_token: str | None = None
    basic: tuple[str, str] | None = None  # (user, password)

    def __post_init__(self) -> None:
        if self.basic is not None and not (self.basic[0] and self.basic[1]):
            raise ValueError("basic auth for the alert receiver needs a user and a password")
        if not self.bearer_token and not self.basic:
            raise ValueError(
                "the alert receiver needs credentials: KIS_ALERT_BEARER_TOKEN, or KIS_ALERT_BASIC_USER "
                "and KIS_ALERT_BASIC_PASSWORD (set the same in Alertmanager's http_config)"
            )

    def allows(self, header: str | None) -> bool:
        scheme, _, value = (header or "").strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and self.bearer_token:
            return hmac.compare_digest(value.encode(), self.bearer_token.encode())
        if scheme.lower() == "basic" and self.basic:
            try:
                decoded = base64.b64decode(value, validate=True)
            except ValueError:
                return False
            expected = f"{self.basic[0]}:{self.basic[1]}".encode()
            return hmac.compare_digest(decoded, expected)
        return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: AlertReceiver
    auth: ReceiverAuth


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("alert receiver %s: " + format, self.client_address[0], *args)

    def do_GET(self) -> None:
        if self.path in ("/-/healthy", "/-/ready"):
            self._send(Reply(200, {"status": "ok"}))
        else:
            self._send(
                Reply(
                    404 if self.path != "/alerts" else 405, {"status": "rejected", "reason": "POST /alerts"}
                )
            )

    def do_POST(self) -> None:
        if not self.server.auth.allows(self.headers.get("Authorization")):
            sent = self.headers.get("Content-Length", "")
            if sent.isdigit() and int(sent) <= MAX_BODY_BYTES:
                self.rfile.read(int(sent))  # drained, so the client reads the answer, not a reset
            else:
                self.close_connection = True
            scheme = "Bearer" if self.server.auth.bearer_token else "Basic"
            self._send(
                Reply(401, {"status": "rejected", "reason": "missing or wrong credentials"}),
                {"WWW-Authenticate": f'{scheme} realm="kis-alert-receiver"'},
            )
            return
        if self.path.split("?", 1)[0] != "/alerts":
            self._send(
                Reply(404, {"status": "rejected", "reason": f"no such path {self.path}: POST /alerts"})
            )
            return
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.isdigit():
            self._send(Reply(411, {"status": "rejected", "reason": "Content-Length required"}))
            return
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._send(Reply(413, {"status": "rejected", "reason": f"body over {MAX_BODY_BYTES} bytes"}))
            return
        body = self.rfile.read(length)
        try:
            reply = self.server.receiver.receive(body)
        except Exception:  # the HTTP boundary: a bug answers 500, never a dropped connection
            log.exception("alert receiver: unexpected error")
            reply = Reply(500, {"status": "error", "reason": "internal error (see the receiver's log)"})
        self._send(reply)

    def _send(self, reply: Reply, headers: Mapping[str, str] | None = None) -> None:
        data = (json.dumps(reply.body, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        try:
            self.send_response(reply.status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True


def create_receiver_server(
    receiver: AlertReceiver, listen: str, auth: ReceiverAuth
) -> tuple[ThreadingHTTPServer, int]:
    """Bind (not serve) ``HOST:PORT`` (port 0: any); returns the server and the bound port."""
    host, _, port = listen.rpartition(":")
    server = _Server((host or "127.0.0.1", int(port)), _Handler)
    server.receiver = receiver
    server.auth = auth
    return server, int(server.server_address[1])


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    """Serve in a daemon thread (tests, embedding); stop with ``server.shutdown()``."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return thread
